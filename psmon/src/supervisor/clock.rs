//! The supervisor's clock: the monitor's [`Time`] read through tokio's.
//!
//! In a running psmon both are `CLOCK_MONOTONIC`, so this is
//! [`Time::now`] by another road. In a test that pauses tokio's time, the
//! monitor's deadlines, the loop's sleeps and the commands' time limits
//! then move together, so a 5 s grace passes in no time and in order.

use std::time::Duration;

use crate::clock::Time;

/// Both clocks read at one moment; each later reading is measured from it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Clock {
    time: Time,
    tokio: tokio::time::Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            tokio: tokio::time::Instant::now(),
            time: Time::now(),
        }
    }

    pub fn now(&self) -> Time {
        self.time + self.tokio.elapsed()
    }

    /// The tokio instant of monitor time `at`; one before this clock was
    /// made is now.
    pub fn tokio_instant(&self, at: Time) -> tokio::time::Instant {
        self.tokio + at.saturating_duration_since(self.time)
    }

    /// How long ago monitor time `at` was.
    pub fn since(&self, at: Time) -> Duration {
        self.now().saturating_duration_since(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paused_time_moves_the_monitors_time() {
        let clock = Clock::new();
        let before = clock.now();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            clock.now().saturating_duration_since(before),
            Duration::from_secs(5)
        );
        let at = before + Duration::from_secs(7);
        assert_eq!(
            clock.tokio_instant(at) - tokio::time::Instant::now(),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn outside_a_test_it_is_the_monotonic_clock() {
        let clock = Clock::new();
        let (a, b, c) = (Time::now(), clock.now(), Time::now());
        // Up to the moment between the two readings that made the clock.
        let close = Duration::from_millis(1);
        assert!(a.saturating_duration_since(b) < close, "{a:?} {b:?}");
        assert!(b.saturating_duration_since(c) < close, "{b:?} {c:?}");
    }
}
