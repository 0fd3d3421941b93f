use std::net::Ipv4Addr;

use vfailover_netstack::mac::MacAddr;
use vfailover_netstack::stack::{ServiceConfig, ServiceKind};

use super::*;
use crate::migration::AnnouncePolicy;
use crate::pairing::Failback;

const SAMPLE: &str = r#"
sysfs_root = "/sys"                 # optional; tests classify from a fake tree
[control]
socket = "/run/vfailover/vfailover.sock"
group = "vfailover"                 # optional; socket group (mode 0660)
[announce]                           # QEMU's announce knobs and defaults
initial_ms = 50
max_ms = 550
rounds = 5
step_ms = 100
[failback]
hold_ms = 200                        # primary must be up with carrier this long before TX returns to it
flap_window_s = 30                   # flaps within this window...
max_hold_ms = 10000                  # ...double the hold, up to this
[[pair]]
name = "main"                        # optional; default: the standby's name, else "pair0", "pair1"...
standby = "virtio0"                  # optional; auto-detected by the STANDBY bit when absent
primary_mac = "02:00:00:00:00:01"    # optional; default: the standby's permanent MAC
addresses = ["10.213.0.20/24", "fd00:213::20/64"]
gateway = "10.213.0.1"               # optional, IPv4
gateway6 = "fd00:213::1"             # optional, IPv6
announce = "auto"                    # auto | always | never
announce_rarp = false
primary_mode = "auto"                # auto | zero-copy | driver | generic (AF_XDP)
standby_mode = "auto"                # auto | xdp | packet
mtu = 1500
services = [
  { kind = "udp-echo", port = 7 },
  { kind = "tcp-echo", port = 7 },
  { kind = "tcp-discard", port = 9 },
]
"#;

/// The sample with `pair[0]`'s line starting with `key =` replaced.
fn sample_with(key: &str, line: &str) -> String {
    SAMPLE
        .lines()
        .map(|l| {
            if l.starts_with(&format!("{key} =")) {
                line
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn error(text: &str) -> String {
    match Config::parse(text, "test.toml") {
        Ok(config) => panic!("accepted: {config:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn sample_parses() {
    let config = Config::parse(SAMPLE, "test.toml").unwrap();
    assert_eq!(config.sysfs_root, Path::new("/sys"));
    assert_eq!(config.control.socket, Path::new(DEFAULT_SOCKET));
    assert_eq!(config.control.group.as_deref(), Some("vfailover"));
    assert_eq!(config.announce, AnnounceTiming::default());
    assert_eq!(config.failback, Failback::default());
    let pair = &config.pairs[0];
    assert_eq!(pair.name, "main");
    assert_eq!(pair.standby.as_deref(), Some("virtio0"));
    assert_eq!(pair.primary_mac, Some(MacAddr([2, 0, 0, 0, 0, 1])));
    assert_eq!(pair.addresses.len(), 2);
    assert_eq!(pair.addresses[0].to_string(), "10.213.0.20/24");
    assert_eq!(pair.addresses[1].to_string(), "fd00:213::20/64");
    assert_eq!(pair.gateway, Some(Ipv4Addr::new(10, 213, 0, 1)));
    assert_eq!(pair.gateway6, Some("fd00:213::1".parse().unwrap()));
    assert_eq!(pair.announce, AnnouncePolicy::Auto);
    assert!(!pair.announce_rarp);
    assert_eq!(pair.primary_mode, PrimaryMode::Auto);
    assert_eq!(pair.standby_mode, StandbyMode::Auto);
    assert_eq!(pair.mtu, 1500);
    assert_eq!(
        pair.services,
        [
            ServiceConfig {
                kind: ServiceKind::UdpEcho,
                port: 7
            },
            ServiceConfig {
                kind: ServiceKind::TcpEcho,
                port: 7
            },
            ServiceConfig {
                kind: ServiceKind::TcpDiscard,
                port: 9
            },
        ]
    );
}

#[test]
fn tcp_switches_default_on_and_turn_off() {
    let text = "[[pair]]\naddresses = [\"10.0.0.2/24\"]\ntcp_resend = false\ntcp_sack = false\n";
    let pair = &Config::parse(text, "t").unwrap().pairs[0];
    assert!(!pair.tcp_resend && !pair.tcp_sack);
    let e = Config::parse(&text.replace("tcp_sack = false", "tcp_sack = \"no\""), "t").unwrap_err();
    assert!(e.to_string().contains("tcp_sack"), "{e}");
}

#[test]
fn minimal_config_gets_defaults_and_names() {
    let text = r#"
[[pair]]
addresses = ["10.0.0.2/24"]
[[pair]]
addresses = ["10.0.1.2/24"]
[[pair]]
standby = "ens4"
addresses = ["10.0.2.2/24"]
primary_mode = "zero-copy"
standby_mode = "packet"
announce = "never"
[control]
group = ""
"#;
    let config = Config::parse(text, "t").unwrap();
    assert_eq!(config.sysfs_root, Path::new("/sys"));
    assert_eq!(config.control.group, None);
    let names: Vec<_> = config.pairs.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["pair0", "pair1", "ens4"]);
    assert_eq!(config.pairs[0].standby, None);
    assert_eq!(config.pairs[0].mtu, 1500);
    assert!(config.pairs[0].tcp_resend && config.pairs[0].tcp_sack);
    assert_eq!(config.pairs[2].primary_mode, PrimaryMode::ZeroCopy);
    assert_eq!(config.pairs[2].standby_mode, StandbyMode::Packet);
    assert_eq!(config.pairs[2].announce, AnnouncePolicy::Never);
    assert_eq!(config.pairs[2].announce.as_str(), "never");
}

#[test]
fn syntax_error_has_line_and_column() {
    let e = error(&sample_with("mtu", "mtu = fifteen"));
    assert!(e.starts_with("test.toml:26:"), "{e}");
}

#[test]
fn unknown_key_is_named_with_its_path() {
    let e = error(&sample_with("mtu", "mut = 1500"));
    assert!(
        e.starts_with("test.toml:26:1: pair[0].mut: unknown field `mut`"),
        "{e}"
    );
    let e = error("[control]\nsokcet = \"/x\"\n");
    assert!(
        e.contains("test.toml:2:1: control.sokcet: unknown field"),
        "{e}"
    );
    let e = error("[[pair]]\naddresses = [\"10.0.0.2/24\"]\nservices = [{ kind = \"udp-echo\", port = 7, proto = 1 }]\n");
    assert!(
        e.contains("pair[0].services[0].proto: unknown field"),
        "{e}"
    );
    let e = error("[[pair]]\naddresses = [\"10.0.0.2/24\"]\nservices = [{ kind = \"udp-chargen\", port = 19 }]\n");
    assert!(
        e.contains("pair[0].services[0].kind: unknown variant `udp-chargen`"),
        "{e}"
    );
}

#[test]
fn wrong_type_is_named() {
    let e = error(&sample_with("mtu", "mtu = \"1500\""));
    assert!(e.contains("pair[0].mtu: invalid type: string"), "{e}");
    let e = error(&sample_with(
        "addresses",
        "addresses = [\"10.213.0.20/24\", 5]",
    ));
    assert!(
        e.contains("pair[0].addresses[1]: invalid type: integer"),
        "{e}"
    );
}

#[test]
fn bad_addresses() {
    let e = error(&sample_with(
        "addresses",
        "addresses = [\"10.213.0.20/24\", \"10.0.0.300/24\"]",
    ));
    assert!(
        e.contains("test.toml:19:32: pair[0].addresses[1]: `10.0.0.300/24` is not an IP address with a prefix length"),
        "{e}"
    );
    for (address, why) in [
        ("10.213.0.20", "not an IP address with a prefix length"),
        ("10.213.0.20/33", "prefix length must be 1..=32"),
        ("224.0.0.5/24", "multicast"),
        ("127.0.0.2/8", "loopback"),
        ("0.0.0.0/8", "unspecified"),
        ("255.255.255.255/32", "broadcast"),
        ("10.213.0.255/24", "broadcast address of its prefix"),
        ("10.213.0.0/24", "network address"),
        ("ff02::1/64", "multicast"),
        ("::1/128", "loopback"),
        ("::/64", "unspecified"),
    ] {
        let e = error(&format!("[[pair]]\naddresses = [\"{address}\"]\n"));
        assert!(
            e.contains("pair[0].addresses[0]") && e.contains(why),
            "{address}: {e}"
        );
    }
    // /31 and /32 have no broadcast address.
    Config::parse(
        "[[pair]]\naddresses = [\"10.0.0.1/31\", \"10.0.1.0/31\", \"10.0.2.255/32\"]\n",
        "t",
    )
    .unwrap();
}

#[test]
fn address_count_and_reuse() {
    let nine: Vec<String> = (1..=9).map(|i| format!("\"10.0.0.{i}/24\"")).collect();
    let e = error(&format!("[[pair]]\naddresses = [{}]\n", nine.join(", ")));
    assert!(
        e.contains("pair[0].addresses: 9 addresses; the stack holds at most 8"),
        "{e}"
    );
    let e = error("[[pair]]\naddresses = []\n");
    assert!(e.contains("pair[0].addresses: no addresses"), "{e}");
    let e = error("[[pair]]\naddresses = [\"10.0.0.2/24\", \"10.0.0.2/16\"]\n");
    assert!(
        e.contains("pair[0].addresses[1]: `10.0.0.2/16` is listed twice"),
        "{e}"
    );
    let e = error("[[pair]]\naddresses = [\"10.0.0.2/24\"]\n[[pair]]\naddresses = [\"10.0.1.2/24\", \"10.0.0.2/24\"]\n");
    assert!(
        e.contains("test.toml:4:29: pair[1].addresses[1]: 10.0.0.2 is already used by pair[0]"),
        "{e}"
    );
}

#[test]
fn duplicate_pairs() {
    let e = error("[[pair]]\nname = \"a\"\naddresses = [\"10.0.0.2/24\"]\n[[pair]]\nname = \"a\"\naddresses = [\"10.0.1.2/24\"]\n");
    assert!(
        e.contains("test.toml:5:8: pair[1].name: pair name `a` is already used by pair[0]"),
        "{e}"
    );
    let e = error("[[pair]]\nname = \"pair1\"\naddresses = [\"10.0.0.2/24\"]\n[[pair]]\naddresses = [\"10.0.1.2/24\"]\n");
    assert!(
        e.contains("pair[1].name: pair name `pair1` (its default name) is already used by pair[0]"),
        "{e}"
    );
    let e = error("[[pair]]\nname = \"a\"\nstandby = \"ens3\"\naddresses = [\"10.0.0.2/24\"]\n[[pair]]\nstandby = \"ens3\"\naddresses = [\"10.0.1.2/24\"]\n");
    assert!(
        e.contains("pair[1].standby: standby `ens3` is already used by pair[0]"),
        "{e}"
    );
    let e = error("[[pair]]\nprimary_mac = \"02:00:00:00:00:01\"\naddresses = [\"10.0.0.2/24\"]\n[[pair]]\nprimary_mac = \"02-00-00-00-00-01\"\naddresses = [\"10.0.1.2/24\"]\n");
    assert!(
        e.contains("pair[1].primary_mac: primary_mac 02:00:00:00:00:01 is already used by pair[0]"),
        "{e}"
    );
    let e = error("");
    assert!(e.contains("test.toml: no [[pair]]"), "{e}");
}

#[test]
fn bad_names_and_macs() {
    for (line, why) in [
        (
            "standby = \"a-very-long-interface-name\"",
            "pair[0].standby: `a-very-long-interface-name` is not an interface name",
        ),
        (
            "standby = \"eth/0\"",
            "pair[0].standby: `eth/0` is not an interface name",
        ),
        (
            "name = \"my pair\"",
            "pair[0].name: `my pair` is not a pair name",
        ),
        (
            "primary_mac = \"02:00:00:00:01\"",
            "pair[0].primary_mac: `02:00:00:00:01` is not a MAC address",
        ),
        (
            "primary_mac = \"02:00:00:00:00:0g\"",
            "is not a MAC address",
        ),
        (
            "primary_mac = \"+2:00:00:00:00:+1\"",
            "`+2:00:00:00:00:+1` is not a MAC address",
        ),
        ("primary_mac = \"01:00:5e:00:00:01\"", "multicast MAC"),
        ("primary_mac = \"00:00:00:00:00:00\"", "all-zero"),
    ] {
        let e = error(&format!(
            "[[pair]]\naddresses = [\"10.0.0.2/24\"]\n{line}\n"
        ));
        assert!(e.contains(why), "{line}: {e}");
    }
}

#[test]
fn bad_gateways() {
    for (line, why) in [
        (
            "gateway = \"10.9.0.1\"",
            "pair[0].gateway: 10.9.0.1 is not inside any of the pair's prefixes",
        ),
        (
            "gateway = \"fd00::1\"",
            "pair[0].gateway: `fd00::1` is IPv6; put an IPv6 gateway in `gateway6`",
        ),
        (
            "gateway = \"router\"",
            "pair[0].gateway: `router` is not an IP address",
        ),
        (
            "gateway = \"10.0.0.2\"",
            "10.0.0.2 is one of the pair's own addresses",
        ),
        (
            "gateway6 = \"10.0.0.1\"",
            "pair[0].gateway6: `10.0.0.1` is IPv4; put an IPv4 gateway in `gateway`",
        ),
        (
            "gateway6 = \"fd01::1\"",
            "pair[0].gateway6: fd01::1 is not inside any of the pair's prefixes",
        ),
    ] {
        let e = error(&format!(
            "[[pair]]\naddresses = [\"10.0.0.2/24\", \"fd00::2/64\"]\n{line}\n"
        ));
        assert!(e.contains(why), "{line}: {e}");
    }
}

#[test]
fn bad_numbers() {
    for (text, why) in [
        ("[announce]\nrounds = 0", "announce.rounds: 0 is out of range: 1..=100"),
        ("[announce]\nrounds = 101", "announce.rounds: 101 is out of range"),
        ("[announce]\ninitial_ms = 600\nmax_ms = 500", "test.toml:3:10: announce.max_ms: max_ms (500 ms) is below initial_ms (600 ms)"),
        ("[announce]\nstep_ms = 60001", "announce.step_ms: 60001 ms is out of range: 0..=60000 ms"),
        ("[announce]\ninitial_ms = -1", "announce.initial_ms: -1 ms is out of range"),
        ("[failback]\nhold_ms = 5000\nmax_hold_ms = 1000", "failback.max_hold_ms: max_hold_ms (1000 ms) is below hold_ms (5000 ms)"),
        ("[failback]\nflap_window_s = 99999", "failback.flap_window_s: 99999 s is out of range"),
        ("[[pair]]\naddresses = [\"10.0.0.2/24\"]\nmtu = 575", "pair[0].mtu: 575 is out of range: 576..=9000"),
        ("[[pair]]\naddresses = [\"10.0.0.2/24\"]\nmtu = 9001", "pair[0].mtu: 9001 is out of range"),
        ("[[pair]]\naddresses = [\"10.0.0.2/24\"]\nservices = [{ kind = \"tcp-echo\", port = 0 }]", "pair[0].services[0].port: port 0 is out of range: 1..=65535"),
        ("[[pair]]\naddresses = [\"10.0.0.2/24\"]\nservices = [{ kind = \"tcp-echo\", port = 65536 }]", "port 65536 is out of range"),
        ("[[pair]]\naddresses = [\"10.0.0.2/24\"]\nservices = [{ kind = \"tcp-echo\", port = 7 }, { kind = \"tcp-echo\", port = 7 }]", "pair[0].services[1].port: tcp-echo on port 7 is listed twice"),
    ] {
        let text = if text.contains("[[pair]]") { text.to_owned() } else { format!("{text}\n[[pair]]\naddresses = [\"10.0.0.2/24\"]\n") };
        let e = error(&text);
        assert!(e.contains(why), "{text}: {e}");
    }
}

#[test]
fn control_socket_checks() {
    let e = error("sysfs_root = \"sys\"\n[control]\nsocket = \"vfailover.sock\"\n[[pair]]\naddresses = [\"10.0.0.2/24\"]\n");
    assert!(
        e.contains("test.toml:1:14: sysfs_root: `sys` is not an absolute path"),
        "{e}"
    );
    assert!(
        e.contains("test.toml:3:10: control.socket: `vfailover.sock` is not an absolute path"),
        "{e}"
    );
    let long = format!("/{}", "x".repeat(120));
    let e = error(&format!(
        "[control]\nsocket = \"{long}\"\n[[pair]]\naddresses = [\"10.0.0.2/24\"]\n"
    ));
    assert!(
        e.contains("control.socket: the path is 121 bytes long"),
        "{e}"
    );
}

#[test]
fn every_problem_is_reported_on_its_own_line() {
    let e = error("[[pair]]\naddresses = [\"10.0.0.300/24\"]\nmtu = 1\ngateway = \"x\"\n");
    let lines: Vec<_> = e.lines().collect();
    assert_eq!(lines.len(), 3, "{e}");
    assert!(lines.iter().all(|l| l.starts_with("test.toml:")), "{e}");
}

#[test]
fn from_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vfailover.toml");
    let e = Config::from_file(&path).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("cannot read {}", path.display())),
        "{e}"
    );
    std::fs::write(
        &path,
        "[[pair]]\naddresses = [\"10.0.0.2/24\"]\nbogus = 1\n",
    )
    .unwrap();
    let e = Config::from_file(&path).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "{}:3:1: pair[0].bogus: unknown field",
            path.display()
        )),
        "{e}"
    );
    std::fs::write(&path, SAMPLE).unwrap();
    assert_eq!(Config::from_file(&path).unwrap().pairs.len(), 1);
}
