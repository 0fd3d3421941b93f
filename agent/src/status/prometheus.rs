//! The status as Prometheus text (exposition format 0.0.4), for
//! `vfailover metrics`.

use std::fmt::Write as _;

use super::{LinkStatus, PairStatus, Status};

/// The paths a pair can be on, in the order metrics list them.
const PATHS: [&str; 3] = ["primary", "standby", "none"];

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
    let per_link: [(&str, &str, LinkValue); 7] = [
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
        (
            "vfailover_link_rx_looped_total",
            "Frames received with the stack's own MAC as source (dropped).",
            |l| l.counters.rx_looped,
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
    use crate::status::fixtures::sample;

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
            series["vfailover_link_rx_looped_total,pair=main,link=primary,ifname=vf0"],
            3.0
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
