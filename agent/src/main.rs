//! `vfailover`: the guest agent's command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, ensure, Result};
use clap::{Parser, Subcommand, ValueEnum};
use vfailover::config::{DEFAULT_PATH, DEFAULT_SOCKET};
use vfailover::control::{self, Request, Response};
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

/// How long a client waits for the daemon.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Subcommand)]
enum Command {
    /// Run the agent (in the foreground; systemd Type=notify). SIGTERM or
    /// SIGINT stop it cleanly, SIGHUP reloads the config.
    Run {
        #[arg(long, default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Show each pair: path, links, counters, switches, migrations.
    Status {
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Print metrics in the Prometheus text format.
    Metrics {
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Announce the stack's addresses now (gratuitous ARP, unsolicited NA),
    /// on QEMU's schedule. Needs root.
    Announce {
        /// The pair; all pairs when absent.
        pair: Option<String>,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Reload the config file (like SIGHUP), reporting whether it was
    /// accepted. Needs root.
    Reload {
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
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
    /// Benchmark the stack against the guest kernel in a namespace lab (as
    /// root) and write a Markdown table (bench/RESULTS.md).
    Bench(vfailover::bench::BenchArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Standby {
    Xdp,
    Packet,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain, one cause per line, and no backtrace: this is
            // for an operator, not a developer.
            eprintln!("vfailover: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    // The daemon logs what it does; the clients only what goes wrong.
    let level = if matches!(cli.command, Command::Run { .. }) {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match cli.command {
        Command::Run { config } => vfailover::daemon::run(&config, || {
            // Outside systemd there is no NOTIFY_SOCKET: nothing to tell.
            if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
                tracing::warn!("cannot tell systemd we are ready: {e}");
            }
        }),
        Command::Status { json, socket } => match ask(&socket, Request::Status)? {
            Response::Status(status) if json => {
                println!("{}", serde_json::to_string_pretty(&status)?);
                Ok(())
            }
            Response::Status(status) => {
                print!("{}", vfailover::status::render_table(&status));
                Ok(())
            }
            other => unexpected(other),
        },
        Command::Metrics { socket } => match ask(&socket, Request::Metrics)? {
            Response::Metrics(text) => {
                print!("{text}");
                Ok(())
            }
            other => unexpected(other),
        },
        Command::Announce { pair, socket } => match ask(&socket, Request::Announce { pair })? {
            Response::Announced(pairs) => {
                println!("announcing on: {}", pairs.join(", "));
                Ok(())
            }
            other => unexpected(other),
        },
        Command::Reload { socket } => match ask(&socket, Request::Reload)? {
            Response::Reloaded => {
                println!("configuration reloaded");
                Ok(())
            }
            other => unexpected(other),
        },
        Command::Lab { bytes, standby } => lab(bytes, standby),
        Command::Bench(args) => vfailover::bench::main(args),
    }
}

/// Send `request` to the daemon; its error answer becomes our error.
fn ask(socket: &std::path::Path, request: Request) -> Result<Response> {
    match control::request(socket, &request, CLIENT_TIMEOUT)? {
        Response::Error(message) => bail!("{message}"),
        response => Ok(response),
    }
}

fn unexpected(response: Response) -> Result<()> {
    bail!("unexpected answer from the daemon: {response:?}")
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
