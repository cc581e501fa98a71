//! tern-bench: an open-loop latency benchmarking harness for Kafka-compatible brokers.
//!
//! Owns: everything under `bench/`. The measurement core (`schedule`, `open_loop`,
//! `recorder`, `payload`, `workload`, `cpu` parsing, `svg`, `report`) is plain Rust without
//! I/O and is tested without a broker; the I/O lives in `driver` (client protocols), `runner`
//! (threads and clocks), `processes` (a run over several harness processes), `spawn` (the
//! broker process) and `main` (the command line).
//! Must never: be linked into the broker; the harness measures a broker from the outside.
//! Fits: DESIGN.md §7.

pub mod cpu;
pub mod driver;
pub mod flags;
pub mod histlog;
pub mod limits;
pub mod open_loop;
pub mod payload;
pub mod processes;
pub mod recorder;
pub mod report;
pub mod runner;
pub mod schedule;
pub mod spawn;
pub mod svg;
pub mod workload;
