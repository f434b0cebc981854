//! Time as the state machine sees it: a point on the system's monotonic
//! clock (`CLOCK_MONOTONIC`, nanoseconds since an arbitrary start at boot).
//! Unlike `std::time::Instant` it is plain data: it can be compared, added
//! to, serialised, and made up by tests. Only the shell reads the clock.

use std::{
    ops::{Add, Sub},
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`): the unit of the start
/// and CPU times `/proc` gives.
pub fn ticks_per_second() -> u64 {
    procfs::ticks_per_second().max(1)
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
/// A moment of `CLOCK_MONOTONIC`, in nanoseconds: the monitor's time.
pub struct Time(u64);

impl Time {
    /// Now, on the monotonic clock (the one `Instant` and tokio use).
    pub fn now() -> Time {
        let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .expect("CLOCK_MONOTONIC is always available on Linux");
        Time(ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64)
    }

    /// From nanoseconds of `CLOCK_MONOTONIC`.
    pub const fn from_nanos(ns: u64) -> Time {
        Time(ns)
    }

    /// From seconds of `CLOCK_MONOTONIC`.
    pub const fn from_secs(secs: u64) -> Time {
        Time(secs * 1_000_000_000)
    }

    /// Nanoseconds of `CLOCK_MONOTONIC`.
    pub fn as_nanos(self) -> u64 {
        self.0
    }

    /// How long after `earlier` this is; zero when it is not after it.
    pub fn saturating_duration_since(self, earlier: Time) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        Time(
            self.0
                .saturating_add(d.as_nanos().min(u64::MAX as u128) as u64),
        )
    }
}

impl Sub<Duration> for Time {
    type Output = Time;
    fn sub(self, d: Duration) -> Time {
        Time(
            self.0
                .saturating_sub(d.as_nanos().min(u64::MAX as u128) as u64),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_clock_instant_uses() {
        let a = Time::now();
        let i = std::time::Instant::now();
        std::thread::sleep(Duration::from_millis(5));
        let b = Time::now();
        let gap = b.saturating_duration_since(a);
        assert!(gap >= Duration::from_millis(5), "{gap:?}");
        assert!(gap < i.elapsed() + Duration::from_millis(5), "{gap:?}");
        assert_eq!(a.saturating_duration_since(b), Duration::ZERO);
        assert_eq!(
            (a + Duration::from_secs(1)).saturating_duration_since(a),
            Duration::from_secs(1)
        );
    }
}
