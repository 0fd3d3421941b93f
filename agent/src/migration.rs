//! Migration signals in, announce decisions out.
//!
//! Signals: a primary plugged back after an unplug, `IFLA_EVENT_NOTIFY_PEERS`
//! on the standby or the failover master, a jump of the wall clock against
//! the monotonic clock while the agent slept (the VM was paused), the
//! standby's carrier regained after a loss (its far end moved), and a
//! manual `vfailover announce`. On a signal the [`policy`](AnnouncePolicy)
//! decides whether the agent announces; an [`AnnounceSchedule`] then spaces
//! the rounds the way QEMU's self-announce does (net/announce.c): a first
//! round at once, then after `initial`, `initial + step`, ... capped at
//! `max`, `rounds` rounds in all.

use std::time::{Duration, Instant, SystemTime};

pub use crate::config::{AnnouncePolicy, AnnounceTiming};
/// A wall-clock step beyond this, against the monotonic clock, means the
/// VM was paused (or the clock was set): the guest may have moved.
const CLOCK_JUMP: Duration = Duration::from_secs(2);

/// What told us the guest may have moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// A primary came back to a pair that had lost one.
    PrimaryReplugged,
    /// `IFLA_EVENT_NOTIFY_PEERS` on the standby or failover master.
    NotifyPeers,
    /// The standby's carrier came back after a loss.
    StandbyCarrier,
    /// The wall clock moved this much more than the monotonic clock.
    ClockJump(Duration),
    /// `vfailover announce`.
    Manual,
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Signal::PrimaryReplugged => f.write_str("primary-replugged"),
            Signal::NotifyPeers => f.write_str("notify-peers"),
            Signal::StandbyCarrier => f.write_str("standby-carrier"),
            Signal::ClockJump(by) => write!(f, "clock-jump({:.1}s)", by.as_secs_f64()),
            Signal::Manual => f.write_str("manual"),
        }
    }
}

impl AnnouncePolicy {
    /// Whether to announce on `signal`, given what the standby's features
    /// say about GUEST_ANNOUNCE (`None`: unknown). A manual request is
    /// always honoured: the policy is about what the agent does by itself.
    /// With GUEST_ANNOUNCE the kernel's own announcement still never covers
    /// the stack's addresses, but QEMU then announces the MAC, which is
    /// what switches need; `always` also covers peers' caches.
    pub fn announces(self, signal: Signal, guest_announce: Option<bool>) -> bool {
        match (signal, self) {
            (Signal::Manual, _) => true,
            (_, AnnouncePolicy::Always) => true,
            (_, AnnouncePolicy::Never) => false,
            (_, AnnouncePolicy::Auto) => guest_announce != Some(true),
        }
    }
}

/// The rounds of one announcement still to send.
#[derive(Debug, Clone)]
pub struct AnnounceSchedule {
    timing: AnnounceTiming,
    next: Instant,
    done: u32,
}

impl AnnounceSchedule {
    /// A schedule whose first round is due at `now`.
    pub fn start(timing: AnnounceTiming, now: Instant) -> Self {
        AnnounceSchedule {
            timing,
            next: now,
            done: 0,
        }
    }

    /// When the next round is due; `None` once all rounds went out.
    pub fn due(&self) -> Option<Instant> {
        (self.done < self.timing.rounds).then_some(self.next)
    }

    /// If a round is due at `now`, count it and return true.
    pub fn fire(&mut self, now: Instant) -> bool {
        match self.due() {
            Some(at) if at <= now => {
                let gap = self.timing.initial + self.timing.step * self.done;
                self.next = now + gap.min(self.timing.max);
                self.done += 1;
                true
            }
            _ => false,
        }
    }
}

/// Watches the wall clock against the monotonic clock. A paused VM's
/// monotonic clock stands still while the wall clock is stepped forward on
/// resume (NTP, qemu-guest-agent): the difference is a migration hint.
#[derive(Debug, Clone)]
pub struct ClockWatch {
    wall: SystemTime,
    mono: Instant,
}

impl ClockWatch {
    pub fn new() -> Self {
        ClockWatch {
            wall: SystemTime::now(),
            mono: Instant::now(),
        }
    }

    /// Compare both clocks with the last check; returns the jump if the
    /// wall clock moved more than [`CLOCK_JUMP`] beyond the monotonic one.
    pub fn check(&mut self) -> Option<Duration> {
        self.check_at(SystemTime::now(), Instant::now())
    }

    fn check_at(&mut self, wall: SystemTime, mono: Instant) -> Option<Duration> {
        let wall_elapsed = wall.duration_since(self.wall).unwrap_or_default();
        let mono_elapsed = mono.duration_since(self.mono);
        self.wall = wall;
        self.mono = mono;
        let jump = wall_elapsed.saturating_sub(mono_elapsed);
        (jump > CLOCK_JUMP).then_some(jump)
    }
}

impl Default for ClockWatch {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_announces_unless_the_device_does() {
        let p = AnnouncePolicy::Auto;
        assert!(p.announces(Signal::PrimaryReplugged, Some(false)));
        assert!(p.announces(Signal::NotifyPeers, None));
        assert!(!p.announces(Signal::PrimaryReplugged, Some(true)));
        assert!(p.announces(Signal::Manual, Some(true)));
        assert!(!AnnouncePolicy::Never.announces(Signal::NotifyPeers, Some(false)));
        assert!(AnnouncePolicy::Never.announces(Signal::Manual, Some(false)));
        assert!(AnnouncePolicy::Always.announces(Signal::ClockJump(CLOCK_JUMP), Some(true)));
    }

    #[test]
    fn schedule_follows_qemu() {
        let t0 = Instant::now();
        let mut s = AnnounceSchedule::start(AnnounceTiming::default(), t0);
        let mut fired = Vec::new();
        let mut now = t0;
        while let Some(due) = s.due() {
            now = now.max(due);
            assert!(s.fire(now));
            fired.push((now - t0).as_millis());
        }
        assert_eq!(fired, vec![0, 50, 200, 450, 800]);
        assert!(!s.fire(now + Duration::from_secs(10)));
    }

    #[test]
    fn schedule_caps_at_max() {
        let timing = AnnounceTiming {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(150),
            rounds: 4,
            step: Duration::from_millis(100),
        };
        let t0 = Instant::now();
        let mut s = AnnounceSchedule::start(timing, t0);
        assert!(s.fire(t0));
        assert!(!s.fire(t0 + Duration::from_millis(99)));
        let mut gaps = Vec::new();
        let mut last = t0;
        while let Some(due) = s.due() {
            assert!(s.fire(due));
            gaps.push((due - last).as_millis());
            last = due;
        }
        assert_eq!(gaps, vec![100, 150, 150]);
    }

    #[test]
    fn clock_jump_is_wall_minus_monotonic() {
        let mut w = ClockWatch::new();
        let (wall, mono) = (w.wall, w.mono);
        let later = mono + Duration::from_secs(1);
        assert_eq!(w.check_at(wall + Duration::from_secs(1), later), None);
        let jumped = w.check_at(
            wall + Duration::from_secs(31),
            later + Duration::from_secs(1),
        );
        assert_eq!(jumped, Some(Duration::from_secs(29)));
        // A wall clock set backwards is no migration.
        assert_eq!(w.check_at(wall, later + Duration::from_secs(2)), None);
    }
}
