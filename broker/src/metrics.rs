//! Metric probes: each subsystem's counters, declared here beside the names and help texts
//! they are exported under, and the shard sample a scrape gathers from every shard.
//!
//! A probe is plain `Cell` counters owned by its shard (no atomics: a shard's counters are
//! touched only by its own thread). `admin_http` renders samples without knowing any metric
//! by name, so adding a counter means touching only its probe.

use std::cell::Cell;

use tern_storage::{IndexCacheStats, LogStats};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(Cell<u64>);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.set(self.0.get() + n);
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// One exported value, named without the `tern_` prefix.
#[derive(Debug, Clone)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    pub value: u64,
}

/// One shard's metrics, gathered for a scrape.
#[derive(Debug, Clone, Default)]
pub struct ShardSample {
    pub shard: usize,
    pub metrics: Vec<Metric>,
}

impl ShardSample {
    fn push(&mut self, name: &'static str, kind: Kind, help: &'static str, value: u64) {
        self.metrics.push(Metric {
            name,
            kind,
            help,
            value,
        });
    }

    /// The value of `name` in this sample (tests and tools).
    pub fn get(&self, name: &str) -> Option<u64> {
        self.metrics
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.value)
    }
}

/// The connection layer's counters.
#[derive(Debug, Default)]
pub struct ConnectionProbe {
    pub accepted: Counter,
    pub requests: Counter,
    pub malformed: Counter,
}

impl ConnectionProbe {
    pub fn collect(&self, open: usize, out: &mut ShardSample) {
        use Kind::*;
        out.push(
            "connections_accepted_total",
            Counter,
            "Kafka connections accepted.",
            self.accepted.get(),
        );
        out.push(
            "connections_open",
            Gauge,
            "Kafka connections open.",
            open as u64,
        );
        out.push(
            "requests_total",
            Counter,
            "Kafka requests read.",
            self.requests.get(),
        );
        out.push(
            "malformed_requests_total",
            Counter,
            "Requests that closed their connection.",
            self.malformed.get(),
        );
    }
}

/// The fetch path's counters.
#[derive(Debug, Default)]
pub struct FetchProbe {
    /// Record bytes placed in Fetch responses by reference.
    pub record_bytes_referenced: Counter,
    /// Calls a Fetch made to partition owners (one per owner shard per request).
    pub owner_calls: Counter,
    /// Long polls answered at once because the shard's parked-waiter cap was reached.
    pub parks_refused: Counter,
}

impl FetchProbe {
    /// `parked`: registrations parked now; `parks_total`: ever made (both kept by the shard's
    /// `ParkBudget`).
    pub fn collect(&self, parked: usize, parks_total: u64, out: &mut ShardSample) {
        use Kind::*;
        out.push(
            "fetch_response_record_bytes_total",
            Counter,
            "Record bytes placed in Fetch responses by reference.",
            self.record_bytes_referenced.get(),
        );
        out.push("fetch_owner_calls_total", Counter, "Calls from Fetch requests to partition owner shards (one per owner per request, however long it waits).", self.owner_calls.get());
        out.push(
            "fetch_parks_total",
            Counter,
            "Partition registrations of parked long-poll fetches.",
            parks_total,
        );
        out.push(
            "fetch_parks_refused_total",
            Counter,
            "Long-poll fetches answered at once because the shard's parked-waiter cap was reached.",
            self.parks_refused.get(),
        );
        out.push(
            "fetch_parked_waiters",
            Gauge,
            "Partition registrations of long-poll fetches parked now.",
            parked as u64,
        );
    }
}

/// The partition logs' counters, summed over a shard's logs, and its index cache.
pub fn collect_logs(
    logs: impl Iterator<Item = LogStats>,
    cache: IndexCacheStats,
    out: &mut ShardSample,
) {
    use Kind::*;
    let mut partitions = 0u64;
    let mut sum = LogStats::default();
    for stats in logs {
        partitions += 1;
        sum.bytes_zero_copy += stats.bytes_zero_copy;
        sum.bytes_copied += stats.bytes_copied;
        sum.appends += stats.appends;
        sum.bytes_written += stats.bytes_written;
        sum.fdatasyncs += stats.fdatasyncs;
        sum.tail_cache_bytes += stats.tail_cache_bytes;
        sum.active_index_bytes += stats.active_index_bytes;
    }
    out.push("partitions", Gauge, "Partition replicas owned.", partitions);
    out.push(
        "log_read_bytes_zero_copy_total",
        Counter,
        "Bytes read from tail caches without copying.",
        sum.bytes_zero_copy,
    );
    out.push(
        "log_read_bytes_copied_total",
        Counter,
        "Bytes read from disk (copied once out of the DMA buffer).",
        sum.bytes_copied,
    );
    out.push("log_appends_total", Counter, "Log appends.", sum.appends);
    out.push(
        "log_written_bytes_total",
        Counter,
        "Bytes written to segment files.",
        sum.bytes_written,
    );
    out.push(
        "log_fdatasyncs_total",
        Counter,
        "fdatasync calls (group commit shares one among many appends).",
        sum.fdatasyncs,
    );
    out.push(
        "log_tail_cache_bytes",
        Gauge,
        "Bytes held in tail caches.",
        sum.tail_cache_bytes as u64,
    );
    out.push(
        "log_active_index_bytes",
        Gauge,
        "Bytes held by the active segments' indexes.",
        sum.active_index_bytes as u64,
    );
    out.push(
        "index_cache_bytes",
        Gauge,
        "Bytes of sealed segments' indexes held in the shard index caches.",
        cache.bytes as u64,
    );
    out.push(
        "index_cache_hits_total",
        Counter,
        "Sealed-segment index lookups served from memory.",
        cache.hits,
    );
    out.push(
        "index_cache_misses_total",
        Counter,
        "Sealed-segment index lookups that read the index files again.",
        cache.misses,
    );
}
