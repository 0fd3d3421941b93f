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

/// A `vfailover run` in the lab's guest namespace, with its own config,
/// fake sysfs and socket in a temporary directory. Dropping it stops the
/// daemon (SIGTERM, then SIGKILL) and removes the directory.
pub struct Agent {
    /// In a mutex so that `&self` methods can ask whether it has exited.
    child: Mutex<Option<Child>>,
    dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Agent {
    /// Start `bin run` with `pair` as its one `[[pair]]` table (see
    /// [`pair_config`]); the standby's virtio features have GUEST_ANNOUNCE
    /// (bit 21) as given. Returns once the daemon answers on its socket.
    pub fn start(lab: &Lab, bin: &Path, guest_announce: bool, pair: &str) -> Result<Agent> {
        let dir = tempfile::Builder::new()
            .prefix("vfailover-lab-")
            .tempdir()
            .context("creating the agent's temporary directory")?;
        let socket = dir.path().join("vfailover.sock");
        fake_features(lab, dir.path(), guest_announce)?;
        write_config(dir.path(), &socket, pair)?;
        let log_path = dir.path().join("agent.log");
        let log = fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        // `ip netns exec` execs the daemon in place (no fork without -b), so
        // the child's PID is the daemon's and signals reach it directly.
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.ns_name(Ns::Guest)])
            .arg(bin)
            .arg("run")
            .arg("--config")
            .arg(dir.path().join("vfailover.toml"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a Ctrl-C at the terminal reaches only
            // the caller, which then stops the stream first and the daemon
            // after it, in that order.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {} in the guest namespace", bin.display()))?;
        let agent = Agent {
            child: Mutex::new(Some(child)),
            dir,
            socket,
        };
        agent.wait_for(START_TIMEOUT, "the daemon to answer", |_| true)?;
        Ok(agent)
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

    /// Replace the `[[pair]]` table of the config (the daemon reads it on
    /// SIGHUP).
    pub fn write_config(&self, pair: &str) -> Result<()> {
        write_config(self.dir.path(), &self.socket, pair)
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
            .ok_or_else(|| anyhow!("the daemon does not answer\n{}", self.log()))?;
        status
            .pairs
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("the daemon has no pair"))
    }

    /// Poll the status every 10 ms until `done` holds; an error with the
    /// daemon's log after `timeout` or when the daemon has exited.
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
                    self.log()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out waiting for {what}; last status {:?}\nlog:\n{}",
                    self.status(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait (at most 10 s) until the pair's path is `path`.
    pub fn wait_for_path(&self, path: &str) -> Result<PairStatus> {
        let status = self.wait_for(Duration::from_secs(10), &format!("path {path}"), |s| {
            s.pairs.first().is_some_and(|p| p.path == path)
        })?;
        Ok(status.pairs.into_iter().next().expect("checked above"))
    }

    /// The daemon's log so far (stdout and stderr).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
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
                self.log()
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

fn write_config(dir: &Path, socket: &Path, pair: &str) -> Result<()> {
    // No control group: the lab runs as root, and a `vfailover` group may
    // not exist on the machine.
    let config = format!(
        "sysfs_root = \"{}\"\n[control]\nsocket = \"{}\"\ngroup = \"\"\n[[pair]]\n{pair}",
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

/// A `[[pair]]` table for the lab's guest: standby `virtio0`, `addresses`,
/// the peer as gateway, `announce = "auto"`, TCP and UDP echo on port 7.
pub fn pair_config(addresses: &[&str]) -> String {
    let addresses: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "standby = \"{STANDBY}\"\naddresses = [{}]\ngateway = \"10.213.0.1\"\nannounce = \"auto\"\n\
         services = [{{ kind = \"tcp-echo\", port = 7 }}, {{ kind = \"udp-echo\", port = 7 }}]\n",
        addresses.join(", ")
    )
}

/// [`pair_config`] with the lab's stack addresses ([`STACK_V4`]/24 and
/// [`STACK_V6`]/64).
pub fn default_pair() -> String {
    pair_config(&[&format!("{STACK_V4}/24"), &format!("{STACK_V6}/64")])
}
