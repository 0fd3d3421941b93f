//! One-flow TCP bulk throughput: the peer writes into a discard service
//! (the stack's `tcp-discard`, or a kernel one in the guest namespace) for
//! a fixed time, half-closes, and waits for the server's FIN; throughput is
//! the bytes written over the time to that FIN, so everything written has
//! been received. [`KernelTcp`] also echoes, for the kernel's failover run
//! ([`super::resend::kernel_stalls`]).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::{pin_current_thread, pinned_in_ns, CpuTicks, Cpus};
use crate::lab::{Lab, Ns, PEER_IF, PRIMARY, PRIMARY_FAR, STANDBY, STANDBY_FAR, TOR_DST_PORT};
use crate::lab::{TOR_PEER_PORT, TOR_SRC_PORT, UPLINK};

/// How long the server may take to acknowledge the end of the stream.
const DRAIN: Duration = Duration::from_secs(10);
/// How long the kernel TCP server may run at most.
const SERVER_LIFETIME: Duration = Duration::from_secs(600);

/// What one row measured.
#[derive(Debug, Clone)]
pub struct TcpResult {
    pub bytes: u64,
    pub elapsed: Duration,
    /// How busy the server's core was (0..=1).
    pub server_busy: f64,
}

impl TcpResult {
    pub fn gbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64().max(1e-9) / 1e9
    }
}

/// Stream into the discard service at `to` from the peer for `duration`
/// (at most `max_bytes`), client pinned to `cpus.client`.
pub fn measure(
    lab: &Lab,
    to: SocketAddr,
    duration: Duration,
    max_bytes: u64,
    cpus: Cpus,
) -> Result<TcpResult> {
    let before = CpuTicks::read(cpus.server)?;
    let (bytes, elapsed) = pinned_in_ns(lab, Ns::Peer, cpus.client, move || {
        client(to, duration, max_bytes)
    })?;
    let server_busy = CpuTicks::read(cpus.server)?.busy_since(&before);
    Ok(TcpResult {
        bytes,
        elapsed,
        server_busy,
    })
}

fn client(to: SocketAddr, duration: Duration, max_bytes: u64) -> Result<(u64, Duration)> {
    let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(5))
        .with_context(|| format!("connecting to {to}"))?;
    stream.set_write_timeout(Some(DRAIN))?;
    stream.set_read_timeout(Some(DRAIN))?;
    let buf = vec![0xa5u8; 256 * 1024];
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed() < duration && bytes < max_bytes {
        let n = stream
            .write(&buf)
            .with_context(|| format!("writing to {to} after {bytes} bytes"))?;
        bytes += n as u64;
    }
    stream.shutdown(Shutdown::Write)?;
    let mut sink = [0u8; 64];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => bail!("the discard service at {to} sent data"),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("waiting for the discard service's FIN"),
        }
    }
    Ok((bytes, start.elapsed()))
}

/// What a [`KernelTcp`] server does with the bytes it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serve {
    Discard,
    /// Writes them back.
    Echo,
}

/// A kernel TCP server on its own thread in the guest namespace, pinned to
/// one CPU; it serves one connection at a time until stopped.
pub struct KernelTcp {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<u64>>,
}

impl KernelTcp {
    pub fn start(lab: &Lab, addr: SocketAddr, cpu: usize, serve: Serve) -> Result<KernelTcp> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let thread = lab.spawn_in(Ns::Guest, move || -> Result<u64> {
            let listener = (|| -> Result<TcpListener> {
                pin_current_thread(cpu)?;
                let l = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
                l.set_nonblocking(true)?;
                Ok(l)
            })();
            let listener = match listener {
                Ok(l) => {
                    let _ = ready_tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow!("{e:#}")));
                    return Err(e);
                }
            };
            serve_connections(&listener, &flag, serve)
        })?;
        ready_rx
            .recv()
            .context("the kernel TCP server died while starting")??;
        Ok(KernelTcp { stop, thread })
    }

    /// Stop the server; returns the bytes it received in all.
    pub fn stop(self) -> Result<u64> {
        self.stop.store(true, Ordering::Release);
        self.thread
            .join()
            .map_err(|_| anyhow!("the kernel TCP server panicked"))?
    }
}

fn serve_connections(listener: &TcpListener, stop: &AtomicBool, serve: Serve) -> Result<u64> {
    let deadline = Instant::now() + SERVER_LIFETIME;
    let mut total = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    while !stop.load(Ordering::Acquire) && Instant::now() < deadline {
        let mut conn = match listener.accept() {
            Ok((conn, _)) => conn,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            Err(e) => return Err(e).context("accept"),
        };
        conn.set_nonblocking(false)?;
        conn.set_read_timeout(Some(DRAIN))?;
        // An echo's client that stops reading must not hold the server forever.
        conn.set_write_timeout(Some(DRAIN))?;
        loop {
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    total += n as u64;
                    if serve == Serve::Echo && conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // A client that vanished ends its connection, not the server.
                Err(_) => break,
            }
        }
    }
    Ok(total)
}

/// Turn TSO, GSO and GRO off on every veth of the lab on the way from
/// the peer to the guest (and on the standby's, for symmetry).
pub fn offloads_off(lab: &Lab) -> Result<()> {
    let src = lab.primary_host().unwrap_or(Ns::Src);
    let links: [(Ns, &str); 10] = [
        (Ns::Peer, PEER_IF),
        (Ns::Tor, TOR_PEER_PORT),
        (Ns::Tor, TOR_SRC_PORT),
        (Ns::Tor, TOR_DST_PORT),
        (Ns::Src, UPLINK),
        (Ns::Dst, UPLINK),
        (src, PRIMARY_FAR),
        (lab.standby_host(), STANDBY_FAR),
        (Ns::Guest, PRIMARY),
        (Ns::Guest, STANDBY),
    ];
    for (ns, ifname) in links {
        lab.exec(
            ns,
            &[
                "ethtool", "-K", ifname, "tso", "off", "gso", "off", "gro", "off",
            ],
        )
        .with_context(|| format!("offloads off on {ns}:{ifname}"))?;
    }
    Ok(())
}
