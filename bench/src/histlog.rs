//! HDR histogram interval logs of a run, readable by HdrHistogram's own tools
//! (HistogramLogAnalyzer, `hdr-plot`, the Java and Go log readers).
//!
//! Owns: writing the per-second produce→ack and end-to-end histograms of the measurement
//! window, tagged `ack` and `e2e`, and one whole-window histogram of each, tagged `ack-total`
//! and `e2e-total`, as a V2-deflate interval log. Values are microseconds (the log's max column
//! is divided by 1000, so it reads in milliseconds).
//! Must never: be the only copy of a figure; the JSON result carries every number reported.
//! Fits: `report` calls `write` after a run.
//!
//! The per-second histograms hold every ack or consume event of that second, including the few
//! of messages scheduled in the last instants of warm-up; the `-total` histograms hold exactly
//! the messages scheduled in the measurement window, which is what the JSON summarises.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;

use crate::recorder::Recorder;

#[derive(Debug, thiserror::Error)]
pub enum HistLogError {
    #[error("writing the histogram log: {0}")]
    Io(#[from] std::io::Error),
    #[error("serializing a histogram: {0}")]
    Serialize(String),
}

/// Writes the log of `recorder` to `out`. `started_unix_ms` is the wall-clock instant of the
/// run clock's origin, `warmup_end_s` the first second of the measurement window.
pub fn write(
    out: &mut impl Write,
    recorder: &Recorder,
    started_unix_ms: u64,
    warmup_end_s: u64,
    measured_s: u64,
) -> Result<(), HistLogError> {
    let mut serializer = V2DeflateSerializer::new();
    let start = UNIX_EPOCH + Duration::from_millis(started_unix_ms);
    let mut builder = IntervalLogWriterBuilder::new();
    builder
        .add_comment("tern-bench latency log; values in microseconds; tags: ack, e2e (per second), ack-total, e2e-total")
        .with_start_time(start)
        .with_base_time(start)
        .with_max_value_divisor(1000.0);
    let mut log = builder.begin_log_with(out, &mut serializer)?;
    let map = |e: hdrhistogram::serialization::interval_log::IntervalLogWriterError<_>| match e {
        hdrhistogram::serialization::interval_log::IntervalLogWriterError::IoError(io) => {
            HistLogError::Io(io)
        }
        hdrhistogram::serialization::interval_log::IntervalLogWriterError::SerializeError(s) => {
            HistLogError::Serialize(format!("{s:?}"))
        }
    };
    let one_s = Duration::from_secs(1);
    let tags = (Tag::new("ack"), Tag::new("e2e"));
    for (i, second) in recorder
        .series()
        .iter()
        .enumerate()
        .skip(warmup_end_s as usize)
    {
        let at = Duration::from_secs(i as u64);
        if !second.ack_latency_us.is_empty() {
            log.write_histogram(&second.ack_latency_us, at, one_s, tags.0)
                .map_err(map)?;
        }
        if !second.e2e_latency_us.is_empty() {
            log.write_histogram(&second.e2e_latency_us, at, one_s, tags.1)
                .map_err(map)?;
        }
    }
    let window = Duration::from_secs(measured_s);
    let window_start = Duration::from_secs(warmup_end_s);
    if !recorder.ack_latency_us.is_empty() {
        log.write_histogram(
            &recorder.ack_latency_us,
            window_start,
            window,
            Tag::new("ack-total"),
        )
        .map_err(map)?;
    }
    if !recorder.e2e_latency_us.is_empty() {
        log.write_histogram(
            &recorder.e2e_latency_us,
            window_start,
            window,
            Tag::new("e2e-total"),
        )
        .map_err(map)?;
    }
    Ok(())
}

/// The wall-clock instant `ms` after the Unix epoch, for callers formatting times.
pub fn unix_ms_to_system_time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;

    #[test]
    fn the_log_reads_back_with_the_recorded_values() {
        let ms = 1_000_000u64;
        let mut r = Recorder::new(1_000 * ms, 10);
        r.record_ack(1_000 * ms, 1_005 * ms, 1); // 5 ms, second 1
        r.record_ack(2_000 * ms, 2_007 * ms, 1); // 7 ms, second 2
        r.record_consumed(2_000 * ms, 2_009 * ms, 1);
        let mut buf = Vec::new();
        write(&mut buf, &r, 1_700_000_000_000, 1, 2).unwrap();

        let mut tags = Vec::new();
        let mut total_max_us = 0;
        for entry in IntervalLogIterator::new(&buf) {
            if let Ok(LogEntry::Interval(h)) = entry {
                let tag = h.tag().map(|t| t.as_str().to_string()).unwrap_or_default();
                if tag == "ack-total" {
                    let decoded = base64_decode(h.encoded_histogram());
                    let hist: hdrhistogram::Histogram<u64> = Deserializer::new()
                        .deserialize(&mut decoded.as_slice())
                        .unwrap();
                    total_max_us = hist.max();
                    assert_eq!(hist.len(), 2);
                }
                tags.push(tag);
            }
        }
        assert_eq!(tags, ["ack", "ack", "e2e", "ack-total", "e2e-total"]);
        assert!(total_max_us.abs_diff(7_000) <= 7);
    }

    /// Standard base64 decoding, enough for the test; the crate's own dependency is private.
    fn base64_decode(text: &str) -> Vec<u8> {
        let value = |c: u8| -> u32 {
            match c {
                b'A'..=b'Z' => (c - b'A') as u32,
                b'a'..=b'z' => (c - b'a' + 26) as u32,
                b'0'..=b'9' => (c - b'0' + 52) as u32,
                b'+' => 62,
                b'/' => 63,
                _ => 0,
            }
        };
        let bytes: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
        let mut out = Vec::new();
        for chunk in bytes.chunks(4) {
            let pad = chunk.iter().filter(|c| **c == b'=').count();
            let n = chunk.iter().fold(0u32, |acc, c| (acc << 6) | value(*c));
            let n = n << (6 * (4 - chunk.len() as u32));
            let three = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            out.extend_from_slice(&three[..3 - pad]);
        }
        out
    }
}
