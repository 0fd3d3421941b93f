//! What the TCP resend buys, on the bench's stack: the longest TCP stall
//! the peer sees after an unplug, a migration and a replug, with it on and
//! off, and with SACK offered to the peer or not; and the same stalls of
//! the guest kernel's own TCP, over the lab's failover stand-in
//! ([`kernel_stalls`]). What it costs: [`super::resend_cost`].

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Result};

use super::resend_cost::set_resend;
use super::tcp::{KernelTcp, Serve};
use crate::lab::{Lab, GUEST_KERNEL_V4};
use crate::scenario::{failover_transfer, run_steps, GatedStream, GuestStack, Step, ECHO_PORT};
use crate::scenario::{StreamEnd, STEPS};

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
    pub stalls: Vec<StallRun>,
    /// The guest kernel's run, measured after the stack is gone, or why it
    /// failed (the stand-in's failure does not end the bench).
    pub kernel: Option<Result<KernelStallRun, String>>,
}

/// A failover run of `bytes` each way with the resend on and SACK on, the
/// resend off, and SACK off.
pub fn measure(lab: &Lab, guest: &GuestStack, bytes: u64) -> Result<ResendResult> {
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
