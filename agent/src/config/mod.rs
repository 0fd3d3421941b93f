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

mod raw;
#[cfg(test)]
mod tests;
mod types;
mod validate;
mod values;

use std::fmt;
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use raw::RawConfig;
pub use types::{AnnounceTiming, Config, ControlConfig, PairConfig, PrimaryMode, StandbyMode};
use validate::Validator;
use values::service_name;

/// Where the daemon reads its configuration unless told otherwise.
pub const DEFAULT_PATH: &str = "/etc/vfailover/vfailover.toml";
/// Where the control socket lives unless the configuration says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/vfailover/vfailover.sock";
/// The group that may read status from the control socket by default.
pub const DEFAULT_GROUP: &str = "vfailover";

/// The stack holds at most this many addresses (smoltcp's
/// `iface-max-addr-count-8`, set in the netstack crate).
pub const MAX_ADDRESSES: usize = 8;

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
pub(super) fn line_column(text: &str, offset: usize) -> Option<(usize, usize)> {
    let before = text.get(..offset)?;
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Some((line, before[line_start..].chars().count() + 1))
}
