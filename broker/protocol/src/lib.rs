//! tern-protocol: everything that turns network bytes into meaning, and nothing else.
//!
//! Architecture invariant: this crate parses and builds bytes; it performs no I/O, spawns
//! nothing, and never trusts a length read from the wire without checking it against the
//! bytes that are actually there. Control-plane request bodies pass `schema::validate`
//! before the `kafka-protocol` crate decodes them (see `request.rs`); Produce request bodies
//! and Fetch response bodies are handled by our own zero-copy code.

pub mod api;
pub mod batch;
pub mod error_code;
pub mod fetch;
pub mod frame;
pub mod fuzzing;
pub mod limits;
pub mod native;
pub mod produce;
pub mod records;
pub mod request;
pub mod schema;
#[allow(dead_code)] // Tables for apis not yet served are kept so regeneration stays whole.
mod schema_gen;
pub mod types;
pub mod wire;

pub use kafka_protocol;
