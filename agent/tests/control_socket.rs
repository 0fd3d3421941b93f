//! The control socket end to end: a real server on a socket in a temp dir,
//! a fake daemon loop answering its `ControlCall`s, real and raw clients.
//!
//! Tests that switch users need root; without root they are skipped with
//! a message, except under `CI=true`, where they fail.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::unistd::{Gid, Group};
use vfailover::control::{
    request, ControlCall, ControlServer, Peer, Request, Response, MAX_CLIENTS, MAX_REQUEST,
    SILENT_EVICT,
};
use vfailover::status::Status;

const NOBODY: u32 = 65534;
const TIMEOUT: Duration = Duration::from_secs(10);
const HELPER_ENV: &str = "VFAILOVER_CONTROL_TEST_HELPER";

fn status() -> Status {
    Status {
        version: "test".into(),
        pid: std::process::id(),
        uptime_secs: 1.0,
        pairs: vec![],
        refused: vec![],
    }
}

type Seen = Arc<Mutex<Vec<(Request, Peer)>>>;

/// A server with a fake daemon loop that answers everything at once.
struct Fixture {
    dir: tempfile::TempDir,
    server: Option<ControlServer>,
    seen: Seen,
    wakes: Arc<AtomicUsize>,
}

impl Fixture {
    fn new(group: Option<&str>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        // Others (uid 65534 in some tests) must reach the socket.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("run/vfailover.sock");
        let (calls, rx) = mpsc::channel();
        let seen: Seen = Arc::default();
        let wakes = Arc::new(AtomicUsize::new(0));
        let server = ControlServer::start(&path, group, calls, {
            let wakes = Arc::clone(&wakes);
            move || {
                wakes.fetch_add(1, Ordering::SeqCst);
            }
        })
        .unwrap();
        let daemon_seen = Arc::clone(&seen);
        thread::spawn(move || fake_daemon(&rx, &daemon_seen));
        Fixture {
            dir,
            server: Some(server),
            seen,
            wakes,
        }
    }

    fn path(&self) -> PathBuf {
        self.server.as_ref().unwrap().path().to_owned()
    }

    fn ask(&self, req: &Request) -> Response {
        request(&self.path(), req, TIMEOUT).unwrap()
    }
}

/// Answers every call until the server goes away.
fn fake_daemon(calls: &Receiver<ControlCall>, seen: &Seen) {
    for call in calls {
        seen.lock().unwrap().push((call.request.clone(), call.peer));
        let response = match &call.request {
            Request::Status => Response::Status(Box::new(status())),
            Request::Metrics => Response::Metrics(vfailover::status::render_prometheus(&status())),
            Request::Announce { pair } => {
                Response::Announced(vec![pair.clone().unwrap_or_else(|| "all".into())])
            }
            Request::Reload => Response::Reloaded,
        };
        call.respond(response);
    }
}

/// Sends raw bytes, optionally half-closes, returns everything read back.
fn raw(path: &Path, bytes: &[u8], half_close: bool) -> String {
    let mut stream = UnixStream::connect(path).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    // The server may close early (oversized request): a failed write is
    // fine as long as its answer arrives.
    let _ = stream.write_all(bytes);
    if half_close {
        stream.shutdown(Shutdown::Write).unwrap();
    }
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8(out).unwrap()
}

fn error_of(line: &str) -> String {
    match serde_json::from_str::<Response>(line.trim()) {
        Ok(Response::Error(e)) => e,
        other => panic!("expected an error response, got {other:?} from {line:?}"),
    }
}

fn assert_serving(fixture: &Fixture) {
    assert_eq!(
        fixture.ask(&Request::Status),
        Response::Status(Box::new(status()))
    );
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether a root-only test may run; under CI=true it must.
fn root_or_skip(test: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} needs root and CI=true: run the tests as root"
    );
    eprintln!("skipping {test}: needs root");
    false
}

/// Not a test of its own: the body of the child process that
/// `run_client_as` starts as another user. Without the variable it does
/// nothing.
#[test]
fn helper_client() {
    let Ok(spec) = std::env::var(HELPER_ENV) else {
        return;
    };
    let (path, req) = spec.split_once('\n').unwrap();
    let req: Request = serde_json::from_str(req).unwrap();
    match request(Path::new(path), &req, TIMEOUT) {
        Ok(response) => println!("HELPER-OK {}", serde_json::to_string(&response).unwrap()),
        Err(e) => println!("HELPER-ERR {e:#}"),
    }
}

/// Runs the client in a child process as `uid`/`gid` with no
/// supplementary groups (std drops them when root sets a uid) and returns
/// its `HELPER-...` line.
fn run_client_as(dir: &Path, uid: u32, gid: u32, path: &Path, req: &Request) -> String {
    // A copy the other user can surely execute, whatever the target dir's
    // permissions.
    let exe = dir.join("control-client");
    if !exe.exists() {
        std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let spec = format!(
        "{}\n{}",
        path.display(),
        serde_json::to_string(req).unwrap()
    );
    let output = Command::new(&exe)
        .args([
            "helper_client",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, spec)
        .uid(uid)
        .gid(gid)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    // The harness prints "test helper_client ... " before our line.
    stdout
        .lines()
        .find_map(|l| l.find("HELPER-").map(|at| &l[at..]))
        .unwrap_or_else(|| {
            panic!(
                "no answer from the helper: {stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
        .to_owned()
}

#[test]
fn every_command_round_trips() {
    let fixture = Fixture::new(None);
    assert_serving(&fixture);
    match fixture.ask(&Request::Metrics) {
        Response::Metrics(text) => assert!(text.contains("vfailover_uptime_seconds 1\n"), "{text}"),
        other => panic!("{other:?}"),
    }
    let announce = Request::Announce {
        pair: Some("main".into()),
    };
    if is_root() {
        assert_eq!(
            fixture.ask(&announce),
            Response::Announced(vec!["main".into()])
        );
        assert_eq!(
            fixture.ask(&Request::Announce { pair: None }),
            Response::Announced(vec!["all".into()])
        );
        assert_eq!(fixture.ask(&Request::Reload), Response::Reloaded);
    } else {
        let uid = nix::unistd::getuid().as_raw();
        assert_eq!(
            fixture.ask(&announce),
            Response::Error(format!("announce needs root (uid 0); you are uid {uid}"))
        );
    }
    let seen = fixture.seen.lock().unwrap();
    let me = Peer {
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        pid: i32::try_from(std::process::id()).unwrap(),
    };
    assert!(seen.iter().all(|(_, peer)| *peer == me), "{seen:?}");
    assert_eq!(seen[0].0, Request::Status);
    assert_eq!(fixture.wakes.load(Ordering::SeqCst), seen.len());
}

#[test]
fn socket_file_directory_mode_and_removal() {
    let fixture = Fixture::new(None);
    let path = fixture.path();
    let dir = std::fs::metadata(path.parent().unwrap()).unwrap();
    assert_eq!(dir.permissions().mode() & 0o777, 0o755);
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let mut fixture = fixture;
    fixture.server.take().unwrap().stop();
    assert!(!path.exists(), "stop left the socket file behind");
    let e = request(&path, &Request::Status, TIMEOUT)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!(
            "cannot connect to {}: is the daemon running? (No such file or directory)",
            path.display()
        )
    );
}

#[test]
fn garbage_gets_an_error_and_the_server_goes_on() {
    let fixture = Fixture::new(None);
    let path = fixture.path();
    for (garbage, expect) in [
        (&b"hello\n"[..], "bad request"),
        (b"\xff\xfe\xfd\n", "not UTF-8"),
        (
            b"{\"command\":\"shutdown\"}\n",
            "unknown variant `shutdown`",
        ),
        (b"{}\n", "missing field `command`"),
        (b"\n", "bad request"),
        (b"\0\0\0\n", "bad request"),
        (b"{\"command\":\"status\"\n", "bad request"),
    ] {
        let e = error_of(&raw(&path, garbage, false));
        assert!(e.contains(expect), "{garbage:?}: {e}");
        assert_serving(&fixture);
    }
    assert!(fixture
        .seen
        .lock()
        .unwrap()
        .iter()
        .all(|(r, _)| *r == Request::Status));
}

#[test]
fn oversized_requests_are_refused() {
    let fixture = Fixture::new(None);
    let path = fixture.path();
    let e = error_of(&raw(&path, &[b'x'; 64 << 10], false));
    assert!(
        e.contains(&format!("longer than {MAX_REQUEST} bytes")),
        "{e}"
    );
    assert_serving(&fixture);
    // The limit is on the line: exactly MAX_REQUEST bytes is fine, one more is not.
    let mut exact = br#"{"command":"status"}"#.to_vec();
    exact.resize(MAX_REQUEST, b' ');
    exact.push(b'\n');
    let answer = raw(&path, &exact, false);
    assert!(answer.starts_with(r#"{"ok":true,"status":"#), "{answer}");
    exact.insert(0, b' ');
    let e = error_of(&raw(&path, &exact, false));
    assert!(e.contains("longer than"), "{e}");
    assert_serving(&fixture);
}

#[test]
fn silent_client_is_dropped_and_others_are_served_meanwhile() {
    let fixture = Fixture::new(None);
    let path = fixture.path();
    let started = Instant::now();
    let silent = thread::spawn({
        let path = path.clone();
        move || {
            let mut stream = UnixStream::connect(&path).unwrap();
            stream.set_read_timeout(Some(TIMEOUT)).unwrap();
            let mut out = String::new();
            let _ = stream.read_to_string(&mut out);
            (out, started.elapsed())
        }
    });
    // Trickling bytes does not buy time either: the deadline is per line.
    let trickle = thread::spawn({
        let path = path.clone();
        move || {
            let mut stream = UnixStream::connect(&path).unwrap();
            let begun = Instant::now();
            while stream.write_all(b" ").is_ok() && begun.elapsed() < TIMEOUT {
                thread::sleep(Duration::from_millis(100));
            }
            begun.elapsed()
        }
    });
    thread::sleep(Duration::from_millis(200));
    let asked = Instant::now();
    assert_serving(&fixture);
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "blocked behind a silent client"
    );
    let (out, took) = silent.join().unwrap();
    assert!(
        error_of(&out).contains("no request line within 2 s"),
        "{out}"
    );
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let took = trickle.join().unwrap();
    assert!(
        took < Duration::from_secs(5),
        "trickling client kept for {took:?}"
    );
}

#[test]
fn half_closed_clients() {
    let fixture = Fixture::new(None);
    let path = fixture.path();
    // The request without its newline, then EOF: taken as the request.
    let answer = raw(&path, br#"{"command":"status"}"#, true);
    assert!(answer.starts_with(r#"{"ok":true,"status":"#), "{answer}");
    // EOF before any byte: nothing to answer, the connection just closes.
    assert_eq!(raw(&path, b"", true), "");
    // Garbage then EOF: an error.
    assert!(error_of(&raw(&path, b"{", true)).contains("bad request"));
    assert_serving(&fixture);
}

#[test]
fn hundred_concurrent_clients_are_answered_or_told_busy() {
    let fixture = Fixture::new(None);
    let path = fixture.path();
    let barrier = Arc::new(Barrier::new(100));
    let clients: Vec<_> = (0..100)
        .map(|_| {
            let (path, barrier) = (path.clone(), Arc::clone(&barrier));
            thread::spawn(move || {
                barrier.wait();
                request(&path, &Request::Status, TIMEOUT)
            })
        })
        .collect();
    let (mut served, mut busy) = (0, 0);
    for client in clients {
        match client.join().unwrap().unwrap() {
            Response::Status(_) => served += 1,
            Response::Error(e) if e == "busy" => busy += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(served + busy, 100);
    assert!(served >= 1);
    assert_serving(&fixture);
}

#[test]
fn client_beyond_the_limit_is_told_busy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vfailover.sock");
    let (calls, rx) = mpsc::channel::<ControlCall>();
    let server = ControlServer::start(&path, None, calls, || {}).unwrap();
    // The limit's worth of clients, each waiting for the daemon...
    let mut waiting: Vec<UnixStream> = (0..MAX_CLIENTS)
        .map(|_| {
            let mut stream = UnixStream::connect(&path).unwrap();
            stream.write_all(b"{\"command\":\"status\"}\n").unwrap();
            stream
        })
        .collect();
    let held: Vec<ControlCall> = (0..MAX_CLIENTS)
        .map(|_| rx.recv_timeout(Duration::from_secs(1)).unwrap())
        .collect();
    // ...so the next one is turned away at once, without reaching the daemon.
    let asked = Instant::now();
    assert_eq!(
        request(&path, &Request::Status, TIMEOUT).unwrap(),
        Response::Error("busy".into())
    );
    assert!(asked.elapsed() < Duration::from_millis(500));
    assert!(rx.try_recv().is_err());
    for call in held {
        call.respond(Response::Status(Box::new(status())));
    }
    for stream in &mut waiting {
        let mut out = String::new();
        stream.read_to_string(&mut out).unwrap();
        assert!(out.starts_with(r#"{"ok":true,"status":"#), "{out}");
    }
    // Served again once they are gone.
    let answering = thread::spawn(move || {
        let call = rx.recv().unwrap();
        call.respond(Response::Reloaded);
        rx
    });
    assert_eq!(
        request(&path, &Request::Status, TIMEOUT).unwrap(),
        Response::Reloaded
    );
    drop(answering.join().unwrap());
    server.stop();
}

#[test]
fn silent_clients_give_their_place_to_a_new_one() {
    let fixture = Fixture::new(None);
    let path = fixture.path();
    // Every place taken by clients that say nothing...
    let connected = Instant::now();
    let mut silent: Vec<UnixStream> = (0..MAX_CLIENTS)
        .map(|_| {
            let stream = UnixStream::connect(&path).unwrap();
            stream.set_read_timeout(Some(TIMEOUT)).unwrap();
            stream
        })
        .collect();
    // ...younger than SILENT_EVICT: a new client is told busy at once
    // (unless this box was too slow to ask while they were that young).
    let young = fixture.ask(&Request::Status);
    if connected.elapsed() < SILENT_EVICT {
        assert_eq!(young, Response::Error("busy".into()));
    } else {
        eprintln!("too slow to see the young silent clients kept: {young:?}");
    }
    // Older: a new client takes the oldest one's place and is served,
    // and that one is told why it was dropped.
    thread::sleep(SILENT_EVICT);
    let asked = Instant::now();
    assert!(matches!(fixture.ask(&Request::Status), Response::Status(_)));
    assert!(asked.elapsed() < Duration::from_millis(500));
    let mut dropped = String::new();
    silent[0].read_to_string(&mut dropped).unwrap();
    assert_eq!(
        error_of(&dropped),
        format!(
            "dropped: no request within {} ms while {MAX_CLIENTS} clients were connected",
            SILENT_EVICT.as_millis()
        )
    );
    // The others still hold their places and are answered when they ask.
    silent[1].write_all(b"{\"command\":\"status\"}\n").unwrap();
    let mut out = String::new();
    silent[1].read_to_string(&mut out).unwrap();
    assert!(out.starts_with(r#"{"ok":true,"status":"#), "{out}");
}

#[test]
fn daemon_that_does_not_answer_means_busy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vfailover.sock");
    let (calls, rx) = mpsc::channel::<ControlCall>();
    let server = ControlServer::start(&path, None, calls, || {}).unwrap();
    let asked = Instant::now();
    assert_eq!(
        request(&path, &Request::Status, TIMEOUT).unwrap(),
        Response::Error("daemon busy: no answer within 2 s".into())
    );
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    // A daemon that has gone away altogether.
    drop(rx);
    assert_eq!(
        request(&path, &Request::Status, TIMEOUT).unwrap(),
        Response::Error("the daemon is shutting down".into())
    );
    server.stop();
}

#[test]
fn stop_is_prompt_with_clients_connected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vfailover.sock");
    let (calls, rx) = mpsc::channel::<ControlCall>();
    let server = ControlServer::start(&path, None, calls, || {}).unwrap();
    let _silent = UnixStream::connect(&path).unwrap();
    let waiting = thread::spawn({
        let path = path.clone();
        move || request(&path, &Request::Status, TIMEOUT)
    });
    let _held = rx.recv_timeout(Duration::from_secs(1)).unwrap();
    let stopping = Instant::now();
    server.stop();
    assert!(
        stopping.elapsed() < Duration::from_secs(1),
        "{:?}",
        stopping.elapsed()
    );
    assert!(!path.exists());
    match waiting.join().unwrap() {
        Ok(Response::Error(e)) => assert_eq!(e, "the daemon is shutting down"),
        Ok(other) => panic!("{other:?}"),
        // Cut before the answer got out: also fine.
        Err(_) => {}
    }
}

#[test]
fn stale_socket_is_replaced_live_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vfailover.sock");
    // A dead daemon's leftover: a socket file nobody listens on.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let (calls, rx) = mpsc::channel();
    let seen = Seen::default();
    let server = ControlServer::start(&path, None, calls, || {}).unwrap();
    thread::spawn({
        let seen = Arc::clone(&seen);
        move || fake_daemon(&rx, &seen)
    });
    assert_eq!(
        request(&path, &Request::Status, TIMEOUT).unwrap(),
        Response::Status(Box::new(status()))
    );
    // A second daemon on the live socket is refused, and the first goes on.
    let (calls2, _rx2) = mpsc::channel();
    let e = ControlServer::start(&path, None, calls2, || {})
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        e,
        format!(
            "another vfailover daemon is already listening on {} (stop it first)",
            path.display()
        )
    );
    assert_eq!(
        request(&path, &Request::Status, TIMEOUT).unwrap(),
        Response::Status(Box::new(status()))
    );
    server.stop();

    // Something that is not a socket is never deleted.
    std::fs::write(&path, "precious").unwrap();
    let (calls3, _rx3) = mpsc::channel();
    let e = ControlServer::start(&path, None, calls3, || {})
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("exists and is not a socket"), "{e}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
}

#[test]
fn missing_group_keeps_roots_group() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vfailover.sock");
    let (calls, _rx) = mpsc::channel();
    let server =
        ControlServer::start(&path, Some("vfailover-no-such-group"), calls, || {}).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.gid(), nix::unistd::getegid().as_raw());
    server.stop();
}

/// The group the test user 65534 is in, by name.
fn nobody_group() -> String {
    Group::from_gid(Gid::from_raw(NOBODY))
        .unwrap()
        .expect("a group with gid 65534 (nogroup)")
        .name
}

#[test]
fn non_root_may_read_but_not_change() {
    if !root_or_skip("non_root_may_read_but_not_change") {
        return;
    }
    let group = nobody_group();
    let fixture = Fixture::new(Some(&group));
    let path = fixture.path();
    assert_eq!(std::fs::metadata(&path).unwrap().gid(), NOBODY);
    let dir = fixture.dir.path();

    let answer = run_client_as(dir, NOBODY, NOBODY, &path, &Request::Status);
    let json = answer
        .strip_prefix("HELPER-OK ")
        .unwrap_or_else(|| panic!("{answer}"));
    assert_eq!(
        serde_json::from_str::<Response>(json).unwrap(),
        Response::Status(Box::new(status()))
    );
    for req in [
        Request::Announce {
            pair: Some("main".into()),
        },
        Request::Reload,
    ] {
        let answer = run_client_as(dir, NOBODY, NOBODY, &path, &req);
        let expected = Response::Error(format!(
            "{} needs root (uid 0); you are uid {NOBODY}",
            req.command()
        ));
        assert_eq!(
            answer,
            format!("HELPER-OK {}", serde_json::to_string(&expected).unwrap())
        );
    }
    // The daemon saw the status request, from uid 65534, and nothing else.
    let seen = fixture.seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].0, Request::Status);
    assert_eq!((seen[0].1.uid, seen[0].1.gid), (NOBODY, NOBODY));
}

#[test]
fn outsider_is_told_about_permissions() {
    if !root_or_skip("outsider_is_told_about_permissions") {
        return;
    }
    // Socket in root's group: user 65534 may not connect at all.
    let fixture = Fixture::new(None);
    let path = fixture.path();
    let group = Group::from_gid(nix::unistd::getegid())
        .unwrap()
        .unwrap()
        .name;
    let answer = run_client_as(fixture.dir.path(), NOBODY, NOBODY, &path, &Request::Status);
    assert_eq!(
        answer,
        format!(
            "HELPER-ERR permission denied on {}: are you root or in group {group}?",
            path.display()
        )
    );
    assert!(fixture.seen.lock().unwrap().is_empty());
}
