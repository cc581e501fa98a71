//! Transactions: the coordinator that owns transactional ids and drives their commit or
//! abort markers.
//!
//! - `state`: the I/O-free coordinator state machine (`Transactions`): epochs, fencing,
//!   Empty → Ongoing → Prepare → Complete, timeouts.
//! - `codec`: the `__transaction_state` record format (Kafka's own).
//! - `registry`: the per-shard data the shard holds (state, loaded partitions, marker
//!   tasks, waiting EndTxn answers).
//! - `coordinator`: the shard glue: routes an id to the shard owning its
//!   `__transaction_state` partition, rebuilds state from that log, persists each step before
//!   answering, and sends markers to every partition of a transaction (locally through the
//!   owner shard, to other brokers with WriteTxnMarkers) until all hold them.
//!
//! The partition side (open and aborted transactions, the last stable offset) lives in
//! `partition::txns`; the group side (offsets committed inside a transaction) in `group`.
//!
//! Architecture invariant: a transactional id's state is touched only on the shard that owns
//! its `__transaction_state` partition, as a group's is for `__consumer_offsets`.

pub mod codec;
pub mod coordinator;
pub mod registry;
pub mod state;

pub use codec::TRANSACTION_STATE_TOPIC;
