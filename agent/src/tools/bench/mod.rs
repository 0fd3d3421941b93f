//! `vfailover bench`: the stack against the guest kernel, side by side, in
//! one run on the [`lab`](crate::lab)'s veths, written to a Markdown table.
//!
//! One run measures, in this order:
//!
//! 1. the kernel alone (no XDP program on `vf0`): UDP request/response
//!    against a recvmmsg/sendmmsg echo server ([`udp`]) and one-flow TCP
//!    into a discard server ([`tcp`]), both on the guest kernel's address;
//! 2. the stack ([`GuestStack`], datapath thread pinned) and, while the
//!    stack's filter sits on `vf0`, the kernel again: the same client
//!    against both, one after the other;
//! 3. TCP again with segmentation offloads off on every lab veth;
//! 4. unplug/replug cycles under UDP traffic ([`failover`]), the TCP resend
//!    ([`resend`]) and, once the stack is gone, the same failover run with
//!    the guest kernel's own TCP over the lab's failover stand-in;
//! 5. the daemon (`vfailover run`) in the guest namespace: idle CPU and
//!    memory, the same under load, and migration signal → first
//!    gratuitous ARP on the wire ([`agent`]).
//!
//! Core budget: the server side (the kernel echo/discard thread, or the
//! stack's datapath thread) is pinned with `sched_setaffinity` to the last
//! CPU, the client (in the peer namespace) to CPU 0. Softirq work of a
//! veth transmission runs on the sending CPU, so each side also carries the
//! kernel's forwarding of what it sends; the table reports how busy the
//! server's core was (from `/proc/stat`).
//!
//! Every sending loop is bounded by a request or byte count and a deadline;
//! all traffic stays inside the lab's namespaces.

pub mod agent;
pub mod failover;
pub mod report;
pub mod resend;
pub mod resend_cost;
pub mod tcp;
pub mod udp;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{ensure, Context, Result};
use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use vfailover_netstack::link::LinkMode;

use crate::lab::{Lab, LabOptions, Ns, GUEST_KERNEL_V4, STACK_V4};
use crate::scenario::{GuestStack, StandbyKind, ECHO_PORT};
use resend_cost::Workload;

/// The port of the stack's and the kernel's discard services.
pub const DISCARD_PORT: u16 = 9;

/// `vfailover bench`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Where to write the Markdown table.
    #[arg(long, default_value = "bench/RESULTS.md")]
    pub output: PathBuf,
    /// Seconds per UDP row (each row also stops after 2 million requests).
    #[arg(long, default_value_t = 4.0)]
    pub udp_seconds: f64,
    /// Requests in flight from the UDP client (closed loop).
    #[arg(long, default_value_t = 32)]
    pub outstanding: usize,
    /// Seconds per TCP row (each row also stops after 8 GiB).
    #[arg(long, default_value_t = 3.0)]
    pub tcp_seconds: f64,
    /// Unplug/replug cycles.
    #[arg(long, default_value_t = 50)]
    pub cycles: usize,
    /// Seconds the daemon's idle CPU is measured over.
    #[arg(long, default_value_t = 10.0)]
    pub idle_seconds: f64,
    /// Migrations whose announce latency is measured.
    #[arg(long, default_value_t = 5)]
    pub migrations: usize,
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub output: PathBuf,
    /// The `vfailover` binary, started as the daemon.
    pub agent_binary: PathBuf,
    pub udp_duration: Duration,
    pub udp_max_requests: u64,
    pub outstanding: usize,
    pub tcp_duration: Duration,
    pub tcp_max_bytes: u64,
    pub cycles: usize,
    pub idle: Duration,
    pub migrations: usize,
}

impl BenchOptions {
    fn from_args(args: BenchArgs) -> Result<BenchOptions> {
        let seconds = |s: f64, what: &str| {
            ensure!(s > 0.0 && s <= 60.0, "--{what} must be in (0, 60], not {s}");
            Ok(Duration::from_secs_f64(s))
        };
        ensure!(
            (1..=256).contains(&args.outstanding),
            "--outstanding must be in 1..=256"
        );
        ensure!(
            (1..=500).contains(&args.cycles),
            "--cycles must be in 1..=500"
        );
        ensure!(
            (1..=50).contains(&args.migrations),
            "--migrations must be in 1..=50"
        );
        Ok(BenchOptions {
            output: args.output,
            agent_binary: std::env::current_exe().context("finding the vfailover binary")?,
            udp_duration: seconds(args.udp_seconds, "udp-seconds")?,
            udp_max_requests: 2_000_000,
            outstanding: args.outstanding,
            tcp_duration: seconds(args.tcp_seconds, "tcp-seconds")?,
            tcp_max_bytes: 8 << 30,
            cycles: args.cycles,
            idle: seconds(args.idle_seconds, "idle-seconds")?,
            migrations: args.migrations,
        })
    }

    /// A run of a few seconds that goes through every code path (the smoke
    /// test's).
    pub fn quick(agent_binary: PathBuf, output: PathBuf) -> BenchOptions {
        BenchOptions {
            output,
            agent_binary,
            udp_duration: Duration::from_millis(300),
            udp_max_requests: 2_000,
            outstanding: 8,
            tcp_duration: Duration::from_millis(300),
            tcp_max_bytes: 64 << 20,
            cycles: 5,
            idle: Duration::from_secs(1),
            migrations: 1,
        }
    }
}

/// Who answered the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// The guest kernel with no XDP program on `vf0`.
    KernelAlone,
    /// The userspace stack.
    Stack,
    /// The guest kernel while the stack's filter passes it its frames.
    KernelBesideStack,
}

impl Server {
    pub fn label(self) -> &'static str {
        match self {
            Server::KernelAlone => "kernel (no XDP on vf0)",
            Server::Stack => "**stack**",
            Server::KernelBesideStack => "kernel (stack's XDP filter on vf0)",
        }
    }
}

/// Segmentation offloads on the lab's veths during a TCP row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offloads {
    /// As the lab sets them (off on the peer's `eth0` only).
    Lab,
    /// TSO, GSO and GRO off on every veth on the path.
    Off,
}

/// The machine the run was made on.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cores: usize,
    pub kernel: String,
    pub cpu_model: String,
    pub server_cpu: usize,
    pub client_cpu: usize,
    /// `/proc/loadavg` when the run began: other work on the machine
    /// skews every figure.
    pub loadavg: String,
}

/// A whole run's results.
#[derive(Debug, Clone)]
pub struct Results {
    pub machine: Machine,
    pub started: SystemTime,
    pub took: Duration,
    /// `/proc/loadavg` when the run ended.
    pub loadavg_end: String,
    pub options: BenchOptions,
    /// The stack's primary and standby link modes.
    pub modes: (Option<LinkMode>, Option<LinkMode>),
    pub udp: Vec<(usize, Server, udp::UdpResult)>,
    pub tcp: Vec<(Offloads, Server, tcp::TcpResult)>,
    pub failover: failover::FailoverResult,
    pub resend: resend::ResendResult,
    /// Echo and bulk throughput with the resend on and off.
    pub resend_cost: Vec<resend_cost::CostRun>,
    pub daemon: agent::DaemonResult,
}

/// The command: parse the arguments, run, write the table, print where.
pub fn main(args: BenchArgs) -> Result<()> {
    let options = BenchOptions::from_args(args)?;
    let removed = Lab::cleanup_stale()?;
    if !removed.is_empty() {
        println!("removed stale lab namespaces: {}", removed.join(", "));
    }
    let results = run(&options)?;
    println!("{}", report::markdown(&results));
    println!("written to {}", options.output.display());
    Ok(())
}

/// Run every benchmark in a fresh lab and write the Markdown table to
/// `options.output`.
pub fn run(options: &BenchOptions) -> Result<Results> {
    let started = SystemTime::now();
    let clock = Instant::now();
    let machine = machine()?;
    let lab = Lab::create(LabOptions::default())?;
    let results = run_in(&lab, options, machine, started, clock);
    lab.teardown()?;
    let results = results?;
    if let Some(dir) = options
        .output
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&options.output, report::markdown(&results))
        .with_context(|| format!("writing {}", options.output.display()))?;
    Ok(results)
}

fn run_in(
    lab: &Lab,
    options: &BenchOptions,
    machine: Machine,
    started: SystemTime,
    clock: Instant,
) -> Result<Results> {
    let cpus = Cpus {
        server: machine.server_cpu,
        client: machine.client_cpu,
    };
    let kernel_echo = SocketAddr::from((GUEST_KERNEL_V4, ECHO_PORT));
    let stack_echo = SocketAddr::from((STACK_V4, ECHO_PORT));
    let kernel_discard = SocketAddr::from((GUEST_KERNEL_V4, DISCARD_PORT));
    let stack_discard = SocketAddr::from((STACK_V4, DISCARD_PORT));
    let load = |size| udp::UdpLoad {
        size,
        outstanding: options.outstanding,
        max_requests: options.udp_max_requests,
        duration: options.udp_duration,
    };
    let sizes = [64, 1400];
    let mut udp_rows = Vec::new();
    let mut tcp_rows = Vec::new();
    let tcp_row = |to| tcp::measure(lab, to, options.tcp_duration, options.tcp_max_bytes, cpus);

    progress("kernel alone: UDP, TCP");
    {
        let echo = udp::KernelEcho::start(lab, kernel_echo, cpus.server)?;
        for size in sizes {
            let r = udp::measure(lab, kernel_echo, &load(size), cpus)?;
            udp_rows.push((size, Server::KernelAlone, r));
        }
        echo.stop()?;
        let discard = tcp::KernelTcp::start(lab, kernel_discard, cpus.server, tcp::Serve::Discard)?;
        tcp_rows.push((Offloads::Lab, Server::KernelAlone, tcp_row(kernel_discard)?));
        discard.stop()?;
    }

    progress("stack and kernel beside it: UDP, TCP");
    let guest = GuestStack::start(lab, StandbyKind::Xdp)?;
    let server_cpu = cpus.server;
    guest
        .datapath()
        .call(move |_| pin_current_thread(server_cpu))??;
    let modes = guest.modes()?;
    {
        let echo = udp::KernelEcho::start(lab, kernel_echo, cpus.server)?;
        for size in sizes {
            let r = udp::measure(lab, stack_echo, &load(size), cpus)?;
            udp_rows.push((size, Server::Stack, r));
            let r = udp::measure(lab, kernel_echo, &load(size), cpus)?;
            udp_rows.push((size, Server::KernelBesideStack, r));
        }
        echo.stop()?;
    }
    let discard = tcp::KernelTcp::start(lab, kernel_discard, cpus.server, tcp::Serve::Discard)?;
    tcp_rows.push((Offloads::Lab, Server::Stack, tcp_row(stack_discard)?));
    tcp_rows.push((
        Offloads::Lab,
        Server::KernelBesideStack,
        tcp_row(kernel_discard)?,
    ));
    progress("segmentation offloads off: TCP");
    tcp::offloads_off(lab)?;
    tcp_rows.push((Offloads::Off, Server::Stack, tcp_row(stack_discard)?));
    tcp_rows.push((
        Offloads::Off,
        Server::KernelBesideStack,
        tcp_row(kernel_discard)?,
    ));

    progress(&format!("{} unplug/replug cycles", options.cycles));
    let failover = failover::cycles(lab, &guest, options.cycles, cpus)?;
    progress("TCP echo and bulk throughput with the TCP resend on and off");
    // 40 windows of a twelfth of a TCP row each: 10 s per workload by default.
    let window = (options.tcp_duration / 12).max(Duration::from_millis(20));
    let resend_cost = [Workload::Echo, Workload::Bulk]
        .into_iter()
        .map(|w| resend_cost::measure(lab, &guest, w, stack_discard, window, cpus))
        .collect::<Result<Vec<_>>>()?;
    progress("TCP failover with the TCP resend on and off");
    let resend_bytes = options.tcp_max_bytes.min(64 << 20);
    let mut resend = resend::measure(lab, &guest, resend_bytes)?;
    drop(guest);
    // The replugged vf0 is a new device with default offloads.
    tcp::offloads_off(lab)?;
    tcp_rows.push((Offloads::Off, Server::KernelAlone, tcp_row(kernel_discard)?));
    discard.stop()?;
    progress("the guest kernel's TCP through the same failover");
    let kernel = resend::kernel_stalls(lab, resend_bytes, cpus.server);
    resend.kernel = Some(kernel.map_err(|e| format!("{e:#}")));

    progress("the daemon: idle, load, announce");
    let daemon = agent::measure(lab, options, cpus)?;

    Ok(Results {
        machine,
        started,
        took: clock.elapsed(),
        loadavg_end: loadavg(),
        options: options.clone(),
        modes,
        udp: udp_rows,
        tcp: tcp_rows,
        failover,
        resend,
        resend_cost,
        daemon,
    })
}

fn progress(what: &str) {
    eprintln!("bench: {what}");
}

/// The CPUs the two sides are pinned to.
#[derive(Debug, Clone, Copy)]
pub struct Cpus {
    pub server: usize,
    pub client: usize,
}

/// Pin the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu).with_context(|| format!("CPU {cpu}"))?;
    // Pid 0 is the calling thread: sched_setaffinity is per thread.
    sched_setaffinity(Pid::from_raw(0), &set).with_context(|| format!("pinning to CPU {cpu}"))
}

/// Busy and total jiffies of one CPU, from `/proc/stat`.
#[derive(Debug, Clone, Copy)]
pub struct CpuTicks {
    busy: u64,
    total: u64,
}

impl CpuTicks {
    pub fn read(cpu: usize) -> Result<CpuTicks> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let name = format!("cpu{cpu}");
        let line = stat
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))
            .with_context(|| format!("no {name} in /proc/stat"))?;
        // user nice system idle iowait irq softirq steal (guest is in user).
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        let total: u64 = fields.iter().sum();
        let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
        Ok(CpuTicks {
            busy: total - idle,
            total,
        })
    }

    /// The fraction of time the CPU was busy since `earlier`.
    pub fn busy_since(&self, earlier: &CpuTicks) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        self.busy.saturating_sub(earlier.busy) as f64 / total as f64
    }
}

/// Percentiles of a set of durations (nearest rank).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub n: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
}

impl Summary {
    /// `None` for no samples.
    pub fn of(mut samples: Vec<Duration>) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let rank = |q: f64| {
            let i = (q * samples.len() as f64).ceil() as usize;
            samples[i.clamp(1, samples.len()) - 1]
        };
        Some(Summary {
            n: samples.len(),
            p50: rank(0.5),
            p99: rank(0.99),
            p999: rank(0.999),
            max: samples[samples.len() - 1],
        })
    }
}

fn machine() -> Result<Machine> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown".into());
    Ok(Machine {
        cores,
        kernel,
        cpu_model,
        server_cpu: cores - 1,
        client_cpu: 0,
        loadavg: loadavg(),
    })
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Run `f` in `ns` with the calling thread pinned to `cpu`.
fn pinned_in_ns<R: Send>(
    lab: &Lab,
    ns: Ns,
    cpu: usize,
    f: impl FnOnce() -> Result<R> + Send,
) -> Result<R> {
    lab.in_ns(ns, move || {
        pin_current_thread(cpu)?;
        f()
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_takes_nearest_ranks() {
        let samples: Vec<Duration> = (1..=1000).map(Duration::from_micros).collect();
        let s = Summary::of(samples).unwrap();
        assert_eq!(s.n, 1000);
        assert_eq!(s.p50, Duration::from_micros(500));
        assert_eq!(s.p99, Duration::from_micros(990));
        assert_eq!(s.p999, Duration::from_micros(999));
        assert_eq!(s.max, Duration::from_micros(1000));
        let one = Summary::of(vec![Duration::from_millis(3)]).unwrap();
        assert_eq!(
            (one.p50, one.p999),
            (Duration::from_millis(3), Duration::from_millis(3))
        );
        assert_eq!(Summary::of(Vec::new()), None);
    }

    #[test]
    fn cpu_ticks_of_an_idle_interval_are_zero() {
        let a = CpuTicks {
            busy: 10,
            total: 100,
        };
        let b = CpuTicks {
            busy: 30,
            total: 200,
        };
        assert!((b.busy_since(&a) - 0.2).abs() < 1e-9);
        assert_eq!(a.busy_since(&a), 0.0);
    }
}
