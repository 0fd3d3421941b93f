//! UDP request/response: a closed-loop client in the peer namespace and a
//! kernel echo server written with `recvmmsg`/`sendmmsg` in the guest's.
//!
//! The client keeps `outstanding` requests in flight on one connected
//! socket, batching with `sendmmsg`/`recvmmsg` itself so that the server,
//! not the client, sets the pace. Each request carries its sequence number;
//! its latency is the time from the `sendmmsg` that sent it to the return
//! of the `recvmmsg` that brought its answer. A window with no answer for
//! [`LOSS_TIMEOUT`] counts as lost and is replaced.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};

use super::{pin_current_thread, pinned_in_ns, CpuTicks, Cpus, Summary};
use crate::lab::{Lab, Ns};
use crate::scenario::udp_probes;
use crate::sys::Mmsg;

/// Messages per `recvmmsg`/`sendmmsg`.
const BATCH: usize = 64;
/// Room for one datagram.
const DATAGRAM: usize = 2048;
/// A request with no answer for this long is lost.
const LOSS_TIMEOUT: Duration = Duration::from_millis(20);
/// How long the kernel echo server may run at most.
const SERVER_LIFETIME: Duration = Duration::from_secs(600);

/// One row's load.
#[derive(Debug, Clone)]
pub struct UdpLoad {
    /// UDP payload bytes (at least 8: the sequence number).
    pub size: usize,
    pub outstanding: usize,
    pub max_requests: u64,
    pub duration: Duration,
}

/// What one row measured.
#[derive(Debug, Clone)]
pub struct UdpResult {
    pub sent: u64,
    pub answered: u64,
    pub elapsed: Duration,
    pub latency: Option<Summary>,
    /// How busy the server's core was (0..=1).
    pub server_busy: f64,
}

impl UdpResult {
    /// Answered requests per second.
    pub fn rate(&self) -> f64 {
        self.answered as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Warm up (ARP, caches) and run `load` against the echo service at `to`
/// from the peer, client pinned to `cpus.client`.
pub fn measure(lab: &Lab, to: SocketAddr, load: &UdpLoad, cpus: Cpus) -> Result<UdpResult> {
    let warm = udp_probes(lab, to.ip(), 5, load.size)?;
    ensure!(warm > 0, "the echo service at {to} does not answer");
    let before = CpuTicks::read(cpus.server)?;
    let load = load.clone();
    let (sent, elapsed, latencies) =
        pinned_in_ns(lab, Ns::Peer, cpus.client, move || client(to, &load))?;
    let server_busy = CpuTicks::read(cpus.server)?.busy_since(&before);
    Ok(UdpResult {
        sent,
        answered: latencies.len() as u64,
        elapsed,
        latency: Summary::of(latencies),
        server_busy,
    })
}

/// The closed-loop client; returns requests sent, the time from the first
/// send to the last answer, and each answered request's latency.
fn client(to: SocketAddr, load: &UdpLoad) -> Result<(u64, Duration, Vec<Duration>)> {
    let socket = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0)))?;
    socket.connect(to)?;
    socket.set_read_timeout(Some(LOSS_TIMEOUT))?;
    let fd = socket.as_raw_fd();
    let size = load.size.max(8);
    let mut tx = Mmsg::new(BATCH, size);
    let mut rx = Mmsg::new(BATCH, DATAGRAM);
    let max = load.max_requests;
    // Send time of request `seq` in ns since `start` plus one; 0 once
    // answered or given up.
    let mut sent_at: Vec<u64> = Vec::with_capacity(max.min(4_000_000) as usize);
    let mut latencies = Vec::with_capacity(sent_at.capacity());
    let mut in_flight = 0usize;
    let mut oldest = 0usize;
    let start = Instant::now();
    let deadline = start + load.duration;
    let mut last_answer = start;
    loop {
        if Instant::now() < deadline {
            let room = (max - sent_at.len() as u64).min(BATCH as u64) as usize;
            let want = (load.outstanding - in_flight).min(room);
            if want > 0 {
                for i in 0..want {
                    let seq = (sent_at.len() + i) as u64;
                    tx.slot(i)[..8].copy_from_slice(&seq.to_le_bytes());
                }
                let at = start.elapsed().as_nanos() as u64 + 1;
                let n = tx.send(fd, want, |_| size, false)?;
                sent_at.extend(std::iter::repeat_n(at, n));
                in_flight += n;
            }
        }
        if in_flight == 0 {
            break;
        }
        match rx.recv(fd, BATCH, false) {
            Ok(n) => {
                let now = Instant::now();
                let now_ns = (now - start).as_nanos() as u64 + 1;
                for i in 0..n {
                    let data = rx.received(i);
                    let Some(seq) = data.get(..8) else { continue };
                    let seq = u64::from_le_bytes(seq.try_into().expect("8 bytes")) as usize;
                    if let Some(slot) = sent_at.get_mut(seq).filter(|s| **s != 0) {
                        latencies.push(Duration::from_nanos(now_ns - *slot));
                        *slot = 0;
                        in_flight -= 1;
                        last_answer = now;
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                // Nothing for LOSS_TIMEOUT: the whole window is lost.
                sent_at[oldest..].iter_mut().for_each(|s| *s = 0);
                oldest = sent_at.len();
                in_flight = 0;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("recvmmsg"),
        }
        ensure!(
            Instant::now() < deadline + Duration::from_secs(5),
            "the UDP client did not drain within 5 s of its deadline"
        );
    }
    Ok((sent_at.len() as u64, last_answer - start, latencies))
}

/// A kernel UDP echo server on its own thread in the guest namespace,
/// pinned to one CPU, answering with `sendmmsg` what `recvmmsg` brought.
pub struct KernelEcho {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<u64>>,
}

impl KernelEcho {
    /// Bind `addr` in the guest namespace and serve until [`Self::stop`].
    pub fn start(lab: &Lab, addr: SocketAddr, cpu: usize) -> Result<KernelEcho> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let flag = stop.clone();
        let thread = lab.spawn_in(Ns::Guest, move || -> Result<u64> {
            let socket = (|| -> Result<UdpSocket> {
                pin_current_thread(cpu)?;
                let socket = UdpSocket::bind(addr).with_context(|| format!("binding {addr}"))?;
                socket.set_read_timeout(Some(Duration::from_millis(50)))?;
                Ok(socket)
            })();
            let socket = match socket {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow!("{e:#}")));
                    return Err(e);
                }
            };
            serve_echo(socket.as_raw_fd(), &flag)
        })?;
        ready_rx
            .recv()
            .context("the kernel echo server died while starting")??;
        Ok(KernelEcho { stop, thread })
    }

    /// Stop the server; returns how many datagrams it echoed.
    pub fn stop(self) -> Result<u64> {
        self.stop.store(true, Ordering::Release);
        self.thread
            .join()
            .map_err(|_| anyhow!("the kernel echo server panicked"))?
    }
}

fn serve_echo(fd: RawFd, stop: &AtomicBool) -> Result<u64> {
    let mut msgs = Mmsg::new(BATCH, DATAGRAM);
    let mut echoed = 0u64;
    let deadline = Instant::now() + SERVER_LIFETIME;
    while !stop.load(Ordering::Acquire) && Instant::now() < deadline {
        let n = match msgs.recv(fd, BATCH, true) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => return Err(e).context("recvmmsg"),
        };
        echoed += msgs.echo(fd, n)? as u64;
    }
    Ok(echoed)
}
