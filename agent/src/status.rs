//! What the daemon reports: [`Status`], filled by the daemon's main loop,
//! sent as JSON over the control socket (`vfailover status --json`), and
//! rendered for people ([`render_table`]) and for Prometheus
//! ([`render_prometheus`], text exposition format 0.0.4).
//!
//! Fields are plain strings and numbers rather than the daemon's own enums
//! so that a client of another version still parses what it does not know.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use vfailover_netstack::resend::ResendCounters;
use vfailover_netstack::stats::PathCounters;

/// The whole daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub uptime_secs: f64,
    pub pairs: Vec<PairStatus>,
    /// Devices that looked like a primary or standby but were not used.
    pub refused: Vec<RefusedDevice>,
}

/// One failover pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairStatus {
    pub name: String,
    pub mac: String,
    pub standby: Option<LinkStatus>,
    pub primary: Option<LinkStatus>,
    /// `primary`, `standby` or `none`: where TX goes now.
    pub path: String,
    /// Something is missing or unhealthy (no primary, standby down...).
    pub degraded: bool,
    pub switches: u64,
    pub last_switch: Option<SwitchStatus>,
    /// Whether the standby negotiated `VIRTIO_NET_F_GUEST_ANNOUNCE`;
    /// `None` when unknown (no standby, or no feature bits in sysfs).
    pub guest_announce: Option<bool>,
    /// `auto`, `always` or `never`.
    pub announce_policy: String,
    pub migrations_detected: u64,
    pub last_migration: Option<MigrationStatus>,
    /// Announce frames sent (GARP, unsolicited NA, RARP), not rounds.
    pub announces_sent: u64,
    /// The stack's addresses, `address/prefix`.
    pub addresses: Vec<String>,
    /// Frames the stack wanted to send while no link could take them.
    pub tx_no_path: u64,
    /// TCP segments and ACKs sent again after switches and migrations.
    #[serde(default)]
    pub resend: ResendCounters,
    /// Why the paired primary is not carrying the stack (AF_XDP could not
    /// be opened on it: another XDP program attached, no driver support...);
    /// `None` while the fast path works or no primary is paired.
    #[serde(default)]
    pub fast_path_error: Option<String>,
    /// Why the rest of this pair's status is missing: its datapath thread
    /// did not answer (stuck or stopped); `None` while it answers.
    #[serde(default)]
    pub datapath_error: Option<String>,
}

/// One link of a pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkStatus {
    pub ifname: String,
    pub ifindex: u32,
    pub mac: String,
    /// How it is opened: `zero-copy`, `driver`, `generic`, `packet`...
    pub mode: String,
    /// `up`, `no-carrier`, `down`, `gone`...
    pub health: String,
    /// On the wire as fields of the link (`rx_packets`, ...).
    #[serde(flatten)]
    pub counters: PathCounters,
}

/// The last switch of a pair's path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwitchStatus {
    /// Seconds since the Unix epoch.
    pub at_unix: f64,
    pub from: String,
    pub to: String,
    pub cause: String,
    /// From the event to the first frame sent on the new path.
    pub first_tx_after_us: Option<u64>,
}

/// The last migration detected on a pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationStatus {
    /// Seconds since the Unix epoch.
    pub at_unix: f64,
    /// What gave it away: `notify-peers`, `replug`, `clock-jump`, `manual`...
    pub signal: String,
}

/// A device the daemon saw and did not use, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefusedDevice {
    pub ifname: String,
    pub ifindex: u32,
    pub mac: String,
    pub reason: String,
}

/// The paths a pair can be on, in the order metrics list them.
const PATHS: [&str; 3] = ["primary", "standby", "none"];

/// One line for systemd's `STATUS=` (`systemctl status vfailover`): per
/// pair the path, the link it is on, and what degrades it.
pub fn render_line(status: &Status) -> String {
    if status.pairs.is_empty() {
        return "no pairs configured".to_owned();
    }
    let pairs: Vec<String> = status
        .pairs
        .iter()
        .map(|p| {
            let active = match p.path.as_str() {
                "primary" => p.primary.as_ref(),
                "standby" => p.standby.as_ref(),
                _ => None,
            };
            let mut line = format!("{}: {}", p.name, p.path);
            if let Some(l) = active {
                line += &format!(" on {} ({})", l.ifname, l.mode);
            }
            if let Some(error) = &p.datapath_error {
                line += &format!(", {error}");
            } else if p.fast_path_error.is_some() {
                line += ", fast path refused (see vfailover status)";
            } else if p.standby.is_none() {
                line += ", no standby";
            }
            line
        })
        .collect();
    // sd_notify is one assignment per line: nothing may break it.
    pairs
        .join("; ")
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// A human table, one block per pair.
pub fn render_table(status: &Status) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    render_table_at(status, now)
}

/// [`render_table`] with "now" given, so ages are testable.
fn render_table_at(status: &Status, now_unix: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "vfailover {}  pid {}  up {}",
        status.version,
        status.pid,
        duration(status.uptime_secs)
    );
    if status.pairs.is_empty() {
        out.push_str("\nno pairs yet: waiting for a standby (virtio-net with STANDBY)\n");
    }
    for pair in &status.pairs {
        out.push('\n');
        render_pair(&mut out, pair, now_unix);
    }
    if !status.refused.is_empty() {
        out.push_str("\nrefused devices\n");
        for device in &status.refused {
            let _ = writeln!(
                out,
                "  {} (ifindex {}, {}): {}",
                device.ifname, device.ifindex, device.mac, device.reason
            );
        }
    }
    out
}

fn render_pair(out: &mut String, pair: &PairStatus, now: f64) {
    let state = if pair.degraded { "  DEGRADED" } else { "" };
    let _ = writeln!(
        out,
        "pair {}  mac {}  path {}{state}",
        pair.name, pair.mac, pair.path
    );
    let addresses = if pair.addresses.is_empty() {
        "-".to_owned()
    } else {
        pair.addresses.join(" ")
    };
    let _ = writeln!(out, "  addresses   {addresses}");

    let mut rows = vec![[
        " link",
        "ifname",
        "ifindex",
        "mode",
        "health",
        "rx pkts",
        "rx bytes",
        "tx pkts",
        "tx bytes",
        "tx drop",
        "malformed",
    ]
    .map(String::from)];
    for (role, link) in [("primary", &pair.primary), ("standby", &pair.standby)] {
        // Mark the link TX goes on, so the path is visible in the table too.
        let role = if pair.path == role {
            format!("*{role}")
        } else {
            format!(" {role}")
        };
        rows.push(match link {
            Some(l) => [
                role,
                l.ifname.clone(),
                l.ifindex.to_string(),
                l.mode.clone(),
                l.health.clone(),
                l.counters.rx_packets.to_string(),
                l.counters.rx_bytes.to_string(),
                l.counters.tx_packets.to_string(),
                l.counters.tx_bytes.to_string(),
                l.counters.tx_dropped.to_string(),
                l.counters.rx_malformed.to_string(),
            ],
            None => {
                let mut row: [String; 11] = Default::default();
                row[0] = role;
                row[1] = "-".into();
                row[4] = "absent".into();
                row
            }
        });
    }
    let widths: Vec<usize> = (0..11)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let mut line = String::from("  ");
        for (c, cell) in row.iter().enumerate() {
            // Text left, numbers right: counters line up by magnitude.
            if c >= 5 {
                let _ = write!(line, "  {cell:>w$}", w = widths[c]);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }

    let mut switches = format!("  switches    {}", pair.switches);
    if let Some(s) = &pair.last_switch {
        let _ = write!(
            switches,
            ", last {} ago: {} -> {} ({})",
            age(now, s.at_unix),
            s.from,
            s.to,
            s.cause
        );
        if let Some(us) = s.first_tx_after_us {
            let _ = write!(switches, ", first TX after {}", micros(us));
        }
    }
    let _ = writeln!(out, "{switches}");

    let guest = match pair.guest_announce {
        Some(true) => "yes (the standby's driver announces too)",
        Some(false) => "no",
        None => "unknown",
    };
    let _ = writeln!(
        out,
        "  announce    policy {}, guest_announce {guest}, {} frames sent",
        pair.announce_policy, pair.announces_sent
    );
    let mut migrations = format!("  migrations  {}", pair.migrations_detected);
    if let Some(m) = &pair.last_migration {
        let _ = write!(
            migrations,
            ", last {} ago ({})",
            age(now, m.at_unix),
            m.signal
        );
    }
    let _ = writeln!(out, "{migrations}");
    if let Some(error) = &pair.datapath_error {
        let _ = writeln!(out, "  datapath    {error}");
    }
    if let Some(error) = &pair.fast_path_error {
        let _ = writeln!(out, "  fast path   unavailable: {error}");
    }
    if pair.tx_no_path > 0 {
        let _ = writeln!(
            out,
            "  tx no path  {} frames dropped with no link to send on",
            pair.tx_no_path
        );
    }
    let r = &pair.resend;
    let _ = writeln!(
        out,
        "  tcp resend  {} rounds, {} segments ({} bytes), {} ACKs; holding {} bytes of {} connections{}",
        r.rounds,
        r.segments,
        r.bytes,
        r.acks,
        r.held_bytes,
        r.connections,
        if r.untracked > 0 || r.evicted > 0 {
            format!(" ({} segments over the byte limit, {} connections over the limit)", r.untracked, r.evicted)
        } else {
            String::new()
        }
    );
}

/// Time since `then`, for "... ago".
fn age(now: f64, then: f64) -> String {
    duration((now - then).max(0.0))
}

/// `850 ms`, `12.3 s`, `4m 05s`, `3h 02m`, `2d 04h`.
fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "?".into();
    }
    if secs < 1.0 {
        return format!("{} ms", (secs * 1000.0).round());
    }
    if secs < 60.0 {
        return format!("{secs:.1} s");
    }
    // Whole seconds from here on; f64 -> u64 saturates, which is fine here.
    let s = secs as u64;
    match s {
        0..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {:02}m", s / 3600, s / 60 % 60),
        _ => format!("{}d {:02}h", s / 86_400, s / 3600 % 24),
    }
}

/// `850 µs`, `12.3 ms`.
fn micros(us: u64) -> String {
    if us < 1000 {
        format!("{us} µs")
    } else {
        format!("{:.1} ms", us as f64 / 1000.0)
    }
}

/// Prometheus text exposition format 0.0.4.
pub fn render_prometheus(status: &Status) -> String {
    let mut m = Metrics::default();
    m.family("vfailover_info", "gauge", "Version of the running agent.");
    m.sample("vfailover_info", &[("version", &status.version)], 1.0);
    m.family(
        "vfailover_uptime_seconds",
        "gauge",
        "Seconds since the agent started.",
    );
    m.sample("vfailover_uptime_seconds", &[], status.uptime_secs);
    m.family(
        "vfailover_refused_devices",
        "gauge",
        "Devices seen but not used (see vfailover status).",
    );
    m.sample(
        "vfailover_refused_devices",
        &[],
        status.refused.len() as f64,
    );

    m.family(
        "vfailover_path",
        "gauge",
        "1 for the path TX takes now (primary, standby or none), else 0.",
    );
    for pair in &status.pairs {
        for path in PATHS {
            let on = if pair.path == path { 1.0 } else { 0.0 };
            m.sample(
                "vfailover_path",
                &[("pair", &pair.name), ("path", path)],
                on,
            );
        }
    }
    let per_pair: [(&str, &str, &str, PairValue); 17] = [
        ("vfailover_degraded", "gauge", "1 when the pair lacks a link or a link is unhealthy.", |p| Some(flag(p.degraded))),
        ("vfailover_switches_total", "counter", "Path switches.", |p| Some(p.switches as f64)),
        ("vfailover_migrations_detected_total", "counter", "Migrations detected.", |p| Some(p.migrations_detected as f64)),
        ("vfailover_announce_frames_total", "counter", "Announce frames sent (GARP, unsolicited NA, RARP).", |p| Some(p.announces_sent as f64)),
        ("vfailover_tx_no_path_total", "counter", "Frames dropped because no link could send them.", |p| Some(p.tx_no_path as f64)),
        ("vfailover_tcp_resend_rounds_total", "counter", "Switches and migrations after which unacknowledged TCP segments were sent again.", |p| Some(p.resend.rounds as f64)),
        ("vfailover_tcp_resend_segments_total", "counter", "TCP segments sent again after a switch or migration.", |p| Some(p.resend.segments as f64)),
        ("vfailover_tcp_resend_bytes_total", "counter", "Frame bytes of the TCP segments sent again.", |p| Some(p.resend.bytes as f64)),
        ("vfailover_tcp_resend_acks_total", "counter", "TCP ACKs repeated after a switch or migration.", |p| Some(p.resend.acks as f64)),
        ("vfailover_tcp_resend_untracked_total", "counter", "TCP segments not kept for a resend: the byte limit was reached.", |p| Some(p.resend.untracked as f64)),
        ("vfailover_tcp_resend_evicted_total", "counter", "TCP connections no longer followed for a resend: the connection limit was reached.", |p| Some(p.resend.evicted as f64)),
        ("vfailover_tcp_resend_held_bytes", "gauge", "Frame bytes of unacknowledged TCP segments held for a resend.", |p| Some(p.resend.held_bytes as f64)),
        ("vfailover_tcp_resend_connections", "gauge", "TCP connections followed for a resend.", |p| Some(p.resend.connections as f64)),
        ("vfailover_fast_path_error", "gauge", "1 when the paired primary could not be opened for AF_XDP (see vfailover status), else 0.", |p| Some(flag(p.fast_path_error.is_some()))),
        ("vfailover_guest_announce", "gauge", "1 when the standby negotiated VIRTIO_NET_F_GUEST_ANNOUNCE, 0 when not; absent when unknown.", |p| p.guest_announce.map(flag)),
        ("vfailover_last_switch_timestamp_seconds", "gauge", "Unix time of the last path switch.", |p| p.last_switch.as_ref().map(|s| s.at_unix)),
        ("vfailover_last_migration_timestamp_seconds", "gauge", "Unix time of the last migration detected.", |p| p.last_migration.as_ref().map(|s| s.at_unix)),
    ];
    for (name, kind, help, value) in per_pair {
        m.family(name, kind, help);
        for pair in &status.pairs {
            if let Some(v) = value(pair) {
                m.sample(name, &[("pair", &pair.name)], v);
            }
        }
    }

    m.family(
        "vfailover_link_info",
        "gauge",
        "1 per link present, with its mode and health.",
    );
    for (pair, role, link) in links(status) {
        let index = link.ifindex.to_string();
        m.sample(
            "vfailover_link_info",
            &[
                ("pair", &pair.name),
                ("link", role),
                ("ifname", &link.ifname),
                ("ifindex", &index),
                ("mac", &link.mac),
                ("mode", &link.mode),
                ("health", &link.health),
            ],
            1.0,
        );
    }
    let per_link: [(&str, &str, LinkValue); 6] = [
        (
            "vfailover_link_rx_packets_total",
            "Frames received for the stack.",
            |l| l.counters.rx_packets,
        ),
        (
            "vfailover_link_rx_bytes_total",
            "Bytes received for the stack.",
            |l| l.counters.rx_bytes,
        ),
        (
            "vfailover_link_tx_packets_total",
            "Frames sent by the stack.",
            |l| l.counters.tx_packets,
        ),
        (
            "vfailover_link_tx_bytes_total",
            "Bytes sent by the stack.",
            |l| l.counters.tx_bytes,
        ),
        (
            "vfailover_link_tx_dropped_total",
            "Frames the link could not send.",
            |l| l.counters.tx_dropped,
        ),
        (
            "vfailover_link_rx_malformed_total",
            "Frames received that did not parse.",
            |l| l.counters.rx_malformed,
        ),
    ];
    for (name, help, value) in per_link {
        m.family(name, "counter", help);
        for (pair, role, link) in links(status) {
            let labels = [
                ("pair", pair.name.as_str()),
                ("link", role),
                ("ifname", &link.ifname),
            ];
            m.sample(name, &labels, value(link) as f64);
        }
    }
    m.out
}

/// A per-pair metric's value; `None` leaves the series out.
type PairValue = fn(&PairStatus) -> Option<f64>;
/// A per-link counter's value.
type LinkValue = fn(&LinkStatus) -> u64;

fn flag(on: bool) -> f64 {
    if on {
        1.0
    } else {
        0.0
    }
}

/// Every link present: (pair, "primary" | "standby", link).
fn links(status: &Status) -> impl Iterator<Item = (&PairStatus, &'static str, &LinkStatus)> {
    status.pairs.iter().flat_map(|pair| {
        [("primary", &pair.primary), ("standby", &pair.standby)]
            .into_iter()
            .filter_map(move |(role, link)| link.as_ref().map(|l| (pair, role, l)))
    })
}

#[derive(Default)]
struct Metrics {
    out: String,
}

impl Metrics {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', r"\\").replace('\n', r"\n");
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{label}=\"{}\"", escape_label(value));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(value));
    }
}

/// Label values escape backslash, double quote and line feed.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str(r"\n"),
            c => out.push(c),
        }
    }
    out
}

/// Rust prints `inf`; Prometheus wants `+Inf`.
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

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
            },
        }
    }

    pub(crate) fn sample() -> Status {
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

    #[test]
    fn one_line_for_systemd() {
        assert_eq!(
            render_line(&sample()),
            "main: primary on vf0 (zero-copy); odd \"name\"\\?: standby on virtio1 (packet), \
             fast path refused (see vfailover status)"
        );
        let mut none = sample();
        none.pairs.truncate(1);
        none.pairs[0].path = "none".into();
        none.pairs[0].standby = None;
        assert_eq!(render_line(&none), "main: none, no standby");
        none.pairs.clear();
        assert_eq!(render_line(&none), "no pairs configured");
    }

    #[test]
    fn json_round_trip() {
        let status = sample();
        let json = serde_json::to_string(&status).unwrap();
        assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), status);
        // Counters are fields of the link itself on the wire.
        assert!(
            json.contains(r#""health":"up","rx_packets":1234567,"#),
            "{json}"
        );
    }

    #[test]
    fn table_shows_what_an_engineer_looks_for() {
        let table = render_table_at(&sample(), 1_012.5);
        println!("{table}");
        assert!(
            table.starts_with("vfailover 0.1.0  pid 4242  up 1h 02m\n"),
            "{table}"
        );
        assert!(table.contains("\npair main  mac 02:00:00:00:00:01  path primary\n"));
        assert!(table.contains("  addresses   10.213.0.20/24 fd00:213::20/64\n"));
        let primary = table.lines().find(|l| l.starts_with("  *primary")).unwrap();
        let words: Vec<_> = primary.split_whitespace().collect();
        assert_eq!(
            words,
            [
                "*primary",
                "vf0",
                "5",
                "zero-copy",
                "up",
                "1234567",
                "987654321",
                "7",
                "700",
                "1",
                "2"
            ]
        );
        assert!(table.contains("   standby  virtio0"), "{table}");
        assert!(table.contains(
            "  switches    4, last 12.5 s ago: standby -> primary (primary up for 200 ms), first TX after 180 µs\n"
        ));
        assert!(table.contains("  announce    policy auto, guest_announce no, 10 frames sent\n"));
        assert!(table.contains("  migrations  1, last 22.5 s ago (notify-peers)\n"));
        // The second pair: degraded, no primary, nothing happened yet.
        assert!(table.contains("path standby  DEGRADED\n"), "{table}");
        assert!(table
            .lines()
            .any(|l| l.starts_with("   primary  -") && l.ends_with("absent")));
        assert!(table.contains("guest_announce unknown"));
        assert!(table.contains("  switches    0\n"));
        assert!(table.contains("  tx no path  3 frames"));
        assert!(table.contains("  fast path   unavailable: eth2 already has XDP program id 7"));
        assert_eq!(
            table.matches("fast path").count(),
            1,
            "only the pair without it"
        );
        assert!(
            table.contains("  eth1 (ifindex 7, 02:00:00:00:00:01): second primary for pair main\n")
        );
        // Columns line up: every row of a link table is as wide as its header.
        let header = table.lines().find(|l| l.starts_with("   link")).unwrap();
        assert_eq!(primary.chars().count(), header.chars().count(), "{table}");
    }

    #[test]
    fn a_datapath_not_answering_says_so() {
        let mut status = sample();
        status.pairs.truncate(1);
        let pair = &mut status.pairs[0];
        pair.path = "none".into();
        pair.primary = None;
        pair.datapath_error = Some("the datapath thread did not answer within 2s".into());
        let table = render_table_at(&status, 1_012.5);
        assert!(
            table.contains("  datapath    the datapath thread did not answer within 2s\n"),
            "{table}"
        );
        assert_eq!(
            render_line(&status),
            "main: none, the datapath thread did not answer within 2s"
        );
    }

    #[test]
    fn table_without_pairs() {
        let status = Status {
            pairs: vec![],
            refused: vec![],
            ..sample()
        };
        let table = render_table(&status);
        assert!(table.contains("no pairs yet"), "{table}");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(0.25), "250 ms");
        assert_eq!(duration(59.94), "59.9 s");
        assert_eq!(duration(245.0), "4m 05s");
        assert_eq!(duration(2.0 * 86_400.0 + 4.0 * 3600.0), "2d 04h");
        assert_eq!(duration(f64::NAN), "?");
        assert_eq!(age(10.0, 20.0), "0 ms");
        assert_eq!(micros(12_345), "12.3 ms");
    }

    /// One sample line: name, labels, value. Checks the 0.0.4 grammar.
    type Sample = (String, Vec<(String, String)>, f64);

    fn parse_sample(line: &str) -> Result<Sample, String> {
        let valid_name = |n: &str, colon: bool| {
            let mut chars = n.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
        };
        let name_end = line.find(['{', ' ']).ok_or("no value")?;
        let name = &line[..name_end];
        if !valid_name(name, true) {
            return Err(format!("bad metric name {name:?}"));
        }
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices().peekable();
            loop {
                let start = chars.peek().map(|&(i, _)| i).ok_or("unterminated labels")?;
                if body[start..].starts_with('}') {
                    rest = &body[start + 1..];
                    break;
                }
                let eq = body[start..].find('=').ok_or("label without =")? + start;
                let label = &body[start..eq];
                if !valid_name(label, false) {
                    return Err(format!("bad label name {label:?}"));
                }
                while chars.peek().is_some_and(|&(i, _)| i <= eq) {
                    chars.next();
                }
                if chars.next().map(|(_, c)| c) != Some('"') {
                    return Err("label value not quoted".into());
                }
                let mut value = String::new();
                loop {
                    match chars.next().ok_or("unterminated label value")?.1 {
                        '"' => break,
                        '\n' => return Err("raw newline in label value".into()),
                        '\\' => match chars.next().ok_or("dangling escape")?.1 {
                            '\\' => value.push('\\'),
                            '"' => value.push('"'),
                            'n' => value.push('\n'),
                            c => return Err(format!("bad escape \\{c}")),
                        },
                        c => value.push(c),
                    }
                }
                labels.push((label.to_owned(), value));
                match chars.peek().map(|&(_, c)| c) {
                    Some(',') => {
                        chars.next();
                    }
                    Some('}') => {}
                    _ => return Err("expected , or }".into()),
                }
            }
        }
        let mut fields = rest
            .strip_prefix(' ')
            .ok_or("no space before value")?
            .split(' ');
        let value = fields.next().ok_or("no value")?;
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().map_err(|_| format!("bad value {v:?}"))?,
        };
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().map_err(|_| "bad timestamp")?;
        }
        if fields.next().is_some() {
            return Err("trailing fields".into());
        }
        Ok((name.to_owned(), labels, value))
    }

    /// Parses the whole exposition: every sample's family has one HELP and
    /// one TYPE before it, no series twice. Returns series -> value.
    fn check_exposition(text: &str) -> HashMap<String, f64> {
        assert!(text.ends_with('\n'));
        let mut types: HashMap<String, String> = HashMap::new();
        let mut helps = HashSet::new();
        let mut series = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let n = n + 1;
            if let Some(help) = line.strip_prefix("# HELP ") {
                let name = help.split(' ').next().unwrap();
                assert!(
                    helps.insert(name.to_owned()),
                    "line {n}: second HELP for {name}"
                );
            } else if let Some(ty) = line.strip_prefix("# TYPE ") {
                let (name, kind) = ty.split_once(' ').unwrap();
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "line {n}: type {kind}"
                );
                assert!(
                    types.insert(name.into(), kind.into()).is_none(),
                    "line {n}: second TYPE"
                );
            } else {
                assert!(
                    !line.starts_with('#') && !line.is_empty(),
                    "line {n}: {line:?}"
                );
                let (name, labels, value) =
                    parse_sample(line).unwrap_or_else(|e| panic!("line {n}: {e}: {line:?}"));
                assert!(
                    types.contains_key(&name),
                    "line {n}: {name} has no TYPE before it"
                );
                assert!(
                    helps.contains(&name),
                    "line {n}: {name} has no HELP before it"
                );
                if types[&name] == "counter" {
                    assert!(name.ends_with("_total") && value >= 0.0, "line {n}");
                }
                let mut key = name.clone();
                for (label, value) in &labels {
                    key.push_str(&format!(",{label}={value}"));
                }
                assert!(
                    series.insert(key, value).is_none(),
                    "line {n}: series twice"
                );
            }
        }
        series
    }

    #[test]
    fn prometheus_text_parses_and_has_the_numbers() {
        let text = render_prometheus(&sample());
        println!("{text}");
        let series = check_exposition(&text);
        let odd = "odd \"name\"\\\n";
        assert_eq!(series["vfailover_uptime_seconds"], 3725.5);
        assert_eq!(series["vfailover_info,version=0.1.0"], 1.0);
        assert_eq!(series["vfailover_path,pair=main,path=primary"], 1.0);
        assert_eq!(series["vfailover_path,pair=main,path=standby"], 0.0);
        assert_eq!(series["vfailover_path,pair=main,path=none"], 0.0);
        assert_eq!(
            series[&format!("vfailover_path,pair={odd},path=standby")],
            1.0
        );
        assert_eq!(series["vfailover_switches_total,pair=main"], 4.0);
        assert_eq!(series["vfailover_migrations_detected_total,pair=main"], 1.0);
        assert_eq!(series["vfailover_announce_frames_total,pair=main"], 10.0);
        assert_eq!(series["vfailover_guest_announce,pair=main"], 0.0);
        assert!(!series.contains_key(&format!("vfailover_guest_announce,pair={odd}")));
        assert_eq!(series["vfailover_degraded,pair=main"], 0.0);
        assert_eq!(series["vfailover_fast_path_error,pair=main"], 0.0);
        assert_eq!(
            series[&format!("vfailover_fast_path_error,pair={odd}")],
            1.0
        );
        assert_eq!(series[&format!("vfailover_degraded,pair={odd}")], 1.0);
        assert_eq!(
            series[&format!("vfailover_tx_no_path_total,pair={odd}")],
            3.0
        );
        assert_eq!(
            series["vfailover_link_rx_packets_total,pair=main,link=primary,ifname=vf0"],
            1_234_567.0
        );
        assert_eq!(
            series["vfailover_link_rx_bytes_total,pair=main,link=standby,ifname=virtio0"],
            987_654_321.0
        );
        assert_eq!(
            series[&format!(
                "vfailover_link_tx_dropped_total,pair={odd},link=standby,ifname=virtio1"
            )],
            1.0
        );
        assert_eq!(
            series["vfailover_link_rx_malformed_total,pair=main,link=primary,ifname=vf0"],
            2.0
        );
        assert_eq!(
            series["vfailover_last_switch_timestamp_seconds,pair=main"],
            1000.0
        );
        assert_eq!(series["vfailover_refused_devices"], 1.0);
        // Integers print as integers.
        assert!(text.contains("link=\"primary\",ifname=\"vf0\"} 1234567\n"));
        // The odd name is escaped on the wire, not just parsed back.
        assert!(text.contains(r#"pair="odd \"name\"\\\n""#), "{text}");
    }

    #[test]
    fn checker_rejects_bad_lines() {
        for bad in [
            "1abc 1",
            "a{b=\"c} 1",
            "a{b=\"\\x\"} 1",
            "a{b=c} 1",
            "a 1 2 3",
            "a one",
            "a{-b=\"c\"} 1",
        ] {
            assert!(parse_sample(bad).is_err(), "{bad}");
        }
        assert!(parse_sample("a{b=\"c\",d=\"\"} +Inf 123").is_ok());
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NEG_INFINITY), "-Inf");
        assert_eq!(number(f64::NAN), "NaN");
    }
}
