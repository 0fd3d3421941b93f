//! The daemon's own cost and its announce latency.
//!
//! `vfailover run` is started in the lab's guest namespace by
//! [`Agent`] (a config in a private directory, a fake sysfs giving the
//! standby's virtio features without GUEST_ANNOUNCE, so the agent
//! announces itself). Then:
//!
//! * idle: CPU from `/proc/<pid>/stat` (utime + stime, all threads) over
//!   the idle period, and VmRSS/VmHWM from `/proc/<pid>/status`;
//! * load: the same during a closed-loop UDP run against the daemon's stack;
//! * announce: unplug, migrate and replug while the peer captures; the time
//!   from the migration signal (the daemon's `last_migration.at_unix`: the
//!   standby's carrier back after the move) to the first gratuitous ARP for
//!   the stack's address seen on the peer.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;

use super::{udp, BenchOptions, Cpus, Summary};
use crate::capture::{self, Announce};
use crate::lab::agent::{pair_config_with, stack_addresses, Agent, Setup};
use crate::lab::{Lab, Ns, PEER_IF, STACK_V4};
use crate::migration::MIGRATION_WINDOW;
use crate::scenario::ECHO_PORT;

/// How long the peer listens for announces after a migration: the first
/// round is due at once, QEMU's schedule ends about 800 ms later.
const CAPTURE: Duration = Duration::from_millis(1200);
/// The daemon takes every signal within [`MIGRATION_WINDOW`] of the first
/// as part of the same migration: migrations are spaced a little more.
const MIGRATION_SPACING: Duration = MIGRATION_WINDOW.saturating_add(Duration::from_millis(500));

/// What the daemon cost and how fast it announced.
#[derive(Debug, Clone)]
pub struct DaemonResult {
    /// The daemon's link modes (primary, standby) as its status reports them.
    pub modes: (String, String),
    pub idle: Usage,
    pub load: Usage,
    /// Requests per second during the load.
    pub load_rate: f64,
    /// Migration issued → the daemon's migration signal.
    pub migrate_to_signal: Option<Summary>,
    /// Migration signal → first gratuitous ARP on the peer's wire.
    pub signal_to_announce: Option<Summary>,
    /// Migrations made / with a migration signal recorded after the
    /// migration began / with a gratuitous ARP seen after that signal.
    pub migrations: usize,
    pub signals: usize,
    pub announced: usize,
}

/// CPU and memory over one period.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub seconds: f64,
    /// CPU time over wall time (1.0 = one core).
    pub cpu: f64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

pub fn measure(lab: &Lab, options: &BenchOptions, cpus: Cpus) -> Result<DaemonResult> {
    let mut agent = start(lab, &options.agent_binary)?;
    let result = measure_with(lab, &agent, options, cpus);
    let stopped = agent.stop();
    let result = result?;
    stopped?;
    Ok(result)
}

fn measure_with(
    lab: &Lab,
    agent: &Agent,
    options: &BenchOptions,
    cpus: Cpus,
) -> Result<DaemonResult> {
    let pair = agent.wait_for_path("primary")?;
    let mode = |l: &Option<crate::status::LinkStatus>| {
        l.as_ref()
            .map_or_else(|| "none".to_owned(), |l| l.mode.clone())
    };
    let modes = (mode(&pair.primary), mode(&pair.standby));
    // Let start-up work (pairing hysteresis, first ARP) die down.
    std::thread::sleep(Duration::from_secs(1));
    let idle = usage_over(agent, || {
        std::thread::sleep(options.idle);
        Ok(())
    })?;
    let load = udp::UdpLoad {
        size: 1400,
        outstanding: options.outstanding,
        max_requests: options.udp_max_requests,
        duration: options.udp_duration,
    };
    let mut load_rate = 0.0;
    let load = usage_over(agent, || {
        let r = udp::measure(lab, SocketAddr::from((STACK_V4, ECHO_PORT)), &load, cpus)?;
        load_rate = r.rate();
        Ok(())
    })?;
    let (mut to_signal, mut to_announce) = (Vec::new(), Vec::new());
    for i in 0..options.migrations {
        if i > 0 {
            std::thread::sleep(MIGRATION_SPACING.saturating_sub(CAPTURE));
        }
        if let Some((signal, announce)) = migration(lab, agent)? {
            to_signal.push(signal);
            to_announce.extend(announce);
        }
    }
    Ok(DaemonResult {
        modes,
        idle,
        load,
        load_rate,
        migrations: options.migrations,
        signals: to_signal.len(),
        announced: to_announce.len(),
        migrate_to_signal: Summary::of(to_signal),
        signal_to_announce: Summary::of(to_announce),
    })
}

/// One silent migration; returns migrate → signal and signal → first
/// gratuitous ARP (if one was seen), or `None` if no signal was recorded.
fn migration(lab: &Lab, agent: &Agent) -> Result<Option<(Duration, Option<Duration>)>> {
    lab.unplug()?;
    agent.wait_for_path("standby")?;
    let capture = lab.spawn_in(Ns::Peer, || capture::capture(PEER_IF, CAPTURE))?;
    // The capture socket opens right after the thread entered the namespace.
    std::thread::sleep(Duration::from_millis(50));
    let (wall, mono) = (SystemTime::now(), Instant::now());
    let moved = lab.migrate();
    let frames = capture
        .join()
        .map_err(|_| anyhow::anyhow!("the capture thread panicked"))??;
    moved?;
    lab.replug()?;
    let pair = agent.wait_for_path("primary")?;
    let mac = lab.mac();
    let Some(signal) = pair
        .last_migration
        .map(|m| UNIX_EPOCH + Duration::from_secs_f64(m.at_unix))
        .filter(|at| *at >= wall)
    else {
        return Ok(None);
    };
    let garp = frames
        .iter()
        .filter(|(at, f)| *at >= mono && *f == Announce::GratuitousArp { mac, ip: STACK_V4 })
        .map(|(at, _)| wall + (*at - mono))
        .next();
    let since = |later: SystemTime, earlier: SystemTime| {
        later.duration_since(earlier).unwrap_or(Duration::ZERO)
    };
    Ok(Some((since(signal, wall), garp.map(|g| since(g, signal)))))
}

/// The daemon as the bench runs it ([`Agent`] with a fake sysfs without
/// GUEST_ANNOUNCE, so it announces itself): UDP echo on port 7 for the
/// load, TCP discard on port 9, warnings only in its log.
fn start(lab: &Lab, binary: &Path) -> Result<Agent> {
    let [v4, v6] = stack_addresses();
    let pair = pair_config_with(
        &[&v4, &v6],
        "{ kind = \"udp-echo\", port = 7 }, { kind = \"tcp-discard\", port = 9 }",
    );
    Agent::start_with(lab, binary, &Setup::new(false, &pair).rust_log("warn"))
}

/// CPU and memory of the daemon while `during` runs.
fn usage_over(agent: &Agent, during: impl FnOnce() -> Result<()>) -> Result<Usage> {
    let (cpu0, t0) = (agent.resources()?.cpu_ticks, Instant::now());
    during()?;
    let (end, took) = (agent.resources()?, t0.elapsed());
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(1)
        .max(1) as f64;
    Ok(Usage {
        seconds: took.as_secs_f64(),
        cpu: (end.cpu_ticks - cpu0) as f64 / hz / took.as_secs_f64(),
        rss_kib: end.rss_kib,
        hwm_kib: end.hwm_kib,
    })
}
