//! Capped exponential backoff with jitter, for shippers retrying a sink.
//!
//! The worker ([`super::worker`]) asks for the next delay after each failed
//! attempt and resets after a success. Delays double from `initial` up to
//! `max` and are jittered to 50–100 % of the nominal value, so several
//! Custos nodes do not hammer a recovering sink in lockstep. There is no
//! attempt limit: audit is never dropped, the backlog waits on disk.

use std::time::Duration;

use rand::Rng;

/// The delay schedule of one shipper.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
    attempts: u64,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        let initial = initial.max(Duration::from_millis(1));
        Backoff {
            initial,
            max: max.max(initial),
            current: initial,
            attempts: 0,
        }
    }

    /// The delay before the next attempt; doubles the following one.
    pub fn next_delay(&mut self) -> Duration {
        let nominal = self.current;
        self.current = (self.current * 2).min(self.max);
        self.attempts += 1;
        let factor = rand::thread_rng().gen_range(0.5..=1.0);
        nominal.mul_f64(factor)
    }

    /// Failed attempts since the last success.
    pub fn attempts(&self) -> u64 {
        self.attempts
    }

    /// True once the delays reached the cap.
    pub fn at_cap(&self) -> bool {
        self.current >= self.max
    }

    /// Start over after a success.
    pub fn reset(&mut self) {
        self.current = self.initial;
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let d: Vec<Duration> = (0..5).map(|_| b.next_delay()).collect();
        let caps = [100, 200, 400, 400, 400];
        for (got, cap) in d.iter().zip(caps) {
            let cap = Duration::from_millis(cap);
            assert!(*got <= cap && *got >= cap / 2, "{got:?} vs {cap:?}");
        }
        assert!(b.at_cap());
        assert_eq!(b.attempts(), 5);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
