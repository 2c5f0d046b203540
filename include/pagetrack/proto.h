/* SPDX-License-Identifier: LGPL-2.1 OR BSD-2-Clause */
/*
 * pagetrack balloon-device protocol, version 1: the wire format between a VMM's balloon
 * device and pagetrackd over an AF_UNIX SOCK_STREAM socket. docs/PROTOCOL.md is the
 * normative description; this header is its C rendering.
 *
 * Every integer is little-endian. Every frame is a 16-byte header followed by `len` bytes of
 * payload. Replies echo the request's `seq`. Structures are naturally aligned and packed by
 * construction (no implicit padding), so they can be read straight off the wire on LE hosts.
 */
#ifndef PAGETRACK_PROTO_H
#define PAGETRACK_PROTO_H

#include <stdint.h>

#define PT_PROTO_MAGIC	 0x4b525450u /* "PTRK" read as a little-endian u32 */
#define PT_PROTO_VERSION 1
#define PT_PROTO_PAGE	 4096u

#define PT_MAX_PAYLOAD	 (1u << 20) /* 1 MiB: 65535 hint entries (PT_MAX_HINTS) */
#define PT_MAX_HINTS	 (PT_MAX_PAYLOAD / sizeof(struct pt_range) - 1)
#define PT_MAX_REPORT	 32 /* entries per free page reporting batch (Linux sends <= 32) */
#define PT_MAX_REG_SLOTS 32
/* Pages one HINT/REPORT/INFLATE/DEFLATE/WRITTEN/WR_READ frame may cover in all (4 TiB). */
#define PT_MAX_BATCH_PAGES (1ull << 30)

/* Command IDs (virtio-balloon free page hinting): 0 and 1 are reserved. */
#define PT_CMD_ID_STOP 0u
#define PT_CMD_ID_DONE 1u
#define PT_CMD_ID_MIN  2u

enum pt_msg_type {
	/* device -> service */
	PT_MSG_REGISTER = 1,   /* struct pt_register + pt_reg_slot[nslots] */
	PT_MSG_ARM = 2,	       /* struct pt_cmd: start command ID (before the VMM's sync) */
	PT_MSG_HINT = 3,       /* struct pt_hint + pt_range[count] */
	PT_MSG_STOP = 4,       /* struct pt_cmd: the driver sent STOP for this command ID */
	PT_MSG_DONE = 5,       /* struct pt_cmd: the device sent DONE; release the command ID */
	PT_MSG_QUERY = 6,      /* struct pt_query: verdict for a command ID (or reported pages) */
	PT_MSG_REPORT = 7,     /* struct pt_report + pt_range[count], count <= 32 */
	PT_MSG_INFLATE = 8,    /* struct pt_report + pt_range[count]: pages given to the balloon */
	PT_MSG_DEFLATE = 9,    /* struct pt_report + pt_range[count]: pages taken back (told) */
	PT_MSG_WR_CAPS = 10,   /* empty: write-record capabilities */
	PT_MSG_WR_READ = 11,   /* struct pt_report + pt_range[count]: write records since ARM */
	PT_MSG_PING = 12,      /* empty: liveness / latency floor */
	PT_MSG_WRITTEN = 13,   /* struct pt_report + pt_range[count]: pages the VMM itself wrote
				* (device emulation, DMA): KVM never sees those writes */
	PT_MSG_REGISTER2 = 14, /* struct pt_register2 + pt_reg_slot2[nslots], with nfds file
				* descriptors attached (SCM_RIGHTS) to the frame's bytes */
	/* service -> device */
	PT_MSG_ACK = 64,	   /* struct pt_ack: request completed */
	PT_MSG_VERDICT = 65,	   /* struct pt_verdict + pt_range[nranges]; PT_F_MORE until last */
	PT_MSG_ERROR = 66,	   /* struct pt_error + reason text (not NUL-terminated) */
	PT_MSG_WR_CAPS_REPLY = 67, /* struct pt_wr_caps */
	PT_MSG_WR_RECORDS = 68,	   /* struct pt_verdict-like header + pt_range[]; PT_F_MORE */
};

/* pt_hdr.flags */
#define PT_F_MORE 0x0001 /* reply continues in the next frame with the same seq */

struct pt_hdr {
	uint32_t magic;
	uint8_t version;
	uint8_t type;	/* enum pt_msg_type */
	uint16_t flags; /* PT_F_* */
	uint32_t len;	/* payload bytes following this header, <= PT_MAX_PAYLOAD */
	uint32_t seq;	/* chosen by the sender of a request, echoed by every reply to it */
};

struct pt_range {
	uint64_t gpa; /* guest-physical address, page aligned */
	uint64_t len; /* bytes, page aligned, > 0, gpa + len does not overflow */
};

/* Dirty-logging mode the VMM uses for this VM. */
enum pt_dirty_mode {
	PT_DIRTY_BITMAP = 0, /* KVM_GET_DIRTY_LOG / KVM_CLEAR_DIRTY_LOG */
	PT_DIRTY_RING = 1,   /* KVM_CAP_DIRTY_LOG_RING + KVM_RESET_DIRTY_RINGS */
	PT_TRACK_UFFD = 2,   /* no KVM dirty logging needed: async userfaultfd write-protect on
			      * the VMM's guest memory, read with PAGEMAP_SCAN (REGISTER2 only) */
};

/*
 * pt_reg_slot.flags: the slot has KVM_MEM_LOG_DIRTY_PAGES set now. Without it KVM logs none of
 * the slot's writes, so the service confirms nothing for the VM until the VMM enables dirty
 * logging on it (which the service observes). The safe default is 0: "not logged".
 */
#define PT_REG_SLOT_LOGGED 0x1u

struct pt_reg_slot {
	uint64_t gpa;	/* slot base, page aligned */
	uint64_t size;	/* bytes, page aligned */
	uint32_t id;	/* KVM slot: as_id << 16 | slot id */
	uint32_t flags; /* PT_REG_SLOT_LOGGED or 0 */
};

/* Followed by struct pt_reg_slot slots[nslots]. */
struct pt_register {
	uint32_t vmm_pid;    /* the process holding the KVM VM fd */
	uint32_t dirty_mode; /* enum pt_dirty_mode */
	uint32_t nslots;     /* 0: learn slots from the VMM's ioctls */
	uint32_t flags;	     /* 0 */
};

/*
 * REGISTER2: REGISTER with proof of possession. The device attaches file descriptors to the
 * frame (SCM_RIGHTS on a sendmsg() that carries the frame's first byte), in this order:
 *   PT_DIRTY_BITMAP, PT_DIRTY_RING: [0] the VM's KVM fd (anon_inode:kvm-vm)          nfds 1
 *   PT_TRACK_UFFD: [0] the userfaultfd, [1] the VMM's /proc/self/pagemap,
 *                  [2] the VM's KVM fd, optional                                  nfds 2 or 3
 * The service keeps its own copies; the device may close its copies after the ACK.
 */
#define PT_MAX_REG_FDS 3

struct pt_reg_slot2 {
	uint64_t gpa;	/* slot base, page aligned */
	uint64_t size;	/* bytes, page aligned */
	uint64_t hva;	/* the VMM's address of the slot (PT_TRACK_UFFD), page aligned; else 0 */
	uint32_t id;	/* KVM slot: as_id << 16 | slot id */
	uint32_t flags; /* PT_REG_SLOT_LOGGED or 0 */
};

/* Followed by struct pt_reg_slot2 slots[nslots]. */
struct pt_register2 {
	uint32_t vmm_pid; /* the VMM process */
	uint32_t mode;	  /* enum pt_dirty_mode */
	uint32_t nslots;  /* 0: learn slots from the VMM's ioctls (not with PT_TRACK_UFFD) */
	uint32_t nfds;	  /* descriptors attached to this frame, see above */
	uint64_t resume;  /* 0, or the token of an earlier REGISTER(2)'s ACK (pt_ack.token) */
	uint32_t flags;	  /* 0 */
	uint32_t pad;	  /* 0 */
};

struct pt_cmd {
	uint32_t cmd_id;
	uint32_t flags; /* 0 */
};

/* Followed by struct pt_range ranges[count]. */
struct pt_hint {
	uint32_t cmd_id;
	uint32_t count; /* entries following; len == 8 + 16 * count */
};

/* pt_query.what */
enum pt_query_what {
	PT_Q_HINTS = 0,	    /* pages hinted under cmd_id */
	PT_Q_REPORTED = 1,  /* pages reported free (cmd_id ignored) */
	PT_Q_RECLAIMED = 2, /* inflated pages the guest wrote without deflate */
};

struct pt_query {
	uint32_t cmd_id;
	uint32_t what; /* enum pt_query_what */
};

/* Followed by struct pt_range ranges[count]. */
struct pt_report {
	uint32_t count;
	uint32_t flags; /* 0 */
};

/* Why pages are kept although hinted (pt_verdict.unsure_reason, a bit set). */
#define PT_WHY_UNTRACKED   (1u << 0) /* the VM's dirty-logging mode is not seen by BPF */
#define PT_WHY_TAINTED	   (1u << 1) /* an event was lost in this epoch */
#define PT_WHY_NO_SYNC	   (1u << 2) /* no complete dirty-log sync after ARM */
#define PT_WHY_UNKNOWN_MEM (1u << 3) /* page outside the known memslots */
#define PT_WHY_DONE	   (1u << 4) /* DONE was sent: nothing may be discarded */
#define PT_WHY_STALE	   (1u << 5) /* command ID not current */
/* PT_TRACK_UFFD: the userfaultfd write log lost its hold on guest memory (unregistered or
 * closed behind the service's back, memory remapped, VMM gone, kernel without PAGEMAP_SCAN) */
#define PT_WHY_UFFD_LOST (1u << 6)

struct pt_ack {
	uint32_t status;  /* 0 */
	uint32_t value32; /* type specific: REGISTER -> vm handle; HINT -> ranges recorded */
	uint64_t pages;	  /* HINT/REPORT/INFLATE: pages recorded; REGISTER: coverage bits */
	union {
		uint64_t ignored; /* HINT: pages ignored (stale command ID) */
		uint64_t token;	  /* REGISTER, REGISTER2: proves this registration on resume */
	};
};

/* Followed by struct pt_range ranges[nranges]: free pages (WR_RECORDS: written pages). */
struct pt_verdict {
	uint32_t cmd_id;
	uint32_t unsure_reason; /* PT_WHY_* */
	uint64_t hinted;	/* pages hinted (or reported / inflated) */
	uint64_t free;		/* pages provably untouched: in ranges[] */
	uint64_t kept_written;	/* hinted, then written */
	uint64_t kept_unsure;	/* hinted, state unknown */
	uint32_t nranges;	/* ranges in this frame */
	uint32_t pad;
};

struct pt_wr_caps {
	uint32_t page_size;  /* 4096 */
	uint32_t max_ranges; /* ranges per WR_READ request */
	uint64_t flags;	     /* 0 */
};

enum pt_err {
	PT_E_BAD_MAGIC = 1,
	PT_E_BAD_VERSION = 2,
	PT_E_BAD_TYPE = 3,
	PT_E_BAD_LENGTH = 4,	 /* truncated, oversized or not a multiple of the entry size */
	PT_E_RESERVED_CMD = 5,	 /* command ID 0 or 1 where a real one is needed */
	PT_E_STALE_CMD = 6,	 /* command ID is not the current one */
	PT_E_CMD_REUSE = 7,	 /* command ID reused before the driver's STOP */
	PT_E_BAD_RANGE = 8,	 /* unaligned, empty, overflowing, or outside registered memory */
	PT_E_NOT_REGISTERED = 9, /* request needs REGISTER first */
	PT_E_PERM = 10,		 /* peer may not register / touch that VM */
	PT_E_BUSY = 11,		 /* resource limit (VMs, memory) */
	PT_E_STATE = 12,	 /* request not valid in the current state */
	PT_E_INTERNAL = 13,
	PT_E_BAD_FIELD = 14, /* reserved field or flag nonzero, unknown enum value */
};

struct pt_error {
	uint32_t code;	  /* enum pt_err */
	uint32_t bad_seq; /* seq of the offending frame (also in the header) */
			  /* char reason[len - 8]; */
};

#endif
