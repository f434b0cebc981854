//! Durations psmon keeps about itself (saving state, writing the health
//! queue), said when it stops: what `cargo xtask bench` reads.

use std::time::Duration;

/// Up to this many samples are kept; later ones replace earlier ones.
const KEEP: usize = 100_000;

/// Durations in ns, or sizes added as [`Samples::add_value`].
#[derive(Clone, Debug, Default)]
pub struct Samples {
    ns: Vec<u64>,
    count: u64,
}

impl Samples {
    /// Adds one sample.
    pub fn add(&mut self, d: Duration) {
        self.add_value(d.as_nanos().min(u64::MAX as u128) as u64);
    }

    /// A sample that is not a duration (a size in bytes).
    pub fn add_value(&mut self, v: u64) {
        if self.ns.len() < KEEP {
            self.ns.push(v);
        } else {
            self.ns[(self.count % KEEP as u64) as usize] = v;
        }
        self.count += 1;
    }

    /// The `p`th percentile (0–100) of samples added as values; 0
    /// without samples.
    pub fn percentile(&self, p: f64) -> u64 {
        (self.percentile_us(p) * 1e3).round() as u64
    }

    /// How many samples.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `p`th percentile (0–100) in µs; 0 without samples.
    pub fn percentile_us(&self, p: f64) -> f64 {
        if self.ns.is_empty() {
            return 0.0;
        }
        let mut sorted = self.ns.clone();
        sorted.sort_unstable();
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1e3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut s = Samples::default();
        assert_eq!(s.percentile_us(99.0), 0.0);
        for us in 1..=100 {
            s.add(Duration::from_micros(us));
        }
        assert_eq!(s.count(), 100);
        assert_eq!(s.percentile_us(50.0), 50.0);
        assert_eq!(s.percentile_us(99.0), 99.0);
    }
}
