//! The metadata quorum on shard 0: the driver that runs `tern_replication::quorum::QuorumNode`
//! (raft-rs and our glue) with real time, a real disk (`wal`) and real sockets (`transport`),
//! and `RaftController`, the `Controller` every admin request reaches.
//!
//! One voter (`tern serve` with no `--voters`) is the same code with no peers: the node elects
//! itself at start and commits alone. With several voters, any broker's controller submits
//! commands; raft-rs forwards them to the leader, and the proposer answers its client once it
//! has applied them.
//!
//! Start-up (`start`): restore the node from `quorum.log`, join the peers, register this
//! broker (its `RegisterBroker` being applied here proves this node caught up with everything
//! committed before it), create `__consumer_offsets` if the cluster has none, and only then
//! publish the image to the shards and let them serve. A peer that refuses this node (another
//! cluster id or voter set) makes start-up fail with its reason.

pub mod transport;
pub mod wal;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use futures::future::LocalBoxFuture;
use futures::StreamExt;
use tern_replication::metadata::{
    BrokerId, Command, Endpoint, MetadataError, MetadataImage, NO_LEADER,
};
use tern_replication::quorum::{
    broker_id, Durable, QuorumConfig, QuorumNode, QuorumStatus, Ticket,
};

use crate::config::BrokerConfig;
use crate::controller::{CommandResults, Controller, ControllerError, Publish};
use crate::limits;
use transport::{Hello, Inbound, Peer};

/// One Raft tick. Elections wait 10 to 20 ticks without a leader's word (Kafka's KRaft waits
/// 1 s plus up to 1 s); the leader heartbeats every 2.
pub const TICK: Duration = Duration::from_millis(100);
const ELECTION_TICKS: std::ops::Range<usize> = 10..20;
const HEARTBEAT_TICKS: usize = 2;
/// A proposal not applied after this many ticks is proposed again (applied once).
const RETRY_TICKS: u64 = 30;
/// Applied entries between snapshots of the image (and rewrites of `quorum.log`).
const SNAPSHOT_EVERY: u64 = 1000;

/// A command batch's results and the image right after it (when known exactly).
type Answer = (CommandResults, Option<Arc<MetadataImage>>);

/// What start-up needs from the main thread: the persisted quorum state.
pub struct Restored {
    pub durable: Durable,
    pub wal_len: u64,
}

/// Loads (or creates) the quorum state before the shards start: `quorum.log`, else a one-node
/// `image.json` from before the quorum (upgraded in place), else a new cluster's.
pub fn restore_blocking(config: &BrokerConfig) -> Result<Restored, String> {
    let dir = config.data_dir.join(crate::controller::METADATA_DIR);
    let voters = config.voter_ids();
    if let Some((durable, wal_len)) = wal::load(&dir)? {
        if durable.voters() != voters {
            return Err(format!(
                "this data directory belongs to a quorum of voters {:?}, not {:?}; start it with the voter set it was made with",
                durable.voters(),
                voters
            ));
        }
        return Ok(Restored { durable, wal_len });
    }
    let durable = match crate::controller::load_image(&config.data_dir)? {
        Some(mut image) => {
            if voters != [config.node_id] {
                return Err(format!(
                    "{} holds a one-node cluster's metadata; it cannot join a quorum of voters {voters:?}",
                    config.data_dir.display()
                ));
            }
            let (host, port) = config.advertised_host_port();
            image.upgrade_single_node(config.node_id, &host, port as u16);
            Durable::from_image(&voters, &image)
        }
        None => Durable::new_cluster(&voters),
    };
    let wal_len = wal::create_blocking(&dir, &durable)?;
    Ok(Restored { durable, wal_len })
}

pub struct Quorum {
    node: RefCell<QuorumNode>,
    me: BrokerId,
    peers: BTreeMap<BrokerId, Rc<Peer>>,
    events: mpsc::UnboundedSender<Inbound>,
    waiters: RefCell<HashMap<Ticket, oneshot::Sender<Answer>>>,
    /// Why a peer refused this node, once one did.
    refused: RefCell<Option<String>>,
    /// Images are handed to the shards only once start-up has caught up.
    publishing: Cell<bool>,
    /// The known leader, for every shard (`Shard::controller_id`).
    leader: Arc<AtomicI32>,
    publisher: Publish,
    /// One publication at a time, never an older image after a newer one.
    publish_lock: glommio::sync::Semaphore,
    published_epoch: Cell<Option<u64>>,
    producer_ids: RefCell<std::ops::Range<i64>>,
    _tasks: RefCell<Vec<glommio::Task<()>>>,
}

impl Quorum {
    pub fn status(&self) -> QuorumStatus {
        self.node.borrow().status()
    }

    pub fn image(&self) -> Arc<MetadataImage> {
        self.node.borrow().image().clone()
    }

    /// Hands `image` to every shard unless a newer one was handed out already.
    pub async fn publish(&self, image: Arc<MetadataImage>) -> Result<(), ControllerError> {
        let _permit = self
            .publish_lock
            .acquire_permit(1)
            .await
            .map_err(|_| ControllerError::ShardUnavailable)?;
        if self
            .published_epoch
            .get()
            .is_some_and(|epoch| epoch >= image.epoch)
        {
            return Ok(());
        }
        let epoch = image.epoch;
        (self.publisher)(image).await?;
        self.published_epoch.set(Some(epoch));
        Ok(())
    }

    fn wake(&self) {
        let _ = self.events.unbounded_send(Inbound::Wake);
    }

    async fn submit(&self, commands: Vec<Command>) -> Result<CommandResults, ControllerError> {
        self.submit_for_image(commands).await.map(|answer| answer.0)
    }

    /// `submit`, with the image right after the commands applied when it is known exactly.
    async fn submit_for_image(&self, commands: Vec<Command>) -> Result<Answer, ControllerError> {
        if let Some(reason) = self.refused.borrow().as_ref() {
            return Err(ControllerError::Unavailable(reason.clone()));
        }
        let (tx, rx) = oneshot::channel();
        let ticket = self.node.borrow_mut().submit(commands);
        self.waiters.borrow_mut().insert(ticket, tx);
        self.wake();
        let timeout = limits::CONTROLLER_COMMIT_TIMEOUT;
        let answer = glommio::timer::timeout(timeout, async { Ok(rx.await.ok()) }).await;
        match answer {
            Ok(Some(answer)) => Ok(answer),
            _ => {
                self.waiters.borrow_mut().remove(&ticket);
                Err(ControllerError::TimedOut(format!(
                    "the metadata change was not committed and applied within {timeout:?}; it \
                     may still be (quorum leader: {:?})",
                    self.node.borrow().leader()
                )))
            }
        }
    }
}

/// Starts the quorum on shard 0 and brings this broker into the cluster (see the module
/// documentation). Returns once this node has caught up and the shards hold the image.
pub async fn start(
    config: Arc<BrokerConfig>,
    restored: Restored,
    leader: Arc<AtomicI32>,
    publish: Publish,
) -> Result<Rc<Quorum>, String> {
    let dir = config.data_dir.join(crate::controller::METADATA_DIR);
    let wal = wal::Wal::open(&dir, restored.durable.clone(), restored.wal_len).await?;
    let voters = config.voter_ids();
    let incarnation = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let node = QuorumNode::restore(
        QuorumConfig {
            node: config.node_id,
            voters: voters.clone(),
            election_ticks: ELECTION_TICKS,
            heartbeat_ticks: HEARTBEAT_TICKS,
            snapshot_every: SNAPSHOT_EVERY,
            retry_ticks: RETRY_TICKS,
            session_timeout_ms: config.broker_session_timeout_ms,
            incarnation,
            cluster_id_candidate: config
                .cluster_id
                .clone()
                .unwrap_or_else(crate::ids::new_cluster_id),
        },
        restored.durable,
    )?;
    let (events, inbox) = mpsc::unbounded();
    let mut tasks = Vec::new();
    let mut peers = BTreeMap::new();
    let addresses: Vec<(BrokerId, SocketAddr)> = config.voters.clone();
    if voters.len() > 1 {
        let me = config
            .voters
            .iter()
            .find(|(id, _)| *id == config.node_id)
            .map(|(_, addr)| *addr)
            .ok_or_else(|| format!("node id {} is not in the voter set", config.node_id))?;
        let listener = crate::runtime::bind_exclusive(me).map_err(|error| {
            format!(
                "cannot listen for the quorum on {me} (node id {}'s address in --voters): {error}; is another broker running with node id {}?",
                config.node_id, config.node_id
            )
        })?;
        let hello = Hello {
            cluster_id: node.image().cluster_id.clone(),
            node: config.node_id,
            voters: addresses.clone(),
        };
        for (peer, addr) in addresses.iter().filter(|(id, _)| *id != config.node_id) {
            let (handle, task) = transport::dial(*peer, *addr, hello.clone(), events.clone());
            peers.insert(*peer, handle);
            tasks.push(task);
        }
        let quorum_image = Rc::new(RefCell::new(node.image().clone()));
        let vet_config = config.clone();
        let vet: transport::Vet = {
            let quorum_image = quorum_image.clone();
            Rc::new(move |hello: &Hello| vet(&vet_config, &quorum_image.borrow(), hello))
        };
        tasks.push(glommio::spawn_local(transport::serve(
            listener,
            vet,
            events.clone(),
        )));
        // The vetting closure reads the cluster id as the node learns it.
        tasks.push(track_image(quorum_image));
    }
    let quorum = Rc::new(Quorum {
        node: RefCell::new(node),
        me: config.node_id,
        peers,
        events: events.clone(),
        waiters: RefCell::new(HashMap::new()),
        refused: RefCell::new(None),
        publishing: Cell::new(false),
        leader,
        publisher: publish,
        publish_lock: glommio::sync::Semaphore::new(1),
        published_epoch: Cell::new(None),
        producer_ids: RefCell::new(0..0),
        _tasks: RefCell::new(Vec::new()),
    });
    tasks.push(glommio::spawn_local(drive(
        quorum.clone(),
        wal,
        inbox,
        config.broker_heartbeat_interval_ms,
    )));
    tasks.push(glommio::spawn_local({
        let events = events.clone();
        async move {
            loop {
                glommio::timer::sleep(TICK).await;
                if events.unbounded_send(Inbound::Tick).is_err() {
                    break;
                }
            }
        }
    }));
    *quorum._tasks.borrow_mut() = tasks;
    QUORUM_IMAGE.with(|cell| *cell.borrow_mut() = Some(Rc::downgrade(&quorum)));

    // Join: register (retrying while the quorum forms), then the internal topic.
    let (host, port) = config.advertised_host_port();
    let port =
        u16::try_from(port).map_err(|_| format!("advertised port {port} is out of range"))?;
    let listeners: Vec<Endpoint> = config
        .effective_listeners()
        .iter()
        .chain(config.native_listener().as_ref())
        .map(|listener| {
            let (host, port) = listener.advertised_host_port();
            Endpoint {
                name: listener.name.clone(),
                host,
                port,
            }
        })
        .collect();
    let started = std::time::Instant::now();
    loop {
        if let Some(reason) = quorum.refused.borrow().clone() {
            return Err(format!("the cluster refused this broker: {reason}"));
        }
        let register = Command::RegisterBroker {
            id: config.node_id,
            host: host.clone(),
            port,
            listeners: listeners.clone(),
        };
        match quorum.submit(vec![register]).await {
            Ok(results) => {
                results
                    .into_iter()
                    .next()
                    .unwrap_or(Ok(()))
                    .map_err(|error| format!("registering this broker: {error}"))?;
                break;
            }
            Err(error) => {
                if let Some(reason) = quorum.refused.borrow().clone() {
                    return Err(format!("the cluster refused this broker: {reason}"));
                }
                tracing::warn!(%error, waited_s = started.elapsed().as_secs(), "waiting for the metadata quorum");
            }
        }
    }
    // The first controller names the cluster; a broker serves only once it has a name.
    while quorum.image().cluster_id.is_empty() {
        if started.elapsed() > limits::CONTROLLER_COMMIT_TIMEOUT * 4 {
            return Err("the quorum never named the cluster".into());
        }
        glommio::timer::sleep(TICK).await;
    }
    let image = quorum.image();
    if let Some(wanted) = &config.cluster_id {
        if *wanted != image.cluster_id {
            return Err(format!(
                "this broker was started with cluster id {wanted}, but its quorum's cluster id is {}",
                image.cluster_id
            ));
        }
    }
    let partitions = config.offsets_topic_partitions;
    if !(1..=limits::TOPIC_PARTITIONS_MAX).contains(&partitions) {
        return Err(format!(
            "offsets topic partitions must be 1..={}",
            limits::TOPIC_PARTITIONS_MAX
        ));
    }
    // Kafka's offsets.topic.replication.factor (3), or one per voter if there are fewer.
    let factor = config
        .voter_ids()
        .len()
        .min(tern_replication::metadata::DEFAULT_REPLICATION_FACTOR_MAX) as i16;
    let command = move || {
        crate::handlers::offsets_topic_command(
            partitions,
            factor,
            config.offsets_topic_segment_bytes,
        )
    };
    if !create_offsets_topic(&quorum, command()).await? {
        // Too few brokers have registered yet: groups wait (COORDINATOR_NOT_AVAILABLE, which
        // clients retry) until enough have.
        glommio::spawn_local(offsets_topic_later(quorum.clone(), command)).detach();
    }
    quorum.publishing.set(true);
    quorum.wake();
    Ok(quorum)
}

/// Creates `__consumer_offsets` unless it exists; `Ok(false)` when fewer than `factor`
/// brokers are live.
async fn create_offsets_topic(quorum: &Rc<Quorum>, command: Command) -> Result<bool, String> {
    if quorum.image().topic(crate::group::OFFSETS_TOPIC).is_some() {
        return Ok(true);
    }
    let results = quorum
        .submit(vec![command])
        .await
        .map_err(|e| e.to_string())?;
    match results.into_iter().next() {
        Some(Err(MetadataError::InvalidReplicationFactor { .. })) => Ok(false),
        // Created, or another broker created it first.
        _ => Ok(true),
    }
}

/// Retries creating `__consumer_offsets` until enough brokers are live to hold its replicas.
async fn offsets_topic_later(quorum: Rc<Quorum>, command: impl Fn() -> Command) {
    loop {
        glommio::timer::sleep(Duration::from_millis(500)).await;
        match create_offsets_topic(&quorum, command()).await {
            Ok(true) => {
                tracing::info!("__consumer_offsets created");
                return;
            }
            Ok(false) => {}
            Err(error) => tracing::debug!(%error, "creating __consumer_offsets"),
        }
    }
}

thread_local! {
    /// Shard 0's quorum, for the admin endpoint's status.
    static QUORUM_IMAGE: RefCell<Option<std::rc::Weak<Quorum>>> = const { RefCell::new(None) };
}

/// This shard's quorum, if it hosts one (shard 0).
pub fn local() -> Option<Rc<Quorum>> {
    QUORUM_IMAGE.with(|cell| cell.borrow().as_ref().and_then(std::rc::Weak::upgrade))
}

/// Keeps the vetting closure's copy of the image current (cluster id learned after start).
fn track_image(cell: Rc<RefCell<Arc<MetadataImage>>>) -> glommio::Task<()> {
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(TICK).await;
            if let Some(quorum) = local() {
                *cell.borrow_mut() = quorum.image();
            }
        }
    })
}

/// The acceptor's checks on a dialling node.
fn vet(config: &BrokerConfig, image: &MetadataImage, hello: &Hello) -> Result<(), String> {
    if hello.voters != config.voters {
        return Err(format!(
            "voter set mismatch: node {} has {:?}, the quorum has {:?}",
            hello.node, hello.voters, config.voters
        ));
    }
    if hello.node == config.node_id || !config.voter_ids().contains(&hello.node) {
        return Err(format!(
            "node id {} is not another member of the voter set",
            hello.node
        ));
    }
    if !hello.cluster_id.is_empty()
        && !image.cluster_id.is_empty()
        && hello.cluster_id != image.cluster_id
    {
        return Err(format!(
            "cluster id mismatch: node {} belongs to cluster {}, this quorum is cluster {}",
            hello.node, hello.cluster_id, image.cluster_id
        ));
    }
    Ok(())
}

async fn drive(
    quorum: Rc<Quorum>,
    mut wal: wal::Wal,
    mut inbox: mpsc::UnboundedReceiver<Inbound>,
    heartbeat_interval_ms: i64,
) {
    let mut last_heartbeat = i64::MIN / 2;
    while let Some(event) = inbox.next().await {
        let now = crate::clock::monotonic_ms();
        {
            let mut node = quorum.node.borrow_mut();
            match event {
                Inbound::Raft(message) => node.step(message),
                Inbound::Heartbeat(broker) => {
                    node.heartbeat(broker, now);
                }
                Inbound::Refused { peer, reason } => {
                    tracing::error!(peer, %reason, "a voter refused this broker");
                    *quorum.refused.borrow_mut() = Some(reason);
                }
                Inbound::Tick => {
                    node.tick(now);
                    if now - last_heartbeat >= heartbeat_interval_ms {
                        last_heartbeat = now;
                        match node.leader() {
                            Some(leader) if leader != quorum.me => {
                                if let Some(peer) = quorum.peers.get(&leader) {
                                    peer.send_heartbeat(quorum.me);
                                }
                            }
                            _ => {
                                node.heartbeat(quorum.me, now);
                            }
                        }
                    }
                }
                Inbound::Wake => {}
            }
        }
        loop {
            let output = quorum.node.borrow_mut().ready();
            let Some(output) = output else {
                break;
            };
            if let Err(error) = wal.persist(&output).await {
                // Raft's promises rest on what was persisted; a node that cannot persist
                // must stop rather than vote or acknowledge.
                tracing::error!(%error, "the metadata quorum cannot persist its state; stopping");
                eprintln!("tern: fatal: {error}");
                std::process::exit(1);
            }
            for message in output.messages {
                if let Some(peer) = quorum.peers.get(&broker_id(message.to)) {
                    peer.send_raft(message);
                }
            }
            if quorum.publishing.get() {
                if let Some(image) = output.image {
                    if let Err(error) = quorum.publish(image).await {
                        tracing::warn!(%error, "publishing metadata to the shards");
                    }
                }
            }
            for completion in output.completions {
                if let Some(waiter) = quorum.waiters.borrow_mut().remove(&completion.ticket) {
                    let _ = waiter.send((completion.results, completion.image));
                }
            }
        }
        let leader = quorum.node.borrow().leader().unwrap_or(NO_LEADER);
        quorum.leader.store(leader, Ordering::Relaxed);
    }
}

/// The `Controller` of every broker: commands go through the quorum.
pub struct RaftController {
    quorum: Rc<Quorum>,
}

impl RaftController {
    pub fn new(quorum: Rc<Quorum>) -> RaftController {
        RaftController { quorum }
    }

    /// Hands the shards the image as of now (start-up, after catching up).
    pub async fn publish_current(&self) -> Result<(), ControllerError> {
        self.quorum.publish(self.quorum.image()).await
    }
}

impl Controller for RaftController {
    fn execute(
        &self,
        commands: Vec<Command>,
    ) -> LocalBoxFuture<'_, Result<CommandResults, ControllerError>> {
        Box::pin(async move {
            let results = self.quorum.submit(commands).await?;
            // The driver published the image before answering; a command that changed
            // nothing published nothing.
            Ok(results)
        })
    }

    fn allocate_producer_id(&self) -> LocalBoxFuture<'_, Result<i64, ControllerError>> {
        Box::pin(async move {
            if let Some(id) = self.quorum.producer_ids.borrow_mut().next() {
                return Ok(id);
            }
            let count = limits::PRODUCER_ID_BLOCK;
            loop {
                let (results, image) = self
                    .quorum
                    .submit_for_image(vec![Command::AllocateProducerIds { count }])
                    .await?;
                if let Some(Err(error)) = results.into_iter().next() {
                    return Err(ControllerError::Unavailable(error.to_string()));
                }
                // Our block ends where the counter stood right after our command; without
                // that exact image (learned from a snapshot) the block is skipped, not guessed.
                let Some(image) = image else {
                    continue;
                };
                let end = image.producer_id_next;
                let mut block = self.quorum.producer_ids.borrow_mut();
                if block.is_empty() {
                    *block = (end - count)..end;
                }
                if let Some(id) = block.next() {
                    return Ok(id);
                }
            }
        })
    }

    fn controller_id(&self) -> BrokerId {
        self.quorum.node.borrow().leader().unwrap_or(self.quorum.me)
    }
}
