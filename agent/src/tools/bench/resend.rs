//! What the TCP resend costs and what it buys, on the bench's stack: TCP
//! echo throughput with the resender on and off (alternating, same stack,
//! same run), and the longest TCP stall the peer sees after an unplug, a
//! migration and a replug, with it on and off, and with SACK offered to the
//! peer or not.

use std::time::Duration;

use anyhow::Result;
use vfailover_netstack::resend::ResendLimits;

use super::{CpuTicks, Cpus};
use crate::lab::Lab;
use crate::scenario::{failover_transfer, GatedStream, GuestStack, Step};

/// Echo runs per setting. They alternate (on, off, on, ...), and each on
/// run is compared with the off run right after it: drift in the machine's
/// load falls on both halves of a pair, and the median pair is reported.
const ROUNDS: usize = 10;

/// One echo run.
#[derive(Debug, Clone)]
pub struct EchoRun {
    pub resend: bool,
    pub bytes: u64,
    pub elapsed: Duration,
    /// How busy the stack's core was (0..=1).
    pub server_busy: f64,
}

impl EchoRun {
    /// Echoed bytes per second, in MiB.
    pub fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / f64::from(1 << 20) / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The longest stall after each step of one failover run.
#[derive(Debug, Clone)]
pub struct StallRun {
    pub resend: bool,
    /// Whether the stack let the peer use SACK.
    pub sack: bool,
    pub stalls: Vec<(Step, Option<Duration>)>,
    pub byte_exact: bool,
}

#[derive(Debug, Clone)]
pub struct ResendResult {
    pub echo: Vec<EchoRun>,
    pub stalls: Vec<StallRun>,
}

/// Throughput with the resender on over off, from paired runs.
#[derive(Debug, Clone, Copy)]
pub struct CostRatio {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub pairs: usize,
}

impl ResendResult {
    /// Echo throughput with the resender on over off.
    pub fn cost_ratio(&self) -> Option<CostRatio> {
        self.paired(EchoRun::mib_per_s)
    }

    /// The same per busy second of the stack's core: what each echoed byte
    /// costs the stack, also when the peer, not the stack, set the pace.
    pub fn cpu_cost_ratio(&self) -> Option<CostRatio> {
        self.paired(|r| r.mib_per_s() / r.server_busy.max(1e-9))
    }

    fn paired(&self, figure: impl Fn(&EchoRun) -> f64) -> Option<CostRatio> {
        let mut ratios: Vec<f64> = self
            .echo
            .chunks_exact(2)
            .filter(|pair| pair[0].resend && !pair[1].resend)
            .map(|pair| figure(&pair[0]) / figure(&pair[1]))
            .collect();
        ratios.sort_by(f64::total_cmp);
        let n = ratios.len();
        (n > 0).then(|| CostRatio {
            median: (ratios[(n - 1) / 2] + ratios[n / 2]) / 2.0,
            min: ratios[0],
            max: ratios[n - 1],
            pairs: n,
        })
    }
}

/// Echo `bytes` per run, then a failover run of `bytes` each way.
pub fn measure(lab: &Lab, guest: &GuestStack, bytes: u64, cpus: Cpus) -> Result<ResendResult> {
    // A first run, not counted, warms the stack's buffers and the caches.
    set_resend(guest, true)?;
    GatedStream::start(lab, bytes, 0)?.finish()?;
    let mut echo = Vec::new();
    for _ in 0..ROUNDS {
        for resend in [true, false] {
            set_resend(guest, resend)?;
            let before = CpuTicks::read(cpus.server)?;
            let end = GatedStream::start(lab, bytes, 0)?.finish()?;
            anyhow::ensure!(end.byte_exact(), "the echo differs (resend {resend})");
            echo.push(EchoRun {
                resend,
                bytes,
                elapsed: end.duration,
                server_busy: CpuTicks::read(cpus.server)?.busy_since(&before),
            });
        }
    }
    let mut stalls = Vec::new();
    for (resend, sack) in [(true, true), (false, true), (true, false)] {
        set_resend(guest, resend)?;
        guest
            .datapath()
            .call(move |s| s.device_mut().set_tcp_sack(sack))?;
        let report = failover_transfer(lab, guest, bytes)?;
        stalls.push(StallRun {
            resend,
            sack,
            stalls: report
                .steps
                .iter()
                .map(|s| (s.step, s.longest_stall))
                .collect(),
            byte_exact: report.byte_exact(),
        });
    }
    set_resend(guest, true)?;
    guest
        .datapath()
        .call(|s| s.device_mut().set_tcp_sack(true))?;
    Ok(ResendResult { echo, stalls })
}

fn set_resend(guest: &GuestStack, enabled: bool) -> Result<()> {
    let limits = ResendLimits {
        enabled,
        ..ResendLimits::default()
    };
    guest
        .datapath()
        .call(move |s| s.device_mut().set_resend_limits(limits))?;
    Ok(())
}
