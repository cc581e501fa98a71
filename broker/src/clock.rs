//! The broker's wall clock, behind a trait so that a simulation (or a test) can replace it.
//!
//! Everything that stamps or compares wall-clock milliseconds (LogAppendTime, retention,
//! group session deadlines, offset expiry) asks the shard's clock rather than the system, so
//! the I/O-free state machines it feeds can be driven by a simulated clock instead.
//! Monotonic deadlines for waits (`Instant`) stay with the runtime's timers.

use std::cell::Cell;

/// Milliseconds since the Unix epoch, as Kafka stamps records.
pub trait Clock {
    fn now_ms(&self) -> i64;
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        system_now_ms()
    }
}

/// The system's wall clock in milliseconds (0 if it reads before 1970).
pub fn system_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Milliseconds on the monotonic clock since the process first asked: for deadlines that a
/// step of the wall clock must not move (connection deadlines).
pub fn monotonic_ms() -> i64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as i64
}

/// A clock that moves only when told to (tests and simulations).
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: Cell<i64>,
}

impl ManualClock {
    pub fn new(now_ms: i64) -> ManualClock {
        ManualClock {
            now_ms: Cell::new(now_ms),
        }
    }

    pub fn advance_ms(&self, ms: i64) {
        assert!(ms >= 0, "a clock never goes back");
        self.now_ms.set(self.now_ms.get() + ms);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now_ms.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_forward_and_only_when_told() {
        let clock = ManualClock::new(1_000);
        assert_eq!(clock.now_ms(), 1_000);
        clock.advance_ms(250);
        assert_eq!(clock.now_ms(), 1_250);
        assert!(SystemClock.now_ms() > 1_600_000_000_000);
    }
}
