//! The daemon's own cost and its announce latency.
//!
//! `vfailover run` is started in the lab's guest namespace (as
//! `agent/tests/daemon_lab.rs` does: a config in a private directory, a
//! fake sysfs giving the standby's virtio features without
//! GUEST_ANNOUNCE, so the agent announces itself). Then:
//!
//! * idle: CPU from `/proc/<pid>/stat` (utime + stime, all threads) over
//!   the idle period, and VmRSS/VmHWM from `/proc/<pid>/status`;
//! * load: the same during a closed-loop UDP run against the daemon's stack;
//! * announce: unplug, migrate and replug while the peer captures; the time
//!   from the migration signal (the daemon's `last_migration.at_unix`) to
//!   the first gratuitous ARP for the stack's address seen on the peer.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{udp, BenchOptions, Cpus, Summary};
use crate::capture::{self, Announce};
use crate::control::{self, Request, Response};
use crate::lab::{Lab, Ns, PEER_IF, STACK_V4, STANDBY};
use crate::scenario::ECHO_PORT;
use crate::status::PairStatus;

/// How long the daemon may take to answer, find its pair, or stop.
const STARTUP: Duration = Duration::from_secs(10);
/// How long the peer listens for announces after a replug: the first
/// round is due at once, QEMU's schedule ends about 800 ms later.
const CAPTURE: Duration = Duration::from_millis(1200);
/// The daemon takes every signal within 10 s of the last as part of the
/// same migration (`MIGRATION_WINDOW` in `daemon.rs`): migrations are
/// spaced a little more than that.
const MIGRATION_SPACING: Duration = Duration::from_millis(10_500);

/// What the daemon cost and how fast it announced.
#[derive(Debug, Clone)]
pub struct DaemonResult {
    /// The daemon's link modes (primary, standby) as its status reports them.
    pub modes: (String, String),
    pub idle: Usage,
    pub load: Usage,
    /// Requests per second during the load.
    pub load_rate: f64,
    /// Replug issued → the daemon's migration signal.
    pub replug_to_signal: Option<Summary>,
    /// Migration signal → first gratuitous ARP on the peer's wire.
    pub signal_to_announce: Option<Summary>,
    /// Migrations made / with a migration signal recorded after the replug
    /// / with a gratuitous ARP seen after that signal.
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
    let agent = Daemon::start(lab, &options.agent_binary)?;
    let result = measure_with(lab, &agent, options, cpus);
    let stopped = agent.stop();
    let result = result?;
    stopped?;
    Ok(result)
}

fn measure_with(
    lab: &Lab,
    agent: &Daemon,
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
    let idle = agent.usage_over(|| {
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
    let load = agent.usage_over(|| {
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
        replug_to_signal: Summary::of(to_signal),
        signal_to_announce: Summary::of(to_announce),
    })
}

/// One silent migration; returns replug → signal and signal → first
/// gratuitous ARP (if one was seen), or `None` if no signal was recorded.
fn migration(lab: &Lab, agent: &Daemon) -> Result<Option<(Duration, Option<Duration>)>> {
    lab.unplug()?;
    agent.wait_for_path("standby")?;
    lab.migrate()?;
    let capture = lab.spawn_in(Ns::Peer, || capture::capture(PEER_IF, CAPTURE))?;
    // The capture socket opens right after the thread entered the namespace.
    std::thread::sleep(Duration::from_millis(50));
    let (wall, mono) = (SystemTime::now(), Instant::now());
    let replug = lab.replug();
    let path = replug.and_then(|()| agent.wait_for_path("primary"));
    let frames = capture
        .join()
        .map_err(|_| anyhow::anyhow!("the capture thread panicked"))??;
    let pair = path?;
    let mac = lab.mac().0;
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
    // Let the announce schedule finish before the next migration.
    std::thread::sleep(CAPTURE);
    Ok(Some((since(signal, wall), garp.map(|g| since(g, signal)))))
}

/// A `vfailover run` in the guest namespace with a private config, fake
/// sysfs and socket; stopped (SIGTERM, then SIGKILL) by its PID.
struct Daemon {
    child: Option<Child>,
    dir: PathBuf,
    socket: PathBuf,
}

impl Daemon {
    fn start(lab: &Lab, binary: &Path) -> Result<Daemon> {
        let dir = std::env::temp_dir().join(format!("vfailover-bench-{}", std::process::id()));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let socket = dir.join("vfailover.sock");
        fake_features(lab, &dir)?;
        let config = format!(
            "sysfs_root = \"{sys}\"\n[control]\nsocket = \"{sock}\"\ngroup = \"\"\n\
             [[pair]]\nstandby = \"{STANDBY}\"\n\
             addresses = [\"10.213.0.20/24\", \"fd00:213::20/64\"]\n\
             gateway = \"10.213.0.1\"\nannounce = \"auto\"\n\
             services = [{{ kind = \"udp-echo\", port = 7 }}, {{ kind = \"tcp-discard\", port = 9 }}]\n",
            sys = dir.join("sys").display(),
            sock = socket.display(),
        );
        let config_path = dir.join("vfailover.toml");
        fs::write(&config_path, config)?;
        let log = fs::File::create(dir.join("agent.log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.ns_name(Ns::Guest)])
            .arg(binary)
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} run", binary.display()))?;
        let daemon = Daemon {
            child: Some(child),
            dir,
            socket,
        };
        daemon.wait_for(|_| true, "the daemon to answer")?;
        Ok(daemon)
    }

    fn pid(&self) -> Result<u32> {
        // `ip netns exec` execs the daemon: same PID.
        Ok(self.child.as_ref().context("the daemon has stopped")?.id())
    }

    fn pair(&self) -> Option<PairStatus> {
        match control::request(&self.socket, &Request::Status, Duration::from_secs(2)) {
            Ok(Response::Status(status)) => status.pairs.into_iter().next(),
            _ => None,
        }
    }

    fn wait_for(&self, done: impl Fn(&PairStatus) -> bool, what: &str) -> Result<PairStatus> {
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Some(pair) = self.pair().filter(|p| done(p)) {
                return Ok(pair);
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out waiting for {what}; log:\n{}",
                    fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn wait_for_path(&self, path: &str) -> Result<PairStatus> {
        self.wait_for(|p| p.path == path, &format!("path {path}"))
    }

    /// CPU and memory of the daemon while `during` runs.
    fn usage_over(&self, during: impl FnOnce() -> Result<()>) -> Result<Usage> {
        let pid = self.pid()?;
        let (cpu0, t0) = (cpu_ticks(pid)?, Instant::now());
        during()?;
        let (cpu1, took) = (cpu_ticks(pid)?, t0.elapsed());
        // SAFETY: sysconf has no memory-safety preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let (rss_kib, hwm_kib) = memory(pid)?;
        Ok(Usage {
            seconds: took.as_secs_f64(),
            cpu: (cpu1 - cpu0) as f64 / hz / took.as_secs_f64(),
            rss_kib,
            hwm_kib,
        })
    }

    fn stop(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + STARTUP;
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                // Our own unreaped child: the PID cannot have been reused.
                let _ = child.kill();
                let _ = child.wait();
                bail!("the daemon did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A sysfs tree with what classification needs for the standby: its
/// ifindex and virtio features with STANDBY (62) and without
/// GUEST_ANNOUNCE (21).
fn fake_features(lab: &Lab, dir: &Path) -> Result<()> {
    let out = lab.exec(
        Ns::Guest,
        &["cat", &format!("/sys/class/net/{STANDBY}/ifindex")],
    )?;
    let net = dir.join("sys/class/net").join(STANDBY);
    fs::create_dir_all(net.join("device"))?;
    fs::write(net.join("ifindex"), out.stdout)?;
    let mut bits = vec![b'0'; 64];
    bits[62] = b'1';
    fs::write(net.join("device/features"), bits)?;
    Ok(())
}

/// utime + stime of every thread of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; fields count from after its ')'.
    let rest = stat.rsplit_once(')').context("bad /proc/<pid>/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); the state (field 3) is rest's first.
    let field = |n: usize| -> Result<u64> {
        Ok(fields
            .get(n - 3)
            .context("short /proc/<pid>/stat")?
            .parse()?)
    };
    Ok(field(14)? + field(15)?)
}

/// VmRSS and VmHWM of `pid`, in KiB.
fn memory(pid: u32) -> Result<(u64, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| -> Result<u64> {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .with_context(|| format!("no {key} in /proc/{pid}/status"))?;
        Ok(line
            .trim_start_matches(':')
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?)
    };
    Ok((kib("VmRSS")?, kib("VmHWM")?))
}
