//! Migration signals in, announce decisions out.
//!
//! Signals: a primary plugged back after an unplug, `IFLA_EVENT_NOTIFY_PEERS`
//! on the standby or the failover master, a jump of the wall clock against
//! the monotonic clock while the agent slept (the VM was paused), the
//! standby's carrier regained after a loss (its far end moved), and a
//! manual `vfailover announce`. A [`MigrationWindow`] groups one
//! migration's signals. On a signal the [`policy`](AnnouncePolicy)
//! decides whether the agent announces; an [`AnnounceSchedule`] then spaces
//! the rounds the way QEMU's self-announce does (net/announce.c): a first
//! round at once, then after `initial`, `initial + step`, ... capped at
//! `max`, `rounds` rounds in all.

use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;

pub use crate::config::AnnounceTiming;

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

/// When the agent announces the stack's addresses after a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnnouncePolicy {
    /// Only when the standby lacks `VIRTIO_NET_F_GUEST_ANNOUNCE`.
    #[default]
    Auto,
    Always,
    Never,
}

impl AnnouncePolicy {
    /// The name used in the file, in status and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            AnnouncePolicy::Auto => "auto",
            AnnouncePolicy::Always => "always",
            AnnouncePolicy::Never => "never",
        }
    }

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

/// Signals this close to the first one belong to the same migration.
pub const MIGRATION_WINDOW: Duration = Duration::from_secs(10);

/// What a signal is to the migrations seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The first signal of a migration: count it, announce.
    NewMigration,
    /// A new kind of signal within the migration's window (the primary
    /// back after the standby's carrier came back on the new host): not
    /// another migration, but the path changed, so announce again.
    NewStage,
    /// A kind already seen in this window (QEMU raises NOTIFY_PEERS at
    /// each of its announce rounds): nothing to do.
    Repeat,
}

/// Groups one migration's signals: the first opens a window of
/// [`MIGRATION_WINDOW`]; within it each kind of signal counts once.
/// `vfailover announce` is no migration and never goes through here.
#[derive(Debug, Clone, Default)]
pub struct MigrationWindow {
    /// The window's first signal, and when.
    first: Option<(SystemTime, Signal)>,
    kinds: Vec<std::mem::Discriminant<Signal>>,
}

impl MigrationWindow {
    pub fn note(&mut self, signal: Signal, now: SystemTime) -> Seen {
        let kind = std::mem::discriminant(&signal);
        let open = self.first.is_some_and(|(at, _)| {
            now.duration_since(at)
                .is_ok_and(|age| age < MIGRATION_WINDOW)
        });
        if !open {
            self.first = Some((now, signal));
            self.kinds = vec![kind];
            Seen::NewMigration
        } else if self.kinds.contains(&kind) {
            Seen::Repeat
        } else {
            self.kinds.push(kind);
            Seen::NewStage
        }
    }

    /// The last migration's first signal, and when.
    pub fn last(&self) -> Option<(SystemTime, Signal)> {
        self.first
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
    fn one_migration_many_signals() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut w = MigrationWindow::default();
        assert_eq!(w.last(), None);
        // The standby's far end moved: a migration.
        assert_eq!(w.note(Signal::StandbyCarrier, at(0)), Seen::NewMigration);
        // QEMU repeats NOTIFY_PEERS; the kind counts once.
        assert_eq!(w.note(Signal::NotifyPeers, at(50)), Seen::NewStage);
        assert_eq!(w.note(Signal::NotifyPeers, at(200)), Seen::Repeat);
        // The primary is back: same migration, a new stage.
        assert_eq!(w.note(Signal::PrimaryReplugged, at(1500)), Seen::NewStage);
        assert_eq!(w.note(Signal::PrimaryReplugged, at(9999)), Seen::Repeat);
        // A clock jump's size does not make it another kind.
        assert_eq!(
            w.note(Signal::ClockJump(Duration::from_secs(3)), at(100)),
            Seen::NewStage
        );
        assert_eq!(
            w.note(Signal::ClockJump(Duration::from_secs(9)), at(200)),
            Seen::Repeat
        );
        assert_eq!(w.last(), Some((at(0), Signal::StandbyCarrier)));
        // 10 s after the first signal, the next migration.
        assert_eq!(
            w.note(Signal::PrimaryReplugged, at(10_000)),
            Seen::NewMigration
        );
        assert_eq!(w.last(), Some((at(10_000), Signal::PrimaryReplugged)));
        assert_eq!(w.note(Signal::StandbyCarrier, at(10_001)), Seen::NewStage);
    }

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
