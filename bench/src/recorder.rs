//! Latency and count recording for one producer or consumer, and the summaries made from it.
//!
//! Owns: the HDR histograms (produce→ack, produce→consume, sender lag), the counters, the
//! per-second time series, the warm-up cut, and the percentile summary of a histogram.
//! Must never: read a clock or do I/O; every event arrives with its scheduled instant and the
//! instant it happened, both in nanoseconds since the run started.
//! Fits: each producer and consumer owns one `Recorder` behind a mutex (the driver's delivery
//! callback and the progress display are the only other users); at the end the runner merges
//! them into one and the report reads the merged one.
//!
//! Latency is always `event_ns - scheduled_ns`. In an open-loop run `scheduled_ns` is the slot
//! the schedule assigned, not the moment the sender got around to sending, so time a message
//! spent waiting behind a stall is counted (no coordinated omission). Warm-up is decided by the
//! scheduled instant, so a message scheduled during warm-up never enters the histograms even if
//! its ack arrives later.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Significant figures of every histogram: 0.1 % resolution, the usual HDR choice.
const SIGNIFICANT_FIGURES: u8 = 3;

/// Counters of one window (the measurement window, or one second of the series).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Messages handed to the client.
    pub sent_msgs: u64,
    pub sent_bytes: u64,
    /// Scheduled sends dropped because the client's queue was full (backpressure). The schedule
    /// is kept, so these are messages the broker could not absorb at the offered rate.
    pub queue_full_msgs: u64,
    /// Scheduled sends the client refused for another reason.
    pub send_error_msgs: u64,
    /// Messages the broker acknowledged.
    pub acked_msgs: u64,
    pub acked_bytes: u64,
    /// Messages the client reported as failed after sending.
    pub delivery_error_msgs: u64,
    /// Messages consumed (summed over consumer groups).
    pub consumed_msgs: u64,
    pub consumed_bytes: u64,
    /// Consume-side errors reported by the client.
    pub consume_error_msgs: u64,
    /// Consumed payloads that were not ours (other run, other tool): never a latency sample.
    pub foreign_msgs: u64,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.sent_msgs += other.sent_msgs;
        self.sent_bytes += other.sent_bytes;
        self.queue_full_msgs += other.queue_full_msgs;
        self.send_error_msgs += other.send_error_msgs;
        self.acked_msgs += other.acked_msgs;
        self.acked_bytes += other.acked_bytes;
        self.delivery_error_msgs += other.delivery_error_msgs;
        self.consumed_msgs += other.consumed_msgs;
        self.consumed_bytes += other.consumed_bytes;
        self.consume_error_msgs += other.consume_error_msgs;
        self.foreign_msgs += other.foreign_msgs;
    }

    /// All the ways a scheduled message failed to make it, for the one-number error column.
    pub fn error_msgs(&self) -> u64 {
        self.queue_full_msgs
            + self.send_error_msgs
            + self.delivery_error_msgs
            + self.consume_error_msgs
    }
}

/// One second of the time series, by the second in which each event happened.
#[derive(Clone, Debug)]
pub struct Second {
    pub counts: Counts,
    pub ack_latency_us: Histogram<u64>,
    pub e2e_latency_us: Histogram<u64>,
}

impl Second {
    fn new() -> Second {
        Second {
            counts: Counts::default(),
            ack_latency_us: new_histogram(),
            e2e_latency_us: new_histogram(),
        }
    }

    fn add(&mut self, other: &Second) {
        self.counts.add(&other.counts);
        add_histogram(&mut self.ack_latency_us, &other.ack_latency_us);
        add_histogram(&mut self.e2e_latency_us, &other.e2e_latency_us);
    }
}

/// An auto-resizing histogram in microseconds: it starts small and grows to the largest value
/// recorded, so per-second histograms of a quiet run stay a few kilobytes.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new(SIGNIFICANT_FIGURES).expect("3 significant figures is a valid histogram")
}

fn add_histogram(into: &mut Histogram<u64>, from: &Histogram<u64>) {
    // Both are auto-resizing with the same precision, the one case in which `add` cannot fail.
    into.add(from)
        .expect("auto-resizing histograms of equal precision always add");
}

fn record_us(h: &mut Histogram<u64>, latency_ns: u64) {
    // Zero is a valid HDR value; sub-microsecond latencies round down to it. `record` grows an
    // auto-resizing histogram (`saturating_record` would clamp to its current top instead); it
    // can only fail beyond u64 range, where clamping is the best we can do.
    let latency_us = latency_ns / 1_000;
    if h.record(latency_us).is_err() {
        h.saturating_record(latency_us);
    }
}

#[derive(Clone, Debug)]
pub struct Recorder {
    warmup_ns: u64,
    /// Second 0 of the series starts here (the first slot of the schedule).
    series_origin_ns: u64,
    series_seconds_max: usize,
    /// Produce→ack latency of messages scheduled after warm-up.
    pub ack_latency_us: Histogram<u64>,
    /// Produce→consume latency of messages scheduled after warm-up.
    pub e2e_latency_us: Histogram<u64>,
    /// How late the sender handed messages to the client relative to their slots: the harness's
    /// own contribution, reported so a slow harness is never mistaken for a slow broker.
    pub send_lag_us: Histogram<u64>,
    /// Counts of messages scheduled after warm-up.
    pub counts: Counts,
    /// Counts of messages scheduled during warm-up, excluded from everything but the series.
    pub warmup_counts: Counts,
    series: Vec<Second>,
}

impl Recorder {
    /// `series_seconds_max` bounds the time series; events later than that are still counted
    /// and recorded, only not in the series. The series starts at 0 ns; see `with_origin`.
    pub fn new(warmup_ns: u64, series_seconds_max: usize) -> Recorder {
        Recorder::with_origin(0, warmup_ns, series_seconds_max)
    }

    /// As `new`, with second 0 of the series starting at `series_origin_ns`, so that the series
    /// counts whole seconds from the first scheduled slot.
    pub fn with_origin(
        series_origin_ns: u64,
        warmup_ns: u64,
        series_seconds_max: usize,
    ) -> Recorder {
        assert!(
            series_origin_ns <= warmup_ns,
            "warm-up ends before the run starts"
        );
        Recorder {
            warmup_ns,
            series_origin_ns,
            series_seconds_max,
            ack_latency_us: new_histogram(),
            e2e_latency_us: new_histogram(),
            send_lag_us: new_histogram(),
            counts: Counts::default(),
            warmup_counts: Counts::default(),
            series: Vec::new(),
        }
    }

    fn in_warmup(&self, scheduled_ns: u64) -> bool {
        scheduled_ns < self.warmup_ns
    }

    fn second_mut(&mut self, event_ns: u64) -> Option<&mut Second> {
        let index = (event_ns.saturating_sub(self.series_origin_ns) / 1_000_000_000) as usize;
        if index >= self.series_seconds_max {
            return None;
        }
        if self.series.len() <= index {
            self.series.resize_with(index + 1, Second::new);
        }
        Some(&mut self.series[index])
    }

    fn window_mut(&mut self, scheduled_ns: u64) -> &mut Counts {
        if self.in_warmup(scheduled_ns) {
            &mut self.warmup_counts
        } else {
            &mut self.counts
        }
    }

    pub fn record_sent(&mut self, scheduled_ns: u64, sent_ns: u64, len_bytes: u64) {
        let warm = self.in_warmup(scheduled_ns);
        let w = self.window_mut(scheduled_ns);
        w.sent_msgs += 1;
        w.sent_bytes += len_bytes;
        if !warm {
            record_us(&mut self.send_lag_us, sent_ns.saturating_sub(scheduled_ns));
        }
        if let Some(s) = self.second_mut(sent_ns) {
            s.counts.sent_msgs += 1;
            s.counts.sent_bytes += len_bytes;
        }
    }

    pub fn record_queue_full(&mut self, scheduled_ns: u64, now_ns: u64) {
        self.window_mut(scheduled_ns).queue_full_msgs += 1;
        if let Some(s) = self.second_mut(now_ns) {
            s.counts.queue_full_msgs += 1;
        }
    }

    pub fn record_send_error(&mut self, scheduled_ns: u64, now_ns: u64) {
        self.window_mut(scheduled_ns).send_error_msgs += 1;
        if let Some(s) = self.second_mut(now_ns) {
            s.counts.send_error_msgs += 1;
        }
    }

    pub fn record_ack(&mut self, scheduled_ns: u64, acked_ns: u64, len_bytes: u64) {
        let latency_ns = acked_ns.saturating_sub(scheduled_ns);
        let warm = self.in_warmup(scheduled_ns);
        let w = self.window_mut(scheduled_ns);
        w.acked_msgs += 1;
        w.acked_bytes += len_bytes;
        if !warm {
            record_us(&mut self.ack_latency_us, latency_ns);
        }
        if let Some(s) = self.second_mut(acked_ns) {
            s.counts.acked_msgs += 1;
            s.counts.acked_bytes += len_bytes;
            record_us(&mut s.ack_latency_us, latency_ns);
        }
    }

    pub fn record_delivery_error(&mut self, scheduled_ns: u64, now_ns: u64) {
        self.window_mut(scheduled_ns).delivery_error_msgs += 1;
        if let Some(s) = self.second_mut(now_ns) {
            s.counts.delivery_error_msgs += 1;
        }
    }

    pub fn record_consumed(&mut self, scheduled_ns: u64, consumed_ns: u64, len_bytes: u64) {
        let latency_ns = consumed_ns.saturating_sub(scheduled_ns);
        let warm = self.in_warmup(scheduled_ns);
        let w = self.window_mut(scheduled_ns);
        w.consumed_msgs += 1;
        w.consumed_bytes += len_bytes;
        if !warm {
            record_us(&mut self.e2e_latency_us, latency_ns);
        }
        if let Some(s) = self.second_mut(consumed_ns) {
            s.counts.consumed_msgs += 1;
            s.counts.consumed_bytes += len_bytes;
            record_us(&mut s.e2e_latency_us, latency_ns);
        }
    }

    /// An error from the consuming client, or a payload we could not attribute; neither has a
    /// scheduled instant, so both count against the measurement window.
    pub fn record_consume_error(&mut self, now_ns: u64, foreign: bool) {
        if foreign {
            self.counts.foreign_msgs += 1;
        } else {
            self.counts.consume_error_msgs += 1;
        }
        if let Some(s) = self.second_mut(now_ns) {
            if foreign {
                s.counts.foreign_msgs += 1;
            } else {
                s.counts.consume_error_msgs += 1;
            }
        }
    }

    pub fn merge(&mut self, other: &Recorder) {
        add_histogram(&mut self.ack_latency_us, &other.ack_latency_us);
        add_histogram(&mut self.e2e_latency_us, &other.e2e_latency_us);
        add_histogram(&mut self.send_lag_us, &other.send_lag_us);
        self.counts.add(&other.counts);
        self.warmup_counts.add(&other.warmup_counts);
        if self.series.len() < other.series.len() {
            self.series.resize_with(other.series.len(), Second::new);
        }
        for (mine, theirs) in self.series.iter_mut().zip(&other.series) {
            mine.add(theirs);
        }
    }

    pub fn series(&self) -> &[Second] {
        &self.series
    }

    /// Adds one second of this recorder into `into`, for the live progress display.
    pub fn add_second_into(&self, index: usize, into: &mut Second) {
        if let Some(s) = self.series.get(index) {
            into.add(s);
        }
    }

    pub fn empty_second() -> Second {
        Second::new()
    }
}

/// A `Recorder` as one harness process hands it to another (`processes`): the histograms in
/// HdrHistogram's V2 encoding, as hex, so a whole recorder is one line of JSON.
#[derive(Debug, Serialize, Deserialize)]
pub struct RecorderWire {
    warmup_ns: u64,
    series_origin_ns: u64,
    series_seconds_max: usize,
    ack_latency_us: String,
    e2e_latency_us: String,
    send_lag_us: String,
    counts: Counts,
    warmup_counts: Counts,
    series: Vec<SecondWire>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SecondWire {
    counts: Counts,
    ack_latency_us: String,
    e2e_latency_us: String,
}

fn histogram_to_hex(h: &Histogram<u64>) -> Result<String, String> {
    use hdrhistogram::serialization::Serializer as _;
    let mut bytes = Vec::new();
    hdrhistogram::serialization::V2Serializer::new()
        .serialize(h, &mut bytes)
        .map_err(|e| format!("encoding a histogram: {e:?}"))?;
    let mut hex = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = std::fmt::Write::write_fmt(&mut hex, format_args!("{b:02x}"));
    }
    Ok(hex)
}

fn histogram_from_hex(hex: &str) -> Result<Histogram<u64>, String> {
    if !hex.len().is_multiple_of(2) {
        return Err("a histogram's hex has an odd length".into());
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| format!("a histogram's hex is not hex at {i}"))
        })
        .collect::<Result<Vec<u8>, String>>()?;
    let mut h: Histogram<u64> = hdrhistogram::serialization::Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| format!("decoding a histogram: {e:?}"))?;
    // As every histogram here: growing to whatever is added to it.
    h.auto(true);
    Ok(h)
}

impl Recorder {
    pub fn to_wire(&self) -> Result<RecorderWire, String> {
        Ok(RecorderWire {
            warmup_ns: self.warmup_ns,
            series_origin_ns: self.series_origin_ns,
            series_seconds_max: self.series_seconds_max,
            ack_latency_us: histogram_to_hex(&self.ack_latency_us)?,
            e2e_latency_us: histogram_to_hex(&self.e2e_latency_us)?,
            send_lag_us: histogram_to_hex(&self.send_lag_us)?,
            counts: self.counts.clone(),
            warmup_counts: self.warmup_counts.clone(),
            series: self
                .series
                .iter()
                .map(|s| {
                    Ok(SecondWire {
                        counts: s.counts.clone(),
                        ack_latency_us: histogram_to_hex(&s.ack_latency_us)?,
                        e2e_latency_us: histogram_to_hex(&s.e2e_latency_us)?,
                    })
                })
                .collect::<Result<_, String>>()?,
        })
    }

    pub fn from_wire(wire: &RecorderWire) -> Result<Recorder, String> {
        if wire.series_origin_ns > wire.warmup_ns || wire.series.len() > wire.series_seconds_max {
            return Err("a recorder whose series or warm-up is out of its bounds".into());
        }
        Ok(Recorder {
            warmup_ns: wire.warmup_ns,
            series_origin_ns: wire.series_origin_ns,
            series_seconds_max: wire.series_seconds_max,
            ack_latency_us: histogram_from_hex(&wire.ack_latency_us)?,
            e2e_latency_us: histogram_from_hex(&wire.e2e_latency_us)?,
            send_lag_us: histogram_from_hex(&wire.send_lag_us)?,
            counts: wire.counts.clone(),
            warmup_counts: wire.warmup_counts.clone(),
            series: wire
                .series
                .iter()
                .map(|s| {
                    Ok(Second {
                        counts: s.counts.clone(),
                        ack_latency_us: histogram_from_hex(&s.ack_latency_us)?,
                        e2e_latency_us: histogram_from_hex(&s.e2e_latency_us)?,
                    })
                })
                .collect::<Result<_, String>>()?,
        })
    }
}

/// A point of the percentile curve: `percentile` in [0, 100], latency in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub percentile: f64,
    pub latency_us: u64,
}

/// The percentiles we report, and the curve the nines chart is drawn from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub latency_us_min: u64,
    pub latency_us_mean: f64,
    pub latency_us_p50: u64,
    pub latency_us_p90: u64,
    pub latency_us_p99: u64,
    pub latency_us_p999: u64,
    pub latency_us_p9999: u64,
    pub latency_us_max: u64,
    /// Points at roughly even spacing on the 1/(1-p) log axis, ending at the maximum.
    pub curve: Vec<CurvePoint>,
}

impl LatencySummary {
    /// `None` for an empty histogram: no samples means no percentiles, not zeros.
    pub fn from_histogram(h: &Histogram<u64>) -> Option<LatencySummary> {
        if h.is_empty() {
            return None;
        }
        // Five points per halving of the tail (HdrHistogram's usual "ticks per half distance"),
        // which gives a smooth curve out to the last sample.
        let mut curve: Vec<CurvePoint> = Vec::new();
        for v in h.iter_quantiles(5) {
            let point = CurvePoint {
                // Rounded to a millionth of a percent: finer is noise from the iterator's
                // arithmetic, and round numbers survive a trip through JSON unchanged.
                percentile: (v.quantile_iterated_to() * 100.0 * 1e6).round() / 1e6,
                latency_us: h.highest_equivalent(v.value_iterated_to()),
            };
            if curve
                .last()
                .is_some_and(|last| last.percentile == point.percentile)
            {
                continue;
            }
            curve.push(point);
        }
        Some(LatencySummary {
            count: h.len(),
            latency_us_min: h.min(),
            latency_us_mean: h.mean(),
            latency_us_p50: h.value_at_quantile(0.50),
            latency_us_p90: h.value_at_quantile(0.90),
            latency_us_p99: h.value_at_quantile(0.99),
            latency_us_p999: h.value_at_quantile(0.999),
            latency_us_p9999: h.value_at_quantile(0.9999),
            latency_us_max: h.max(),
            curve,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn percentiles_of_a_uniform_distribution_are_where_they_should_be() {
        let mut r = Recorder::new(0, 10);
        // Latencies 1..=10_000 µs, one each: the p-th percentile is p * 10_000 µs.
        for latency_us in 1..=10_000u64 {
            r.record_ack(0, latency_us * 1_000, 100);
        }
        let s = LatencySummary::from_histogram(&r.ack_latency_us).unwrap();
        let close = |got: u64, want: u64| got.abs_diff(want) * 1000 <= want;
        assert_eq!(s.count, 10_000);
        assert!(close(s.latency_us_p50, 5_000), "p50 {}", s.latency_us_p50);
        assert!(close(s.latency_us_p90, 9_000), "p90 {}", s.latency_us_p90);
        assert!(close(s.latency_us_p99, 9_900), "p99 {}", s.latency_us_p99);
        assert!(
            close(s.latency_us_p999, 9_990),
            "p99.9 {}",
            s.latency_us_p999
        );
        assert!(close(s.latency_us_max, 10_000), "max {}", s.latency_us_max);
        assert!((s.latency_us_mean - 5_000.5).abs() < 10.0);
        let last = s.curve.last().unwrap();
        assert_eq!(last.percentile, 100.0);
        assert!(s
            .curve
            .windows(2)
            .all(|w| w[0].percentile < w[1].percentile));
    }

    #[test]
    fn percentiles_of_a_two_mode_distribution_separate_the_modes() {
        let mut r = Recorder::new(0, 10);
        // 99 % at 1 ms, 1 % at 50 ms: p99 is still the fast mode, p99.9 the slow one.
        for i in 0..100_000u64 {
            let latency_ns = if i % 100 == 0 { 50 * MS } else { MS };
            r.record_ack(0, latency_ns, 1);
        }
        let s = LatencySummary::from_histogram(&r.ack_latency_us).unwrap();
        assert!(s.latency_us_p90.abs_diff(1_000) <= 1);
        assert!(s.latency_us_p99.abs_diff(1_000) <= 1);
        assert!(s.latency_us_p999.abs_diff(50_000) <= 50);
    }

    #[test]
    fn warmup_is_decided_by_scheduled_time_and_excluded() {
        let mut r = Recorder::new(1_000 * MS, 10);
        // Scheduled in warm-up, acked after it: excluded from the histogram.
        r.record_sent(999 * MS, 999 * MS, 10);
        r.record_ack(999 * MS, 1_500 * MS, 10);
        // Scheduled after warm-up.
        r.record_sent(1_000 * MS, 1_000 * MS, 10);
        r.record_ack(1_000 * MS, 1_002 * MS, 10);
        assert_eq!(r.ack_latency_us.len(), 1);
        assert_eq!(r.ack_latency_us.max(), 2_000);
        assert_eq!(r.counts.acked_msgs, 1);
        assert_eq!(r.warmup_counts.acked_msgs, 1);
        // The series still shows both acks, in the second they happened.
        assert_eq!(r.series()[1].counts.acked_msgs, 2);
    }

    #[test]
    fn merge_adds_counts_histograms_and_series() {
        let mut a = Recorder::new(0, 10);
        let mut b = Recorder::new(0, 10);
        a.record_ack(0, MS, 1);
        b.record_ack(0, 3_000 * MS, 1);
        b.record_queue_full(0, 0);
        a.merge(&b);
        assert_eq!(a.counts.acked_msgs, 2);
        assert_eq!(a.counts.queue_full_msgs, 1);
        assert_eq!(a.ack_latency_us.len(), 2);
        assert_eq!(a.series().len(), 4);
        assert_eq!(a.series()[3].counts.acked_msgs, 1);
    }

    #[test]
    fn a_recorder_survives_its_wire_form_exactly() {
        let mut r = Recorder::with_origin(MS, 2 * MS, 10);
        r.record_sent(3 * MS, 4 * MS, 100);
        r.record_ack(3 * MS, 1_500 * MS, 100);
        r.record_consumed(3 * MS, 2_700 * MS, 100);
        r.record_ack(MS, 5 * MS, 7);
        r.record_queue_full(4 * MS, 4 * MS);
        let text = serde_json::to_string(&r.to_wire().unwrap()).unwrap();
        let back = Recorder::from_wire(&serde_json::from_str(&text).unwrap()).unwrap();
        assert_eq!(back.counts, r.counts);
        assert_eq!(back.warmup_counts, r.warmup_counts);
        assert_eq!(back.ack_latency_us, r.ack_latency_us);
        assert_eq!(back.e2e_latency_us, r.e2e_latency_us);
        assert_eq!(back.send_lag_us, r.send_lag_us);
        assert_eq!(back.series().len(), r.series().len());
        for (a, b) in back.series().iter().zip(r.series()) {
            assert_eq!(a.counts, b.counts);
            assert_eq!(a.ack_latency_us, b.ack_latency_us);
            assert_eq!(a.e2e_latency_us, b.e2e_latency_us);
        }
        // Merging the copy is merging the original, larger values included.
        let mut merged = Recorder::with_origin(MS, 2 * MS, 10);
        merged.merge(&back);
        merged.record_ack(3 * MS, 100_000 * MS, 1);
        assert_eq!(merged.counts.acked_msgs, 2);
        let mut corrupt = r.to_wire().unwrap();
        corrupt.ack_latency_us.push('z');
        assert!(Recorder::from_wire(&corrupt).is_err());
    }

    #[test]
    fn the_series_is_bounded() {
        let mut r = Recorder::new(0, 2);
        r.record_ack(0, 5_000 * MS, 1);
        assert_eq!(r.series().len(), 0);
        assert_eq!(r.counts.acked_msgs, 1);
    }

    #[test]
    fn an_empty_histogram_has_no_summary() {
        assert_eq!(LatencySummary::from_histogram(&new_histogram()), None);
    }
}
