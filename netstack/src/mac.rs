//! [`MacAddr`]: an Ethernet address, written the way iproute2 prints it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An Ethernet address. Prints as `02:ab:cd:ef:01:23` (lower case, as
/// `ip link` does), parses that or `02-ab-cd-ef-01-23`, and serializes as
/// the printed string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The group bit: multicast or broadcast, never a NIC's own address.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(octets: [u8; 6]) -> Self {
        MacAddr(octets)
    }
}

/// Six bytes off the wire (a netlink attribute, a frame's header).
impl TryFrom<&[u8]> for MacAddr {
    type Error = std::array::TryFromSliceError;

    fn try_from(bytes: &[u8]) -> Result<Self, Self::Error> {
        bytes.try_into().map(MacAddr)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// Not six two-digit hex bytes separated by `:` or `-`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a MAC address (want six hex bytes: 02:00:00:00:00:01)")]
pub struct ParseMacError(String);

impl FromStr for MacAddr {
    type Err = ParseMacError;

    fn from_str(text: &str) -> Result<MacAddr, ParseMacError> {
        let not_mac = || ParseMacError(text.to_owned());
        let mut mac = [0u8; 6];
        let mut parts = text.split([':', '-']);
        for byte in &mut mac {
            let part = parts.next().ok_or_else(not_mac)?;
            // from_str_radix alone would take a sign: "+2" is 2.
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(not_mac());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| not_mac())?;
        }
        if parts.next().is_some() {
            return Err(not_mac());
        }
        Ok(MacAddr(mac))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_either_notation() {
        let mac: MacAddr = "02:AB:cd:00:01:ff".parse().unwrap();
        assert_eq!(mac, MacAddr([0x02, 0xab, 0xcd, 0x00, 0x01, 0xff]));
        assert_eq!(mac.to_string(), "02:ab:cd:00:01:ff");
        assert_eq!("02-ab-cd-00-01-ff".parse::<MacAddr>(), Ok(mac));
        for bad in [
            "",
            "02:ab:cd:00:01",
            "02:ab:cd:00:01:ff:00",
            "2:ab:cd:00:01:ff",
            "+2:ab:cd:00:01:ff",
            "zz:ab:cd:00:01:ff",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }
}
