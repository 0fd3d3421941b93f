//! The status for people: `vfailover status` and systemd's `STATUS=`.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{PairStatus, Status};

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
        "looped",
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
                l.counters.rx_looped.to_string(),
            ],
            None => {
                let mut row: [String; 12] = Default::default();
                row[0] = role;
                row[1] = "-".into();
                row[4] = "absent".into();
                row
            }
        });
    }
    let widths: Vec<usize> = (0..12)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::fixtures::sample;

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
                "2",
                "3"
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
}
