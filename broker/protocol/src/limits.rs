//! Every protocol-level limit in one place, with the relations between them asserted.
//!
//! The broker's own limits (connections, queues, caches) live in `tern_broker::limits` and
//! refer to these; nothing else in the protocol crate hard-codes a size.

/// Largest request frame accepted (Kafka's `socket.request.max.bytes` default, 100 MiB).
pub const FRAME_BYTES_MAX: usize = 100 * 1024 * 1024;

/// Largest frame for a request that is not Produce: control-plane requests are small, and
/// their decoded form can be many times their wire size, so they get a tighter bound.
pub const CONTROL_FRAME_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Most array elements (summed over all arrays) in one decoded control-plane request. At a
/// few hundred bytes per decoded element this bounds a request's decoded memory to tens of
/// MiB, whatever its declared lengths.
pub const REQUEST_ELEMENTS_MAX: u64 = 200_000;

/// Most partitions in one Produce or Fetch request.
pub const PARTITIONS_PER_REQUEST_MAX: usize = 100_000;

/// Smallest possible request: length prefix excluded, api key, version, correlation id and
/// a null client id.
pub const REQUEST_HEADER_BYTES_MIN: usize = 2 + 2 + 4 + 2;

const _: () = assert!(CONTROL_FRAME_BYTES_MAX <= FRAME_BYTES_MAX);
const _: () = assert!(FRAME_BYTES_MAX <= i32::MAX as usize);
const _: () = assert!(REQUEST_ELEMENTS_MAX as usize <= CONTROL_FRAME_BYTES_MAX);
