//! What the daemon reports: [`Status`], filled by the daemon's main loop,
//! sent as JSON over the control socket (`vfailover status --json`), and
//! rendered for people ([`render_table`]) and for Prometheus
//! ([`render_prometheus`], text exposition format 0.0.4).
//!
//! Fields are plain strings and numbers rather than the daemon's own enums
//! so that a client of another version still parses what it does not know.

#[cfg(test)]
mod fixtures;
mod prometheus;
mod text;
mod types;

pub use prometheus::render_prometheus;
pub use text::{render_line, render_table};
pub(crate) use types::wire_name;
pub use types::{LinkStatus, MigrationStatus, PairStatus, RefusedDevice, Status, SwitchStatus};
