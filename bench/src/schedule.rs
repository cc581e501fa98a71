//! Open-loop rate control: when each message is *supposed* to be sent.
//!
//! Owns: the schedule of send slots for one producer and the decision "send now / wait until /
//! done" given the current time.
//! Must never: read a clock, sleep, or do I/O. Time comes in as nanoseconds since the run
//! started, so the same code runs under the real clock and under the simulated one in tests.
//! Fits: the runner's producer loop asks `poll(now_ns)`; the scheduled instant it gets back is
//! what latency is measured from, so a stalled sender or broker shows up in the histograms
//! instead of silently lowering the offered rate (no coordinated omission).

/// What the producer loop should do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Poll {
    /// Send the message of `slot` now; its latency is measured from `scheduled_ns`, which may be
    /// in the past when the sender is late.
    Due { slot: u64, scheduled_ns: u64 },
    /// Nothing is due before `until_ns`.
    Wait { until_ns: u64 },
    /// The schedule is exhausted.
    Done,
}

/// A fixed-rate schedule: slot `i` is due at `first_slot_ns + i / rate`.
///
/// Slot times are computed from the slot index rather than by adding an interval repeatedly,
/// so rounding never accumulates into drift over a long run.
#[derive(Clone, Debug)]
pub struct FixedRate {
    start_ns: u64,
    msgs_per_s: f64,
    phase_ns: f64,
    slot_count: u64,
    slot_next: u64,
}

impl FixedRate {
    /// A schedule of `msgs_per_s` starting at `start_ns` for `duration_ns`.
    ///
    /// `phase` in [0, 1) shifts every slot by that fraction of the interval, so that `n`
    /// producers with phases `k / n` interleave into one evenly spaced stream instead of
    /// sending in bursts of `n`.
    pub fn new(start_ns: u64, msgs_per_s: f64, duration_ns: u64, phase: f64) -> FixedRate {
        assert!(
            msgs_per_s > 0.0 && msgs_per_s.is_finite(),
            "rate must be positive: {msgs_per_s}"
        );
        assert!(
            (0.0..1.0).contains(&phase),
            "phase must be in [0, 1): {phase}"
        );
        let interval_ns = 1e9 / msgs_per_s;
        let phase_ns = phase * interval_ns;
        // Slots whose scheduled time falls inside [start, start + duration).
        let span_ns = duration_ns as f64 - phase_ns;
        let slot_count = if span_ns <= 0.0 {
            0
        } else {
            (span_ns / interval_ns).ceil() as u64
        };
        FixedRate {
            start_ns,
            msgs_per_s,
            phase_ns,
            slot_count,
            slot_next: 0,
        }
    }

    /// The scheduled instant of `slot`, in nanoseconds since the run started.
    pub fn slot_time_ns(&self, slot: u64) -> u64 {
        self.start_ns + (self.phase_ns + slot as f64 * 1e9 / self.msgs_per_s) as u64
    }

    /// Number of slots in the whole schedule.
    pub fn slot_count(&self) -> u64 {
        self.slot_count
    }

    /// Next action at `now_ns`. Slots are handed out in order and never skipped: a late sender
    /// gets the backlog immediately, each slot still carrying its original scheduled instant.
    pub fn poll(&mut self, now_ns: u64) -> Poll {
        if self.slot_next >= self.slot_count {
            return Poll::Done;
        }
        let scheduled_ns = self.slot_time_ns(self.slot_next);
        if scheduled_ns <= now_ns {
            let slot = self.slot_next;
            self.slot_next += 1;
            Poll::Due { slot, scheduled_ns }
        } else {
            Poll::Wait {
                until_ns: scheduled_ns,
            }
        }
    }
}

/// "As fast as possible": every poll before the end is due now.
///
/// There is no intended send time in this mode, so latency is measured from the moment the
/// message was handed to the client; the figure of merit is throughput, not tail latency.
#[derive(Clone, Debug)]
pub struct MaxRate {
    end_ns: u64,
    slot_next: u64,
}

impl MaxRate {
    pub fn new(start_ns: u64, duration_ns: u64) -> MaxRate {
        MaxRate {
            end_ns: start_ns + duration_ns,
            slot_next: 0,
        }
    }

    pub fn poll(&mut self, now_ns: u64) -> Poll {
        if now_ns >= self.end_ns {
            return Poll::Done;
        }
        let slot = self.slot_next;
        self.slot_next += 1;
        Poll::Due {
            slot,
            scheduled_ns: now_ns,
        }
    }
}

/// One producer's pacing, whichever mode the workload asks for.
#[derive(Clone, Debug)]
pub enum Pacer {
    Fixed(FixedRate),
    Max(MaxRate),
}

impl Pacer {
    pub fn poll(&mut self, now_ns: u64) -> Poll {
        match self {
            Pacer::Fixed(s) => s.poll(now_ns),
            Pacer::Max(s) => s.poll(now_ns),
        }
    }

    /// True when latency is measured from a schedule (open loop), false in max-rate mode.
    pub fn is_open_loop(&self) -> bool {
        matches!(self, Pacer::Fixed(_))
    }
}

/// The monotonic clock of a run: nanoseconds since `base`. Shared by producers and consumers,
/// so the timestamp a producer embeds is comparable with the consumer's reading.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base: std::time::Instant,
}

impl Clock {
    pub fn start() -> Clock {
        Clock {
            base: std::time::Instant::now(),
        }
    }

    /// The clock whose zero is `origin_ns` on the machine's monotonic clock
    /// (`monotonic_now_ns`). Harness processes given the same origin share one time line, so a
    /// timestamp one process embeds is comparable with another's reading.
    pub fn at_monotonic(origin_ns: u64) -> Clock {
        // `Instant` reads CLOCK_MONOTONIC on Linux; pairing one reading of each places the
        // origin on `Instant`'s scale (to within the nanoseconds between the two reads).
        let now = std::time::Instant::now();
        let now_ns = monotonic_now_ns();
        let base = if origin_ns <= now_ns {
            now.checked_sub(std::time::Duration::from_nanos(now_ns - origin_ns))
        } else {
            now.checked_add(std::time::Duration::from_nanos(origin_ns - now_ns))
        };
        Clock {
            // Out of `Instant`'s range only for an origin from before boot: start now instead.
            base: base.unwrap_or(now),
        }
    }

    pub fn now_ns(&self) -> u64 {
        // A run shorter than 584 years fits in u64 nanoseconds.
        self.base.elapsed().as_nanos() as u64
    }

    /// The real instant of a run timestamp, for sleeping until it.
    pub fn instant_at(&self, at_ns: u64) -> std::time::Instant {
        self.base + std::time::Duration::from_nanos(at_ns)
    }
}

/// The machine's monotonic clock (CLOCK_MONOTONIC) in nanoseconds: the same in every process,
/// so it is how the processes of one run agree on its origin.
pub fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_given_one_monotonic_origin_read_the_same_time_line() {
        // An origin 5 s in the past: the clock reads at least 5 s, and two clocks built from
        // it read within a few milliseconds of each other (only the reads between them apart).
        let origin = monotonic_now_ns() - 5_000_000_000;
        let a = Clock::at_monotonic(origin);
        let b = Clock::at_monotonic(origin);
        let (ra, rb) = (a.now_ns(), b.now_ns());
        assert!(ra >= 5_000_000_000, "{ra}");
        assert!(rb >= ra && rb - ra < 1_000_000_000, "{ra} {rb}");
        // An origin in the future: the clock reads zero until then.
        let later = Clock::at_monotonic(monotonic_now_ns() + 60_000_000_000);
        assert_eq!(later.now_ns(), 0);
    }

    fn drain(mut s: FixedRate) -> Vec<u64> {
        let mut times = Vec::new();
        // The poll loop is bounded by the slot count it reports plus one for `Done`.
        for _ in 0..=s.slot_count() {
            match s.poll(u64::MAX) {
                Poll::Due { scheduled_ns, .. } => times.push(scheduled_ns),
                Poll::Done => break,
                Poll::Wait { .. } => unreachable!("nothing waits at the end of time"),
            }
        }
        times
    }

    #[test]
    fn ten_thousand_per_second_for_one_second_is_ten_thousand_evenly_spaced_slots() {
        let times = drain(FixedRate::new(0, 10_000.0, 1_000_000_000, 0.0));
        assert_eq!(times.len(), 10_000);
        assert_eq!(times[0], 0);
        for (i, pair) in times.windows(2).enumerate() {
            let gap_ns = pair[1] - pair[0];
            assert!(
                (99_999..=100_001).contains(&gap_ns),
                "gap {gap_ns} ns after slot {i}"
            );
        }
        // No drift: the last slot is exactly where 9999 intervals put it.
        assert_eq!(*times.last().unwrap(), 999_900_000);
    }

    #[test]
    fn phased_producers_interleave_into_one_even_stream() {
        let producers = 4u64;
        let mut all: Vec<u64> = (0..producers)
            .flat_map(|k| drain(FixedRate::new(0, 2_500.0, 1_000_000_000, k as f64 / 4.0)))
            .collect();
        all.sort_unstable();
        assert_eq!(all.len(), 10_000);
        for pair in all.windows(2) {
            assert!((99_999..=100_001).contains(&(pair[1] - pair[0])));
        }
    }

    #[test]
    fn late_sender_gets_backlog_with_original_scheduled_times() {
        let mut s = FixedRate::new(1_000, 1_000.0, 10_000_000, 0.0);
        assert_eq!(s.poll(0), Poll::Wait { until_ns: 1_000 });
        // We wake 3.5 ms late: three slots are overdue and come out in order, then we wait.
        let now_ns = 1_000 + 3_500_000;
        assert_eq!(
            s.poll(now_ns),
            Poll::Due {
                slot: 0,
                scheduled_ns: 1_000
            }
        );
        assert_eq!(
            s.poll(now_ns),
            Poll::Due {
                slot: 1,
                scheduled_ns: 1_001_000
            }
        );
        assert_eq!(
            s.poll(now_ns),
            Poll::Due {
                slot: 2,
                scheduled_ns: 2_001_000
            }
        );
        assert_eq!(
            s.poll(now_ns),
            Poll::Due {
                slot: 3,
                scheduled_ns: 3_001_000
            }
        );
        assert_eq!(
            s.poll(now_ns),
            Poll::Wait {
                until_ns: 4_001_000
            }
        );
    }

    #[test]
    fn max_rate_is_always_due_until_the_end() {
        let mut s = MaxRate::new(0, 100);
        assert_eq!(
            s.poll(5),
            Poll::Due {
                slot: 0,
                scheduled_ns: 5
            }
        );
        assert_eq!(
            s.poll(7),
            Poll::Due {
                slot: 1,
                scheduled_ns: 7
            }
        );
        assert_eq!(s.poll(100), Poll::Done);
    }
}
