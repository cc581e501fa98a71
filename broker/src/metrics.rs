//! Metric probes: each subsystem's counters, declared here beside the names and help texts
//! they are exported under, and the shard sample a scrape gathers from every shard.
//!
//! A probe is plain `Cell` counters owned by its shard (no atomics: a shard's counters are
//! touched only by its own thread); the connection probe also rate-limits its log lines. `admin_http` renders samples without knowing any metric
//! by name, so adding a counter means touching only its probe.

use std::cell::Cell;
use std::net::SocketAddr;

use tern_storage::{IndexCacheStats, LogStats};

use crate::connection::table::CloseReason;
use crate::limits;
use crate::outcome::Malformed;

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

/// One exported value, named without the `tern_` prefix. Values of one name that differ by
/// a label (`reason="idle"`) are pushed next to each other.
#[derive(Debug, Clone)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    pub label: Option<(&'static str, &'static str)>,
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
            label: None,
            value,
        });
    }

    fn push_labeled(
        &mut self,
        name: &'static str,
        kind: Kind,
        help: &'static str,
        label: (&'static str, &'static str),
        value: u64,
    ) {
        self.metrics.push(Metric {
            name,
            kind,
            help,
            label: Some(label),
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

/// Why a connection was closed other than by its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCause {
    Malformed(Malformed),
    Broker(CloseReason),
}

const CLOSE_CAUSES: [CloseCause; 13] = [
    CloseCause::Malformed(Malformed::FrameSize),
    CloseCause::Malformed(Malformed::Header),
    CloseCause::Malformed(Malformed::Body),
    CloseCause::Malformed(Malformed::AcksZeroProduceFailed),
    CloseCause::Malformed(Malformed::Response),
    CloseCause::Malformed(Malformed::TlsHandshake),
    CloseCause::Malformed(Malformed::Unauthenticated),
    CloseCause::Malformed(Malformed::AuthenticationFailed),
    CloseCause::Broker(CloseReason::Idle),
    CloseCause::Broker(CloseReason::SlowRequest),
    CloseCause::Broker(CloseReason::StalledReader),
    CloseCause::Broker(CloseReason::Shutdown),
    CloseCause::Broker(CloseReason::TooManyConnections),
];

impl CloseCause {
    fn label(self) -> &'static str {
        match self {
            CloseCause::Malformed(reason) => reason.label(),
            CloseCause::Broker(reason) => reason.label(),
        }
    }

    /// Its place in `CLOSE_CAUSES` (an exhaustive match, so a new cause must be listed).
    fn index(self) -> usize {
        match self {
            CloseCause::Malformed(Malformed::FrameSize) => 0,
            CloseCause::Malformed(Malformed::Header) => 1,
            CloseCause::Malformed(Malformed::Body) => 2,
            CloseCause::Malformed(Malformed::AcksZeroProduceFailed) => 3,
            CloseCause::Malformed(Malformed::Response) => 4,
            CloseCause::Malformed(Malformed::TlsHandshake) => 5,
            CloseCause::Malformed(Malformed::Unauthenticated) => 6,
            CloseCause::Malformed(Malformed::AuthenticationFailed) => 7,
            CloseCause::Broker(CloseReason::Idle) => 8,
            CloseCause::Broker(CloseReason::SlowRequest) => 9,
            CloseCause::Broker(CloseReason::StalledReader) => 10,
            CloseCause::Broker(CloseReason::Shutdown) => 11,
            CloseCause::Broker(CloseReason::TooManyConnections) => 12,
        }
    }
}

/// The connection layer's counters, and the rate limit on its log lines: a client sending
/// garbage in a loop costs a counter increment per connection and one line per interval.
#[derive(Debug, Default)]
pub struct ConnectionProbe {
    pub accepted: Counter,
    pub requests: Counter,
    /// Responses that carried a quota's throttle time.
    pub throttled: Counter,
    closes: [Counter; CLOSE_CAUSES.len()],
    last_logged_ms: Cell<Option<i64>>,
    unlogged: Cell<u64>,
}

impl ConnectionProbe {
    pub fn closed(&self, cause: CloseCause) {
        self.closes[cause.index()].inc();
    }

    /// Logs a connection the broker closed, at most one line per `CLOSE_LOG_INTERVAL_MS`;
    /// the line carries how many closes went unlogged since the last one.
    pub fn log_closed(&self, now_ms: i64, peer: Option<SocketAddr>, reason: &str, detail: &str) {
        let due = self
            .last_logged_ms
            .get()
            .is_none_or(|last| now_ms - last >= limits::CLOSE_LOG_INTERVAL_MS);
        if !due {
            self.unlogged.set(self.unlogged.get() + 1);
            return;
        }
        let unlogged = self.unlogged.replace(0);
        self.last_logged_ms.set(Some(now_ms));
        tracing::warn!(?peer, reason, detail, unlogged, "closing connection");
    }

    pub fn collect(
        &self,
        open: usize,
        budget_in_use: u64,
        budget_waits: u64,
        out: &mut ShardSample,
    ) {
        use Kind::*;
        out.push(
            "connections_accepted_total",
            Counter,
            "Client connections accepted (Kafka and native listeners).",
            self.accepted.get(),
        );
        out.push(
            "connections_open",
            Gauge,
            "Client connections open (Kafka and native listeners).",
            open as u64,
        );
        out.push(
            "requests_total",
            Counter,
            "Requests read (Kafka and native protocols).",
            self.requests.get(),
        );
        out.push(
            "quota_throttled_responses_total",
            Counter,
            "Responses whose client was over a quota and was throttled.",
            self.throttled.get(),
        );
        let malformed: u64 = CLOSE_CAUSES
            .iter()
            .filter(|cause| matches!(cause, CloseCause::Malformed(_)))
            .map(|cause| self.closes[cause.index()].get())
            .sum();
        out.push(
            "malformed_requests_total",
            Counter,
            "Requests that closed their connection for malformed input (all reasons).",
            malformed,
        );
        for cause in CLOSE_CAUSES {
            out.push_labeled(
                "connections_closed_total",
                Counter,
                "Connections the broker closed, by reason.",
                ("reason", cause.label()),
                self.closes[cause.index()].get(),
            );
        }
        out.push(
            "request_buffered_bytes",
            Gauge,
            "Request bytes held in memory, charged to the shard's budget.",
            budget_in_use,
        );
        out.push(
            "request_budget_waits_total",
            Counter,
            "Times a connection stopped being read because the shard's request budget was spent.",
            budget_waits,
        );
    }
}

/// The log cleaner's counters (compacted topics).
#[derive(Debug, Default)]
pub struct CleanerProbe {
    pub passes: Counter,
    pub failures: Counter,
    pub bytes_read: Counter,
    pub bytes_written: Counter,
    pub records_removed: Counter,
    /// Time spent in passes, for the cleaner's throughput (read bytes over this).
    pub busy_us: Counter,
    /// Duration of the last pass (a gauge).
    pub last_pass_us: Cell<u64>,
    /// The largest dirty ratio among the shard's compacted logs at the last look, in ‰.
    pub max_dirty_ratio_permille: Cell<u64>,
}

impl CleanerProbe {
    pub fn collect(&self, out: &mut ShardSample) {
        use Kind::*;
        out.push(
            "cleaner_passes_total",
            Counter,
            "Cleaning passes over compacted logs.",
            self.passes.get(),
        );
        out.push(
            "cleaner_failures_total",
            Counter,
            "Cleaning passes that failed with a storage error.",
            self.failures.get(),
        );
        out.push(
            "cleaner_read_bytes_total",
            Counter,
            "Segment bytes the cleaner read (mapping and rewriting).",
            self.bytes_read.get(),
        );
        out.push(
            "cleaner_written_bytes_total",
            Counter,
            "Bytes of cleaned segments written.",
            self.bytes_written.get(),
        );
        out.push(
            "cleaner_removed_records_total",
            Counter,
            "Records the cleaner removed (superseded, keyless, or tombstones past their horizon).",
            self.records_removed.get(),
        );
        out.push(
            "cleaner_busy_microseconds_total",
            Counter,
            "Time spent in cleaning passes (read bytes over it: the cleaner's throughput).",
            self.busy_us.get(),
        );
        out.push(
            "cleaner_last_pass_microseconds",
            Gauge,
            "How long the last cleaning pass took.",
            self.last_pass_us.get(),
        );
        out.push(
            "cleaner_max_dirty_ratio_permille",
            Gauge,
            "The largest dirty ratio among this shard's compacted logs, in thousandths.",
            self.max_dirty_ratio_permille.get(),
        );
    }
}

/// Partition replication's counters.
#[derive(Debug, Default)]
pub struct ReplicationProbe {
    /// ISR changes this shard's leaders proposed and the controller took, by direction.
    pub isr_shrinks: Counter,
    pub isr_expands: Counter,
    /// Record bytes this shard's followers appended from their leaders.
    pub replica_bytes_appended: Counter,
    /// Replica fetchers running now (a gauge the fetchers' manager sets).
    pub fetchers: Cell<u64>,
}

/// What the shard's partitions say about replication at a scrape.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReplicationGauges {
    /// Partitions led here whose ISR is smaller than their replica set.
    pub under_replicated: u64,
    /// Partitions led here whose ISR is below `min.insync.replicas`.
    pub under_min_isr: u64,
    /// Records the followers of partitions led here are behind (summed).
    pub follower_lag_records: u64,
    /// Replica fetchers running on this shard (one per leader broker followed).
    pub fetchers: u64,
}

impl ReplicationProbe {
    pub fn collect(&self, gauges: ReplicationGauges, out: &mut ShardSample) {
        use Kind::*;
        out.push(
            "isr_shrinks_total",
            Counter,
            "ISR shrinks proposed by this shard's leaders and taken by the controller.",
            self.isr_shrinks.get(),
        );
        out.push(
            "isr_expands_total",
            Counter,
            "ISR expansions proposed by this shard's leaders and taken by the controller.",
            self.isr_expands.get(),
        );
        out.push(
            "replica_appended_bytes_total",
            Counter,
            "Record bytes this shard's followers appended from their leaders.",
            self.replica_bytes_appended.get(),
        );
        out.push(
            "under_replicated_partitions",
            Gauge,
            "Partitions led by this shard whose ISR is smaller than their replica set.",
            gauges.under_replicated,
        );
        out.push(
            "under_min_isr_partitions",
            Gauge,
            "Partitions led by this shard whose ISR is below min.insync.replicas.",
            gauges.under_min_isr,
        );
        out.push(
            "follower_lag_records",
            Gauge,
            "Records the followers of partitions led by this shard are behind the leader, summed.",
            gauges.follower_lag_records,
        );
        out.push(
            "replica_fetchers",
            Gauge,
            "Replica fetchers on this shard (one per leader broker followed).",
            gauges.fetchers,
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
    tail: tern_storage::TailBudgetStats,
    files: tern_storage::FileBudgetStats,
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
        sum.read_ahead_hits += stats.read_ahead_hits;
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
    out.push(
        "log_read_ahead_hits_total",
        Counter,
        "Reads from disk served by a read started ahead of them (consumers catching up).",
        sum.read_ahead_hits,
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
        "tail_cache_budget_bytes",
        Gauge,
        "The shard's budget for every partition's tail cache (--tail-cache-bytes).",
        tail.limit_bytes as u64,
    );
    out.push(
        "tail_cache_evictions_total",
        Counter,
        "Batches that left a tail cache to keep the shard within its budget.",
        tail.evictions,
    );
    out.push(
        "open_segment_files",
        Gauge,
        "Sealed segments' files open (active segments' files, one per partition, not counted).",
        files.open as u64,
    );
    out.push(
        "open_segment_files_limit",
        Gauge,
        "The shard's limit on open sealed segments' files (--open-files-per-shard).",
        files.limit as u64,
    );
    out.push(
        "segment_file_reopens_total",
        Counter,
        "Sealed segments' files opened again for a read after the budget closed them.",
        files.reopens,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_causes_are_listed_at_their_index() {
        for (index, cause) in CLOSE_CAUSES.iter().enumerate() {
            assert_eq!(cause.index(), index, "{cause:?}");
        }
    }
}
