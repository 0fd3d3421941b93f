//! What the TCP resend costs and what it buys, on the bench's stack: TCP
//! echo throughput with the resender on and off (alternating, same stack,
//! same run), and the longest TCP stall the peer sees after an unplug, a
//! migration and a replug, with it on and off, and with SACK offered to the
//! peer or not; and the same stalls of the guest kernel's own TCP, over the
//! lab's failover stand-in ([`kernel_stalls`]).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Result};
use vfailover_netstack::resend::ResendLimits;

use super::tcp::{KernelTcp, Serve};
use super::{CpuTicks, Cpus};
use crate::lab::{Lab, GUEST_KERNEL_V4};
use crate::scenario::{failover_transfer, run_steps, GatedStream, GuestStack, Step, ECHO_PORT};
use crate::scenario::{StreamEnd, STEPS};

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

/// The longest stall after each step of the guest kernel's own TCP, echoed
/// by a kernel server over [`Lab::kernel_failover`]'s stand-in.
#[derive(Debug, Clone)]
pub struct KernelStallRun {
    pub stalls: Vec<(Step, Option<Duration>)>,
    pub byte_exact: bool,
    /// How long the stream ran.
    pub duration: Duration,
    /// From the rtnetlink event of the unplug to the kernel's address on
    /// the standby: userspace time that `net_failover` does not take.
    pub reaction: Duration,
}

#[derive(Debug, Clone)]
pub struct ResendResult {
    pub echo: Vec<EchoRun>,
    pub stalls: Vec<StallRun>,
    /// The guest kernel's run, measured after the stack is gone, or why it
    /// failed (the stand-in's failure does not end the bench).
    pub kernel: Option<Result<KernelStallRun, String>>,
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
    Ok(ResendResult {
        echo,
        stalls,
        kernel: None,
    })
}

/// The failover run of [`measure`] (unplug → migrate → replug around a
/// gated echo stream of `bytes`) against the guest kernel's own TCP: the
/// peer streams to a kernel echo server on the guest kernel's address
/// (pinned to `cpu`), whose address [`Lab::kernel_failover`] moves from
/// `vf0` to `virtio0` and back. Needs both NICs plugged and no stack on
/// them; the lab is as before when it returns.
pub fn kernel_stalls(lab: &Lab, bytes: u64, cpu: usize) -> Result<KernelStallRun> {
    let standin = lab.kernel_failover()?;
    let target = SocketAddr::from((GUEST_KERNEL_V4, ECHO_PORT));
    let echo = KernelTcp::start(lab, target, cpu, Serve::Echo)?;
    let mut reaction = None;
    let ran = GatedStream::start_to(lab, target, bytes, STEPS.len()).and_then(|stream| {
        run_steps(
            stream,
            || format!("the guest kernel's echo at {target}"),
            |step, _| {
                match step {
                    Step::Unplug => reaction = Some(standin.unplug()?),
                    Step::Migrate => standin.migrate()?,
                    Step::Replug => standin.replug()?,
                }
                Ok(())
            },
        )
    });
    // The server and the stand-in end whatever happened to the stream: no
    // thread may stay in the guest namespace, and the lab goes back.
    let served = echo.stop();
    let restored = standin.stop();
    let (end, stalls): (StreamEnd, _) = ran?;
    served?;
    restored?;
    Ok(KernelStallRun {
        stalls,
        byte_exact: end.byte_exact(),
        duration: end.duration,
        reaction: reaction.ok_or_else(|| anyhow!("the unplug step did not run"))?,
    })
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
