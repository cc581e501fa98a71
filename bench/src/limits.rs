//! Every limit of the harness in one place, with the relations between them asserted at
//! compile time.
//!
//! Owns: the bounds on workload shape (threads, partitions, sizes, durations) and on every
//! wait the harness performs (broker readiness, drain, consumer assignment).
//! Must never: depend on anything else in the crate; a limit is a constant, not a setting.
//! Fits: `workload` validates against these, `runner` and `spawn` bound their loops with them.

/// Upper bound on topics in one workload; a benchmark with more is a metadata test.
pub const TOPICS_MAX: u32 = 1_024;
/// Upper bound on partitions per topic, well above what one loopback broker should be asked.
pub const PARTITIONS_PER_TOPIC_MAX: u32 = 10_000;
/// Upper bound on producer threads in total, because each is a pacing thread on our core.
pub const PRODUCERS_MAX: u32 = 256;
/// Upper bound on consumer threads in total, for the same reason.
pub const CONSUMERS_MAX: u32 = 256;
/// The payload must hold the embedded header (see `payload`).
pub const MESSAGE_SIZE_BYTES_MIN: u32 = crate::payload::HEADER_BYTES as u32;
/// Kafka's default `message.max.bytes` is about 1 MiB; allow up to 16 MiB for brokers set higher.
pub const MESSAGE_SIZE_BYTES_MAX: u32 = 16 * 1024 * 1024;
/// Distinct keys per workload; keys are pre-rendered, so this bounds memory.
pub const KEY_COUNT_MAX: u32 = 1_000_000;
/// A single run is at most a day long; the per-second series is sized from this.
pub const DURATION_S_MAX: u64 = 24 * 3600;
/// Offered rate above this is a typo, not a benchmark of one broker.
pub const RATE_MSGS_PER_S_MAX: f64 = 100_000_000.0;
/// How long we wait for a spawned broker to accept TCP connections.
pub const BROKER_READY_TIMEOUT_MS: u64 = 30_000;
/// Poll interval while waiting for the broker to accept connections.
pub const BROKER_READY_POLL_MS: u64 = 50;
/// How long a stopping broker gets after SIGTERM before we SIGKILL it.
pub const BROKER_STOP_TIMEOUT_MS: u64 = 15_000;
/// After the last scheduled send, how long we wait for acknowledgements and consumption.
pub const DRAIN_TIMEOUT_MS: u64 = 30_000;
/// How long consumers get to join their groups and receive partitions before producing starts.
pub const CONSUMER_ASSIGN_TIMEOUT_MS: u64 = 30_000;
/// Topic creation and metadata propagation bound.
pub const TOPIC_CREATE_TIMEOUT_MS: u64 = 30_000;
/// Time series seconds beyond the configured duration, to hold the drain phase.
pub const SERIES_EXTRA_SECONDS: u64 = DRAIN_TIMEOUT_MS / 1000 + 5;
/// Librdkafka's local queue bound per producer; when full, a scheduled send is counted as
/// backpressure and dropped instead of blocking the schedule.
pub const PRODUCER_QUEUE_MESSAGES_MAX: u32 = 100_000;
/// Results files compared on one chart; more is unreadable.
pub const COMPARE_FILES_MAX: usize = 8;

const _: () = assert!(MESSAGE_SIZE_BYTES_MIN <= MESSAGE_SIZE_BYTES_MAX);
const _: () = assert!(BROKER_READY_POLL_MS < BROKER_READY_TIMEOUT_MS);
const _: () = assert!(SERIES_EXTRA_SECONDS * 1000 > DRAIN_TIMEOUT_MS);
/// librdkafka's `message.timeout.ms` for the producers: a message is acknowledged or failed
/// within this long after it is handed over.
pub const MESSAGE_TIMEOUT_MS: u64 = DRAIN_TIMEOUT_MS;
// The producer flush waits DRAIN_TIMEOUT_MS, so every message handed over is resolved (acked
// or failed, never silently pending) by the time the flush returns.
const _: () = assert!(MESSAGE_TIMEOUT_MS <= DRAIN_TIMEOUT_MS);
const _: () = assert!(COMPARE_FILES_MAX <= crate::svg::PALETTE.len());
