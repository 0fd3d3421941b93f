//! What the TCP resend costs in CPU: a TCP echo of N MiB through the
//! stack's `tcp-echo` service, with a second stack as the peer, both in
//! this process over an in-memory link, no kernel and no clock in the
//! loop. Counted: run it under callgrind with the resend on and off and
//! compare the instruction counts (the peer's resender is always off, so
//! the difference is the stack's). Timed: `compare` alternates the two and
//! times only the echoing stack's polls.
//!
//! ```sh
//! cargo build --release --example resend_cost
//! valgrind --tool=callgrind target/release/examples/resend_cost on 16
//! valgrind --tool=callgrind target/release/examples/resend_cost off 16
//! taskset -c 1 target/release/examples/resend_cost compare 64 15
//! ```

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::IpAddress;
use vfailover_netstack::link::memory::MemoryLink;
use vfailover_netstack::mac::MacAddr;
use vfailover_netstack::resend::ResendLimits;
use vfailover_netstack::stack::{Buffers, ServiceConfig, ServiceKind, Stack, StackConfig};

fn config(mac: [u8; 6], cidr: &str, resend: bool, services: Vec<ServiceConfig>) -> StackConfig {
    StackConfig {
        mac: MacAddr(mac),
        addresses: vec![cidr.parse().expect("a valid CIDR")],
        gateway_v4: None,
        gateway_v6: None,
        services,
        mtu: 1500,
        buffers: Buffers::default(),
        resend: ResendLimits {
            enabled: resend,
            ..ResendLimits::default()
        },
        tcp_sack: true,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [onoff, mib] if onoff == "on" || onoff == "off" => {
            let resend = onoff == "on";
            let spent = echo(resend, mib.parse()?)?;
            println!(
                "{mib} MiB echoed, resend {onoff}; the echoing stack's polls took {:.1} ms",
                spent.as_secs_f64() * 1e3
            );
            Ok(())
        }
        [compare, mib, pairs] if compare == "compare" => {
            compare_pairs(mib.parse()?, pairs.parse()?)
        }
        _ => Err("usage: resend_cost on|off MIB, or resend_cost compare MIB PAIRS".into()),
    }
}

/// Alternate echoes with the resend on and off and compare the time the
/// echoing stack's polls took, pair by pair: the resend's cost on the
/// stack's own work, with no kernel and no peer pacing in it. (The kernel's
/// share of a real link's work is not in the denominator, so this
/// overstates the cost on a real link.)
fn compare_pairs(mib: usize, pairs: usize) -> Result<(), Box<dyn std::error::Error>> {
    echo(true, mib)?; // warm-up, not counted
    let mut ratios = Vec::new();
    for _ in 0..pairs {
        let on = echo(true, mib)?;
        let off = echo(false, mib)?;
        ratios.push(on.as_secs_f64() / off.as_secs_f64());
    }
    ratios.sort_by(f64::total_cmp);
    let n = ratios.len();
    let median = (ratios[(n - 1) / 2] + ratios[n / 2]) / 2.0;
    println!(
        "{n} pairs of {mib} MiB echoes: the echoing stack's time with the resend over without, \
         median {median:.3}× (range {:.3}–{:.3}×)",
        ratios[0],
        ratios[n - 1]
    );
    Ok(())
}

/// Echo `mib` MiB through a stack with the resend on or off; returns the
/// time spent in that stack's polls.
fn echo(resend: bool, mib: usize) -> Result<std::time::Duration, Box<dyn std::error::Error>> {
    let total = mib << 20;
    let (ours, theirs) = MemoryLink::pair("virtio0", "peer0");
    let echo = ServiceConfig {
        kind: ServiceKind::TcpEcho,
        port: 7,
    };
    let mut stack = Stack::new(
        &config([2, 0, 0, 0, 0, 0x20], "10.0.0.20/24", resend, vec![echo]),
        Some(Box::new(ours)),
        None,
    )?;
    let mut peer = Stack::new(
        &config([2, 0, 0, 0, 0, 1], "10.0.0.1/24", false, Vec::new()),
        Some(Box::new(theirs)),
        None,
    )?;
    let handle: SocketHandle = peer.add_tcp_socket();
    let (sockets, iface) = peer.sockets_and_iface();
    sockets.get_mut::<tcp::Socket>(handle).connect(
        iface.context(),
        (IpAddress::v4(10, 0, 0, 20), 7),
        40000,
    )?;
    let chunk = vec![0x5a_u8; 16 << 10];
    let mut buf = vec![0_u8; 64 << 10];
    let (mut sent, mut received) = (0, 0);
    let mut now = Instant::from_millis(0);
    let mut spent = std::time::Duration::ZERO;
    // Bounded: a stalled transfer ends the run with an error.
    for _ in 0..10_000_000 {
        now += Duration::from_micros(10);
        peer.poll(now);
        let started = std::time::Instant::now();
        stack.poll(now);
        spent += started.elapsed();
        let socket = peer.sockets_mut().get_mut::<tcp::Socket>(handle);
        if sent < total && socket.can_send() {
            sent += socket.send_slice(&chunk[..chunk.len().min(total - sent)])?;
        }
        while socket.can_recv() {
            received += socket.recv_slice(&mut buf)?;
        }
        if received == total {
            let held = stack.device().stats().resend.held_bytes;
            if !resend && held != 0 {
                return Err("the resend was off but held bytes".into());
            }
            return Ok(spent);
        }
    }
    Err(format!("stalled: {sent} sent, {received} echoed of {total}").into())
}
