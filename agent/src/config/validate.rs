//! Checks every raw value and builds the typed [`Config`], collecting all
//! problems rather than stopping at the first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use smoltcp::wire::{IpAddress, IpCidr};
use toml::Spanned;
use vfailover_netstack::mac::MacAddr;
use vfailover_netstack::stack::ServiceConfig;

use super::raw::{RawAnnounce, RawConfig, RawControl, RawFailback, RawPair};
use super::values::{check_ifname, check_pair_name, parse_host_cidr, parse_mac, service_name};
use super::{
    line_column, AnnounceTiming, Config, ControlConfig, PairConfig, Problem, DEFAULT_GROUP,
    DEFAULT_SOCKET, MAX_ADDRESSES,
};
use crate::pairing::Failback;

const MAX_TIMING_MS: i64 = 60_000;
const MAX_HOLD_MS: i64 = 600_000;
const MAX_FLAP_WINDOW_S: i64 = 3_600;
const MTU_RANGE: std::ops::RangeInclusive<i64> = 576..=9000;
/// `sizeof(sockaddr_un.sun_path)` minus the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
/// Checks raw values and collects every problem it finds.
pub(super) struct Validator<'a> {
    pub(super) text: &'a str,
    pub(super) origin: &'a str,
    pub(super) problems: Vec<Problem>,
}

impl Validator<'_> {
    fn problem(&mut self, span: Option<Range<usize>>, key: &str, message: String) {
        self.problems.push(Problem {
            origin: self.origin.to_owned(),
            location: span.and_then(|s| line_column(self.text, s.start)),
            key: Some(key.to_owned()),
            message,
        });
    }

    pub(super) fn config(&mut self, raw: RawConfig) -> Config {
        let sysfs_root = match raw.sysfs_root {
            None => PathBuf::from("/sys"),
            Some(root) => {
                if !root.as_ref().starts_with('/') {
                    self.problem(
                        Some(root.span()),
                        "sysfs_root",
                        format!("`{}` is not an absolute path", root.as_ref()),
                    );
                }
                PathBuf::from(root.into_inner())
            }
        };
        let control = self.control(raw.control);
        let announce = self.announce(raw.announce);
        let failback = self.failback(raw.failback);
        if raw.pairs.is_empty() {
            self.problems.push(Problem {
                origin: self.origin.to_owned(),
                location: None,
                key: None,
                message: "no [[pair]]: at least one failover pair is needed".into(),
            });
        }
        let pairs: Vec<(PairConfig, PairSpans)> = raw
            .pairs
            .into_iter()
            .enumerate()
            .map(|(i, pair)| self.pair(i, pair))
            .collect();
        self.unique_across_pairs(&pairs);
        let pairs = pairs.into_iter().map(|(pair, _)| pair).collect();
        Config {
            sysfs_root,
            control,
            announce,
            failback,
            pairs,
        }
    }

    fn control(&mut self, raw: RawControl) -> ControlConfig {
        let socket = match raw.socket {
            None => PathBuf::from(DEFAULT_SOCKET),
            Some(socket) => {
                let text = socket.as_ref();
                if !text.starts_with('/') {
                    self.problem(
                        Some(socket.span()),
                        "control.socket",
                        format!("`{text}` is not an absolute path"),
                    );
                } else if text.len() > MAX_SOCKET_PATH {
                    self.problem(
                        Some(socket.span()),
                        "control.socket",
                        format!(
                            "the path is {} bytes long; a Unix socket path holds at most {MAX_SOCKET_PATH}",
                            text.len()
                        ),
                    );
                }
                PathBuf::from(socket.into_inner())
            }
        };
        let group = match raw.group {
            None => Some(DEFAULT_GROUP.to_owned()),
            Some(group) if group.as_ref().is_empty() => None,
            Some(group) => {
                if group
                    .as_ref()
                    .contains(|c: char| c.is_whitespace() || c == ':')
                {
                    self.problem(
                        Some(group.span()),
                        "control.group",
                        format!("`{}` is not a group name", group.as_ref()),
                    );
                }
                Some(group.into_inner())
            }
        };
        ControlConfig { socket, group }
    }

    /// An integer in `range`, or `default` (with a problem) when absent or
    /// out of range.
    fn integer(
        &mut self,
        value: Option<Spanned<i64>>,
        key: &str,
        range: std::ops::RangeInclusive<i64>,
        unit: &str,
        default: i64,
    ) -> i64 {
        let Some(value) = value else {
            return default;
        };
        let n = *value.as_ref();
        if range.contains(&n) {
            n
        } else {
            self.problem(
                Some(value.span()),
                key,
                format!(
                    "{n}{unit} is out of range: {}..={}{unit}",
                    range.start(),
                    range.end()
                ),
            );
            default
        }
    }

    fn millis(
        &mut self,
        value: Option<Spanned<i64>>,
        key: &str,
        max: i64,
        default: Duration,
    ) -> (Duration, Option<Range<usize>>) {
        let span = value.as_ref().map(|v| v.span());
        let default_ms = i64::try_from(default.as_millis()).unwrap_or(max);
        let ms = self.integer(value, key, 0..=max, " ms", default_ms);
        (Duration::from_millis(ms.unsigned_abs()), span)
    }

    fn announce(&mut self, raw: RawAnnounce) -> AnnounceTiming {
        let default = AnnounceTiming::default();
        let (initial, _) = self.millis(
            raw.initial_ms,
            "announce.initial_ms",
            MAX_TIMING_MS,
            default.initial,
        );
        let (max, max_span) =
            self.millis(raw.max_ms, "announce.max_ms", MAX_TIMING_MS, default.max);
        let (step, _) = self.millis(raw.step_ms, "announce.step_ms", MAX_TIMING_MS, default.step);
        let rounds = self.integer(
            raw.rounds,
            "announce.rounds",
            1..=100,
            "",
            default.rounds.into(),
        );
        if initial > max {
            self.problem(
                max_span,
                "announce.max_ms",
                format!(
                    "max_ms ({} ms) is below initial_ms ({} ms)",
                    max.as_millis(),
                    initial.as_millis()
                ),
            );
        }
        AnnounceTiming {
            initial,
            max,
            rounds: u32::try_from(rounds).unwrap_or(default.rounds),
            step,
        }
    }

    fn failback(&mut self, raw: RawFailback) -> Failback {
        let default = Failback::default();
        let (hold, _) = self.millis(raw.hold_ms, "failback.hold_ms", MAX_TIMING_MS, default.hold);
        let (max_hold, max_span) = self.millis(
            raw.max_hold_ms,
            "failback.max_hold_ms",
            MAX_HOLD_MS,
            default.max_hold,
        );
        let window = self.integer(
            raw.flap_window_s,
            "failback.flap_window_s",
            0..=MAX_FLAP_WINDOW_S,
            " s",
            i64::try_from(default.flap_window.as_secs()).unwrap_or(MAX_FLAP_WINDOW_S),
        );
        if hold > max_hold {
            self.problem(
                max_span,
                "failback.max_hold_ms",
                format!(
                    "max_hold_ms ({} ms) is below hold_ms ({} ms)",
                    max_hold.as_millis(),
                    hold.as_millis()
                ),
            );
        }
        Failback {
            hold,
            flap_window: Duration::from_secs(window.unsigned_abs()),
            max_hold,
        }
    }

    fn pair(&mut self, index: usize, raw: RawPair) -> (PairConfig, PairSpans) {
        let key = format!("pair[{index}]");
        let mut spans = PairSpans {
            name: raw.name.as_ref().map(Spanned::span),
            standby: raw.standby.as_ref().map(Spanned::span),
            primary_mac: raw.primary_mac.as_ref().map(Spanned::span),
            addresses: Vec::new(),
        };
        let standby = raw.standby.map(|standby| {
            if let Err(why) = check_ifname(standby.as_ref()) {
                self.problem(Some(standby.span()), &format!("{key}.standby"), why);
            }
            standby.into_inner()
        });
        let name = match raw.name {
            Some(name) => {
                if let Err(why) = check_pair_name(name.as_ref()) {
                    self.problem(Some(name.span()), &format!("{key}.name"), why);
                }
                name.into_inner()
            }
            None => standby.clone().unwrap_or_else(|| format!("pair{index}")),
        };
        let primary_mac = raw
            .primary_mac
            .and_then(|mac| match parse_mac(mac.as_ref()) {
                Ok(parsed) => Some(parsed),
                Err(why) => {
                    self.problem(Some(mac.span()), &format!("{key}.primary_mac"), why);
                    None
                }
            });
        let mut addresses = Vec::new();
        if raw.addresses.is_empty() {
            self.problem(
                None,
                &format!("{key}.addresses"),
                "no addresses: the stack needs at least one".into(),
            );
        } else if raw.addresses.len() > MAX_ADDRESSES {
            self.problem(
                Some(raw.addresses[MAX_ADDRESSES].span()),
                &format!("{key}.addresses"),
                format!(
                    "{} addresses; the stack holds at most {MAX_ADDRESSES}",
                    raw.addresses.len()
                ),
            );
        }
        for (i, address) in raw.addresses.iter().enumerate() {
            match parse_host_cidr(address.as_ref()) {
                Ok(cidr) => {
                    if addresses
                        .iter()
                        .any(|a: &IpCidr| a.address() == cidr.address())
                    {
                        self.problem(
                            Some(address.span()),
                            &format!("{key}.addresses[{i}]"),
                            format!("`{}` is listed twice", address.as_ref()),
                        );
                    }
                    addresses.push(cidr);
                    spans.addresses.push((i, address.span()));
                }
                Err(why) => {
                    self.problem(Some(address.span()), &format!("{key}.addresses[{i}]"), why)
                }
            }
        }
        let gateway = raw.gateway.and_then(|gw| {
            let at = format!("{key}.gateway");
            match self.gateway(&gw, &at, &addresses) {
                Some(IpAddr::V4(v4)) => Some(v4),
                Some(IpAddr::V6(_)) => {
                    self.problem(
                        Some(gw.span()),
                        &at,
                        format!(
                            "`{}` is IPv6; put an IPv6 gateway in `gateway6`",
                            gw.as_ref()
                        ),
                    );
                    None
                }
                None => None,
            }
        });
        let gateway6 = raw.gateway6.and_then(|gw| {
            let at = format!("{key}.gateway6");
            match self.gateway(&gw, &at, &addresses) {
                Some(IpAddr::V6(v6)) => Some(v6),
                Some(IpAddr::V4(_)) => {
                    self.problem(
                        Some(gw.span()),
                        &at,
                        format!(
                            "`{}` is IPv4; put an IPv4 gateway in `gateway`",
                            gw.as_ref()
                        ),
                    );
                    None
                }
                None => None,
            }
        });
        let mtu = self.integer(raw.mtu, &format!("{key}.mtu"), MTU_RANGE, "", 1500);
        let mut services: Vec<ServiceConfig> = Vec::new();
        for (i, service) in raw.services.into_iter().enumerate() {
            let at = format!("{key}.services[{i}].port");
            let port = match u16::try_from(*service.port.as_ref()) {
                Ok(port) if port != 0 => port,
                _ => {
                    self.problem(
                        Some(service.port.span()),
                        &at,
                        format!("port {} is out of range: 1..=65535", service.port.as_ref()),
                    );
                    continue;
                }
            };
            let config = ServiceConfig {
                kind: service.kind,
                port,
            };
            if services.contains(&config) {
                self.problem(
                    Some(service.port.span()),
                    &at,
                    format!(
                        "{} on port {port} is listed twice",
                        service_name(service.kind)
                    ),
                );
            } else {
                services.push(config);
            }
        }
        let pair = PairConfig {
            name,
            standby,
            primary_mac,
            addresses,
            gateway,
            gateway6,
            announce: raw.announce,
            announce_rarp: raw.announce_rarp,
            tcp_resend: raw.tcp_resend,
            tcp_sack: raw.tcp_sack,
            primary_mode: raw.primary_mode,
            standby_mode: raw.standby_mode,
            mtu: usize::try_from(mtu).unwrap_or(1500),
            services,
        };
        (pair, spans)
    }

    /// A gateway address that lies inside one of the pair's prefixes.
    fn gateway(&mut self, gw: &Spanned<String>, key: &str, addresses: &[IpCidr]) -> Option<IpAddr> {
        let Ok(ip) = gw.as_ref().parse::<IpAddr>() else {
            self.problem(
                Some(gw.span()),
                key,
                format!("`{}` is not an IP address", gw.as_ref()),
            );
            return None;
        };
        let wanted_family = key.ends_with("gateway6") == ip.is_ipv6();
        if wanted_family
            && !addresses
                .iter()
                .any(|a| a.contains_addr(&IpAddress::from(ip)))
        {
            self.problem(
                Some(gw.span()),
                key,
                format!(
                    "{ip} is not inside any of the pair's prefixes, so the stack cannot reach it"
                ),
            );
        } else if addresses.iter().any(|a| IpAddr::from(a.address()) == ip) {
            self.problem(
                Some(gw.span()),
                key,
                format!("{ip} is one of the pair's own addresses"),
            );
        }
        Some(ip)
    }
}

/// Where a pair's identifying values sit in the file, for the checks that
/// compare pairs with each other.
struct PairSpans {
    name: Option<Range<usize>>,
    standby: Option<Range<usize>>,
    primary_mac: Option<Range<usize>>,
    /// Index in the file's list and span, one per parsed address.
    addresses: Vec<(usize, Range<usize>)>,
}

impl Validator<'_> {
    /// Names, standbys, primary MACs and addresses are global: two pairs
    /// sharing one would fight over the same device or address.
    fn unique_across_pairs(&mut self, pairs: &[(PairConfig, PairSpans)]) {
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut standbys: HashMap<&str, usize> = HashMap::new();
        let mut macs: HashMap<MacAddr, usize> = HashMap::new();
        let mut addresses: HashMap<IpAddress, usize> = HashMap::new();
        for (i, (pair, spans)) in pairs.iter().enumerate() {
            if let Some(&first) = names.get(pair.name.as_str()) {
                let how = if spans.name.is_some() {
                    ""
                } else {
                    " (its default name)"
                };
                self.problem(
                    spans.name.clone(),
                    &format!("pair[{i}].name"),
                    format!(
                        "pair name `{}`{how} is already used by pair[{first}]",
                        pair.name
                    ),
                );
            } else {
                names.insert(&pair.name, i);
            }
            if let Some(standby) = &pair.standby {
                if let Some(&first) = standbys.get(standby.as_str()) {
                    self.problem(
                        spans.standby.clone(),
                        &format!("pair[{i}].standby"),
                        format!("standby `{standby}` is already used by pair[{first}]"),
                    );
                } else {
                    standbys.insert(standby, i);
                }
            }
            if let Some(mac) = pair.primary_mac {
                if let Some(&first) = macs.get(&mac) {
                    self.problem(
                        spans.primary_mac.clone(),
                        &format!("pair[{i}].primary_mac"),
                        format!("primary_mac {mac} is already used by pair[{first}]"),
                    );
                } else {
                    macs.insert(mac, i);
                }
            }
            for (cidr, (index, span)) in pair.addresses.iter().zip(&spans.addresses) {
                match addresses.get(&cidr.address()) {
                    Some(&first) if first != i => self.problem(
                        Some(span.clone()),
                        &format!("pair[{i}].addresses[{index}]"),
                        format!("{} is already used by pair[{first}]", cidr.address()),
                    ),
                    _ => {
                        addresses.insert(cidr.address(), i);
                    }
                }
            }
        }
    }
}
