// SPDX-License-Identifier: GPL-2.0
/*
 * libFuzzer target for the protocol framer and parser. The first byte picks how the input is
 * cut into feeds (so split headers and payloads get exercised); the rest is the byte stream.
 * Every frame the parser accepts is re-encoded with the builders and must come out identical,
 * its decoded pointers must lie inside its payload, and its page count must be the ranges'
 * sum.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/proto.h"

static uint8_t out[PT_MAX_FRAME] __attribute__((aligned(8)));

static void inside(const void *p, size_t n, const struct pt_hdr *h, const void *payload)
{
	const uint8_t *b = payload, *q = p;

	if (!p || !n) /* member not used by this type */
		return;
	if (q < b || q + n > b + h->len)
		abort();
}

static size_t reencode(const struct pt_hdr *h, const struct pt_msg *m)
{
	switch (m->type) {
	case PT_MSG_REGISTER:
		return pt_build_register(out, sizeof(out), m->seq, m->reg->vmm_pid,
					 m->reg->dirty_mode, m->slots, m->count);
	case PT_MSG_ARM:
	case PT_MSG_STOP:
	case PT_MSG_DONE:
		return pt_build_cmd(out, sizeof(out), m->type, m->seq, m->cmd_id);
	case PT_MSG_HINT:
		return pt_build_hint(out, sizeof(out), m->seq, m->cmd_id, m->ranges, m->count);
	case PT_MSG_QUERY:
		return pt_build_query(out, sizeof(out), m->seq, m->cmd_id, m->query->what);
	case PT_MSG_REPORT:
	case PT_MSG_INFLATE:
	case PT_MSG_DEFLATE:
	case PT_MSG_WR_READ:
	case PT_MSG_WRITTEN:
		return pt_build_report(out, sizeof(out), m->type, m->seq, m->ranges, m->count);
	case PT_MSG_WR_CAPS:
	case PT_MSG_PING:
		return pt_build_empty(out, sizeof(out), m->type, m->seq);
	case PT_MSG_ACK:
		return pt_build_ack(out, sizeof(out), m->seq, m->ack->value32, m->ack->pages,
				    m->ack->ignored);
	case PT_MSG_VERDICT:
	case PT_MSG_WR_RECORDS:
		return pt_build_verdict(out, sizeof(out), m->type, m->seq, m->flags, m->verdict,
					m->ranges);
	case PT_MSG_ERROR: {
		/* The builder caps the text; only compare what it writes. */
		char text[PT_MAX_REASON + 1];
		uint32_t n = m->reason_len < PT_MAX_REASON ? m->reason_len : PT_MAX_REASON;

		/* Builders take -PT_E_* or PT_E_*: codes above INT32_MAX do not round trip. */
		if (m->error->code > INT32_MAX || memchr(m->reason, 0, n))
			return SIZE_MAX; /* builder stops at NUL: not comparable */
		memcpy(text, m->reason, n);
		text[n] = 0;
		if (n < m->reason_len)
			return SIZE_MAX;
		return pt_build_error(out, sizeof(out), m->error->bad_seq, m->error->code, text);
	}
	case PT_MSG_WR_CAPS_REPLY:
		return pt_build_wr_caps(out, sizeof(out), m->seq, m->caps);
	}
	abort(); /* the parser accepted a type it does not know */
}

/* The pages of a frame's ranges, summed one at a time and saturating. */
static uint64_t ref_pages(const struct pt_msg *m)
{
	uint64_t sum = 0;

	for (uint32_t i = 0; i < m->count; i++) {
		uint64_t k = m->ranges[i].len / PT_PROTO_PAGE;

		sum = sum + k < sum ? UINT64_MAX : sum + k;
	}
	return sum;
}

static void check_frame(const struct pt_hdr *h, const void *payload)
{
	struct pt_msg m;
	size_t n;
	int err = pt_frame_parse(h, payload, &m);

	if (err) {
		if (err > 0 || err < -PT_E_BAD_FIELD)
			abort();
		return;
	}
	if (pt_hdr_check(h))
		abort();
	inside(m.ranges, (size_t)m.count * sizeof(*m.ranges), h, payload);
	inside(m.slots, (size_t)m.count * sizeof(*m.slots), h, payload);
	inside(m.reason, m.reason_len, h, payload);
	for (uint32_t i = 0; m.ranges && i < m.count; i++)
		if (pt_range_check(&m.ranges[i]))
			abort();
	/* The parser's one-pass sum (vectorized in GCC builds; this is the plain loop). */
	if (m.ranges && m.pages != ref_pages(&m))
		abort();
	n = reencode(h, &m);
	if (n == SIZE_MAX)
		return;
	/* ERROR frames are rebuilt with bad_seq as seq; skip the header compare when they differ.
	 */
	if (m.type == PT_MSG_ERROR && m.error->bad_seq != m.seq)
		return;
	if (n != PT_HDR_SIZE + h->len || memcmp(out, h, PT_HDR_SIZE) ||
	    (h->len && memcmp(out + PT_HDR_SIZE, payload, h->len)))
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct pt_framer f;
	size_t step, off = 1;

	if (!size)
		return 0;
	/* 0: all at once; otherwise pieces of 1..255 bytes. */
	step = data[0];
	pt_framer_init(&f, PT_FRAMER_REQUESTS | PT_FRAMER_REPLIES);
	while (off < size) {
		size_t piece = step && size - off > step ? step : size - off;

		while (piece) {
			const struct pt_hdr *h;
			const void *pl;
			size_t used;
			int rc = pt_framer_feed(&f, data + off, piece, &used, &h, &pl);

			if (used > piece)
				abort();
			off += used;
			piece -= used;
			if (rc < 0)
				goto out;
			if (rc == 1)
				check_frame(h, pl);
			else if (piece)
				abort(); /* 0 means all consumed */
		}
	}
out:
	pt_framer_release(&f);
	return 0;
}
