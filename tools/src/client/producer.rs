//! The idempotent producer: one task owns every partition's batches.
//!
//! A record joins its partition's open batch; the batch is sealed when it reaches
//! `batch_bytes` or has waited `linger`, and gets its sequence numbers then. Sealed batches go
//! to their partition's leader, every partition of one leader in one Produce request, with up
//! to `max_in_flight` batches per partition outstanding (the broker checks the sequence of
//! each, as Kafka brokers do for up to five). When a batch fails in a way worth retrying (a
//! new leader, a lost connection, a timeout), its partition stops sending, waits for its
//! other outstanding batches, and sends again from the failed one in sequence order: the
//! broker recognises batches it already wrote by their sequence and answers with their
//! original offsets, so a retry never writes a record twice.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use tern_protocol::native::msg;
use tokio::sync::{mpsc, oneshot};

use super::records::{BatchWriter, Record};
use super::{retriable_code, Client, Error, Response};

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
        }
    }
}

/// Where a record was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub topic: String,
    pub partition: i32,
    /// -1 when the broker recognised a retried batch it had written before and did not say
    /// where.
    pub offset: i64,
}

/// Who hears of a record's delivery.
enum Ack {
    Channel(oneshot::Sender<Result<Delivery, Error>>),
    Callback(Box<dyn FnOnce(Result<Delivery, Error>) + Send>),
}

impl Ack {
    fn send(self, result: Result<Delivery, Error>) {
        match self {
            Ack::Channel(sender) => {
                let _ = sender.send(result);
            }
            Ack::Callback(callback) => callback(result),
        }
    }
}

enum Command {
    Send {
        topic: String,
        partition: Option<i32>,
        record: Record,
        ack: Ack,
    },
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

/// An idempotent producer; cheap to share by reference across tasks.
#[derive(Debug)]
pub struct Producer {
    commands: mpsc::UnboundedSender<Command>,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub stats: Arc<ProducerStats>,
}

impl Producer {
    pub(super) async fn start(client: Client, config: ProducerConfig) -> Result<Producer, Error> {
        if config.max_in_flight == 0 || config.max_in_flight > 5 {
            return Err(Error::Usage(
                "max_in_flight must be 1..=5 for idempotent producing".into(),
            ));
        }
        let (producer_id, producer_epoch) = client.init_producer_id().await?;
        let (commands, queue) = mpsc::unbounded_channel();
        let stats = Arc::new(ProducerStats::default());
        let state = State {
            stats: stats.clone(),
            client,
            config,
            producer_id,
            producer_epoch,
            partitions: HashMap::new(),
            sticky: HashMap::new(),
            in_flight: FuturesUnordered::new(),
            flushes: Vec::new(),
        };
        tokio::spawn(state.run(queue));
        Ok(Producer {
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
        let queued = self.commands.send(Command::Send {
            topic: topic.to_owned(),
            partition,
            record,
            ack: Ack::Channel(ack),
        });
        async move {
            if queued.is_err() {
                return Err(Error::Usage("the producer has stopped".into()));
            }
            delivered
                .await
                .unwrap_or_else(|_| Err(Error::Usage("the producer has stopped".into())))
        }
    }

    /// `send`, with `done` called (on the producer's task) when the record is acknowledged
    /// or failed: no future to poll, for callers that are not async.
    pub fn send_with(
        &self,
        topic: &str,
        partition: Option<i32>,
        record: Record,
        done: impl FnOnce(Result<Delivery, Error>) + Send + 'static,
    ) -> Result<(), Error> {
        self.commands
            .send(Command::Send {
                topic: topic.to_owned(),
                partition,
                record,
                ack: Ack::Callback(Box::new(done)),
            })
            .map_err(|_| Error::Usage("the producer has stopped".into()))
    }

    /// Sends everything queued now and waits until each record is acknowledged or failed.
    pub async fn flush(&self) {
        let (done, flushed) = oneshot::channel();
        if self.commands.send(Command::Flush(done)).is_ok() {
            let _ = flushed.await;
        }
    }
}

type Key = (String, i32);

struct OpenBatch {
    writer: BatchWriter,
    acks: Vec<Ack>,
    opened: Instant,
}

struct Sealed {
    bytes: Bytes,
    base_sequence: i32,
    acks: Vec<Ack>,
    created: Instant,
    /// Sent at least once: it is in the partition's window.
    sent: bool,
}

#[derive(Default)]
struct Partition {
    open: Option<OpenBatch>,
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

type Sent = Vec<(Key, Sealed)>;
type Answer = Pin<Box<dyn Future<Output = (Sent, Result<Response, Error>)> + Send>>;

struct State {
    stats: Arc<ProducerStats>,
    client: Client,
    config: ProducerConfig,
    producer_id: i64,
    producer_epoch: i16,
    partitions: HashMap<Key, Partition>,
    /// Keyless records without a partition fill one partition's batch at a time.
    sticky: HashMap<String, i32>,
    in_flight: FuturesUnordered<Answer>,
    flushes: Vec<oneshot::Sender<()>>,
}

impl State {
    async fn run(mut self, mut queue: mpsc::UnboundedReceiver<Command>) {
        let mut open = true;
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                command = queue.recv(), if open => match command {
                    Some(command) => {
                        self.take(command).await;
                        // Everything else already queued joins the same round.
                        while let Ok(command) = queue.try_recv() {
                            self.take(command).await;
                        }
                    }
                    None => {
                        open = false;
                        self.seal_all();
                    }
                },
                Some((sent, result)) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.answered(sent, result);
                }
                _ = sleep_until(deadline), if deadline.is_some() => {}
            }
            self.seal_due();
            self.dispatch().await;
            self.expire();
            if self.is_idle() {
                for done in self.flushes.drain(..) {
                    let _ = done.send(());
                }
                if !open {
                    return;
                }
            }
        }
    }

    fn is_idle(&self) -> bool {
        self.in_flight.is_empty()
            && self
                .partitions
                .values()
                .all(|p| p.open.is_none() && p.ready.is_empty())
    }

    fn next_deadline(&self) -> Option<Instant> {
        let now = Instant::now();
        self.partitions
            .values()
            .flat_map(|p| {
                let linger = p.open.as_ref().map(|b| b.opened + self.config.linger);
                // A back-off already over is not a deadline: an answer is what it waits for.
                let backoff = p.not_before.filter(|t| !p.ready.is_empty() && *t > now);
                linger.into_iter().chain(backoff)
            })
            .min()
    }

    async fn take(&mut self, command: Command) {
        match command {
            Command::Flush(done) => {
                self.seal_all();
                self.flushes.push(done);
            }
            Command::Send {
                topic,
                partition,
                record,
                ack,
            } => {
                let partition = match partition {
                    Some(partition) => partition,
                    None => match self.choose_partition(&topic, &record).await {
                        Ok(partition) => partition,
                        Err(error) => {
                            ack.send(Err(error));
                            return;
                        }
                    },
                };
                self.append((topic, partition), record, ack);
            }
        }
    }

    async fn choose_partition(&mut self, topic: &str, record: &Record) -> Result<i32, Error> {
        let count = self.client.partitions(topic).await?.len() as i32;
        if count == 0 {
            return Err(Error::Usage(format!("topic {topic} has no partitions")));
        }
        Ok(match &record.key {
            // Kafka's default partitioner, so keys land where Kafka clients put them.
            Some(key) => (murmur2(key) & 0x7fff_ffff) as i32 % count,
            None => {
                let sticky = self.sticky.entry(topic.to_owned()).or_insert(0);
                *sticky %= count;
                *sticky
            }
        })
    }

    fn append(&mut self, key: Key, record: Record, ack: Ack) {
        let now = Instant::now();
        let timestamp = record.timestamp.unwrap_or_else(now_ms);
        let config = &self.config;
        let (producer_id, producer_epoch) = (self.producer_id, self.producer_epoch);
        let partition = self.partitions.entry(key.clone()).or_default();
        // A batch never grows past `batch_bytes` (the broker refuses batches over the topic's
        // max.message.bytes): a record that would take it over starts the next one.
        if partition.open.as_ref().is_some_and(|b| {
            !b.writer.is_empty() && b.writer.len() + record.size_estimate() > config.batch_bytes
        }) {
            seal(partition);
        }
        let batch = partition.open.get_or_insert_with(|| OpenBatch {
            writer: BatchWriter::new(
                config.batch_bytes.min(1 << 20),
                timestamp,
                producer_id,
                producer_epoch,
            ),
            acks: Vec::new(),
            opened: now,
        });
        batch.writer.push(&record, timestamp);
        batch.acks.push(ack);
        if batch.writer.len() >= config.batch_bytes {
            seal(partition);
            // The next keyless record starts filling another partition.
            if let Some(next) = self.sticky.get_mut(&key.0) {
                *next = next.wrapping_add(1);
            }
        }
    }

    fn seal_all(&mut self) {
        self.partitions.values_mut().for_each(seal);
    }

    fn seal_due(&mut self) {
        let now = Instant::now();
        let linger = self.config.linger;
        for ((topic, index), partition) in &mut self.partitions {
            if partition
                .open
                .as_ref()
                .is_some_and(|b| b.opened + linger <= now)
            {
                seal(partition);
                // Keyless records move on to the next partition with the next batch.
                if let Some(sticky) = self.sticky.get_mut(topic) {
                    if *sticky == *index {
                        *sticky = sticky.wrapping_add(1);
                    }
                }
            }
        }
    }

    /// Sends every batch that may go, one Produce request per leader per round.
    async fn dispatch(&mut self) {
        loop {
            let now = Instant::now();
            let mut by_leader: BTreeMap<i32, Sent> = BTreeMap::new();
            let keys: Vec<Key> = self
                .partitions
                .iter()
                .filter(|(_, p)| {
                    p.ready.front().is_some_and(|batch| {
                        batch.sent || p.window.len() < self.config.max_in_flight
                    }) && p.not_before.is_none_or(|t| t <= now)
                        && p.in_flight < self.config.max_in_flight
                        && !(p.retrying && p.in_flight > 0)
                })
                .map(|(key, _)| key.clone())
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
                            p.not_before = Some(now + self.config.retry_backoff);
                        }
                        continue;
                    }
                };
                let Some(partition) = self.partitions.get_mut(&key) else {
                    continue;
                };
                let Some(mut batch) = partition.ready.pop_front() else {
                    continue;
                };
                if !batch.sent {
                    batch.sent = true;
                    partition.window.push_back((batch.base_sequence, false));
                }
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
        let shape: Vec<(String, i32, u32)> = sent
            .iter()
            .map(|((topic, partition), batch)| {
                (topic.clone(), *partition, batch.bytes.len() as u32)
            })
            .collect();
        let payload: Vec<Bytes> = sent.iter().map(|(_, batch)| batch.bytes.clone()).collect();
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let acks = self.config.acks;
        let timeout_ms = self.config.delivery_timeout.as_millis().min(30_000) as i32;
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
            let code = msg::Error(code);
            let retry = (retriable_code(code.0) || code == msg::Error::OutOfOrderSequenceNumber)
                && batch.created + self.config.delivery_timeout > now;
            if !retry {
                answered_for_good(partition, batch.base_sequence);
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
                let at = partition
                    .ready
                    .iter()
                    .position(|b| b.base_sequence > batch.base_sequence)
                    .unwrap_or(partition.ready.len());
                partition.ready.insert(at, batch);
                partition.retrying = true;
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                partition.not_before = Some(now + self.config.retry_backoff);
                self.client.invalidate(&key.0);
            } else {
                let error = Error::Broker {
                    code: code.0,
                    message,
                };
                for ack in batch.acks {
                    ack.send(Err(error.clone()));
                }
            }
        }
    }

    /// Fails batches that waited past the delivery timeout without being sent.
    fn expire(&mut self) {
        let now = Instant::now();
        let timeout = self.config.delivery_timeout;
        for ((topic, partition), state) in &mut self.partitions {
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
                for ack in batch.acks {
                    ack.send(Err(Error::Timeout(format!(
                        "{topic}-{partition}: not acknowledged within {timeout:?}"
                    ))));
                }
            }
        }
    }
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

/// Seals a partition's open batch: its sequence numbers are fixed from here.
fn seal(partition: &mut Partition) {
    let Some(batch) = partition.open.take() else {
        return;
    };
    let count = batch.writer.count();
    let base_sequence = partition.next_sequence;
    partition.next_sequence = partition.next_sequence.wrapping_add(count) & i32::MAX;
    partition.ready.push_back(Sealed {
        bytes: batch.writer.seal(base_sequence),
        base_sequence,
        acks: batch.acks,
        created: batch.opened,
        sent: false,
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
