//! `vfailover lab`: the real daemon through unplug → migrate → replug in
//! the namespace [`lab`](crate::lab), watched from the peer.
//!
//! It builds the lab, starts `vfailover run` in the guest namespace with a
//! real config ([`Agent`]), and from the peer drives a TCP echo stream
//! ([`GatedStream`]), UDP echo probes every [`PROBE_INTERVAL`] and a
//! capture of announce frames. While the stream runs it unplugs the
//! primary, migrates the standby to the other host and plugs a new primary
//! in there, polling the daemon's status over its control socket for a live
//! status line. At the end it prints a [`Report`] and, if asked, draws the
//! timeline as SVG ([`plot`]).
//!
//! Ctrl-C and SIGTERM only set a flag (no unwinding from a handler); every
//! loop here polls it, and the error it turns into drops, in order, the
//! peer's traffic (aborted and joined), the daemon (SIGTERM, then SIGKILL)
//! and the lab (its namespaces deleted). A second Ctrl-C exits at once;
//! the next run's [`Lab::cleanup_stale`] removes what that leaves.

mod plot;
mod report;

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::capture::{self, Announce};
use crate::lab::agent::{default_pair, Agent};
use crate::lab::{
    netstat, wait_for_loss, Lab, LabOptions, Ns, GUEST_KERNEL_V4, PEER_IF, PRIMARY, STACK_V4,
};
use crate::scenario::{GatedStream, StreamEnd, ECHO_PORT};
use crate::status::PairStatus;
use report::{Mark, Probe, Report, Sample};

/// How often the peer sends a UDP echo probe.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(10);
/// A probe answered later than this counts as lost.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// An upper bound for the whole run (probing, capturing), whatever happens.
const RUN_LIMIT: Duration = Duration::from_secs(600);
/// How often the daemon's status is sampled for the timeline.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// How long the capture goes on after the replug: the agent announces on
/// QEMU's schedule, 5 rounds within about 0.9 s, from the first migration
/// signal (the standby's carrier back, or the replug).
const ANNOUNCE_WINDOW: Duration = Duration::from_millis(1500);
/// How often the peer's TCP retransmission timeouts are read: the times
/// the report puts them at are this late at most (and the scheduler).
const RTO_POLL: Duration = Duration::from_millis(5);
/// How long the daemon gets to switch path after a step.
const SWITCH_TIMEOUT: Duration = Duration::from_secs(10);

/// What `vfailover lab` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// Bytes to stream through the stack's TCP echo service.
    pub bytes: u64,
    /// Open the standby with AF_PACKET (`standby_mode = "packet"`) instead
    /// of AF_XDP.
    pub standby_packet: bool,
    /// Whether the standby claims VIRTIO_NET_F_GUEST_ANNOUNCE (then the
    /// agent, `announce = "auto"`, leaves announcing to the device).
    pub guest_announce: bool,
    /// Whether the stack lets the peer use SACK (`tcp_sack`).
    pub tcp_sack: bool,
    /// Where to draw the timeline (SVG), if anywhere.
    pub plot: Option<PathBuf>,
}

/// Run the lab; an error if anything failed, the echo was not byte-exact
/// or the run was interrupted.
pub fn run(opts: &Options) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        // The first signal sets `stop`; a second one, with `stop` set,
        // exits at once. Order matters: the conditional shutdown must be
        // registered first so that it sees the flag before it is set.
        signal_hook::flag::register_conditional_shutdown(signal, 1, stop.clone())?;
        signal_hook::flag::register(signal, stop.clone())?;
    }
    let removed = Lab::cleanup_stale()?;
    if !removed.is_empty() {
        println!("removed stale lab namespaces: {}", removed.join(", "));
    }
    let lab = Lab::create(LabOptions {
        fdb_ageing: Duration::from_secs(300),
        mac: None,
    })?;
    let mut pair = default_pair();
    if opts.standby_packet {
        pair.push_str("standby_mode = \"packet\"\n");
    }
    if !opts.tcp_sack {
        pair.push_str("tcp_sack = false\n");
    }
    let bin = std::env::current_exe().context("finding our own executable")?;
    let mut agent = Agent::start(&lab, &bin, opts.guest_announce, &pair)?;
    println!(
        "lab {} (MAC {}), agent pid {} in {}, config and log in {}",
        lab.prefix(),
        lab.mac(),
        agent.pid().unwrap_or_default(),
        lab.ns_name(Ns::Guest),
        agent.dir().display()
    );
    let paired = agent.wait_for_path("primary")?;
    println!(
        "pair {}: primary {} ({}), standby {} ({}), guest announce {}, announce policy {}",
        paired.name,
        link_name(&paired.primary),
        link_mode(&paired.primary),
        link_name(&paired.standby),
        link_mode(&paired.standby),
        match paired.guest_announce {
            Some(true) => "on",
            Some(false) => "off",
            None => "unknown",
        },
        paired.announce_policy
    );
    if lab.ping(Ns::Peer, GUEST_KERNEL_V4.into(), 2)? {
        println!("the guest kernel still answers ping on {PRIMARY} with the XDP filter attached");
    } else {
        println!("warning: the guest kernel's own address on {PRIMARY} does not answer ping");
    }

    let result = drive(&lab, &agent, opts, &stop);
    // Stop the daemon before judging, so its exit is part of the verdict.
    let exit = agent.stop();
    let report = match result {
        Ok(report) => report,
        Err(_) if stop.load(Ordering::Acquire) => {
            // The agent is stopped; `lab` is dropped on the way out, which
            // removes the namespaces.
            bail!("interrupted: the daemon was stopped and the lab is being removed");
        }
        Err(e) => {
            let log = agent.log();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            eprintln!("the agent's log ends:");
            for line in tail.into_iter().rev() {
                eprintln!("  {line}");
            }
            return Err(e);
        }
    };
    drop(agent);
    lab.teardown()?;
    print!("{}", report.render());
    if let Some(path) = &opts.plot {
        std::fs::write(path, plot::svg(&report))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("timeline: {}", path.display());
    }
    let exit = exit?;
    if !exit.success() {
        bail!("the daemon exited with {exit} on SIGTERM");
    }
    if !report.byte_exact() {
        bail!("the echoed stream differs from what was sent");
    }
    Ok(())
}

/// Announce frames with their arrival times.
type Frames = Vec<(Instant, Announce)>;

/// What the peer saw, once its traffic is done.
struct Observed {
    stream: StreamEnd,
    probes: Vec<Probe>,
    frames: Frames,
    peer_rtos: Vec<Instant>,
}

/// The peer's traffic: the stream, the prober, the capture and the watch on
/// its TCP's RTOs. Dropping it stops them all and joins their threads, so no socket in a lab
/// namespace outlives the lab.
struct Traffic {
    stream: Option<GatedStream>,
    stop: Arc<AtomicBool>,
    /// Probes the prober has given up on so far, for the status line.
    lost: Arc<AtomicU64>,
    prober: Option<JoinHandle<Result<Vec<Probe>>>>,
    capture: Option<JoinHandle<Result<Frames>>>,
    /// When the peer's TCP took a retransmission timeout.
    rtos: Option<JoinHandle<Result<Vec<Instant>>>>,
}

impl Traffic {
    fn start(lab: &Lab, bytes: u64) -> Result<Traffic> {
        let stop = Arc::new(AtomicBool::new(false));
        let lost = Arc::new(AtomicU64::new(0));
        let mut traffic = Traffic {
            stream: None,
            stop: stop.clone(),
            lost: lost.clone(),
            prober: None,
            capture: None,
            rtos: None,
        };
        let flag = stop.clone();
        traffic.capture = Some(lab.spawn_in(Ns::Peer, move || {
            capture::capture_until(PEER_IF, RUN_LIMIT, &flag)
        })?);
        let flag = stop.clone();
        traffic.prober = Some(lab.spawn_in(Ns::Peer, move || {
            probe(STACK_V4.into(), PROBE_INTERVAL, &flag, &lost)
        })?);
        let flag = stop.clone();
        traffic.rtos = Some(lab.spawn_in(Ns::Peer, move || {
            netstat::watch_tcp_timeouts(&flag, RTO_POLL, RUN_LIMIT)
        })?);
        traffic.stream = Some(GatedStream::start(lab, bytes, 3)?);
        Ok(traffic)
    }

    fn stream(&self) -> &GatedStream {
        self.stream.as_ref().expect("the stream runs until finish")
    }

    /// Wait for the stream's end (it must have finished) and stop the
    /// prober, the capture and the RTO watch; returns the stream's digests
    /// and duration, the probes, the frames captured and the peer's RTOs.
    fn finish(mut self) -> Result<Observed> {
        let stream = self.stream.take().expect("finish once").finish();
        self.stop.store(true, Ordering::Release);
        let probes = join(self.prober.take(), "prober")?;
        let frames = join(self.capture.take(), "capture")?;
        let peer_rtos = join(self.rtos.take(), "RTO watch")?;
        Ok(Observed {
            stream: stream?,
            probes,
            frames,
            peer_rtos,
        })
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        if let Some(stream) = self.stream.take() {
            stream.abort();
        }
        self.stop.store(true, Ordering::Release);
        let _ = join(self.prober.take(), "prober");
        let _ = join(self.capture.take(), "capture");
        let _ = join(self.rtos.take(), "RTO watch");
    }
}

fn join<T>(handle: Option<JoinHandle<Result<T>>>, what: &str) -> Result<T> {
    handle
        .ok_or_else(|| anyhow!("the {what} was not started"))?
        .join()
        .map_err(|_| anyhow!("the {what} thread panicked"))?
}

/// The run itself, from the first byte of the stream to the last frame
/// captured.
fn drive(lab: &Lab, agent: &Agent, opts: &Options, stop: &AtomicBool) -> Result<Report> {
    let mut watch = Watch::new(agent, stop);
    let traffic = Traffic::start(lab, opts.bytes)?;
    watch.mark(Mark::Start)?;

    // Unplug at ¼ of the stream, with an rtnetlink listener in the guest
    // to time the kernel's event against the daemon's switch.
    traffic
        .stream()
        .wait_for_step_with(1, || watch.tick(&traffic))?;
    let listener = lab.spawn_in(Ns::Guest, || wait_for_loss(PRIMARY))?;
    let unplug_at = SystemTime::now();
    watch.mark(Mark::Unplug)?;
    lab.unplug()?;
    let event_at = listener
        .join()
        .map_err(|_| anyhow!("the rtnetlink listener panicked"))??;
    watch.wait_for_path("standby", &traffic)?;
    traffic.stream().step_done();

    // Migrate at ½: the standby's far end moves to the destination host.
    traffic
        .stream()
        .wait_for_step_with(2, || watch.tick(&traffic))?;
    watch.mark(Mark::Migrate)?;
    lab.migrate()?;
    traffic.stream().step_done();

    // Replug at ¾: a new primary on the destination host.
    traffic
        .stream()
        .wait_for_step_with(3, || watch.tick(&traffic))?;
    let replug_at = SystemTime::now();
    watch.mark(Mark::Replug)?;
    lab.replug()?;
    watch.wait_for_path("primary", &traffic)?;
    traffic.stream().step_done();

    // The rest of the stream, then long enough for a whole announce
    // schedule to reach the capture.
    let replugged = watch.at(Mark::Replug).unwrap_or_else(Instant::now);
    loop {
        watch.tick(&traffic)?;
        if traffic.stream().is_finished() && replugged.elapsed() >= ANNOUNCE_WINDOW {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    watch.mark(Mark::End)?;
    watch.end_line();
    let Observed {
        stream,
        probes,
        frames,
        peer_rtos,
    } = traffic.finish()?;
    let fin = agent.pair()?;
    Ok(Report {
        bytes: opts.bytes,
        duration: stream.duration,
        sent_sha256: stream.sent_sha256,
        echoed_sha256: stream.echoed_sha256,
        stalls: stream.stalls,
        guest_announce: opts.guest_announce,
        mac: lab.mac(),
        t0: watch.t0,
        t0_unix: watch.t0_unix,
        samples: watch.samples,
        marks: watch.marks,
        peer_rtos,
        switches: watch.switches,
        unplug_at: unix_secs(unplug_at),
        unplug_event_at: event_at.map(unix_secs),
        replug_at: unix_secs(replug_at),
        probes,
        frames,
        fin,
    })
}

/// Polls the daemon's status: samples for the timeline, every switch, the
/// live status line; and the stop flag.
struct Watch<'a> {
    agent: &'a Agent,
    stop: &'a AtomicBool,
    t0: Instant,
    t0_unix: f64,
    samples: Vec<Sample>,
    marks: Vec<(Mark, Instant)>,
    switches: Vec<crate::status::SwitchStatus>,
    last: Option<PairStatus>,
    last_line: Option<Instant>,
    tty: bool,
}

impl<'a> Watch<'a> {
    fn new(agent: &'a Agent, stop: &'a AtomicBool) -> Watch<'a> {
        Watch {
            agent,
            stop,
            t0: Instant::now(),
            t0_unix: unix_secs(SystemTime::now()),
            samples: Vec::new(),
            marks: Vec::new(),
            switches: Vec::new(),
            last: None,
            last_line: None,
            tty: std::io::stdout().is_terminal(),
        }
    }

    fn at(&self, mark: Mark) -> Option<Instant> {
        self.marks
            .iter()
            .find(|(m, _)| *m == mark)
            .map(|(_, at)| *at)
    }

    /// Check the stop flag and the run limit; sample if one is due; redraw
    /// the status line if due.
    fn tick(&mut self, traffic: &Traffic) -> Result<()> {
        if self.stop.load(Ordering::Acquire) {
            self.end_line();
            bail!("interrupted");
        }
        if self.t0.elapsed() > RUN_LIMIT {
            bail!("the run took longer than {RUN_LIMIT:?}");
        }
        let due = self
            .samples
            .last()
            .is_none_or(|s| self.t0.elapsed().as_secs_f64() - s.t >= SAMPLE_EVERY.as_secs_f64());
        if due {
            self.sample()?;
        }
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(1)
        };
        if self.last_line.is_none_or(|at| at.elapsed() >= every) {
            self.last_line = Some(Instant::now());
            self.status_line(traffic);
        }
        Ok(())
    }

    fn sample(&mut self) -> Result<()> {
        let pair = self.agent.pair()?;
        let previous = self.samples.last();
        // While a link is absent its counters are not shown; the path's
        // totals carry on where they were (they are per path, not per device).
        let bytes = |link: &Option<crate::status::LinkStatus>, before: Option<u64>| {
            link.as_ref().map_or(before.unwrap_or(0), |l| {
                l.counters.rx_bytes + l.counters.tx_bytes
            })
        };
        let sample = Sample {
            t: self.t0.elapsed().as_secs_f64(),
            path: pair.path.clone(),
            primary_bytes: bytes(&pair.primary, previous.map(|s| s.primary_bytes)),
            standby_bytes: bytes(&pair.standby, previous.map(|s| s.standby_bytes)),
        };
        if let Some(switch) = &pair.last_switch {
            // The same switch shows up again once its first frame went out
            // (`first_tx_after_us` filled in): update it, do not add it.
            match self.switches.last_mut() {
                Some(last) if last.at_unix == switch.at_unix => *last = switch.clone(),
                _ => self.switches.push(switch.clone()),
            }
        }
        self.samples.push(sample);
        self.last = Some(pair);
        Ok(())
    }

    /// Note a step, with a fresh sample, and say so on its own line.
    fn mark(&mut self, mark: Mark) -> Result<()> {
        self.sample()?;
        let now = Instant::now();
        self.marks.push((mark, now));
        if mark != Mark::Start && mark != Mark::End {
            self.end_line();
            println!(
                "{:>7.2} s  {}",
                (now - self.t0).as_secs_f64(),
                mark.describe()
            );
        }
        Ok(())
    }

    /// Poll (ticking) until the daemon's path is `path`.
    fn wait_for_path(&mut self, path: &str, traffic: &Traffic) -> Result<()> {
        let deadline = Instant::now() + SWITCH_TIMEOUT;
        loop {
            self.tick(traffic)?;
            self.sample()?;
            if self.last.as_ref().is_some_and(|p| p.path == path) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the daemon did not switch to the {path} within {SWITCH_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn status_line(&mut self, traffic: &Traffic) {
        let Some(pair) = &self.last else { return };
        let (primary, standby) = report::rates_at(&self.samples, 0.5);
        let line = format!(
            "{:>7.2} s  path {:<7}  primary {:>5.1} MB/s  standby {:>5.1} MB/s  switches {}  probes lost {}  streamed {} MiB",
            self.t0.elapsed().as_secs_f64(),
            pair.path,
            primary,
            standby,
            pair.switches,
            traffic.lost.load(Ordering::Relaxed),
            traffic.stream.as_ref().map_or(0, GatedStream::written) >> 20,
        );
        let mut out = std::io::stdout().lock();
        // On a terminal one line, rewritten in place (\r, then clear to
        // the end of the line); in a log, a line a second.
        let _ = if self.tty {
            write!(out, "\r{line}\x1b[K")
        } else {
            writeln!(out, "{line}")
        };
        let _ = out.flush();
    }

    /// End the rewritten status line, so the next output starts clean.
    fn end_line(&mut self) {
        if self.tty && self.last_line.take().is_some() {
            println!();
        }
    }
}

/// Send a UDP echo probe to `to` every `interval` from this thread's
/// namespace until `stop` (or [`RUN_LIMIT`]); then wait [`PROBE_TIMEOUT`]
/// for the last answers. Each probe carries its sequence number.
/// `lost` counts the probes given up on as it goes.
fn probe(
    to: IpAddr,
    interval: Duration,
    stop: &AtomicBool,
    lost: &AtomicU64,
) -> Result<Vec<Probe>> {
    let any: IpAddr = match to {
        IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind(SocketAddr::new(any, 0)).context("binding the prober")?;
    socket.connect(SocketAddr::new(to, ECHO_PORT))?;
    let start = Instant::now();
    let mut probes: Vec<Probe> = Vec::new();
    let mut stopped_at: Option<Instant> = None;
    let mut buf = [0u8; 64];
    // Probes before this one are judged (answered or counted lost).
    let mut judged = 0;
    loop {
        let now = Instant::now();
        while probes
            .get(judged)
            .is_some_and(|p| now - p.sent > PROBE_TIMEOUT)
        {
            if probes[judged].rtt.is_none() {
                lost.fetch_add(1, Ordering::Relaxed);
            }
            judged += 1;
        }
        if stopped_at.is_none() && (stop.load(Ordering::Acquire) || now - start > RUN_LIMIT) {
            stopped_at = Some(now);
        }
        // Done once nothing sent can still be answered in time.
        if stopped_at.is_some_and(|at| now - at >= PROBE_TIMEOUT) {
            break;
        }
        let next = start + interval * probes.len() as u32;
        if stopped_at.is_none() && now >= next {
            let seq = probes.len() as u32;
            let mut msg = [0x5au8; 32];
            msg[..4].copy_from_slice(&seq.to_be_bytes());
            // A send error (no route, neighbour unresolved) is a lost probe.
            let _ = socket.send(&msg);
            probes.push(Probe {
                sent: Instant::now(),
                rtt: None,
            });
            continue;
        }
        let wait = if stopped_at.is_some() {
            Duration::from_millis(10)
        } else {
            next.saturating_duration_since(now)
        };
        socket.set_read_timeout(Some(wait.max(Duration::from_micros(100))))?;
        match socket.recv(&mut buf) {
            Ok(n) if n == 32 && buf[4..32].iter().all(|b| *b == 0x5a) => {
                let seq = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
                if let Some(probe) = probes.get_mut(seq) {
                    let rtt = probe.sent.elapsed();
                    if probe.rtt.is_none() && rtt <= PROBE_TIMEOUT {
                        probe.rtt = Some(rtt);
                    }
                }
            }
            // Timeouts, and ICMP errors (unreachable) that a connected
            // socket reports here: nothing to record.
            _ => {}
        }
    }
    Ok(probes)
}

fn link_name(link: &Option<crate::status::LinkStatus>) -> &str {
    link.as_ref().map_or("-", |l| l.ifname.as_str())
}

fn link_mode(link: &Option<crate::status::LinkStatus>) -> &str {
    link.as_ref().map_or("absent", |l| l.mode.as_str())
}

fn unix_secs(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
