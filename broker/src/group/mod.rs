//! The group coordinator: classic consumer groups and KIP-848 consumer groups.
//!
//! - `state`: the I/O-free classic state machine (groups, members, generations, offsets
//!   cache); deterministic, unit-tested, no clock and no timers of its own.
//! - `consumer`: the I/O-free KIP-848 state machine (group and member epochs, target
//!   assignments, reconciliation), driven by a seeded simulation in its tests.
//! - `assignor`: the server-side assignors `uniform` and `range`.
//! - `codec`: the `__consumer_offsets` record formats (byte tables there) and Java's
//!   group-to-partition hash.
//! - `registry`: the per-shard data the shard holds (groups, waiting requests, loaded
//!   partitions).
//! - `coordinator`: the shard glue that persists effects, delivers delayed answers, ticks
//!   deadlines and rebuilds groups from the log at start-up.
//!
//! Architecture invariant: a group's state is owned by the shard that owns its
//! `__consumer_offsets` partition; nothing else reads or writes it except through
//! `Shard::invoke_on` onto that shard. See `README.md` in this directory.

pub mod assignor;
pub mod codec;
pub mod consumer;
pub mod coordinator;
pub mod registry;
pub mod state;

pub use codec::OFFSETS_TOPIC;
pub use registry::Coordinator;
