//! The daemon's end: the accept thread, one thread per connection, and
//! the hand-over of requests to the main loop.

use std::collections::HashMap;
use std::fs;
use std::io::{ErrorKind, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{getsockopt, sockopt};
use nix::unistd::Group;

use super::protocol::{
    is_timeout, parse_request, read_line, response_line, write_all_by, Line, Request, Response,
    MAX_REQUEST,
};

/// Time a client has to send its request, and to take the answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Time the daemon's main loop has to answer a request.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections served at once.
pub const MAX_CLIENTS: usize = 64;
/// A connection silent this long gives its place to a new client when all
/// [`MAX_CLIENTS`] are taken. Clients send their request at once; this
/// only spares one that was just accepted and not yet read.
pub const SILENT_EVICT: Duration = Duration::from_millis(100);
/// How often a connection waiting for the daemon checks for shutdown.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// Who is asking, from `SO_PEERCRED` (the kernel's word, not the client's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
}

/// A request handed to the daemon's main loop. Answer it with
/// [`ControlCall::respond`] within [`REPLY_TIMEOUT`].
#[derive(Debug)]
pub struct ControlCall {
    pub request: Request,
    pub peer: Peer,
    pub reply: Sender<Response>,
}

impl ControlCall {
    /// Sends the answer. The client may have given up meanwhile; that is
    /// not the daemon's problem, so it is not an error.
    pub fn respond(self, response: Response) {
        let _ = self.reply.send(response);
    }
}

/// The running server. [`ControlServer::stop`] or dropping it stops
/// accepting, ends every connection, joins the threads and removes the
/// socket file.
pub struct ControlServer {
    path: PathBuf,
    /// (device, inode) of the socket we bound: removed at stop only if it
    /// is still ours, not one a newer daemon put there meanwhile.
    identity: (u64, u64),
    shared: Arc<Shared>,
    /// Writing a byte wakes the accept thread out of `poll`.
    wake: UnixStream,
    thread: Option<JoinHandle<()>>,
}

/// What the accept thread and the connection threads share.
struct Shared {
    calls: Sender<ControlCall>,
    waker: Mutex<Box<dyn Fn() + Send>>,
    stopping: AtomicBool,
    /// Live connections, so shutdown can cut them; its size is the number
    /// of clients being served.
    connections: Mutex<HashMap<u64, Connection>>,
    next_id: AtomicU64,
}

/// A connection as the accept thread sees it.
struct Connection {
    stream: UnixStream,
    accepted: Instant,
    /// [`SILENT`], [`ASKED`] or [`EVICTED`]: the connection's thread and
    /// the accept thread race to move it on from `SILENT`.
    state: Arc<AtomicU8>,
}

/// No request line yet.
const SILENT: u8 = 0;
/// The request line was read.
const ASKED: u8 = 1;
/// Its place went to a newer client.
const EVICTED: u8 = 2;

impl Connection {
    /// Takes the connection's place if it is silent and old enough: its
    /// reading side is shut, so its thread wakes, tells the client why and
    /// ends.
    fn evict(&self, now: Instant) -> bool {
        if now.saturating_duration_since(self.accepted) < SILENT_EVICT {
            return false;
        }
        let evicted = self
            .state
            .compare_exchange(SILENT, EVICTED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if evicted {
            let _ = self.stream.shutdown(Shutdown::Read);
        }
        evicted
    }
}

/// A poisoned lock only means another connection thread panicked; the map
/// itself is still consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ControlServer {
    /// Binds `path` and serves it on its own threads. Each request goes to
    /// `calls` as a [`ControlCall`], after which `waker` is called.
    ///
    /// The parent directory is created (0755) if missing. A socket file
    /// left by a dead daemon is replaced; if a daemon answers on it, this
    /// fails. The socket gets mode 0660 and, if `group` exists, that group
    /// (if not: a warning, and it stays in root's group).
    pub fn start(
        path: &Path,
        group: Option<&str>,
        calls: Sender<ControlCall>,
        waker: impl Fn() + Send + 'static,
    ) -> Result<ControlServer> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        remove_stale_socket(path)?;
        let listener = UnixListener::bind(path)
            .with_context(|| format!("cannot bind the control socket {}", path.display()))?;
        let setup = || -> Result<(u64, u64)> {
            fs::set_permissions(path, fs::Permissions::from_mode(0o660))
                .with_context(|| format!("cannot chmod 0660 {}", path.display()))?;
            if let Some(group) = group {
                set_group(path, group)?;
            }
            let meta = fs::symlink_metadata(path)
                .with_context(|| format!("cannot stat {}", path.display()))?;
            listener
                .set_nonblocking(true)
                .context("cannot make the control socket non-blocking")?;
            Ok((meta.dev(), meta.ino()))
        };
        let identity = match setup() {
            Ok(identity) => identity,
            Err(e) => {
                let _ = fs::remove_file(path);
                return Err(e);
            }
        };
        let (wake_rx, wake) = UnixStream::pair().context("cannot create a socketpair")?;
        let shared = Arc::new(Shared {
            calls,
            waker: Mutex::new(Box::new(waker)),
            stopping: AtomicBool::new(false),
            connections: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        });
        let thread = thread::Builder::new().name("control".into()).spawn({
            let shared = Arc::clone(&shared);
            move || accept_loop(&listener, &wake_rx, &shared)
        });
        let thread = match thread {
            Ok(thread) => thread,
            Err(e) => {
                let _ = fs::remove_file(path);
                return Err(e).context("cannot start the control thread");
            }
        };
        tracing::info!("control socket listening on {}", path.display());
        Ok(ControlServer {
            path: path.to_owned(),
            identity,
            shared,
            wake,
            thread: Some(thread),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, ends the connections, joins the threads and removes
    /// the socket file.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        let _ = (&self.wake).write_all(&[1]);
        if thread.join().is_err() {
            tracing::error!("the control thread panicked");
        }
        match fs::symlink_metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) == self.identity => {
                if let Err(e) = fs::remove_file(&self.path) {
                    tracing::warn!("cannot remove {}: {e}", self.path.display());
                }
            }
            _ => {}
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Removes a socket file nobody listens on. A live daemon, or a file that
/// is not a socket, is left alone and reported.
fn remove_stale_socket(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot stat {}", path.display())),
    };
    if !meta.file_type().is_socket() {
        bail!(
            "{} exists and is not a socket; not replacing it",
            path.display()
        );
    }
    match UnixStream::connect(path) {
        Ok(_) => bail!(
            "another vfailover daemon is already listening on {} (stop it first)",
            path.display()
        ),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            fs::remove_file(path)
                .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
            tracing::info!("removed stale control socket {}", path.display());
            Ok(())
        }
        Err(e) => Err(e)
            .with_context(|| format!("cannot tell whether a daemon listens on {}", path.display())),
    }
}

/// Gives the socket to `group` if it exists; warns and carries on if not,
/// since root can still use the socket.
fn set_group(path: &Path, group: &str) -> Result<()> {
    match Group::from_name(group) {
        Ok(Some(g)) => nix::unistd::chown(path, None, Some(g.gid))
            .with_context(|| format!("cannot give {} to group {group}", path.display())),
        Ok(None) => {
            tracing::warn!(
                "group {group} does not exist: the control socket {} stays in root's group, \
                 so only root can use it (create the group or set control.group)",
                path.display()
            );
            Ok(())
        }
        Err(e) => {
            tracing::warn!(
                "cannot look up group {group}: {e}; the control socket stays in root's group"
            );
            Ok(())
        }
    }
}

fn accept_loop(listener: &UnixListener, wake: &UnixStream, shared: &Arc<Shared>) {
    let mut handlers: Vec<JoinHandle<()>> = Vec::new();
    while !shared.stopping.load(Ordering::SeqCst) {
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(wake.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                tracing::error!("control socket: poll failed: {e}; no longer serving");
                break;
            }
        }
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    if let Some(handle) = admit(stream, shared) {
                        handlers.push(handle);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning on a
                    // listener that stays readable.
                    tracing::warn!("control socket: accept failed: {e}");
                    thread::sleep(Duration::from_millis(100));
                    break;
                }
            }
        }
        handlers.retain(|h| !h.is_finished());
    }
    // Cut every connection (unblocks their reads and writes), then wait for
    // their threads; the ones waiting on the daemon see `stopping`.
    for connection in lock(&shared.connections).values() {
        let _ = connection.stream.shutdown(Shutdown::Both);
    }
    for handle in handlers {
        let _ = handle.join();
    }
}

/// Starts a thread for a new connection, making room by evicting the
/// oldest silent one, or turns it away when [`MAX_CLIENTS`] are being
/// served and none can go.
fn admit(stream: UnixStream, shared: &Arc<Shared>) -> Option<JoinHandle<()>> {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let state = Arc::new(AtomicU8::new(SILENT));
    {
        let mut connections = lock(&shared.connections);
        if connections.len() >= MAX_CLIENTS {
            evict_oldest_silent(&mut connections);
        }
        let registered = connections.len() < MAX_CLIENTS
            && stream
                .try_clone()
                .map(|clone| {
                    let connection = Connection {
                        stream: clone,
                        accepted: Instant::now(),
                        state: Arc::clone(&state),
                    };
                    connections.insert(id, connection)
                })
                .is_ok();
        if !registered {
            drop(connections);
            // A fresh socket's buffer takes this line without blocking; if
            // not, the client loses only the reason.
            let _ = stream.set_nonblocking(true);
            let _ = (&stream).write_all(&response_line(&Response::Error("busy".into())));
            return None;
        }
    }
    let spawned = thread::Builder::new().name("control-conn".into()).spawn({
        let shared = Arc::clone(shared);
        move || {
            serve(stream, &state, &shared);
            lock(&shared.connections).remove(&id);
        }
    });
    match spawned {
        Ok(handle) => Some(handle),
        Err(e) => {
            tracing::warn!("control socket: cannot start a thread for a client: {e}");
            lock(&shared.connections).remove(&id);
            None
        }
    }
}

/// Evicts the oldest connection that can go (see [`Connection::evict`]).
/// Its entry leaves the table now; its thread ends on its own.
fn evict_oldest_silent(connections: &mut HashMap<u64, Connection>) {
    let now = Instant::now();
    let mut by_age: Vec<(&u64, &Connection)> = connections.iter().collect();
    by_age.sort_unstable_by_key(|(_, c)| c.accepted);
    let evicted = by_age
        .into_iter()
        .find(|(_, c)| c.evict(now))
        .map(|(id, _)| *id);
    if let Some(id) = evicted {
        connections.remove(&id);
    }
}

/// Serves one connection: read the request, answer, close.
fn serve(stream: UnixStream, state: &AtomicU8, shared: &Shared) {
    // Accepted sockets do not inherit O_NONBLOCK on Linux; make sure.
    if stream.set_nonblocking(false).is_err() {
        return;
    }
    let response = match getsockopt(&stream, sockopt::PeerCredentials) {
        Err(e) => Response::Error(format!("cannot tell who you are (SO_PEERCRED: {e})")),
        Ok(cred) => {
            let peer = Peer {
                uid: cred.uid(),
                gid: cred.gid(),
                pid: cred.pid(),
            };
            let read = read_line(&stream, MAX_REQUEST, Instant::now() + IO_TIMEOUT);
            let evicted = state
                .compare_exchange(SILENT, ASKED, Ordering::SeqCst, Ordering::SeqCst)
                .is_err();
            match read {
                _ if evicted => Response::Error(format!(
                    "dropped: no request within {} ms while {MAX_CLIENTS} clients were connected",
                    SILENT_EVICT.as_millis()
                )),
                Ok(Line::Complete(line) | Line::Eof(line)) => answer(&line, peer, shared),
                // Connected and closed without a word: a liveness probe
                // (such as a second daemon's start), nothing to answer.
                Ok(Line::Empty) => return,
                Ok(Line::TooLong) => Response::Error(format!(
                    "request longer than {MAX_REQUEST} bytes; one JSON object per line"
                )),
                Err(e) if is_timeout(&e) => {
                    Response::Error(format!("no request line within {} s", IO_TIMEOUT.as_secs()))
                }
                Err(e) => {
                    tracing::debug!("control client (pid {}): {e}", peer.pid);
                    return;
                }
            }
        }
    };
    if let Err(e) = write_all_by(
        &stream,
        &response_line(&response),
        Instant::now() + IO_TIMEOUT,
    ) {
        tracing::debug!("control client did not take its answer: {e}");
    }
}

/// Turns a request line into the daemon's answer (or the server's refusal).
fn answer(line: &[u8], peer: Peer, shared: &Shared) -> Response {
    let request = match parse_request(line) {
        Ok(request) => request,
        Err(e) => return Response::Error(e),
    };
    if request.needs_root() && peer.uid != 0 {
        return Response::Error(format!(
            "{} needs root (uid 0); you are uid {}",
            request.command(),
            peer.uid
        ));
    }
    let (reply, answer) = mpsc::channel();
    let call = ControlCall {
        request,
        peer,
        reply,
    };
    if shared.calls.send(call).is_err() {
        return Response::Error("the daemon is shutting down".into());
    }
    (lock(&shared.waker))();
    let deadline = Instant::now() + REPLY_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Response::Error(format!(
                "daemon busy: no answer within {} s",
                REPLY_TIMEOUT.as_secs()
            ));
        }
        match answer.recv_timeout(left.min(STOP_CHECK)) {
            Ok(response) => return response,
            Err(RecvTimeoutError::Timeout) if shared.stopping.load(Ordering::SeqCst) => {
                return Response::Error("the daemon is shutting down".into())
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Response::Error("the daemon dropped the request without an answer".into())
            }
        }
    }
}
