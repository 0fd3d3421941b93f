//! Unplug/replug cycles under traffic: how long from the primary's
//! disappearance to the first frame on the standby, and from its return to
//! the first frame on it again.
//!
//! The peer sends a UDP request to the stack's echo service every
//! [`PROBE_INTERVAL`] throughout, so there is always a reply to send; the
//! first-frame times therefore include up to one interval of waiting for
//! the next request. Each cycle splits the time with three clocks:
//!
//! * when the bench issued the change (`ip link del`, or the first of the
//!   `ip` commands that make a new `vf0`): wall clock before the command;
//! * when an independent rtnetlink listener in the guest heard of it
//!   (`vf0` gone or down; a `vf0` up with carrier);
//! * the datapath's [`Switch`](vfailover_netstack::stats::Switch): when the
//!   path changed, and how long after that the first frame went out.
//!
//! For the return, the listener itself opens the AF_XDP link the moment it
//! hears of the new `vf0` and hands it to the datapath, as the daemon would.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use vfailover_netstack::link::xdp::{XdpConfig, XdpLink};
use vfailover_netstack::monitor::{LinkEvent, LinkMonitor};
use vfailover_netstack::stats::{Path, Switch};

use super::{pin_current_thread, Cpus};
use crate::lab::{Lab, Ns, PRIMARY, STACK_V4, STACK_V6};
use crate::scenario::{GuestStack, ECHO_PORT};

/// The peer's request interval while cycles run.
pub const PROBE_INTERVAL: Duration = Duration::from_micros(200);
/// How long a listener waits for its event, and the bench for a switch.
const EVENT_TIMEOUT: Duration = Duration::from_secs(5);

/// One direction of a cycle, split into its parts.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Issuing the change → the listener hears of it (the kernel, and the
    /// `ip` commands' own start-up).
    pub issue_to_event: Duration,
    /// Event → path switch (the agent). For the return this includes
    /// opening the AF_XDP link ([`Sample::event_to_open`]).
    pub event_to_switch: Duration,
    /// Event → AF_XDP link open (return only).
    pub event_to_open: Option<Duration>,
    /// Switch → first frame on the new path.
    pub switch_to_first_tx: Duration,
    /// Event → first frame on the new path: the agent's whole share.
    pub event_to_first_tx: Duration,
}

/// What the cycles measured.
#[derive(Debug, Clone, Default)]
pub struct FailoverResult {
    pub cycles: usize,
    /// Primary gone → standby.
    pub down: Vec<Sample>,
    /// Primary back → primary.
    pub up: Vec<Sample>,
    /// Cycles where the datapath switched before the independent listener
    /// heard the event (its `event_to_switch` counts as zero).
    pub switch_before_listener: usize,
    pub probes_sent: u64,
    pub probes_answered: u64,
}

/// Run `cycles` unplug/replug cycles of `vf0` under UDP traffic.
pub fn cycles(lab: &Lab, guest: &GuestStack, cycles: usize, cpus: Cpus) -> Result<FailoverResult> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // Bounded in time as well as by the stop flag: 5 s per cycle at most.
    let budget = Duration::from_secs(5) * cycles as u32 + Duration::from_secs(10);
    let traffic = lab.spawn_in(Ns::Peer, move || {
        pin_current_thread(cpus.client)?;
        probe_traffic(&flag, budget)
    })?;
    let mut result = FailoverResult {
        cycles,
        ..FailoverResult::default()
    };
    let run = (|| -> Result<()> {
        for _ in 0..cycles {
            cycle(lab, guest, &mut result)?;
        }
        Ok(())
    })();
    stop.store(true, Ordering::Release);
    let probes = traffic
        .join()
        .map_err(|_| anyhow!("the probe traffic thread panicked"))?;
    run?;
    (result.probes_sent, result.probes_answered) = probes?;
    Ok(result)
}

fn cycle(lab: &Lab, guest: &GuestStack, result: &mut FailoverResult) -> Result<()> {
    // Down: delete vf0.
    let listener = listen(lab, |monitor| {
        let at = wait_for(monitor, |event| match event {
            LinkEvent::Removed { ifname, .. } => ifname.as_deref() == Some(PRIMARY),
            LinkEvent::Changed(s) => s.ifname.as_deref() == Some(PRIMARY) && !(s.up && s.carrier),
            LinkEvent::Overrun => false,
        })?;
        Ok((at, None))
    })?;
    let issued = SystemTime::now();
    lab.unplug()?;
    let (event, _) = listener.join()?;
    let switch = wait_for_switch(guest, Path::Standby, issued)?;
    let (down, early) = split(issued, event, None, switch);
    result.down.push(down);
    result.switch_before_listener += usize::from(early);

    // Up: a new vf0; the listener opens it as soon as it has carrier.
    let listener = listen(lab, |monitor| {
        let at = wait_for(monitor, |event| match event {
            LinkEvent::Changed(s) => s.ifname.as_deref() == Some(PRIMARY) && s.up && s.carrier,
            _ => false,
        })?;
        let config = XdpConfig {
            ifname: PRIMARY.to_owned(),
            addresses: vec![STACK_V4.into(), STACK_V6.into()],
            ..XdpConfig::default()
        };
        let link = XdpLink::open(&config).context("opening AF_XDP on the new vf0")?;
        Ok((at, Some((SystemTime::now(), link))))
    })?;
    let issued = SystemTime::now();
    std::thread::scope(|s| -> Result<()> {
        let replug = s.spawn(|| lab.replug());
        let heard = listener.join();
        let attached = heard.and_then(|(event, opened)| {
            let (opened_at, link) = opened.context("the listener opened no link")?;
            guest.datapath().attach_primary(Box::new(link))?;
            Ok((event, opened_at))
        });
        replug
            .join()
            .map_err(|_| anyhow!("the replug thread panicked"))??;
        let (event, opened_at) = attached?;
        let switch = wait_for_switch(guest, Path::Primary, issued)?;
        let (up, _) = split(issued, event, Some(opened_at), switch);
        result.up.push(up);
        Ok(())
    })
}

/// A listener thread in the guest namespace, subscribed before this
/// returns, running `body` on its monitor.
struct Listener<T>(std::thread::JoinHandle<Result<T>>);

impl<T> Listener<T> {
    fn join(self) -> Result<T> {
        self.0
            .join()
            .map_err(|_| anyhow!("the rtnetlink listener panicked"))?
    }
}

type Heard = (SystemTime, Option<(SystemTime, XdpLink)>);

fn listen(
    lab: &Lab,
    body: impl FnOnce(&mut LinkMonitor) -> Result<Heard> + Send + 'static,
) -> Result<Listener<Heard>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let thread = lab.spawn_in(Ns::Guest, move || {
        let mut monitor = match LinkMonitor::open() {
            Ok(m) => m,
            Err(e) => {
                let _ = ready_tx.send(());
                return Err(e).context("opening an rtnetlink listener");
            }
        };
        let _ = ready_tx.send(());
        body(&mut monitor)
    })?;
    ready_rx
        .recv()
        .context("the rtnetlink listener died while starting")?;
    Ok(Listener(thread))
}

/// Wait (at most [`EVENT_TIMEOUT`]) for an event that `wanted` accepts;
/// returns when it was read.
fn wait_for(monitor: &mut LinkMonitor, wanted: impl Fn(&LinkEvent) -> bool) -> Result<SystemTime> {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while Instant::now() < deadline {
        let mut seen = None;
        monitor.read(|event| {
            if seen.is_none() && wanted(&event) {
                seen = Some(SystemTime::now());
            }
        })?;
        if let Some(at) = seen {
            return Ok(at);
        }
        monitor.wait(Duration::from_millis(50))?;
    }
    bail!("no rtnetlink event for {PRIMARY} within {EVENT_TIMEOUT:?}")
}

/// Wait until the datapath has switched to `to` after `since` and sent a
/// frame there.
fn wait_for_switch(guest: &GuestStack, to: Path, since: SystemTime) -> Result<Switch> {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let stats = guest.stats()?;
        if let Some(s) = stats.last_switch {
            if s.to == to && s.at >= since && s.first_tx_after.is_some() {
                return Ok(s);
            }
        }
        if Instant::now() > deadline {
            bail!(
                "no switch to {to} with a frame sent within {EVENT_TIMEOUT:?}; last {:?}",
                stats.last_switch
            );
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// The parts of one direction; `true` if the datapath switched before the
/// listener heard.
fn split(
    issued: SystemTime,
    event: SystemTime,
    opened: Option<SystemTime>,
    switch: Switch,
) -> (Sample, bool) {
    let since = |later: SystemTime, earlier: SystemTime| {
        later.duration_since(earlier).unwrap_or(Duration::ZERO)
    };
    let first_tx = switch.first_tx_after.unwrap_or_default();
    (
        Sample {
            issue_to_event: since(event, issued),
            event_to_switch: since(switch.at, event),
            event_to_open: opened.map(|o| since(o, event)),
            switch_to_first_tx: first_tx,
            event_to_first_tx: since(switch.at + first_tx, event),
        },
        switch.at < event,
    )
}

/// The peer's side: a 64-byte request to the stack's echo service every
/// [`PROBE_INTERVAL`] until `stop` (or `budget` runs out); returns requests
/// sent and replies received.
fn probe_traffic(stop: &AtomicBool, budget: Duration) -> Result<(u64, u64)> {
    let socket = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0)))?;
    socket.connect(SocketAddr::from((STACK_V4, ECHO_PORT)))?;
    socket.set_nonblocking(true)?;
    let start = Instant::now();
    let max = (budget.as_nanos() / PROBE_INTERVAL.as_nanos()) as u64;
    let (mut ticks, mut sent, mut answered) = (0u32, 0u64, 0u64);
    let probe = [0x5au8; 64];
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Acquire) && u64::from(ticks) < max && start.elapsed() < budget {
        // Errors (ICMP bounces while no path answers) are part of a failover.
        if socket.send(&probe).is_ok() {
            sent += 1;
        }
        while socket.recv(&mut buf).is_ok() {
            answered += 1;
        }
        ticks += 1;
        // Sleep, not spin: the two cores are needed for the unplug itself.
        let next = start + PROBE_INTERVAL * ticks;
        if let Some(left) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(left);
        }
    }
    // Late replies.
    std::thread::sleep(Duration::from_millis(20));
    while socket.recv(&mut buf).is_ok() {
        answered += 1;
    }
    Ok((sent, answered))
}
