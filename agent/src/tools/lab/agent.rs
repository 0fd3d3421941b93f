//! The real daemon (`vfailover run`) in a [`Lab`]'s guest namespace.
//!
//! [`Agent`] writes a config, a fake sysfs tree and a control socket path
//! into its own temporary directory, starts the daemon with `ip netns exec`
//! and talks to it over the socket. The integration tests and `vfailover
//! lab` share it, so the command a new user runs is the daemon the tests
//! check, started the same way.
//!
//! Only the standby needs faking in sysfs: a veth has no virtio features,
//! and the features decide whether the agent announces after a migration
//! (`announce = "auto"` announces only when GUEST_ANNOUNCE is absent).

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{Lab, Ns, STACK_V4, STACK_V6, STANDBY};
use crate::control::{self, Request, Response};
use crate::status::{PairStatus, Status};

/// How long one status request may take; the daemon answers in microseconds.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the daemon gets to answer its socket after starting.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the daemon gets to exit on SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the daemon gets to die on SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often [`Agent::wait_for`] asks for the status.
const POLL: Duration = Duration::from_millis(2);
/// How many of the log's last lines an error carries: the tail explains a
/// failure, hundreds of cycles of info lines do not.
const LOG_TAIL: usize = 80;

/// How to start an [`Agent`] (see [`Agent::start_with`]).
#[derive(Debug, Clone)]
pub struct Setup {
    /// Whether the standby's fake virtio features have GUEST_ANNOUNCE
    /// (bit 21).
    pub guest_announce: bool,
    /// Top-level TOML tables (`[failback]` and the like) written before
    /// `[[pair]]`; empty for none.
    pub tables: String,
    /// The body of the one `[[pair]]` table (see [`pair_config`]).
    pub pair: String,
    /// The daemon's `RUST_LOG`.
    pub rust_log: String,
    /// More environment for the daemon (`NOTIFY_SOCKET` and the like).
    pub env: Vec<(String, String)>,
}

impl Setup {
    /// `pair` as the one pair, no other tables, `RUST_LOG=info`.
    pub fn new(guest_announce: bool, pair: &str) -> Setup {
        Setup {
            guest_announce,
            tables: String::new(),
            pair: pair.to_owned(),
            rust_log: "info".to_owned(),
            env: Vec::new(),
        }
    }

    /// With `tables` before `[[pair]]`.
    pub fn tables(mut self, tables: &str) -> Setup {
        self.tables = tables.to_owned();
        self
    }

    /// With `RUST_LOG=rust_log`.
    pub fn rust_log(mut self, rust_log: &str) -> Setup {
        self.rust_log = rust_log.to_owned();
        self
    }

    /// With `key=value` in the daemon's environment.
    pub fn env(mut self, key: &str, value: &str) -> Setup {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }
}

/// What the daemon holds, from `/proc/<pid>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    /// VmRSS, in KiB.
    pub rss_kib: u64,
    /// VmHWM (peak RSS), in KiB.
    pub hwm_kib: u64,
    /// Open file descriptors.
    pub fds: usize,
    /// utime + stime of every thread, in clock ticks (`_SC_CLK_TCK`).
    pub cpu_ticks: u64,
}

/// A `vfailover run` in the lab's guest namespace, with its own config,
/// fake sysfs and socket in a temporary directory. Dropping it stops the
/// daemon (SIGTERM, then SIGKILL) and removes the directory.
pub struct Agent {
    /// In a mutex so that `&self` methods can ask whether it has exited.
    child: Mutex<Option<Child>>,
    dir: tempfile::TempDir,
    socket: PathBuf,
    /// The guest namespace and the binary, for [`restart`](Self::restart).
    guest_ns: String,
    bin: PathBuf,
    /// The tables before `[[pair]]`, kept by [`write_config`](Self::write_config).
    tables: String,
    rust_log: String,
    env: Vec<(String, String)>,
}

impl Agent {
    /// Start `bin run` with `pair` as its one `[[pair]]` table (see
    /// [`pair_config`]); the standby's virtio features have GUEST_ANNOUNCE
    /// (bit 21) as given. Returns once the daemon answers on its socket.
    pub fn start(lab: &Lab, bin: &Path, guest_announce: bool, pair: &str) -> Result<Agent> {
        Agent::start_with(lab, bin, &Setup::new(guest_announce, pair))
    }

    /// [`start`](Self::start) with other tables before `[[pair]]` or
    /// another `RUST_LOG` (see [`Setup`]).
    pub fn start_with(lab: &Lab, bin: &Path, setup: &Setup) -> Result<Agent> {
        let dir = tempfile::Builder::new()
            .prefix("vfailover-lab-")
            .tempdir()
            .context("creating the agent's temporary directory")?;
        let socket = dir.path().join("vfailover.sock");
        fake_features(lab, dir.path(), setup.guest_announce)?;
        write_config(dir.path(), &socket, &setup.tables, &setup.pair)?;
        let agent = Agent {
            child: Mutex::new(None),
            dir,
            socket,
            guest_ns: lab.ns_name(Ns::Guest),
            bin: bin.to_owned(),
            tables: setup.tables.clone(),
            rust_log: setup.rust_log.clone(),
            env: setup.env.clone(),
        };
        agent.spawn()?;
        Ok(agent)
    }

    /// Run the daemon again on the same config, socket and log (appended
    /// to) after it was stopped or killed; returns once it answers.
    pub fn restart(&mut self) -> Result<()> {
        if self.child().is_some() {
            bail!("the daemon still runs");
        }
        self.spawn()
    }

    /// Start the daemon, appending to the log, and wait until it answers.
    fn spawn(&self) -> Result<()> {
        let log_path = self.dir.path().join("agent.log");
        let log = fs::File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        // `ip netns exec` execs the daemon in place (no fork without -b), so
        // the child's PID is the daemon's and signals reach it directly.
        let child = Command::new("ip")
            .args(["netns", "exec", &self.guest_ns])
            .arg(&self.bin)
            .arg("run")
            .arg("--config")
            .arg(self.dir.path().join("vfailover.toml"))
            .env("RUST_LOG", &self.rust_log)
            .envs(self.env.clone())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a Ctrl-C at the terminal reaches only
            // the caller, which then stops the stream first and the daemon
            // after it, in that order.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {} in the guest namespace", self.bin.display()))?;
        *self.child() = Some(child);
        self.wait_for(START_TIMEOUT, "the daemon to answer", |_| true)?;
        Ok(())
    }

    /// The daemon's PID.
    pub fn pid(&self) -> Option<u32> {
        self.child().as_ref().map(Child::id)
    }

    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        // Nothing panics while holding it; a poisoned lock is still valid.
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The daemon's control socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The temporary directory with the config, fake sysfs and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Replace the `[[pair]]` table of the config, keeping the tables
    /// before it (the daemon reads it on SIGHUP).
    pub fn write_config(&self, pair: &str) -> Result<()> {
        write_config(self.dir.path(), &self.socket, &self.tables, pair)
    }

    /// The daemon's status, `None` if it does not answer.
    pub fn status(&self) -> Option<Status> {
        match control::request(&self.socket, &Request::Status, STATUS_TIMEOUT) {
            Ok(Response::Status(status)) => Some(*status),
            _ => None,
        }
    }

    /// The status of the daemon's one pair.
    pub fn pair(&self) -> Result<PairStatus> {
        let status = self
            .status()
            .ok_or_else(|| anyhow!("the daemon does not answer\n{}", self.log_tail(LOG_TAIL)))?;
        status
            .pairs
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("the daemon has no pair"))
    }

    /// Poll the status every 2 ms until `done` holds; an error with the
    /// tail of the daemon's log after `timeout` or when the daemon has
    /// exited.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&Status) -> bool,
    ) -> Result<Status> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.status().filter(|s| done(s)) {
                return Ok(status);
            }
            if let Some(exit) = self.exited() {
                bail!(
                    "the daemon exited ({exit}) while waiting for {what}\nlog:\n{}",
                    self.log_tail(LOG_TAIL)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out waiting for {what}; last status {:?}\nlog:\n{}",
                    self.status(),
                    self.log_tail(LOG_TAIL)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Wait (at most 10 s) until `done` holds for the first pair.
    pub fn wait_for_pair(
        &self,
        what: &str,
        done: impl Fn(&PairStatus) -> bool,
    ) -> Result<PairStatus> {
        let status = self.wait_for(Duration::from_secs(10), what, |s| {
            s.pairs.first().is_some_and(&done)
        })?;
        Ok(status.pairs.into_iter().next().expect("checked above"))
    }

    /// Wait (at most 10 s) until the pair's path is `path`.
    pub fn wait_for_path(&self, path: &str) -> Result<PairStatus> {
        self.wait_for_pair(&format!("path {path}"), |p| p.path == path)
    }

    /// The daemon's log so far (stdout and stderr).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// The last `lines` lines of the [`log`](Self::log).
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The daemon's memory, open fds and CPU time so far.
    pub fn resources(&self) -> Result<Resources> {
        // Our own child, unreaped while the lock is held: the PID's /proc
        // entry is the daemon's.
        let child = self.child();
        let pid = child
            .as_ref()
            .ok_or_else(|| anyhow!("the daemon was stopped"))?
            .id();
        let (rss_kib, hwm_kib) = memory(pid)?;
        let fds = fs::read_dir(format!("/proc/{pid}/fd"))
            .with_context(|| format!("reading /proc/{pid}/fd"))?
            .count();
        Ok(Resources {
            rss_kib,
            hwm_kib,
            fds,
            cpu_ticks: cpu_ticks(pid)?,
        })
    }

    /// The exit status, if the daemon has exited (it is reaped then).
    fn exited(&self) -> Option<ExitStatus> {
        self.child().as_mut()?.try_wait().ok().flatten()
    }

    /// Send `signal` to the daemon (our own child, not yet reaped while
    /// the lock is held, so the PID cannot belong to anyone else).
    pub fn signal(&self, signal: Signal) -> Result<()> {
        let child = self.child();
        let pid = child
            .as_ref()
            .ok_or_else(|| anyhow!("the daemon was stopped"))?
            .id();
        kill(Pid::from_raw(pid as i32), signal).with_context(|| format!("kill -{signal} {pid}"))
    }

    /// SIGKILL the daemon and reap it (bounded); the socket stays behind.
    pub fn kill9(&mut self) -> Result<ExitStatus> {
        let mut child = self
            .child()
            .take()
            .ok_or_else(|| anyhow!("the daemon was stopped"))?;
        // Our own unreaped child: the PID cannot have been reused.
        let pid = child.id();
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL)
            .with_context(|| format!("kill -KILL {pid}"))?;
        let deadline = Instant::now() + KILL_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().context("waiting for the daemon")? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("SIGKILL did not end the daemon within {KILL_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGTERM and wait (bounded) for the exit; SIGKILL and an error if
    /// it does not come.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let mut child = self
            .child()
            .take()
            .ok_or_else(|| anyhow!("the daemon was stopped"))?;
        match terminate(&mut child, STOP_TIMEOUT) {
            Some(status) => Ok(status),
            None => bail!(
                "the daemon did not stop within {STOP_TIMEOUT:?} of SIGTERM (killed)\n{}",
                self.log_tail(LOG_TAIL)
            ),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child().take() {
            terminate(&mut child, Duration::from_secs(5));
        }
    }
}

/// SIGTERM `child`, wait up to `timeout`, then SIGKILL. Returns the exit
/// status if it exited on SIGTERM.
fn terminate(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    // Our own unreaped child: the PID is still ours even if it has exited.
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn write_config(dir: &Path, socket: &Path, tables: &str, pair: &str) -> Result<()> {
    // No control group: the lab runs as root, and a `vfailover` group may
    // not exist on the machine.
    let config = format!(
        "sysfs_root = \"{}\"\n[control]\nsocket = \"{}\"\ngroup = \"\"\n{tables}\n[[pair]]\n{pair}",
        dir.join("sys").display(),
        socket.display()
    );
    let path = dir.join("vfailover.toml");
    fs::write(&path, config).with_context(|| format!("writing {}", path.display()))
}

/// A sysfs tree under `dir/sys` with just what classification needs for
/// the standby: its ifindex (so the entry is known to be that device) and
/// its virtio features, STANDBY (bit 62) set and GUEST_ANNOUNCE (bit 21)
/// as given.
pub fn fake_features(lab: &Lab, dir: &Path, guest_announce: bool) -> Result<()> {
    let out = lab.exec(
        Ns::Guest,
        &["cat", &format!("/sys/class/net/{STANDBY}/ifindex")],
    )?;
    let net = dir.join("sys/class/net").join(STANDBY);
    fs::create_dir_all(net.join("device"))
        .with_context(|| format!("creating {}", net.display()))?;
    fs::write(net.join("ifindex"), out.stdout)?;
    let mut bits = vec![b'0'; 64];
    bits[21] = if guest_announce { b'1' } else { b'0' };
    bits[62] = b'1';
    fs::write(net.join("device/features"), bits)?;
    Ok(())
}

/// The services of [`pair_config`]: TCP and UDP echo on port 7.
pub const ECHO_SERVICES: &str =
    "{ kind = \"tcp-echo\", port = 7 }, { kind = \"udp-echo\", port = 7 }";

/// A `[[pair]]` table for the lab's guest: standby `virtio0`, `addresses`,
/// the peer as gateway, `announce = "auto"`, TCP and UDP echo on port 7.
pub fn pair_config(addresses: &[&str]) -> String {
    pair_config_with(addresses, ECHO_SERVICES)
}

/// [`pair_config`] with `services` (the inside of the TOML array) instead
/// of the echo services.
pub fn pair_config_with(addresses: &[&str], services: &str) -> String {
    let addresses: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "standby = \"{STANDBY}\"\naddresses = [{}]\ngateway = \"10.213.0.1\"\nannounce = \"auto\"\n\
         services = [{services}]\n",
        addresses.join(", ")
    )
}

/// The lab's stack addresses, [`STACK_V4`]/24 and [`STACK_V6`]/64.
pub fn stack_addresses() -> [String; 2] {
    [format!("{STACK_V4}/24"), format!("{STACK_V6}/64")]
}

/// [`pair_config`] with the lab's [`stack_addresses`].
pub fn default_pair() -> String {
    let [v4, v6] = stack_addresses();
    pair_config(&[&v4, &v6])
}

/// utime + stime of every thread of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
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
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
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
