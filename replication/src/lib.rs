//! tern-replication: the cluster metadata state machine, the Raft quorum that replicates it,
//! and (later) partition replication.
//!
//! Architecture invariant: this crate is plain Rust with no I/O, no clock and no randomness of
//! its own. The broker's drivers feed it ticks, messages and commands and persist and send what
//! it returns; the seeded simulator in `tests/` drives the very same code.

pub mod metadata;
pub mod quorum;
