// SPDX-License-Identifier: BSD-3-Clause
//
// o7s steering program: sends Ouroboros frames to AF_XDP sockets, everything else to the kernel.
//
// This file is part of o7s and is licensed like the rest of the project. The kernel only sees the
// string "GPL" in the `license` section below: it is what makes the GPL-only helpers available to
// the program, nothing more.
//
// Maps (the Rust side in `lib.rs` mirrors these names, types and sizes):
//   config  ARRAY, 1 entry,  u32 -> u16  key 0: EtherType to steer, in HOST byte order.
//                                         0 (the initial value) means the default, 0xA000.
//   xsks    XSKMAP, 64 entries            queue index -> AF_XDP socket.
//   stats   PERCPU_ARRAY, 4 entries, u64  0 matched, 1 passed (not ours),
//                                         2 redirect failed (ours, no socket on that queue),
//                                         3 runt (shorter than an Ethernet header, passed).
//
// Built by build.rs with `clang -O2 -g -target bpf`. No CO-RE, no vmlinux.h.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define O7S_DEFAULT_ETHERTYPE 0xA000
#define O7S_MAX_QUEUES 64

enum o7s_stat {
	O7S_STAT_MATCHED = 0,
	O7S_STAT_PASSED = 1,
	O7S_STAT_REDIRECT_FAILED = 2,
	O7S_STAT_RUNT = 3,
	O7S_STAT_MAX = 4,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u16);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, O7S_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, O7S_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline void count(__u32 index)
{
	__u64 *value = bpf_map_lookup_elem(&stats, &index);

	// Per-CPU slot: no other CPU writes it, and XDP does not preempt itself on one CPU.
	if (value)
		*value += 1;
}

static __always_inline __u16 wanted_ethertype(void)
{
	__u32 key = 0;
	__u16 *value = bpf_map_lookup_elem(&config, &key);

	if (!value || *value == 0)
		return O7S_DEFAULT_ETHERTYPE;
	return *value;
}

SEC("xdp.frags")
int o7s_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	// With multi-buffer (frags) data..data_end is the first buffer only; the Ethernet header is
	// always in it for any frame long enough to have one.
	if ((void *)(eth + 1) > data_end) {
		count(O7S_STAT_RUNT);
		return XDP_PASS;
	}

	if (bpf_ntohs(eth->h_proto) != wanted_ethertype()) {
		count(O7S_STAT_PASSED);
		return XDP_PASS;
	}

	count(O7S_STAT_MATCHED);

	// The low bits of the flags argument are the action returned when the lookup fails: with no
	// socket on this queue the frame goes to the kernel stack rather than being dropped.
	long action = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
	if (action != XDP_REDIRECT)
		count(O7S_STAT_REDIRECT_FAILED);
	return action;
}

char LICENSE[] SEC("license") = "GPL";
