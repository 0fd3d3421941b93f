//! The daemon's configuration: `/etc/vfailover/vfailover.toml`.
//!
//! Parsing happens in two steps. serde turns the TOML into "raw" structs
//! that keep the text of everything we check ourselves (addresses, MACs,
//! numbers) together with its position in the file; then [`Validator`]
//! checks every value and builds the typed [`Config`]. Unknown keys are
//! errors everywhere (`deny_unknown_fields`): a misspelt key silently
//! falling back to its default is the worst kind of configuration bug.
//!
//! All problems are reported at once, one per line, each as
//! `FILE:LINE:COLUMN: KEY: what is wrong`, like a compiler, so a user fixes
//! the file in one go. The key is a path such as `pair[1].addresses[0]`.
//!
//! Defaults follow QEMU where QEMU has the same knob (announce timing from
//! `net/announce.c`) and the design brief elsewhere.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use smoltcp::wire::{IpAddress, IpCidr};
use toml::Spanned;
use vfailover_netstack::mac::{MacAddr, ParseMacError};
use vfailover_netstack::stack::{ServiceConfig, ServiceKind};

/// Where the daemon reads its configuration unless told otherwise.
pub const DEFAULT_PATH: &str = "/etc/vfailover/vfailover.toml";
/// Where the control socket lives unless the configuration says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/vfailover/vfailover.sock";
/// The group that may read status from the control socket by default.
pub const DEFAULT_GROUP: &str = "vfailover";

/// The stack holds at most this many addresses (smoltcp's
/// `iface-max-addr-count-8`, set in the netstack crate).
pub const MAX_ADDRESSES: usize = 8;
const MAX_TIMING_MS: i64 = 60_000;
const MAX_HOLD_MS: i64 = 600_000;
const MAX_FLAP_WINDOW_S: i64 = 3_600;
const MTU_RANGE: std::ops::RangeInclusive<i64> = 576..=9000;
/// `sizeof(sockaddr_un.sun_path)` minus the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
/// `IFNAMSIZ` minus the terminating NUL.
const MAX_IFNAME: usize = 15;

/// The whole configuration, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where sysfs is mounted; tests point this at a fake tree.
    pub sysfs_root: PathBuf,
    pub control: ControlConfig,
    pub announce: AnnounceTiming,
    pub failback: FailbackConfig,
    pub pairs: Vec<PairConfig>,
}

/// The control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    pub socket: PathBuf,
    /// Group of the socket (mode 0660). `None` (`group = ""` in the file)
    /// leaves it in root's group.
    pub group: Option<String>,
}

/// QEMU's announce knobs (`-object announce-*` / `announce_self`): the
/// first round goes out at once, the next after `initial`, each later gap
/// grows by `step` up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnounceTiming {
    pub initial: Duration,
    pub max: Duration,
    pub rounds: u32,
    pub step: Duration,
}

impl Default for AnnounceTiming {
    /// QEMU's defaults (net/announce.c).
    fn default() -> Self {
        AnnounceTiming {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(550),
            rounds: 5,
            step: Duration::from_millis(100),
        }
    }
}

/// When TX may move back to the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailbackConfig {
    /// The primary must be up with carrier this long first.
    pub hold: Duration,
    /// Flaps within this window double the hold...
    pub flap_window: Duration,
    /// ...up to this.
    pub max_hold: Duration,
}

impl Default for FailbackConfig {
    fn default() -> Self {
        FailbackConfig {
            hold: Duration::from_millis(200),
            flap_window: Duration::from_secs(30),
            max_hold: Duration::from_millis(10_000),
        }
    }
}

/// When the agent announces the stack's addresses after a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnnouncePolicy {
    /// Only when the standby lacks `VIRTIO_NET_F_GUEST_ANNOUNCE`.
    #[default]
    Auto,
    Always,
    Never,
}

impl AnnouncePolicy {
    /// The name used in the file, in status and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            AnnouncePolicy::Auto => "auto",
            AnnouncePolicy::Always => "always",
            AnnouncePolicy::Never => "never",
        }
    }
}

/// How the primary (VF) is opened with AF_XDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PrimaryMode {
    /// The best the device supports: zero-copy, then driver, then generic.
    #[default]
    Auto,
    ZeroCopy,
    Driver,
    Generic,
}

/// How the standby (virtio-net) is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StandbyMode {
    /// AF_XDP when the device takes an XDP program, else AF_PACKET.
    #[default]
    Auto,
    Xdp,
    Packet,
}

/// One failover pair and the stack that runs on it.
#[derive(Debug, Clone, PartialEq)]
pub struct PairConfig {
    pub name: String,
    /// The standby's interface name; `None`: the next auto-detected one.
    pub standby: Option<String>,
    /// `None`: the standby's permanent MAC.
    pub primary_mac: Option<MacAddr>,
    pub addresses: Vec<IpCidr>,
    pub gateway: Option<Ipv4Addr>,
    pub gateway6: Option<Ipv6Addr>,
    pub announce: AnnouncePolicy,
    /// Also send a RARP for the MAC (what QEMU itself sends).
    pub announce_rarp: bool,
    pub primary_mode: PrimaryMode,
    pub standby_mode: StandbyMode,
    /// IP MTU of the links.
    pub mtu: usize,
    pub services: Vec<ServiceConfig>,
}

/// Reading or validating the configuration failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The cause is kept as the error's source, not repeated in the message,
    // so `{:#}` prints it once.
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// One or more problems, one per line when displayed.
    #[error("{}", DisplayProblems(problems))]
    Invalid { problems: Vec<Problem> },
}

/// One thing wrong in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file name (or whatever the caller called the text).
    pub origin: String,
    /// 1-based line and column, when known.
    pub location: Option<(usize, usize)>,
    /// Key path such as `pair[1].addresses[0]`, when the problem has one.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some((line, column)) = self.location {
            write!(f, ":{line}:{column}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

struct DisplayProblems<'a>(&'a [Problem]);

impl fmt::Display for DisplayProblems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl Config {
    /// What the daemon will run, one line per item, for `vfailover
    /// validate`.
    pub fn summary(&self) -> String {
        let mut out = format!("control socket {}", self.control.socket.display());
        if let Some(group) = &self.control.group {
            out += &format!(" (group {group})");
        }
        for pair in &self.pairs {
            out += &format!("\npair {}: standby ", pair.name);
            out += pair.standby.as_deref().unwrap_or("auto-detected");
            if let Some(mac) = pair.primary_mac {
                out += &format!(", MAC {mac}");
            }
            let addresses: Vec<String> = pair.addresses.iter().map(|a| a.to_string()).collect();
            out += &format!(", addresses {}", addresses.join(" "));
            for gateway in [
                pair.gateway.map(IpAddr::from),
                pair.gateway6.map(IpAddr::from),
            ]
            .into_iter()
            .flatten()
            {
                out += &format!(", gateway {gateway}");
            }
            out += &format!(", announce {}", pair.announce.as_str());
            let services: Vec<String> = pair
                .services
                .iter()
                .map(|s| format!("{}/{}", service_name(s.kind), s.port))
                .collect();
            if !services.is_empty() {
                out += &format!(", services {}", services.join(" "));
            }
        }
        out
    }

    /// Reads and validates `path`.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates `text`; `origin` names it in messages.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let problem = |span: Option<Range<usize>>, key: Option<String>, message: &str| Problem {
            origin: origin.to_owned(),
            location: span.and_then(|s| line_column(text, s.start)),
            key,
            message: message.to_owned(),
        };
        let deserializer = toml::Deserializer::parse(text).map_err(|e| ConfigError::Invalid {
            problems: vec![problem(e.span(), None, e.message())],
        })?;
        let raw: RawConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = key_path(&e.path().to_string());
            ConfigError::Invalid {
                problems: vec![problem(e.inner().span(), key, e.inner().message())],
            }
        })?;
        let mut validator = Validator {
            text,
            origin,
            problems: Vec::new(),
        };
        let config = validator.config(raw);
        if validator.problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                problems: validator.problems,
            })
        }
    }
}

/// serde_path_to_error's path, minus the field `toml::Spanned` uses
/// internally; `None` for the document itself.
fn key_path(path: &str) -> Option<String> {
    let path = path.replace(".$__serde_spanned_private_value", "");
    (path != "." && !path.is_empty()).then_some(path)
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> Option<(usize, usize)> {
    let before = text.get(..offset)?;
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Some((line, before[line_start..].chars().count() + 1))
}

// The raw file. Values we check ourselves stay text (or i64, TOML's integer)
// wrapped in `Spanned`, so a message can point at them.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    sysfs_root: Option<Spanned<String>>,
    #[serde(default)]
    control: RawControl,
    #[serde(default)]
    announce: RawAnnounce,
    #[serde(default)]
    failback: RawFailback,
    #[serde(default, rename = "pair")]
    pairs: Vec<RawPair>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawControl {
    socket: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAnnounce {
    initial_ms: Option<Spanned<i64>>,
    max_ms: Option<Spanned<i64>>,
    rounds: Option<Spanned<i64>>,
    step_ms: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFailback {
    hold_ms: Option<Spanned<i64>>,
    flap_window_s: Option<Spanned<i64>>,
    max_hold_ms: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPair {
    name: Option<Spanned<String>>,
    standby: Option<Spanned<String>>,
    primary_mac: Option<Spanned<String>>,
    #[serde(default)]
    addresses: Vec<Spanned<String>>,
    gateway: Option<Spanned<String>>,
    gateway6: Option<Spanned<String>>,
    #[serde(default)]
    announce: AnnouncePolicy,
    #[serde(default)]
    announce_rarp: bool,
    #[serde(default)]
    primary_mode: PrimaryMode,
    #[serde(default)]
    standby_mode: StandbyMode,
    mtu: Option<Spanned<i64>>,
    #[serde(default)]
    services: Vec<RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    kind: ServiceKind,
    port: Spanned<i64>,
}

/// Checks raw values and collects every problem it finds.
struct Validator<'a> {
    text: &'a str,
    origin: &'a str,
    problems: Vec<Problem>,
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

    fn config(&mut self, raw: RawConfig) -> Config {
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

    fn failback(&mut self, raw: RawFailback) -> FailbackConfig {
        let default = FailbackConfig::default();
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
        FailbackConfig {
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

/// The name the file uses for a service kind.
fn service_name(kind: ServiceKind) -> &'static str {
    match kind {
        ServiceKind::UdpEcho => "udp-echo",
        ServiceKind::TcpEcho => "tcp-echo",
        ServiceKind::TcpDiscard => "tcp-discard",
    }
}

/// Parses a unicast Ethernet address written `aa:bb:cc:dd:ee:ff` (or with `-`).
fn parse_mac(text: &str) -> Result<MacAddr, String> {
    let mac: MacAddr = text.parse().map_err(|e: ParseMacError| e.to_string())?;
    if mac.is_multicast() {
        return Err(format!(
            "`{text}` is a multicast MAC address; a NIC needs a unicast one"
        ));
    }
    if mac.is_zero() {
        return Err(format!("`{text}` is the all-zero MAC address"));
    }
    Ok(mac)
}

/// Checks a Linux interface name the way the kernel does (`dev_valid_name`).
fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_IFNAME {
        return Err(format!(
            "`{name}` is not an interface name: 1 to {MAX_IFNAME} bytes"
        ));
    }
    if name == "."
        || name == ".."
        || name.contains(|c: char| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(format!(
            "`{name}` is not an interface name: no `/`, `:` or spaces"
        ));
    }
    Ok(())
}

/// Pair names travel in control requests and metric labels: keep them plain.
fn check_pair_name(name: &str) -> Result<(), String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > 64 || !name.chars().all(plain) {
        return Err(format!(
            "`{name}` is not a pair name: 1 to 64 letters, digits, `-`, `_` or `.`"
        ));
    }
    Ok(())
}

/// Parses `address/prefix` and checks that it is an address a host may own.
fn parse_host_cidr(text: &str) -> Result<IpCidr, String> {
    let not_cidr =
        || format!("`{text}` is not an IP address with a prefix length (like 10.0.0.2/24)");
    let (address, prefix) = text.split_once('/').ok_or_else(not_cidr)?;
    let address: IpAddr = address.parse().map_err(|_| not_cidr())?;
    let prefix: u8 = prefix.parse().map_err(|_| not_cidr())?;
    let bits = if address.is_ipv4() { 32 } else { 128 };
    if prefix == 0 || prefix > bits {
        return Err(format!("`{text}`: the prefix length must be 1..={bits}"));
    }
    let what = match address {
        IpAddr::V4(v4) if v4.is_multicast() => Some("a multicast address"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
        IpAddr::V4(v4) if v4.is_unspecified() => Some("the unspecified address"),
        IpAddr::V4(v4) if v4.is_loopback() => Some("a loopback address"),
        IpAddr::V6(v6) if v6.is_multicast() => Some("a multicast address"),
        IpAddr::V6(v6) if v6.is_unspecified() => Some("the unspecified address"),
        IpAddr::V6(v6) if v6.is_loopback() => Some("the loopback address"),
        _ => None,
    };
    if let Some(what) = what {
        return Err(format!(
            "`{text}` is {what}; the stack needs unicast addresses"
        ));
    }
    if let IpAddr::V4(v4) = address {
        // /31 and /32 have no network or broadcast address (RFC 3021).
        if prefix <= 30 {
            let host_mask = u32::MAX >> prefix;
            let host = u32::from(v4) & host_mask;
            if host == host_mask {
                return Err(format!("`{text}` is the broadcast address of its prefix"));
            }
            if host == 0 {
                return Err(format!(
                    "`{text}` is the network address of its prefix, not a host address"
                ));
            }
        }
    }
    Ok(IpCidr::new(IpAddress::from(address), prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(config.failback, FailbackConfig::default());
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
            e.contains(
                "pair[1].name: pair name `pair1` (its default name) is already used by pair[0]"
            ),
            "{e}"
        );
        let e = error("[[pair]]\nname = \"a\"\nstandby = \"ens3\"\naddresses = [\"10.0.0.2/24\"]\n[[pair]]\nstandby = \"ens3\"\naddresses = [\"10.0.1.2/24\"]\n");
        assert!(
            e.contains("pair[1].standby: standby `ens3` is already used by pair[0]"),
            "{e}"
        );
        let e = error("[[pair]]\nprimary_mac = \"02:00:00:00:00:01\"\naddresses = [\"10.0.0.2/24\"]\n[[pair]]\nprimary_mac = \"02-00-00-00-00-01\"\naddresses = [\"10.0.1.2/24\"]\n");
        assert!(
            e.contains(
                "pair[1].primary_mac: primary_mac 02:00:00:00:00:01 is already used by pair[0]"
            ),
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
}
