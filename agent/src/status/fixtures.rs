//! A status with one pair on its fast path and one degraded, for the
//! renderers' tests.

use vfailover_netstack::resend::ResendCounters;
use vfailover_netstack::stats::PathCounters;

use super::*;

fn link(ifname: &str, ifindex: u32, mode: &str) -> LinkStatus {
    LinkStatus {
        ifname: ifname.into(),
        ifindex,
        mac: "02:00:00:00:00:01".into(),
        mode: mode.into(),
        health: "up".into(),
        counters: PathCounters {
            rx_packets: 1_234_567,
            rx_bytes: 987_654_321,
            tx_packets: 7,
            tx_bytes: 700,
            tx_dropped: 1,
            rx_malformed: 2,
            rx_looped: 3,
        },
    }
}

pub(super) fn sample() -> Status {
    Status {
        version: "0.1.0".into(),
        pid: 4242,
        uptime_secs: 3725.5,
        pairs: vec![
            PairStatus {
                name: "main".into(),
                mac: "02:00:00:00:00:01".into(),
                standby: Some(link("virtio0", 3, "xdp-driver")),
                primary: Some(link("vf0", 5, "zero-copy")),
                path: "primary".into(),
                degraded: false,
                switches: 4,
                last_switch: Some(SwitchStatus {
                    at_unix: 1_000.0,
                    from: "standby".into(),
                    to: "primary".into(),
                    cause: "primary up for 200 ms".into(),
                    first_tx_after_us: Some(180),
                }),
                guest_announce: Some(false),
                announce_policy: "auto".into(),
                migrations_detected: 1,
                last_migration: Some(MigrationStatus {
                    at_unix: 990.0,
                    signal: "notify-peers".into(),
                }),
                announces_sent: 10,
                addresses: vec!["10.213.0.20/24".into(), "fd00:213::20/64".into()],
                tx_no_path: 0,
                resend: ResendCounters::default(),
                fast_path_error: None,
                datapath_error: None,
            },
            PairStatus {
                // Everything a label must escape.
                name: "odd \"name\"\\\n".into(),
                mac: "02:00:00:00:00:02".into(),
                standby: Some(link("virtio1", 4, "packet")),
                primary: None,
                path: "standby".into(),
                degraded: true,
                switches: 0,
                last_switch: None,
                guest_announce: None,
                announce_policy: "always".into(),
                migrations_detected: 0,
                last_migration: None,
                announces_sent: 0,
                addresses: vec![],
                tx_no_path: 3,
                resend: ResendCounters::default(),
                fast_path_error: Some("eth2 already has XDP program id 7 attached".into()),
                datapath_error: None,
            },
        ],
        refused: vec![RefusedDevice {
            ifname: "eth1".into(),
            ifindex: 7,
            mac: "02:00:00:00:00:01".into(),
            reason: "second primary for pair main".into(),
        }],
    }
}
