//! The classic BPF socket filter that lets only the stack's frames up a
//! packet socket.
//!
//! The program is the AF_PACKET counterpart of the XDP program: it accepts
//! IPv4 to a stack address, ARP whose target is a stack IPv4 address, IPv6 to
//! a stack address and neighbour solicitations whose target is a stack IPv6
//! address (those go to a solicited-node multicast group, not to us).
//!
//! Layout, built so no conditional jump ever spans more than 8 instructions
//! (their offsets are `u8`), however many addresses there are:
//!
//! ```text
//! ld vlan_avail; jeq #0, +1; ret #0      tagged frames belong to a VLAN device
//! ldh [12]                               EtherType
//! jeq #0x0800, 0, 1; ja IPV4             one pair per section present
//! jeq #0x0806, 0, 1; ja ARP              (`ja` takes a 32-bit offset)
//! jeq #0x86dd, 0, 1; ja IPV6
//! ret #0
//! IPV4: ld [30]; { jeq #addr, 0, 1; ret #-1 }...; ret #0
//! ARP:  check Ethernet/IPv4 ARP; ld [38]; { jeq #addr, 0, 1; ret #-1 }...; ret #0
//! IPV6: { 4 x (ld [38+4i]; jeq) ; ret #-1 }...  destination
//!       check next header 58 and ICMPv6 type 135
//!       { 4 x (ld [62+4i]; jeq) ; ret #-1 }...  NS target; ret #0
//! ```
//!
//! Matches return from where they match instead of jumping to a shared
//! `ret`, which is what keeps every jump short. The only bound left is the
//! kernel's limit on program length ([`MAX_INSNS`]).

use std::net::IpAddr;

use libc::{
    sock_filter, BPF_ABS, BPF_B, BPF_H, BPF_JA, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W,
};

/// The kernel refuses classic programs longer than this (`BPF_MAXINSNS`).
pub(super) const MAX_INSNS: usize = libc::BPF_MAXINSNS as usize;

/// Return value keeping the whole frame.
const ACCEPT: u32 = u32::MAX;
/// Return value dropping the frame (for this socket only: AF_PACKET is a tap).
const DROP: u32 = 0;

const ETH_P_IP: u32 = 0x0800;
const ETH_P_ARP: u32 = 0x0806;
const ETH_P_IPV6: u32 = 0x86dd;

/// Frame offsets, all behind an untagged 14-byte Ethernet header.
const OFF_ETHERTYPE: u32 = 12;
const OFF_IPV4_DST: u32 = 14 + 16;
/// ARP ptype, hlen, plen as one word: the target address below is only at
/// offset 38 for Ethernet/IPv4 ARP.
const OFF_ARP_PTYPE_HLEN_PLEN: u32 = 14 + 2;
const ARP_IPV4_OVER_ETHERNET: u32 = 0x0800_0604;
const OFF_ARP_TARGET: u32 = 14 + 24;
const OFF_IPV6_NEXT_HEADER: u32 = 14 + 6;
const OFF_IPV6_DST: u32 = 14 + 24;
const OFF_ICMPV6_TYPE: u32 = 14 + 40;
const OFF_NS_TARGET: u32 = 14 + 40 + 8;
const IPPROTO_ICMPV6: u32 = 58;
const NEIGHBOR_SOLICITATION: u32 = 135;

/// Ancillary load: 1 when the kernel holds a VLAN tag for the frame. Taps
/// run after the kernel moved an 802.1Q tag from the frame into metadata,
/// so a tagged frame looks untagged to the rest of the program.
const VLAN_TAG_PRESENT: u32 = (libc::SKF_AD_OFF + libc::SKF_AD_VLAN_TAG_PRESENT) as u32;

/// The classic BPF program accepting exactly the frames the stack owns for
/// `addrs` (duplicates are ignored). With no addresses it drops everything.
///
/// The result may exceed [`MAX_INSNS`] for very large address sets (more
/// than about a thousand IPv4 or two hundred IPv6 addresses); the caller
/// checks.
pub(super) fn filter_program(addrs: &[IpAddr]) -> Vec<sock_filter> {
    let mut v4: Vec<u32> = Vec::new();
    let mut v6: Vec<[u32; 4]> = Vec::new();
    for addr in addrs {
        match addr {
            IpAddr::V4(a) => v4.push(u32::from(*a)),
            IpAddr::V6(a) => v6.push(words(u128::from(*a))),
        }
    }
    v4.sort_unstable();
    v4.dedup();
    v6.sort_unstable();
    v6.dedup();

    let mut sections: Vec<(u32, Vec<sock_filter>)> = Vec::new();
    if !v4.is_empty() {
        let mut ipv4 = vec![ld(BPF_W, OFF_IPV4_DST)];
        ipv4.extend(v4.iter().flat_map(|&a| accept_if_a_is(a)));
        ipv4.push(ret(DROP));
        sections.push((ETH_P_IP, ipv4));

        let mut arp = vec![ld(BPF_W, OFF_ARP_PTYPE_HLEN_PLEN)];
        arp.extend(drop_unless_a_is(ARP_IPV4_OVER_ETHERNET));
        arp.push(ld(BPF_W, OFF_ARP_TARGET));
        arp.extend(v4.iter().flat_map(|&a| accept_if_a_is(a)));
        arp.push(ret(DROP));
        sections.push((ETH_P_ARP, arp));
    }
    if !v6.is_empty() {
        let mut ipv6: Vec<sock_filter> = v6
            .iter()
            .flat_map(|a| accept_if_ipv6_at(OFF_IPV6_DST, a))
            .collect();
        ipv6.push(ld(BPF_B, OFF_IPV6_NEXT_HEADER));
        ipv6.extend(drop_unless_a_is(IPPROTO_ICMPV6));
        ipv6.push(ld(BPF_B, OFF_ICMPV6_TYPE));
        ipv6.extend(drop_unless_a_is(NEIGHBOR_SOLICITATION));
        ipv6.extend(v6.iter().flat_map(|a| accept_if_ipv6_at(OFF_NS_TARGET, a)));
        ipv6.push(ret(DROP));
        sections.push((ETH_P_IPV6, ipv6));
    }
    if sections.is_empty() {
        return vec![ret(DROP)];
    }

    let mut prog = vec![ld(BPF_W, VLAN_TAG_PRESENT)];
    prog.extend(drop_unless_a_is(0));
    prog.push(ld(BPF_H, OFF_ETHERTYPE));
    let dispatch_end = prog.len() + 2 * sections.len() + 1;
    let mut section_start = dispatch_end;
    for (ethertype, body) in &sections {
        prog.push(jeq(*ethertype, 0, 1));
        // `ja` jumps relative to the instruction after it.
        let offset = section_start - (prog.len() + 1);
        prog.push(stmt(BPF_JMP | BPF_JA, offset as u32));
        section_start += body.len();
    }
    prog.push(ret(DROP));
    debug_assert_eq!(prog.len(), dispatch_end);
    for (_, body) in sections {
        prog.extend(body);
    }
    prog
}

fn words(a: u128) -> [u32; 4] {
    [
        (a >> 96) as u32,
        (a >> 64) as u32,
        (a >> 32) as u32,
        a as u32,
    ]
}

fn stmt(code: u32, k: u32) -> sock_filter {
    jump(code, k, 0, 0)
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter {
        // Every opcode fits 16 bits; libc just declares them as u32.
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// `A = frame[off]`, `size` one of `BPF_W`, `BPF_H`, `BPF_B`.
fn ld(size: u32, off: u32) -> sock_filter {
    stmt(BPF_LD | size | BPF_ABS, off)
}

fn jeq(k: u32, jt: u8, jf: u8) -> sock_filter {
    jump(BPF_JMP | BPF_JEQ | BPF_K, k, jt, jf)
}

fn ret(k: u32) -> sock_filter {
    stmt(BPF_RET | BPF_K, k)
}

fn accept_if_a_is(k: u32) -> [sock_filter; 2] {
    [jeq(k, 0, 1), ret(ACCEPT)]
}

fn drop_unless_a_is(k: u32) -> [sock_filter; 2] {
    [jeq(k, 1, 0), ret(DROP)]
}

/// Accept when the 16 bytes at `off` are `addr`, else fall through.
fn accept_if_ipv6_at(off: u32, addr: &[u32; 4]) -> [sock_filter; 9] {
    let word = |i: usize| {
        // A mismatch skips the rest of the block: 2 instructions per word
        // left, then the `ret`.
        let skip = (2 * (3 - i) + 1) as u8;
        [ld(BPF_W, off + 4 * i as u32), jeq(addr[i], 0, skip)]
    };
    let [a, b] = word(0);
    let [c, d] = word(1);
    let [e, f] = word(2);
    let [g, h] = word(3);
    [a, b, c, d, e, f, g, h, ret(ACCEPT)]
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    /// Run `prog` over `frame` the way the kernel does, for the opcodes
    /// `filter_program` emits. `vlan_tag` is what the kernel would report for
    /// the ancillary VLAN load. A load past the frame's end drops it.
    fn run(prog: &[sock_filter], frame: &[u8], vlan_tag: bool) -> u32 {
        let mut a: u32 = 0;
        let mut pc = 0;
        loop {
            let insn = prog[pc];
            pc += 1;
            let code = u32::from(insn.code);
            match code {
                c if c == BPF_LD | BPF_W | BPF_ABS && insn.k == VLAN_TAG_PRESENT => {
                    a = u32::from(vlan_tag)
                }
                c if c & 0x07 == BPF_LD => {
                    let size = match code & 0x18 {
                        s if s == BPF_W => 4,
                        s if s == BPF_H => 2,
                        s if s == BPF_B => 1,
                        s => panic!("load size {s:#x}"),
                    };
                    assert_eq!(code & 0xe0, BPF_ABS, "only absolute loads");
                    let off = insn.k as usize;
                    let Some(bytes) = frame.get(off..off + size) else {
                        return 0;
                    };
                    a = bytes.iter().fold(0, |acc, &b| acc << 8 | u32::from(b));
                }
                c if c == BPF_JMP | BPF_JA => pc += insn.k as usize,
                c if c == BPF_JMP | BPF_JEQ | BPF_K => {
                    pc += usize::from(if a == insn.k { insn.jt } else { insn.jf })
                }
                c if c == BPF_RET | BPF_K => return insn.k,
                c => panic!("opcode {c:#x} not emitted by filter_program"),
            }
            assert!(pc < prog.len(), "ran off the end of the program");
        }
    }

    fn accepts(prog: &[sock_filter], frame: &[u8]) -> bool {
        run(prog, frame, false) != 0
    }

    const US4: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 20);
    const KERNEL4: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 10);
    const US6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x213, 0, 0, 0, 0, 0, 0x20);
    const OTHER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x213, 0, 0, 0, 0, 0, 0x99);

    fn stack() -> Vec<sock_filter> {
        filter_program(&[US4.into(), US6.into()])
    }

    fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend([0x02, 0, 0, 0, 0, 1]);
        f.extend(ethertype.to_be_bytes());
        f.extend(payload);
        f
    }

    fn ipv4_udp(dst: Ipv4Addr) -> Vec<u8> {
        let mut ip = vec![0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0];
        ip.extend([10, 213, 0, 1]);
        ip.extend(dst.octets());
        ip.extend([0x13, 0x88, 0x13, 0x88, 0, 8, 0, 0]);
        ethernet(0x0800, &ip)
    }

    fn arp_request(target: Ipv4Addr) -> Vec<u8> {
        let mut arp = vec![0, 1, 0x08, 0, 6, 4, 0, 1];
        arp.extend([0x02, 0, 0, 0, 0, 1, 10, 213, 0, 1]);
        arp.extend([0; 6]);
        arp.extend(target.octets());
        ethernet(0x0806, &arp)
    }

    fn ipv6(next_header: u8, dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
        let mut ip = vec![0x60, 0, 0, 0];
        ip.extend((payload.len() as u16).to_be_bytes());
        ip.extend([next_header, 255]);
        ip.extend(Ipv6Addr::new(0xfd00, 0x213, 0, 0, 0, 0, 0, 1).octets());
        ip.extend(dst.octets());
        ip.extend(payload);
        ethernet(0x86dd, &ip)
    }

    fn solicited_node(target: Ipv6Addr) -> Ipv6Addr {
        let t = target.segments();
        Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00 | (t[6] & 0xff), t[7])
    }

    fn neighbour_solicitation(target: Ipv6Addr) -> Vec<u8> {
        let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
        icmp.extend(target.octets());
        icmp.extend([1, 1, 0x02, 0, 0, 0, 0, 1]);
        ipv6(58, solicited_node(target), &icmp)
    }

    #[test]
    fn ipv4_to_us_only() {
        let prog = stack();
        assert!(accepts(&prog, &ipv4_udp(US4)));
        assert!(!accepts(&prog, &ipv4_udp(KERNEL4)));
        assert_eq!(run(&prog, &ipv4_udp(US4), false), ACCEPT);
    }

    #[test]
    fn arp_for_us_only() {
        let prog = stack();
        assert!(accepts(&prog, &arp_request(US4)));
        assert!(!accepts(&prog, &arp_request(KERNEL4)));
        // Same target bytes at offset 38 but not Ethernet/IPv4 ARP.
        let mut odd = arp_request(US4);
        odd[18] = 8;
        assert!(!accepts(&prog, &odd));
    }

    #[test]
    fn neighbour_solicitation_for_us_only() {
        let prog = stack();
        assert!(accepts(&prog, &neighbour_solicitation(US6)));
        assert!(!accepts(&prog, &neighbour_solicitation(OTHER6)));
        // A neighbour advertisement (136) naming us is not a solicitation.
        let mut na = neighbour_solicitation(US6);
        na[54] = 136;
        assert!(!accepts(&prog, &na));
        // Not ICMPv6 directly (a hop-by-hop header first): not matched.
        let mut hbh = neighbour_solicitation(US6);
        hbh[20] = 0;
        assert!(!accepts(&prog, &hbh));
    }

    #[test]
    fn ipv6_to_us_only() {
        let prog = stack();
        assert!(accepts(&prog, &ipv6(17, US6, &[0; 8])));
        assert!(!accepts(&prog, &ipv6(17, OTHER6, &[0; 8])));
        // Differs from us in the last word only, then in the first only.
        let mut near = US6.octets();
        near[15] ^= 1;
        assert!(!accepts(&prog, &ipv6(17, near.into(), &[0; 8])));
        let mut near = US6.octets();
        near[0] ^= 1;
        assert!(!accepts(&prog, &ipv6(17, near.into(), &[0; 8])));
        // An IPv6 destination is not confused with IPv4 or ARP at the same offsets.
        assert!(!accepts(&prog, &ipv6(17, solicited_node(US6), &[0; 8])));
    }

    #[test]
    fn truncated_frames_are_dropped() {
        let prog = stack();
        for frame in [
            ipv4_udp(US4),
            arp_request(US4),
            neighbour_solicitation(US6),
            ipv6(17, US6, &[]),
        ] {
            let full = frame.len();
            // Loads past the end are what stop these: anything shorter than
            // the last byte the program reads must drop.
            let needed = match u16::from_be_bytes([frame[12], frame[13]]) {
                0x0800 => 34,
                0x0806 => 42,
                _ if frame[54..].first() == Some(&135) => 78,
                _ => 54,
            };
            for len in 0..needed {
                assert!(!accepts(&prog, &frame[..len]), "{len} of {full} bytes");
            }
            assert!(accepts(&prog, &frame[..needed]));
        }
    }

    #[test]
    fn vlan_tagged_frames_do_not_match() {
        let prog = stack();
        // Tag left in the frame (e.g. the inner tag of QinQ).
        let plain = ipv4_udp(US4);
        let mut tagged = plain[..12].to_vec();
        tagged.extend([0x81, 0x00, 0x00, 0x05]);
        tagged.extend(&plain[12..]);
        assert!(!accepts(&prog, &tagged));
        let plain = arp_request(US4);
        let mut tagged = plain[..12].to_vec();
        tagged.extend([0x81, 0x00, 0x00, 0x05]);
        tagged.extend(&plain[12..]);
        assert!(!accepts(&prog, &tagged));
        // Tag moved to metadata by the kernel: the frame itself looks ours.
        assert_eq!(run(&prog, &ipv4_udp(US4), true), 0);
        assert_eq!(run(&prog, &neighbour_solicitation(US6), true), 0);
    }

    #[test]
    fn other_ethertypes_and_families() {
        let v4_only = filter_program(&[US4.into()]);
        assert!(accepts(&v4_only, &ipv4_udp(US4)));
        assert!(!accepts(&v4_only, &ipv6(17, US6, &[0; 8])));
        assert!(!accepts(&v4_only, &neighbour_solicitation(US6)));
        let v6_only = filter_program(&[US6.into()]);
        assert!(accepts(&v6_only, &neighbour_solicitation(US6)));
        assert!(!accepts(&v6_only, &ipv4_udp(US4)));
        assert!(!accepts(&v6_only, &arp_request(US4)));
        assert!(!accepts(&stack(), &ethernet(0x88cc, &[0; 46])));
    }

    #[test]
    fn no_addresses_drops_everything() {
        let prog = filter_program(&[]);
        assert_eq!(prog.len(), 1);
        assert!(!accepts(&prog, &ipv4_udp(US4)));
    }

    #[test]
    fn duplicates_cost_nothing() {
        let once = filter_program(&[US4.into(), US6.into()]);
        let twice = filter_program(&[US6.into(), US4.into(), US4.into(), US6.into()]);
        assert_eq!(once.len(), twice.len());
    }

    #[test]
    fn many_addresses_every_one_matches() {
        let v4: Vec<Ipv4Addr> = (0..850u32)
            .map(|i| Ipv4Addr::from(0x0a00_0000 + i))
            .collect();
        let v6: Vec<Ipv6Addr> = (0..20u128)
            .map(|i| Ipv6Addr::from((0xfd00u128 << 112) + i))
            .collect();
        let addrs: Vec<IpAddr> = v4
            .iter()
            .map(|&a| a.into())
            .chain(v6.iter().map(|&a| a.into()))
            .collect();
        let prog = filter_program(&addrs);
        assert!(prog.len() > 255, "jumps must reach past what a u8 spans");
        assert!(prog.len() <= MAX_INSNS);
        for &a in &v4 {
            assert!(accepts(&prog, &ipv4_udp(a)), "{a}");
            assert!(accepts(&prog, &arp_request(a)), "{a}");
        }
        for &a in &v6 {
            assert!(accepts(&prog, &ipv6(17, a, &[0; 8])), "{a}");
            assert!(accepts(&prog, &neighbour_solicitation(a)), "{a}");
        }
        assert!(!accepts(
            &prog,
            &ipv4_udp(Ipv4Addr::from(0x0a00_0000 + 850))
        ));
        assert!(!accepts(&prog, &neighbour_solicitation(OTHER6)));
    }

    #[test]
    fn too_many_addresses_exceed_the_kernel_limit() {
        let addrs: Vec<IpAddr> = (0..1100u32).map(|i| Ipv4Addr::from(i).into()).collect();
        assert!(filter_program(&addrs).len() > MAX_INSNS);
    }
}
