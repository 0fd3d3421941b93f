//! `vfailover`: the guest agent's command line.

use std::time::Duration;

use anyhow::{ensure, Result};
use clap::{Parser, Subcommand, ValueEnum};
use vfailover::lab::{Lab, LabOptions, Ns, GUEST_KERNEL_V4, STACK_V4};
use vfailover::scenario::{self, GuestStack, Report, StandbyKind};
use vfailover_netstack::stats::Stats;

#[derive(Parser)]
#[command(
    version,
    about = "Failover (VF + virtio-net) for a userspace TCP/IP stack"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a namespace lab (as root), run a TCP stream through unplug →
    /// migrate → replug and print what happened. Touches nothing outside
    /// the namespaces it creates, and removes them when done.
    Lab {
        /// Bytes to stream through the stack's echo service.
        #[arg(long, default_value_t = 64 << 20)]
        bytes: u64,
        /// How the standby is opened.
        #[arg(long, value_enum, default_value_t = Standby::Xdp)]
        standby: Standby,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Standby {
    Xdp,
    Packet,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Lab { bytes, standby } => lab(bytes, standby),
    }
}

fn lab(bytes: u64, standby: Standby) -> Result<()> {
    let removed = Lab::cleanup_stale()?;
    if !removed.is_empty() {
        println!("removed stale lab namespaces: {}", removed.join(", "));
    }
    let lab = Lab::create(LabOptions {
        fdb_ageing: Duration::from_secs(300),
        mac: None,
    })?;
    println!("lab {} (MAC {})", lab.prefix(), lab.mac());
    let kind = match standby {
        Standby::Xdp => StandbyKind::Xdp,
        Standby::Packet => StandbyKind::Packet,
    };
    let guest = GuestStack::start(&lab, kind)?;
    let (primary, standby) = guest.modes()?;
    println!("primary: {primary:?}, standby: {standby:?}");
    ensure!(
        lab.ping(Ns::Peer, GUEST_KERNEL_V4.into(), 2)?,
        "the guest kernel's own address does not answer with the XDP filter attached"
    );
    println!("guest kernel still answers ping on vf0 with the XDP filter attached");
    println!(
        "UDP echo on the primary: {}/20 answered",
        scenario::udp_probes(&lab, STACK_V4.into(), 20, 64)?
    );
    let report = scenario::failover_transfer(&lab, &guest, bytes)?;
    print_report(&report);
    println!(
        "UDP echo on the primary after replug: {}/20 answered",
        scenario::udp_probes(&lab, STACK_V4.into(), 20, 64)?
    );
    drop(guest);
    lab.teardown()?;
    ensure!(
        report.byte_exact(),
        "the echoed stream differs from what was sent"
    );
    Ok(())
}

fn print_report(r: &Report) {
    let mib = r.bytes as f64 / f64::from(1 << 20);
    println!(
        "TCP echo: {mib:.0} MiB in {:.2} s, sha256 sent {} echoed {} ({})",
        r.duration.as_secs_f64(),
        &r.sent_sha256[..16],
        &r.echoed_sha256[..16],
        if r.byte_exact() {
            "byte-exact"
        } else {
            "MISMATCH"
        }
    );
    let mut marks = vec![("start".to_owned(), Stats::default())];
    marks.extend(
        r.steps
            .iter()
            .map(|s| (format!("{:?}", s.step), s.stats_before.clone())),
    );
    marks.push(("end".to_owned(), r.final_stats.clone()));
    println!(
        "{:<20} {:>10} {:>10} {:>10} {:>10}",
        "phase", "prim tx", "prim rx", "stby tx", "stby rx"
    );
    for pair in marks.windows(2) {
        let ((from, a), (to, b)) = (&pair[0], &pair[1]);
        println!(
            "{:<20} {:>10} {:>10} {:>10} {:>10}",
            format!("{from} → {to}"),
            b.primary.tx_packets - a.primary.tx_packets,
            b.primary.rx_packets - a.primary.rx_packets,
            b.standby.tx_packets - a.standby.tx_packets,
            b.standby.rx_packets - a.standby.rx_packets,
        );
    }
    if let Some(d) = r.unplug_to_event {
        println!(
            "`ip link del vf0` started → rtnetlink event: {:.3} ms",
            d.as_secs_f64() * 1e3
        );
    }
    match r.event_to_switch {
        Some(d) => println!(
            "rtnetlink event → switch to the standby: {:.3} ms",
            d.as_secs_f64() * 1e3
        ),
        None => println!("switch to the standby: before a second listener heard the event"),
    }
    if let Some(d) = r.switch_to_first_standby_tx {
        println!(
            "switch → first frame on the standby: {:.3} ms",
            d.as_secs_f64() * 1e3
        );
    }
    println!("announce frames after migrate: {}", r.announced);
    println!(
        "switches: {}; modes now: primary {:?}, standby {:?}",
        r.final_stats.switches, r.modes.0, r.modes.1
    );
}
