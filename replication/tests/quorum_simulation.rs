//! A deterministic simulation of the metadata quorum: several `QuorumNode`s (the very code the
//! broker runs) over a simulated network that loses, delays, reorders and duplicates
//! messages, with nodes crashing (losing everything not yet persisted) and restarting from
//! what they persisted, network partitions, and brokers heartbeating to whoever they think
//! leads. Everything random comes from one seed, so a failing seed replays exactly:
//!
//!     TERN_SIM_SEED=1234 cargo test -p tern-replication --test quorum_simulation
//!
//! `TERN_SIM_SEEDS=N` runs N seeds (default 100; `TERN_RAFT_TRACE=1` adds raft-rs's log). Checked throughout: at most one leader per
//! term; every node that has applied the same index holds the same image; no acknowledged
//! command is lost; every image keeps its invariants and no fenced broker leads. After the
//! faults stop and the network heals, every node converges on one image that holds every
//! acknowledged topic, with every broker unfenced again.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tern_replication::metadata::{BrokerId, Command, MetadataImage};
use tern_replication::quorum::{
    eraftpb::Message, Durable, Output, QuorumConfig, QuorumNode, Ticket,
};

/// splitmix64: tiny, and the same sequence on every platform and toolchain.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

const TICK_MS: i64 = 100;
const FAULT_TICKS: u64 = 900;
const HEAL_TICKS: u64 = 600;

enum Envelope {
    Raft(Message),
    Heartbeat { from: BrokerId },
}

struct InTransit {
    due: u64,
    to: BrokerId,
    envelope: Envelope,
}

struct SimNode {
    id: BrokerId,
    node: Option<QuorumNode>,
    disk: Durable,
    incarnation: u64,
    /// Tickets this run of the node handed out, with the topic each creates.
    pending: HashMap<Ticket, String>,
    /// Ticks until a crashed node restarts.
    down_for: u64,
}

struct World {
    seed: u64,
    rng: Rng,
    nodes: Vec<SimNode>,
    voters: Vec<BrokerId>,
    network: Vec<InTransit>,
    tick: u64,
    faults: bool,
    /// Nodes cut off from everyone until the given tick.
    isolated: BTreeMap<BrokerId, u64>,
    leaders: BTreeMap<u64, BrokerId>,
    /// Applied index -> the image every node must hold at that index.
    images: BTreeMap<u64, String>,
    /// Topics whose creation was acknowledged, with the index it was applied at.
    acknowledged: BTreeMap<String, u64>,
    next_topic: u64,
}

impl World {
    fn new(seed: u64, size: usize) -> World {
        let voters: Vec<BrokerId> = (0..size as BrokerId).collect();
        let mut world = World {
            seed,
            rng: Rng(seed),
            nodes: Vec::new(),
            voters: voters.clone(),
            network: Vec::new(),
            tick: 0,
            faults: true,
            isolated: BTreeMap::new(),
            leaders: BTreeMap::new(),
            images: BTreeMap::new(),
            acknowledged: BTreeMap::new(),
            next_topic: 0,
        };
        for id in voters {
            world.nodes.push(SimNode {
                id,
                node: None,
                disk: Durable::new_cluster(&world.voters),
                incarnation: 0,
                pending: HashMap::new(),
                down_for: 0,
            });
            world.start(id as usize);
        }
        world
    }

    fn fail(&self, what: String) -> ! {
        for sim in &self.nodes {
            if let Some(node) = &sim.node {
                eprintln!(
                    "node {}: {:?}; {}",
                    sim.id,
                    node.status(),
                    node.describe_work()
                );
            }
        }
        panic!(
            "seed {} at tick {}: {what}\nreplay with TERN_SIM_SEED={}",
            self.seed, self.tick, self.seed
        )
    }

    fn start(&mut self, index: usize) {
        let election = 10 + self.rng.below(10) as usize;
        let sim = &mut self.nodes[index];
        sim.incarnation += 1;
        let config = QuorumConfig {
            node: sim.id,
            voters: self.voters.clone(),
            election_ticks: election..election + 1,
            heartbeat_ticks: 2,
            snapshot_every: 16,
            retry_ticks: 25,
            session_timeout_ms: 30 * TICK_MS,
            incarnation: sim.incarnation,
            cluster_id_candidate: format!("cluster-of-{}", sim.id),
        };
        let mut node = QuorumNode::restore(config, sim.disk.clone())
            .unwrap_or_else(|error| panic!("seed {}: restore failed: {error}", self.seed));
        let ticket = node.submit(vec![Command::RegisterBroker {
            id: sim.id,
            host: "127.0.0.1".into(),
            port: 9092 + sim.id as u16,
            listeners: Vec::new(),
        }]);
        sim.pending = HashMap::from([(ticket, String::new())]);
        sim.node = Some(node);
    }

    fn reachable(&self, from: BrokerId, to: BrokerId) -> bool {
        let cut = |id: &BrokerId| {
            self.isolated
                .get(id)
                .is_some_and(|until| *until > self.tick)
        };
        !cut(&from) && !cut(&to)
    }

    fn send(&mut self, from: BrokerId, to: BrokerId, envelope: Envelope) {
        if !self.reachable(from, to) {
            return;
        }
        if self.faults && self.rng.chance(50) {
            return; // lost
        }
        let delay = if self.faults { self.rng.below(4) } else { 0 };
        let duplicate = self.faults && self.rng.chance(30);
        if duplicate {
            if let Envelope::Raft(message) = &envelope {
                let copy = Envelope::Raft(message.clone());
                let due = self.tick + self.rng.below(6);
                self.network.push(InTransit {
                    due,
                    to,
                    envelope: copy,
                });
            }
        }
        self.network.push(InTransit {
            due: self.tick + delay,
            to,
            envelope,
        });
    }

    fn step(&mut self) {
        self.tick += 1;
        let now = self.tick as i64 * TICK_MS;
        if self.faults {
            self.inject_faults();
        }
        for index in 0..self.nodes.len() {
            let sim = &mut self.nodes[index];
            if sim.node.is_none() {
                if sim.down_for > 0 {
                    sim.down_for -= 1;
                }
                if sim.down_for == 0 && (!self.faults || self.rng.chance(100)) {
                    self.start(index);
                }
                continue;
            }
            let node = sim.node.as_mut().expect("live");
            node.tick(now);
            // Brokers heartbeat every 5 ticks to the leader they know (or themselves).
            if self.tick % 5 == index as u64 % 5 {
                let from = sim.id;
                let to = node.leader().unwrap_or(from);
                if to == from {
                    node.heartbeat(from, now);
                } else {
                    self.send(from, to, Envelope::Heartbeat { from });
                }
            }
        }
        // Clients create topics through any live node.
        if self.faults && self.rng.chance(150) {
            let index = self.rng.below(self.nodes.len() as u64) as usize;
            let name = format!("t{}", self.next_topic);
            self.next_topic += 1;
            let factor = 1 + self.rng.below(2) as i16;
            let sim = &mut self.nodes[index];
            if let Some(node) = sim.node.as_mut() {
                let ticket = node.submit(vec![create_topic(&name, factor)]);
                sim.pending.insert(ticket, name);
            }
        }
        self.deliver(now);
        for index in 0..self.nodes.len() {
            self.drain_ready(index);
        }
        self.check_leaders();
    }

    fn inject_faults(&mut self) {
        if self.rng.chance(8) {
            let index = self.rng.below(self.nodes.len() as u64) as usize;
            let sim = &mut self.nodes[index];
            if sim.node.take().is_some() {
                sim.down_for = 5 + self.rng.below(60);
            }
        }
        if self.rng.chance(5) {
            let id = self.rng.below(self.nodes.len() as u64) as BrokerId;
            let until = self.tick + 10 + self.rng.below(80);
            self.isolated.insert(id, until);
        }
    }

    fn deliver(&mut self, now: i64) {
        let tick = self.tick;
        let mut due: Vec<InTransit> = Vec::new();
        let mut index = 0;
        while index < self.network.len() {
            if self.network[index].due <= tick {
                due.push(self.network.swap_remove(index));
            } else {
                index += 1;
            }
        }
        // swap_remove scrambled them; put them in an order the seed decides.
        for i in (1..due.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            due.swap(i, j);
        }
        for message in due {
            let Some(node) = self.nodes[message.to as usize].node.as_mut() else {
                continue;
            };
            match message.envelope {
                Envelope::Raft(message) => node.step(message),
                Envelope::Heartbeat { from } => {
                    node.heartbeat(from, now);
                }
            }
        }
    }

    fn drain_ready(&mut self, index: usize) {
        loop {
            let Some(node) = self.nodes[index].node.as_mut() else {
                return;
            };
            let Some(output) = node.ready() else {
                return;
            };
            // A crash before the output is durable loses it whole.
            if self.faults && output.must_persist() && self.rng.chance(3) {
                self.nodes[index].node = None;
                self.nodes[index].down_for = 1 + self.rng.below(30);
                return;
            }
            self.nodes[index].disk.absorb(&output);
            self.after_persist(index, output);
        }
    }

    fn after_persist(&mut self, index: usize, output: Output) {
        let from = self.nodes[index].id;
        let node = self.nodes[index].node.as_ref().expect("live");
        let applied = node.applied();
        let image = node.image().clone();
        if let Some(published) = &output.image {
            self.check_image(from, applied, published);
        }
        for completion in output.completions {
            let Some(name) = self.nodes[index].pending.remove(&completion.ticket) else {
                continue;
            };
            if name.is_empty() {
                continue; // the broker's registration
            }
            match &completion.results[..] {
                [Ok(())] => {
                    if image.topic(&name).is_none() {
                        self.fail(format!(
                            "{name} acknowledged by {from} but not in its image"
                        ));
                    }
                    self.acknowledged.insert(name, applied);
                }
                [Err(_)] => {}
                other => self.fail(format!("one command, results {other:?}")),
            }
        }
        for message in output.messages {
            let to = tern_replication::quorum::broker_id(message.to);
            self.send(from, to, Envelope::Raft(message));
        }
    }

    fn check_image(&mut self, node: BrokerId, applied: u64, image: &MetadataImage) {
        if let Err(error) = image.check_invariants() {
            self.fail(format!("node {node}'s image breaks an invariant: {error}"));
        }
        for topic in image.topics.values() {
            for partition in &topic.partitions {
                if image
                    .broker(partition.leader)
                    .is_some_and(|broker| broker.fenced)
                {
                    self.fail(format!(
                        "{}-{} is led by fenced broker {}",
                        topic.name, partition.index, partition.leader
                    ));
                }
            }
        }
        let json = serde_json::to_string(image).expect("serializes");
        match self.images.get(&applied) {
            Some(other) if *other != json => self.fail(format!(
                "node {node} holds a different image at applied index {applied}:\n{json}\nvs\n{other}"
            )),
            Some(_) => {}
            None => {
                self.images.insert(applied, json);
            }
        }
        for (name, at) in &self.acknowledged {
            if applied >= *at && image.topic(name).is_none() {
                self.fail(format!(
                    "acknowledged topic {name} (index {at}) missing from node {node} at {applied}"
                ));
            }
        }
    }

    fn check_leaders(&mut self) {
        let leaders: Vec<(u64, BrokerId)> = self
            .nodes
            .iter()
            .filter_map(|sim| sim.node.as_ref())
            .filter(|node| node.is_leader())
            .map(|node| (node.term(), node.node()))
            .collect();
        for (term, id) in leaders {
            let first = *self.leaders.entry(term).or_insert(id);
            if first != id {
                self.fail(format!("two leaders in term {term}: {first} and {id}"));
            }
        }
    }

    fn heal_and_converge(&mut self) {
        self.faults = false;
        self.isolated.clear();
        for _ in 0..HEAL_TICKS {
            self.step();
        }
        // Then until every node has applied the same index (the controller keeps proposing
        // now and then, so a single instant may catch a commit halfway round).
        for _ in 0..HEAL_TICKS {
            let applied: BTreeSet<u64> = self
                .nodes
                .iter()
                .filter_map(|s| s.node.as_ref().map(QuorumNode::applied))
                .collect();
            if applied.len() == 1 {
                break;
            }
            self.step();
        }
        let live: Vec<&QuorumNode> = self.nodes.iter().filter_map(|s| s.node.as_ref()).collect();
        if live.len() != self.nodes.len() {
            self.fail("a node did not restart once faults stopped".into());
        }
        let first = live[0];
        for node in &live {
            if node.applied() != first.applied() || node.image() != first.image() {
                self.fail(format!(
                    "nodes {} and {} did not converge: applied {} vs {}",
                    first.node(),
                    node.node(),
                    first.applied(),
                    node.applied()
                ));
            }
        }
        let image = first.image().clone();
        for name in self.acknowledged.keys() {
            if image.topic(name).is_none() {
                self.fail(format!("acknowledged topic {name} lost"));
            }
        }
        if image.cluster_id.is_empty() {
            self.fail("the cluster never got an id".into());
        }
        let fenced: BTreeSet<BrokerId> = image
            .brokers
            .values()
            .filter(|b| b.fenced)
            .map(|b| b.id)
            .collect();
        if image.brokers.len() != self.nodes.len() || !fenced.is_empty() {
            self.fail(format!(
                "after healing every broker is registered and unfenced: {:?}, fenced {fenced:?}",
                image.brokers.keys().collect::<Vec<_>>()
            ));
        }
    }
}

fn create_topic(name: &str, factor: i16) -> Command {
    Command::CreateTopic {
        name: name.to_owned(),
        id: [7; 16],
        partitions: 2,
        replication_factor: factor,
        assignments: None,
        configs: BTreeMap::new(),
        internal: false,
    }
}

fn run(seed: u64, size: usize) -> (usize, u64) {
    let mut world = World::new(seed, size);
    for _ in 0..FAULT_TICKS {
        world.step();
    }
    world.heal_and_converge();
    (world.acknowledged.len(), world.leaders.len() as u64)
}

fn seeds() -> Vec<u64> {
    if let Ok(seed) = std::env::var("TERN_SIM_SEED") {
        return vec![seed.parse().expect("TERN_SIM_SEED is a number")];
    }
    let count: u64 = std::env::var("TERN_SIM_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    (0..count).map(|n| 0x7e2a_0000 + n).collect()
}

#[test]
fn three_voters_survive_loss_reordering_duplication_crashes_and_partitions() {
    let mut acknowledged = 0;
    let mut terms = 0;
    for seed in seeds() {
        let (acks, leaders) = run(seed, 3);
        acknowledged += acks;
        terms += leaders;
    }
    // The workload must have done something for the checks to mean anything.
    assert!(
        acknowledged > 0 && terms > 1,
        "acks {acknowledged}, terms {terms}"
    );
}

#[test]
fn five_voters_survive_the_same_faults() {
    for seed in seeds().into_iter().take(40) {
        run(seed ^ 0x5555, 5);
    }
}

#[test]
fn the_same_seed_replays_exactly() {
    let runs: Vec<_> = (0..2).map(|_| run(0x5eed, 3)).collect();
    assert_eq!(runs[0], runs[1]);
}
