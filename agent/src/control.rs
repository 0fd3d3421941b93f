//! The control socket: a Unix socket server run by the daemon, and the
//! client behind `vfailover status`, `metrics`, `announce` and `reload`.
//!
//! # Protocol
//!
//! `SOCK_STREAM` Unix socket, by default `/run/vfailover/vfailover.sock`,
//! mode 0660, group `vfailover`. One exchange per connection:
//!
//! 1. the client sends one JSON object on one line (at most
//!    [`MAX_REQUEST`] bytes before the `\n`; EOF instead of the `\n` also
//!    ends the request);
//! 2. the server answers with one JSON object on one line and closes.
//!
//! Requests ([`Request`]):
//!
//! ```text
//! {"command":"status"}
//! {"command":"metrics"}
//! {"command":"announce"}                  all pairs
//! {"command":"announce","pair":"main"}    one pair
//! {"command":"reload"}
//! ```
//!
//! Responses ([`Response`]):
//!
//! ```text
//! {"ok":true,"status":{...}}              see crate::status::Status
//! {"ok":true,"metrics":"# HELP ..."}      Prometheus text
//! {"ok":true,"announced":["main"]}
//! {"ok":true,"reloaded":true}
//! {"ok":false,"error":"..."}
//! ```
//!
//! Who may do what: anyone who can connect (root and the socket's group)
//! may read; `announce` and `reload` change things and need uid 0, taken
//! from `SO_PEERCRED`, not from anything the client says. The server
//! refuses others itself, so the daemon never sees those requests.
//!
//! Bounds, so that no client can wedge the daemon: the request line must
//! arrive within [`IO_TIMEOUT`] (a slowloris or half-open client is
//! dropped), the answer must be taken within [`IO_TIMEOUT`] (a client that
//! never reads cannot block a thread for ever), the daemon must answer
//! within [`REPLY_TIMEOUT`] ("daemon busy" otherwise), and at most
//! [`MAX_CLIENTS`] connections are served at once. When all are taken, a
//! new client takes the place of the oldest one that has said nothing for
//! [`SILENT_EVICT`] (which is told why and closed), so that idle
//! connections cannot lock `status` out; when none is that silent, the new
//! client gets `{"ok":false,"error":"busy"}` at once.
//!
//! Threads: one accepts (in `poll`, with a socketpair to wake it for
//! shutdown), one per connection. Requests reach the daemon's main loop as
//! [`ControlCall`]s over an mpsc channel, with a waker so that a loop asleep
//! in epoll hears of them.

use std::collections::HashMap;
use std::fs;
use std::io::{ErrorKind, Read, Write};
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
use nix::unistd::{Gid, Group};
use serde::{Deserialize, Serialize};

use crate::status::Status;

/// Longest request line, without its `\n`.
pub const MAX_REQUEST: usize = 4096;
/// Longest response line the client accepts; a status with many pairs
/// is a few KiB, this only stops a runaway peer.
const MAX_RESPONSE: usize = 16 << 20;
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

/// A request, as the client sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    /// Everything [`Status`] holds.
    Status,
    /// The status as Prometheus text.
    Metrics,
    /// Announce one pair's addresses now, or every pair's.
    Announce {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pair: Option<String>,
    },
    /// Read the configuration file again.
    Reload,
}

impl Request {
    /// Whether the request changes anything, and so needs root.
    pub fn needs_root(&self) -> bool {
        matches!(self, Request::Announce { .. } | Request::Reload)
    }

    /// The command's name on the wire.
    pub fn command(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Metrics => "metrics",
            Request::Announce { .. } => "announce",
            Request::Reload => "reload",
        }
    }
}

/// A response. On the wire: `{"ok":true,"<kind>":...}` or
/// `{"ok":false,"error":"..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "WireResponse", into = "WireResponse")]
pub enum Response {
    Status(Box<Status>),
    Metrics(String),
    /// The pairs that announced.
    Announced(Vec<String>),
    Reloaded,
    Error(String),
}

/// [`Response`] as it is written: one flat object, so that a shell script
/// can test `.ok` and read one field.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireResponse {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<Box<Status>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metrics: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    announced: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reloaded: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl From<Response> for WireResponse {
    fn from(response: Response) -> Self {
        let mut wire = WireResponse {
            ok: true,
            status: None,
            metrics: None,
            announced: None,
            reloaded: None,
            error: None,
        };
        match response {
            Response::Status(status) => wire.status = Some(status),
            Response::Metrics(text) => wire.metrics = Some(text),
            Response::Announced(pairs) => wire.announced = Some(pairs),
            Response::Reloaded => wire.reloaded = Some(true),
            Response::Error(message) => {
                wire.ok = false;
                wire.error = Some(message);
            }
        }
        wire
    }
}

impl TryFrom<WireResponse> for Response {
    type Error = String;

    fn try_from(wire: WireResponse) -> Result<Self, String> {
        if !wire.ok {
            return Ok(Response::Error(
                wire.error
                    .unwrap_or_else(|| "failed (no reason given)".into()),
            ));
        }
        match wire {
            WireResponse {
                status: Some(status),
                metrics: None,
                announced: None,
                reloaded: None,
                error: None,
                ..
            } => Ok(Response::Status(status)),
            WireResponse {
                status: None,
                metrics: Some(text),
                announced: None,
                reloaded: None,
                error: None,
                ..
            } => Ok(Response::Metrics(text)),
            WireResponse {
                status: None,
                metrics: None,
                announced: Some(pairs),
                reloaded: None,
                error: None,
                ..
            } => Ok(Response::Announced(pairs)),
            WireResponse {
                status: None,
                metrics: None,
                announced: None,
                reloaded: Some(true),
                error: None,
                ..
            } => Ok(Response::Reloaded),
            _ => Err(
                "a successful response needs exactly one of `status`, `metrics`, \
                      `announced` or `reloaded: true`"
                    .into(),
            ),
        }
    }
}

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

/// Parses one request line (without its `\n`) as the server does; the
/// error is the message the client gets back. Untrusted input: any bytes
/// up to [`MAX_REQUEST`] long (fuzzed by `fuzz/fuzz_targets/control_request.rs`).
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(line).map_err(|_| "request is not UTF-8".to_owned())?;
    serde_json::from_str(text.trim()).map_err(|e| {
        format!("bad request: {e}; expected one JSON object such as {{\"command\":\"status\"}}")
    })
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

fn response_line(response: &Response) -> Vec<u8> {
    // Serialising our own types into memory cannot fail; should it ever,
    // the client still gets a valid line.
    let mut line = serde_json::to_vec(response)
        .unwrap_or_else(|_| br#"{"ok":false,"error":"internal error"}"#.to_vec());
    line.push(b'\n');
    line
}

/// How reading a line ended.
enum Line {
    /// Up to (not including) the `\n`.
    Complete(Vec<u8>),
    /// EOF after some bytes but no `\n` (a half-closed client).
    Eof(Vec<u8>),
    /// EOF before any byte.
    Empty,
    /// More than the limit without a `\n`.
    TooLong,
}

/// Reads one line of at most `limit` bytes, all of it by `deadline`: a
/// per-read timeout alone would let a client trickle a byte at a time.
fn read_line(mut stream: &UnixStream, limit: usize, deadline: Instant) -> std::io::Result<Line> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        // One byte past the limit tells "exactly at the limit" from "over".
        let want = (limit + 1 - buf.len()).min(chunk.len());
        let n = match stream.read(&mut chunk[..want]) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(if buf.is_empty() {
                Line::Empty
            } else {
                Line::Eof(buf)
            });
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            if end > limit {
                return Ok(Line::TooLong);
            }
            buf.truncate(end);
            return Ok(Line::Complete(buf));
        }
        if buf.len() > limit {
            return Ok(Line::TooLong);
        }
    }
}

/// `write_all` that gives up at `deadline` rather than per write.
fn write_all_by(
    mut stream: &UnixStream,
    mut data: &[u8],
    deadline: Instant,
) -> std::io::Result<()> {
    while !data.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        stream.set_write_timeout(Some(left))?;
        match stream.write(data) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Socket timeouts surface as `WouldBlock` (EAGAIN) on Linux.
fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Sends `request` to the daemon at `path` and returns its answer; a
/// daemon's refusal is `Ok(Response::Error(..))`. `timeout` bounds the
/// whole exchange.
pub fn request(path: &Path, request: &Request, timeout: Duration) -> Result<Response> {
    let deadline = Instant::now() + timeout;
    let stream = UnixStream::connect(path).map_err(|e| connect_error(path, &e))?;
    let mut line = serde_json::to_vec(request).context("cannot encode the request")?;
    line.push(b'\n');
    // A server that turns us away ("busy") may close before it reads the
    // request, failing the write; its answer is still there to read.
    let sent = write_all_by(&stream, &line, deadline);
    if let Err(e) = &sent {
        if is_timeout(e) {
            bail!(
                "the daemon at {} did not take the request within {timeout:?}",
                path.display()
            );
        }
    }
    let answer = match (read_line(&stream, MAX_RESPONSE, deadline), sent) {
        (Ok(Line::Complete(line) | Line::Eof(line)), _) => line,
        (_, Err(e)) => bail!(
            "cannot send the request to {}: {}",
            path.display(),
            describe(&e)
        ),
        (Ok(Line::Empty), Ok(())) => bail!(
            "the daemon at {} closed the connection without answering",
            path.display()
        ),
        (Ok(Line::TooLong), Ok(())) => {
            bail!("the daemon's answer is longer than {MAX_RESPONSE} bytes")
        }
        (Err(e), Ok(())) if is_timeout(&e) => bail!(
            "no answer from the daemon at {} within {timeout:?}",
            path.display()
        ),
        (Err(e), Ok(())) => bail!(
            "cannot read the answer from {}: {}",
            path.display(),
            describe(&e)
        ),
    };
    serde_json::from_slice(&answer).with_context(|| {
        format!(
            "the daemon's answer is not a valid response: {}",
            String::from_utf8_lossy(&answer[..answer.len().min(200)])
        )
    })
}

/// An OS error as `strerror` says it, without Rust's "(os error N)".
fn describe(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => Errno::from_raw(code).desc().to_owned(),
        None => e.to_string(),
    }
}

/// What a user should try, for each way connecting fails.
fn connect_error(path: &Path, e: &std::io::Error) -> anyhow::Error {
    let shown = path.display();
    match e.kind() {
        ErrorKind::NotFound | ErrorKind::ConnectionRefused => anyhow::anyhow!(
            "cannot connect to {shown}: is the daemon running? ({})",
            describe(e)
        ),
        ErrorKind::PermissionDenied => {
            let group = fs::metadata(path)
                .ok()
                .and_then(|meta| Group::from_gid(Gid::from_raw(meta.gid())).ok().flatten())
                .map_or_else(|| crate::config::DEFAULT_GROUP.to_owned(), |g| g.name);
            anyhow::anyhow!("permission denied on {shown}: are you root or in group {group}?")
        }
        _ => anyhow::anyhow!("cannot connect to {shown}: {}", describe(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_on_the_wire() {
        let cases = [
            (Request::Status, r#"{"command":"status"}"#),
            (Request::Metrics, r#"{"command":"metrics"}"#),
            (
                Request::Announce { pair: None },
                r#"{"command":"announce"}"#,
            ),
            (
                Request::Announce {
                    pair: Some("main".into()),
                },
                r#"{"command":"announce","pair":"main"}"#,
            ),
            (Request::Reload, r#"{"command":"reload"}"#),
        ];
        for (request, json) in cases {
            assert_eq!(serde_json::to_string(&request).unwrap(), json);
            assert_eq!(serde_json::from_str::<Request>(json).unwrap(), request);
        }
        assert!(Request::Reload.needs_root());
        assert!(Request::Announce { pair: None }.needs_root());
        assert!(!Request::Status.needs_root());
        assert!(!Request::Metrics.needs_root());
        for bad in [
            r#"{"command":"shutdown"}"#,
            r#"{"pair":"main"}"#,
            "[]",
            "status",
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parse_request_is_what_the_server_reads() {
        assert_eq!(
            parse_request(b" {\"command\":\"status\"}\r"),
            Ok(Request::Status)
        );
        assert_eq!(
            parse_request(br#"{"command":"announce","pair":"main"}"#),
            Ok(Request::Announce {
                pair: Some("main".into())
            })
        );
        assert_eq!(
            parse_request(b"\xff{}"),
            Err("request is not UTF-8".to_owned())
        );
        let e = parse_request(br#"{"command":"shutdown"}"#).unwrap_err();
        assert!(
            e.starts_with("bad request: unknown variant `shutdown`"),
            "{e}"
        );
        assert!(parse_request(b"").unwrap_err().starts_with("bad request: "));
    }

    #[test]
    fn responses_on_the_wire() {
        let cases = [
            (
                Response::Metrics("x 1\n".into()),
                r#"{"ok":true,"metrics":"x 1\n"}"#,
            ),
            (
                Response::Announced(vec!["main".into()]),
                r#"{"ok":true,"announced":["main"]}"#,
            ),
            (Response::Reloaded, r#"{"ok":true,"reloaded":true}"#),
            (Response::Error("no".into()), r#"{"ok":false,"error":"no"}"#),
        ];
        for (response, json) in cases {
            assert_eq!(serde_json::to_string(&response).unwrap(), json);
            assert_eq!(serde_json::from_str::<Response>(json).unwrap(), response);
        }
        let status = Status {
            version: "0.1.0".into(),
            pid: 1,
            uptime_secs: 1.5,
            pairs: vec![],
            refused: vec![],
        };
        let json = serde_json::to_string(&Response::Status(Box::new(status.clone()))).unwrap();
        assert!(
            json.starts_with(r#"{"ok":true,"status":{"version":"0.1.0","#),
            "{json}"
        );
        assert_eq!(
            serde_json::from_str::<Response>(&json).unwrap(),
            Response::Status(Box::new(status))
        );
        assert_eq!(
            serde_json::from_str::<Response>(r#"{"ok":false}"#).unwrap(),
            Response::Error("failed (no reason given)".into())
        );
        for bad in [
            r#"{"ok":true}"#,
            r#"{"ok":true,"reloaded":false}"#,
            r#"{"ok":true,"metrics":"","announced":[]}"#,
            r#"{"ok":true,"surprise":1}"#,
        ] {
            assert!(serde_json::from_str::<Response>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn os_errors_read_like_strerror() {
        let e = std::io::Error::from_raw_os_error(Errno::ENOENT as i32);
        assert_eq!(describe(&e), "No such file or directory");
    }
}
