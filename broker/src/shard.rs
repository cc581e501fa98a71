//! One shard: the state a core owns (its partitions, its copy of the metadata image, its
//! coordinators' registries, its probes) and the way other shards reach it (`invoke_on`).
//! Also the shard-wide duties on its partitions: applying each image (opening, updating,
//! replacing and dropping replicas; `next_image` wakes whoever follows images, such as the
//! replica fetchers; new partitions open a bounded number at a time), the leaders' ISR
//! checks, restarting a follower's log at its leader's start, retention, the periodic
//! checkpoint of active segments' indexes (what a crash makes `open` rescan), and reaching the
//! controller (`run_commands`). The log cleaner's choices are `cleaner`'s.
//!
//! Architecture invariant: a partition is touched only by the shard that owns it (derived
//! from the metadata image by `placement`); every other shard reaches it through `invoke_on`,
//! which carries a `Send` closure over the channel mesh and runs the future it builds on the
//! owner. Shards share nothing mutable.
//!
//! Architecture invariant: a shard's image only moves forward (its epoch never decreases), and
//! a partition is in the shard's table only once its log is open; a directory has at most one
//! open log (a replica being replaced or restarted stays out of the table until its old log
//! is closed).

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::oneshot;
use glommio::channels::channel_mesh::Senders;
use tern_protocol::types::Offset;
use tern_replication::metadata::{BrokerId, MetadataError, MetadataImage};
use tern_storage::Log;

use crate::clock::Clock;
use crate::config::BrokerConfig;
use crate::connection::budget::RequestBudget;
use crate::connection::table::ConnectionTable;
use crate::controller::Controller;
use crate::limits;
use crate::metrics::{ConnectionProbe, FetchProbe, ShardSample};
use crate::partition::{ParkBudget, Partition, TopicPartition};
use crate::placement;
use crate::topic_config;

/// A unit of work sent to another shard: built there into a local future.
pub type RemoteTask = Box<dyn FnOnce(Rc<Shard>) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

pub struct Shard {
    pub id: usize,
    pub count: usize,
    pub config: Arc<BrokerConfig>,
    image: RefCell<Arc<MetadataImage>>,
    partitions: RefCell<HashMap<TopicPartition, Rc<Partition>>>,
    senders: Option<Senders<RemoteTask>>,
    /// The cluster's controller, reached through shard 0 (set once at start-up there).
    controller: OnceCell<Rc<dyn Controller>>,
    /// The quorum's leader as shard 0 last saw it (`NO_LEADER` while there is none).
    controller_hint: Arc<std::sync::atomic::AtomicI32>,
    clock: Rc<dyn Clock>,
    pub shutting_down: Cell<bool>,
    pub connection_probe: ConnectionProbe,
    pub fetch_probe: FetchProbe,
    /// Fetch sessions of clients connected to this shard.
    pub fetch_sessions: RefCell<crate::fetch_session::FetchSessions>,
    /// Client quotas' rate windows for the connections of this shard.
    pub quotas: RefCell<crate::security::quota::Tracker>,
    /// Which quotas the current image sets (kept with the image).
    pub quota_presence: Cell<crate::security::quota::Presence>,
    /// Open client connections, for the reaper's deadlines and for shutdown.
    pub connections: ConnectionTable,
    /// Request bytes held in memory across this shard's connections.
    pub request_budget: Rc<RequestBudget>,
    /// The consumer groups this shard coordinates (see `group`).
    pub groups: crate::group::registry::Coordinator,
    pub txns: crate::txn::registry::Registry,
    /// Memory budget for sealed segments' indexes, shared by this shard's partition logs.
    pub index_cache: Rc<tern_storage::IndexCache>,
    /// The one budget of every partition's tail cache on this shard.
    pub tail_budget: Rc<tern_storage::TailBudget>,
    /// Sealed segments' files open on this shard.
    pub file_budget: Rc<tern_storage::FileBudget>,
    /// Cap on long-poll fetches parked on this shard's partitions.
    pub park_budget: Rc<ParkBudget>,
    /// Tasks waiting for this shard's next image (see `next_image`).
    image_watchers: RefCell<Vec<oneshot::Sender<()>>>,
    /// Replicas whose log is being restarted (see `restart_replica`): not opened meanwhile.
    restarting: RefCell<HashSet<TopicPartition>>,
    pub replication_probe: crate::metrics::ReplicationProbe,
    pub cleaner_probe: crate::metrics::CleanerProbe,
}

#[derive(Debug, thiserror::Error)]
#[error("shard {0} is unavailable (shutting down)")]
pub struct ShardUnavailable(pub usize);

impl Shard {
    pub fn new(
        id: usize,
        count: usize,
        config: Arc<BrokerConfig>,
        image: Arc<MetadataImage>,
        senders: Option<Senders<RemoteTask>>,
        clock: Rc<dyn Clock>,
        controller_hint: Arc<std::sync::atomic::AtomicI32>,
    ) -> Shard {
        Shard {
            id,
            count,
            config: config.clone(),
            quota_presence: Cell::new(crate::security::quota::Presence::of(&image.client_quotas)),
            image: RefCell::new(image),
            partitions: RefCell::new(HashMap::new()),
            senders,
            controller: OnceCell::new(),
            controller_hint,
            clock,
            shutting_down: Cell::new(false),
            connection_probe: ConnectionProbe::default(),
            fetch_probe: FetchProbe::default(),
            fetch_sessions: RefCell::new(crate::fetch_session::FetchSessions::new(id as u32)),
            quotas: RefCell::new(Default::default()),
            connections: ConnectionTable::default(),
            request_budget: RequestBudget::new(config.limits.shard_buffered_bytes_max),
            groups: crate::group::registry::Coordinator::new(crate::group::state::GroupConfig {
                initial_rebalance_delay_ms: config.group_initial_rebalance_delay_ms.max(0),
                offsets_retention_ms: config.offsets_retention_minutes.saturating_mul(60_000),
                consumer: crate::group::consumer::ConsumerConfig {
                    session_timeout_ms: config.group_consumer_session_timeout_ms,
                    heartbeat_interval_ms: config.group_consumer_heartbeat_interval_ms,
                    assignors: config
                        .group_consumer_assignors
                        .iter()
                        .filter_map(|name| crate::group::assignor::Assignor::parse(name))
                        .collect(),
                    ..crate::group::consumer::ConsumerConfig::default()
                },
            }),
            txns: crate::txn::registry::Registry::new(crate::txn::state::TxnConfig {
                max_timeout_ms: config.transaction_max_timeout_ms,
                id_expiration_ms: config.transactional_id_expiration_ms,
            }),
            index_cache: tern_storage::IndexCache::new(config.index_cache_bytes),
            tail_budget: tern_storage::TailBudget::new(config.tail_cache_bytes),
            file_budget: tern_storage::FileBudget::new(config.open_files_per_shard),
            park_budget: ParkBudget::new(config.max_parked_fetches),
            image_watchers: RefCell::new(Vec::new()),
            restarting: RefCell::new(HashSet::new()),
            replication_probe: crate::metrics::ReplicationProbe::default(),
            cleaner_probe: crate::metrics::CleanerProbe::default(),
        }
    }

    /// This broker's id in the cluster.
    pub fn node_id(&self) -> BrokerId {
        self.config.node_id
    }

    /// Wall-clock milliseconds, from the shard's (replaceable) clock.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    pub fn image(&self) -> Arc<MetadataImage> {
        self.image.borrow().clone()
    }

    /// Installs the controller (shard 0, once, at start-up).
    pub fn set_controller(&self, controller: Rc<dyn Controller>) {
        assert!(
            self.controller.set(controller).is_ok(),
            "the controller is installed once"
        );
    }

    /// The broker acting as the cluster's controller: the metadata quorum's leader, or -1
    /// while it has none.
    pub fn controller_id(&self) -> BrokerId {
        self.controller_hint
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs metadata commands on the controller (through shard 0) and returns each one's
    /// result once committed and applied by every shard of this broker.
    pub async fn run_commands(
        self: &Rc<Self>,
        commands: Vec<tern_replication::metadata::Command>,
    ) -> Result<crate::controller::CommandResults, crate::controller::ControllerError> {
        use crate::controller::ControllerError;
        self.invoke_on(0, move |shard| async move {
            match shard.controller() {
                Some(controller) => controller.execute(commands).await,
                None => Err(ControllerError::Unavailable(
                    "shard 0 hosts no controller".to_owned(),
                )),
            }
        })
        .await
        .map_err(|_| ControllerError::ShardUnavailable)?
    }

    /// The topic defaults in force: this broker's static ones overlaid by the cluster's
    /// dynamic ones from the image.
    pub fn topic_defaults(&self) -> topic_config::TopicDefaults {
        self.config
            .topic_defaults
            .with_dynamic(&self.image.borrow().cluster_topic_defaults)
    }

    /// The controller, on the shard that hosts it.
    pub fn controller(&self) -> Option<Rc<dyn Controller>> {
        self.controller.get().cloned()
    }

    pub fn partition(&self, tp: &TopicPartition) -> Option<Rc<Partition>> {
        self.partitions.borrow().get(tp).cloned()
    }

    /// The shard of this broker that owns `topic`-`partition`, if this broker holds it.
    pub fn owner_of(&self, topic: &str, partition: i32) -> Option<usize> {
        placement::owner_shard(
            &self.image.borrow(),
            self.node_id(),
            topic,
            partition,
            self.count,
        )
    }

    /// Runs `work` on shard `target` and returns its result. Local work runs inline.
    pub async fn invoke_on<R, F, Fut>(
        self: &Rc<Self>,
        target: usize,
        work: F,
    ) -> Result<R, ShardUnavailable>
    where
        R: Send + 'static,
        F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
        Fut: Future<Output = R> + 'static,
    {
        if target == self.id {
            return Ok(work(self.clone()).await);
        }
        let senders = self.senders.as_ref().ok_or(ShardUnavailable(target))?;
        let (tx, rx) = oneshot::channel();
        let task: RemoteTask = Box::new(move |shard| {
            Box::pin(async move {
                let _ = tx.send(work(shard).await);
            })
        });
        senders
            .send_to(target, task)
            .await
            .map_err(|_| ShardUnavailable(target))?;
        rx.await.map_err(|_| ShardUnavailable(target))
    }

    fn partition_dir(&self, tp: &TopicPartition) -> PathBuf {
        self.config.data_dir.join(tp.dir_name())
    }

    /// Brings this shard's partitions in line with `image`: opens the ones it now owns,
    /// hands changed leadership, replicas and configs to the ones it keeps, and drops the rest
    /// (removing their directories when their topic is gone). The image never goes back.
    pub async fn apply_image(self: &Rc<Self>, image: Arc<MetadataImage>) {
        {
            let current = self.image.borrow();
            assert!(
                image.epoch >= current.epoch,
                "shard {} was handed image epoch {} after {}",
                self.id,
                image.epoch,
                current.epoch
            );
        }
        *self.image.borrow_mut() = image.clone();
        self.quota_presence
            .set(crate::security::quota::Presence::of(&image.client_quotas));
        let defaults = &self
            .config
            .topic_defaults
            .with_dynamic(&image.cluster_topic_defaults);
        let mut wanted = HashSet::new();
        let mut to_open = Vec::new();
        for topic in image.topics.values() {
            for meta in &topic.partitions {
                if self.owner_of(&topic.name, meta.index) != Some(self.id) {
                    continue;
                }
                let tp = TopicPartition::new(topic.name.clone(), meta.index);
                if self.restarting.borrow().contains(&tp) {
                    wanted.insert(tp);
                    continue;
                }
                let policy = topic_config::partition_policy(
                    defaults,
                    &topic.configs,
                    &tp.topic,
                    tp.partition,
                );
                match self.partition(&tp) {
                    Some(partition) if partition.topic_id() != topic.id => {
                        // The topic was deleted and made again under the same name: the old
                        // replica goes first, then the new one opens (with the image then).
                        self.partitions.borrow_mut().remove(&tp);
                        partition.detach();
                        self.restarting.borrow_mut().insert(tp.clone());
                        let shard = self.clone();
                        let old = tp.clone();
                        glommio::spawn_local(async move {
                            if release_partition(partition, true).await {
                                shard.restarting.borrow_mut().remove(&old);
                                let image = shard.image();
                                shard.apply_image(image).await;
                            }
                        })
                        .detach();
                    }
                    Some(partition) => {
                        let led = partition.is_leader();
                        partition.update(meta, policy);
                        if led
                            && !partition.is_leader()
                            && tp.topic == crate::txn::TRANSACTION_STATE_TOPIC
                        {
                            self.txns
                                .unload_partition(tp.partition, topic.partitions.len() as i32);
                        }
                        if led
                            && !partition.is_leader()
                            && tp.topic == crate::group::codec::OFFSETS_TOPIC
                        {
                            let count = topic.partitions.len() as i32;
                            if let Some(unloaded) =
                                self.groups.unload_partition(tp.partition, count)
                            {
                                tracing::info!(
                                    shard = self.id,
                                    partition = tp.partition,
                                    unloaded,
                                    "group partition unloaded: no longer its leader"
                                );
                            }
                        }
                    }
                    None => to_open.push((tp.clone(), policy, meta, topic.id)),
                }
                wanted.insert(tp);
            }
        }
        // New partitions open concurrently (bounded): opening one is a handful of small
        // synced writes, so one at a time made a 10,000-partition topic take 40 s to appear.
        let (mut opened_count, mut from_replay_points) = (0usize, 0usize);
        for chunk in to_open.chunks(limits::PARTITION_OPEN_CONCURRENCY) {
            let opened = futures::future::join_all(chunk.iter().map(|(tp, policy, _, _)| {
                Log::open_with_caches(
                    self.partition_dir(tp),
                    policy.log.clone(),
                    self.index_cache.clone(),
                    self.tail_budget.clone(),
                    self.file_budget.clone(),
                )
            }))
            .await;
            for ((tp, policy, meta, topic_id), log) in chunk.iter().zip(opened) {
                match log {
                    Ok(log) => {
                        let restored = crate::partition::restore_state(&log, tp).await;
                        opened_count += 1;
                        from_replay_points += usize::from(restored.replay_point_at.0 >= 0);
                        let partition = Partition::new(
                            tp.clone(),
                            log,
                            policy.clone(),
                            self.node_id(),
                            meta,
                            restored,
                        );
                        partition.set_replica_lag_max_ms(self.config.replica_lag_time_max_ms);
                        partition.set_topic_id(*topic_id);
                        self.partitions
                            .borrow_mut()
                            .insert(tp.clone(), Rc::new(partition));
                    }
                    Err(error) => {
                        tracing::error!(shard = self.id, partition = %tp.dir_name(), %error, "cannot open partition log")
                    }
                }
            }
        }
        if opened_count > 0 {
            tracing::info!(
                "opened {opened_count} partition(s), {from_replay_points} from their replay point \
                 (the others rebuilt producer and transaction state from the log)"
            );
        }
        let stale: Vec<TopicPartition> = self
            .partitions
            .borrow()
            .keys()
            .filter(|tp| !wanted.contains(*tp))
            .cloned()
            .collect();
        for tp in stale {
            let Some(partition) = self.partitions.borrow_mut().remove(&tp) else {
                continue;
            };
            partition.detach();
            let topic_still_exists = image.topic(&tp.topic).is_some();
            glommio::spawn_local(release_partition(partition, !topic_still_exists)).detach();
        }
        for watcher in self.image_watchers.borrow_mut().drain(..) {
            let _ = watcher.send(());
        }
    }

    /// Resolves once this shard has applied a newer image than it has now (or is dropped).
    pub fn next_image(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.image_watchers.borrow_mut().push(tx);
        rx
    }

    /// A replica this shard follows whose leader no longer holds the offset it would fetch
    /// next (the leader's log start passed it): its log starts over, empty, at `start`, as
    /// Kafka's followers truncate fully and start at the leader's log start. The partition is
    /// out of the table meanwhile (requests get NOT_LEADER_OR_FOLLOWER) and comes back with
    /// the shard's current image. Nothing happens (false) unless the replica still follows in
    /// `epoch`, the leader epoch the leader's answer came in.
    pub async fn restart_replica(
        self: &Rc<Self>,
        tp: &TopicPartition,
        start: Offset,
        epoch: tern_protocol::types::LeaderEpoch,
    ) -> bool {
        let still_following = self
            .partition(tp)
            .is_some_and(|p| !p.is_leader() && p.leader_epoch() == epoch);
        if !still_following {
            return false;
        }
        let Some(partition) = self.partitions.borrow_mut().remove(tp) else {
            return false;
        };
        partition.detach();
        self.restarting.borrow_mut().insert(tp.clone());
        let reopened = match sole_owner(partition).await {
            Ok(owned) => owned.log.restart_at(start).await.map_err(|e| e.to_string()),
            Err(_) => {
                // Still held (and open): it stays out of the table and is not reopened, so two
                // logs never share the directory.
                tracing::error!(partition = %tp.dir_name(), "replica still in use after 30 s; it is not served until the broker restarts");
                return false;
            }
        };
        self.restarting.borrow_mut().remove(tp);
        let log = match reopened {
            Ok(log) => log,
            Err(error) => {
                tracing::error!(partition = %tp.dir_name(), %error, "cannot restart the replica's log; it stays closed until the broker restarts");
                return false;
            }
        };
        tracing::info!(partition = %tp.dir_name(), start = start.0,
            "replica restarted at its leader's log start");
        let image = self.image();
        let Some((meta, topic)) = image
            .topic(&tp.topic)
            .and_then(|topic| Some((topic.partitions.get(tp.partition as usize)?, topic)))
        else {
            let _ = log.remove().await;
            return false;
        };
        let policy = topic_config::partition_policy(
            &self.topic_defaults(),
            &topic.configs,
            &tp.topic,
            tp.partition,
        );
        // The log starts over empty: so does what it knows of transactions (written now, so
        // a crash cannot bring back the old log's snapshot).
        let txns = crate::partition::txns::PartitionTxns::starting_at(start.0);
        if let Err(error) = log
            .write_sidecar(crate::partition::txns::SNAPSHOT_FILE, &txns.encode())
            .await
        {
            tracing::warn!(partition = %tp.dir_name(), %error, "cannot reset the transaction snapshot");
        }
        let partition = Partition::new(
            tp.clone(),
            log,
            policy,
            self.node_id(),
            meta,
            crate::partition::Restored {
                producers: crate::producer_state::ProducerStates::default(),
                txns,
                replay_point_at: Offset(-1),
            },
        );
        partition.set_replica_lag_max_ms(self.config.replica_lag_time_max_ms);
        partition.set_topic_id(topic.id);
        self.partitions
            .borrow_mut()
            .insert(tp.clone(), Rc::new(partition));
        for watcher in self.image_watchers.borrow_mut().drain(..) {
            let _ = watcher.send(());
        }
        true
    }

    /// The partitions this shard follows, by their leader (leaderless ones wait for one).
    pub fn followed(&self) -> std::collections::BTreeMap<BrokerId, Vec<TopicPartition>> {
        let mut followed: std::collections::BTreeMap<BrokerId, Vec<TopicPartition>> =
            std::collections::BTreeMap::new();
        for (tp, partition) in self.partitions.borrow().iter() {
            let leader = partition.leader();
            if leader >= 0 && leader != self.node_id() {
                followed.entry(leader).or_default().push(tp.clone());
            }
        }
        followed
    }

    /// The leader's ISR check on every partition this shard leads: proposals go to the
    /// controller (through shard 0), one outstanding per partition.
    pub fn isr_duty(self: &Rc<Self>) {
        let now_ms = self.now_ms();
        let lag_max_ms = self.config.replica_lag_time_max_ms;
        let partitions: Vec<Rc<Partition>> = self.partitions.borrow().values().cloned().collect();
        for partition in partitions {
            let Some(proposal) = partition.isr_duty(now_ms, lag_max_ms) else {
                continue;
            };
            let before = partition.isr();
            tracing::info!(partition = %partition.tp.dir_name(), from = ?before, to = ?proposal.isr, "proposing an ISR change");
            let command = tern_replication::metadata::Command::AlterPartition {
                topic: partition.tp.topic.clone(),
                partition: partition.tp.partition,
                leader: self.node_id(),
                leader_epoch: partition.leader_epoch().0,
                partition_epoch: proposal.partition_epoch,
                isr: proposal.isr.clone(),
            };
            let shard = self.clone();
            glommio::spawn_local(async move {
                let outcome = match shard.run_commands(vec![command]).await {
                    Ok(mut results) => results.pop().unwrap_or(Ok(())).map_err(Some),
                    Err(error) => {
                        tracing::info!(%error, "ISR change unanswered");
                        Err(None)
                    }
                };
                match outcome {
                    Ok(()) if proposal.isr.len() < before.len() => {
                        shard.replication_probe.isr_shrinks.inc()
                    }
                    Ok(()) => shard.replication_probe.isr_expands.inc(),
                    // Unanswered: it may still be taken; it goes again at the next check.
                    Err(None) => partition.isr_proposal_unanswered(),
                    // Stale: the image that made it so is on its way and settles it.
                    Err(Some(MetadataError::StaleLeaderEpoch { .. })) => {
                        partition.isr_proposal_unanswered()
                    }
                    Err(Some(error)) => {
                        tracing::info!(partition = %partition.tp.dir_name(), %error, "ISR change refused");
                        partition.isr_proposal_refused();
                    }
                }
            })
            .detach();
        }
    }

    /// This shard's metrics for a scrape, from every subsystem's probe.
    pub fn sample(&self) -> ShardSample {
        let mut sample = ShardSample {
            shard: self.id,
            metrics: Vec::new(),
        };
        self.connection_probe.collect(
            self.connections.len(),
            self.request_budget.in_use(),
            self.request_budget.waits(),
            &mut sample,
        );
        self.fetch_probe.collect(
            self.park_budget.used(),
            self.park_budget.parks_total(),
            &mut sample,
        );
        let partitions = self.partitions.borrow();
        let mut gauges = crate::metrics::ReplicationGauges {
            fetchers: self.replication_probe.fetchers.get(),
            ..Default::default()
        };
        for (under, under_min, lag) in partitions.values().filter_map(|p| p.replication_health()) {
            gauges.under_replicated += u64::from(under);
            gauges.under_min_isr += u64::from(under_min);
            gauges.follower_lag_records += lag;
        }
        self.replication_probe.collect(gauges, &mut sample);
        self.cleaner_probe.collect(&mut sample);
        crate::metrics::collect_logs(
            partitions.values().map(|partition| partition.log.stats()),
            self.index_cache.stats(),
            self.tail_budget.stats(),
            self.file_budget.stats(),
            &mut sample,
        );
        sample
    }

    /// Every partition this shard owns now.
    pub fn owned_partitions(&self) -> Vec<Rc<Partition>> {
        self.partitions.borrow().values().cloned().collect()
    }

    /// Applies retention and time-based rolls to every partition this shard owns.
    pub async fn enforce_retention(&self) {
        let partitions = self.owned_partitions();
        let now = tern_protocol::types::TimestampMs(self.now_ms());
        for partition in partitions {
            // Nothing above the watermark goes: followers may not have fetched it yet.
            match partition
                .log
                .enforce_retention(now, partition.high_watermark())
                .await
            {
                Ok(()) => partition.log_moved(),
                Err(error) => {
                    tracing::warn!(partition = %partition.tp.dir_name(), %error, "retention failed")
                }
            }
        }
    }

    /// Persists each partition's active-segment indexes as far as they cover durable data, so
    /// a restart after a crash scans only what was written since (about
    /// `INDEX_CHECKPOINT_INTERVAL` of writes per partition) instead of whole active segments.
    pub async fn checkpoint_indexes(&self) {
        let partitions = self.owned_partitions();
        // A checkpoint is one small write over its file and an fdatasync: many at once.
        for chunk in partitions.chunks(limits::PARTITION_OPEN_CONCURRENCY) {
            let results =
                futures::future::join_all(chunk.iter().map(|p| p.log.checkpoint_active_indexes()))
                    .await;
            futures::future::join_all(chunk.iter().map(|p| p.checkpoint_txns())).await;
            futures::future::join_all(chunk.iter().map(|p| p.checkpoint_replay_point())).await;
            for (partition, result) in chunk.iter().zip(results) {
                if let Err(error) = result {
                    tracing::warn!(partition = %partition.tp.dir_name(), %error, "index checkpoint failed");
                }
            }
        }
    }

    /// Closes every log cleanly (shutdown).
    pub async fn close_all(&self) {
        for watcher in self.image_watchers.borrow_mut().drain(..) {
            let _ = watcher.send(());
        }
        let partitions: Vec<Rc<Partition>> = self
            .partitions
            .borrow_mut()
            .drain()
            .map(|(_, p)| p)
            .collect();
        for partition in partitions {
            partition.detach();
            release_partition(partition, false).await;
        }
    }
}

/// Waits (bounded) for in-flight users of a partition to let go; the partition itself, or
/// (still shared) after the wait.
async fn sole_owner(partition: Rc<Partition>) -> Result<Partition, Rc<Partition>> {
    let mut partition = partition;
    for _ in 0..crate::limits::PARTITION_RELEASE_WAIT_MS / limits::PARTITION_RELEASE_POLL_MS {
        match Rc::try_unwrap(partition) {
            Ok(owned) => return Ok(owned),
            Err(shared) => {
                partition = shared;
                glommio::timer::sleep(Duration::from_millis(limits::PARTITION_RELEASE_POLL_MS))
                    .await;
            }
        }
    }
    Err(partition)
}

/// Waits (bounded) for in-flight users of a partition to let go, then closes or removes its
/// log. False when it was still in use after the wait (it is left open).
async fn release_partition(partition: Rc<Partition>, remove: bool) -> bool {
    match sole_owner(partition).await {
        Ok(owned) => {
            let name = owned.tp.dir_name();
            let result = if remove {
                owned.log.remove().await
            } else {
                owned.checkpoint_txns().await;
                owned.checkpoint_replay_point().await;
                owned.log.close().await
            };
            if let Err(error) = result {
                tracing::warn!(partition = %name, %error, remove, "closing partition log failed");
            }
            true
        }
        Err(partition) => {
            tracing::warn!(partition = %partition.tp.dir_name(), "partition still in use after 30 s; leaving it open");
            false
        }
    }
}
