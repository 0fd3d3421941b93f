//! The Markdown table of a run: absolute figures, stack/kernel ratios from
//! the same run, and each aim next to what was measured.

use std::fmt::Write;
use std::time::{Duration, UNIX_EPOCH};

use super::failover::Sample;
use super::resend::ResendResult;
use super::resend_cost::{CostRun, Workload};
use super::{Offloads, Results, Server, Summary};
use crate::lab::GUEST_KERNEL_V4;
use crate::scenario::Step;

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn pct(x: f64) -> String {
    format!("{:.0} %", x * 100.0)
}

/// A Markdown table's header: the first `text` columns left-aligned, the
/// figures after them right-aligned.
fn table_header(out: &mut String, columns: &[&str], text: usize) -> std::fmt::Result {
    let align: Vec<&str> = (0..columns.len())
        .map(|i| if i < text { "---" } else { "---:" })
        .collect();
    writeln!(out, "| {} |\n|{}|", columns.join(" | "), align.join("|"))
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "–".into()
    }
}

/// `| median | p99 | max |` of a set of samples, in ms.
fn ms_row(samples: impl Iterator<Item = Duration>) -> String {
    match Summary::of(samples.collect()) {
        Some(s) => format!("{} | {} | {} | {}", ms(s.p50), ms(s.p99), ms(s.max), s.n),
        None => "– | – | – | 0".into(),
    }
}

/// One part of a failover sample, if that direction has it.
type Part = fn(&Sample) -> Option<Duration>;

/// The whole file.
pub fn markdown(r: &Results) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_all(&mut out, r);
    out
}

/// The stall table's row label for the guest kernel's own TCP.
const KERNEL_ROW: &str = "guest kernel TCP (address moved to the NIC in use, GARP after migration)";

fn write_resend(out: &mut String, r: &ResendResult, cost: &[CostRun]) -> std::fmt::Result {
    writeln!(
        out,
        "\n## TCP resend after a failover: its cost and what it buys\n"
    )?;
    writeln!(
        out,
        "The bench's stack (no daemon), the device's TCP resend switched on and off at run time. \
         Cost: one long TCP transfer per workload, the resend switched every window \
         (on, off, off, on, ...; one uncounted window first), the stack's frame byte counter \
         read at each switch; each adjacent on/off pair of windows gives one ratio \
         (`agent/src/tools/bench/resend_cost.rs` says why windows of one connection and not \
         separate runs). Echo: the peer streams through the stack's `tcp-echo` and reads it \
         back, so every segment the stack sends carries data and is copied for a resend (the \
         worst case; counted: bytes the stack sent). Bulk: the peer writes into the stack's \
         `tcp-discard`, as the TCP rows above (counted: bytes the stack received).\n"
    )?;
    table_header(
        out,
        &[
            "workload",
            "TCP resend",
            "windows",
            "MiB/s (median)",
            "stack core busy (median)",
        ],
        2,
    )?;
    for run in cost {
        for resend in [true, false] {
            let (rate, busy) = run.medians(resend);
            let n = run.windows.iter().filter(|w| w.resend == resend).count();
            writeln!(
                out,
                "| {} | {} | {n} | {rate:.1} | {} |",
                workload(run.workload),
                if resend { "on" } else { "off" },
                pct(busy)
            )?;
        }
    }
    writeln!(out)?;
    for run in cost {
        if let Some(x) = run.ratio() {
            writeln!(
                out,
                "{}: throughput with the resend over without, median of {} pairs {:.3}× \
                 (range {:.3}–{:.3}×).\n",
                workload(run.workload),
                x.pairs,
                x.median,
                x.min,
                x.max
            )?;
        }
    }
    writeln!(
        out,
        "Stall: the longest time the peer waited for echoed bytes it had sent, from each step of \
         an unplug → migrate → replug run (as `vfailover lab`) to the next; `–` is none of 2 ms \
         or more. With SACK off the stack takes SACK-permitted out of the peer's SYN \
         (`tcp_sack = false`): a peer that lost segments in the switch then retransmits on the \
         repeated ACKs instead of waiting for its RTO, if it had four or more segments in \
         flight (Linux counts no more duplicates than that, less one). The last row is the \
         guest kernel's own TCP in the same run on the same veths, after the stack is gone: \
         the peer streams to a \
         kernel echo server on {GUEST_KERNEL_V4} through the same unplug → migrate → replug. The \
         lab has no `net_failover` (and no bonding module), so the kernel's address follows \
         the NIC in use, which Linux TCP follows: a watcher puts it on `virtio0` when \
         rtnetlink reports `vf0` gone (a few ms of userspace that `net_failover` does \
         without), one gratuitous ARP goes out on `virtio0` after the migration (as \
         `VIRTIO_NET_F_GUEST_ANNOUNCE` would have the kernel send; the QEMU test saw none for \
         the master's address, so this favours the kernel), and after the replug the address \
         is on the new `vf0` alone.\n"
    )?;
    table_header(
        out,
        &[
            "TCP resend",
            "SACK",
            "after unplug",
            "after migrate",
            "after replug",
            "byte-exact",
        ],
        2,
    )?;
    for run in &r.stalls {
        let on_off = |b: bool| if b { "on" } else { "off" };
        writeln!(
            out,
            "| {} | {} | {} | {} |",
            on_off(run.resend),
            on_off(run.sack),
            stall_cells(&run.stalls),
            yes_no(run.byte_exact)
        )?;
    }
    if let Some(Err(e)) = &r.kernel {
        writeln!(
            out,
            "| {KERNEL_ROW} | on | failed: {} | | | **no** |",
            e.replace('|', "/")
        )?;
    }
    if let Some(Ok(k)) = &r.kernel {
        writeln!(
            out,
            "| {KERNEL_ROW} | on | {} | {} |",
            stall_cells(&k.stalls),
            yes_no(k.byte_exact)
        )?;
        writeln!(
            out,
            "\nThe stand-in's watcher had the kernel's address on `virtio0` {} ms after the \
             rtnetlink event of the unplug.",
            ms(k.reaction)
        )?;
    }
    Ok(())
}

fn workload(w: Workload) -> &'static str {
    match w {
        Workload::Echo => "echo",
        Workload::Bulk => "bulk into discard",
    }
}

/// A stall table's step cells: the longest stall in ms, `–` for none.
fn stall_cells(stalls: &[(Step, Option<Duration>)]) -> String {
    stalls
        .iter()
        .map(|(_, d)| d.map_or("–".into(), |d| format!("{} ms", ms(d))))
        .collect::<Vec<_>>()
        .join(" | ")
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "**no**"
    }
}

fn write_all(out: &mut String, r: &Results) -> std::fmt::Result {
    let o = &r.options;
    let started = r
        .started
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    writeln!(out, "# vfailover bench results\n")?;
    writeln!(
        out,
        "Written by `vfailover bench` (run as root: `cargo run --release -p vfailover -- bench`, \
         or `bench/run.sh`), which builds the namespace lab and measures the userspace stack \
         and the guest kernel on the same veths with the same client, one after the other, in \
         one run. Run started at Unix time {started} and took {:.0} s. How each figure is \
         measured: [`agent/src/tools/bench/`](../agent/src/tools/bench/mod.rs).\n",
        r.took.as_secs_f64()
    )?;

    writeln!(out, "## Machine and setup\n")?;
    writeln!(out, "| | |\n|---|---|")?;
    let m = &r.machine;
    writeln!(out, "| CPU | {} |", m.cpu_model)?;
    writeln!(out, "| cores | {} |", m.cores)?;
    writeln!(out, "| kernel | {} |", m.kernel)?;
    writeln!(
        out,
        "| load average (1/5/15 min) | {} at the start, {} at the end: other work on the \
         machine shares its cores and skews every figure |",
        m.loadavg, r.loadavg_end
    )?;
    writeln!(
        out,
        "| pinning | server side (kernel echo/discard thread, or the stack's datapath thread) \
         on CPU {}; client (peer namespace) on CPU {}; `sched_setaffinity` per thread |",
        m.server_cpu, m.client_cpu
    )?;
    let mode = |m: Option<vfailover_netstack::link::LinkMode>| {
        m.map_or_else(|| "none".to_owned(), |m| m.to_string())
    };
    writeln!(
        out,
        "| XDP mode, bench stack | primary `vf0`: {}, standby `virtio0`: {} |",
        mode(r.modes.0),
        mode(r.modes.1)
    )?;
    writeln!(
        out,
        "| XDP mode, daemon | primary: {}, standby: {} |",
        r.daemon.modes.0, r.daemon.modes.1
    )?;
    writeln!(
        out,
        "| servers | stack: 10.213.0.20 (`udp-echo` 7, `tcp-discard` 9); kernel: {GUEST_KERNEL_V4} \
         on `vf0` (recvmmsg/sendmmsg UDP echo on 7, discard on 9) |\n"
    )?;

    writeln!(out, "## UDP request/response\n")?;
    writeln!(
        out,
        "Closed loop, {} requests in flight, {:.1} s or {} requests per row; latency from \
         per-request timestamps at the client (sendmmsg → the recvmmsg that returned the \
         answer). \"Server core busy\" is the pinned CPU's busy share from `/proc/stat` \
         (includes softirq).\n",
        o.outstanding,
        o.udp_duration.as_secs_f64(),
        o.udp_max_requests
    )?;
    table_header(
        out,
        &[
            "payload",
            "server",
            "requests/s",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            "lost",
            "server core busy",
        ],
        2,
    )?;
    for (size, server, u) in &r.udp {
        let (p50, p99, p999) = u.latency.map_or(("–".into(), "–".into(), "–".into()), |l| {
            (us(l.p50), us(l.p99), us(l.p999))
        });
        writeln!(
            out,
            "| {size} B | {} | {:.0} | {p50} | {p99} | {p999} | {} | {} |",
            server.label(),
            u.rate(),
            u.sent - u.answered,
            pct(u.server_busy)
        )?;
    }
    writeln!(out)?;
    table_header(
        out,
        &[
            "payload",
            "vs",
            "rate stack/kernel",
            "p50 stack/kernel",
            "p99 stack/kernel",
        ],
        2,
    )?;
    for size in [64, 1400] {
        let find = |s: Server| {
            r.udp
                .iter()
                .find(|(z, srv, _)| *z == size && *srv == s)
                .map(|(_, _, u)| u)
        };
        let Some(stack) = find(Server::Stack) else {
            continue;
        };
        for kernel in [Server::KernelBesideStack, Server::KernelAlone] {
            let Some(k) = find(kernel) else { continue };
            let lat = |f: fn(&Summary) -> Duration| match (stack.latency, k.latency) {
                (Some(a), Some(b)) => ratio(f(&a).as_secs_f64(), f(&b).as_secs_f64()),
                _ => "–".into(),
            };
            writeln!(
                out,
                "| {size} B | {} | {} | {} | {} |",
                kernel.label(),
                ratio(stack.rate(), k.rate()),
                lat(|s| s.p50),
                lat(|s| s.p99)
            )?;
        }
    }

    writeln!(out, "\n## TCP bulk, one flow, peer → guest\n")?;
    writeln!(
        out,
        "The peer writes 256 KiB chunks for {:.1} s, half-closes and waits for the server's FIN; \
         throughput is bytes written over that time. \"Lab offloads\": as the lab sets them \
         (TSO/GSO/GRO and TX checksum off on the peer's `eth0` only); \"offloads off\": \
         `ethtool -K <veth> tso off gso off gro off` on every veth on the way and on `vf0` and \
         `virtio0`. The stack's TCP window is 64 KiB (see `netstack/src/stack.rs`); the \
         kernel's autotunes.\n",
        o.tcp_duration.as_secs_f64()
    )?;
    table_header(
        out,
        &[
            "offloads",
            "server",
            "Gbit/s",
            "MiB moved",
            "server core busy",
            "stack/kernel",
        ],
        2,
    )?;
    for (offloads, server, t) in &r.tcp {
        let kernel = r
            .tcp
            .iter()
            .find(|(o, s, _)| o == offloads && *s == Server::KernelBesideStack)
            .map(|(_, _, k)| k);
        let vs = match (server, kernel) {
            (Server::Stack, Some(k)) => ratio(t.gbit_per_s(), k.gbit_per_s()),
            _ => String::new(),
        };
        writeln!(
            out,
            "| {} | {} | {:.2} | {:.0} | {} | {vs} |",
            match offloads {
                Offloads::Lab => "lab",
                Offloads::Off => "off",
            },
            server.label(),
            t.gbit_per_s(),
            t.bytes as f64 / f64::from(1 << 20),
            pct(t.server_busy)
        )?;
    }

    let f = &r.failover;
    writeln!(
        out,
        "\n## Failover: {} unplug/replug cycles under traffic\n",
        f.cycles
    )?;
    writeln!(
        out,
        "`ip link del vf0`, then a new `vf0` (veth, same MAC) on the same host, while the peer \
         sends a 64-byte UDP request to the stack every {} µs ({} sent, {} answered, {} lost over \
         all cycles). \"Event\" is when an independent rtnetlink listener in the guest heard of \
         it; \"switch\" and \"first frame\" come from the datapath's `Stats.last_switch` (`at`, \
         `first_tx_after`). First-frame times include waiting for the next request (≤ one \
         interval). For the return, the listener opens the AF_XDP link as soon as `vf0` is up \
         with carrier (`IFF_RUNNING`, which the kernel's linkwatch sets up to 1 s after the \
         carrier) and hands it to the datapath, as the daemon does. In {} of {} unplugs the \
         datapath switched before the listener heard (its event → switch counts as 0).\n",
        super::failover::PROBE_INTERVAL.as_micros(),
        f.probes_sent,
        f.probes_answered,
        f.probes_sent.saturating_sub(f.probes_answered),
        f.switch_before_listener,
        f.down.len()
    )?;
    table_header(
        out,
        &["direction", "part", "median ms", "p99 ms", "max ms", "n"],
        2,
    )?;
    let rows: [(&str, &[Sample]); 2] =
        [("VF gone → standby", &f.down), ("VF back → primary", &f.up)];
    for (name, samples) in rows {
        let parts: [(&str, Part); 5] = [
            ("**event → first frame on the new path** (agent)", |s| {
                Some(s.event_to_first_tx)
            }),
            ("issue → event (`ip` + kernel)", |s| {
                Some(s.issue_to_event)
            }),
            ("event → XSK open", |s| s.event_to_open),
            ("event → switch", |s| Some(s.event_to_switch)),
            ("switch → first frame", |s| Some(s.switch_to_first_tx)),
        ];
        for (part, get) in parts {
            let values: Vec<Duration> = samples.iter().filter_map(get).collect();
            if values.is_empty() {
                continue;
            }
            writeln!(out, "| {name} | {part} | {} |", ms_row(values.into_iter()))?;
        }
    }

    write_resend(out, &r.resend, &r.resend_cost)?;

    let d = &r.daemon;
    writeln!(
        out,
        "\n## The agent's own cost and announce latency (daemon)\n"
    )?;
    writeln!(
        out,
        "`vfailover run` in the guest namespace (UDP echo and TCP discard services, announce \
         `auto`, standby without GUEST_ANNOUNCE). CPU is utime + stime of all its threads from \
         `/proc/<pid>/stat` over the period (100 % = one core); memory from `/proc/<pid>/status`. \
         Load: the UDP client at 1400 B, {} in flight.\n",
        o.outstanding
    )?;
    table_header(
        out,
        &[
            "period",
            "seconds",
            "CPU",
            "VmRSS MiB",
            "VmHWM MiB",
            "requests/s",
        ],
        1,
    )?;
    for (name, u, rate) in [
        ("idle", d.idle, None),
        ("UDP load", d.load, Some(d.load_rate)),
    ] {
        writeln!(
            out,
            "| {name} | {:.1} | {:.2} % | {:.1} | {:.1} | {} |",
            u.seconds,
            u.cpu * 100.0,
            u.rss_kib as f64 / 1024.0,
            u.hwm_kib as f64 / 1024.0,
            rate.map_or(String::new(), |r| format!("{r:.0}"))
        )?;
    }
    writeln!(
        out,
        "\nMigrations (unplug, move `virtio0`'s far end, replug) with the peer capturing: {} \
         made, {} with a migration signal in the daemon's status after the migration began, a \
         gratuitous ARP for 10.213.0.20 seen after {} of those. The signal is the daemon's \
         `last_migration.at_unix` (the standby's carrier back after the move; the replug \
         comes later in the same migration); the ARP's time is when the peer's AF_PACKET \
         socket returned it (userspace timestamp).\n",
        d.migrations, d.signals, d.announced
    )?;
    table_header(out, &["part", "median ms", "p99 ms", "max ms", "n"], 1)?;
    let summary_row = |s: Option<Summary>| match s {
        Some(s) => format!("{} | {} | {} | {}", ms(s.p50), ms(s.p99), ms(s.max), s.n),
        None => "– | – | – | 0".into(),
    };
    writeln!(
        out,
        "| migration issued → migration signal | {} |",
        summary_row(d.migrate_to_signal)
    )?;
    writeln!(
        out,
        "| **migration signal → first gratuitous ARP on the wire** | {} |",
        summary_row(d.signal_to_announce)
    )?;

    writeln!(out, "\n## Aims\n")?;
    table_header(out, &["aim", "measured", "met"], 3)?;
    let mut aim = |what: &str, measured: String, met: Option<bool>| {
        writeln!(
            out,
            "| {what} | {measured} | {} |",
            match met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "–",
            }
        )
    };
    for size in [64, 1400] {
        let find = |s: Server| {
            r.udp
                .iter()
                .find(|(z, srv, _)| *z == size && *srv == s)
                .map(|(_, _, u)| u)
        };
        if let (Some(s), Some(k)) = (find(Server::Stack), find(Server::KernelBesideStack)) {
            let x = s.rate() / k.rate().max(1e-9);
            aim(
                &format!("UDP {size} B rate ≥ 1.5× kernel"),
                format!("{x:.2}×"),
                Some(x >= 1.5),
            )?;
            if let (Some(a), Some(b)) = (s.latency, k.latency) {
                aim(
                    &format!("UDP {size} B p99 ≤ kernel"),
                    format!("{} vs {} µs", us(a.p99), us(b.p99)),
                    Some(a.p99 <= b.p99),
                )?;
            }
        }
    }
    let tcp = |s: Server| {
        r.tcp
            .iter()
            .find(|(o, srv, _)| *o == Offloads::Off && *srv == s)
            .map(|(_, _, t)| t.gbit_per_s())
    };
    if let (Some(s), Some(k)) = (tcp(Server::Stack), tcp(Server::KernelBesideStack)) {
        let x = s / k.max(1e-9);
        aim(
            "TCP ≥ 0.8× kernel, offloads off",
            format!("{x:.2}×"),
            Some(x >= 0.8),
        )?;
    }
    for (name, samples) in [("gone", &f.down), ("back", &f.up)] {
        let median = Summary::of(samples.iter().map(|s| s.event_to_first_tx).collect());
        aim(
            &format!("switch median ≤ 1 ms (VF {name}, event → first frame)"),
            median.map_or("–".into(), |m| format!("{} ms", ms(m.p50))),
            median.map(|m| m.p50 <= Duration::from_millis(1)),
        )?;
    }
    for run in &r.resend_cost {
        if let Some(x) = run.ratio() {
            aim(
                &format!(
                    "TCP resend costs ≤ 5 % of TCP throughput ({})",
                    workload(run.workload)
                ),
                format!("{:.1} %", (1.0 - x.median) * 100.0),
                Some(x.median >= 0.95),
            )?;
        }
    }
    for run in r.resend.stalls.iter().filter(|s| s.resend) {
        let worst = run
            .stalls
            .iter()
            .filter_map(|(_, d)| *d)
            .max()
            .unwrap_or_default();
        aim(
            &format!(
                "longest TCP stall after unplug, migration, replug ≤ 50 ms (SACK {})",
                if run.sack { "on" } else { "off" }
            ),
            format!("{} ms", ms(worst)),
            Some(worst <= Duration::from_millis(50)),
        )?;
    }
    aim(
        "first announce ≤ 1 ms after the signal (median)",
        d.signal_to_announce
            .map_or("–".into(), |s| format!("{} ms", ms(s.p50))),
        d.signal_to_announce
            .map(|s| s.p50 <= Duration::from_millis(1)),
    )?;
    aim(
        "idle CPU ≤ 1 %",
        format!("{:.2} %", d.idle.cpu * 100.0),
        Some(d.idle.cpu <= 0.01),
    )?;
    let peak = d.idle.hwm_kib.max(d.load.hwm_kib);
    aim(
        "RSS ≤ 64 MiB (peak VmHWM)",
        format!("{:.1} MiB", peak as f64 / 1024.0),
        Some(peak <= 64 * 1024),
    )?;
    Ok(())
}
