//! What a `vfailover lab` run measured, and its rendering as text: time on
//! each path, the switches, the probes per phase, the bytes verified, the
//! announce frames the peer saw and the migrations the daemon detected.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use vfailover_netstack::mac::MacAddr;

use crate::capture::Announce;
use crate::lab::{STACK_V4, STACK_V6};
use crate::scenario::{longest_stall, Stall};
use crate::status::{PairStatus, SwitchStatus};

use super::{PROBE_INTERVAL, RTO_POLL};

/// TCP stalls this long are listed one by one.
const LONG_STALL: Duration = Duration::from_millis(100);

/// The steps of a run, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Start,
    Unplug,
    Migrate,
    Replug,
    End,
}

impl Mark {
    /// The name in tables and on the plot.
    pub fn name(self) -> &'static str {
        match self {
            Mark::Start => "start",
            Mark::Unplug => "unplug",
            Mark::Migrate => "migrate",
            Mark::Replug => "replug",
            Mark::End => "end",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Mark::Start => "stream started",
            Mark::Unplug => "unplug: vf0 deleted in the guest",
            Mark::Migrate => "migrate: virtio0's far end moved to the destination host",
            Mark::Replug => "replug: a new vf0 plugged in on the destination host",
            Mark::End => "stream and capture done",
        }
    }

    /// The phase that begins at this mark.
    fn phase(self) -> &'static str {
        match self {
            Mark::Start => "before unplug",
            Mark::Unplug => "unplugged",
            Mark::Migrate => "migrated",
            Mark::Replug => "replugged",
            Mark::End => "after",
        }
    }
}

/// The daemon's counters at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Seconds since the run's start.
    pub t: f64,
    pub path: String,
    /// RX + TX bytes on each path since the daemon started.
    pub primary_bytes: u64,
    pub standby_bytes: u64,
}

/// One UDP echo probe of the peer.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pub sent: Instant,
    /// `None`: lost (no answer within the prober's timeout).
    pub rtt: Option<Duration>,
}

/// Everything a run measured.
pub struct Report {
    pub bytes: u64,
    pub duration: Duration,
    pub sent_sha256: String,
    pub echoed_sha256: String,
    /// Where the peer waited for echoed bytes with some outstanding.
    pub stalls: Vec<Stall>,
    pub guest_announce: bool,
    pub mac: MacAddr,
    pub t0: Instant,
    pub t0_unix: f64,
    pub samples: Vec<Sample>,
    pub marks: Vec<(Mark, Instant)>,
    /// When the peer's TCP took a retransmission timeout.
    pub peer_rtos: Vec<Instant>,
    /// Every switch the daemon reported, oldest first.
    pub switches: Vec<SwitchStatus>,
    /// Unix seconds: `ip link del vf0` started; the guest's rtnetlink
    /// listener heard of it; `vf0` was being plugged in again.
    pub unplug_at: f64,
    pub unplug_event_at: Option<f64>,
    pub replug_at: f64,
    pub probes: Vec<Probe>,
    pub frames: Vec<(Instant, Announce)>,
    /// The pair's status at the end.
    pub fin: PairStatus,
}

/// Probe figures of one phase (or all).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct ProbeStats {
    sent: usize,
    lost: usize,
    /// The longest time without an answered probe, in seconds.
    longest_gap: f64,
}

impl Report {
    pub fn byte_exact(&self) -> bool {
        self.sent_sha256 == self.echoed_sha256
    }

    /// Seconds since the run's start of a mark.
    pub fn mark_t(&self, mark: Mark) -> Option<f64> {
        self.marks
            .iter()
            .find(|(m, _)| *m == mark)
            .map(|(_, at)| self.rel(*at))
    }

    /// From `mark` to the next mark (or an hour on, for the last one).
    fn phase(&self, mark: Mark) -> Option<(Instant, Instant)> {
        let at = self.marks.iter().position(|(m, _)| *m == mark)?;
        let from = self.marks[at].1;
        let to = self
            .marks
            .get(at + 1)
            .map_or(from + Duration::from_secs(3600), |m| m.1);
        Some((from, to))
    }

    /// The longest TCP stall overlapping the phase that `mark` begins.
    pub fn stall_after(&self, mark: Mark) -> Option<Duration> {
        let (from, to) = self.phase(mark)?;
        longest_stall(&self.stalls, from, to)
    }

    /// The peer's TCP retransmission timeouts in the phase that `mark`
    /// begins, see [`rtos_in_phase`].
    pub fn peer_rtos_after(&self, mark: Mark) -> Option<usize> {
        let (from, to) = self.phase(mark)?;
        Some(rtos_in_phase(&self.peer_rtos, &self.stalls, from, to))
    }

    pub(super) fn rel(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.t0).as_secs_f64()
    }

    /// The report as printed at the end of the run.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "\n== vfailover lab report ==");
        let mib = self.bytes as f64 / f64::from(1 << 20);
        let _ = writeln!(
            out,
            "TCP echo: {mib:.0} MiB in {:.2} s, sha256 sent {} echoed {} ({})",
            self.duration.as_secs_f64(),
            short(&self.sent_sha256),
            short(&self.echoed_sha256),
            if self.byte_exact() {
                "byte-exact"
            } else {
                "MISMATCH"
            }
        );
        self.render_paths(&mut out);
        self.render_switches(&mut out);
        self.render_phases(&mut out);
        self.render_announces(&mut out);
        let migration = self
            .fin
            .last_migration
            .as_ref()
            .map_or(String::new(), |m| format!(" (last signal: {})", m.signal));
        let _ = writeln!(
            out,
            "migrations detected: {}{migration}",
            self.fin.migrations_detected
        );
        let r = &self.fin.resend;
        let _ = writeln!(
            out,
            "TCP resend (the daemon's count): {} rounds, {} segments, {} ACKs",
            r.rounds, r.segments, r.acks
        );
        out
    }

    fn render_paths(&self, out: &mut String) {
        let (primary, standby) = self.time_on_paths();
        let _ = writeln!(
            out,
            "time on path: primary {primary:.2} s, standby {standby:.2} s"
        );
    }

    /// Seconds on each path between the start and the end marks, from the
    /// daemon's own switch times.
    fn time_on_paths(&self) -> (f64, f64) {
        let (Some(start), Some(end)) = (self.mark_t(Mark::Start), self.mark_t(Mark::End)) else {
            return (0.0, 0.0);
        };
        let first = self.samples.first().map_or("primary", |s| s.path.as_str());
        let mut path = first.to_owned();
        let mut since = start;
        let (mut primary, mut standby) = (0.0, 0.0);
        let switches = self
            .switches
            .iter()
            .map(|s| ((s.at_unix - self.t0_unix).clamp(start, end), s.to.clone()));
        for (at, to) in switches.chain(std::iter::once((end, String::new()))) {
            match path.as_str() {
                "primary" => primary += at - since,
                "standby" => standby += at - since,
                _ => {}
            }
            (path, since) = (to, at);
        }
        (primary, standby)
    }

    fn render_switches(&self, out: &mut String) {
        // The daemon's own start-up switches (none → standby → primary)
        // happened before the run and are not part of it.
        let during: Vec<&SwitchStatus> = self
            .switches
            .iter()
            .filter(|s| s.at_unix >= self.t0_unix)
            .collect();
        let _ = writeln!(
            out,
            "switches during the run: {} (s from the start; the daemon counts {} since it started)",
            during.len(),
            self.fin.switches
        );
        for s in during {
            let t = s.at_unix - self.t0_unix;
            let mut line = format!("  {t:>7.3} s  {} → {} ({})", s.from, s.to, s.cause);
            if s.to == "standby" {
                let _ = write!(
                    line,
                    "; `ip link del vf0` → switch {:.1} ms",
                    (s.at_unix - self.unplug_at) * 1e3
                );
                if let Some(event) = self.unplug_event_at {
                    // A second rtnetlink listener, ours, in the guest: how
                    // long the kernel took to tell anyone.
                    let _ = write!(
                        line,
                        " (our own rtnetlink listener heard it after {:.1} ms)",
                        (event - self.unplug_at) * 1e3
                    );
                }
            } else if s.to == "primary" && s.at_unix >= self.replug_at {
                let _ = write!(
                    line,
                    "; replug → switch {:.1} ms (new veth, link settle, AF_XDP bind)",
                    (s.at_unix - self.replug_at) * 1e3
                );
            }
            if let Some(us) = s.first_tx_after_us {
                let _ = write!(line, "; first frame on it {:.2} ms later", us as f64 / 1e3);
            }
            let _ = writeln!(out, "{line}");
        }
    }

    fn render_phases(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "per phase (UDP echo probe every {} ms; gap: longest time between answers around lost probes; \
             peer RTOs: the peer's TCP retransmission timeouts, in the phase or in a stall crossing its edge, which no guest can bring forward; \
             TCP stall: longest time the peer waited for echoed bytes it had sent):",
            PROBE_INTERVAL.as_millis()
        );
        let _ = writeln!(
            out,
            "  {:<14} {:>7} {:>11} {:>11} {:>7} {:>5} {:>12} {:>9} {:>10}",
            "phase",
            "time",
            "primary MB",
            "standby MB",
            "probes",
            "lost",
            "longest gap",
            "peer RTOs",
            "TCP stall"
        );
        let phases = self.phase_probes();
        for (i, pair) in self.marks.windows(2).enumerate() {
            let ((mark, from), (_, to)) = (pair[0], pair[1]);
            let (p, s) = self.bytes_between(self.rel(from), self.rel(to));
            let probes = phases.get(i).copied().unwrap_or_default();
            let stall = self.stall_after(mark).map_or("-".to_owned(), |d| {
                format!("{:.1} ms", d.as_secs_f64() * 1e3)
            });
            let rtos = self
                .peer_rtos_after(mark)
                .map_or("?".to_owned(), |n| n.to_string());
            let _ = writeln!(
                out,
                "  {:<14} {:>5.2} s {:>11.1} {:>11.1} {:>7} {:>5} {:>12} {:>9} {:>10}",
                mark.phase(),
                (to - from).as_secs_f64(),
                p as f64 / 1e6,
                s as f64 / 1e6,
                probes.sent,
                probes.lost,
                gap(probes.longest_gap),
                rtos,
                stall
            );
        }
        let long: Vec<String> = self
            .stalls
            .iter()
            .filter(|s| s.length() >= LONG_STALL)
            .map(|s| {
                format!(
                    "{:.3} s for {:.1} ms",
                    self.rel(s.from),
                    s.length().as_secs_f64() * 1e3
                )
            })
            .collect();
        if !long.is_empty() {
            let _ = writeln!(
                out,
                "  TCP stalls of {} ms or more: at {}",
                LONG_STALL.as_millis(),
                long.join(", ")
            );
        }
        let all = probe_stats(&self.probes, |_| 0, 1)[0];
        let _ = writeln!(
            out,
            "  {:<14} {:>7} {:>11} {:>11} {:>7} {:>5} {:>12}",
            "all",
            "",
            "",
            "",
            all.sent,
            all.lost,
            gap(all.longest_gap)
        );
    }

    /// Probe figures per phase (between consecutive marks).
    fn phase_probes(&self) -> Vec<ProbeStats> {
        let bounds: Vec<Instant> = self.marks.iter().skip(1).map(|(_, at)| *at).collect();
        let phases = self.marks.len().saturating_sub(1).max(1);
        probe_stats(
            &self.probes,
            |sent| {
                bounds
                    .iter()
                    .position(|b| sent < *b)
                    .unwrap_or(phases - 1)
                    .min(phases - 1)
            },
            phases,
        )
    }

    /// RX + TX bytes on (primary, standby) between two run times.
    fn bytes_between(&self, from: f64, to: f64) -> (u64, u64) {
        let at = |t: f64| {
            self.samples
                .iter()
                .rev()
                .find(|s| s.t <= t)
                .or(self.samples.first())
                .map_or((0, 0), |s| (s.primary_bytes, s.standby_bytes))
        };
        let (a, b) = (at(from), at(to));
        (b.0.saturating_sub(a.0), b.1.saturating_sub(a.1))
    }

    fn render_announces(&self, out: &mut String) {
        let migrate = self
            .marks
            .iter()
            .find(|(m, _)| *m == Mark::Migrate)
            .map_or(self.t0, |(_, at)| *at);
        let ms = |at: Instant| {
            if at >= migrate {
                (at - migrate).as_secs_f64() * 1e3
            } else {
                -((migrate - at).as_secs_f64() * 1e3)
            }
        };
        let _ = writeln!(
            out,
            "announce frames seen by the peer (ms from the migration; guest announce {}):",
            if self.guest_announce { "on" } else { "off" }
        );
        let mut kinds: Vec<(String, Vec<f64>)> = Vec::new();
        for (at, frame) in &self.frames {
            let name = match frame {
                Announce::GratuitousArp { ip, .. } => format!("gratuitous ARP {ip}"),
                Announce::UnsolicitedNa { ip, .. } => format!("unsolicited NA {ip}"),
                Announce::Rarp { .. } => "RARP".to_owned(),
            };
            match kinds.iter_mut().find(|(k, _)| *k == name) {
                Some((_, times)) => times.push(ms(*at)),
                None => kinds.push((name, vec![ms(*at)])),
            }
        }
        if kinds.is_empty() {
            let _ = writeln!(out, "  none");
        }
        for (name, times) in &kinds {
            let times: Vec<String> = times.iter().map(|t| format!("{t:+.0}")).collect();
            let _ = writeln!(out, "  {name}: {} at {}", times.len(), times.join(", "));
        }
        let _ = writeln!(
            out,
            "  announce frames from the agent: {} (the agent counted {} sent)",
            self.agent_frames(),
            self.fin.announces_sent
        );
    }

    /// Captured GARPs and NAs for the stack's addresses from the pair's MAC.
    fn agent_frames(&self) -> usize {
        let ours = |mac: &MacAddr, ip: IpAddr| {
            *mac == self.mac && (ip == IpAddr::V4(STACK_V4) || ip == IpAddr::V6(STACK_V6))
        };
        self.frames
            .iter()
            .filter(|(_, f)| match f {
                Announce::GratuitousArp { mac, ip } => ours(mac, (*ip).into()),
                Announce::UnsolicitedNa { mac, ip } => ours(mac, (*ip).into()),
                Announce::Rarp { .. } => false,
            })
            .count()
    }

    /// (t, primary MB/s, standby MB/s) over windows of about `window`
    /// seconds, for the plot.
    pub fn rates(&self, window: f64) -> Vec<(f64, f64, f64)> {
        let mut points = Vec::new();
        let Some(mut anchor) = self.samples.first() else {
            return points;
        };
        points.push((anchor.t, 0.0, 0.0));
        for s in &self.samples {
            let dt = s.t - anchor.t;
            if dt >= window {
                let (p, st) = rate(anchor, s);
                points.push((s.t, p, st));
                anchor = s;
            }
        }
        points
    }
}

/// MB/s on (primary, standby) between two samples.
fn rate(a: &Sample, b: &Sample) -> (f64, f64) {
    let dt = (b.t - a.t).max(1e-3);
    (
        b.primary_bytes.saturating_sub(a.primary_bytes) as f64 / dt / 1e6,
        b.standby_bytes.saturating_sub(a.standby_bytes) as f64 / dt / 1e6,
    )
}

/// MB/s on (primary, standby) over the last `window` seconds of samples.
pub fn rates_at(samples: &[Sample], window: f64) -> (f64, f64) {
    let Some(last) = samples.last() else {
        return (0.0, 0.0);
    };
    let first = samples
        .iter()
        .rev()
        .find(|s| last.t - s.t >= window)
        .or(samples.first())
        .expect("not empty");
    rate(first, last)
}

/// Probe figures for `phases` phases; `phase_of` maps a send time to its
/// phase. A gap is the time between the answered probes around a run of
/// lost ones (or from the last answer to the end), and belongs to the
/// phase of its first lost probe. Answered probes that merely went out late
/// (the prober shares two cores with the stream) make no gap.
fn probe_stats(
    probes: &[Probe],
    phase_of: impl Fn(Instant) -> usize,
    phases: usize,
) -> Vec<ProbeStats> {
    let mut stats = vec![ProbeStats::default(); phases];
    let mut last_answer: Option<Instant> = None;
    let mut first_lost: Option<usize> = None;
    for probe in probes {
        let phase = phase_of(probe.sent);
        stats[phase].sent += 1;
        if probe.rtt.is_none() {
            stats[phase].lost += 1;
            first_lost.get_or_insert(phase);
            continue;
        }
        if let (Some(prev), Some(owner)) = (last_answer, first_lost) {
            let gap = (probe.sent - prev).as_secs_f64();
            stats[owner].longest_gap = stats[owner].longest_gap.max(gap);
        }
        last_answer = Some(probe.sent);
        first_lost = None;
    }
    if let (Some(prev), Some(owner), Some(last)) = (last_answer, first_lost, probes.last()) {
        let gap = (last.sent - prev).as_secs_f64() + PROBE_INTERVAL.as_secs_f64();
        stats[owner].longest_gap = stats[owner].longest_gap.max(gap);
    }
    stats
}

/// A gap in ms, `-` for none.
fn gap(seconds: f64) -> String {
    if seconds > 0.0 {
        format!("{:.0} ms", seconds * 1e3)
    } else {
        "-".to_owned()
    }
}

/// The retransmission timeouts (`rtos`, as the poll saw them) from `from`
/// to `to`, widened to the stalls that overlap it: a stall that begins in
/// one phase and ends with the peer's RTO in the next counts that RTO in
/// both, as its length is shown in both. A poll sees an RTO up to
/// [`RTO_POLL`] late, and the echo that ends the stall comes a round trip
/// after the RTO, so the window runs one more poll past a stall's end.
fn rtos_in_phase(rtos: &[Instant], stalls: &[Stall], from: Instant, to: Instant) -> usize {
    let (start, end) = stalls
        .iter()
        .filter(|s| s.overlaps(from, to))
        .fold((from, to), |(start, end), s| {
            (start.min(s.from), end.max(s.to + RTO_POLL))
        });
    rtos.iter().filter(|at| (start..end).contains(at)).count()
}

fn short(hex: &str) -> &str {
    hex.get(..16).unwrap_or(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probes(answered: &[bool]) -> (Instant, Vec<Probe>) {
        let t0 = Instant::now();
        let probes = answered
            .iter()
            .enumerate()
            .map(|(i, ok)| Probe {
                sent: t0 + PROBE_INTERVAL * i as u32,
                rtt: ok.then_some(Duration::from_micros(100)),
            })
            .collect();
        (t0, probes)
    }

    #[test]
    fn gaps_span_the_lost_probes_and_belong_to_the_first_lost_ones_phase() {
        // Phase 0: probes 0..4, phase 1: 4..10. Probes 3..6 lost.
        let (t0, p) = probes(&[
            true, true, true, false, false, false, true, true, true, true,
        ]);
        let split = t0 + PROBE_INTERVAL * 4;
        let stats = probe_stats(&p, |at| usize::from(at >= split), 2);
        assert_eq!((stats[0].sent, stats[0].lost), (4, 1));
        assert_eq!((stats[1].sent, stats[1].lost), (6, 2));
        // From probe 2 to probe 6: 40 ms, counted where the loss began.
        assert!((stats[0].longest_gap - 0.040).abs() < 1e-9, "{stats:?}");
        assert_eq!(stats[1].longest_gap, 0.0, "no loss of its own: {stats:?}");
    }

    #[test]
    fn a_loss_at_the_end_is_a_gap_too() {
        let (_, p) = probes(&[true, true, false, false]);
        let all = probe_stats(&p, |_| 0, 1)[0];
        assert_eq!(all.lost, 2);
        assert!((all.longest_gap - 0.030).abs() < 1e-9, "{all:?}");
    }

    #[test]
    fn an_rto_ending_a_stall_counts_in_every_phase_the_stall_crosses() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // Phases 0..40 and 40..1000 ms; a stall from 15 to 213 ms, ended by
        // the peer's RTO that the poll saw at 215 ms; another RTO at 600 ms.
        let stalls = [Stall {
            from: ms(15),
            to: ms(213),
        }];
        let rtos = [ms(215), ms(600)];
        assert_eq!(rtos_in_phase(&rtos, &stalls, ms(0), ms(40)), 1);
        assert_eq!(rtos_in_phase(&rtos, &stalls, ms(40), ms(1000)), 2);
        // Without the stall, only what fell inside the phase.
        assert_eq!(rtos_in_phase(&rtos, &[], ms(0), ms(40)), 0);
        // An RTO well after the stall's end is not its own.
        assert_eq!(rtos_in_phase(&[ms(230)], &stalls, ms(0), ms(40)), 0);
    }

    #[test]
    fn rates_are_per_path_and_per_second() {
        let sample = |t: f64, p: u64, s: u64| Sample {
            t,
            path: "primary".into(),
            primary_bytes: p,
            standby_bytes: s,
        };
        let samples = [
            sample(0.0, 0, 0),
            sample(0.5, 5_000_000, 0),
            sample(1.0, 5_000_000, 10_000_000),
        ];
        let (p, s) = rates_at(&samples, 0.5);
        assert!((p - 0.0).abs() < 1e-9 && (s - 20.0).abs() < 1e-9, "{p} {s}");
    }
}
