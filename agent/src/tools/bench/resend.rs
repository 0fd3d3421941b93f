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

/// Echo runs per setting; they alternate, so drift in the machine's load
/// falls on both, and the median of each is compared.
const ROUNDS: usize = 4;

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

impl ResendResult {
    /// Median echo throughput with the resender on over off.
    pub fn cost_ratio(&self) -> Option<f64> {
        let median = |on: bool| {
            let mut runs: Vec<f64> = self
                .echo
                .iter()
                .filter(|r| r.resend == on)
                .map(EchoRun::mib_per_s)
                .collect();
            runs.sort_by(f64::total_cmp);
            let n = runs.len();
            (n > 0).then(|| (runs[(n - 1) / 2] + runs[n / 2]) / 2.0)
        };
        Some(median(true)? / median(false)?)
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
