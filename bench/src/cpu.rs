//! CPU use of the broker and of the harness itself, from `/proc/PID/stat` (utime + stime).
//!
//! Owns: parsing the stat line, reading it for a pid, turning two readings into "cores
//! used" (1.0 = one core busy for the whole interval), and a process's measurement window.
//! Must never: signal or otherwise touch the process it watches; reading its stat is all.
//! Fits: the runner samples the broker once a second for the series, and the broker and the
//! harness over the measurement window (`Window`) for the summary.

use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("cannot read /proc/{pid}/stat (is the broker running, and is this Linux?): {source}")]
    Read { pid: u32, source: std::io::Error },
    #[error("/proc/{pid}/stat has an unexpected format")]
    Format { pid: u32 },
}

/// Cumulative user + system CPU time of a process, in clock ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTicks {
    pub utime_ticks: u64,
    pub stime_ticks: u64,
}

/// Parses the `utime` and `stime` fields (14 and 15) of a stat line. The command name (field 2)
/// is in parentheses and may itself contain spaces and parentheses, so fields are counted from
/// the last `)`.
pub fn parse_stat(line: &str) -> Option<CpuTicks> {
    let after_comm = &line[line.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // `fields[0]` is field 3 (state), so field n is `fields[n - 3]`.
    let utime_ticks = fields.get(14 - 3)?.parse().ok()?;
    let stime_ticks = fields.get(15 - 3)?.parse().ok()?;
    Some(CpuTicks {
        utime_ticks,
        stime_ticks,
    })
}

pub fn ticks_per_s() -> u64 {
    // SAFETY: sysconf has no preconditions; it returns -1 for unknown names.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// One reading of a process's CPU time, with the instant it was taken.
#[derive(Clone, Copy, Debug)]
pub struct CpuSample {
    pub ticks: CpuTicks,
    pub at: Instant,
}

pub fn sample(pid: u32) -> Result<CpuSample, CpuError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|source| CpuError::Read { pid, source })?;
    let ticks = parse_stat(&text).ok_or(CpuError::Format { pid })?;
    Ok(CpuSample {
        ticks,
        at: Instant::now(),
    })
}

/// A process's CPU over the measurement window: one reading as warm-up ends and one as the
/// last slot is due, each taken by the first `observe` at or after its instant.
pub struct Window {
    pid: Option<u32>,
    start: Option<CpuSample>,
    end: Option<CpuSample>,
}

impl Window {
    /// The window of `pid` (`None`: nothing to measure).
    pub fn new(pid: Option<u32>) -> Window {
        Window {
            pid,
            start: None,
            end: None,
        }
    }

    /// Takes whichever reading is due at `now_ns`.
    pub fn observe(&mut self, now_ns: u64, start_ns: u64, end_ns: u64) {
        let Some(pid) = self.pid else { return };
        if self.start.is_none() && now_ns >= start_ns {
            self.start = sample(pid).ok();
        }
        if self.end.is_none() && now_ns >= end_ns {
            self.end = sample(pid).ok();
        }
    }

    /// Cores used over the window. One not closed yet (the producers finished before its
    /// nominal end: stopped, or the last slot fell just short of it) ends now.
    pub fn cores(mut self, ticks_per_s: u64) -> Option<f64> {
        if self.end.is_none() {
            self.end = self.pid.and_then(|pid| sample(pid).ok());
        }
        match (&self.start, &self.end) {
            (Some(a), Some(b)) => Some(cores_used(a, b, ticks_per_s)),
            _ => None,
        }
    }
}

/// Average cores used between two samples.
pub fn cores_used(before: &CpuSample, after: &CpuSample, ticks_per_s: u64) -> f64 {
    let ticks = (after.ticks.utime_ticks + after.ticks.stime_ticks)
        .saturating_sub(before.ticks.utime_ticks + before.ticks.stime_ticks);
    let wall_s = after.at.saturating_duration_since(before.at).as_secs_f64();
    if wall_s <= 0.0 {
        return 0.0;
    }
    ticks as f64 / ticks_per_s as f64 / wall_s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let line = "4242 (tern (shard) 0) S 1 4242 4242 0 -1 4194560 1234 0 0 0 731 209 0 0 20 0 3 0 99 0 0";
        assert_eq!(
            parse_stat(line),
            Some(CpuTicks {
                utime_ticks: 731,
                stime_ticks: 209
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
    }

    #[test]
    fn our_own_process_can_be_sampled() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.ticks.utime_ticks + s.ticks.stime_ticks < u64::MAX);
    }

    #[test]
    fn cores_used_is_ticks_over_wall_time() {
        let at = Instant::now();
        let before = CpuSample {
            ticks: CpuTicks {
                utime_ticks: 100,
                stime_ticks: 0,
            },
            at,
        };
        let after = CpuSample {
            ticks: CpuTicks {
                utime_ticks: 250,
                stime_ticks: 50,
            },
            at: at + std::time::Duration::from_secs(2),
        };
        assert!((cores_used(&before, &after, 100) - 1.0).abs() < 1e-9);
    }
}
