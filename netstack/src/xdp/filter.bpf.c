// SPDX-License-Identifier: MIT OR GPL-2.0
/*
 * vfailover XDP filter: redirect to the AF_XDP socket of the receiving queue
 * only the frames the userspace stack owns; pass everything else to the
 * kernel, which keeps its own addresses, SSH, DHCP... on the same NIC.
 *
 * Taken (redirected to xsks[rx_queue_index]):
 *   - IPv4 packets whose destination is in addrs_v4;
 *   - IPv6 packets whose destination is in addrs_v6;
 *   - ARP (Ethernet/IPv4) whose target protocol address is in addrs_v4;
 *   - ICMPv6 neighbour solicitations whose target is in addrs_v6 (they are
 *     sent to the solicited-node multicast group, not to the address).
 * Everything else, truncated or malformed frames included, is XDP_PASS.
 * VLAN-tagged frames are passed: the stack does not speak 802.1Q.
 *
 * Built by netstack/build.rs with `clang -target bpf -O2 -g`. Headers:
 * bpf/bpf_helpers.h and bpf/bpf_endian.h from libbpf-sys (DEP_BPF_INCLUDE),
 * the UAPI linux headers from linux-libc-dev, asm headers from the multiarch
 * directory, and nothing from the C library: glibc's headers ask for
 * gnu/stubs-32.h under `-target bpf`, which only libc6-dev-i386 has.
 * linux/if_arp.h pulls in sys/socket.h, so the ARP header is declared here;
 * build.rs refuses any header outside those directories.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/icmpv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define NDISC_NEIGHBOUR_SOLICITATION 135
#define ARPHRD_ETHER 1

/* The fixed part of an ARP packet (linux/if_arp.h's struct arphdr). */
struct arp_header {
	__be16 ar_hrd;
	__be16 ar_pro;
	__u8 ar_hln;
	__u8 ar_pln;
	__be16 ar_op;
};

/* One socket per RX queue; the loader sizes it to the queue count. */
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

/* The stack's addresses, network byte order. The value is unused. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u8);
} addrs_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct in6_addr);
	__type(value, __u8);
} addrs_v6 SEC(".maps");

/* The Ethernet/IPv4 body of an ARP packet after its fixed part. */
struct arp_eth_ipv4 {
	__u8 sha[ETH_ALEN];
	__u8 spa[4];
	__u8 tha[ETH_ALEN];
	__u8 tpa[4];
} __attribute__((packed));

/* An ICMPv6 neighbour solicitation: header, reserved word, target. */
struct nd_solicit {
	struct icmp6hdr hdr;
	struct in6_addr target;
} __attribute__((packed));

static __always_inline int take(struct xdp_md *ctx)
{
	/* The flags' low bits are the action when the queue has no socket. */
	return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
}

static __always_inline int v4_owned(const void *addr)
{
	/* Keys are read straight from the packet: the helper copies them, so
	 * the 2-byte alignment of addresses behind Ethernet is no issue. */
	return bpf_map_lookup_elem(&addrs_v4, addr) != NULL;
}

static __always_inline int v6_owned(const void *addr)
{
	return bpf_map_lookup_elem(&addrs_v6, addr) != NULL;
}

static __always_inline int filter_arp(struct xdp_md *ctx, void *l3, void *end)
{
	struct arp_header *arp = l3;
	struct arp_eth_ipv4 *body = (void *)(arp + 1);

	if ((void *)(body + 1) > end)
		return XDP_PASS;
	if (arp->ar_hrd != bpf_htons(ARPHRD_ETHER) || arp->ar_pro != bpf_htons(ETH_P_IP) ||
	    arp->ar_hln != ETH_ALEN || arp->ar_pln != 4)
		return XDP_PASS;
	return v4_owned(body->tpa) ? take(ctx) : XDP_PASS;
}

static __always_inline int filter_ipv4(struct xdp_md *ctx, void *l3, void *end)
{
	struct iphdr *ip = l3;

	if ((void *)(ip + 1) > end || ip->version != 4)
		return XDP_PASS;
	return v4_owned(&ip->daddr) ? take(ctx) : XDP_PASS;
}

static __always_inline int filter_ipv6(struct xdp_md *ctx, void *l3, void *end)
{
	struct ipv6hdr *ip6 = l3;
	struct nd_solicit *ns;

	if ((void *)(ip6 + 1) > end || ip6->version != 6)
		return XDP_PASS;
	if (v6_owned(&ip6->daddr))
		return take(ctx);

	/* Solicitations carry no extension headers in practice (RFC 4861
	 * senders use none), so only a directly following ICMPv6 is parsed. */
	if (ip6->nexthdr != IPPROTO_ICMPV6)
		return XDP_PASS;
	ns = (void *)(ip6 + 1);
	if ((void *)(ns + 1) > end)
		return XDP_PASS;
	if (ns->hdr.icmp6_type != NDISC_NEIGHBOUR_SOLICITATION || ns->hdr.icmp6_code != 0)
		return XDP_PASS;
	return v6_owned(&ns->target) ? take(ctx) : XDP_PASS;
}

SEC("xdp")
int vfailover_filter(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return XDP_PASS;

	switch (eth->h_proto) {
	case bpf_htons(ETH_P_IP):
		return filter_ipv4(ctx, eth + 1, end);
	case bpf_htons(ETH_P_IPV6):
		return filter_ipv6(ctx, eth + 1, end);
	case bpf_htons(ETH_P_ARP):
		return filter_arp(ctx, eth + 1, end);
	default:
		return XDP_PASS;
	}
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
