//! A scripted failover run over the [`lab`](crate::lab): the guest's stack on
//! `vf0` + `virtio0`, a TCP echo stream and UDP probes from the peer, and
//! unplug → migrate → replug while the stream runs.
//!
//! Used by `vfailover lab` (which prints the [`Report`]) and by the
//! integration tests (which assert on it), so both see the same run.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};
use smoltcp::wire::IpCidr;
use vfailover_netstack::datapath::{DatapathHandle, DatapathOptions};
use vfailover_netstack::link::packet::PacketLink;
use vfailover_netstack::link::xdp::{XdpConfig, XdpLink};
use vfailover_netstack::link::{Link, LinkMode};
use vfailover_netstack::resend::ResendLimits;
use vfailover_netstack::stack::{Buffers, ServiceConfig, ServiceKind, Stack, StackConfig};
use vfailover_netstack::stats::{Path, Stats};

use crate::lab::{wait_for_loss, Lab, Ns, PEER_V4, PREFIX_V4, PREFIX_V6, PRIMARY, STACK_V4};
use crate::lab::{STACK_V6, STANDBY};

/// The port of the stack's echo services (TCP and UDP).
pub const ECHO_PORT: u16 = 7;
/// A transfer making no progress for this long has failed.
const STALL: Duration = Duration::from_secs(20);

/// How the guest's standby is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StandbyKind {
    /// AF_XDP, as for the primary (virtio-net takes XDP programs).
    Xdp,
    /// AF_PACKET with a socket filter (a standby that refuses XDP).
    Packet,
}

/// The userspace stack of the lab's guest, running in the guest namespace.
pub struct GuestStack {
    datapath: DatapathHandle,
    addresses: Vec<IpAddr>,
}

impl GuestStack {
    /// Open both links in the guest namespace and start the datapath there.
    pub fn start(lab: &Lab, standby: StandbyKind) -> Result<GuestStack> {
        let mac = lab.mac();
        let addresses = vec![IpAddr::V4(STACK_V4), IpAddr::V6(STACK_V6)];
        let config = StackConfig {
            mac,
            addresses: vec![
                IpCidr::new(STACK_V4.into(), PREFIX_V4),
                IpCidr::new(STACK_V6.into(), PREFIX_V6),
            ],
            gateway_v4: Some(PEER_V4),
            gateway_v6: None,
            services: vec![
                ServiceConfig {
                    kind: ServiceKind::TcpEcho,
                    port: ECHO_PORT,
                },
                ServiceConfig {
                    kind: ServiceKind::UdpEcho,
                    port: ECHO_PORT,
                },
                ServiceConfig {
                    kind: ServiceKind::TcpDiscard,
                    port: 9,
                },
            ],
            mtu: 1500,
            buffers: Buffers::default(),
            resend: ResendLimits::default(),
            tcp_sack: true,
        };
        let addrs = addresses.clone();
        let datapath = lab.in_ns(Ns::Guest, move || -> Result<DatapathHandle> {
            let standby: Box<dyn Link> = match standby {
                StandbyKind::Xdp => Box::new(open_xdp(STANDBY, &addrs)?),
                StandbyKind::Packet => {
                    Box::new(PacketLink::open(STANDBY, &addrs).context("opening the standby")?)
                }
            };
            let primary = open_xdp(PRIMARY, &addrs)?;
            let stack = Stack::new(&config, Some(standby), Some(Box::new(primary)))?;
            DatapathHandle::spawn(stack, DatapathOptions::default(), None)
                .context("starting the datapath")
        })??;
        Ok(GuestStack {
            datapath,
            addresses,
        })
    }

    pub fn datapath(&self) -> &DatapathHandle {
        &self.datapath
    }

    /// A copy of the datapath's counters.
    pub fn stats(&self) -> Result<Stats> {
        Ok(self.datapath.call(|s| s.device().stats())?)
    }

    pub fn path(&self) -> Result<Path> {
        Ok(self.datapath.call(|s| s.device().path())?)
    }

    /// The modes the primary and standby links run in now.
    pub fn modes(&self) -> Result<(Option<LinkMode>, Option<LinkMode>)> {
        Ok(self.datapath.call(|s| {
            let d = s.device();
            (d.primary().map(|l| l.mode()), d.standby().map(|l| l.mode()))
        })?)
    }

    /// Open the (new) `vf0` in the guest and make it the primary.
    pub fn attach_primary(&self, lab: &Lab) -> Result<()> {
        let addrs = self.addresses.clone();
        let link = lab.in_ns(Ns::Guest, move || open_xdp(PRIMARY, &addrs))??;
        Ok(self.datapath.attach_primary(Box::new(link))?)
    }

    /// Send the announce frames, then the unacknowledged TCP segments
    /// again (what the agent does on a migration signal).
    pub fn announce(&self) -> Result<usize> {
        Ok(self.datapath.call(|s| {
            let sent = s.announce(false);
            s.device_mut().resend_unacked();
            sent
        })?)
    }
}

fn open_xdp(ifname: &str, addresses: &[IpAddr]) -> Result<XdpLink> {
    let config = XdpConfig {
        ifname: ifname.to_owned(),
        addresses: addresses.to_vec(),
        ..XdpConfig::default()
    };
    XdpLink::open(&config).with_context(|| format!("opening AF_XDP on {ifname}"))
}

/// Send `count` UDP probes to the stack's echo service at `to` from the
/// peer, each waiting up to 200 ms for its answer; returns how many came
/// back intact.
pub fn udp_probes(lab: &Lab, to: IpAddr, count: u32, size: usize) -> Result<u32> {
    lab.in_ns(Ns::Peer, move || -> Result<u32> {
        let any: IpAddr = match to {
            IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
            IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
        };
        let socket = UdpSocket::bind(SocketAddr::new(any, 0))?;
        socket.connect(SocketAddr::new(to, ECHO_PORT))?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut answered = 0;
        let mut buf = vec![0u8; size.max(8) + 64];
        for i in 0..count {
            let mut probe = vec![0xa5u8; size.max(8)];
            probe[..4].copy_from_slice(&i.to_be_bytes());
            socket.send(&probe)?;
            // Skip late answers to earlier probes; the deadline bounds the loop.
            let deadline = Instant::now() + Duration::from_millis(200);
            while Instant::now() < deadline {
                match socket.recv(&mut buf) {
                    Ok(n) if buf[..n] == probe[..] => {
                        answered += 1;
                        break;
                    }
                    Ok(_) => continue,
                    Err(_) => break,
                }
            }
        }
        Ok(answered)
    })?
}

/// One step of the scripted migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Unplug,
    Migrate,
    Replug,
}

/// The counters when a step began.
#[derive(Debug, Clone)]
pub struct StepRecord {
    pub step: Step,
    pub at: SystemTime,
    /// Bytes the peer had written when the step began.
    pub written: u64,
    pub stats_before: Stats,
    /// The longest time the peer waited for echoed bytes from this step
    /// to the next (or the end); `None` if it never waited 2 ms.
    pub longest_stall: Option<Duration>,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub bytes: u64,
    pub duration: Duration,
    pub sent_sha256: String,
    pub echoed_sha256: String,
    pub steps: Vec<StepRecord>,
    pub final_stats: Stats,
    /// From starting `ip link del vf0` to the first rtnetlink sign of it
    /// (`RTM_NEWLINK` going down, or `RTM_DELLINK`), as a separate listener
    /// in the guest saw it: process start plus the kernel's work.
    pub unplug_to_event: Option<Duration>,
    /// From that event to the datapath's switch to the standby: the agent's
    /// reaction time. `None` if the datapath switched before the listener
    /// heard (it also learns from errors on use).
    pub event_to_switch: Option<Duration>,
    /// From that switch to the first frame sent on the standby.
    pub switch_to_first_standby_tx: Option<Duration>,
    /// Announce frames sent after the migration.
    pub announced: usize,
    pub modes: (Option<LinkMode>, Option<LinkMode>),
}

impl Report {
    pub fn byte_exact(&self) -> bool {
        self.sent_sha256 == self.echoed_sha256
    }
}

/// A time the peer waited for echoed bytes while it had bytes outstanding:
/// how long TCP stood still, from the peer's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall {
    /// The last echoed bytes before the wait (or the writer's return from
    /// a step gate, if everything had been echoed by then).
    pub from: Instant,
    /// The first echoed bytes after it.
    pub to: Instant,
}

impl Stall {
    pub fn length(&self) -> Duration {
        self.to - self.from
    }

    /// Whether any of it falls within `from..to`.
    pub fn overlaps(&self, from: Instant, to: Instant) -> bool {
        self.to > from && self.from < to
    }
}

/// Waits shorter than this are not kept: scheduling noise on a small
/// machine, far below anything a failover causes.
const MIN_STALL: Duration = Duration::from_millis(2);
/// At most this many stalls are kept (a memory bound, not a limit in practice).
const MAX_STALLS: usize = 100_000;

/// How a [`GatedStream`] ended.
#[derive(Debug, Clone)]
pub struct StreamEnd {
    pub sent_sha256: String,
    pub echoed_sha256: String,
    pub duration: Duration,
    /// Every wait of [`MIN_STALL`] or more for echoed bytes, in order.
    pub stalls: Vec<Stall>,
}

impl StreamEnd {
    pub fn byte_exact(&self) -> bool {
        self.sent_sha256 == self.echoed_sha256
    }

    /// The longest stall overlapping `from..to`, if any.
    pub fn longest_stall(&self, from: Instant, to: Instant) -> Option<Duration> {
        longest_stall(&self.stalls, from, to)
    }
}

/// The longest of `stalls` that overlaps `from..to`.
pub fn longest_stall(stalls: &[Stall], from: Instant, to: Instant) -> Option<Duration> {
    stalls
        .iter()
        .filter(|s| s.overlaps(from, to))
        .map(Stall::length)
        .max()
}

/// A TCP echo stream from the peer to an echo service (the stack's, or a
/// kernel one) that a driver moves through `steps` steps (unplug, migrate,
/// ...).
///
/// Step k (1-based) begins once k/(steps+1) of the stream is written; the
/// writer waits for it to be done before passing (k+½)/(steps+1). So each
/// step happens while data flows, and each part of the stream really
/// crosses the path that the step before it left in place.
pub struct GatedStream {
    bytes: u64,
    steps: usize,
    written: Arc<AtomicU64>,
    steps_done: Arc<AtomicUsize>,
    /// Set by [`GatedStream::abort`]; the writer checks it between writes.
    aborted: Arc<AtomicBool>,
    /// The connection, once open, so that an abort can shut it down and
    /// wake a reader or writer blocked in the kernel.
    socket: Arc<Mutex<Option<TcpStream>>>,
    thread: std::thread::JoinHandle<Result<(String, String, Vec<Stall>)>>,
    started: Instant,
}

impl GatedStream {
    /// A stream to the stack's echo service.
    pub fn start(lab: &Lab, bytes: u64, steps: usize) -> Result<GatedStream> {
        let stack_echo = SocketAddr::new(STACK_V4.into(), ECHO_PORT);
        GatedStream::start_to(lab, stack_echo, bytes, steps)
    }

    /// A stream to the echo service at `target`.
    pub fn start_to(
        lab: &Lab,
        target: SocketAddr,
        bytes: u64,
        steps: usize,
    ) -> Result<GatedStream> {
        let written = Arc::new(AtomicU64::new(0));
        let steps_done = Arc::new(AtomicUsize::new(0));
        let aborted = Arc::new(AtomicBool::new(false));
        let socket = Arc::new(Mutex::new(None));
        let started = Instant::now();
        let thread = {
            let progress = Progress {
                written: written.clone(),
                steps_done: steps_done.clone(),
                aborted: aborted.clone(),
                socket: socket.clone(),
                origin: started,
                resumed: Arc::new(AtomicU64::new(0)),
            };
            lab.spawn_in(Ns::Peer, move || {
                echo_stream(target, bytes, steps, &progress)
            })?
        };
        Ok(GatedStream {
            bytes,
            steps,
            written,
            steps_done,
            aborted,
            socket,
            thread,
            started,
        })
    }

    /// Wait until step `k` (1-based) may begin; returns the bytes written.
    pub fn wait_for_step(&self, k: usize) -> Result<u64> {
        self.wait_for_step_with(k, || Ok(()))
    }

    /// [`GatedStream::wait_for_step`], calling `tick` about every
    /// millisecond while waiting; an error from `tick` ends the wait (a
    /// caller's Ctrl-C, say).
    pub fn wait_for_step_with(
        &self,
        k: usize,
        mut tick: impl FnMut() -> Result<()>,
    ) -> Result<u64> {
        let threshold = self.bytes * k as u64 / (self.steps as u64 + 1);
        let mut last = (0, Instant::now());
        loop {
            let now = self.written.load(Ordering::Acquire);
            if now >= threshold {
                return Ok(now);
            }
            if self.thread.is_finished() {
                bail!("the stream ended before reaching {threshold} bytes");
            }
            if now != last.0 {
                last = (now, Instant::now());
            } else if last.1.elapsed() > STALL {
                bail!("the stream stalled at {now} bytes");
            }
            tick()?;
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    /// Bytes the peer has written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Whether the stream has ended (done or failed): [`GatedStream::finish`]
    /// will not block then.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Stop the stream now: shut its connection down (which wakes a
    /// blocked read or write) and wait for its threads.
    pub fn abort(self) {
        self.aborted.store(true, Ordering::Release);
        let socket = self.socket.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(socket) = socket.as_ref() {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
        drop(socket);
        let _ = self.thread.join();
    }

    /// Let the writer pass the gate of the step just done.
    pub fn step_done(&self) {
        self.steps_done.fetch_add(1, Ordering::Release);
    }

    /// Wait for the end: the SHA-256 of what was sent and of what came
    /// back, how long the stream ran and where it stalled.
    pub fn finish(self) -> Result<StreamEnd> {
        let (sent_sha256, echoed_sha256, stalls) = self
            .thread
            .join()
            .map_err(|_| anyhow!("the peer's stream thread panicked"))??;
        Ok(StreamEnd {
            sent_sha256,
            echoed_sha256,
            duration: self.started.elapsed(),
            stalls,
        })
    }
}

/// The longest stall after each step (see [`StepRecord::longest_stall`]).
pub type StepStalls = Vec<(Step, Option<Duration>)>;

/// The steps of a migration, in order.
pub const STEPS: [Step; 3] = [Step::Unplug, Step::Migrate, Step::Replug];

/// Drive `stream` (started with 3 steps) through [`STEPS`]: each step
/// begins at its gate, `act` does it (given the bytes written by then),
/// and the writer goes on once it is done. Returns how the stream ended and
/// each step's longest stall, from its beginning to the next step's (or the
/// end). `context` explains a stream that failed. On an error before the
/// end the stream is aborted (its threads joined).
pub fn run_steps(
    stream: GatedStream,
    context: impl Fn() -> String,
    mut act: impl FnMut(Step, u64) -> Result<()>,
) -> Result<(StreamEnd, StepStalls)> {
    let mut began = Vec::new();
    for (i, step) in STEPS.into_iter().enumerate() {
        let done = stream
            .wait_for_step(i + 1)
            .with_context(&context)
            .and_then(|written| {
                began.push(Instant::now());
                act(step, written).with_context(|| format!("step {step:?}"))
            });
        if let Err(e) = done {
            // A stream that ended on its own knows why: say it.
            return Err(match stream.is_finished() {
                true => match stream.finish() {
                    Err(why) => why.context(format!("{e:#}")),
                    Ok(_) => e,
                },
                false => {
                    stream.abort();
                    e
                }
            });
        }
        stream.step_done();
    }
    let end = stream.finish().with_context(&context)?;
    let ended = Instant::now();
    let stalls = STEPS
        .into_iter()
        .enumerate()
        .map(|(k, step)| {
            let until = began.get(k + 1).copied().unwrap_or(ended);
            (step, end.longest_stall(began[k], until))
        })
        .collect();
    Ok((end, stalls))
}

/// Run a TCP echo stream of `bytes` from the peer to the guest stack and
/// unplug, migrate (and announce) and replug at ¼, ½ and ¾ of it.
pub fn failover_transfer(lab: &Lab, guest: &GuestStack, bytes: u64) -> Result<Report> {
    let stream = GatedStream::start(lab, bytes, STEPS.len())?;
    let mut steps = Vec::new();
    let mut unplug_at = None;
    let mut event_at = None;
    let mut announced = 0;
    let (end, stalls) = run_steps(
        stream,
        || datapath_state(guest),
        |step, written| {
            let record = StepRecord {
                step,
                at: SystemTime::now(),
                written,
                stats_before: guest.stats()?,
                longest_stall: None,
            };
            match step {
                Step::Unplug => {
                    let listener = lab.spawn_in(Ns::Guest, || wait_for_loss(PRIMARY))?;
                    unplug_at = Some(record.at);
                    lab.unplug()?;
                    event_at = listener
                        .join()
                        .map_err(|_| anyhow!("the rtnetlink listener panicked"))??;
                }
                Step::Migrate => {
                    lab.migrate()?;
                    announced = guest.announce()?;
                }
                Step::Replug => {
                    lab.replug()?;
                    guest.attach_primary(lab)?;
                }
            }
            steps.push(record);
            Ok(())
        },
    )?;
    for (record, (_, stall)) in steps.iter_mut().zip(stalls) {
        record.longest_stall = stall;
    }
    let StreamEnd {
        sent_sha256,
        echoed_sha256,
        duration,
        ..
    } = end;
    let final_stats = guest.stats()?;
    let standby_switch = steps
        .get(1)
        .and_then(|migrate| migrate.stats_before.last_switch)
        .filter(|s| s.to == Path::Standby);
    Ok(Report {
        bytes,
        duration,
        sent_sha256,
        echoed_sha256,
        unplug_to_event: event_at
            .zip(unplug_at)
            .and_then(|(event, at)| event.duration_since(at).ok()),
        event_to_switch: standby_switch
            .zip(event_at)
            .and_then(|(s, event)| s.at.duration_since(event).ok()),
        switch_to_first_standby_tx: standby_switch.and_then(|s| s.first_tx_after),
        steps,
        final_stats,
        announced,
        modes: guest.modes()?,
    })
}

/// The datapath's path and counters, to explain a failed run.
fn datapath_state(guest: &GuestStack) -> String {
    let connections = guest.datapath.call(|s| s.connections());
    match guest.stats().and_then(|stats| Ok((guest.path()?, stats))) {
        Ok((path, stats)) => format!("datapath on path {path}: {stats:?}; {connections:?}"),
        Err(e) => format!("datapath unreachable: {e}"),
    }
}

/// Deterministic, incompressible test data.
fn fill_pattern(seed: &mut u64, buf: &mut [u8]) {
    for chunk in buf.chunks_mut(8) {
        // xorshift64
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
    }
}

/// What the writer shares with its [`GatedStream`].
struct Progress {
    written: Arc<AtomicU64>,
    steps_done: Arc<AtomicUsize>,
    aborted: Arc<AtomicBool>,
    socket: Arc<Mutex<Option<TcpStream>>>,
    /// The clock of `resumed`.
    origin: Instant,
    /// When the writer last went on after waiting at a step gate, in
    /// nanoseconds since `origin`: a wait for echoed bytes with nothing
    /// outstanding only starts to count then.
    resumed: Arc<AtomicU64>,
}

impl Progress {
    fn check_abort(&self) -> Result<()> {
        if self.aborted.load(Ordering::Acquire) {
            bail!("the stream was aborted");
        }
        Ok(())
    }
}

/// The peer's side: write `bytes` to the echo service at `target` from one
/// thread and read them back on another; returns both SHA-256 digests (hex)
/// and the reader's stalls.
fn echo_stream(
    target: SocketAddr,
    bytes: u64,
    steps: usize,
    progress: &Progress,
) -> Result<(String, String, Vec<Stall>)> {
    let stream = TcpStream::connect_timeout(&target, STALL)
        .with_context(|| format!("connecting to the echo service at {target}"))?;
    stream.set_read_timeout(Some(STALL))?;
    stream.set_write_timeout(Some(STALL))?;
    *progress.socket.lock().unwrap_or_else(|e| e.into_inner()) = Some(stream.try_clone()?);
    // An abort that came before the socket was shared found nothing to shut.
    progress.check_abort()?;
    let mut reader = stream.try_clone()?;
    let (written, origin, resumed) = (
        progress.written.clone(),
        progress.origin,
        progress.resumed.clone(),
    );
    let echoed = std::thread::spawn(move || -> Result<(String, Vec<Stall>)> {
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        let mut stalls = Vec::new();
        let mut last = Instant::now();
        let mut outstanding = true;
        while got < bytes {
            let n = reader
                .read(&mut buf)
                .with_context(|| format!("reading the echo after {got} bytes"))?;
            if n == 0 {
                bail!("the echo service closed the connection after {got} bytes");
            }
            let now = Instant::now();
            let from = if outstanding {
                last
            } else {
                last.max(origin + Duration::from_nanos(resumed.load(Ordering::Acquire)))
            };
            if now.saturating_duration_since(from) >= MIN_STALL && stalls.len() < MAX_STALLS {
                stalls.push(Stall { from, to: now });
            }
            hash.update(&buf[..n]);
            got += n as u64;
            last = now;
            outstanding = written.load(Ordering::Acquire) > got;
        }
        Ok((hex(&hash.finalize()), stalls))
    });
    let mut writer = stream;
    let mut hash = Sha256::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    while sent < bytes {
        // In halves of a part: step k begins at 2k halves and must be done
        // before the writer passes 2k+1.
        let halves = sent * 2 * (steps as u64 + 1) / bytes;
        let gate = (halves.saturating_sub(1) / 2).min(steps as u64);
        let waiting = Instant::now();
        let mut waited = false;
        while (progress.steps_done.load(Ordering::Acquire) as u64) < gate {
            progress.check_abort()?;
            if waiting.elapsed() > STALL {
                bail!("step {gate} did not finish within {STALL:?}");
            }
            std::thread::sleep(Duration::from_micros(200));
            waited = true;
        }
        if waited {
            let since = progress.origin.elapsed().as_nanos() as u64;
            progress.resumed.store(since, Ordering::Release);
        }
        progress.check_abort()?;
        let len = (bytes - sent).min(buf.len() as u64) as usize;
        fill_pattern(&mut seed, &mut buf[..len]);
        writer
            .write_all(&buf[..len])
            .with_context(|| format!("writing after {sent} bytes"))?;
        hash.update(&buf[..len]);
        sent += len as u64;
        progress.written.store(sent, Ordering::Release);
    }
    let sent_hash = hex(&hash.finalize());
    let (echoed_hash, stalls) = echoed
        .join()
        .map_err(|_| anyhow!("the reader thread panicked"))??;
    Ok((sent_hash, echoed_hash, stalls))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
