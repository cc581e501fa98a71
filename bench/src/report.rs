//! The result of a run as JSON, the table printed for it, the charts drawn from it, and the
//! side-by-side comparison of several results.
//!
//! Owns: the JSON result schema (`RunResult`, schema id `tern-bench.result.v1`), the stdout
//! table, the latency "nines" chart and the throughput-over-time chart of a run, and
//! `compare`'s table and chart.
//! Must never: measure; it only formats what `runner` measured. Never reports a percentile of
//! an empty histogram as zero: absent data is `null` in JSON and `-` in tables.
//! Fits: `main` builds a `RunResult` from a `runner::RunOutput`, writes the files and prints
//! the table; `compare` reads results back with `serde_json`.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::recorder::{Counts, LatencySummary};
use crate::runner::RunOutput;
use crate::svg::{self, Axis, Chart, Series, PALETTE};
use crate::workload::Workload;

pub const SCHEMA: &str = "tern-bench.result.v1";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BrokerInfo {
    pub bootstrap: String,
    /// True when `tern-bench run --spawn` started the broker for this run.
    pub spawned: bool,
    pub pid: Option<u32>,
    /// Average cores the broker used over the measurement window (1.0 = one core), when its pid
    /// was known.
    pub cpu_cores_used: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    /// `null` for a max-rate workload.
    pub offered_msgs_per_s: Option<f64>,
    pub sent_msgs_per_s: f64,
    pub acked_msgs_per_s: f64,
    pub acked_mib_per_s: f64,
    pub consumed_msgs_per_s: f64,
    pub consumed_mib_per_s: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SecondPoint {
    /// Seconds since the first scheduled slot.
    pub second: u64,
    pub warmup: bool,
    pub sent_msgs: u64,
    pub acked_msgs: u64,
    pub consumed_msgs: u64,
    pub error_msgs: u64,
    pub ack_latency_us_p50: Option<u64>,
    pub ack_latency_us_p99: Option<u64>,
    pub ack_latency_us_max: Option<u64>,
    pub e2e_latency_us_p50: Option<u64>,
    pub e2e_latency_us_p99: Option<u64>,
    pub e2e_latency_us_max: Option<u64>,
    pub broker_cpu_cores: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Files {
    pub result_json: Option<String>,
    pub histogram_log: Option<String>,
    pub latency_svg: Option<String>,
    pub throughput_svg: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub schema: String,
    pub tool_version: String,
    /// Legend text in comparisons; `--label` or the workload name.
    pub label: String,
    pub driver: String,
    pub broker: BrokerInfo,
    /// Average cores this harness process used over the measurement window: its producers,
    /// consumers and the client library under test (`null` in results from before it was
    /// measured).
    #[serde(default)]
    pub harness_cpu_cores_used: Option<f64>,
    /// Harness processes the run was spread over (`--processes`); the CPU above is their sum.
    #[serde(default = "one_process")]
    pub harness_processes: u32,
    pub workload: Workload,
    pub run_id: String,
    /// Wall-clock instant of the first scheduled slot (second 0 of the series).
    pub started_unix_ms: u64,
    pub topics: Vec<String>,
    pub warmup_s: u64,
    pub measured_s: u64,
    /// True when latency is measured from a fixed-rate schedule; false for max rate, where it
    /// is measured from the hand-off to the client.
    pub open_loop: bool,
    pub rates: Rates,
    /// Messages scheduled in the measurement window.
    pub counts: Counts,
    /// Messages scheduled during warm-up (excluded from rates and latency).
    pub warmup_counts: Counts,
    pub produce_ack_latency: Option<LatencySummary>,
    pub end_to_end_latency: Option<LatencySummary>,
    /// How late the harness handed messages to the client: its own share of the latency.
    pub sender_lag: Option<LatencySummary>,
    pub time_series: Vec<SecondPoint>,
    pub files: Files,
    pub notes: Vec<String>,
}

fn one_process() -> u32 {
    1
}

/// Context of a run that the runner does not know.
pub struct RunContext {
    pub label: Option<String>,
    pub driver: String,
    pub bootstrap: String,
    pub spawned: bool,
    pub broker_pid: Option<u32>,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

impl RunResult {
    pub fn from_output(workload: &Workload, out: &RunOutput, ctx: &RunContext) -> RunResult {
        let measured_s = workload.duration_s;
        let per_s = |n: u64| n as f64 / measured_s as f64;
        let c = &out.recorder.counts;
        let warmup_end_s = workload.warmup_s;
        let time_series = out
            .recorder
            .series()
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let q = |h: &hdrhistogram::Histogram<u64>, quantile: f64| {
                    (!h.is_empty()).then(|| h.value_at_quantile(quantile))
                };
                let max = |h: &hdrhistogram::Histogram<u64>| (!h.is_empty()).then(|| h.max());
                SecondPoint {
                    second: i as u64,
                    warmup: (i as u64) < warmup_end_s,
                    sent_msgs: s.counts.sent_msgs,
                    acked_msgs: s.counts.acked_msgs,
                    consumed_msgs: s.counts.consumed_msgs,
                    error_msgs: s.counts.error_msgs(),
                    ack_latency_us_p50: q(&s.ack_latency_us, 0.5),
                    ack_latency_us_p99: q(&s.ack_latency_us, 0.99),
                    ack_latency_us_max: max(&s.ack_latency_us),
                    e2e_latency_us_p50: q(&s.e2e_latency_us, 0.5),
                    e2e_latency_us_p99: q(&s.e2e_latency_us, 0.99),
                    e2e_latency_us_max: max(&s.e2e_latency_us),
                    broker_cpu_cores: out.broker_cpu_cores_series.get(i).copied().flatten(),
                }
            })
            .collect();
        RunResult {
            schema: SCHEMA.into(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            label: ctx.label.clone().unwrap_or_else(|| workload.name.clone()),
            driver: ctx.driver.clone(),
            broker: BrokerInfo {
                bootstrap: ctx.bootstrap.clone(),
                spawned: ctx.spawned,
                pid: ctx.broker_pid,
                cpu_cores_used: out.broker_cpu_cores,
            },
            harness_cpu_cores_used: out.harness_cpu_cores,
            harness_processes: out.harness_processes,
            workload: workload.clone(),
            run_id: format!("{:016x}", out.run_id),
            started_unix_ms: out.started_unix_ms,
            topics: out.topics.clone(),
            warmup_s: workload.warmup_s,
            measured_s,
            open_loop: out.open_loop,
            rates: Rates {
                offered_msgs_per_s: out.offered_msgs_per_s,
                sent_msgs_per_s: per_s(c.sent_msgs),
                acked_msgs_per_s: per_s(c.acked_msgs),
                acked_mib_per_s: mib(c.acked_bytes) / measured_s as f64,
                consumed_msgs_per_s: per_s(c.consumed_msgs),
                consumed_mib_per_s: mib(c.consumed_bytes) / measured_s as f64,
            },
            counts: c.clone(),
            warmup_counts: out.recorder.warmup_counts.clone(),
            produce_ack_latency: LatencySummary::from_histogram(&out.recorder.ack_latency_us),
            end_to_end_latency: LatencySummary::from_histogram(&out.recorder.e2e_latency_us),
            sender_lag: LatencySummary::from_histogram(&out.recorder.send_lag_us).map(|mut s| {
                // The lag curve is not charted; keep the JSON small.
                s.curve.clear();
                s
            }),
            time_series,
            files: Files::default(),
            notes: out.notes.clone(),
        }
    }
}

fn ms(us: u64) -> String {
    let v = us as f64 / 1000.0;
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn latency_row(name: &str, s: &Option<LatencySummary>) -> String {
    match s {
        None => format!(
            "{name:<22}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}{:>11}\n",
            "-", "-", "-", "-", "-", "-", 0
        ),
        Some(s) => format!(
            "{name:<22}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}{:>11}\n",
            ms(s.latency_us_p50),
            ms(s.latency_us_p90),
            ms(s.latency_us_p99),
            ms(s.latency_us_p999),
            ms(s.latency_us_p9999),
            ms(s.latency_us_max),
            s.count
        ),
    }
}

/// The human-readable table of one run.
pub fn table(r: &RunResult) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "tern-bench {} — driver {}, broker {}{}",
        r.label,
        r.driver,
        r.broker.bootstrap,
        if r.broker.spawned { " (spawned)" } else { "" }
    );
    let _ = writeln!(
        t,
        "workload: {} topic(s) × {} partitions, {} producer(s), {} consumer(s), {:.0} B mean, acks={}, compression={}, linger {} ms",
        r.workload.topics,
        r.workload.partitions_per_topic,
        r.workload.producers_total(),
        r.workload.consumers_total(),
        r.workload.message_size.mean_bytes(),
        r.workload.acks,
        r.workload.compression,
        r.workload.linger_ms
    );
    let _ = writeln!(
        t,
        "measured {} s after {} s warm-up; {}",
        r.measured_s,
        r.warmup_s,
        if r.open_loop {
            "open loop: latency from each message's scheduled send time"
        } else {
            "max rate: latency from hand-off to the client (no schedule)"
        }
    );
    let offered = r
        .rates
        .offered_msgs_per_s
        .map_or("max".to_string(), |o| format!("{o:.0} msg/s"));
    let _ = writeln!(
        t,
        "rate: offered {offered}, sent {:.0} msg/s, acked {:.0} msg/s ({:.2} MiB/s), consumed {:.0} msg/s ({:.2} MiB/s)",
        r.rates.sent_msgs_per_s,
        r.rates.acked_msgs_per_s,
        r.rates.acked_mib_per_s,
        r.rates.consumed_msgs_per_s,
        r.rates.consumed_mib_per_s
    );
    let c = &r.counts;
    let _ = writeln!(
        t,
        "errors: queue full (backpressure) {}, send {}, delivery {}, consume {}, foreign payloads {}",
        c.queue_full_msgs, c.send_error_msgs, c.delivery_error_msgs, c.consume_error_msgs, c.foreign_msgs
    );
    if let Some(cores) = r.broker.cpu_cores_used {
        let _ = writeln!(
            t,
            "broker cpu: {cores:.2} cores (pid {})",
            r.broker.pid.unwrap_or(0)
        );
    }
    if let Some(cores) = r.harness_cpu_cores_used {
        let rate = per_core(r.rates.acked_msgs_per_s, Some(cores));
        let processes = match r.harness_processes {
            1 => String::new(),
            n => format!(" over {n} processes"),
        };
        let _ = writeln!(
            t,
            "harness cpu: {cores:.2} cores{processes}, {} acked msg/s per harness core",
            rate.map_or("-".into(), |rate| format!("{rate:.0}"))
        );
    }
    let _ = writeln!(
        t,
        "\n{:<22}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}{:>11}",
        "latency (ms)", "p50", "p90", "p99", "p99.9", "p99.99", "max", "count"
    );
    t.push_str(&latency_row("produce→ack", &r.produce_ack_latency));
    t.push_str(&latency_row("end-to-end", &r.end_to_end_latency));
    t.push_str(&latency_row("sender lag (harness)", &r.sender_lag));
    for note in &r.notes {
        let _ = writeln!(t, "note: {note}");
    }
    t
}

fn nines_series(name: &str, s: &LatencySummary, colour: &'static str, dashed: bool) -> Series {
    let points = s
        .curve
        .iter()
        .map(|p| {
            (
                svg::nines_x(p.percentile, s.count),
                p.latency_us as f64 / 1000.0,
            )
        })
        .collect();
    Series {
        name: name.into(),
        points,
        dashed,
        colour,
    }
}

/// The nines chart of several results: produce→ack solid, end-to-end dashed, one colour each.
pub fn latency_chart(title: &str, results: &[&RunResult]) -> Chart {
    let mut series = Vec::new();
    let mut y_max_ms: f64 = 0.0;
    let mut count_max = 1u64;
    for (i, r) in results.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let prefix = if results.len() > 1 {
            format!("{}: ", r.label)
        } else {
            String::new()
        };
        for (what, summary, dashed) in [
            ("produce→ack", &r.produce_ack_latency, false),
            ("end-to-end", &r.end_to_end_latency, true),
        ] {
            if let Some(s) = summary {
                y_max_ms = y_max_ms.max(s.latency_us_max as f64 / 1000.0);
                count_max = count_max.max(s.count);
                series.push(nines_series(&format!("{prefix}{what}"), s, colour, dashed));
            }
        }
    }
    let nines = ((count_max as f64).log10().ceil() as u32 + 1).max(3);
    Chart {
        title: title.into(),
        x: svg::nines_axis(nines),
        y: Axis::linear_from_zero("latency (ms)", y_max_ms),
        series,
    }
}

/// Sent, acknowledged and consumed messages per second over the whole run, warm-up included.
pub fn throughput_chart(r: &RunResult) -> Chart {
    let pick = |f: fn(&SecondPoint) -> u64| -> Vec<(f64, f64)> {
        r.time_series
            .iter()
            .map(|p| (p.second as f64 + 0.5, f(p) as f64))
            .collect()
    };
    let y_max = r
        .time_series
        .iter()
        .map(|p| p.sent_msgs.max(p.acked_msgs).max(p.consumed_msgs))
        .max()
        .unwrap_or(0);
    let x_max = r.time_series.len().max(1) as f64;
    let step = (x_max / 10.0).ceil().max(1.0);
    let ticks = (0..=((x_max / step) as u64))
        .map(|i| (i as f64 * step, format!("{}", i as f64 * step)))
        .collect();
    Chart {
        title: format!("{}: throughput (warm-up ends at {} s)", r.label, r.warmup_s),
        x: Axis {
            label: "time (s)".into(),
            scale: svg::Scale::Linear,
            min: 0.0,
            max: x_max,
            ticks,
        },
        y: Axis::linear_from_zero("messages per second", y_max as f64),
        series: vec![
            Series {
                name: "sent".into(),
                points: pick(|p| p.sent_msgs),
                dashed: false,
                colour: PALETTE[0],
            },
            Series {
                name: "acked".into(),
                points: pick(|p| p.acked_msgs),
                dashed: false,
                colour: PALETTE[2],
            },
            Series {
                name: "consumed".into(),
                points: pick(|p| p.consumed_msgs),
                dashed: true,
                colour: PALETTE[1],
            },
        ],
    }
}

/// Rows of the comparison: name and how to read the figure from a result.
type Metric = (&'static str, fn(&RunResult) -> Option<f64>);

const COMPARE_METRICS: &[Metric] = &[
    ("offered msg/s", |r| r.rates.offered_msgs_per_s),
    ("acked msg/s", |r| Some(r.rates.acked_msgs_per_s)),
    ("acked MiB/s", |r| Some(r.rates.acked_mib_per_s)),
    ("consumed msg/s", |r| Some(r.rates.consumed_msgs_per_s)),
    ("ack p50 ms", |r| {
        r.produce_ack_latency
            .as_ref()
            .map(|s| s.latency_us_p50 as f64 / 1e3)
    }),
    ("ack p90 ms", |r| {
        r.produce_ack_latency
            .as_ref()
            .map(|s| s.latency_us_p90 as f64 / 1e3)
    }),
    ("ack p99 ms", |r| {
        r.produce_ack_latency
            .as_ref()
            .map(|s| s.latency_us_p99 as f64 / 1e3)
    }),
    ("ack p99.9 ms", |r| {
        r.produce_ack_latency
            .as_ref()
            .map(|s| s.latency_us_p999 as f64 / 1e3)
    }),
    ("ack p99.99 ms", |r| {
        r.produce_ack_latency
            .as_ref()
            .map(|s| s.latency_us_p9999 as f64 / 1e3)
    }),
    ("ack max ms", |r| {
        r.produce_ack_latency
            .as_ref()
            .map(|s| s.latency_us_max as f64 / 1e3)
    }),
    ("e2e p50 ms", |r| {
        r.end_to_end_latency
            .as_ref()
            .map(|s| s.latency_us_p50 as f64 / 1e3)
    }),
    ("e2e p99 ms", |r| {
        r.end_to_end_latency
            .as_ref()
            .map(|s| s.latency_us_p99 as f64 / 1e3)
    }),
    ("e2e p99.9 ms", |r| {
        r.end_to_end_latency
            .as_ref()
            .map(|s| s.latency_us_p999 as f64 / 1e3)
    }),
    ("e2e p99.99 ms", |r| {
        r.end_to_end_latency
            .as_ref()
            .map(|s| s.latency_us_p9999 as f64 / 1e3)
    }),
    ("e2e max ms", |r| {
        r.end_to_end_latency
            .as_ref()
            .map(|s| s.latency_us_max as f64 / 1e3)
    }),
    ("errors", |r| Some(r.counts.error_msgs() as f64)),
    ("broker cpu cores", |r| r.broker.cpu_cores_used),
    ("harness cpu cores", |r| r.harness_cpu_cores_used),
    ("acked/s per h.core", |r| {
        per_core(r.rates.acked_msgs_per_s, r.harness_cpu_cores_used)
    }),
];

/// A rate per core used; a run that used no measurable CPU has no such rate.
fn per_core(rate: f64, cores: Option<f64>) -> Option<f64> {
    cores.filter(|c| *c > 0.0).map(|c| rate / c)
}

fn cell(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.abs() >= 1000.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.3}"),
    }
}

/// Side-by-side table; each column after the first also shows its ratio to the first.
pub fn compare_table(results: &[&RunResult]) -> String {
    let mut t = String::new();
    let _ = write!(t, "{:<18}", "");
    for (i, r) in results.iter().enumerate() {
        let width = if i == 0 { 14 } else { 24 };
        let label: String = r.label.chars().take(width - 2).collect();
        let _ = write!(t, "{label:>width$}");
    }
    t.push('\n');
    for (name, get) in COMPARE_METRICS {
        let _ = write!(t, "{name:<18}");
        let base = get(results[0]);
        for (i, r) in results.iter().enumerate() {
            let v = get(r);
            if i == 0 {
                let _ = write!(t, "{:>14}", cell(v));
            } else {
                let ratio = match (base, v) {
                    (Some(b), Some(v)) if b != 0.0 => format!("×{:.2}", v / b),
                    _ => "".into(),
                };
                let _ = write!(t, "{:>14}{:>10}", cell(v), ratio);
            }
        }
        t.push('\n');
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::Recorder;

    fn result(label: &str, slow_us: u64) -> RunResult {
        let w = Workload::load("latency-10k-1kib").unwrap();
        let mut recorder = Recorder::new(0, 100);
        for i in 0..1000u64 {
            let latency_ns = if i == 999 { slow_us * 1000 } else { 1_000_000 };
            recorder.record_sent(i * 1000, i * 1000, 1024);
            recorder.record_ack(i * 1000, i * 1000 + latency_ns, 1024);
            recorder.record_consumed(i * 1000, i * 1000 + 2 * latency_ns, 1024);
        }
        let out = RunOutput {
            run_id: 1,
            started_unix_ms: 0,
            topics: vec!["t".into()],
            recorder,
            offered_msgs_per_s: Some(10_000.0),
            open_loop: true,
            broker_cpu_cores: Some(0.5),
            broker_cpu_cores_series: vec![],
            harness_cpu_cores: Some(0.25),
            harness_processes: 1,
            notes: vec![],
        };
        let ctx = RunContext {
            label: Some(label.into()),
            driver: "kafka".into(),
            bootstrap: "127.0.0.1:9092".into(),
            spawned: false,
            broker_pid: None,
        };
        RunResult::from_output(&w, &out, &ctx)
    }

    #[test]
    fn the_result_round_trips_through_json_with_every_section() {
        let r = result("a", 50_000);
        let json = serde_json::to_string_pretty(&r).unwrap();
        let back: RunResult = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        for key in [
            "schema",
            "rates",
            "counts",
            "produce_ack_latency",
            "end_to_end_latency",
            "time_series",
            "broker",
        ] {
            assert!(!v[key].is_null(), "{key} missing");
        }
        assert!(
            v["produce_ack_latency"]["latency_us_max"]
                .as_u64()
                .unwrap()
                .abs_diff(50_000)
                <= 50
        );
    }

    #[test]
    fn the_table_shows_percentiles_in_milliseconds() {
        let t = table(&result("a", 50_000));
        assert!(t.contains("produce→ack"), "{t}");
        assert!(t.contains("50.0"), "max 50 ms should appear:\n{t}");
    }

    #[test]
    fn compare_shows_ratios_against_the_first_result() {
        let (a, b) = (result("a", 10_000), result("b", 20_000));
        let t = compare_table(&[&a, &b]);
        let max_row = t.lines().find(|l| l.starts_with("ack max ms")).unwrap();
        assert!(max_row.contains("×2.00"), "{max_row}");
        let chart = latency_chart("cmp", &[&a, &b]).render();
        assert_eq!(chart.matches("<polyline").count(), 4);
    }

    #[test]
    fn the_throughput_chart_has_three_lines() {
        let svg = throughput_chart(&result("a", 1)).render();
        assert_eq!(svg.matches("<polyline").count(), 3);
    }
}
