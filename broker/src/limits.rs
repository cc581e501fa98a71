//! The broker's limits, in one place, with the relations between them asserted.
//!
//! Protocol limits (frame sizes, decoded elements) live in `tern_protocol::limits`; these
//! bound what one connection or one shard may hold at a time.

use tern_protocol::limits as protocol;

/// Requests read from one connection but not yet answered. Kafka clients pipeline up to
/// `max.in.flight.requests.per.connection` (5 by default); the rest wait in the socket.
pub const CONNECTION_IN_FLIGHT_MAX: usize = 32;

/// Request bytes one connection may hold in memory while they are being served. A frame
/// larger than what is left waits until earlier requests finish.
pub const CONNECTION_BUFFERED_BYTES_MAX: usize = 2 * protocol::FRAME_BYTES_MAX;

/// Messages queued between two shards before the sender waits.
pub const SHARD_CHANNEL_CAPACITY: usize = 1024;

/// Longest a Fetch may wait for `min_bytes` (clients ask for 500 ms by default).
pub const FETCH_WAIT_MS_MAX: u64 = 30_000;

/// Longest an admin request waits for the controller.
pub const ADMIN_TIMEOUT_MS_MAX: u64 = 60_000;

/// Most partitions one topic may have.
pub const TOPIC_PARTITIONS_MAX: i32 = 10_000;

/// Longest topic name Kafka accepts.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// Tail cache budget per partition log.
pub const TAIL_CACHE_BYTES_PER_PARTITION: usize = 8 * 1024 * 1024;

const _: () = assert!(CONNECTION_BUFFERED_BYTES_MAX >= protocol::FRAME_BYTES_MAX);
const _: () = assert!(CONNECTION_IN_FLIGHT_MAX >= 5);
const _: () = assert!(TOPIC_PARTITIONS_MAX as usize <= protocol::PARTITIONS_PER_REQUEST_MAX);
