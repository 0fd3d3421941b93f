//! What the TCP resend costs in throughput: one long TCP transfer through
//! the bench's stack, the resend switched on and off every window, and the
//! stack's byte counters read at each switch.
//!
//! Why windows of one transfer rather than whole runs: separate runs differ
//! by more than the cost sought (a new connection, its slow start, where
//! the scheduler puts the peer's threads), so alternating runs of 64 MiB
//! measured anything from 0.93× to 1.01× for the same code. Adjacent
//! windows of one connection share all of that. The order is on, off, off,
//! on, ... so that a drift over the connection's life falls on both
//! settings alike, and each adjacent pair gives one ratio.
//!
//! Two workloads: the stack's `tcp-echo` (every segment the stack sends
//! carries data and is copied for a resend: the worst case) and bulk data
//! into its `tcp-discard` (what the bench's TCP rows measure: the stack
//! sends only ACKs, the resend parses every segment it receives).

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use vfailover_netstack::resend::ResendLimits;
use vfailover_netstack::stats::Stats;

use super::{tcp, CpuTicks, Cpus};
use crate::lab::Lab;
use crate::scenario::{GatedStream, GuestStack};

/// Windows per workload, half of them with the resend on.
const WINDOWS: usize = 40;
/// Bytes the echo stream may write: never reached, the stream is stopped
/// after the last window.
const ECHO_LIMIT: u64 = 1 << 40;

/// The transfer whose throughput is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// The peer streams through the stack's echo and reads it back;
    /// counted: frame bytes the stack sent.
    Echo,
    /// The peer writes into the stack's discard; counted: frame bytes the
    /// stack received.
    Bulk,
}

impl Workload {
    fn counted(self, stats: &Stats) -> u64 {
        match self {
            Workload::Echo => stats.primary.tx_bytes,
            Workload::Bulk => stats.primary.rx_bytes,
        }
    }
}

/// One window of a transfer.
#[derive(Debug, Clone)]
pub struct Window {
    pub resend: bool,
    pub bytes: u64,
    pub elapsed: Duration,
    /// How busy the stack's core was (0..=1).
    pub server_busy: f64,
}

impl Window {
    /// Frame bytes per second, in MiB.
    pub fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / f64::from(1 << 20) / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Throughput with the resend on over off, one ratio per adjacent pair of
/// windows.
#[derive(Debug, Clone, Copy)]
pub struct CostRatio {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub pairs: usize,
}

/// The windows of one workload.
#[derive(Debug, Clone)]
pub struct CostRun {
    pub workload: Workload,
    pub windows: Vec<Window>,
}

impl CostRun {
    pub fn ratio(&self) -> Option<CostRatio> {
        let mut ratios: Vec<f64> = self
            .windows
            .chunks_exact(2)
            .filter_map(|pair| {
                let on = pair.iter().find(|w| w.resend)?;
                let off = pair.iter().find(|w| !w.resend)?;
                Some(on.mib_per_s() / off.mib_per_s().max(1e-9))
            })
            .collect();
        ratios.sort_by(f64::total_cmp);
        let n = ratios.len();
        (n > 0).then(|| CostRatio {
            median: median(&ratios),
            min: ratios[0],
            max: ratios[n - 1],
            pairs: n,
        })
    }

    /// Median throughput and core use of the windows with `resend`.
    pub fn medians(&self, resend: bool) -> (f64, f64) {
        let pick = |f: fn(&Window) -> f64| {
            let mut v: Vec<f64> = self
                .windows
                .iter()
                .filter(|w| w.resend == resend)
                .map(f)
                .collect();
            v.sort_by(f64::total_cmp);
            median(&v)
        };
        (pick(Window::mib_per_s), pick(|w| w.server_busy))
    }
}

fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n => (sorted[(n - 1) / 2] + sorted[n / 2]) / 2.0,
    }
}

/// Measure `workload` in [`WINDOWS`] windows of `window` each (after one
/// uncounted), the peer's side pinned to `cpus.client`. `discard` is the
/// stack's discard service (for [`Workload::Bulk`]). The resend is left on.
pub fn measure(
    lab: &Lab,
    guest: &GuestStack,
    workload: Workload,
    discard: SocketAddr,
    window: Duration,
    cpus: Cpus,
) -> Result<CostRun> {
    let windows = match workload {
        Workload::Echo => {
            let stream = GatedStream::start(lab, ECHO_LIMIT, 0)?;
            let windows = alternate(guest, workload, window, cpus);
            // Stopped whatever happened: its threads must not outlive the run.
            stream.abort();
            windows?
        }
        Workload::Bulk => {
            // Runs a window longer than the windows, so it covers them all.
            let lasts = window * (WINDOWS as u32 + 2);
            thread::scope(|scope| {
                let bulk = scope.spawn(|| tcp::measure(lab, discard, lasts, u64::MAX, cpus));
                let windows = alternate(guest, workload, window, cpus);
                let done = bulk
                    .join()
                    .map_err(|_| anyhow!("the bulk TCP client panicked"))?;
                done?;
                windows
            })?
        }
    };
    set_resend(guest, true)?;
    Ok(CostRun { workload, windows })
}

/// Switch the resend and read the counters, window by window, while the
/// transfer runs.
fn alternate(
    guest: &GuestStack,
    workload: Workload,
    window: Duration,
    cpus: Cpus,
) -> Result<Vec<Window>> {
    // One window to let the connection open and reach its pace.
    thread::sleep(window);
    let mut windows = Vec::with_capacity(WINDOWS);
    for k in 0..WINDOWS {
        let resend = matches!(k % 4, 0 | 3);
        set_resend(guest, resend)?;
        let (bytes, at, ticks) = (
            workload.counted(&guest.stats()?),
            Instant::now(),
            CpuTicks::read(cpus.server)?,
        );
        thread::sleep(window);
        let moved = workload.counted(&guest.stats()?).saturating_sub(bytes);
        anyhow::ensure!(moved > 0, "no {workload:?} traffic in window {k}");
        windows.push(Window {
            resend,
            bytes: moved,
            elapsed: at.elapsed(),
            server_busy: CpuTicks::read(cpus.server)?.busy_since(&ticks),
        });
    }
    Ok(windows)
}

pub fn set_resend(guest: &GuestStack, enabled: bool) -> Result<()> {
    let limits = ResendLimits {
        enabled,
        ..ResendLimits::default()
    };
    guest
        .datapath()
        .call(move |s| s.device_mut().set_resend_limits(limits))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(resend: bool, mib: u64) -> Window {
        Window {
            resend,
            bytes: mib << 20,
            elapsed: Duration::from_secs(1),
            server_busy: 1.0,
        }
    }

    #[test]
    fn each_adjacent_pair_gives_one_ratio_whatever_its_order() {
        let run = CostRun {
            workload: Workload::Echo,
            windows: vec![
                window(true, 90),
                window(false, 100),
                window(false, 100),
                window(true, 95),
                window(true, 100),
                window(false, 100),
            ],
        };
        let r = run.ratio().unwrap();
        assert_eq!(r.pairs, 3);
        assert!((r.median - 0.95).abs() < 1e-9, "{r:?}");
        assert!((r.min - 0.9).abs() < 1e-9 && (r.max - 1.0).abs() < 1e-9);
        assert!((run.medians(false).0 - 100.0).abs() < 1e-9);
    }
}
