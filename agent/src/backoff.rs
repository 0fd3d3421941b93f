//! When to try again after a failure: the first retry after `first`, each
//! next one twice as late, never more than `max` apart.
//!
//! The daemon retries opening a primary's fast path this way: whatever
//! refused it (another XDP program on the VF, a queue still held by an
//! earlier socket) may go away, and nothing tells us when — the kernel
//! sends no rtnetlink event when an XDP program is detached.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    wait: Duration,
    due: Option<Instant>,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            wait: first,
            due: None,
        }
    }

    /// A failure at `now`: schedules the next try and returns how far off
    /// it is.
    pub fn failed(&mut self, now: Instant) -> Duration {
        let wait = self.wait;
        self.due = Some(now + wait);
        self.wait = (wait * 2).min(self.max);
        wait
    }

    /// Success, or a new start: no try pending, the next failure waits
    /// `first` again.
    pub fn reset(&mut self) {
        self.wait = self.first;
        self.due = None;
    }

    /// When the next try is due, if one is pending.
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// Whether the pending try is due at `now`; it is then no longer
    /// pending (its outcome calls [`failed`](Self::failed) or
    /// [`reset`](Self::reset)).
    pub fn take_due(&mut self, now: Instant) -> bool {
        self.due.take_if(|due| *due <= now).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_max_and_starts_over_after_reset() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut b = Backoff::new(s(1), s(30));
        assert_eq!(b.due(), None);
        assert!(!b.take_due(t0));
        let waits: Vec<Duration> = (0..7).map(|_| b.failed(t0)).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30].map(s));
        assert_eq!(b.due(), Some(t0 + s(30)));
        assert!(!b.take_due(t0 + s(29)));
        assert!(b.take_due(t0 + s(30)));
        assert!(!b.take_due(t0 + s(31)), "taken once");
        b.reset();
        assert_eq!(b.failed(t0), s(1));
    }
}
