//! tern-protocol: everything that turns network bytes into meaning, and nothing else.
//!
//! Architecture invariant: this crate parses and builds bytes; it performs no I/O, spawns
//! nothing, and never trusts a length read from the wire without checking it against the
//! bytes that are actually there.

pub mod batch;
pub mod types;
