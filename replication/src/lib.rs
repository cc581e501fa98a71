//! tern-replication: the cluster metadata state machine (and, later, partition replication).
//!
//! Architecture invariant: this crate is plain Rust with no I/O. The broker's controller
//! shard feeds it commands and persists what it returns; a Raft group will replicate the
//! same commands when multi-node clusters land, without changing the state machine.

pub mod metadata;
