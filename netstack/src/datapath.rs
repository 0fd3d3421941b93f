//! The datapath thread: owns the [`Stack`] and its links, runs the poll
//! loop, and takes commands from the control side over a channel.
//!
//! No locks on the hot path: other threads talk to the stack only through
//! [`DatapathHandle`], whose commands wake the loop through an eventfd.
//! Idle is asleep: the loop blocks in `epoll_wait` on the link fds, the
//! rtnetlink monitor and the waker, for as long as smoltcp's next timer
//! allows; it keeps polling without sleeping only while frames flow.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::link::{Health, Link};
use crate::monitor::{LinkEvent, LinkMonitor};
use crate::stack::Stack;

/// The longest sleep, even with no timer pending: a safety net against a
/// wakeup the kernel never delivers, cheap enough to cost nothing idle.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// How often a busy datapath looks at rtnetlink; it always does after
/// sleeping. Bounds how late a vanished VF is noticed while frames flow
/// (errors on use catch it sooner still).
const LINK_CHECK: Duration = Duration::from_micros(100);
/// The longest [`DatapathHandle::call`] waits. A call is a few
/// microseconds of work between two polls; only a stuck thread takes this.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Something for the datapath thread to do.
pub enum Command {
    AttachPrimary(Box<dyn Link>),
    /// Attach a primary to receive only (see
    /// [`FailoverDevice::attach_held_primary`](crate::failover::FailoverDevice::attach_held_primary)).
    AttachHeldPrimary(Box<dyn Link>),
    /// Let the held primary carry TX.
    ReleasePrimary,
    DetachPrimary,
    AttachStandby(Box<dyn Link>),
    DetachStandby,
    /// Run a closure on the stack, inside the datapath thread.
    Call(Box<dyn FnOnce(&mut Stack) + Send>),
    Shutdown,
}

/// A program's own work on the stack, run after every poll (for programs
/// that embed the stack). Returns whether it did anything.
pub type App = Box<dyn FnMut(&mut Stack) -> bool + Send>;

#[derive(Debug, Clone)]
pub struct DatapathOptions {
    /// Follow rtnetlink in the datapath's namespace so a vanished or
    /// carrier-less link is taken out of the path at once.
    pub watch_links: bool,
    /// Keep polling this long after the last frame before sleeping: cheaper
    /// than an epoll round trip while a flow is active.
    pub busy_poll: Duration,
}

impl Default for DatapathOptions {
    fn default() -> Self {
        DatapathOptions {
            watch_links: true,
            busy_poll: Duration::from_micros(200),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the datapath thread has stopped")]
pub struct DatapathGone;

/// Why [`DatapathHandle::call`] has no result.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Gone(#[from] DatapathGone),
    /// Stuck, or busy for longer than any call should take: the caller
    /// (the daemon's one control thread) must not wait on it forever.
    #[error("the datapath thread did not answer within {0:?}")]
    Late(Duration),
}

/// Sends commands to a datapath; cheap to clone, for threads that open
/// links and hand them over when ready.
#[derive(Clone)]
pub struct Commander {
    commands: Sender<Command>,
    waker: Arc<EventFd>,
}

impl Commander {
    pub fn send(&self, command: Command) -> Result<(), DatapathGone> {
        self.commands.send(command).map_err(|_| DatapathGone)?;
        // A full eventfd counter still wakes the loop; nothing to handle.
        let _ = self.waker.write(1);
        Ok(())
    }
}

/// The control side's handle on a running datapath.
pub struct DatapathHandle {
    commander: Commander,
    thread: Option<JoinHandle<Stack>>,
}

impl DatapathHandle {
    /// Start the datapath thread with `stack`. The thread inherits the
    /// calling thread's network namespace.
    pub fn spawn(stack: Stack, options: DatapathOptions, app: Option<App>) -> io::Result<Self> {
        let waker = Arc::new(EventFd::from_flags(
            EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC,
        )?);
        let monitor = if options.watch_links {
            Some(LinkMonitor::open()?)
        } else {
            None
        };
        let (commands, inbox) = mpsc::channel();
        let loop_waker = waker.clone();
        let thread = std::thread::Builder::new()
            .name("vfailover-datapath".into())
            .spawn(move || {
                let mut datapath = Datapath {
                    stack,
                    inbox,
                    waker: loop_waker,
                    monitor,
                    app,
                    options,
                };
                datapath.run();
                datapath.stack
            })?;
        Ok(DatapathHandle {
            commander: Commander { commands, waker },
            thread: Some(thread),
        })
    }

    pub fn send(&self, command: Command) -> Result<(), DatapathGone> {
        self.commander.send(command)
    }

    /// A sender of commands that other threads can own.
    pub fn commander(&self) -> Commander {
        self.commander.clone()
    }

    /// Run `f` on the stack in the datapath thread and wait, at most
    /// [`CALL_TIMEOUT`], for its result.
    pub fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Stack) -> R + Send + 'static,
    ) -> Result<R, CallError> {
        self.call_within(CALL_TIMEOUT, f)
    }

    /// [`call`](Self::call) with its own bound. A late call still runs
    /// later; its result is then dropped.
    pub fn call_within<R: Send + 'static>(
        &self,
        within: Duration,
        f: impl FnOnce(&mut Stack) -> R + Send + 'static,
    ) -> Result<R, CallError> {
        let (reply, result) = mpsc::sync_channel(1);
        self.send(Command::Call(Box::new(move |stack| {
            let _ = reply.send(f(stack));
        })))?;
        result.recv_timeout(within).map_err(|e| match e {
            RecvTimeoutError::Timeout => CallError::Late(within),
            RecvTimeoutError::Disconnected => CallError::Gone(DatapathGone),
        })
    }

    /// Whether the datapath thread takes and runs a command within
    /// `within`; one stuck (or gone) is not. For a service watchdog.
    pub fn responsive(&self, within: Duration) -> bool {
        self.call_within(within, |_| ()).is_ok()
    }

    pub fn attach_primary(&self, link: Box<dyn Link>) -> Result<(), DatapathGone> {
        self.send(Command::AttachPrimary(link))
    }

    pub fn detach_primary(&self) -> Result<(), DatapathGone> {
        self.send(Command::DetachPrimary)
    }

    /// Stop the thread and take the stack back.
    pub fn stop(mut self) -> Result<Stack, DatapathGone> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<Stack, DatapathGone> {
        let _ = self.send(Command::Shutdown);
        let thread = self.thread.take().ok_or(DatapathGone)?;
        thread.join().map_err(|_| DatapathGone)
    }
}

impl Drop for DatapathHandle {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.shutdown();
        }
    }
}

struct Datapath {
    stack: Stack,
    inbox: Receiver<Command>,
    waker: Arc<EventFd>,
    monitor: Option<LinkMonitor>,
    app: Option<App>,
    options: DatapathOptions,
}

impl Datapath {
    fn run(&mut self) {
        let mut poller = match Poller::new() {
            Ok(poller) => poller,
            Err(e) => {
                tracing::error!(error = %e, "datapath cannot create its epoll set");
                return;
            }
        };
        let mut last_activity = Instant::now();
        let mut last_link_check = Instant::now();
        let mut woke = true;
        loop {
            if !self.handle_commands() {
                return;
            }
            // Reading rtnetlink is a syscall; while busy polling, every
            // LINK_CHECK is soon enough and costs a few percent less.
            if woke || last_link_check.elapsed() >= LINK_CHECK {
                self.handle_link_events();
                last_link_check = Instant::now();
            }
            woke = false;
            if let Err(e) = poller.sync(self) {
                tracing::error!(error = %e, "datapath cannot watch its file descriptors");
                return;
            }
            let now = smoltcp::time::Instant::now();
            let mut active = self.stack.poll(now);
            if let Some(app) = self.app.as_mut() {
                active |= app(&mut self.stack);
            }
            if active {
                last_activity = Instant::now();
                continue;
            }
            if last_activity.elapsed() < self.options.busy_poll {
                continue;
            }
            let delay = self
                .stack
                .poll_delay(now)
                .map(Duration::from)
                .unwrap_or(MAX_SLEEP)
                .min(MAX_SLEEP);
            if let Err(e) = poller.wait(delay) {
                tracing::error!(error = %e, "epoll_wait failed");
                return;
            }
            woke = true;
            self.drain_waker();
        }
    }

    /// Returns false on shutdown (or when every handle is gone).
    fn handle_commands(&mut self) -> bool {
        loop {
            let command = match self.inbox.try_recv() {
                Ok(command) => command,
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            };
            let device = self.stack.device_mut();
            match command {
                Command::AttachPrimary(link) => {
                    let ifname = link.ifname().to_owned();
                    if let Err(e) = device.attach_primary(link) {
                        tracing::warn!(%ifname, error = %e, "primary refused");
                    }
                }
                Command::AttachHeldPrimary(link) => {
                    let ifname = link.ifname().to_owned();
                    if let Err(e) = device.attach_held_primary(link) {
                        tracing::warn!(%ifname, error = %e, "primary refused");
                    }
                }
                Command::ReleasePrimary => {
                    if !device.release_primary() {
                        tracing::warn!("no held primary to release");
                    }
                }
                Command::DetachPrimary => drop(device.detach_primary()),
                Command::AttachStandby(link) => drop(device.attach_standby(link)),
                Command::DetachStandby => drop(device.detach_standby()),
                Command::Call(f) => f(&mut self.stack),
                Command::Shutdown => return false,
            }
        }
    }

    fn handle_link_events(&mut self) {
        let Some(monitor) = self.monitor.as_mut() else {
            return;
        };
        let device = self.stack.device_mut();
        let result = monitor.read(|event| match event {
            LinkEvent::Removed { ifindex, .. } => device.set_link_health(ifindex, Health::Gone),
            LinkEvent::Changed(state) => {
                let health = if state.up && state.carrier {
                    Health::Up
                } else {
                    Health::Down
                };
                device.set_link_health(state.ifindex, health);
            }
            // Missed events are caught by errors on use (ENXIO/ENETDOWN).
            LinkEvent::Overrun => tracing::warn!("rtnetlink overrun; relying on link errors"),
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, "rtnetlink read failed");
        }
    }

    fn drain_waker(&self) {
        // Reading resets the counter; EAGAIN just means nobody woke us.
        let _ = self.waker.read();
    }

    fn watched_fds(&self) -> Vec<RawFd> {
        let mut fds = self.stack.device().fds();
        fds.push(self.waker.as_fd().as_raw_fd());
        if let Some(monitor) = &self.monitor {
            fds.push(monitor.fd());
        }
        fds
    }
}

/// The epoll set, re-registered whenever the device's links change.
struct Poller {
    epoll: Epoll,
    registered: Vec<RawFd>,
    generation: Option<u64>,
    events: Vec<EpollEvent>,
}

impl Poller {
    fn new() -> io::Result<Self> {
        Ok(Poller {
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
            registered: Vec::new(),
            generation: None,
            events: vec![EpollEvent::empty(); 16],
        })
    }

    fn sync(&mut self, datapath: &Datapath) -> io::Result<()> {
        let generation = datapath.stack.device().generation();
        if self.generation == Some(generation) {
            return Ok(());
        }
        // Links that left closed their fds, which removed them from the set;
        // a fresh set avoids tracking which.
        self.epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        self.registered = datapath.watched_fds();
        for &fd in &self.registered {
            // By number: every fd comes from an object the datapath keeps
            // open at least until the next generation change rebuilds this set.
            crate::sys::epoll_add_in(&self.epoll.0, fd)?;
        }
        self.generation = Some(generation);
        Ok(())
    }

    fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        // Round up so a 300 µs timer does not become a 0 ms spin.
        let ms = timeout.as_micros().div_ceil(1000).min(u16::MAX as u128) as u16;
        match self.epoll.wait(&mut self.events, EpollTimeout::from(ms)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
