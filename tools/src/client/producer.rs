//! The idempotent producer: records are written into their partition's open batch by the
//! caller, as `send` runs; one task owns everything after.
//!
//! `send` picks the partition and appends the record to that partition's open batch in the
//! accumulator (a mutex the caller and the task share), so the caller's bytes are copied
//! once, into the batch, and the task is woken only when a batch opens or fills. A batch is
//! sealed when it reaches `batch_bytes`, or has waited `linger` and its partition can send it
//! (until then it keeps filling, as Kafka's producers do), and gets its sequence numbers then,
//! in the task. Sealed batches go to their partition's leader, every partition of one
//! leader in one Produce request, with up to `max_in_flight` batches per partition outstanding
//! (the broker checks the sequence of each, as Kafka brokers do for up to five). When a batch
//! fails in a way worth retrying (a new leader, a lost connection, a timeout), its partition
//! stops sending, waits for its other outstanding batches, and sends again from the failed
//! one in sequence order: the broker recognises batches it already wrote by their sequence
//! and answers with their original offsets, so a retry never writes a record twice.
//!
//! A batch that fails for good (refused by the broker, or out of time) leaves a gap in its
//! partition's sequences that the broker would refuse every later batch for. The partition
//! then finds out which of its sent batches were written, bumps its producer epoch (as
//! Kafka's idempotent producers do), and numbers what it still holds from 0 under it (see
//! `Partition::broken`).
//!
//! No step of the task walks every partition, so a producer writing to 10,000 partitions costs
//! what one writing to 16 does per batch: batches are sealed from queues (`Queues`: those that
//! filled, and every batch opened, in the order their lingers end), a lingered batch whose
//! partition cannot send waits in `State::blocked` until an answer frees that partition, and
//! sending, expiring and mending look only at `State::busy` partitions.
//!
//! A batch is compressed as it is sealed when `ProducerConfig::compression` says so. Each
//! record's outcome goes to its sender exactly once: a future (`send`), a callback
//! (`send_with`), or the producer's one `DeliveryListener` with the record's tag
//! (`send_tagged`).
//!
//! Records for a topic whose partitions the producer has not learned yet wait, in order, in
//! the accumulator until the task has asked the cluster; later records of that topic queue
//! behind them, so order per partition is kept. The count is asked again after
//! `metadata_max_age`, or at once for a record sent to a partition beyond it.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use tern_protocol::native::msg;
use tern_protocol::records::Codec;
use tokio::sync::{mpsc, oneshot, Notify};

use super::records::{restamp, BatchWriter, Record, RecordRef};
use super::{lock, retriable_code, Client, Error, Response};

#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// How long a batch waits for more records (Kafka's `linger.ms`).
    pub linger: Duration,
    /// A batch is sent once it holds this many bytes (Kafka's `batch.size`).
    pub batch_bytes: usize,
    /// 1: the leader wrote it; -1: every in-sync replica did (and it is durable).
    pub acks: i16,
    /// Batches outstanding per partition (at most 5: what the broker's duplicate check
    /// covers).
    pub max_in_flight: usize,
    /// A record not acknowledged within this is failed (Kafka's `delivery.timeout.ms`).
    pub delivery_timeout: Duration,
    pub retry_backoff: Duration,
    /// How long a topic's partition count is trusted before it is asked again, so partitions
    /// added to a topic come into use (Kafka's `metadata.max.age.ms`). A record sent to a
    /// partition beyond the count asks at once.
    pub metadata_max_age: Duration,
    /// How each batch's records are compressed (Kafka's `compression.type`; levels as in
    /// `Codec`). The broker keeps them so unless the topic's `compression.type` says
    /// otherwise, and every reader decompresses them. `batch_bytes` counts the records before
    /// compression (as librdkafka's `batch.size`); a batch that does not shrink is sent plain.
    /// Batches are compressed on the producer's task as they are sealed (as librdkafka does on
    /// its broker thread), so one producer compresses on one core at a time.
    pub compression: Codec,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            linger: Duration::from_millis(1),
            batch_bytes: 64 * 1024,
            acks: -1,
            max_in_flight: 5,
            delivery_timeout: Duration::from_secs(60),
            retry_backoff: Duration::from_millis(50),
            metadata_max_age: Duration::from_secs(300),
            compression: Codec::None,
        }
    }
}

/// Where a record was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub topic: Arc<str>,
    pub partition: i32,
    /// -1 when the broker recognised a retried batch it had written before and did not say
    /// where.
    pub offset: i64,
}

/// Who hears of a record's delivery: exactly once, even if the producer's task ends first
/// (the runtime shut down, or the task panicked): a dropped `Ack` reports the producer
/// stopped.
struct Ack(Option<Listener>);

enum Listener {
    Channel(oneshot::Sender<Result<Delivery, Error>>),
    Callback(Box<dyn FnOnce(Result<Delivery, Error>) + Send>),
    /// The producer's one listener and the record's tag: nothing allocated per record.
    Tagged(Arc<dyn DeliveryListener>, u64),
}

/// Hears how every record sent with [`Producer::send_tagged`] ended, with the tag it was sent
/// with: one listener for the whole producer, as librdkafka's delivery-report callback with
/// its per-message opaque, so that a caller sending hundreds of thousands of records a second
/// allocates nothing per record to learn their fate. Called exactly once per record: on the
/// producer's task; on the sender's thread, before `send_tagged` returns, for a record refused
/// outright; or, with "the producer has stopped", on whichever thread drops the record's last
/// trace when the producer's task or runtime ends first. It should be quick, as the producer
/// waits for it.
pub trait DeliveryListener: Send + Sync + 'static {
    fn delivered(&self, tag: u64, result: Result<Delivery, Error>);
}

impl Ack {
    fn send(mut self, result: Result<Delivery, Error>) {
        match self.0.take() {
            Some(Listener::Channel(sender)) => {
                let _ = sender.send(result);
            }
            Some(Listener::Callback(callback)) => callback(result),
            Some(Listener::Tagged(listener, tag)) => listener.delivered(tag, result),
            None => {}
        }
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        // A channel's receiver sees the sender dropped; a callback or listener must be called.
        match self.0.take() {
            Some(Listener::Callback(callback)) => callback(Err(stopped())),
            Some(Listener::Tagged(listener, tag)) => listener.delivered(tag, Err(stopped())),
            Some(Listener::Channel(_)) | None => {}
        }
    }
}

fn stopped() -> Error {
    Error::Usage("the producer has stopped".into())
}

/// What callers ask of the producer's task besides records (which go to the accumulator).
enum Command {
    Flush(oneshot::Sender<()>),
}

/// Counts of what a producer did.
#[derive(Debug, Default)]
pub struct ProducerStats {
    /// Produce requests sent.
    pub requests: AtomicU64,
    /// Batches sent, first sends and retries.
    pub batches: AtomicU64,
    /// Batches sent again after a failure.
    pub retries: AtomicU64,
}

/// What the callers and the producer's task share.
struct Shared {
    config: ProducerConfig,
    producer_id: i64,
    producer_epoch: i16,
    batches: Mutex<Accumulator>,
    /// Hears of records sent with `send_tagged`.
    listener: Option<Arc<dyn DeliveryListener>>,
    /// The task looks at the accumulator again: a batch opened or filled, or records wait
    /// for their topic's partitions.
    wake: Notify,
}

/// The batches being filled, by topic.
#[derive(Default)]
struct Accumulator {
    /// Looked up for every record sent: hashed a word at a time, not with SipHash.
    topics: HashMap<String, TopicBatches, BuildHasherDefault<WordHasher>>,
    queues: Queues,
}

/// What the task takes its work from, so that none of its steps walks every partition.
#[derive(Default)]
struct Queues {
    /// Batches that reached `batch_bytes`, oldest first, for the task to seal.
    full: Vec<(Key, OpenBatch)>,
    /// Every batch opened, oldest first: the order in which their lingers end. An entry
    /// whose batch was sealed meanwhile (it filled, or a flush) is stale and dropped when met.
    opened: VecDeque<Opened>,
    next_batch: u64,
}

struct Opened {
    key: Key,
    batch: u64,
    at: Instant,
}

struct TopicBatches {
    name: Arc<str>,
    /// Each partition's open batch; `None` until the task has learned the partition count.
    open: Option<Vec<Option<OpenBatch>>>,
    /// When the partition count was learned.
    learned: Option<Instant>,
    /// Records waiting for the partition count, in send order: every record until it is
    /// first learned, and then those sent to a partition beyond it.
    unrouted: Vec<Unrouted>,
    /// Keyless records without a partition fill one partition's batch at a time.
    sticky: i32,
}

struct Unrouted {
    partition: Option<i32>,
    record: Record,
    ack: Ack,
}

/// An idempotent producer; cheap to share by reference across tasks and threads.
pub struct Producer {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
    /// The producer id and epoch batches are sealed with (a partition whose sequences break,
    /// when a batch fails for good, goes on with the next epoch).
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub stats: Arc<ProducerStats>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("producer_id", &self.producer_id)
            .field("producer_epoch", &self.producer_epoch)
            .finish()
    }
}

impl Producer {
    pub(super) async fn start(
        client: Client,
        config: ProducerConfig,
        listener: Option<Arc<dyn DeliveryListener>>,
    ) -> Result<Producer, Error> {
        if config.max_in_flight == 0 || config.max_in_flight > 5 {
            return Err(Error::Usage(
                "max_in_flight must be 1..=5 for idempotent producing".into(),
            ));
        }
        // Deadlines are instants: durations this long would overflow them.
        const DURATION_MAX: Duration = Duration::from_secs(365 * 24 * 3600);
        if [
            config.linger,
            config.delivery_timeout,
            config.retry_backoff,
            config.metadata_max_age,
        ]
        .iter()
        .any(|d| *d > DURATION_MAX)
        {
            return Err(Error::Usage(
                "linger, delivery_timeout, retry_backoff and metadata_max_age must be at most \
                 a year"
                    .into(),
            ));
        }
        let (producer_id, producer_epoch) = client.init_producer_id().await?;
        let (commands, queue) = mpsc::unbounded_channel();
        let stats = Arc::new(ProducerStats::default());
        let shared = Arc::new(Shared {
            config,
            producer_id,
            producer_epoch,
            batches: Mutex::default(),
            listener,
            wake: Notify::new(),
        });
        let state = State {
            stats: stats.clone(),
            client,
            shared: shared.clone(),
            partitions: HashMap::default(),
            busy: Vec::new(),
            blocked: HashMap::default(),
            freed: Vec::new(),
            in_flight: FuturesUnordered::new(),
            flushes: Vec::new(),
            flushing: Vec::new(),
            next_serial: 0,
            unanswered: BTreeSet::new(),
        };
        tokio::spawn(state.run(queue));
        Ok(Producer {
            shared,
            commands,
            producer_id,
            producer_epoch,
            stats,
        })
    }

    /// Queues `record` for `topic` (on `partition`, or by its key's hash, or on the
    /// partition batches are filling) and returns its delivery, which completes once the
    /// broker acknowledged it. Sending does not wait: call it many times, then await.
    pub fn send(
        &self,
        topic: &str,
        partition: Option<i32>,
        record: Record,
    ) -> impl Future<Output = Result<Delivery, Error>> + Send + 'static {
        let (ack, delivered) = oneshot::channel();
        let ack = Ack(Some(Listener::Channel(ack)));
        self.enqueue(topic, partition, record.borrowed(), ack);
        async move { delivered.await.unwrap_or_else(|_| Err(stopped())) }
    }

    /// `send` for callers that are not async: the record is copied into its batch before this
    /// returns, and `done` is called with its delivery on the producer's task (or at once,
    /// before this returns, for a record refused outright: a partition the topic lacks, or a
    /// stopped producer).
    pub fn send_with(
        &self,
        topic: &str,
        partition: Option<i32>,
        record: RecordRef<'_>,
        done: impl FnOnce(Result<Delivery, Error>) + Send + 'static,
    ) {
        let ack = Ack(Some(Listener::Callback(Box::new(done))));
        self.enqueue(topic, partition, record, ack);
    }

    /// `send_with` for callers that send at high rates: the record's delivery goes to the
    /// producer's [`DeliveryListener`] (`Client::producer_with_listener`) with `tag`, so nothing
    /// is allocated for it. Fails only for a producer started without a listener.
    pub fn send_tagged(
        &self,
        topic: &str,
        partition: Option<i32>,
        record: RecordRef<'_>,
        tag: u64,
    ) -> Result<(), Error> {
        let Some(listener) = &self.shared.listener else {
            return Err(Error::Usage(
                "send_tagged needs a producer started with Client::producer_with_listener".into(),
            ));
        };
        let ack = Ack(Some(Listener::Tagged(listener.clone(), tag)));
        self.enqueue(topic, partition, record, ack);
        Ok(())
    }

    /// Sends everything queued so far at once (no lingering) and waits until each of those
    /// records is acknowledged or failed. Records sent meanwhile, by this caller or others,
    /// do not hold it up.
    pub async fn flush(&self) {
        let (done, flushed) = oneshot::channel();
        if self.commands.send(Command::Flush(done)).is_ok() {
            let _ = flushed.await;
        }
    }

    fn enqueue(&self, topic: &str, partition: Option<i32>, record: RecordRef<'_>, ack: Ack) {
        if self.commands.is_closed() {
            ack.send(Err(stopped()));
            return;
        }
        let shared = &*self.shared;
        let mut guard = lock(&shared.batches);
        let accumulator = &mut *guard;
        let queues = &mut accumulator.queues;
        // One lookup for a known topic; the name is copied only for a new one.
        let routed = match accumulator.topics.get_mut(topic) {
            Some(batches) => batches.route(shared, queues, partition, record, ack, false),
            None => accumulator
                .topics
                .entry(topic.to_owned())
                .or_insert_with(|| TopicBatches::new(topic))
                .route(shared, queues, partition, record, ack, false),
        };
        // Nothing runs under the lock but the append: an acknowledgement's callback may send.
        drop(guard);
        match routed {
            Ok(true) => shared.wake.notify_one(),
            Ok(false) => {}
            Err((ack, error)) => ack.send(Err(error)),
        }
    }
}

type Key = (Arc<str>, i32);

/// tokio's timer wakes on whole milliseconds, rounding a deadline up to the next one: a batch
/// whose linger ends within half a tick is sealed now, so that batches linger `linger` on
/// average (from half a millisecond less to half a millisecond more), not half a tick more.
const TIMER_SLACK: Duration = Duration::from_micros(500);

struct OpenBatch {
    /// Its entry in `Queues::opened`.
    id: u64,
    writer: BatchWriter,
    acks: Vec<Ack>,
    opened: Instant,
}

impl TopicBatches {
    fn new(name: &str) -> TopicBatches {
        TopicBatches {
            name: name.into(),
            open: None,
            learned: None,
            unrouted: Vec::new(),
            sticky: 0,
        }
    }

    /// Takes partition `index`'s open batch to be sealed; keyless records move on to the next
    /// partition with the next batch.
    fn take_open(&mut self, index: usize) -> Option<OpenBatch> {
        let batch = self.open.as_mut()?.get_mut(index)?.take()?;
        if self.sticky == index as i32 {
            self.sticky = self.sticky.wrapping_add(1) & i32::MAX;
        }
        Some(batch)
    }

    /// Appends a record to its partition's open batch, or, while the partition count is not
    /// known (or is below the partition asked for, and was not `just_learned`), to the
    /// records waiting for it. Returns whether the task must look (a batch opened or
    /// filled, or a record waits), or the refused ack.
    fn route(
        &mut self,
        shared: &Shared,
        queues: &mut Queues,
        partition: Option<i32>,
        record: RecordRef<'_>,
        ack: Ack,
        just_learned: bool,
    ) -> Result<bool, (Ack, Error)> {
        let count = self.open.as_ref().map_or(0, |open| open.len() as i32);
        if self.open.is_none() || (!just_learned && partition.is_some_and(|p| p >= count)) {
            self.unrouted.push(Unrouted {
                partition,
                record: record.to_record(),
                ack,
            });
            return Ok(true);
        }
        let Some(open) = self.open.as_mut() else {
            return Ok(false);
        };
        let partition = match partition {
            Some(p) if (0..count).contains(&p) => p,
            Some(p) => {
                let error = Error::Broker {
                    code: msg::Error::UnknownTopicOrPartition.0,
                    message: format!("{} has no partition {p}", self.name),
                };
                return Err((ack, error));
            }
            // Kafka's default partitioner, so keys land where Kafka clients put them.
            None => match record.key {
                Some(key) => (murmur2(key) & 0x7fff_ffff) as i32 % count,
                None => {
                    self.sticky %= count;
                    self.sticky
                }
            },
        };
        let config = &shared.config;
        let slot = &mut open[partition as usize];
        let mut wake = false;
        // A batch never grows past `batch_bytes` (the broker refuses batches over the topic's
        // max.message.bytes): a record that would take it over starts the next one.
        if slot.as_ref().is_some_and(|b| {
            !b.writer.is_empty() && b.writer.len() + record.size_estimate() > config.batch_bytes
        }) {
            if let Some(batch) = slot.take() {
                queues.full.push(((self.name.clone(), partition), batch));
            }
        }
        let timestamp = record.timestamp.unwrap_or_else(now_ms);
        let batch = slot.get_or_insert_with(|| {
            wake = true;
            let (id, at) = (queues.next_batch, Instant::now());
            queues.next_batch += 1;
            queues.opened.push_back(Opened {
                key: (self.name.clone(), partition),
                batch: id,
                at,
            });
            OpenBatch {
                id,
                writer: BatchWriter::new(config.batch_bytes.min(1 << 20), timestamp),
                acks: Vec::new(),
                opened: at,
            }
        });
        batch.writer.push(record, timestamp);
        batch.acks.push(ack);
        if batch.writer.len() >= config.batch_bytes {
            if let Some(batch) = slot.take() {
                queues.full.push(((self.name.clone(), partition), batch));
            }
            wake = true;
            // The next keyless record starts filling another partition.
            if self.sticky == partition {
                self.sticky = self.sticky.wrapping_add(1) & i32::MAX;
            }
        }
        Ok(wake)
    }
}

struct Sealed {
    bytes: Bytes,
    base_sequence: i32,
    acks: Vec<Ack>,
    created: Instant,
    /// Sends so far under its current stamp; once sent, it is in the partition's window.
    attempts: u32,
    /// Answered OutOfOrderSequenceNumber while its partition was broken, or
    /// UnknownProducerId to its first send: the broker did not write it, and it waits to be
    /// sent again under the partition's next epoch.
    refused: bool,
    /// Sealing order across the producer: a flush waits for the batches sealed before it.
    serial: u64,
}

impl Sealed {
    fn sent(&self) -> bool {
        self.attempts > 0
    }
}

/// A partition as the task sees it, from its sealed batches on.
struct Partition {
    /// Listed in `State::busy`.
    busy: bool,
    /// The producer id and epoch its batches are sealed with: the producer's own, with the
    /// epoch bumped each time its sequences break.
    producer: (i64, i16),
    /// A batch of this partition failed for good (the broker refused it, or it expired):
    /// the sequences numbered after it leave a gap the broker will never accept under
    /// `producer`. New batches wait; batches already sent are sent again until the broker
    /// has written them or refused them (`Sealed::refused`); then, with nothing in
    /// flight, the partition bumps its producer epoch and the batches it still holds start
    /// over from sequence 0 under it (`State::repair`). A batch whose fate is unknown is
    /// never sent under the new epoch, and the broker refuses a late write under the old
    /// one once the new has arrived, so none is written twice.
    broken: bool,
    /// Sealed batches not yet sent (or sent and failed), in sequence order.
    ready: VecDeque<Sealed>,
    in_flight: usize,
    /// Every batch from the oldest not yet answered for good to the newest sent, by base
    /// sequence, and whether it is answered. The broker recognises a retry only among the
    /// last five batches it wrote, so a new batch goes out only while this holds fewer than
    /// `max_in_flight`: a retried batch is then never older than the broker remembers.
    window: VecDeque<(i32, bool)>,
    next_sequence: i32,
    /// A batch failed and will be resent: nothing new goes until the others are back.
    retrying: bool,
    not_before: Option<Instant>,
}

impl Partition {
    fn new(producer: (i64, i16)) -> Partition {
        Partition {
            busy: false,
            producer,
            broken: false,
            ready: VecDeque::new(),
            in_flight: 0,
            window: VecDeque::new(),
            next_sequence: 0,
            retrying: false,
            not_before: None,
        }
    }

    /// Where in `ready` the next batch to send is, if one may go now.
    fn sendable(&self, max_in_flight: usize, now: Instant) -> Option<usize> {
        if self.in_flight >= max_in_flight
            || (self.retrying && self.in_flight > 0)
            || self.not_before.is_some_and(|t| t > now)
        {
            return None;
        }
        if self.broken {
            // Only batches already sent go, to learn whether the broker wrote them.
            return self.ready.iter().position(|b| b.sent() && !b.refused);
        }
        let batch = self.ready.front()?;
        (batch.sent() || self.window.len() < max_in_flight).then_some(0)
    }
}

type Sent = Vec<(Key, Sealed)>;
type Answer = Pin<Box<dyn Future<Output = (Sent, Result<Response, Error>)> + Send>>;

type Partitions = HashMap<Key, Partition, BuildHasherDefault<WordHasher>>;

struct State {
    stats: Arc<ProducerStats>,
    client: Client,
    shared: Arc<Shared>,
    partitions: Partitions,
    /// The partitions with batches sealed, in flight, or a broken sequence (a superset,
    /// trimmed once per round): what the task walks instead of every partition.
    busy: Vec<Key>,
    /// Partitions whose lingered batch (by id) waits for them to be able to send.
    blocked: HashMap<Key, u64, BuildHasherDefault<WordHasher>>,
    /// Partitions that heard an answer, gave up a batch or were mended this round: those of
    /// them in `blocked` may send now.
    freed: Vec<Key>,
    in_flight: FuturesUnordered<Answer>,
    /// Flushes asked for since the task last looked.
    flushes: Vec<oneshot::Sender<()>>,
    /// Flushes under way, each with the serial of the first batch sealed after it.
    flushing: Vec<(u64, oneshot::Sender<()>)>,
    next_serial: u64,
    /// Serials of the batches sealed and not yet answered for good.
    unanswered: BTreeSet<u64>,
}

impl State {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let shared = self.shared.clone();
        let mut open = true;
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                command = commands.recv(), if open => match command {
                    Some(Command::Flush(done)) => self.flushes.push(done),
                    // The producer was dropped: what it queued is still sent.
                    None => open = false,
                },
                _ = shared.wake.notified() => {}
                Some((sent, result)) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.answered(sent, result);
                }
                _ = sleep_until(deadline), if deadline.is_some() => {}
            }
            self.route_waiting().await;
            // A flush or the end seals every open batch: nothing lingers.
            self.seal_due(!open || !self.flushes.is_empty());
            for done in self.flushes.drain(..) {
                self.flushing.push((self.next_serial, done));
            }
            self.dispatch().await;
            self.expire();
            if self.repair().await {
                self.seal_due(!open);
                self.dispatch().await;
            }
            // A flush is over once every batch sealed before it is answered.
            let oldest = self.unanswered.first().copied().unwrap_or(u64::MAX);
            let (over, waiting) = std::mem::take(&mut self.flushing)
                .into_iter()
                .partition(|(upto, _)| *upto <= oldest);
            self.flushing = waiting;
            for (_, done) in over {
                let _ = done.send(());
            }
            let partitions = &mut self.partitions;
            self.busy.retain(|key| {
                partitions.get_mut(key).is_some_and(|p| {
                    p.busy = !p.ready.is_empty() || p.in_flight > 0 || p.broken;
                    p.busy
                })
            });
            if !open && self.is_idle() {
                return;
            }
        }
    }

    fn is_idle(&self) -> bool {
        let mut busy = self.busy.iter().filter_map(|key| self.partitions.get(key));
        self.in_flight.is_empty() && busy.all(|p| p.ready.is_empty()) && {
            let accumulator = lock(&self.shared.batches);
            accumulator.queues.full.is_empty()
                && accumulator.topics.values().all(|t| {
                    t.unrouted.is_empty() && t.open.iter().flatten().all(|slot| slot.is_none())
                })
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let now = Instant::now();
        let linger = self.shared.config.linger.saturating_sub(TIMER_SLACK);
        // The oldest batch `seal_due` has not found due yet (it may since have been sealed:
        // then the wake finds nothing to do). A due batch whose partition could not send is
        // in `blocked`, no deadline: the answer that frees its partition is what it waits for
        // (meanwhile it keeps filling).
        let lingering = lock(&self.shared.batches)
            .queues
            .opened
            .front()
            .map(|opened| opened.at + linger);
        let busy = || self.busy.iter().filter_map(|key| self.partitions.get(key));
        // A back-off already over is not a deadline: an answer is what it waits for. A broken
        // partition's back-off is that of its next try for a new producer id (past the last
        // epoch).
        let backoff = busy()
            .filter_map(|p| {
                p.not_before
                    .filter(|t| (!p.ready.is_empty() || p.broken) && *t > now)
            })
            .min();
        // A partition with nothing in flight hears no answer: its oldest waiting batch's
        // delivery timeout is a deadline, so `expire` runs however the wait came about.
        let timeout = self.shared.config.delivery_timeout;
        let expiring = busy()
            .filter(|p| p.in_flight == 0)
            .filter_map(|p| p.ready.front().map(|b| b.created + timeout))
            .min();
        lingering.into_iter().chain(backoff).chain(expiring).min()
    }

    /// Learns the partition count of each topic with records waiting for it, or learned
    /// longer than `metadata_max_age` ago, and routes the records waiting.
    async fn route_waiting(&mut self) {
        let now = Instant::now();
        let max_age = self.shared.config.metadata_max_age;
        let waiting: Vec<(String, bool)> = lock(&self.shared.batches)
            .topics
            .iter()
            .filter(|(_, t)| {
                !t.unrouted.is_empty() || t.learned.is_some_and(|at| at + max_age <= now)
            })
            .map(|(name, t)| (name.clone(), t.open.is_some()))
            .collect();
        for (topic, known) in waiting {
            if known {
                // Asked again: what the client remembers is the count being doubted.
                self.client.invalidate(&topic);
            }
            let count = match self.client.partitions(&topic).await {
                Ok(partitions) if partitions.is_empty() => {
                    Err(Error::Usage(format!("topic {topic} has no partitions")))
                }
                Ok(partitions) => Ok(partitions.len()),
                Err(error) => Err(error),
            };
            let mut refused = Vec::new();
            {
                let mut guard = lock(&self.shared.batches);
                let accumulator = &mut *guard;
                let Some(batches) = accumulator.topics.get_mut(&topic) else {
                    continue;
                };
                match count {
                    Ok(count) => {
                        // A topic's partitions are only ever added to.
                        let open = batches.open.get_or_insert_with(Vec::new);
                        if open.len() < count {
                            open.resize_with(count, || None);
                        }
                        batches.learned = Some(Instant::now());
                        for waiting in std::mem::take(&mut batches.unrouted) {
                            if let Err(refusal) = batches.route(
                                &self.shared,
                                &mut accumulator.queues,
                                waiting.partition,
                                waiting.record.borrowed(),
                                waiting.ack,
                                true,
                            ) {
                                refused.push(refusal);
                            }
                        }
                    }
                    // Known before: the count stands, and is asked again after the age.
                    Err(error) if batches.open.is_some() => {
                        batches.learned = Some(Instant::now());
                        refused.extend(
                            std::mem::take(&mut batches.unrouted)
                                .into_iter()
                                .map(|waiting| (waiting.ack, error.clone())),
                        );
                    }
                    // The topic is forgotten: a later record asks again.
                    Err(error) => {
                        if let Some(batches) = accumulator.topics.remove(&topic) {
                            refused.extend(
                                batches
                                    .unrouted
                                    .into_iter()
                                    .map(|waiting| (waiting.ack, error.clone())),
                            );
                        }
                    }
                }
            }
            for (ack, error) in refused {
                ack.send(Err(error));
            }
        }
    }

    /// Seals the batches that filled, and those that lingered long enough (`all`: every open
    /// one) whose partition can send them now, giving them their sequence numbers. A batch
    /// whose partition is at its in-flight limit stays open and keeps filling, as Kafka's
    /// producers do: sealing it would queue batches of a record or two behind the limit, each
    /// then costing the broker a round (and an fdatasync) of its own, and the queue would
    /// outgrow what the partition can drain.
    fn seal_due(&mut self, all: bool) {
        let now = Instant::now();
        let linger = self.shared.config.linger.saturating_sub(TIMER_SLACK);
        let max = self.shared.config.max_in_flight;
        let shared = self.shared.clone();
        let due: Vec<(Key, OpenBatch)> = {
            let mut guard = lock(&shared.batches);
            let accumulator = &mut *guard;
            let queues = &mut accumulator.queues;
            let mut due = std::mem::take(&mut queues.full);
            if all {
                queues.opened.clear();
                self.blocked.clear();
                for batches in accumulator.topics.values_mut() {
                    for index in 0..batches.open.as_ref().map_or(0, Vec::len) {
                        if let Some(batch) = batches.take_open(index) {
                            due.push(((batches.name.clone(), index as i32), batch));
                        }
                    }
                }
            } else {
                // Batches whose linger is over, oldest first (and stale entries before the
                // first that is not, so the queue holds about one linger's worth), and those
                // that waited for their partition to be able to send, when it may be able to.
                let topics = &mut accumulator.topics;
                let mut candidates = Vec::new();
                while let Some(front) = queues.opened.front() {
                    if front.at + linger > now && still_open(topics, &front.key, front.batch) {
                        break;
                    }
                    if let Some(opened) = queues.opened.pop_front() {
                        candidates.push((opened.key, opened.batch));
                    }
                }
                for key in self.freed.drain(..) {
                    if let Some(batch) = self.blocked.remove(&key) {
                        candidates.push((key, batch));
                    }
                }
                for (key, id) in candidates {
                    // Stale: that batch was sealed already (it filled, or a flush).
                    if !still_open(topics, &key, id) {
                        continue;
                    }
                    let Some(batches) = topics.get_mut(&*key.0) else {
                        continue;
                    };
                    let index = key.1 as usize;
                    if !may_send(&self.partitions, &key, max) {
                        self.blocked.insert(key, id);
                        continue;
                    }
                    if let Some(batch) = batches.take_open(index) {
                        due.push((key, batch));
                    }
                }
            }
            due
        };
        // Per partition, filled batches come before the open one: sequence order holds.
        let producer = (shared.producer_id, shared.producer_epoch);
        for (key, batch) in due {
            let partition = match self.partitions.get_mut(&key) {
                Some(partition) => partition,
                None => self
                    .partitions
                    .entry(key.clone())
                    .or_insert_with(|| Partition::new(producer)),
            };
            if !partition.busy {
                partition.busy = true;
                self.busy.push(key);
            }
            let serial = self.next_serial;
            self.next_serial += 1;
            self.unanswered.insert(serial);
            seal(partition, batch, serial, shared.config.compression);
        }
    }

    /// Sends every batch that may go, one Produce request per leader per round.
    async fn dispatch(&mut self) {
        loop {
            let now = Instant::now();
            let max = self.shared.config.max_in_flight;
            let mut by_leader: BTreeMap<i32, Sent> = BTreeMap::new();
            let keys: Vec<Key> = self
                .busy
                .iter()
                .filter(|key| {
                    self.partitions
                        .get(*key)
                        .is_some_and(|p| p.sendable(max, now).is_some())
                })
                .cloned()
                .collect();
            if keys.is_empty() {
                return;
            }
            for key in keys {
                let leader = match self.client.leader(&key.0, key.1).await {
                    Ok(info) if info.leader >= 0 => info.leader,
                    _ => {
                        // No leader known now: look again after the back-off.
                        self.client.invalidate(&key.0);
                        if let Some(p) = self.partitions.get_mut(&key) {
                            // Read the clock again: the lookup above may have waited
                            // longer than the back-off.
                            p.not_before = Some(Instant::now() + self.shared.config.retry_backoff);
                        }
                        continue;
                    }
                };
                let Some(partition) = self.partitions.get_mut(&key) else {
                    continue;
                };
                let Some(mut batch) = partition
                    .sendable(max, Instant::now())
                    .and_then(|at| partition.ready.remove(at))
                else {
                    continue;
                };
                if !batch.sent() {
                    partition.window.push_back((batch.base_sequence, false));
                }
                batch.attempts += 1;
                partition.in_flight += 1;
                partition.retrying = false;
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                by_leader.entry(leader).or_default().push((key, batch));
            }
            if by_leader.is_empty() {
                return;
            }
            for (leader, sent) in by_leader {
                self.send(leader, sent).await;
            }
        }
    }

    async fn send(&mut self, leader: i32, sent: Sent) {
        let connection = match self.client.broker(leader).await {
            Ok(connection) => connection,
            Err(error) => {
                self.answered(sent, Err(error));
                return;
            }
        };
        let shape: Vec<(Arc<str>, i32, u32)> = sent
            .iter()
            .map(|((topic, partition), batch)| {
                (topic.clone(), *partition, batch.bytes.len() as u32)
            })
            .collect();
        let payload: Vec<Bytes> = sent.iter().map(|(_, batch)| batch.bytes.clone()).collect();
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let acks = self.shared.config.acks;
        let timeout_ms = self.shared.config.delivery_timeout.as_millis().min(30_000) as i32;
        let queued = connection.send(msg::Request::Produce, payload, move |b| {
            let partitions: Vec<_> = shape
                .iter()
                .map(|(topic, partition, records_bytes)| {
                    let topic = b.create_shared_string(topic);
                    msg::ProducePartition::create(
                        b,
                        &msg::ProducePartitionArgs {
                            topic: Some(topic),
                            partition: *partition,
                            records_bytes: *records_bytes,
                        },
                    )
                })
                .collect();
            let partitions = b.create_vector(&partitions);
            msg::Produce::create(
                b,
                &msg::ProduceArgs {
                    acks,
                    timeout_ms,
                    partitions: Some(partitions),
                },
            )
            .as_union_value()
        });
        match queued {
            Ok(answer) => {
                let wait = self.client.config().request_timeout;
                let addr = connection.addr.clone();
                self.in_flight.push(Box::pin(async move {
                    let result = match tokio::time::timeout(wait, answer).await {
                        Ok(Ok(result)) => result,
                        Ok(Err(_)) => Err(Error::Disconnected(addr)),
                        Err(_) => Err(Error::Timeout(format!("no Produce answer from {addr}"))),
                    };
                    (sent, result)
                }));
            }
            Err(error) => self.answered(sent, Err(error)),
        }
    }

    fn answered(&mut self, sent: Sent, result: Result<Response, Error>) {
        let outcomes: Vec<(i16, i64, String)> = match &result {
            Ok(response) => match read_produce(response, sent.len()) {
                Ok(outcomes) => outcomes,
                Err(error) => vec![(-1, -1, error.to_string()); sent.len()],
            },
            Err(error) => {
                // The whole request failed: retry every batch if that may help.
                let code = if error.retriable() {
                    msg::Error::NetworkException.0
                } else {
                    error.code().unwrap_or(msg::Error::UnknownServerError.0)
                };
                vec![(code, -1, error.to_string()); sent.len()]
            }
        };
        let now = Instant::now();
        for ((key, batch), (code, base_offset, message)) in sent.into_iter().zip(outcomes) {
            let Some(partition) = self.partitions.get_mut(&key) else {
                continue;
            };
            partition.in_flight = partition.in_flight.saturating_sub(1);
            if self.blocked.contains_key(&key) {
                self.freed.push(key.clone());
            }
            let code = msg::Error(code);
            let out_of_order = code == msg::Error::OutOfOrderSequenceNumber;
            // Not written, and never will be under this epoch: behind a gap, or the broker no
            // longer knows the producer (a batch before failed, or it was evicted) and this was
            // the batch's first send (after a retry its fate is unknown: an earlier send may
            // have been written before the broker forgot, so it fails for good below). It
            // waits for the partition's next epoch.
            let unknown_producer = code == msg::Error::UnknownProducerId;
            if (out_of_order && partition.broken) || (unknown_producer && batch.attempts == 1) {
                let mut batch = batch;
                batch.refused = true;
                partition.broken = true;
                put_back(partition, batch);
                continue;
            }
            let retry = (retriable_code(code.0) || out_of_order)
                && batch.created + self.shared.config.delivery_timeout > now;
            if !retry {
                answered_for_good(partition, batch.base_sequence);
                self.unanswered.remove(&batch.serial);
            }
            if code == msg::Error::None || code == msg::Error::DuplicateSequenceNumber {
                let base = if code == msg::Error::None {
                    base_offset
                } else {
                    -1
                };
                for (i, ack) in batch.acks.into_iter().enumerate() {
                    let offset = if base >= 0 { base + i as i64 } else { -1 };
                    ack.send(Ok(Delivery {
                        topic: key.0.clone(),
                        partition: key.1,
                        offset,
                    }));
                }
            } else if retry {
                // Back in sequence order; the partition waits for its other batches.
                put_back(partition, batch);
                partition.retrying = true;
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                partition.not_before = Some(now + self.shared.config.retry_backoff);
                self.client.invalidate(&key.0);
            } else {
                let error = Error::Broker {
                    code: code.0,
                    message,
                };
                for ack in batch.acks {
                    ack.send(Err(error.clone()));
                }
                partition.broken = true;
            }
        }
    }

    /// Gives each broken partition whose batches' fates are all known the next producer epoch,
    /// and numbers its batches from sequence 0 under it. Returns whether any partition was
    /// mended.
    async fn repair(&mut self) -> bool {
        let now = Instant::now();
        let ready: Vec<Key> = self
            .busy
            .iter()
            .filter(|key| {
                self.partitions.get(*key).is_some_and(|p| {
                    p.broken
                        && p.in_flight == 0
                        && p.not_before.is_none_or(|t| t <= now)
                        && p.ready.iter().all(|b| !b.sent() || b.refused)
                })
            })
            .cloned()
            .collect();
        let mut mended = false;
        for key in ready {
            let Some((id, epoch)) = self.partitions.get(&key).map(|p| p.producer) else {
                continue;
            };
            // The next epoch of the same id, as Kafka's idempotent producers bump it: the
            // broker takes it from sequence 0 and, once it has, refuses any late write under
            // the old epoch. Past the last epoch, a new id.
            let producer = match epoch.checked_add(1) {
                Some(next) => Ok((id, next)),
                None => self.client.init_producer_id().await,
            };
            let Some(partition) = self.partitions.get_mut(&key) else {
                continue;
            };
            let producer = match producer {
                Ok(producer) => producer,
                Err(_) => {
                    // No broker answered: try again after the back-off.
                    partition.not_before = Some(Instant::now() + self.shared.config.retry_backoff);
                    continue;
                }
            };
            partition.producer = producer;
            partition.broken = false;
            partition.retrying = false;
            partition.window.clear();
            partition.next_sequence = 0;
            for batch in &mut partition.ready {
                batch.base_sequence = partition.next_sequence;
                batch.bytes = restamp(&batch.bytes, producer, batch.base_sequence);
                batch.attempts = 0;
                batch.refused = false;
                partition.next_sequence = partition
                    .next_sequence
                    .wrapping_add(batch.acks.len() as i32)
                    & i32::MAX;
            }
            if self.blocked.contains_key(&key) {
                self.freed.push(key);
            }
            mended = true;
        }
        mended
    }

    /// Fails batches that waited past the delivery timeout without being sent.
    fn expire(&mut self) {
        let now = Instant::now();
        let timeout = self.shared.config.delivery_timeout;
        for key in &self.busy {
            let Some(state) = self.partitions.get_mut(key) else {
                continue;
            };
            let (topic, partition) = key;
            if state.in_flight > 0 {
                continue;
            }
            while state
                .ready
                .front()
                .is_some_and(|b| b.created + timeout <= now)
            {
                let Some(batch) = state.ready.pop_front() else {
                    break;
                };
                answered_for_good(state, batch.base_sequence);
                self.unanswered.remove(&batch.serial);
                state.broken = true;
                for ack in batch.acks {
                    ack.send(Err(Error::Timeout(format!(
                        "{topic}-{partition}: not acknowledged within {timeout:?}"
                    ))));
                }
            }
        }
    }
}

/// Whether the open batch of partition `key` is still batch `id`.
fn still_open(
    topics: &HashMap<String, TopicBatches, BuildHasherDefault<WordHasher>>,
    key: &Key,
    id: u64,
) -> bool {
    topics
        .get(&*key.0)
        .and_then(|t| t.open.as_ref())
        .and_then(|open| open.get(key.1 as usize))
        .is_some_and(|slot| slot.as_ref().is_some_and(|batch| batch.id == id))
}

/// Returns a batch that will be sent again to its place in sequence order.
fn put_back(partition: &mut Partition, batch: Sealed) {
    let at = partition
        .ready
        .iter()
        .position(|b| !b.sent() || sequence_after(b.base_sequence, batch.base_sequence))
        .unwrap_or(partition.ready.len());
    partition.ready.insert(at, batch);
}

/// Whether partition `index` of `topic` could send a batch sealed now: nothing sealed waits
/// before it, its in-flight window has room and its sequences are whole.
fn may_send(partitions: &Partitions, key: &Key, max_in_flight: usize) -> bool {
    partitions.get(key).is_none_or(|p| {
        !p.broken
            && p.ready.is_empty()
            && p.in_flight < max_in_flight
            && p.window.len() < max_in_flight
    })
}

/// Whether sequence `a` comes after `b`, as sequences wrap at 2^31.
fn sequence_after(a: i32, b: i32) -> bool {
    let ahead = a.wrapping_sub(b) & i32::MAX;
    ahead != 0 && ahead < 1 << 30
}

/// Marks a batch answered (acknowledged or failed for good) in its partition's window.
fn answered_for_good(partition: &mut Partition, base_sequence: i32) {
    if let Some(entry) = partition
        .window
        .iter_mut()
        .find(|(sequence, _)| *sequence == base_sequence)
    {
        entry.1 = true;
    }
    while partition.window.front().is_some_and(|(_, done)| *done) {
        partition.window.pop_front();
    }
}

/// Seals a batch into its partition: its producer and sequence numbers are fixed from here.
fn seal(partition: &mut Partition, batch: OpenBatch, serial: u64, codec: Codec) {
    let count = batch.writer.count();
    let base_sequence = partition.next_sequence;
    partition.next_sequence = partition.next_sequence.wrapping_add(count) & i32::MAX;
    partition.ready.push_back(Sealed {
        bytes: batch
            .writer
            .seal_with(partition.producer, base_sequence, codec),
        base_sequence,
        acks: batch.acks,
        created: batch.opened,
        attempts: 0,
        refused: false,
        serial,
    });
}

/// Each partition's (error, base offset, message), in request order.
fn read_produce(response: &Response, expected: usize) -> Result<Vec<(i16, i64, String)>, Error> {
    let frame = response.message()?;
    let body = frame
        .body_as_produce_response()
        .ok_or_else(|| Error::Protocol("Produce answered with another type".into()))?;
    let partitions = body
        .partitions()
        .ok_or_else(|| Error::Protocol("Produce answered no partitions".into()))?;
    if partitions.len() != expected {
        return Err(Error::Protocol(format!(
            "Produce answered {} partitions for {expected}",
            partitions.len()
        )));
    }
    Ok(partitions
        .iter()
        .map(|p| {
            (
                p.error().0,
                p.base_offset(),
                p.message().unwrap_or_default().to_owned(),
            )
        })
        .collect())
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline.into()).await;
    }
}

/// A hasher for short keys on the send path, a word at a time (the multiply-and-rotate
/// step rustc's own FxHash uses): no flooding to resist, as the keys are the application's.
#[derive(Default)]
struct WordHasher(u64);

impl WordHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let mut le = [0u8; 8];
            le.copy_from_slice(word);
            self.add(u64::from_le_bytes(le));
        }
        for byte in words.remainder() {
            self.add(u64::from(*byte));
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Kafka's murmur2 (the Java client's `Utils.murmur2`), for key partitioning.
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut h = SEED ^ length as u32;
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for chunk in chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    match tail.len() {
        3 => {
            h ^= u32::from(tail[2]) << 16;
            h ^= u32::from(tail[1]) << 8;
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        2 => {
            h ^= u32::from(tail[1]) << 8;
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        1 => {
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        _ => {}
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_compare_across_the_wrap() {
        assert!(sequence_after(5, 4));
        assert!(!sequence_after(4, 5));
        assert!(!sequence_after(7, 7));
        assert!(sequence_after(0, i32::MAX));
        assert!(sequence_after(3, i32::MAX - 2));
        assert!(!sequence_after(i32::MAX, 0));
    }

    #[test]
    fn murmur2_matches_the_java_clients_values() {
        // Values from Kafka's UtilsTest.testMurmur2.
        let cases: [(&[u8], i32); 3] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input) as i32, expected, "{:?}", input);
        }
    }
}
