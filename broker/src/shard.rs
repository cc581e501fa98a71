//! One shard: the state a core owns (its partitions, its copy of the metadata image) and
//! the way other shards reach it (`invoke_on`).
//!
//! Architecture invariant: a partition's log is touched only by the shard that owns it
//! (the shard table in the metadata image); every other shard reaches it through
//! `invoke_on`, which carries a `Send` closure over the channel mesh and runs the future it
//! builds on the owner. Shards share nothing mutable.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::oneshot;
use glommio::channels::channel_mesh::Senders;
use tern_replication::metadata::MetadataImage;
use tern_storage::Log;

use crate::config::BrokerConfig;
use crate::controller::Controller;
use crate::topic_config::{self, TopicPolicy};

/// A unit of work sent to another shard: built there into a local future.
pub type RemoteTask = Box<dyn FnOnce(Rc<Shard>) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }

    pub fn dir_name(&self) -> String {
        format!("{}-{}", self.topic, self.partition)
    }
}

/// A partition replica owned by this shard.
pub struct Partition {
    pub tp: TopicPartition,
    pub log: Log,
    pub policy: RefCell<TopicPolicy>,
    /// Idempotent producers' sequence state (in memory; rebuilt from the log's end at start).
    pub producers: RefCell<crate::producer_state::ProducerStates>,
    /// Fetches parked until data beyond their offset arrives.
    waiters: RefCell<Vec<oneshot::Sender<()>>>,
}

impl Partition {
    /// Wakes every parked fetch; called after each append.
    pub fn notify_appended(&self) {
        for waiter in self.waiters.borrow_mut().drain(..) {
            let _ = waiter.send(());
        }
    }

    pub fn wait_for_append(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let mut waiters = self.waiters.borrow_mut();
        // Drop waiters whose fetch already gave up, so the list stays bounded.
        waiters.retain(|waiter| !waiter.is_canceled());
        waiters.push(tx);
        rx
    }
}

pub struct Shard {
    pub id: usize,
    pub count: usize,
    pub config: Arc<BrokerConfig>,
    image: RefCell<Arc<MetadataImage>>,
    partitions: RefCell<HashMap<TopicPartition, Rc<Partition>>>,
    senders: Option<Senders<RemoteTask>>,
    /// Present on shard 0 only.
    pub controller: Option<Controller>,
    pub shutting_down: Cell<bool>,
    pub stats: Stats,
    /// Fetch sessions of clients connected to this shard.
    pub fetch_sessions: RefCell<crate::fetch_session::FetchSessions>,
    /// Open client sockets, so shutdown can stop reading from them.
    connections: RefCell<HashMap<u64, std::os::fd::RawFd>>,
    next_connection_id: Cell<u64>,
    /// The consumer groups this shard coordinates (see `group`).
    pub groups: crate::group::Coordinator,
    /// Memory budget for sealed segments' indexes, shared by this shard's partition logs.
    pub index_cache: Rc<tern_storage::IndexCache>,
}

/// Counters this shard exposes (per shard, merged on scrape).
#[derive(Default)]
pub struct Stats {
    pub connections_accepted: Cell<u64>,
    pub requests: Cell<u64>,
    pub fetch_bytes_referenced: Cell<u64>,
    pub malformed_requests: Cell<u64>,
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
        controller: Option<Controller>,
    ) -> Shard {
        Shard {
            id,
            count,
            config: config.clone(),
            image: RefCell::new(image),
            partitions: RefCell::new(HashMap::new()),
            senders,
            controller,
            shutting_down: Cell::new(false),
            stats: Stats::default(),
            fetch_sessions: RefCell::new(crate::fetch_session::FetchSessions::new(id as u32)),
            connections: RefCell::new(HashMap::new()),
            next_connection_id: Cell::new(0),
            groups: crate::group::Coordinator::new(config.group_config()),
            index_cache: tern_storage::IndexCache::new(config.index_cache_bytes),
        }
    }

    pub fn image(&self) -> Arc<MetadataImage> {
        self.image.borrow().clone()
    }

    pub fn partition(&self, tp: &TopicPartition) -> Option<Rc<Partition>> {
        self.partitions.borrow().get(tp).cloned()
    }

    /// The shard that owns `tp` according to the current image.
    pub fn owner_of(&self, topic: &str, partition: i32) -> Option<usize> {
        self.image
            .borrow()
            .partition(topic, partition)
            .map(|meta| meta.shard as usize)
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

    /// Brings this shard's partitions in line with `image`: opens new ones, applies config
    /// changes, removes deleted ones (their directories too).
    pub async fn apply_image(self: &Rc<Self>, image: Arc<MetadataImage>) {
        *self.image.borrow_mut() = image.clone();
        let defaults = &self.config.topic_defaults;
        let mut wanted = Vec::new();
        for topic in image.topics.values() {
            for partition in &topic.partitions {
                if partition.shard as usize == self.id {
                    wanted.push((
                        TopicPartition::new(topic.name.clone(), partition.index),
                        &topic.configs,
                    ));
                }
            }
        }
        for (tp, configs) in &wanted {
            let policy = topic_config::policy(defaults, configs);
            let existing = self.partition(tp);
            match existing {
                Some(partition) => {
                    partition.log.set_config(policy.log.clone());
                    *partition.policy.borrow_mut() = policy;
                }
                None => match Log::open_with_cache(
                    self.partition_dir(tp),
                    policy.log.clone(),
                    self.index_cache.clone(),
                )
                .await
                {
                    Ok(log) => {
                        let producers = restore_producers(&log, tp).await;
                        let partition = Rc::new(Partition {
                            tp: tp.clone(),
                            log,
                            policy: RefCell::new(policy),
                            producers: RefCell::new(producers),
                            waiters: RefCell::new(Vec::new()),
                        });
                        self.partitions.borrow_mut().insert(tp.clone(), partition);
                    }
                    Err(error) => {
                        tracing::error!(shard = self.id, partition = %tp.dir_name(), %error, "cannot open partition log")
                    }
                },
            }
        }
        let wanted: std::collections::HashSet<&TopicPartition> =
            wanted.iter().map(|(tp, _)| tp).collect();
        let stale: Vec<TopicPartition> = self
            .partitions
            .borrow()
            .keys()
            .filter(|tp| !wanted.contains(tp))
            .cloned()
            .collect();
        for tp in stale {
            let Some(partition) = self.partitions.borrow_mut().remove(&tp) else {
                continue;
            };
            partition.notify_appended();
            let topic_still_exists = image.topic(&tp.topic).is_some();
            glommio::spawn_local(release_partition(partition, !topic_still_exists)).detach();
        }
    }

    pub fn register_connection(&self, fd: std::os::fd::RawFd) -> u64 {
        let id = self.next_connection_id.get();
        self.next_connection_id.set(id + 1);
        self.connections.borrow_mut().insert(id, fd);
        id
    }

    pub fn open_connections(&self) -> usize {
        self.connections.borrow().len()
    }

    pub fn unregister_connection(&self, id: u64) {
        self.connections.borrow_mut().remove(&id);
    }

    /// Half-closes every client socket for reading: each connection then answers what it
    /// has already read and closes.
    pub fn stop_reading_connections(&self) {
        for fd in self.connections.borrow().values() {
            // SAFETY: the descriptor is open while registered (unregistered before close).
            unsafe {
                libc::shutdown(*fd, libc::SHUT_RD);
            }
        }
    }

    /// This shard's counters for a metrics scrape.
    pub fn sample(&self) -> crate::admin_http::ShardSample {
        let mut sample = crate::admin_http::ShardSample {
            shard: self.id,
            connections_accepted: self.stats.connections_accepted.get(),
            open_connections: self.connections.borrow().len() as u64,
            requests: self.stats.requests.get(),
            malformed_requests: self.stats.malformed_requests.get(),
            fetch_bytes_referenced: self.stats.fetch_bytes_referenced.get(),
            ..Default::default()
        };
        for partition in self.partitions.borrow().values() {
            let stats = partition.log.stats();
            sample.partitions += 1;
            sample.log_bytes_zero_copy += stats.bytes_zero_copy;
            sample.log_bytes_copied += stats.bytes_copied;
            sample.log_appends += stats.appends;
            sample.log_bytes_written += stats.bytes_written;
            sample.log_fdatasyncs += stats.fdatasyncs;
            sample.log_tail_cache_bytes += stats.tail_cache_bytes as u64;
            sample.log_active_index_bytes += stats.active_index_bytes as u64;
        }
        let cache = self.index_cache.stats();
        sample.index_cache_bytes = cache.bytes as u64;
        sample.index_cache_hits = cache.hits;
        sample.index_cache_misses = cache.misses;
        sample
    }

    /// Applies retention and time-based rolls to every partition this shard owns.
    pub async fn enforce_retention(&self) {
        let partitions: Vec<Rc<Partition>> = self.partitions.borrow().values().cloned().collect();
        let now = tern_protocol::types::TimestampMs(crate::handlers::now_ms());
        for partition in partitions {
            if let Err(error) = partition.log.enforce_retention(now).await {
                tracing::warn!(partition = %partition.tp.dir_name(), %error, "retention failed");
            }
        }
    }

    /// Closes every log cleanly (shutdown).
    pub async fn close_all(&self) {
        let partitions: Vec<Rc<Partition>> = self
            .partitions
            .borrow_mut()
            .drain()
            .map(|(_, p)| p)
            .collect();
        for partition in partitions {
            partition.notify_appended();
            release_partition(partition, false).await;
        }
    }
}

/// Waits (bounded) for in-flight users of a partition to let go, then closes or removes its log.
async fn release_partition(partition: Rc<Partition>, remove: bool) {
    let mut partition = partition;
    for _ in 0..600 {
        match Rc::try_unwrap(partition) {
            Ok(owned) => {
                let name = owned.tp.dir_name();
                let result = if remove {
                    owned.log.remove().await
                } else {
                    owned.log.close().await
                };
                if let Err(error) = result {
                    tracing::warn!(partition = %name, %error, remove, "closing partition log failed");
                }
                return;
            }
            Err(shared) => {
                partition = shared;
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tracing::warn!(partition = %partition.tp.dir_name(), "partition still in use after 30 s; leaving it open");
}

/// Idempotent producers' state as the end of the log left it (see `ProducerStates::restore`):
/// replays the batches in the last `PRODUCER_STATE_SCAN_BYTES` of the log. A producer whose
/// last batch is older than that gets UNKNOWN_PRODUCER_ID and resets, as Kafka's clients do.
async fn restore_producers(
    log: &Log,
    tp: &TopicPartition,
) -> crate::producer_state::ProducerStates {
    let mut states = crate::producer_state::ProducerStates::default();
    match log
        .recent_batch_headers(crate::limits::PRODUCER_STATE_SCAN_BYTES)
        .await
    {
        Ok(headers) => {
            for header in headers
                .iter()
                .filter(|h| h.producer_id().0 >= 0 && !h.is_control())
            {
                let batch = crate::producer_state::BatchSeq {
                    producer_id: header.producer_id().0,
                    epoch: header.producer_epoch(),
                    first: header.base_sequence(),
                    count: header.record_count().max(1),
                };
                states.restore(batch, header.base_offset().0);
            }
        }
        Err(error) => {
            tracing::warn!(partition = %tp.dir_name(), %error,
                "cannot rebuild idempotent producers' state from the log; they will be asked to reset")
        }
    }
    states
}
