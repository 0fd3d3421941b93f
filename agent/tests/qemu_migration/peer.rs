//! Tools run in the peer namespace: ping, the bridge FDB watch, announce capture, TCP echo.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};
use vfailover::capture::{self, Announce};
use vfailover::lab::netstat;
use vfailover::scenario::{longest_stall, Stall};
use vfailover_netstack::mac::MacAddr;

use crate::net::Net;
use crate::{unique, Result, GUEST_KERNEL_IP, MAC, STACK_IP};

pub struct Pinger {
    pub child: Child,
    pub out: PathBuf,
}

impl Pinger {
    pub fn start(net: &Net, target: &str, secs: u32) -> Pinger {
        let out = net.dir.join(format!("ping-{}.txt", unique()));
        let f = File::create(&out).unwrap();
        let child = Command::new("ip")
            .args([
                "netns", "exec", &net.peer, "ping", "-D", "-n", "-i", "0.01", "-W", "1",
            ])
            .args(["-w", &secs.to_string(), target])
            .stdout(f)
            .stderr(Stdio::null())
            .spawn()
            .expect("ping");
        Pinger { child, out }
    }

    /// Stop and summarise: (replies, highest seq, longest gap between replies).
    pub fn finish(mut self) -> PingStats {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT);
        let _ = self.child.wait();
        let text = fs::read_to_string(&self.out).unwrap_or_default();
        let mut replies: Vec<(f64, u64)> = Vec::new();
        for l in text.lines() {
            let Some(ts) = l.strip_prefix('[').and_then(|r| r.split(']').next()) else {
                continue;
            };
            let Some(seq) = l
                .split_whitespace()
                .find_map(|w| w.strip_prefix("icmp_seq="))
            else {
                continue;
            };
            if let (Ok(ts), Ok(seq)) = (ts.parse::<f64>(), seq.parse::<u64>()) {
                replies.push((ts, seq));
            }
        }
        let mut gap = 0.0f64;
        let mut gap_at = 0.0f64;
        for w in replies.windows(2) {
            if w[1].0 - w[0].0 > gap {
                gap = w[1].0 - w[0].0;
                gap_at = w[0].0;
            }
        }
        let sent = replies.iter().map(|r| r.1).max().unwrap_or(0);
        PingStats {
            replies: replies.len() as u64,
            sent,
            longest_gap: Duration::from_secs_f64(gap),
            gap_start_unix: gap_at,
        }
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

#[derive(Debug)]
pub struct PingStats {
    pub replies: u64,
    pub sent: u64,
    pub longest_gap: Duration,
    #[allow(dead_code)]
    pub gap_start_unix: f64,
}

/// FDB changes of the guest's MAC as `bridge monitor fdb` reports them, stamped on arrival.
pub struct FdbWatch {
    pub child: Child,
    pub moves: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl FdbWatch {
    pub fn start(net: &Net) -> FdbWatch {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &net.host, "bridge", "monitor", "fdb"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("bridge monitor fdb");
        let out = child.stdout.take().unwrap();
        let moves: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let m = moves.clone();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if !line.starts_with(MAC) {
                    continue;
                }
                let port = line
                    .split_whitespace()
                    .skip_while(|w| *w != "dev")
                    .nth(1)
                    .unwrap_or("?")
                    .to_string();
                let mut g = m.lock().unwrap();
                // The same port reported again is a refresh, not a move.
                if g.last().map(|(_, p)| p != &port).unwrap_or(true) {
                    g.push((Instant::now(), port));
                }
            }
        });
        FdbWatch { child, moves }
    }

    pub fn moves(&self) -> Vec<(Instant, String)> {
        self.moves.lock().unwrap().clone()
    }
}

impl Drop for FdbWatch {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// What the peer saw of announcements on its `eth0` ([`vfailover::capture`]).
#[derive(Debug, Default)]
pub struct Announces {
    /// Gratuitous ARPs for the stack's address (the agent's), from the guest's MAC.
    pub agent_garp: Vec<Instant>,
    /// Gratuitous ARPs for the guest kernel's own address, from the guest's MAC.
    pub kernel_garp: usize,
    /// RARP from the guest's MAC (QEMU's self-announce).
    pub rarp: Vec<Instant>,
    /// Unsolicited neighbour advertisements from the guest's MAC (the guest kernel).
    pub na: usize,
}

/// Capture in the peer namespace until `stop` is set (at most 300 s).
pub fn capture_announces(net: &Net, stop: Arc<AtomicBool>) -> JoinHandle<Result<Announces>> {
    let h = net.in_peer(move || {
        capture::capture_until("eth0", Duration::from_secs(300), &stop)
            .map_err(|e| format!("capture: {e:#}"))
    });
    thread::spawn(move || {
        let seen = h
            .join()
            .map_err(|_| "capture panicked".to_string())?
            .and_then(|r| r)?;
        Ok(announces(&seen))
    })
}

/// When the peer's TCP took a retransmission timeout (`TcpExt: TCPTimeouts` in its namespace,
/// read every 5 ms), until `stop` is set (at most 300 s).
pub fn watch_peer_rtos(net: &Net, stop: Arc<AtomicBool>) -> JoinHandle<Result<Vec<Instant>>> {
    let h = net.in_peer(move || -> Result<Vec<Instant>> {
        netstat::watch_tcp_timeouts(&stop, Duration::from_millis(5), Duration::from_secs(300))
            .map_err(|e| format!("peer RTOs: {e:#}"))
    });
    thread::spawn(move || {
        h.join()
            .map_err(|_| "RTO watch panicked".to_string())?
            .and_then(|r| r)
    })
}

fn announces(seen: &[(Instant, Announce)]) -> Announces {
    let mac: MacAddr = MAC.parse().unwrap();
    let kernel: Ipv4Addr = GUEST_KERNEL_IP.parse().unwrap();
    let mut a = Announces::default();
    for &(at, announce) in seen {
        match announce {
            Announce::GratuitousArp { mac: m, ip } if m == mac => {
                if ip == STACK_IP {
                    a.agent_garp.push(at);
                } else if ip == kernel {
                    a.kernel_garp += 1;
                }
            }
            Announce::Rarp { mac: m } if m == mac => a.rarp.push(at),
            Announce::UnsolicitedNa { mac: m, .. } if m == mac => a.na += 1,
            _ => {}
        }
    }
    a
}

/// A paced TCP stream through the stack's echo service, checked byte for byte.
pub struct Echo {
    pub handle: JoinHandle<std::result::Result<Result<EchoReport>, String>>,
}

#[derive(Debug)]
pub struct EchoReport {
    pub bytes: u64,
    pub sent_sha: String,
    pub echoed_sha: String,
    pub took: Duration,
    /// Every wait of 2 ms or more for echoed bytes: from the
    /// later of the previous echoed bytes and the write of the awaited byte
    /// to its arrival. The pacing's own pauses, with nothing outstanding,
    /// do not count.
    pub stalls: Vec<Stall>,
}

impl EchoReport {
    /// The longest stall overlapping `from..to`.
    pub fn longest_stall(&self, from: Instant, to: Instant) -> Option<Duration> {
        longest_stall(&self.stalls, from, to)
    }
}

impl Echo {
    pub fn start(net: &Net, bytes: u64, pace: Duration) -> Echo {
        let handle = net.in_peer(move || -> Result<EchoReport> {
            let t = Instant::now();
            let addr = SocketAddrV4::new(STACK_IP, 7);
            let s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(10))
                .map_err(|e| format!("connect {addr}: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(60))).ok();
            s.set_write_timeout(Some(Duration::from_secs(60))).ok();
            let mut rd = s.try_clone().map_err(|e| e.to_string())?;
            // When each chunk's write began, by its first byte's offset.
            let writes: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
            let written = writes.clone();
            let reader = thread::spawn(move || -> Result<(u64, String, Vec<Stall>)> {
                let mut h = Sha256::new();
                let mut got = 0u64;
                let mut buf = vec![0u8; 64 << 10];
                let mut last = Instant::now();
                let mut stalls = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(240);
                while got < bytes {
                    if Instant::now() > deadline {
                        return Err(format!("echo: {got} of {bytes} bytes back in 240 s"));
                    }
                    let n = rd
                        .read(&mut buf)
                        .map_err(|e| format!("echo read after {got} bytes: {e}"))?;
                    if n == 0 {
                        return Err(format!("echo: closed after {got} of {bytes} bytes"));
                    }
                    let now = Instant::now();
                    let sent_at = written
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .iter()
                        .rev()
                        .find(|(offset, _)| *offset <= got)
                        .map(|(_, at)| *at);
                    let from = sent_at.map_or(last, |at| at.max(last));
                    if now.saturating_duration_since(from) >= Duration::from_millis(2) {
                        stalls.push(Stall { from, to: now });
                    }
                    last = now;
                    h.update(&buf[..n]);
                    got += n as u64;
                }
                Ok((got, hex(&h.finalize()), stalls))
            });
            let mut w = &s;
            let mut h = Sha256::new();
            let chunk = 16u64 << 10;
            let chunks = bytes.div_ceil(chunk);
            let mut rng = 0x2545_f491_4f6c_dd1du64;
            for i in 0..chunks {
                let len = chunk.min(bytes - i * chunk) as usize;
                let data: Vec<u8> = (0..len)
                    .map(|_| {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        rng as u8
                    })
                    .collect();
                h.update(&data);
                writes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((i * chunk, Instant::now()));
                w.write_all(&data)
                    .map_err(|e| format!("echo write at chunk {i}: {e}"))?;
                // Paced: the stream spans `pace`, so it crosses the whole migration.
                let due = t + pace.mul_f64((i + 1) as f64 / chunks as f64);
                if let Some(d) = due.checked_duration_since(Instant::now()) {
                    thread::sleep(d);
                }
            }
            let sent_sha = hex(&h.finalize());
            let (got, echoed_sha, stalls) =
                reader.join().map_err(|_| "reader panicked".to_string())??;
            Ok(EchoReport {
                bytes: got,
                sent_sha,
                echoed_sha,
                took: t.elapsed(),
                stalls,
            })
        });
        Echo { handle }
    }

    pub fn finish(self) -> Result<EchoReport> {
        self.handle
            .join()
            .map_err(|_| "echo panicked".to_string())??
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
