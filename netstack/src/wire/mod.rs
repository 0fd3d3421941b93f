//! Frames the stack inspects or builds itself, outside smoltcp.
//!
//! [`check`] rejects malformed frames before they reach smoltcp so they can
//! be counted; [`announce`] builds the frames that tell an L2 network where a
//! MAC and its addresses live after a migration; [`tcp`] finds TCP segments
//! for the resender and takes SACK out of a peer's SYN when asked.

pub mod announce;
pub mod check;
pub mod tcp;

/// Ethernet II header (no VLAN tag): two MACs and the EtherType.
pub const ETHERNET_HEADER: usize = 14;
/// Fixed IPv6 header.
pub(crate) const IPV6_HEADER: usize = 40;
