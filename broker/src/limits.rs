//! The broker's limits, in one place, with the relations between them asserted.
//!
//! Protocol limits (frame sizes, decoded elements) live in `tern_protocol::limits`; these
//! bound what one connection or one shard may hold at a time. The connection limits are
//! defaults and hard caps for `config::ConnectionLimits`, which operators may set.

use std::time::Duration;

use tern_protocol::limits as protocol;

/// Requests read from one connection but not yet answered. Kafka clients pipeline up to
/// `max.in.flight.requests.per.connection` (5 by default); the rest wait in the socket.
pub const CONNECTION_IN_FLIGHT_MAX: usize = 32;

/// Hard cap on the configurable in-flight limit.
pub const CONNECTION_IN_FLIGHT_HARD_MAX: usize = 1024;

/// Request bytes one connection may hold in memory while they are being served. A frame
/// larger than what is left waits until earlier requests finish.
pub const CONNECTION_BUFFERED_BYTES_MAX: usize = 2 * protocol::FRAME_BYTES_MAX;

/// Messages queued between two shards before the sender waits.
pub const SHARD_CHANNEL_CAPACITY: usize = 1024;

/// Longest an acks=all Produce waits for its in-sync replicas, whatever `timeout_ms` it
/// asks for (clients send 30 s by default, as `request.timeout.ms`).
pub const PRODUCE_TIMEOUT_MS_MAX: u64 = 300_000;

/// Longest a group coordinator's write to `__consumer_offsets` waits for its in-sync
/// replicas (Kafka's `offsets.commit.timeout.ms`).
pub const OFFSETS_COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// A follower's long poll on its leader (Kafka's `replica.fetch.wait.max.ms`, 500).
pub const REPLICA_FETCH_WAIT: Duration = Duration::from_millis(500);

/// How long past its long poll a follower waits for the leader's answer before redialling.
pub const REPLICA_RESPONSE_GRACE: Duration = Duration::from_secs(10);

/// A follower's pause after a failed round (unreachable leader, stale image on either side).
pub const REPLICA_FETCH_BACKOFF: Duration = Duration::from_millis(100);

/// How often a fetcher with no partition to follow (for a moment) looks again.
pub const REPLICA_FETCH_IDLE: Duration = Duration::from_millis(50);

/// Dialling a leader gives up after this long (and retries after the backoff).
pub const REPLICA_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Bytes a follower asks for per partition and per Fetch (Kafka's
/// `replica.fetch.max.bytes` 1 MiB and `replica.fetch.response.max.bytes` 10 MiB).
pub const REPLICA_FETCH_PARTITION_BYTES: usize = 1 << 20;
pub const REPLICA_FETCH_RESPONSE_BYTES: usize = 10 << 20;

/// The largest Fetch response a follower reads (the first batch may pass the asked-for
/// bytes, up to the largest batch).
pub const REPLICA_FETCH_RESPONSE_BYTES_MAX: usize =
    REPLICA_FETCH_RESPONSE_BYTES + protocol::FRAME_BYTES_MAX;

/// The largest answer a follower reads to a control request (OffsetForLeaderEpoch).
pub const CONTROL_RESPONSE_BYTES_MAX: usize = 16 << 20;

/// How often each shard's leaders check their ISR (shrink a lagging member, let a
/// caught-up replica join).
pub const ISR_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// Longest a fetch may wait for `min_bytes` (clients ask for 500 ms by default).
pub const FETCH_WAIT_MS_MAX: u64 = 30_000;

/// Default cap on long-poll registrations parked on one shard's partitions at once
/// (`--max-parked-fetches`); one registration is one fetch waiting on one partition, about
/// 100 bytes. A fetch that would pass the cap is answered at once with what is there and a
/// throttle time, so clients back off instead of the shard's memory growing.
pub const FETCH_PARKED_PER_SHARD: usize = 100_000;

/// Hard cap on the configurable parked-fetch limit.
pub const FETCH_PARKED_PER_SHARD_HARD_MAX: usize = 10_000_000;

/// Longest a dropped partition waits for in-flight requests to let go of it before its log is
/// left open (logged).
pub const PARTITION_RELEASE_WAIT_MS: u64 = 30_000;

/// At shutdown, how long connections get to answer what they have read, and then how long
/// the rest get to close once told.
pub const SHUTDOWN_DRAIN_WAIT: Duration = Duration::from_secs(5);
pub const SHUTDOWN_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// How long start-up waits for a listener port held by something other than a live tern
/// broker (a killed broker's sockets linger briefly) before refusing it.
pub const PORT_CLAIM_WAIT: Duration = Duration::from_secs(5);

/// Open-files limit below which start-up warns.
pub const OPEN_FILES_RECOMMENDED: u64 = 65_536;

/// Shards on one broker (each needs a core of its own).
pub const SHARDS_MAX: usize = 1024;

/// Longest an admin request waits for the controller.
pub const ADMIN_TIMEOUT_MS_MAX: u64 = 60_000;

/// Most partitions one topic may have.
pub const TOPIC_PARTITIONS_MAX: i32 = 10_000;

/// Longest topic name Kafka accepts.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// Default memory per shard for sealed segments' indexes (`--index-cache-bytes`).
pub const INDEX_CACHE_BYTES_PER_SHARD: usize = 64 * 1024 * 1024;

/// Bytes at the end of each partition's log replayed at start-up to rebuild idempotent
/// producers' sequence state: enough for the last few batches of every recently active
/// producer, small enough that start-up reads little per partition.
pub const PRODUCER_STATE_SCAN_BYTES: u64 = 2 * 1024 * 1024;

/// Tail cache cap per partition log, within the shard's budget: one busy partition may not
/// push every other partition's recent batches out.
pub const TAIL_CACHE_BYTES_PER_PARTITION: usize = 8 * 1024 * 1024;

/// Default memory per shard for the tail caches of all its partitions (`--tail-cache-bytes`):
/// memory does not grow with the number of partitions.
pub const TAIL_CACHE_BYTES_PER_SHARD: usize = 256 * 1024 * 1024;

/// Default sealed segments' files open per shard (`--open-files-per-shard`): with one active
/// segment file per partition and one descriptor per connection, a shard stays well inside
/// the usual 1,048,576-descriptor limit however much data it holds.
pub const OPEN_SEALED_FILES_PER_SHARD: usize = 16 * 1024;

const _: () = assert!(CONNECTION_BUFFERED_BYTES_MAX >= protocol::FRAME_BYTES_MAX);
const _: () = assert!(CONNECTION_IN_FLIGHT_MAX >= 5);
const _: () = assert!(CONNECTION_IN_FLIGHT_MAX <= CONNECTION_IN_FLIGHT_HARD_MAX);
const _: () = assert!(TOPIC_PARTITIONS_MAX as usize <= protocol::PARTITIONS_PER_REQUEST_MAX);
const _: () = assert!(FETCH_PARKED_PER_SHARD <= FETCH_PARKED_PER_SHARD_HARD_MAX);
const _: () = assert!(FETCH_WAIT_MS_MAX < PARTITION_RELEASE_WAIT_MS + 1);

/// Most members (joined plus pending) one consumer group may hold; a JoinGroup beyond it is
/// answered GROUP_MAX_SIZE_REACHED (Kafka's `group.max.size`).
pub const GROUP_MEMBERS_MAX: usize = 128;

/// Most topic names one consumer group member may subscribe to by name (KIP-848).
pub const GROUP_SUBSCRIBED_TOPICS_MAX: usize = 10_000;

/// Longest subscription regular expression a KIP-848 member may send.
pub const GROUP_SUBSCRIPTION_REGEX_BYTES_MAX: usize = 4096;

/// Largest protocol metadata (one subscription) a member may send in JoinGroup, summed over
/// its protocols.
pub const GROUP_MEMBER_METADATA_BYTES_MAX: usize = 8 * 1024;

/// Largest assignment the leader may give one member in SyncGroup.
pub const GROUP_MEMBER_ASSIGNMENT_BYTES_MAX: usize = 8 * 1024;

/// Most protocols (assignors) one JoinGroup may offer.
pub const GROUP_PROTOCOLS_PER_JOIN_MAX: usize = 16;

/// Longest group id, member id, instance id or client id accepted.
pub const GROUP_ID_BYTES_MAX: usize = 255;

/// Bytes a member's entry adds to the group record besides metadata and assignment: its ids
/// (four strings of at most `GROUP_ID_BYTES_MAX`) and fixed fields.
pub const GROUP_MEMBER_RECORD_OVERHEAD_BYTES: usize = 4 * (2 + GROUP_ID_BYTES_MAX) + 16;

/// The largest group metadata record: every member with full metadata and assignment.
pub const GROUP_RECORD_BYTES_MAX: usize = 1024
    + GROUP_MEMBERS_MAX
        * (GROUP_MEMBER_METADATA_BYTES_MAX
            + GROUP_MEMBER_ASSIGNMENT_BYTES_MAX
            + GROUP_MEMBER_RECORD_OVERHEAD_BYTES);

/// `max.message.bytes` of `__consumer_offsets`: one group record must always fit in a batch.
pub const OFFSETS_TOPIC_BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Largest `metadata` string of one committed offset (Kafka's `offset.metadata.max.bytes`).
pub const OFFSET_METADATA_BYTES_MAX: usize = 4096;

/// Most groups one shard coordinates; a JoinGroup or commit creating one more is answered
/// COORDINATOR_NOT_AVAILABLE (the client retries, and an operator sees the log line).
pub const GROUPS_PER_SHARD_MAX: usize = 100_000;

/// Most committed offsets one group may hold.
pub const GROUP_OFFSETS_MAX: usize = 100_000;

/// Session timeouts a member may ask for (Kafka's `group.min.session.timeout.ms` and
/// `group.max.session.timeout.ms` defaults).
pub const GROUP_SESSION_TIMEOUT_MS_MIN: i32 = 6_000;
pub const GROUP_SESSION_TIMEOUT_MS_MAX: i32 = 1_800_000;

/// How often each shard's coordinator checks session, join and offset-retention deadlines.
pub const GROUP_TICK_INTERVAL_MS: u64 = 50;

/// Bytes read per read while a partition replays its transactions past its snapshot.
pub const TXN_REPLAY_READ_BYTES: usize = 1024 * 1024;

/// Bytes read from `__consumer_offsets` per read while a shard rebuilds its groups.
pub const GROUP_LOAD_READ_BYTES: usize = 1024 * 1024;

const _: () = assert!(GROUP_RECORD_BYTES_MAX < OFFSETS_TOPIC_BATCH_BYTES_MAX);
const _: () = assert!(OFFSETS_TOPIC_BATCH_BYTES_MAX <= protocol::CONTROL_FRAME_BYTES_MAX);
const _: () = assert!(GROUP_LOAD_READ_BYTES >= 64 * 1024);
const _: () = assert!(
    GROUP_SESSION_TIMEOUT_MS_MIN > 0 && GROUP_SESSION_TIMEOUT_MS_MIN < GROUP_SESSION_TIMEOUT_MS_MAX
);
const _: () = assert!((GROUP_TICK_INTERVAL_MS as i32) < GROUP_SESSION_TIMEOUT_MS_MIN / 10);

// Moved here from the modules that use them, so every bound is in one place.

/// Locked memory each executor needs for its io_uring rings and registered buffers.
pub const IO_MEMORY_BYTES: usize = 2 * 1024 * 1024;

/// Largest request the admin HTTP endpoint reads; anything larger is dropped.
pub const ADMIN_HTTP_REQUEST_BYTES_MAX: usize = 8 * 1024;

/// Longest the admin HTTP endpoint waits for a request to arrive.
pub const ADMIN_HTTP_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Producer ids reserved per metadata write.
pub const PRODUCER_ID_BLOCK: i64 = 1000;

/// How long a metadata command waits for the quorum to commit it before the request fails
/// (the quorum may be electing a leader or have lost its majority).
pub const CONTROLLER_COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Each connection's read-ahead buffer: small frames are taken from it several per read;
/// larger ones get a buffer of their own. Most of an idle connection's memory.
pub const READ_AHEAD_BYTES: usize = 4 * 1024;

/// A request up to this size is "small" (ApiVersions, Metadata, heartbeats, commits): its
/// buffer is allocated whole, and it may draw on the shard's small-request reserve.
pub const SMALL_REQUEST_BYTES: usize = 16 * 1024;

/// Request bytes per shard set aside for small requests, so that a spent request budget
/// never locks clients out of the control plane.
pub const SMALL_REQUEST_RESERVE_BYTES: usize = 16 * 1024 * 1024;

/// A larger frame's buffer starts at this size and doubles as its bytes arrive.
pub const FRAME_BUFFER_START_BYTES: usize = 64 * 1024;

/// Default per-shard budget for request bytes held in memory across all connections
/// (`--max-shard-request-bytes`, Kafka's `queued.max.request.bytes`).
pub const SHARD_REQUEST_BYTES: usize = 256 * 1024 * 1024;

/// Default `connections.max.idle.ms` (Kafka's default: 10 minutes).
pub const CONNECTION_IDLE_MS: u64 = 600_000;

/// Default time a request whose first bytes arrived has to arrive in full.
pub const REQUEST_RECEIVE_TIMEOUT_MS: u64 = 30_000;

/// A request's receive deadline grows by the time its declared size takes at this rate, so
/// that a large request on a slow link is not cut off (a 100 MiB request gets 100 s more).
pub const REQUEST_RECEIVE_BYTES_PER_SEC_MIN: usize = 1024 * 1024;

/// Shortest connection deadline an operator may configure.
pub const CONNECTION_DEADLINE_MS_MIN: u64 = 100;

/// How often each shard looks for connections past a deadline.
pub const CONNECTION_REAP_INTERVAL_MS: u64 = 100;

/// At most one log line per interval for connections the broker closed (the rest are
/// counted, by reason, in `tern_connections_closed_total`).
pub const CLOSE_LOG_INTERVAL_MS: i64 = 1_000;

/// Kernel limit on iovecs per call (IOV_MAX is 1024 on Linux); stay well below it.
pub const IOVECS_PER_SEND_MAX: usize = 256;

/// Sessions one shard keeps; the least recently used is evicted beyond this.
pub const SESSIONS_PER_SHARD_MAX: usize = 1000;

/// Partitions in one session.
pub const SESSION_PARTITIONS_MAX: usize = 10_000;

/// Batches remembered per producer for duplicate detection (Kafka keeps five, matching
/// `max.in.flight.requests.per.connection` ≤ 5 for idempotent producers).
pub const BATCHES_REMEMBERED: usize = 5;

/// Producers tracked per partition; the least recently active is dropped beyond this.
pub const PRODUCERS_PER_PARTITION_MAX: usize = 10_000;

/// Longest an idle shard sleeps before it wakes to look around.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);

/// How often each shard applies retention and time-based segment rolls.
pub const RETENTION_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// How often each shard checkpoints its active segments' indexes: what a restart after a
/// crash must rescan is at most this much of writes per partition. A checkpoint is one small
/// write over its file and an fdatasync per partition written since the last one, with no
/// role appends wait for (at 10 s, the rescan of 1,000 partitions filled at 260 MB/s kept a
/// restart at 7 s).
pub const INDEX_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(2);

/// How often committed offsets are checked against `offsets.retention.minutes` (Kafka's
/// `offsets.retention.check.interval.ms` default is 10 minutes).
pub const OFFSET_EXPIRY_CHECK_INTERVAL_MS: i64 = 60_000;

/// How often a dropped partition checks whether its in-flight users have let go.
pub const PARTITION_RELEASE_POLL_MS: u64 = 50;

const _: () = assert!(PARTITION_RELEASE_POLL_MS < PARTITION_RELEASE_WAIT_MS);
const _: () = assert!(READ_AHEAD_BYTES >= 4 && READ_AHEAD_BYTES <= SMALL_REQUEST_BYTES);
const _: () = assert!(SMALL_REQUEST_BYTES <= FRAME_BUFFER_START_BYTES);
const _: () = assert!(SHARD_REQUEST_BYTES >= protocol::FRAME_BYTES_MAX);
const _: () = assert!(SMALL_REQUEST_RESERVE_BYTES >= 64 * SMALL_REQUEST_BYTES);
const _: () = assert!(CONNECTION_REAP_INTERVAL_MS <= CONNECTION_DEADLINE_MS_MIN);
const _: () = assert!(SESSION_PARTITIONS_MAX >= TOPIC_PARTITIONS_MAX as usize);
const _: () = assert!(PRODUCER_ID_BLOCK > 0);

/// Cleaning passes a shard's cleaner runs before it sleeps again (`log.cleaner.backoff.ms`),
/// so one log that keeps failing or changing cannot keep the cleaner from sleeping.
pub const CLEANER_PASSES_PER_ROUND: usize = 64;

/// Record errors (KIP-467) one refused batch reports at most; the rest are left out.
pub const RECORD_ERRORS_MAX: usize = 100;

/// Partition logs a shard opens at once when an image brings new ones (start-up, CreateTopics).
pub const PARTITION_OPEN_CONCURRENCY: usize = 64;

/// How long a failed SASL authentication waits before its error response and close
/// (Kafka's `connection.failed.authentication.delay.ms` default is 100).
pub const FAILED_AUTHENTICATION_DELAY: std::time::Duration = std::time::Duration::from_millis(100);

/// The largest request a SASL listener reads before its client authenticates (Kafka's
/// `sasl.server.max.receive.size`, 512 KiB): a SASL token, or ApiVersions.
pub const UNAUTHENTICATED_REQUEST_BYTES_MAX: usize = 512 * 1024;
