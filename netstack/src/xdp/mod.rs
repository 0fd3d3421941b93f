//! The XDP side of the primary: our filter program, its loader, and the
//! AF_XDP sockets it feeds. [`crate::link::xdp::XdpLink`] puts them
//! together.
//!
//! # The program
//!
//! `filter.bpf.c` redirects to the AF_XDP socket of the receiving queue
//! (`bpf_redirect_map(&xsks, rx_queue_index, XDP_PASS)`, so a queue without a
//! socket passes) only what the stack owns: IPv4/IPv6 packets to one of its
//! addresses, ARP asking for one, and neighbour solicitations for one.
//! Everything else, including truncated frames, is `XDP_PASS`: the guest
//! kernel keeps SSH, DHCP and its own addresses on the same NIC. The address
//! sets are two hash maps ([`Filter::set_addresses`]).
//!
//! # How it is built
//!
//! `netstack/build.rs` compiles it from source on every build with
//! `clang -target bpf -O2 -g` into `$OUT_DIR/filter.bpf.o`, which is embedded
//! with `include_bytes!` and loaded with libbpf-rs. Headers:
//! - `bpf/bpf_helpers.h`, `bpf/bpf_endian.h`: from libbpf-sys, which installs
//!   them and exports the directory as `DEP_BPF_INCLUDE` (the reason netstack
//!   depends on libbpf-sys directly, pinned `=1.5.1` like libxdp-sys);
//! - `linux/*.h` (bpf, if_ether, ip, ipv6, icmpv6, if_arp): linux-libc-dev,
//!   which clang's libc6-dev dependency installs;
//! - `asm/types.h`: Debian keeps it in `/usr/include/<multiarch>`, which
//!   `-target bpf` does not search, so build.rs adds it (`-idirafter`).
//!
//! So a fresh Debian 12 needs only `clang` beyond what libxdp-sys already
//! requires (`libclang-dev libelf-dev zlib1g-dev libpcap-dev m4 pkg-config`).
//!
//! # Attaching
//!
//! The program is attached through a BPF link (`bpf_link_create` with the
//! mode flag), never with a plain netlink attach: the kernel detaches it when
//! the link fd closes, including when the agent is killed, and it refuses
//! to replace a program someone else attached.

mod program;
// xsk-rs's ring and UMEM accessors are `unsafe` because the caller must
// own the frames it names; only `XskSet` knows which frame is where, so
// the calls stay next to that bookkeeping instead of moving to `sys`.
#[allow(unsafe_code)]
pub(crate) mod xsk;

pub use program::{attached_program, AttachMode, Attachment, Filter, MAX_ADDRESSES};
