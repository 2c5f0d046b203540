// SPDX-License-Identifier: GPL-2.0
/*
 * Protocol parser, encoder and framer tests: every message type round trips, every malformed
 * class yields its exact error code, and the framer cuts streams fed in any pieces.
 */
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

#include <pagetrack/client.h>

#include "lib/proto.h"
#include "t.h"

#define PG PT_PROTO_PAGE

/* 8-aligned frame storage: the payload after the 16-byte header is then aligned too. */
static uint64_t fbuf_store[PT_MAX_FRAME / 8 + 8];
static uint8_t *const fbuf = (uint8_t *)fbuf_store;

static struct pt_hdr *fhdr(void)
{
	return (struct pt_hdr *)fbuf;
}

static void *fpay(void)
{
	return fbuf + PT_HDR_SIZE;
}

static int parse(struct pt_msg *m)
{
	return pt_frame_parse(fhdr(), fpay(), m);
}

static const struct pt_range two_ranges[] = {
	{ .gpa = 0x100000, .len = 4 * PG },
	{ .gpa = 0x40000000, .len = 1024 * PG },
};

static int roundtrip_requests(void)
{
	struct pt_reg_slot slots[] = {
		{ .gpa = 0, .size = 0xa0000, .id = 0 },
		{ .gpa = 0x100000, .size = 0x3ff00000, .id = 1 },
		{ .gpa = 0, .size = 0x10000, .id = 1 << 16 }, /* SMM address space may overlap */
	};
	struct pt_msg m;
	size_t n;

	n = pt_build_register(fbuf, PT_MAX_FRAME, 7, 1234, PT_DIRTY_RING, slots, 3);
	CHECK(n == 16 + 16 + 3 * 24);
	CHECK(parse(&m) == 0);
	CHECK(m.type == PT_MSG_REGISTER && m.seq == 7 && m.count == 3);
	CHECK(m.reg->vmm_pid == 1234 && m.reg->dirty_mode == PT_DIRTY_RING);
	CHECK(m.slots[1].gpa == 0x100000 && m.slots[2].id == 1u << 16);

	for (unsigned int t = PT_MSG_ARM; t <= PT_MSG_DONE; t++) {
		if (t == PT_MSG_HINT)
			continue;
		CHECK(pt_build_cmd(fbuf, PT_MAX_FRAME, t, 8, 42) == 24);
		CHECK(parse(&m) == 0);
		CHECK(m.type == t && m.cmd_id == 42 && m.seq == 8);
	}

	CHECK(pt_build_hint(fbuf, PT_MAX_FRAME, 9, 5, two_ranges, 2) == 16 + 8 + 32);
	CHECK(parse(&m) == 0);
	CHECK(m.type == PT_MSG_HINT && m.cmd_id == 5 && m.count == 2);
	CHECK(m.ranges[1].gpa == 0x40000000 && pt_range_pages(&m.ranges[1]) == 1024);
	CHECK(m.pages == pt_range_pages(&m.ranges[0]) + 1024); /* summed while checked */
	CHECK((const uint8_t *)m.ranges == fbuf + 24);	       /* zero copy */

	CHECK(pt_build_query(fbuf, PT_MAX_FRAME, 10, 5, PT_Q_HINTS) == 24);
	CHECK(parse(&m) == 0 && m.type == PT_MSG_QUERY && m.cmd_id == 5);
	CHECK(m.query->what == PT_Q_HINTS);

	static const unsigned int rtypes[] = { PT_MSG_REPORT, PT_MSG_INFLATE, PT_MSG_DEFLATE,
					       PT_MSG_WR_READ, PT_MSG_WRITTEN };
	for (size_t i = 0; i < 5; i++) {
		CHECK(pt_build_report(fbuf, PT_MAX_FRAME, rtypes[i], 11, two_ranges, 2) == 56);
		CHECK(parse(&m) == 0);
		CHECK(m.type == rtypes[i] && m.count == 2 && m.ranges[0].len == 4 * PG);
	}

	CHECK(pt_build_empty(fbuf, PT_MAX_FRAME, PT_MSG_PING, 12) == 16);
	CHECK(pt_frame_parse(fhdr(), NULL, &m) == 0 && m.type == PT_MSG_PING && !m.body);
	CHECK(pt_build_empty(fbuf, PT_MAX_FRAME, PT_MSG_WR_CAPS, 13) == 16);
	CHECK(parse(&m) == 0 && m.type == PT_MSG_WR_CAPS && m.seq == 13);
	return 0;
}

static int roundtrip_replies(void)
{
	struct pt_verdict v = { .cmd_id = 5,
				.unsure_reason = PT_WHY_TAINTED,
				.hinted = 2000,
				.free = 1028,
				.kept_written = 900,
				.kept_unsure = 72,
				.nranges = 2 };
	struct pt_wr_caps caps = { .page_size = PG, .max_ranges = 4096 };
	struct pt_msg m;

	CHECK(pt_build_ack(fbuf, PT_MAX_FRAME, 20, 3, 1028, 16) == 16 + 24);
	CHECK(parse(&m) == 0 && m.type == PT_MSG_ACK && m.seq == 20);
	CHECK(m.ack->value32 == 3 && m.ack->pages == 1028 && m.ack->ignored == 16);

	CHECK(pt_build_verdict(fbuf, PT_MAX_FRAME, PT_MSG_VERDICT, 21, PT_F_MORE, &v, two_ranges) ==
	      16 + 48 + 32);
	CHECK(parse(&m) == 0 && m.type == PT_MSG_VERDICT && m.flags == PT_F_MORE);
	CHECK(m.cmd_id == 5 && m.count == 2 && m.verdict->free == 1028);
	CHECK(m.verdict->unsure_reason == PT_WHY_TAINTED && m.ranges[1].len == 1024 * PG);

	v.nranges = 0;
	CHECK(pt_build_verdict(fbuf, PT_MAX_FRAME, PT_MSG_WR_RECORDS, 22, 0, &v, NULL) == 64);
	CHECK(parse(&m) == 0 && m.type == PT_MSG_WR_RECORDS && m.count == 0);

	CHECK(pt_build_error(fbuf, PT_MAX_FRAME, 23, -PT_E_BAD_RANGE, "gpa 0x1 unaligned") ==
	      16 + 8 + 17);
	CHECK(parse(&m) == 0 && m.type == PT_MSG_ERROR && m.error->code == PT_E_BAD_RANGE);
	CHECK(m.error->bad_seq == 23 && m.reason_len == 17);
	CHECK(!memcmp(m.reason, "gpa 0x1 unaligned", 17));

	CHECK(pt_build_wr_caps(fbuf, PT_MAX_FRAME, 24, &caps) == 32);
	CHECK(parse(&m) == 0 && m.type == PT_MSG_WR_CAPS_REPLY && m.caps->max_ranges == 4096);
	return 0;
}

static int builders_respect_cap(void)
{
	char longreason[1000];
	struct pt_msg m;

	CHECK(pt_build_hint(fbuf, 16 + 8 + 31, 1, 5, two_ranges, 2) == 0);
	CHECK(pt_build_hint(fbuf, 16 + 8 + 32, 1, 5, two_ranges, 2) == 56);
	CHECK(pt_encode_hdr(fbuf, 15, PT_MSG_PING, 0, 0, 1) == 0);
	CHECK(pt_encode_hdr(fbuf, PT_MAX_FRAME + 1, PT_MSG_HINT, 0, PT_MAX_PAYLOAD + 8, 1) == 0);
	/* A count that would overflow the 32-bit length must not wrap into a small frame. */
	CHECK(pt_build_hint(fbuf, PT_MAX_FRAME, 1, 5, two_ranges, UINT32_MAX) == 0);
	CHECK(pt_build_hint(fbuf, PT_MAX_FRAME, 1, 5, NULL, PT_MAX_HINTS) ==
	      16 + 8 + 16 * PT_MAX_HINTS);
	CHECK(pt_build_hint(fbuf, PT_MAX_FRAME, 1, 5, NULL, PT_MAX_HINTS + 1) == 0);

	/* Error text is cut to PT_MAX_REASON, and to what fits, but the error still goes out. */
	memset(longreason, 'x', sizeof(longreason) - 1);
	longreason[sizeof(longreason) - 1] = 0;
	CHECK(pt_build_error(fbuf, PT_MAX_FRAME, 1, PT_E_BUSY, longreason) == 24 + PT_MAX_REASON);
	CHECK(pt_build_error(fbuf, 30, 1, PT_E_BUSY, longreason) == 30);
	CHECK(parse(&m) == 0 && m.reason_len == 6);
	CHECK(pt_build_error(fbuf, 23, 1, PT_E_BUSY, NULL) == 0);
	CHECK(pt_build_error(fbuf, 24, 1, PT_E_BUSY, NULL) == 24);
	return 0;
}

/* Builds a frame of @type with a raw payload, bypassing the builders' shapes. */
static void raw(unsigned int type, uint32_t len, const void *payload)
{
	pt_encode_hdr(fbuf, PT_MAX_FRAME, type, 0, len, 1);
	if (payload)
		memcpy(fpay(), payload, len);
}

static int header_errors(void)
{
	struct pt_msg m;

	pt_build_cmd(fbuf, PT_MAX_FRAME, PT_MSG_ARM, 1, 5);
	fhdr()->magic ^= 1;
	CHECK(pt_hdr_check(fhdr()) == -PT_E_BAD_MAGIC && parse(&m) == -PT_E_BAD_MAGIC);

	pt_build_cmd(fbuf, PT_MAX_FRAME, PT_MSG_ARM, 1, 5);
	fhdr()->version = 2;
	CHECK(parse(&m) == -PT_E_BAD_VERSION);
	CHECK(pt_hdr_check_framing(fhdr()) == -PT_E_BAD_VERSION);

	static const uint8_t bad_types[] = { 0, 15, 63, 69, 255 };
	for (size_t i = 0; i < sizeof(bad_types); i++) {
		pt_build_cmd(fbuf, PT_MAX_FRAME, PT_MSG_ARM, 1, 5);
		fhdr()->type = bad_types[i];
		CHECKF(parse(&m) == -PT_E_BAD_TYPE, "type %u", bad_types[i]);
	}

	/* Oversized: a framing error (the frame cannot be skipped safely). */
	pt_build_hint(fbuf, PT_MAX_FRAME, 1, 5, NULL, 0);
	fhdr()->len = PT_MAX_PAYLOAD + 16 + 8;
	CHECK(pt_hdr_check_framing(fhdr()) == -PT_E_BAD_LENGTH);
	fhdr()->len = UINT32_MAX;
	CHECK(parse(&m) == -PT_E_BAD_LENGTH);

	/* Flags: reserved on requests; PT_F_MORE only on VERDICT and WR_RECORDS. */
	pt_build_cmd(fbuf, PT_MAX_FRAME, PT_MSG_ARM, 1, 5);
	fhdr()->flags = PT_F_MORE;
	CHECK(pt_hdr_check_framing(fhdr()) == 0 && parse(&m) == -PT_E_BAD_FIELD);
	pt_build_ack(fbuf, PT_MAX_FRAME, 1, 0, 0, 0);
	fhdr()->flags = PT_F_MORE;
	CHECK(parse(&m) == -PT_E_BAD_FIELD);
	pt_build_verdict_hdr(fbuf, PT_MAX_FRAME, PT_MSG_VERDICT, 1, PT_F_MORE,
			     &(struct pt_verdict){ .cmd_id = 5 });
	CHECK(parse(&m) == 0);
	fhdr()->flags = 0x8000 | PT_F_MORE;
	CHECK(parse(&m) == -PT_E_BAD_FIELD);
	return 0;
}

struct len_case {
	unsigned int type;
	uint32_t len;
};

static int length_errors(void)
{
	static const struct len_case bad[] = {
		{ PT_MSG_REGISTER, 15 },
		{ PT_MSG_REGISTER, 16 + 23 },
		{ PT_MSG_REGISTER, 16 + 33 * 24 }, /* > PT_MAX_REG_SLOTS */
		{ PT_MSG_ARM, 0 },
		{ PT_MSG_ARM, 7 },
		{ PT_MSG_ARM, 9 },
		{ PT_MSG_STOP, 16 },
		{ PT_MSG_DONE, 4 },
		{ PT_MSG_HINT, 4 },
		{ PT_MSG_HINT, 8 + 15 },
		{ PT_MSG_HINT, 8 + 17 },
		{ PT_MSG_QUERY, 12 },
		{ PT_MSG_REPORT, 8 + 33 * 16 }, /* > PT_MAX_REPORT */
		{ PT_MSG_REPORT, 8 + 8 },
		{ PT_MSG_INFLATE, 7 },
		{ PT_MSG_DEFLATE, 8 + 1 },
		{ PT_MSG_WR_READ, 8 + 24 },
		{ PT_MSG_PING, 1 },
		{ PT_MSG_WR_CAPS, 8 },
		{ PT_MSG_ACK, 16 },
		{ PT_MSG_VERDICT, 40 },
		{ PT_MSG_VERDICT, 56 },
		{ PT_MSG_WR_RECORDS, 48 + 4 },
		{ PT_MSG_ERROR, 7 },
		{ PT_MSG_WR_CAPS_REPLY, 24 },
	};
	struct pt_msg m;

	memset(fpay(), 0, 4096);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		raw(bad[i].type, bad[i].len, NULL);
		CHECKF(pt_hdr_check(fhdr()) == -PT_E_BAD_LENGTH, "%s len %u",
		       pt_msg_type_str(bad[i].type), bad[i].len);
		CHECK(pt_hdr_check_framing(fhdr()) == 0);
		CHECK(parse(&m) == -PT_E_BAD_LENGTH);
	}

	/* A count field that disagrees with the length is a length error too. */
	pt_build_hint(fbuf, PT_MAX_FRAME, 1, 5, two_ranges, 2);
	((struct pt_hint *)fpay())->count = 1;
	CHECK(pt_hdr_check(fhdr()) == 0 && parse(&m) == -PT_E_BAD_LENGTH);
	pt_build_report(fbuf, PT_MAX_FRAME, PT_MSG_REPORT, 1, two_ranges, 2);
	((struct pt_report *)fpay())->count = 3;
	CHECK(parse(&m) == -PT_E_BAD_LENGTH);
	pt_build_register(fbuf, PT_MAX_FRAME, 1, 1, 0, NULL, 0);
	((struct pt_register *)fpay())->nslots = 1;
	CHECK(parse(&m) == -PT_E_BAD_LENGTH);
	pt_build_verdict(fbuf, PT_MAX_FRAME, PT_MSG_VERDICT, 1, 0,
			 &(struct pt_verdict){ .cmd_id = 5, .nranges = 2 }, two_ranges);
	((struct pt_verdict *)fpay())->nranges = 0;
	CHECK(parse(&m) == -PT_E_BAD_LENGTH);

	/* Limits that hold exactly. */
	static struct pt_range many[PT_MAX_REPORT];
	for (int i = 0; i < PT_MAX_REPORT; i++)
		many[i] = (struct pt_range){ .gpa = (uint64_t)i * 2 * PG, .len = PG };
	CHECK(pt_build_report(fbuf, PT_MAX_FRAME, PT_MSG_REPORT, 1, many, PT_MAX_REPORT));
	CHECK(parse(&m) == 0 && m.count == PT_MAX_REPORT);
	CHECK(pt_build_report(fbuf, PT_MAX_FRAME, PT_MSG_INFLATE, 1, NULL, 40000));
	for (int i = 0; i < 40000; i++)
		((struct pt_range *)(fbuf + 24))[i] = (struct pt_range){ (uint64_t)i * PG, PG };
	CHECK(parse(&m) == 0 && m.count == 40000);
	return 0;
}

static int reserved_cmd_ids(void)
{
	struct pt_msg m;

	for (uint32_t id = 0; id < 2; id++) {
		CHECK(pt_build_cmd(fbuf, PT_MAX_FRAME, PT_MSG_ARM, 1, id));
		CHECK(parse(&m) == -PT_E_RESERVED_CMD);
		CHECK(pt_build_cmd(fbuf, PT_MAX_FRAME, PT_MSG_STOP, 1, id));
		CHECK(parse(&m) == -PT_E_RESERVED_CMD);
		CHECK(pt_build_cmd(fbuf, PT_MAX_FRAME, PT_MSG_DONE, 1, id));
		CHECK(parse(&m) == -PT_E_RESERVED_CMD);
		CHECK(pt_build_hint(fbuf, PT_MAX_FRAME, 1, id, two_ranges, 2));
		CHECK(parse(&m) == -PT_E_RESERVED_CMD);
		CHECK(pt_build_query(fbuf, PT_MAX_FRAME, 1, id, PT_Q_HINTS));
		CHECK(parse(&m) == -PT_E_RESERVED_CMD);
		/* Queries not tied to a command ID accept any value. */
		CHECK(pt_build_query(fbuf, PT_MAX_FRAME, 1, id, PT_Q_REPORTED));
		CHECK(parse(&m) == 0);
		CHECK(pt_build_query(fbuf, PT_MAX_FRAME, 1, id, PT_Q_RECLAIMED));
		CHECK(parse(&m) == 0);
	}
	CHECK(pt_build_cmd(fbuf, PT_MAX_FRAME, PT_MSG_ARM, 1, PT_CMD_ID_MIN) && parse(&m) == 0);
	CHECK(pt_build_cmd(fbuf, PT_MAX_FRAME, PT_MSG_ARM, 1, UINT32_MAX) && parse(&m) == 0);
	return 0;
}

static int range_errors(void)
{
	static const struct pt_range bad[] = {
		{ .gpa = 0x1000 + 1, .len = PG },	       /* unaligned gpa */
		{ .gpa = 0x1000, .len = PG + 512 },	       /* unaligned len */
		{ .gpa = 0x1000, .len = 0 },		       /* empty */
		{ .gpa = UINT64_MAX - PG + 1, .len = PG },     /* end wraps to 0 */
		{ .gpa = 0x1000, .len = UINT64_MAX - PG + 1 }, /* overflows */
	};
	struct pt_range r[3] = { two_ranges[0], two_ranges[1] };
	struct pt_msg m;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		CHECK(pt_range_check(&bad[i]) == -PT_E_BAD_RANGE);
		r[2] = bad[i];
		CHECK(pt_build_hint(fbuf, PT_MAX_FRAME, 1, 5, r, 3));
		CHECKF(parse(&m) == -PT_E_BAD_RANGE, "hint range %zu", i);
		CHECK(pt_build_report(fbuf, PT_MAX_FRAME, PT_MSG_DEFLATE, 1, r, 3));
		CHECKF(parse(&m) == -PT_E_BAD_RANGE, "deflate range %zu", i);
		CHECK(pt_build_verdict(fbuf, PT_MAX_FRAME, PT_MSG_VERDICT, 1, 0,
				       &(struct pt_verdict){ .cmd_id = 5, .nranges = 3 }, r));
		CHECKF(parse(&m) == -PT_E_BAD_RANGE, "verdict range %zu", i);
	}
	/* The highest page that still ends inside 64 bits. */
	r[2] = (struct pt_range){ .gpa = UINT64_MAX - 2 * PG + 1, .len = PG };
	CHECK(pt_range_check(&r[2]) == 0);
	CHECK(pt_build_hint(fbuf, PT_MAX_FRAME, 1, 5, r, 3) && parse(&m) == 0);
	return 0;
}

static int register_errors(void)
{
	struct pt_reg_slot s[2] = {
		{ .gpa = 0, .size = 16 * PG, .id = 0 },
		{ .gpa = 16 * PG, .size = 16 * PG, .id = 1 },
	};
	struct pt_msg m;

	CHECK(pt_build_register(fbuf, PT_MAX_FRAME, 1, 99, PT_DIRTY_BITMAP, s, 2) &&
	      parse(&m) == 0);
	s[1].gpa = 15 * PG; /* overlaps the last page of slot 0 */
	CHECK(pt_build_register(fbuf, PT_MAX_FRAME, 1, 99, PT_DIRTY_BITMAP, s, 2));
	CHECK(parse(&m) == -PT_E_BAD_RANGE);
	s[1].id = 1u << 16 | 1; /* same GPAs in another address space are fine */
	CHECK(pt_build_register(fbuf, PT_MAX_FRAME, 1, 99, PT_DIRTY_BITMAP, s, 2));
	CHECK(parse(&m) == 0);
	s[1] = s[0]; /* duplicate id */
	s[1].id = 0;
	s[1].gpa = 64 * PG;
	CHECK(pt_build_register(fbuf, PT_MAX_FRAME, 1, 99, PT_DIRTY_BITMAP, s, 2));
	CHECK(parse(&m) == -PT_E_BAD_FIELD);
	s[1].id = 1;
	s[1].size = 0;
	CHECK(pt_build_register(fbuf, PT_MAX_FRAME, 1, 99, PT_DIRTY_BITMAP, s, 2));
	CHECK(parse(&m) == -PT_E_BAD_RANGE);
	s[1].size = PG;
	s[1].gpa = 64 * PG + 8;
	CHECK(pt_build_register(fbuf, PT_MAX_FRAME, 1, 99, PT_DIRTY_BITMAP, s, 2));
	CHECK(parse(&m) == -PT_E_BAD_RANGE);
	s[1].gpa = 64 * PG;
	s[1].flags = PT_REG_SLOT_LOGGED; /* the one defined flag */
	CHECK(pt_build_register(fbuf, PT_MAX_FRAME, 1, 99, PT_DIRTY_BITMAP, s, 2));
	CHECK(parse(&m) == 0 && m.slots[1].flags == PT_REG_SLOT_LOGGED);
	s[1].flags = 2;
	CHECK(pt_build_register(fbuf, PT_MAX_FRAME, 1, 99, PT_DIRTY_BITMAP, s, 2));
	CHECK(parse(&m) == -PT_E_BAD_FIELD);
	s[1].flags = 0;

	CHECK(pt_build_register(fbuf, PT_MAX_FRAME, 1, 99, 2, s, 2));
	CHECK(parse(&m) == -PT_E_BAD_FIELD); /* unknown dirty mode */
	CHECK(pt_build_register(fbuf, PT_MAX_FRAME, 1, 0, PT_DIRTY_RING, s, 2));
	CHECK(parse(&m) == -PT_E_BAD_FIELD); /* no VMM pid */
	CHECK(pt_build_register(fbuf, PT_MAX_FRAME, 1, 99, PT_DIRTY_RING, NULL, 0));
	CHECK(parse(&m) == 0 && m.count == 0);
	((struct pt_register *)fpay())->flags = 4;
	CHECK(parse(&m) == -PT_E_BAD_FIELD);
	return 0;
}

/* REGISTER2: descriptor counts per mode, hva only (and always) in the userfaultfd mode. */
static int register2_rules(void)
{
	struct pt_reg_slot2 s[2] = {
		{ .gpa = 0, .size = 16 * PG, .hva = 0x7f0000000000, .id = 0 },
		{ .gpa = 16 * PG, .size = 16 * PG, .hva = 0x7f0000010000, .id = 1 },
	};
	struct pt_register2 r = { .vmm_pid = 99, .mode = PT_TRACK_UFFD, .nslots = 2, .nfds = 2 };
	struct pt_msg m;

	CHECK(pt_build_register2(fbuf, PT_MAX_FRAME, 5, &r, s) == 16 + 32 + 2 * 32);
	CHECK(parse(&m) == 0 && m.type == PT_MSG_REGISTER2 && m.count == 2);
	CHECK(m.reg2->nfds == 2 && m.slots2[1].hva == 0x7f0000010000);
	r.nfds = 4; /* uffd + pagemap + VM fd at most */
	CHECK(pt_build_register2(fbuf, PT_MAX_FRAME, 5, &r, s) && parse(&m) == -PT_E_BAD_FIELD);
	r.nfds = 3;
	s[1].hva = 0x7f0000008000; /* host memory shared by two slots */
	CHECK(pt_build_register2(fbuf, PT_MAX_FRAME, 5, &r, s) && parse(&m) == -PT_E_BAD_RANGE);
	s[1].hva = 0x7f0000010800; /* unaligned */
	CHECK(pt_build_register2(fbuf, PT_MAX_FRAME, 5, &r, s) && parse(&m) == -PT_E_BAD_RANGE);
	s[1].hva = 0;
	CHECK(pt_build_register2(fbuf, PT_MAX_FRAME, 5, &r, s) && parse(&m) == -PT_E_BAD_RANGE);
	r.nslots = 0; /* the userfaultfd mode cannot learn slots */
	CHECK(pt_build_register2(fbuf, PT_MAX_FRAME, 5, &r, s) && parse(&m) == -PT_E_BAD_FIELD);

	s[0].hva = s[1].hva = 0;
	r = (struct pt_register2){ .vmm_pid = 99, .mode = PT_DIRTY_RING, .nslots = 2, .nfds = 1 };
	CHECK(pt_build_register2(fbuf, PT_MAX_FRAME, 5, &r, s) && parse(&m) == 0);
	r.nfds = 2; /* the dirty-log modes take the VM fd only */
	CHECK(pt_build_register2(fbuf, PT_MAX_FRAME, 5, &r, s) && parse(&m) == -PT_E_BAD_FIELD);
	r.nfds = 1;
	s[0].hva = 0x7f0000000000; /* hva outside the userfaultfd mode */
	CHECK(pt_build_register2(fbuf, PT_MAX_FRAME, 5, &r, s) && parse(&m) == -PT_E_BAD_FIELD);
	s[0].hva = 0;
	r.pad = 1;
	CHECK(pt_build_register2(fbuf, PT_MAX_FRAME, 5, &r, s) && parse(&m) == -PT_E_BAD_FIELD);
	r.pad = 0;
	r.mode = 3;
	CHECK(pt_build_register2(fbuf, PT_MAX_FRAME, 5, &r, s) && parse(&m) == -PT_E_BAD_FIELD);
	return 0;
}

static int reserved_fields(void)
{
	struct pt_msg m;

	pt_build_cmd(fbuf, PT_MAX_FRAME, PT_MSG_STOP, 1, 5);
	((struct pt_cmd *)fpay())->flags = 1;
	CHECK(parse(&m) == -PT_E_BAD_FIELD);
	pt_build_report(fbuf, PT_MAX_FRAME, PT_MSG_REPORT, 1, two_ranges, 2);
	((struct pt_report *)fpay())->flags = 0x80000000u;
	CHECK(parse(&m) == -PT_E_BAD_FIELD);
	pt_build_query(fbuf, PT_MAX_FRAME, 1, 5, 3);
	CHECK(parse(&m) == -PT_E_BAD_FIELD); /* unknown `what` */
	pt_build_ack(fbuf, PT_MAX_FRAME, 1, 0, 0, 0);
	((struct pt_ack *)fpay())->status = 1;
	CHECK(parse(&m) == -PT_E_BAD_FIELD);
	pt_build_verdict(fbuf, PT_MAX_FRAME, PT_MSG_VERDICT, 1, 0,
			 &(struct pt_verdict){ .cmd_id = 5 }, NULL);
	((struct pt_verdict *)fpay())->pad = 1;
	CHECK(parse(&m) == -PT_E_BAD_FIELD);
	pt_build_wr_caps(fbuf, PT_MAX_FRAME, 1, &(struct pt_wr_caps){ PG, 1, 2 });
	CHECK(parse(&m) == -PT_E_BAD_FIELD);
	pt_build_error(fbuf, PT_MAX_FRAME, 1, 0, "x");
	CHECK(parse(&m) == -PT_E_BAD_FIELD); /* an error must have a code */
	pt_build_error(fbuf, PT_MAX_FRAME, 1, 99, "future");
	CHECK(parse(&m) == 0 && m.error->code == 99);
	return 0;
}

static int misaligned_payload(void)
{
	struct pt_msg m;

	pt_build_hint(fbuf, PT_MAX_FRAME, 1, 5, two_ranges, 2);
	memmove(fbuf + 20, fbuf + 16, 40);
	CHECK(pt_frame_parse(fhdr(), fbuf + 20, &m) == -PT_E_INTERNAL);
	CHECK(pt_frame_parse(fhdr(), NULL, &m) == -PT_E_INTERNAL);
	return 0;
}

static int strings(void)
{
	CHECK(!strcmp(pt_err_str(-PT_E_BAD_RANGE), "bad range"));
	CHECK(!strcmp(pt_err_str(PT_E_BAD_RANGE), "bad range"));
	CHECK(!strcmp(pt_err_str(-PT_E_BAD_FIELD), pt_err_str(PT_E_BAD_FIELD)));
	CHECK(!strcmp(pt_err_str(1000), "unknown error"));
	CHECK(!strcmp(pt_err_str(-2147483647), "unknown error"));
	for (int c = 1; c <= PT_E_BAD_FIELD; c++)
		CHECKF(strcmp(pt_err_str(c), "unknown error"), "code %d", c);
	CHECK(!strcmp(pt_msg_type_str(PT_MSG_WR_RECORDS), "WR_RECORDS"));
	CHECK(!strcmp(pt_msg_type_str(15), "UNKNOWN"));
	CHECK(!strcmp(pt_msg_type_str(PT_MSG_REGISTER2), "REGISTER2"));
	CHECK(!strcmp(pt_msg_type_str(PT_MSG_WRITTEN), "WRITTEN"));
	CHECK(!strcmp(pt_msg_type_str(-1), "UNKNOWN"));
	for (unsigned int t = 0; t < 256; t++)
		CHECK(!(pt_type_is_request(t) && pt_type_is_reply(t)));
	CHECK(pt_type_is_request(PT_MSG_PING) && pt_type_is_reply(PT_MSG_WR_RECORDS));
	return 0;
}

/* --- framer ----------------------------------------------------------------------------- */

/* A stream of n frames of assorted types and sizes; returns its length. */
static size_t make_stream(uint8_t *s, size_t cap, int n)
{
	static struct pt_range big[5000];
	size_t off = 0;

	for (int i = 0; i < 5000; i++)
		big[i] = (struct pt_range){ .gpa = (uint64_t)i << 21, .len = 512 * PG };
	for (int i = 0; i < n; i++) {
		uint32_t seq = 100 + i;

		switch (i % 5) {
		case 0:
			off += pt_build_cmd(s + off, cap - off, PT_MSG_ARM, seq, 2 + i);
			break;
		case 1:
			/* one frame above the framer's initial 64 KiB buffer */
			off += pt_build_hint(s + off, cap - off, seq, 2 + i, big,
					     i == 1 ? 5000 : 1 + i * 97 % 5000);
			break;
		case 2:
			off += pt_build_empty(s + off, cap - off, PT_MSG_PING, seq);
			break;
		case 3:
			off += pt_build_report(s + off, cap - off, PT_MSG_REPORT, seq, big, 3);
			break;
		default:
			off += pt_build_query(s + off, cap - off, seq, 2 + i, PT_Q_HINTS);
			break;
		}
	}
	return off;
}

/* Feeds @s in pieces of @step bytes (0: all at once) and checks every frame parses in order. */
static int feed_stream(const uint8_t *s, size_t len, size_t step, int n, int *zero_copy)
{
	struct pt_framer f;
	size_t off = 0;
	int got = 0;

	pt_framer_init(&f, PT_FRAMER_REQUESTS);
	*zero_copy = 0;
	while (off < len) {
		size_t piece = step && len - off > step ? step : len - off;
		const uint8_t *p = s + off;

		while (piece) {
			const struct pt_hdr *h;
			const void *pl;
			struct pt_msg m;
			size_t used;
			int rc = pt_framer_feed(&f, p, piece, &used, &h, &pl);

			CHECKF(rc >= 0, "rc %d", rc);
			CHECK(used <= piece && (used || rc == 1));
			p += used;
			piece -= used;
			off += used;
			if (rc != 1)
				continue;
			CHECK(pt_frame_parse(h, pl, &m) == 0);
			CHECKF(m.seq == 100u + got, "seq %u frame %d", m.seq, got);
			if (pl && (const uint8_t *)pl >= s && (const uint8_t *)pl < s + len)
				(*zero_copy)++;
			got++;
		}
	}
	CHECK(got == n && pt_framer_idle(&f));
	pt_framer_release(&f);
	return 0;
}

static int framer_streams(void)
{
	static uint64_t store[(4 << 20) / 8];
	uint8_t *s = (uint8_t *)store;
	size_t len = make_stream(s, sizeof(store), 40);
	int zc;

	CHECK(len > 200 << 10);
	CHECK(feed_stream(s, len, 0, 40, &zc) == 0);
	CHECK(zc == 32); /* all frames with a payload (PING has none) came in place */
	CHECK(feed_stream(s, len, 1, 40, &zc) == 0);
	CHECK(zc == 0);
	CHECK(feed_stream(s, len, 7, 40, &zc) == 0);
	CHECK(feed_stream(s, len, 4096, 40, &zc) == 0);
	CHECK(feed_stream(s, len, 65536 + 3, 40, &zc) == 0);

	/* Misaligned data: the framer copies rather than hand out an unaligned payload. */
	memmove(s + 1, s, len);
	CHECK(feed_stream(s + 1, len, 0, 40, &zc) == 0);
	CHECK(zc == 0);
	return 0;
}

static int framer_errors(void)
{
	struct pt_framer f;
	const struct pt_hdr *h;
	const void *pl;
	size_t used;

	/* A bad header is fatal and sticky. */
	pt_framer_init(&f, PT_FRAMER_REQUESTS);
	pt_build_cmd(fbuf, PT_MAX_FRAME, PT_MSG_ARM, 1, 5);
	fhdr()->magic = 0x50545448; /* someone speaking HTTP */
	CHECK(pt_framer_feed(&f, fbuf, 10, &used, &h, &pl) == 0 && used == 10);
	CHECK(pt_framer_feed(&f, fbuf + 10, 14, &used, &h, &pl) == -PT_E_BAD_MAGIC);
	CHECK(used == 6);
	CHECK(pt_framer_feed(&f, fbuf + 16, 8, &used, &h, &pl) == -PT_E_BAD_MAGIC && !used);
	pt_framer_release(&f);

	pt_framer_init(&f, PT_FRAMER_REQUESTS);
	pt_build_hint(fbuf, PT_MAX_FRAME, 1, 5, NULL, 0);
	fhdr()->len = PT_MAX_PAYLOAD + 1;
	CHECK(pt_framer_feed(&f, fbuf, 24, &used, &h, &pl) == -PT_E_BAD_LENGTH);
	pt_framer_release(&f);

	/* Replies to the service, or requests to the device, are type errors. */
	pt_framer_init(&f, PT_FRAMER_REQUESTS);
	pt_build_ack(fbuf, PT_MAX_FRAME, 1, 0, 0, 0);
	CHECK(pt_framer_feed(&f, fbuf, 40, &used, &h, &pl) == -PT_E_BAD_TYPE);
	pt_framer_init(&f, PT_FRAMER_REPLIES);
	CHECK(pt_framer_feed(&f, fbuf, 40, &used, &h, &pl) == 1 && used == 40);
	pt_build_empty(fbuf, PT_MAX_FRAME, PT_MSG_PING, 1);
	CHECK(pt_framer_feed(&f, fbuf, 16, &used, &h, &pl) == -PT_E_BAD_TYPE);
	pt_framer_release(&f);

	/* A bad payload length is not a framing error: the frame is delivered, then rejected. */
	pt_framer_init(&f, PT_FRAMER_REQUESTS);
	raw(PT_MSG_ARM, 12, NULL);
	pt_build_empty(fbuf + 28, PT_MAX_FRAME, PT_MSG_PING, 2);
	CHECK(pt_framer_feed(&f, fbuf, 44, &used, &h, &pl) == 1 && used == 28);
	CHECK(pt_frame_parse(h, pl, &(struct pt_msg){}) == -PT_E_BAD_LENGTH);
	CHECK(pt_framer_feed(&f, fbuf + 28, 16, &used, &h, &pl) == 1 && h->seq == 2);
	pt_framer_release(&f);
	return 0;
}

/* --- client against a fake service ------------------------------------------------------ */

#define FAKE_KEEP 64 /* hinted ranges the fake remembers for its verdict */

struct fake {
	int fd;
	uint32_t cur;
	struct pt_range kept[FAKE_KEEP];
	uint32_t nkept;
};

static uint64_t out_store[(PT_MAX_FRAME + 4096) / 8];

static void fake_send(struct fake *f, size_t n)
{
	size_t off = 0;

	while (off < n) {
		ssize_t w = write(f->fd, (uint8_t *)out_store + off, n - off);

		if (w <= 0)
			_exit(3);
		off += w;
	}
}

static uint64_t pages_of(const struct pt_msg *m)
{
	uint64_t p = 0;

	for (uint32_t i = 0; i < m->count; i++)
		p += pt_range_pages(&m->ranges[i]);
	return p;
}

/* VERDICT / WR_RECORDS in frames of 16 ranges; totals only in the last frame. */
static void fake_verdict(struct fake *f, unsigned int type, uint32_t seq, uint32_t cmd)
{
	uint64_t free_pages = 0;
	uint32_t i = 0;

	for (uint32_t k = 0; k < f->nkept; k++)
		free_pages += pt_range_pages(&f->kept[k]);
	do {
		uint32_t n = f->nkept - i > 16 ? 16 : f->nkept - i;
		bool last = i + n == f->nkept;
		struct pt_verdict v = { .nranges = n };

		if (last)
			v = (struct pt_verdict){ .cmd_id = cmd,
						 .hinted = free_pages + 3,
						 .free = free_pages,
						 .kept_written = 3,
						 .nranges = n };
		if (type == PT_MSG_WR_RECORDS && last)
			v = (struct pt_verdict){ .hinted = free_pages,
						 .kept_written = free_pages,
						 .nranges = n };
		fake_send(f, pt_build_verdict(out_store, sizeof(out_store), type, seq,
					      last ? 0 : PT_F_MORE, &v, f->kept + i));
		i += n;
	} while (i < f->nkept);
}

static void fake_handle(struct fake *f, const struct pt_msg *m)
{
	uint8_t *o = (uint8_t *)out_store;
	size_t cap = sizeof(out_store);
	uint64_t pages = pages_of(m);

	switch (m->type) {
	case PT_MSG_REGISTER:
		fake_send(f, pt_build_ack(o, cap, m->seq, 7, PT_WHY_UNTRACKED, 0));
		break;
	case PT_MSG_ARM:
		f->cur = m->cmd_id;
		f->nkept = 0;
		fake_send(f, pt_build_ack(o, cap, m->seq, m->cmd_id, 0, 0));
		break;
	case PT_MSG_HINT:
		if (m->cmd_id != f->cur) {
			fake_send(f, pt_build_ack(o, cap, m->seq, 0, 0, pages));
			break;
		}
		for (uint32_t i = 0; i < m->count && f->nkept < FAKE_KEEP; i++)
			f->kept[f->nkept++] = m->ranges[i];
		fake_send(f, pt_build_ack(o, cap, m->seq, m->count, pages, 0));
		break;
	case PT_MSG_QUERY:
		fake_verdict(f, PT_MSG_VERDICT, m->seq, m->cmd_id);
		break;
	case PT_MSG_WR_READ:
		fake_verdict(f, PT_MSG_WR_RECORDS, m->seq, 0);
		break;
	case PT_MSG_WR_CAPS:
		fake_send(f, pt_build_wr_caps(
				     o, cap, m->seq,
				     &(struct pt_wr_caps){ .page_size = PG, .max_ranges = 128 }));
		break;
	default:
		fake_send(f, pt_build_ack(o, cap, m->seq, m->cmd_id, pages, 0));
		break;
	}
}

static void fake_service(int lfd)
{
	static uint64_t in_store[65536 / 8];
	struct fake f = { .fd = accept(lfd, NULL, NULL) };
	struct pt_framer fr;

	pt_framer_init(&fr, PT_FRAMER_REQUESTS);
	for (;;) {
		ssize_t n = read(f.fd, in_store, sizeof(in_store));
		const uint8_t *p = (const uint8_t *)in_store;

		if (n <= 0)
			_exit(0);
		while (n) {
			const struct pt_hdr *h;
			const void *pl;
			struct pt_msg m;
			size_t used;
			int rc = pt_framer_feed(&fr, p, n, &used, &h, &pl);

			if (rc < 0)
				_exit(4);
			p += used;
			n -= used;
			if (rc != 1)
				continue;
			rc = pt_frame_parse(h, pl, &m);
			if (rc)
				fake_send(&f, pt_build_error(out_store, sizeof(out_store), h->seq,
							     rc, "fake says no"));
			else
				fake_handle(&f, &m);
		}
	}
}

static int ack_calls;

static void count_ack(void *arg, uint32_t seq, int err, const struct pt_ack *ack)
{
	ack_calls++;
}

static int client_session(struct pt_client *c)
{
	static struct pt_range r[10000];
	struct pt_client_stats st;
	struct pt_client_result res;
	struct pt_wr_caps caps;
	uint32_t handle = 0;
	uint64_t pages = 0;
	long q;

	for (int i = 0; i < 10000; i++)
		r[i] = (struct pt_range){ .gpa = (uint64_t)i << 22, .len = 1024 * PG };

	CHECK(pt_client_register(c, 0, PT_DIRTY_RING, NULL, 0, &handle) == 0 && handle == 7);
	CHECK(pt_client_coverage(c) == PT_WHY_UNTRACKED);
	CHECK(pt_client_arm(c, 1) == -EINVAL);
	CHECK(pt_client_last_error(c)->code == PT_E_RESERVED_CMD);
	CHECK(!strcmp(pt_client_last_error(c)->reason, "fake says no"));
	CHECK(pt_client_arm(c, 5) == 0);
	CHECK(pt_client_ping(c) == 0);

	CHECK(pt_client_hint(c, 5, r, 10000) == 0);
	pt_client_get_stats(c, &st);
	CHECKF(st.hint_frames == 3 && st.inflight == 0, "frames %lu",
	       (unsigned long)st.hint_frames);
	CHECK(st.pages_recorded == 10000 * 1024 && st.hint_pages == 10000 * 1024);
	CHECK(pt_client_hint(c, 6, r, 10) == 0); /* stale: ignored and counted */
	pt_client_get_stats(c, &st);
	CHECK(st.pages_ignored == 10 * 1024);

	/* Event-loop style: queue, flush, poll until acked. */
	pt_client_set_ack_cb(c, count_ack, NULL);
	q = pt_client_queue_hint(c, 5, r, 5000);
	CHECK(q == 5000 && pt_client_want_write(c));
	for (int i = 0; i < 10000; i++) {
		struct pollfd pfd = { pt_client_fd(c), POLLIN, 0 };
		int rc = pt_client_flush(c);

		CHECK(rc == 0 || rc == -EAGAIN);
		if (rc == -EAGAIN)
			pfd.events |= POLLOUT;
		pt_client_get_stats(c, &st);
		if (!st.inflight)
			break;
		poll(&pfd, 1, 1000);
		CHECK(pt_client_poll_replies(c) >= 0);
	}
	CHECK(ack_calls == 2 && st.inflight == 0);
	/* A bad range is refused by the peer: the hint call reports it. */
	r[0].gpa += 1;
	CHECK(pt_client_hint(c, 5, r, 2) == -ERANGE);
	CHECK(pt_client_last_error(c)->code == PT_E_BAD_RANGE);
	r[0].gpa -= 1;

	CHECK(pt_client_stop(c, 5) == 0);
	CHECK(pt_client_query(c, 5, PT_Q_HINTS, &res) == 0);
	CHECK(res.v.nranges == FAKE_KEEP && res.v.free == FAKE_KEEP * 1024);
	CHECK(res.v.kept_written == 3 && res.v.cmd_id == 5);
	CHECK(!memcmp(res.ranges, r, FAKE_KEEP * sizeof(*r)));
	pt_client_result_free(&res);

	CHECK(pt_client_report(c, r, PT_MAX_REPORT, &pages) == 0 && pages == 32 * 1024);
	CHECK(pt_client_report(c, r, PT_MAX_REPORT + 1, &pages) == -E2BIG);
	CHECK(pt_client_inflate(c, r, 5000, &pages) == 0 && pages == 5000 * 1024);
	CHECK(pt_client_deflate(c, r, 1, &pages) == 0 && pages == 1024);
	CHECK(pt_client_wr_caps(c, &caps) == 0 && caps.max_ranges == 128);
	CHECK(pt_client_wr_read(c, r, 4, &res) == 0 && res.v.nranges == FAKE_KEEP);
	pt_client_result_free(&res);
	CHECK(pt_client_done(c, 5) == 0);
	return 0;
}

static int client_fake_peer(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct pt_client *c;
	int lfd, status, rc;
	pid_t pid;

	snprintf(sa.sun_path, sizeof(sa.sun_path), "/tmp/pt-test-proto.%d.sock", getpid());
	unlink(sa.sun_path);
	lfd = socket(AF_UNIX, SOCK_STREAM, 0);
	CHECK(lfd >= 0 && !bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) && !listen(lfd, 1));
	pid = fork();
	CHECK(pid >= 0);
	if (!pid)
		fake_service(lfd);
	close(lfd);
	c = pt_client_connect(sa.sun_path);
	unlink(sa.sun_path);
	CHECK(c);
	pt_client_set_timeout(c, 10000);
	rc = client_session(c);
	pt_client_close(c);
	CHECK(waitpid(pid, &status, 0) == pid);
	CHECK(rc == 0);
	CHECKF(WIFEXITED(status) && WEXITSTATUS(status) == 0, "fake service status %d", status);
	return 0;
}

/* The parser's page sum of a batch saturates: 4097 ranges of 2^52 - 1 pages overflow 64 bits. */
static int batch_pages_saturate(void)
{
	static struct pt_range r[4097];
	struct pt_msg m;

	for (int i = 0; i < 4097; i++)
		r[i] = (struct pt_range){ 0, UINT64_MAX & ~(uint64_t)(PT_PROTO_PAGE - 1) };
	CHECK(pt_build_report(fbuf, PT_MAX_FRAME, PT_MSG_INFLATE, 1, r, 4097) > 0);
	CHECK(parse(&m) == 0 && m.count == 4097 && m.pages == UINT64_MAX);
	CHECK(pt_build_report(fbuf, PT_MAX_FRAME, PT_MSG_INFLATE, 1, r, 4096) > 0);
	CHECK(parse(&m) == 0 && m.pages == (UINT64_MAX >> 12) * 4096);
	return 0;
}

/* The check and page sum a range at a time, as pt_range_check() and a saturating add say. */
static int ref_ranges(const struct pt_range *r, uint32_t n, uint64_t *pages)
{
	uint64_t sum = 0;

	for (uint32_t i = 0; i < n; i++) {
		uint64_t k = r[i].len / PT_PROTO_PAGE;

		if (pt_range_check(&r[i]))
			return -PT_E_BAD_RANGE;
		sum = sum + k < sum ? UINT64_MAX : sum + k;
	}
	*pages = sum;
	return 0;
}

static uint64_t lcg(uint64_t *x)
{
	*x = *x * 6364136223846793005ull + 1442695040888963407ull;
	return *x >> 11;
}

/* A value near the edges that matter: zero, one page, the top of the address space, 2^63,
 * a page multiple, now and then not page-aligned. */
static uint64_t edge_value(uint64_t *x)
{
	const uint64_t top = UINT64_MAX & ~(uint64_t)(PT_PROTO_PAGE - 1);
	uint64_t v;

	switch (lcg(x) % 6) {
	case 0:
		v = 0;
		break;
	case 1:
		v = PT_PROTO_PAGE;
		break;
	case 2:
		v = top - (lcg(x) % 4) * PT_PROTO_PAGE;
		break;
	case 3:
		v = (1ull << 63) + (lcg(x) % 4) * PT_PROTO_PAGE;
		break;
	default:
		v = (lcg(x) % (1ull << 40)) * PT_PROTO_PAGE;
		break;
	}
	return lcg(x) % 16 ? v : v + 1 + lcg(x) % (PT_PROTO_PAGE - 1);
}

/*
 * The parser's one-pass check (vectorized where the CPU allows) against the range-at-a-time
 * reference, on random batches of edge values: the same verdict and the same page count.
 */
static int ranges_check_matches_reference(void)
{
	static struct pt_range r[600];
	uint64_t x = 12345, want = 0;
	unsigned ok = 0, bad = 0;
	struct pt_msg m;

	for (int it = 0; it < 4000; it++) {
		uint32_t n = 1 + lcg(&x) % 600;
		/* Mostly valid batches: a bad range in a random place, or none. */
		bool clean = lcg(&x) % 2;
		int err;

		for (uint32_t i = 0; i < n; i++) {
			r[i].gpa =
				clean ? (lcg(&x) % (1ull << 30)) * PT_PROTO_PAGE : edge_value(&x);
			r[i].len = clean ? (1 + lcg(&x) % (1ull << 40)) * PT_PROTO_PAGE
					 : edge_value(&x);
		}
		CHECK(pt_build_hint(fbuf, PT_MAX_FRAME, 1, 2, r, n) > 0);
		err = ref_ranges(r, n, &want);
		CHECKF(parse(&m) == err && (err || m.pages == want),
		       "batch %d of %u: parse %d, reference %d, pages %llu, reference %llu", it, n,
		       parse(&m), err, (unsigned long long)m.pages, (unsigned long long)want);
		ok += !err;
		bad += !!err;
	}
	CHECKF(ok > 1000 && bad > 1000, "%u valid, %u invalid batches", ok, bad);
	return 0;
}

T_MAIN(T_CASE(roundtrip_requests), T_CASE(batch_pages_saturate),
       T_CASE(ranges_check_matches_reference), T_CASE(roundtrip_replies),
       T_CASE(builders_respect_cap), T_CASE(header_errors), T_CASE(length_errors),
       T_CASE(reserved_cmd_ids), T_CASE(range_errors), T_CASE(register_errors),
       T_CASE(register2_rules), T_CASE(reserved_fields), T_CASE(misaligned_payload),
       T_CASE(strings), T_CASE(framer_streams), T_CASE(framer_errors), T_CASE(client_fake_peer))
