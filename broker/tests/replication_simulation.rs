//! A deterministic simulation of partition replication: three brokers holding one partition
//! (replication factor 3, `min.insync.replicas` 2), each running the broker's own
//! `PartitionState` over a model log with a real `LeaderEpochCache`, followers reconciling
//! with the leader's epochs and fetching exactly as the fetcher does (the same
//! `partition::epochs` rules), leaders proposing ISR changes, and a controller applying the
//! broker's own metadata commands (FenceBroker when a lease expires, UnfenceBroker when the
//! broker is back, AlterPartition) and publishing images that reach each broker late or
//! never. Messages are lost, delayed, reordered and duplicated; brokers crash (keeping their
//! log: under the default flush policy an append is durable before anyone hears of it) and
//! restart; links are cut and healed. Everything random comes from one seed:
//!
//!     TERN_SIM_SEED=1234 cargo test -p tern-broker --test replication_simulation
//!
//! `TERN_SIM_SEEDS=N` runs N seeds (default 150; `TERN_SIM_TRACE=1` prints every delivery). Checked after every step: every
//! acknowledged record is in the log of every ISR member at the offset it was acknowledged
//! with; no broker's high watermark goes back while it lives, and no truncation cuts below
//! one; any two replicas' logs agree below the smaller of their high watermarks. After the
//! faults stop, every broker converges on one log that holds every acknowledged record, and
//! producing works again.

use std::collections::BTreeMap;
use std::sync::Arc;

use tern_broker::partition::epochs;
use tern_broker::partition::state::{IsrProposal, LogOffsets, PartitionState};
use tern_broker::producer_state::ProducerStates;
use tern_protocol::types::{LeaderEpoch, Offset};
use tern_replication::metadata::{BrokerId, Command, MetadataError, MetadataImage, PartitionMeta};
use tern_storage::LeaderEpochCache;

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

const BROKERS: usize = 3;
const TOPIC: &str = "t";
const MIN_INSYNC: usize = 2;
const STEP_MS: i64 = 10;
const LAG_MAX_MS: i64 = 400;
const SESSION_MS: i64 = 300;
const PROPOSAL_TIMEOUT_MS: i64 = 500;
const FETCH_TIMEOUT_MS: i64 = 300;
const FAULT_STEPS: u64 = 3_000;
const HEAL_STEPS: u64 = 3_000;

/// A replica's log: each record's leader epoch and value, and the epoch cache over it.
#[derive(Default, Clone)]
struct ModelLog {
    records: Vec<(LeaderEpoch, u64)>,
    epochs: LeaderEpochCache,
}

impl ModelLog {
    fn end(&self) -> Offset {
        Offset(self.records.len() as i64)
    }

    fn offsets(&self) -> LogOffsets {
        LogOffsets {
            log_start: Offset(0),
            durable_end: self.end(),
            log_end: self.end(),
        }
    }

    fn append(&mut self, epoch: LeaderEpoch, value: u64) {
        self.epochs.assign(epoch, self.end());
        self.records.push((epoch, value));
    }

    fn truncate(&mut self, to: Offset) {
        self.records.truncate(to.0 as usize);
        self.epochs.truncate_from_end(to);
    }

    fn latest_epoch(&self) -> Option<LeaderEpoch> {
        self.epochs.latest().map(|entry| entry.epoch)
    }
}

/// A fetch answer: where the records start, the records, and the leader's high watermark.
type Fetched = (Offset, Vec<(LeaderEpoch, u64)>, Offset);

#[derive(Debug, Clone)]
enum Message {
    Fetch {
        request: u64,
        epoch: LeaderEpoch,
        offset: Offset,
    },
    FetchAnswer {
        request: u64,
        epoch: LeaderEpoch,
        result: Result<Fetched, &'static str>,
    },
    EpochQuestion {
        request: u64,
        epoch: LeaderEpoch,
        asked: LeaderEpoch,
    },
    EpochAnswer {
        request: u64,
        epoch: LeaderEpoch,
        asked: LeaderEpoch,
        answer: Result<Option<(LeaderEpoch, Offset)>, &'static str>,
    },
    AlterIsr {
        epoch: i32,
        proposal: IsrProposal,
    },
    /// The controller's answer to a proposal: taken, stale (the image says why), or refused.
    AlterIsrAnswer {
        proposal: IsrProposal,
        result: Result<(), bool>,
    },
    Heartbeat,
    Image(Arc<MetadataImage>),
}

struct InTransit {
    due: i64,
    from: BrokerId,
    /// `None`: the controller.
    to: Option<BrokerId>,
    message: Message,
}

struct Broker {
    id: BrokerId,
    alive: bool,
    log: ModelLog,
    image: Arc<MetadataImage>,
    /// The partition's state while the broker runs (and once it has caught up).
    state: Option<PartitionState>,
    /// The leader epoch this follower last reconciled its log in.
    reconciled: Option<LeaderEpoch>,
    /// The outstanding fetch or epoch question (when it was sent, its id), if one is. Like
    /// the fetcher on its connection, a follower has one request out at a time and takes
    /// only the answer to it.
    outstanding: Option<(i64, u64)>,
    next_request: u64,
    /// When the outstanding ISR proposal was sent, if one is.
    proposal_sent: Option<i64>,
    /// Produces waiting for the high watermark: (offset, value, epoch appended in).
    pending: Vec<(Offset, u64, LeaderEpoch)>,
    /// The high watermark this incarnation last showed.
    high_watermark: Offset,
}

struct Sim {
    seed: u64,
    rng: Rng,
    now: i64,
    step: u64,
    controller: Arc<MetadataImage>,
    heard: [i64; BROKERS],
    brokers: Vec<Broker>,
    network: Vec<InTransit>,
    cut: [[bool; BROKERS + 1]; BROKERS + 1],
    acked: BTreeMap<i64, u64>,
    next_value: u64,
    faults: bool,
    /// Clients produce (off for the final settling).
    producing: bool,
}

fn meta(image: &MetadataImage) -> &PartitionMeta {
    image.partition(TOPIC, 0).expect("the partition exists")
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut image = MetadataImage::new("sim".into());
        for id in 0..BROKERS as BrokerId {
            image = image
                .apply(&Command::RegisterBroker {
                    id,
                    host: "sim".into(),
                    port: 1,
                    listeners: Vec::new(),
                })
                .expect("register");
        }
        image = image
            .apply(&Command::CreateTopic {
                name: TOPIC.into(),
                id: [7; 16],
                partitions: 1,
                replication_factor: BROKERS as i16,
                assignments: None,
                configs: BTreeMap::new(),
                internal: false,
            })
            .expect("create");
        let image = Arc::new(image);
        let brokers = (0..BROKERS as BrokerId)
            .map(|id| {
                let log = ModelLog::default();
                Broker {
                    id,
                    alive: true,
                    state: Some(new_state(id, &image, &log)),
                    log,
                    image: image.clone(),
                    reconciled: None,
                    outstanding: None,
                    next_request: 0,
                    proposal_sent: None,
                    pending: Vec::new(),
                    high_watermark: Offset(0),
                }
            })
            .collect();
        Sim {
            seed,
            rng: Rng(seed),
            now: 0,
            step: 0,
            controller: image,
            heard: [0; BROKERS],
            brokers,
            network: Vec::new(),
            cut: [[false; BROKERS + 1]; BROKERS + 1],
            acked: BTreeMap::new(),
            next_value: 1,
            faults: true,
            producing: true,
        }
    }

    fn fail(&self, what: String) -> ! {
        let mut dump = format!("controller: {:?}\n", meta(&self.controller));
        for broker in &self.brokers {
            dump += &format!(
                "broker {}: alive {}, image epoch {}, log end {}, latest epoch {:?}, reconciled {:?}, outstanding {:?}, state {:?}\n",
                broker.id,
                broker.alive,
                broker.image.epoch,
                broker.log.end().0,
                broker.log.latest_epoch(),
                broker.reconciled,
                broker.outstanding,
                broker.state.as_ref().map(|s| (s.leader(), s.leader_epoch(), s.isr().to_vec(), s.high_watermark(), s.proposed_isr().map(<[_]>::to_vec))),
            );
        }
        panic!(
            "seed {} step {}: {what}\n{dump}replay: TERN_SIM_SEED={} cargo test -p tern-broker --test replication_simulation",
            self.seed, self.step, self.seed
        );
    }

    fn send(&mut self, from: BrokerId, to: Option<BrokerId>, message: Message) {
        let (a, b) = (endpoint(Some(from)), endpoint(to));
        if self.faults && (self.cut[a][b] || self.rng.chance(30)) {
            return;
        }
        let copies = if self.faults && self.rng.chance(20) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = if self.faults {
                1 + self.rng.below(12) as i64
            } else {
                1 + self.rng.below(3) as i64
            };
            self.network.push(InTransit {
                due: self.now + delay * STEP_MS,
                from,
                to,
                message: message.clone(),
            });
        }
    }

    fn publish(&mut self, command: Command) -> bool {
        match self.controller.apply(&command) {
            Ok(next) => {
                self.controller = Arc::new(next);
                for to in 0..BROKERS as BrokerId {
                    let image = self.controller.clone();
                    // The controller is not a broker: its messages leave from "broker" -1,
                    // which `endpoint` maps to the controller's slot.
                    self.send(-1, Some(to), Message::Image(image));
                }
                true
            }
            Err(_) => false,
        }
    }

    fn run(&mut self) {
        for _ in 0..FAULT_STEPS {
            self.one_step();
        }
        self.faults = false;
        self.cut = [[false; BROKERS + 1]; BROKERS + 1];
        for id in 0..BROKERS {
            if !self.brokers[id].alive {
                self.restart(id);
            }
        }
        for _ in 0..HEAL_STEPS {
            self.one_step();
        }
        self.check_converged();
    }

    fn one_step(&mut self) {
        self.step += 1;
        self.now += STEP_MS;
        if self.faults {
            self.inject_faults();
        }
        // Clients produce to whoever leads in its own view.
        if self.producing && self.rng.chance(300) {
            let id = self.rng.below(BROKERS as u64) as usize;
            self.produce(id);
        }
        self.deliver_due();
        for id in 0..BROKERS {
            if self.brokers[id].alive {
                self.broker_duties(id);
            }
        }
        self.controller_duties();
        self.check();
    }

    fn inject_faults(&mut self) {
        if self.rng.chance(4) {
            let id = self.rng.below(BROKERS as u64) as usize;
            if self.brokers[id].alive {
                self.crash(id);
            } else {
                self.restart(id);
            }
        }
        if self.rng.chance(6) {
            let (a, b) = (
                self.rng.below(BROKERS as u64 + 1) as usize,
                self.rng.below(BROKERS as u64 + 1) as usize,
            );
            if a != b {
                let cut = !self.cut[a][b];
                self.cut[a][b] = cut;
                self.cut[b][a] = cut;
            }
        }
        // A broker left down too long comes back.
        for id in 0..BROKERS {
            if !self.brokers[id].alive && self.rng.chance(8) {
                self.restart(id);
            }
        }
    }

    fn crash(&mut self, id: usize) {
        if std::env::var_os("TERN_SIM_TRACE").is_some() {
            println!("{}: broker {id} crashes", self.step);
        }
        let broker = &mut self.brokers[id];
        broker.alive = false;
        broker.state = None;
        broker.reconciled = None;
        broker.outstanding = None;
        broker.proposal_sent = None;
        broker.pending.clear();
        self.network.retain(|m| m.to != Some(id as BrokerId));
    }

    /// A restarted broker catches up from the quorum before it serves: it starts from the
    /// controller's current image, its log as it was, and a high watermark at the log start.
    fn restart(&mut self, id: usize) {
        if std::env::var_os("TERN_SIM_TRACE").is_some() {
            println!("{}: broker {id} restarts", self.step);
        }
        let image = self.controller.clone();
        let broker = &mut self.brokers[id];
        broker.alive = true;
        broker.state = Some(new_state(broker.id, &image, &broker.log));
        broker.image = image;
        broker.high_watermark = Offset(0);
    }

    fn produce(&mut self, id: usize) {
        let now = self.now;
        let value = self.next_value;
        let broker = &mut self.brokers[id];
        let Some(state) = broker.state.as_mut() else {
            return;
        };
        if state.check_produce(-1, now, LAG_MAX_MS).is_err() {
            return;
        }
        self.next_value += 1;
        let epoch = state.leader_epoch();
        let offset = broker.log.end();
        if std::env::var_os("TERN_SIM_TRACE").is_some() {
            println!("{}: broker {id} appends {value} at {}", self.step, offset.0);
        }
        broker.log.append(epoch, value);
        state.local_log_moved(broker.log.offsets());
        broker.pending.push((offset, value, epoch));
        self.settle_acks(id);
    }

    /// Answers the produces the high watermark now covers (or fails those whose epoch ended).
    fn settle_acks(&mut self, id: usize) {
        let broker = &mut self.brokers[id];
        let Some(state) = broker.state.as_ref() else {
            return;
        };
        let mut acked = Vec::new();
        broker.pending.retain(|(offset, value, epoch)| {
            if !state.is_leader() || state.leader_epoch() != *epoch {
                return false;
            }
            if state.high_watermark() > *offset {
                if state.check_after_append().is_ok() {
                    acked.push((*offset, *value));
                }
                return false;
            }
            true
        });
        for (offset, value) in acked {
            if let Some(previous) = self.acked.insert(offset.0, value) {
                self.fail(format!(
                    "offset {} acknowledged twice: {previous} then {value}",
                    offset.0
                ));
            }
        }
    }

    fn deliver_due(&mut self) {
        let mut due = Vec::new();
        let mut index = 0;
        while index < self.network.len() {
            if self.network[index].due <= self.now {
                due.push(self.network.swap_remove(index));
            } else {
                index += 1;
            }
        }
        // Reordered among those due together.
        for i in (1..due.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            due.swap(i, j);
        }
        for message in due {
            match message.to {
                Some(to) if self.brokers[to as usize].alive => {
                    self.on_message(to as usize, message.from, message.message)
                }
                Some(_) => {}
                None => self.on_controller_message(message.from, message.message),
            }
        }
    }

    fn on_message(&mut self, id: usize, from: BrokerId, message: Message) {
        let now = self.now;
        if std::env::var_os("TERN_SIM_TRACE").is_some() {
            let brief = match &message {
                Message::Image(image) => format!("image {} {:?}", image.epoch, meta(image)),
                other => format!("{other:?}"),
            };
            println!("{} @{}: {from} -> {id}: {brief}", self.step, now);
        }
        match message {
            Message::Image(image) => {
                let broker = &mut self.brokers[id];
                if image.epoch <= broker.image.epoch {
                    return;
                }
                broker.image = image.clone();
                if let Some(state) = broker.state.as_mut() {
                    let before = state.leader_epoch();
                    state.update(meta(&image));
                    if state.leader_epoch() != before {
                        broker.reconciled = None;
                        broker.outstanding = None;
                    }
                }
                self.settle_acks(id);
            }
            Message::Fetch {
                request,
                epoch,
                offset,
            } => {
                let broker = &mut self.brokers[id];
                let Some(state) = broker.state.as_mut() else {
                    return;
                };
                let result = if !state.is_leader() {
                    Err("NOT_LEADER_OR_FOLLOWER")
                } else if state.check_leader_epoch(epoch.0).is_err() {
                    Err("FENCED_OR_UNKNOWN_LEADER_EPOCH")
                } else if offset > broker.log.end() {
                    Err("OFFSET_OUT_OF_RANGE")
                } else {
                    state.follower_fetched(from, offset, now);
                    let start = offset.0 as usize;
                    let end = (start + 1 + (now as usize % 4)).min(broker.log.records.len());
                    Ok((
                        offset,
                        broker.log.records[start..end].to_vec(),
                        state.high_watermark(),
                    ))
                };
                self.settle_acks(id);
                self.send(
                    id as BrokerId,
                    Some(from),
                    Message::FetchAnswer {
                        request,
                        epoch,
                        result,
                    },
                );
            }
            Message::FetchAnswer {
                request,
                epoch,
                result,
            } => {
                let broker = &mut self.brokers[id];
                let Some(state) = broker.state.as_mut() else {
                    return;
                };
                if broker.outstanding.map(|(_, id)| id) != Some(request) {
                    return;
                }
                broker.outstanding = None;
                if state.is_leader() || state.leader() != from || state.leader_epoch() != epoch {
                    return;
                }
                match result {
                    Ok((base, records, high_watermark)) => {
                        if base != broker.log.end() {
                            // The fetcher's append fails (overlap or gap) and it reconciles.
                            broker.reconciled = None;
                            return;
                        }
                        for (epoch, value) in records {
                            broker.log.append(epoch, value);
                        }
                        state.follower_appended(broker.log.offsets(), high_watermark);
                    }
                    Err(_) => broker.reconciled = None,
                }
            }
            Message::EpochQuestion {
                request,
                epoch,
                asked,
            } => {
                let broker = &self.brokers[id];
                let Some(state) = broker.state.as_ref() else {
                    return;
                };
                let answer = if !state.is_leader() {
                    Err("NOT_LEADER_OR_FOLLOWER")
                } else if state.check_leader_epoch(epoch.0).is_err() {
                    Err("FENCED_OR_UNKNOWN_LEADER_EPOCH")
                } else {
                    let end = broker.log.end();
                    Ok(epochs::leader_end_offset(
                        broker.log.epochs.end_offset_for(asked, end),
                        broker.log.latest_epoch(),
                        state.leader_epoch(),
                        asked,
                        end,
                    ))
                };
                self.send(
                    id as BrokerId,
                    Some(from),
                    Message::EpochAnswer {
                        request,
                        epoch,
                        asked,
                        answer,
                    },
                );
            }
            Message::EpochAnswer {
                request,
                epoch,
                asked,
                answer,
            } => {
                let broker = &mut self.brokers[id];
                let Some(state) = broker.state.as_mut() else {
                    return;
                };
                if broker.outstanding.map(|(_, id)| id) != Some(request) {
                    return;
                }
                broker.outstanding = None;
                if state.is_leader() || state.leader() != from || state.leader_epoch() != epoch {
                    return;
                }
                let Ok(answer) = answer else {
                    return;
                };
                if broker.log.latest_epoch() != Some(asked) {
                    return;
                }
                let log = &broker.log;
                let (cut, settled) = epochs::follower_cut(
                    asked,
                    answer,
                    |e| log.epochs.end_offset_for(e, log.end()),
                    log.end(),
                    state.high_watermark(),
                );
                if cut < broker.log.end() {
                    broker.log.truncate(cut);
                    if state.truncated(broker.log.offsets()) {
                        let hw = state.high_watermark().0;
                        self.fail(format!(
                            "broker {id} truncated to {} below its high watermark",
                            hw
                        ));
                    }
                }
                // Not settled: the cut removed the epoch asked about; ask again.
                if settled {
                    broker.reconciled = Some(epoch);
                }
            }
            Message::AlterIsrAnswer { proposal, result } => {
                let broker = &mut self.brokers[id];
                let Some(state) = broker.state.as_mut() else {
                    return;
                };
                // Only the answer to the proposal outstanding now counts (the broker's task
                // awaits exactly that one).
                if state.isr_proposal() != Some(proposal) {
                    return;
                }
                broker.proposal_sent = None;
                match result {
                    Ok(()) => {}
                    Err(true) => state.isr_proposal_unanswered(),
                    Err(false) => state.isr_proposal_refused(),
                }
            }
            Message::AlterIsr { .. } | Message::Heartbeat => {}
        }
    }

    fn on_controller_message(&mut self, from: BrokerId, message: Message) {
        match message {
            Message::Heartbeat => {
                self.heard[from as usize] = self.now;
                let fenced = self
                    .controller
                    .broker(from)
                    .is_some_and(|broker| broker.fenced);
                if fenced {
                    self.publish(Command::UnfenceBroker { id: from });
                }
            }
            Message::AlterIsr { epoch, proposal } => {
                let command = Command::AlterPartition {
                    topic: TOPIC.into(),
                    partition: 0,
                    leader: from,
                    leader_epoch: epoch,
                    partition_epoch: proposal.partition_epoch,
                    isr: proposal.isr.clone(),
                };
                let answer = match self.controller.apply(&command) {
                    Ok(_) => {
                        self.publish(command);
                        Ok(())
                    }
                    Err(MetadataError::StaleLeaderEpoch { .. }) => Err(true),
                    Err(_) => Err(false),
                };
                self.send(
                    -1,
                    Some(from),
                    Message::AlterIsrAnswer {
                        proposal,
                        result: answer,
                    },
                );
            }
            _ => {}
        }
    }

    fn broker_duties(&mut self, id: usize) {
        let now = self.now;
        // Every 100 ms, a third of the session, as brokers heartbeat.
        if self.step % 10 == id as u64 {
            self.send(id as BrokerId, None, Message::Heartbeat);
        }
        let broker = &mut self.brokers[id];
        let Some(state) = broker.state.as_mut() else {
            return;
        };
        if state.is_leader() {
            if broker
                .proposal_sent
                .is_some_and(|sent| now - sent > PROPOSAL_TIMEOUT_MS)
            {
                state.isr_proposal_unanswered();
                broker.proposal_sent = None;
            }
            if let Some(proposal) = state.isr_duty(now, LAG_MAX_MS) {
                broker.proposal_sent = Some(now);
                let epoch = state.leader_epoch().0;
                self.send(id as BrokerId, None, Message::AlterIsr { epoch, proposal });
            }
            self.settle_acks(id);
            return;
        }
        let leader = state.leader();
        if leader < 0 || leader == id as BrokerId {
            return;
        }
        if broker
            .outstanding
            .is_some_and(|(sent, _)| now - sent <= FETCH_TIMEOUT_MS)
        {
            return;
        }
        let epoch = state.leader_epoch();
        broker.next_request += 1;
        let request = broker.next_request;
        let message = if broker.reconciled == Some(epoch) {
            Message::Fetch {
                request,
                epoch,
                offset: broker.log.end(),
            }
        } else {
            match broker.log.latest_epoch() {
                // Nothing here: nothing can diverge.
                None => {
                    broker.reconciled = Some(epoch);
                    return;
                }
                Some(asked) => Message::EpochQuestion {
                    request,
                    epoch,
                    asked,
                },
            }
        };
        broker.outstanding = Some((now, request));
        self.send(id as BrokerId, Some(leader), message);
    }

    fn controller_duties(&mut self) {
        for id in 0..BROKERS as BrokerId {
            let registered = self.controller.broker(id).is_some_and(|b| !b.fenced);
            if registered && self.now - self.heard[id as usize] > SESSION_MS {
                self.publish(Command::FenceBroker { id });
            }
        }
        // Images are re-sent now and then, as a restarted or partitioned broker catches up.
        if self.rng.chance(20) {
            for to in 0..BROKERS as BrokerId {
                let image = self.controller.clone();
                self.send(-1, Some(to), Message::Image(image));
            }
        }
    }

    fn check(&mut self) {
        let isr = meta(&self.controller).isr.clone();
        for member in &isr {
            let log = &self.brokers[*member as usize].log;
            for (offset, value) in &self.acked {
                if log.records.get(*offset as usize).map(|r| r.1) != Some(*value) {
                    self.fail(format!(
                        "acknowledged record {value} at offset {offset} missing from ISR member {member}'s log"
                    ));
                }
            }
        }
        for id in 0..BROKERS {
            let Some(state) = self.brokers[id].state.as_ref() else {
                continue;
            };
            let hw = state.high_watermark();
            if hw < self.brokers[id].high_watermark {
                self.fail(format!(
                    "broker {id}'s high watermark went back from {} to {}",
                    self.brokers[id].high_watermark.0, hw.0
                ));
            }
            self.brokers[id].high_watermark = hw;
        }
        for a in 0..BROKERS {
            for b in a + 1..BROKERS {
                let (Some(sa), Some(sb)) = (&self.brokers[a].state, &self.brokers[b].state) else {
                    continue;
                };
                let below = sa.high_watermark().min(sb.high_watermark()).0 as usize;
                let (la, lb) = (&self.brokers[a].log.records, &self.brokers[b].log.records);
                if la[..below] != lb[..below] {
                    self.fail(format!(
                        "brokers {a} and {b} disagree below the high watermark {below}"
                    ));
                }
            }
        }
    }

    fn check_converged(&mut self) {
        // Producing works again, and everything ends in one log on every broker.
        let before = self.acked.len();
        for _ in 0..200 {
            for id in 0..BROKERS {
                self.produce(id);
            }
            self.one_step();
        }
        self.producing = false;
        for _ in 0..HEAL_STEPS {
            self.one_step();
        }
        if self.acked.len() <= before {
            self.fail("nothing was acknowledged after the faults stopped".into());
        }
        let first = self.brokers[0].log.records.clone();
        for broker in &self.brokers {
            if broker.log.records != first {
                self.fail(format!(
                    "broker {} ended with {} records where broker 0 has {}",
                    broker.id,
                    broker.log.records.len(),
                    first.len()
                ));
            }
            let hw = broker.state.as_ref().map(|s| s.high_watermark().0);
            if hw != Some(first.len() as i64) {
                self.fail(format!(
                    "broker {}'s high watermark {hw:?} short of the log end {}",
                    broker.id,
                    first.len()
                ));
            }
        }
        let isr = &meta(&self.controller).isr;
        if isr.len() != BROKERS {
            self.fail(format!("the ISR stayed at {isr:?}"));
        }
    }
}

fn endpoint(broker: Option<BrokerId>) -> usize {
    match broker {
        Some(id) if id >= 0 => id as usize,
        _ => BROKERS,
    }
}

fn new_state(id: BrokerId, image: &MetadataImage, log: &ModelLog) -> PartitionState {
    PartitionState::new(
        id,
        meta(image),
        MIN_INSYNC,
        log.offsets(),
        ProducerStates::default(),
    )
}

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("TERN_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let count = std::env::var("TERN_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150u64);
    (0..count).collect()
}

#[test]
fn replicas_never_lose_acknowledged_records_under_crashes_loss_and_partitions() {
    let mut acked = 0;
    for seed in seeds() {
        let mut sim = Sim::new(seed);
        sim.run();
        acked += sim.acked.len();
    }
    println!("acknowledged records across seeds: {acked}");
}

#[test]
fn a_seed_replays_exactly() {
    let run = |seed| {
        let mut sim = Sim::new(seed);
        sim.run();
        (
            sim.acked.clone(),
            sim.brokers
                .iter()
                .map(|b| b.log.records.clone())
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(run(42), run(42));
}
