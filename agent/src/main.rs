//! `vfailover`: the guest agent's command line.

#![deny(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand, ValueEnum};
use vfailover::config::{DEFAULT_PATH, DEFAULT_SOCKET};
use vfailover::control::{self, Request, Response};

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
    /// Check a config file without running anything: every problem with
    /// its line and key, or what the daemon would run.
    Validate {
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
    /// Build a namespace lab (as root), run the daemon in it, stream TCP and
    /// probe UDP through unplug → migrate → replug with a live status line,
    /// and report what happened. Touches nothing outside the namespaces it
    /// creates, and removes them when done, also on Ctrl-C.
    Lab {
        /// Bytes to stream through the stack's echo service.
        #[arg(long, default_value_t = 64 << 20)]
        bytes: u64,
        /// How the daemon opens the standby (`standby_mode`).
        #[arg(long, value_enum, default_value_t = Standby::Xdp)]
        standby: Standby,
        /// Whether the standby claims VIRTIO_NET_F_GUEST_ANNOUNCE; with
        /// `on` the agent leaves announcing to the device.
        #[arg(long, value_enum, default_value_t = OnOff::Off)]
        guest_announce: OnOff,
        /// Let the peer use TCP SACK (`tcp_sack`); with `off` the peer
        /// retransmits what it lost in a switch on the repeated ACKs, if it
        /// had four or more segments in flight.
        #[arg(long, value_enum, default_value_t = OnOff::On)]
        tcp_sack: OnOff,
        /// Draw the timeline (MB/s per path, unplug/migrate/replug) as SVG.
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<PathBuf>,
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

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OnOff {
    On,
    Off,
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
        Command::Run { config } => vfailover::daemon::run(&config),
        Command::Validate { config } => {
            let parsed = vfailover::config::Config::from_file(&config)?;
            println!("{}: valid\n{}", config.display(), parsed.summary());
            Ok(())
        }
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
        Command::Lab {
            bytes,
            standby,
            guest_announce,
            tcp_sack,
            plot,
        } => vfailover::lab_run::run(&vfailover::lab_run::Options {
            bytes,
            standby_packet: matches!(standby, Standby::Packet),
            guest_announce: guest_announce == OnOff::On,
            tcp_sack: tcp_sack == OnOff::On,
            plot,
        }),
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
