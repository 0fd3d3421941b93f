//! Checks and parsers for single values (names, MACs, addresses), each
//! returning the message a problem carries.

use std::net::IpAddr;

use smoltcp::wire::{IpAddress, IpCidr};
use vfailover_netstack::mac::{MacAddr, ParseMacError};
use vfailover_netstack::stack::ServiceKind;

/// `IFNAMSIZ` minus the terminating NUL.
const MAX_IFNAME: usize = 15;

/// The name the file uses for a service kind.
pub(super) fn service_name(kind: ServiceKind) -> &'static str {
    match kind {
        ServiceKind::UdpEcho => "udp-echo",
        ServiceKind::TcpEcho => "tcp-echo",
        ServiceKind::TcpDiscard => "tcp-discard",
    }
}

/// Parses a unicast Ethernet address written `aa:bb:cc:dd:ee:ff` (or with `-`).
pub(super) fn parse_mac(text: &str) -> Result<MacAddr, String> {
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
pub(super) fn check_ifname(name: &str) -> Result<(), String> {
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
pub(super) fn check_pair_name(name: &str) -> Result<(), String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > 64 || !name.chars().all(plain) {
        return Err(format!(
            "`{name}` is not a pair name: 1 to 64 letters, digits, `-`, `_` or `.`"
        ));
    }
    Ok(())
}

/// Parses `address/prefix` and checks that it is an address a host may own.
pub(super) fn parse_host_cidr(text: &str) -> Result<IpCidr, String> {
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
