//! Opening a pair's links: on short-lived threads (binding an XSK can
//! wait for the kernel), handed back to the main loop, which attaches them
//! only if the device is still the pair's.

use std::net::IpAddr;
use std::time::Instant;

use vfailover_netstack::datapath::Command;
use vfailover_netstack::link::packet::PacketLink;
use vfailover_netstack::link::xdp::{XdpConfig, XdpLink, XdpModeRequest};
use vfailover_netstack::link::{Link, LinkError};

use super::{log_failed, Daemon};
use crate::config::{PrimaryMode, StandbyMode};
use crate::discovery::NetDev;

/// Which link of a pair a freshly opened link is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Primary,
    /// A primary still in its hold: attached to receive only.
    HeldPrimary,
    Standby,
}

/// A link opened on a helper thread, on its way to the main loop.
pub(super) struct Opened {
    pair: String,
    role: Role,
    ifindex: u32,
    result: Result<Box<dyn Link>, OpenError>,
}

/// Why a link could not be opened: the socket family, the device, and the
/// link's own error.
#[derive(Debug, thiserror::Error)]
pub(super) enum OpenError {
    #[error("AF_XDP on {ifname}: {error}")]
    Xdp { ifname: String, error: LinkError },
    #[error("AF_PACKET on {ifname}: {error}")]
    Packet { ifname: String, error: LinkError },
}

impl Daemon {
    /// Open again the primaries whose fast path failed, when their retry
    /// is due.
    pub(super) fn retry_fast_paths(&mut self) {
        let now = Instant::now();
        let due: Vec<(String, NetDev)> = self
            .pairs
            .iter_mut()
            .filter_map(|(name, p)| {
                let dev = p.primary.clone()?;
                p.fast_path_retry.take_due(now).then(|| (name.clone(), dev))
            })
            .collect();
        for (pair, dev) in due {
            self.open_link(&pair, Role::Primary, dev);
        }
    }

    /// Open a link for `pair` on a helper thread; the result comes back
    /// through `opened` and the waker.
    pub(super) fn open_link(&self, pair: &str, role: Role, dev: NetDev) {
        let Some(p) = self.pairs.get(pair) else {
            return;
        };
        let addresses: Vec<IpAddr> = p
            .config
            .addresses
            .iter()
            .map(|c| c.address().into())
            .collect();
        let (primary_mode, standby_mode) = (p.config.primary_mode, p.config.standby_mode);
        let (tx, waker, pair) = (self.opened_tx.clone(), self.waker.clone(), pair.to_owned());
        let spawned = std::thread::Builder::new()
            .name(format!("open-{}", dev.ifname))
            .spawn(move || {
                let result = match role {
                    Role::Primary | Role::HeldPrimary => {
                        open_xdp(&dev.ifname, &addresses, xdp_mode(primary_mode))
                    }
                    Role::Standby => open_standby(&dev.ifname, &addresses, standby_mode),
                };
                let _ = tx.send(Opened {
                    pair,
                    role,
                    ifindex: dev.ifindex,
                    result,
                });
                let _ = waker.write(1);
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start a thread to open a link: {e}");
        }
    }

    pub(super) fn on_opened(&mut self, opened: Opened) {
        let Some(p) = self.pairs.get_mut(&opened.pair) else {
            return;
        };
        let current = match opened.role {
            Role::Primary => p.primary.as_ref(),
            Role::HeldPrimary => p.seen.as_ref(),
            Role::Standby => p.standby.as_ref(),
        };
        if current.map(|d| d.ifindex) != Some(opened.ifindex) {
            // The device left the pair while its link was being opened.
            return;
        }
        // A held primary whose hold ended while it was being opened.
        let attached = p.primary.as_ref().map(|d| d.ifindex) == Some(opened.ifindex);
        match (opened.role, opened.result) {
            (Role::Primary, Ok(link)) => {
                tracing::info!(pair = %opened.pair, ifname = link.ifname(), mode = %link.mode(), "fast path up");
                p.fast_path_error = None;
                p.fast_path_retry.reset();
                log_failed(
                    &opened.pair,
                    "attaching the primary",
                    p.datapath.send(Command::AttachPrimary(link)),
                );
            }
            (Role::HeldPrimary, Ok(link)) if attached => {
                tracing::info!(pair = %opened.pair, ifname = link.ifname(), mode = %link.mode(), "fast path up (its hold ended while it was opened)");
                p.seen = None;
                p.fast_path_error = None;
                log_failed(
                    &opened.pair,
                    "attaching the primary",
                    p.datapath.send(Command::AttachPrimary(link)),
                );
            }
            (Role::HeldPrimary, Ok(link)) => {
                tracing::info!(pair = %opened.pair, ifname = link.ifname(), mode = %link.mode(), "receiving on the primary during its hold");
                p.held = Some(opened.ifindex);
                log_failed(
                    &opened.pair,
                    "attaching the held primary",
                    p.datapath.send(Command::AttachHeldPrimary(link)),
                );
            }
            (Role::HeldPrimary, Err(e)) if attached => {
                // Open it the ordinary way, which reports and retries.
                tracing::debug!(pair = %opened.pair, "cannot receive on the primary during its hold: {e}");
                p.seen = None;
                if let Some(dev) = p.primary.clone() {
                    self.open_link(&opened.pair, Role::Primary, dev);
                }
            }
            (Role::HeldPrimary, Err(e)) => {
                // The attach after the hold opens it again and reports.
                tracing::debug!(pair = %opened.pair, "cannot receive on the primary during its hold yet: {e}");
                p.seen = None;
            }
            (Role::Standby, Ok(link)) => {
                tracing::info!(pair = %opened.pair, ifname = link.ifname(), mode = %link.mode(), "standby up");
                log_failed(
                    &opened.pair,
                    "attaching the standby",
                    p.datapath.send(Command::AttachStandby(link)),
                );
            }
            (Role::Primary, Err(e)) => {
                let retry = p.fast_path_retry.failed(Instant::now());
                let e = e.to_string();
                // Said once per distinct reason, not at every retry.
                if p.fast_path_error.as_ref() != Some(&e) {
                    tracing::error!(pair = %opened.pair, "cannot take the fast path, staying on the standby: {e}");
                }
                tracing::debug!(pair = %opened.pair, "fast path: next try in {retry:?}");
                p.fast_path_error = Some(e);
            }
            (Role::Standby, Err(e)) => {
                tracing::error!(pair = %opened.pair, "cannot open the standby: {e}");
            }
        }
    }
}

fn xdp_mode(mode: PrimaryMode) -> XdpModeRequest {
    match mode {
        PrimaryMode::Auto => XdpModeRequest::Auto,
        PrimaryMode::ZeroCopy => XdpModeRequest::ZeroCopy,
        PrimaryMode::Driver => XdpModeRequest::Driver,
        PrimaryMode::Generic => XdpModeRequest::Generic,
    }
}

fn open_xdp(
    ifname: &str,
    addresses: &[IpAddr],
    mode: XdpModeRequest,
) -> Result<Box<dyn Link>, OpenError> {
    let config = XdpConfig {
        ifname: ifname.to_owned(),
        addresses: addresses.to_vec(),
        mode,
        ..XdpConfig::default()
    };
    XdpLink::open(&config)
        .map(|l| Box::new(l) as Box<dyn Link>)
        .map_err(|error| OpenError::Xdp {
            ifname: ifname.to_owned(),
            error,
        })
}

/// The standby: AF_XDP when it takes an XDP program (and `auto` or `xdp`),
/// else AF_PACKET.
fn open_standby(
    ifname: &str,
    addresses: &[IpAddr],
    mode: StandbyMode,
) -> Result<Box<dyn Link>, OpenError> {
    if mode != StandbyMode::Packet {
        match open_xdp(ifname, addresses, XdpModeRequest::Auto) {
            Ok(link) => return Ok(link),
            Err(e) if mode == StandbyMode::Xdp => return Err(e),
            Err(e) => tracing::info!("{e}; using AF_PACKET on the standby"),
        }
    }
    PacketLink::open(ifname, addresses)
        .map(|l| Box::new(l) as Box<dyn Link>)
        .map_err(|error| OpenError::Packet {
            ifname: ifname.to_owned(),
            error,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_errors_name_the_socket_and_the_device() {
        let long = "a-name-far-too-long";
        let Err(e) = open_standby(long, &[], StandbyMode::Packet) else {
            panic!("opened {long}");
        };
        assert!(
            matches!(
                &e,
                OpenError::Packet {
                    error: LinkError::InvalidIfName(_),
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            format!("AF_PACKET on {long}: {long:?} is not a valid interface name")
        );
        let gone = OpenError::Xdp {
            ifname: "eth2".into(),
            error: LinkError::Gone("eth2".into()),
        };
        assert_eq!(gone.to_string(), "AF_XDP on eth2: device eth2 is gone");
    }
}
