//! The failover datapath in the namespace lab: a TCP stream through unplug,
//! migrate and replug; UDP echo on both paths; the guest kernel keeping its
//! own traffic on a NIC under our XDP filter. Root only.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use vfailover::lab::{root_or_skip, Lab, LabOptions, Ns, GUEST_KERNEL_V4, STACK_V4, STACK_V6};
use vfailover::scenario::{failover_transfer, udp_probes, GuestStack, StandbyKind, Step};
use vfailover_netstack::stats::{Path, Stats};

const STREAM: u64 = 64 << 20;
/// The longest the peer may wait for echoed bytes around a failover step.
/// The goal is 50 ms; the margin is for a busy 2-core machine. smoltcp's
/// own retransmission timer alone would take at least 1 s.
const STALL_BOUND: Duration = Duration::from_millis(300);

fn wait_for_path(guest: &GuestStack, want: Path) -> Stats {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = guest.stats().unwrap();
        if guest.path().unwrap() == want {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "path never became {want}: {stats:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn tcp_stream_survives_unplug_migrate_replug() {
    if !root_or_skip() {
        return;
    }
    let lab = Lab::create(LabOptions::default()).unwrap();
    let guest = GuestStack::start(&lab, StandbyKind::Xdp).unwrap();
    assert_eq!(guest.path().unwrap(), Path::Primary);

    let report = failover_transfer(&lab, &guest, STREAM).unwrap();
    let (unplug, migrate, replug) = (&report.steps[0], &report.steps[1], &report.steps[2]);
    let fin = &report.final_stats;
    println!(
        "64 MiB echo in {:.2} s; modes {:?}; ip link del→rtnetlink event {:?}, event→switch {:?}, switch→first standby TX {:?}",
        report.duration.as_secs_f64(),
        report.modes,
        report.unplug_to_event,
        report.event_to_switch,
        report.switch_to_first_standby_tx,
    );
    println!(
        "at unplug {:?}\nat migrate {:?}\nat replug {:?}\nend {:?}",
        unplug.stats_before, migrate.stats_before, replug.stats_before, fin
    );

    for step in &report.steps {
        println!(
            "longest TCP stall after {:?}: {:?}",
            step.step, step.longest_stall
        );
    }
    assert!(report.byte_exact(), "echo differs: {report:?}");
    for step in &report.steps {
        let stall = step.longest_stall.unwrap_or_default();
        assert!(
            stall <= STALL_BOUND,
            "TCP stood still {stall:?} after {:?} (bound {STALL_BOUND:?}); resent {:?}",
            step.step,
            fin.resend
        );
    }
    assert!(
        fin.resend.rounds >= 3,
        "a resend at the unplug, the migration and the replug: {:?}",
        fin.resend
    );
    assert_eq!(
        [unplug.step, migrate.step, replug.step],
        [Step::Unplug, Step::Migrate, Step::Replug]
    );
    // Primary first, then the standby, then the primary again.
    assert!(unplug.stats_before.primary.tx_packets > 1000);
    assert_eq!(
        unplug.stats_before.standby.tx_packets, 0,
        "no standby TX before the unplug"
    );
    assert!(
        replug.stats_before.standby.tx_packets > 1000,
        "the standby carried the middle"
    );
    assert_eq!(
        migrate.stats_before.primary.tx_packets, replug.stats_before.primary.tx_packets,
        "no primary TX while it was unplugged"
    );
    assert!(fin.primary.tx_packets > replug.stats_before.primary.tx_packets + 1000);
    assert_eq!(fin.switches, 2, "primary → standby → primary");
    assert_eq!(guest.path().unwrap(), Path::Primary);
    assert!(
        report.announced >= 2,
        "a GARP and an NA after the migration"
    );
    let switch_time = report
        .switch_to_first_standby_tx
        .expect("the standby sent after the switch");
    assert!(
        report.unplug_to_event.is_some(),
        "the deletion was seen on rtnetlink"
    );
    assert!(switch_time < Duration::from_secs(1));
}

#[test]
fn udp_echo_on_both_paths_and_the_kernel_keeps_its_address() {
    if !root_or_skip() {
        return;
    }
    let lab = Lab::create(LabOptions::default()).unwrap();
    let guest = GuestStack::start(&lab, StandbyKind::Packet).unwrap();
    // Our XDP program is on vf0; what the stack does not own passes to the
    // guest kernel, whose own address must keep answering.
    assert!(lab.ping(Ns::Peer, GUEST_KERNEL_V4.into(), 3).unwrap());
    // The stack answers ICMP echo itself, over IPv4 and IPv6.
    assert!(
        lab.ping(Ns::Peer, STACK_V4.into(), 3).unwrap(),
        "ping the stack"
    );
    assert!(
        lab.ping(Ns::Peer, STACK_V6.into(), 3).unwrap(),
        "ping6 the stack"
    );

    let (v4, v6) = (IpAddr::from(STACK_V4), IpAddr::from(STACK_V6));
    let probe = |to, size, what| assert_eq!(udp_probes(&lab, to, 20, size).unwrap(), 20, "{what}");
    let before = guest.stats().unwrap();
    probe(v4, 64, "UDP echo on the primary");
    probe(v4, 1400, "1400-byte UDP echo on the primary");
    probe(
        v6,
        64,
        "UDP echo over IPv6 (neighbour discovery) on the primary",
    );
    let on_primary = guest.stats().unwrap();
    assert!(on_primary.primary.tx_packets >= before.primary.tx_packets + 60);

    lab.unplug().unwrap();
    let unplugged = wait_for_path(&guest, Path::Standby);
    probe(v4, 64, "UDP echo on the standby");
    probe(v6, 64, "UDP echo over IPv6 on the standby");
    let on_standby = guest.stats().unwrap();
    assert!(on_standby.standby.tx_packets >= unplugged.standby.tx_packets + 40);
    assert!(on_standby.standby.rx_packets >= unplugged.standby.rx_packets + 40);
    assert_eq!(
        guest.modes().unwrap().1.map(|m| m.to_string()).as_deref(),
        Some("packet")
    );
}
