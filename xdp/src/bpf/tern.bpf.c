// SPDX-License-Identifier: (BSD-2-Clause OR GPL-2.0-only)
//
// tern's XDP pre-filter. Runs on every frame the NIC receives, before the
// kernel's stack, and decides:
//
//   * not tern's (not IPv4/IPv6, not UDP, another port, ARP/ND, fragments,
//     IPv6 extension headers, frames too short to tell): XDP_PASS, untouched;
//   * to one of tern's listening ports: the UDP payload must be STUN (RFC 7983
//     first byte 0..3, magic cookie, length a multiple of 4 that fills the
//     datagram exactly) or ChannelData (first byte 64..127, channel number in
//     0x4000..channel_max, length that fits with at most 3 bytes of padding),
//     else XDP_DROP; STUN requests without MESSAGE-INTEGRITY(-SHA256) among
//     their first TERN_MAX_ATTRS attributes are unauthenticated and pass only
//     within a per-source token bucket (GCRA, LRU hash keyed by the IPv4
//     address or the IPv6 /64);
//   * to the relay port range: XDP_PASS, or XDP_REDIRECT into the XSK
//     registered for the receiving queue when the relay runs AF_XDP.
//
// Every decision increments one per-CPU counter whose index names the verdict
// and the reason (enum tern_reason; the Rust loader owns the labels). The
// configuration lives in the one-entry array `config` so the relay can change
// ports, ranges and limits at run time without reloading.
//
// This file must not grow state the relay cannot see: every map here is read
// or written by xdp/src/lib.rs.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define TERN_MAX_LISTEN_PORTS 8
#define TERN_MAX_VLAN_TAGS 2
#define TERN_MAX_ATTRS 16
// No attribute scan reaches past this offset into the UDP payload (a 9000-byte
// jumbo frame fits); keeps packet offsets provably bounded for the verifier.
#define TERN_MAX_SCAN_OFFSET 9216

#define STUN_HEADER_LEN 20
#define STUN_MAGIC_COOKIE 0x2112A442
#define STUN_ATTR_MESSAGE_INTEGRITY 0x0008
#define STUN_ATTR_MESSAGE_INTEGRITY_SHA256 0x001C
#define CHANNEL_DATA_HEADER_LEN 4

#define TERN_F_REDIRECT_LISTEN (1 << 0)
#define TERN_F_REDIRECT_RELAY (1 << 1)

// The counter index: one per (verdict, reason). Keep in step with
// `Reason` in xdp/src/lib.rs (a test there checks the count).
enum tern_reason {
	R_PASS_NOT_IP = 0,	 // ARP, LLDP, any non-IP ethertype
	R_PASS_NOT_UDP,		 // TCP, ICMP, ICMPv6 (ND), ...
	R_PASS_OTHER_PORT,	 // UDP, not to a tern port
	R_PASS_UNPARSED,	 // too short or malformed before the UDP ports
	R_PASS_FRAGMENT,	 // IPv4 fragment: the kernel reassembles
	R_PASS_IPV6_EXT,	 // IPv6 extension headers: the kernel walks them
	R_PASS_STUN,		 // sane STUN to a listening port
	R_PASS_CHANNEL_DATA,	 // sane ChannelData to a listening port
	R_PASS_RELAY,		 // relay port range, no XSK for this queue
	R_REDIRECT_STUN,	 // sane STUN, into the queue's XSK
	R_REDIRECT_CHANNEL_DATA, // sane ChannelData, into the queue's XSK
	R_REDIRECT_RELAY,	 // relay port range, into the queue's XSK
	R_DROP_UDP_LENGTH,	 // UDP length disagrees with IP length or frame
	R_DROP_TRUNCATED,	 // payload shorter than the STUN/ChannelData header
	R_DROP_FIRST_BYTE,	 // RFC 7983 class is neither STUN nor ChannelData
	R_DROP_STUN_COOKIE,	 // STUN without the RFC 5389 magic cookie
	R_DROP_STUN_LENGTH,	 // STUN length not a multiple of 4 or not the datagram's
	R_DROP_CHANNEL_NUMBER,	 // ChannelData channel outside 0x4000..channel_max
	R_DROP_CHANNEL_LENGTH,	 // ChannelData length does not fit the datagram
	R_DROP_UNAUTH_FLOOD,	 // unauthenticated STUN request over the source's bucket
	R_COUNT,
};

// Set by the relay (key 0). Ports in host byte order; a zero port is unused;
// relay_lo > relay_hi (or both 0) means no relay range.
struct tern_config {
	__u16 listen_ports[TERN_MAX_LISTEN_PORTS];
	__u16 relay_lo;
	__u16 relay_hi;
	__u16 channel_max;
	__u16 flags;
	// GCRA for unauthenticated STUN requests per source: one request costs
	// interval_ns; up to tolerance_ns of credit (burst - 1 requests) may be
	// spent ahead. interval_ns == 0 disables the limit.
	__u64 unauth_interval_ns;
	__u64 unauth_tolerance_ns;
};

// The bucket key: an IPv4 address as ::ffff:a.b.c.d, or an IPv6 /64 (one
// subscriber usually holds a whole /64, so a single address is too fine).
struct tern_source {
	__u8 addr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tern_config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, R_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

// Theoretical arrival time (ns, bpf_ktime_get_ns clock) per source. The
// read-modify-write is not atomic across CPUs: two CPUs racing on one source
// may each let one request through, which bounds the error by the CPU count.
// max_entries is set by the loader before load.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct tern_source);
	__type(value, __u64);
} unauth_tat SEC(".maps");

// Queue index -> the relay ports of the worker whose AF_XDP socket serves
// that queue. Relay traffic to another worker's port is passed up the stack
// (to that worker's socket) instead of into this queue's XSK. hi == 0: no
// restriction.
struct tern_slice {
	__u16 lo;
	__u16 hi;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct tern_slice);
} queue_slices SEC(".maps");

// Interface index -> slot, for relays with AF_XDP sockets on several
// interfaces: the XSK of queue q on the interface in slot s sits at key
// s * TERN_MAX_QUEUES + q. An interface without a slot uses slot 0.
#define TERN_MAX_QUEUES 256
#define TERN_MAX_XSK_IFS 16

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TERN_MAX_XSK_IFS);
	__type(key, __u32);
	__type(value, __u32);
} if_slots SEC(".maps");

// (slot, queue) -> AF_XDP socket, filled by the relay's AF_XDP back end.
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, TERN_MAX_XSK_IFS * TERN_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct vlan_hdr {
	__be16 tci;
	__be16 encapsulated_proto;
};

static __always_inline int count(__u32 reason, int action)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &reason);

	if (c)
		*c += 1;
	return action;
}

// Pass, or redirect into this queue's XSK when the relay asked for it and one
// is registered (bpf_redirect_map falls back to XDP_PASS if it vanished
// between the lookup and the redirect).
static __always_inline int deliver(struct xdp_md *ctx, int redirect, __u32 pass_reason,
				   __u32 redirect_reason)
{
	__u32 ifindex = ctx->ingress_ifindex;
	__u32 key = ctx->rx_queue_index;
	__u32 *slot;

	if (!redirect || key >= TERN_MAX_QUEUES)
		return count(pass_reason, XDP_PASS);
	slot = bpf_map_lookup_elem(&if_slots, &ifindex);
	if (slot && *slot < TERN_MAX_XSK_IFS)
		key += *slot * TERN_MAX_QUEUES;
	if (bpf_map_lookup_elem(&xsks, &key))
		return count(redirect_reason, bpf_redirect_map(&xsks, key, XDP_PASS));
	return count(pass_reason, XDP_PASS);
}

static __always_inline int is_listen_port(const struct tern_config *cfg, __u16 port)
{
#pragma unroll
	for (int i = 0; i < TERN_MAX_LISTEN_PORTS; i++)
		if (cfg->listen_ports[i] != 0 && cfg->listen_ports[i] == port)
			return 1;
	return 0;
}

// 1 when one of the first TERN_MAX_ATTRS attributes is MESSAGE-INTEGRITY or
// MESSAGE-INTEGRITY-SHA256. The STUN message starts `msg_off` bytes into the
// frame and is `plen` bytes long. Attribute headers are copied out with
// bpf_xdp_load_bytes, which bounds-checks at run time, so the variable offsets
// need no proof for the verifier.
static __always_inline int has_message_integrity(struct xdp_md *ctx, __u32 msg_off, __u32 plen)
{
	__u32 off = STUN_HEADER_LEN;

	for (int i = 0; i < TERN_MAX_ATTRS; i++) {
		__u8 a[4];

		if (off > TERN_MAX_SCAN_OFFSET || off + 4 > plen)
			return 0;
		if (bpf_xdp_load_bytes(ctx, msg_off + off, a, sizeof(a)) < 0)
			return 0;
		__u16 type = ((__u16)a[0] << 8) | a[1];
		__u16 len = ((__u16)a[2] << 8) | a[3];

		if (type == STUN_ATTR_MESSAGE_INTEGRITY ||
		    type == STUN_ATTR_MESSAGE_INTEGRITY_SHA256)
			return 1;
		off += 4 + (((__u32)len + 3) & ~3U);
	}
	return 0;
}

// 1 when this source is within its bucket (and charges it), 0 when over.
static __always_inline int unauth_allowed(const struct tern_config *cfg,
					  const struct tern_source *src)
{
	__u64 interval = cfg->unauth_interval_ns;

	if (interval == 0)
		return 1;
	__u64 now = bpf_ktime_get_ns();
	__u64 *tat = bpf_map_lookup_elem(&unauth_tat, src);

	if (!tat) {
		__u64 next = now + interval;

		bpf_map_update_elem(&unauth_tat, src, &next, BPF_ANY);
		return 1;
	}
	__u64 t = *tat > now ? *tat : now;

	if (t - now > cfg->unauth_tolerance_ns)
		return 0;
	*tat = t + interval;
	return 1;
}

// A datagram to a listening port: `payload` .. `payload + plen` is inside the
// frame (checked by the caller).
static __always_inline int check_listen(struct xdp_md *ctx, const struct tern_config *cfg,
					const __u8 *payload, const void *data_end, __u32 plen,
					const struct tern_source *src)
{
	int redirect = cfg->flags & TERN_F_REDIRECT_LISTEN;

	if (plen < 1 || (const void *)(payload + 1) > data_end)
		return count(R_DROP_TRUNCATED, XDP_DROP);
	__u8 first = payload[0];

	if (first <= 3) {
		if (plen < STUN_HEADER_LEN ||
		    (const void *)(payload + STUN_HEADER_LEN) > data_end)
			return count(R_DROP_TRUNCATED, XDP_DROP);
		__u32 cookie = ((__u32)payload[4] << 24) | ((__u32)payload[5] << 16) |
			       ((__u32)payload[6] << 8) | payload[7];

		if (cookie != STUN_MAGIC_COOKIE)
			return count(R_DROP_STUN_COOKIE, XDP_DROP);
		__u32 mlen = ((__u32)payload[2] << 8) | payload[3];

		if ((mlen & 3) != 0 || mlen + STUN_HEADER_LEN != plen)
			return count(R_DROP_STUN_LENGTH, XDP_DROP);
		// Class bits C1 (0x0100) and C0 (0x0010) both clear: a request.
		int request = (payload[0] & 0x01) == 0 && (payload[1] & 0x10) == 0;

		__u32 msg_off = (const void *)payload - (const void *)(long)ctx->data;

		if (request && !has_message_integrity(ctx, msg_off, plen) &&
		    !unauth_allowed(cfg, src))
			return count(R_DROP_UNAUTH_FLOOD, XDP_DROP);
		return deliver(ctx, redirect, R_PASS_STUN, R_REDIRECT_STUN);
	}
	if (first >= 64 && first <= 127) {
		if (plen < CHANNEL_DATA_HEADER_LEN ||
		    (const void *)(payload + CHANNEL_DATA_HEADER_LEN) > data_end)
			return count(R_DROP_TRUNCATED, XDP_DROP);
		__u16 channel = ((__u16)payload[0] << 8) | payload[1];
		__u32 dlen = ((__u32)payload[2] << 8) | payload[3];

		if (channel > cfg->channel_max)
			return count(R_DROP_CHANNEL_NUMBER, XDP_DROP);
		if (dlen + CHANNEL_DATA_HEADER_LEN > plen ||
		    plen - (dlen + CHANNEL_DATA_HEADER_LEN) > 3)
			return count(R_DROP_CHANNEL_LENGTH, XDP_DROP);
		return deliver(ctx, redirect, R_PASS_CHANNEL_DATA, R_REDIRECT_CHANNEL_DATA);
	}
	return count(R_DROP_FIRST_BYTE, XDP_DROP);
}

SEC("xdp")
int tern_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct tern_source src = {};
	struct udphdr *udp;
	__u32 l4_room; // bytes the IP header says follow it

	if ((void *)(eth + 1) > data_end)
		return count(R_PASS_UNPARSED, XDP_PASS);
	__u16 proto = eth->h_proto;
	void *cur = eth + 1;

#pragma unroll
	for (int i = 0; i < TERN_MAX_VLAN_TAGS; i++) {
		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		struct vlan_hdr *vlan = cur;

		if ((void *)(vlan + 1) > data_end)
			return count(R_PASS_UNPARSED, XDP_PASS);
		proto = vlan->encapsulated_proto;
		cur = vlan + 1;
	}

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = cur;

		if ((void *)(ip + 1) > data_end || ip->version != 4 || ip->ihl < 5)
			return count(R_PASS_UNPARSED, XDP_PASS);
		if (ip->protocol != IPPROTO_UDP)
			return count(R_PASS_NOT_UDP, XDP_PASS);
		if (ip->frag_off & bpf_htons(0x3FFF)) // MF or a fragment offset
			return count(R_PASS_FRAGMENT, XDP_PASS);
		__u32 ihl = ip->ihl * 4;
		__u32 total = bpf_ntohs(ip->tot_len);

		if (total < ihl)
			return count(R_PASS_UNPARSED, XDP_PASS);
		l4_room = total - ihl;
		udp = (void *)ip + ihl;
		src.addr[10] = 0xff;
		src.addr[11] = 0xff;
		__builtin_memcpy(&src.addr[12], &ip->saddr, 4);
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = cur;

		if ((void *)(ip6 + 1) > data_end || ip6->version != 6)
			return count(R_PASS_UNPARSED, XDP_PASS);
		switch (ip6->nexthdr) {
		case IPPROTO_UDP:
			break;
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_FRAGMENT:
		case IPPROTO_DSTOPTS:
		case IPPROTO_AH:
		case IPPROTO_ESP:
			return count(R_PASS_IPV6_EXT, XDP_PASS);
		default:
			return count(R_PASS_NOT_UDP, XDP_PASS);
		}
		l4_room = bpf_ntohs(ip6->payload_len);
		udp = (void *)(ip6 + 1);
		__builtin_memcpy(&src.addr[0], &ip6->saddr, 8);
	} else {
		return count(R_PASS_NOT_IP, XDP_PASS);
	}

	if ((void *)(udp + 1) > data_end)
		return count(R_PASS_UNPARSED, XDP_PASS);

	__u32 zero = 0;
	struct tern_config *cfg = bpf_map_lookup_elem(&config, &zero);

	if (!cfg)
		return count(R_PASS_OTHER_PORT, XDP_PASS);
	__u16 port = bpf_ntohs(udp->dest);
	int listen = is_listen_port(cfg, port);
	int relay = !listen && cfg->relay_lo != 0 && port >= cfg->relay_lo &&
		    port <= cfg->relay_hi;

	if (!listen && !relay)
		return count(R_PASS_OTHER_PORT, XDP_PASS);

	__u32 ulen = bpf_ntohs(udp->len);
	__u8 *payload = (__u8 *)(udp + 1);

	if (ulen < sizeof(*udp) || ulen > l4_room || (void *)udp + ulen > data_end)
		return count(R_DROP_UDP_LENGTH, XDP_DROP);
	if (relay) {
		int redirect = cfg->flags & TERN_F_REDIRECT_RELAY;
		__u32 queue = ctx->rx_queue_index;
		struct tern_slice *slice = bpf_map_lookup_elem(&queue_slices, &queue);

		if (slice && slice->hi != 0 && (port < slice->lo || port > slice->hi))
			redirect = 0;
		return deliver(ctx, redirect, R_PASS_RELAY, R_REDIRECT_RELAY);
	}
	return check_listen(ctx, cfg, payload, data_end, ulen - sizeof(*udp), &src);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
