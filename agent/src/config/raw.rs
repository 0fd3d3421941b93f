//! The file as serde reads it: values we check ourselves stay text (or
//! i64, TOML's integer) wrapped in `Spanned`, so a message can point at them.

use serde::Deserialize;
use toml::Spanned;
use vfailover_netstack::stack::ServiceKind;

use super::{PrimaryMode, StandbyMode};
use crate::migration::AnnouncePolicy;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) sysfs_root: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) control: RawControl,
    #[serde(default)]
    pub(super) announce: RawAnnounce,
    #[serde(default)]
    pub(super) failback: RawFailback,
    #[serde(default, rename = "pair")]
    pub(super) pairs: Vec<RawPair>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawControl {
    pub(super) socket: Option<Spanned<String>>,
    pub(super) group: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAnnounce {
    pub(super) initial_ms: Option<Spanned<i64>>,
    pub(super) max_ms: Option<Spanned<i64>>,
    pub(super) rounds: Option<Spanned<i64>>,
    pub(super) step_ms: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFailback {
    pub(super) hold_ms: Option<Spanned<i64>>,
    pub(super) flap_window_s: Option<Spanned<i64>>,
    pub(super) max_hold_ms: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPair {
    pub(super) name: Option<Spanned<String>>,
    pub(super) standby: Option<Spanned<String>>,
    pub(super) primary_mac: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) addresses: Vec<Spanned<String>>,
    pub(super) gateway: Option<Spanned<String>>,
    pub(super) gateway6: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) announce: AnnouncePolicy,
    #[serde(default)]
    pub(super) announce_rarp: bool,
    #[serde(default = "enabled")]
    pub(super) tcp_resend: bool,
    #[serde(default = "enabled")]
    pub(super) tcp_sack: bool,
    #[serde(default)]
    pub(super) primary_mode: PrimaryMode,
    #[serde(default)]
    pub(super) standby_mode: StandbyMode,
    pub(super) mtu: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) services: Vec<RawService>,
}

/// The default of switches that are on unless turned off.
fn enabled() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) kind: ServiceKind,
    pub(super) port: Spanned<i64>,
}
