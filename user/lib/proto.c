// SPDX-License-Identifier: LGPL-2.1 OR BSD-2-Clause
/*
 * pagetrack protocol: validation, decoding, encoding and stream framing. docs/PROTOCOL.md is
 * the normative text; the rule numbers there match the checks here.
 */
#include <stdlib.h>
#include <string.h>

#include "proto.h"

/* The wire layout is read in place: any implicit padding would break it. */
_Static_assert(sizeof(struct pt_hdr) == 16, "pt_hdr");
_Static_assert(sizeof(struct pt_range) == 16, "pt_range");
_Static_assert(sizeof(struct pt_reg_slot) == 24, "pt_reg_slot");
_Static_assert(sizeof(struct pt_register) == 16, "pt_register");
_Static_assert(sizeof(struct pt_cmd) == 8, "pt_cmd");
_Static_assert(sizeof(struct pt_hint) == 8, "pt_hint");
_Static_assert(sizeof(struct pt_query) == 8, "pt_query");
_Static_assert(sizeof(struct pt_report) == 8, "pt_report");
_Static_assert(sizeof(struct pt_ack) == 24, "pt_ack");
_Static_assert(sizeof(struct pt_verdict) == 48, "pt_verdict");
_Static_assert(sizeof(struct pt_error) == 8, "pt_error");
_Static_assert(sizeof(struct pt_wr_caps) == 16, "pt_wr_caps");
_Static_assert(8 + 16 * (uint64_t)PT_MAX_HINTS <= PT_MAX_PAYLOAD, "PT_MAX_HINTS");

/*
 * Length rule per type: len == fixed + count * entry, count <= max. entry == 0 means a fixed
 * size. A zero `fixed` and `entry` with known == true is an empty payload.
 */
struct pt_len_rule {
	bool known;
	uint32_t fixed;
	uint32_t entry;
	uint32_t max;
};

#define RULE(f, e, m)               \
	{                           \
		true, (f), (e), (m) \
	}
#define NOLIMIT PT_MAX_PAYLOAD

static const struct pt_len_rule len_rules[] = {
	[PT_MSG_REGISTER] =
		RULE(sizeof(struct pt_register), sizeof(struct pt_reg_slot), PT_MAX_REG_SLOTS),
	[PT_MSG_ARM] = RULE(sizeof(struct pt_cmd), 0, 0),
	[PT_MSG_HINT] = RULE(sizeof(struct pt_hint), sizeof(struct pt_range), NOLIMIT),
	[PT_MSG_STOP] = RULE(sizeof(struct pt_cmd), 0, 0),
	[PT_MSG_DONE] = RULE(sizeof(struct pt_cmd), 0, 0),
	[PT_MSG_QUERY] = RULE(sizeof(struct pt_query), 0, 0),
	[PT_MSG_REPORT] = RULE(sizeof(struct pt_report), sizeof(struct pt_range), PT_MAX_REPORT),
	[PT_MSG_INFLATE] = RULE(sizeof(struct pt_report), sizeof(struct pt_range), NOLIMIT),
	[PT_MSG_DEFLATE] = RULE(sizeof(struct pt_report), sizeof(struct pt_range), NOLIMIT),
	[PT_MSG_WR_CAPS] = RULE(0, 0, 0),
	[PT_MSG_WR_READ] = RULE(sizeof(struct pt_report), sizeof(struct pt_range), NOLIMIT),
	[PT_MSG_PING] = RULE(0, 0, 0),
	[PT_MSG_WRITTEN] = RULE(sizeof(struct pt_report), sizeof(struct pt_range), NOLIMIT),
	[PT_MSG_REGISTER2] =
		RULE(sizeof(struct pt_register2), sizeof(struct pt_reg_slot2), PT_MAX_REG_SLOTS),
	[PT_MSG_ACK] = RULE(sizeof(struct pt_ack), 0, 0),
	[PT_MSG_VERDICT] = RULE(sizeof(struct pt_verdict), sizeof(struct pt_range), NOLIMIT),
	[PT_MSG_ERROR] = RULE(sizeof(struct pt_error), 1, NOLIMIT),
	[PT_MSG_WR_CAPS_REPLY] = RULE(sizeof(struct pt_wr_caps), 0, 0),
	[PT_MSG_WR_RECORDS] = RULE(sizeof(struct pt_verdict), sizeof(struct pt_range), NOLIMIT),
};

static const struct pt_len_rule *len_rule(unsigned int type)
{
	if (type >= sizeof(len_rules) / sizeof(len_rules[0]) || !len_rules[type].known)
		return NULL;
	return &len_rules[type];
}

bool pt_type_is_request(unsigned int type)
{
	return type < PT_MSG_ACK && len_rule(type);
}

bool pt_type_is_reply(unsigned int type)
{
	return type >= PT_MSG_ACK && len_rule(type);
}

int pt_hdr_check_framing(const struct pt_hdr *h)
{
	if (h->magic != PT_PROTO_MAGIC)
		return -PT_E_BAD_MAGIC;
	if (h->version != PT_PROTO_VERSION)
		return -PT_E_BAD_VERSION;
	if (!len_rule(h->type))
		return -PT_E_BAD_TYPE;
	if (h->len > PT_MAX_PAYLOAD)
		return -PT_E_BAD_LENGTH;
	return 0;
}

/* Only the multi-frame replies may carry PT_F_MORE; every other flag bit is reserved. */
static int hdr_check_flags(const struct pt_hdr *h)
{
	uint16_t allowed = 0;

	if (h->type == PT_MSG_VERDICT || h->type == PT_MSG_WR_RECORDS)
		allowed = PT_F_MORE;
	return (h->flags & ~allowed) ? -PT_E_BAD_FIELD : 0;
}

int pt_hdr_check(const struct pt_hdr *h)
{
	const struct pt_len_rule *r;
	uint32_t extra;
	int err;

	err = pt_hdr_check_framing(h);
	if (err)
		return err;
	r = len_rule(h->type);
	if (h->len < r->fixed)
		return -PT_E_BAD_LENGTH;
	extra = h->len - r->fixed;
	if (!r->entry) {
		if (extra)
			return -PT_E_BAD_LENGTH;
	} else if (extra % r->entry || extra / r->entry > r->max) {
		return -PT_E_BAD_LENGTH;
	}
	return hdr_check_flags(h);
}

int pt_range_check(const struct pt_range *r)
{
	if ((r->gpa | r->len) & (PT_PROTO_PAGE - 1))
		return -PT_E_BAD_RANGE;
	if (!r->len || r->len > UINT64_MAX - r->gpa)
		return -PT_E_BAD_RANGE;
	return 0;
}

int pt_ranges_append(struct pt_range **r, size_t *n, size_t *cap, size_t first, uint64_t gpa,
		     uint64_t len)
{
	if (*n == *cap) {
		size_t grown = *cap ? *cap * 2 : first;
		struct pt_range *m = realloc(*r, grown * sizeof(*m));

		if (!m)
			return -PT_E_BUSY;
		*r = m;
		*cap = grown;
	}
	(*r)[(*n)++] = (struct pt_range){ gpa, len };
	return 0;
}

/*
 * Checks every range as pt_range_check() does and sums their pages into m->pages (saturating),
 * in one pass without a branch per range, so that it vectorizes (PT_RANGE_LOOP): the pages are
 * summed in two 32-bit halves, which cannot wrap for fewer than 2^32 ranges.
 */
static PT_RANGE_LOOP int ranges_check(struct pt_msg *m)
{
	const struct pt_range *r = m->ranges;
	uint64_t bad = 0, lo = 0, hi = 0;

	for (uint32_t i = 0; i < m->count; i++) {
		uint64_t gpa = r[i].gpa, len = r[i].len, n = len / PT_PROTO_PAGE;

		/* Not page-aligned; or empty (len - 1 wraps) or past the end of the address space.
		 */
		bad |= ((gpa | len) & (PT_PROTO_PAGE - 1)) | (uint64_t)(len - 1 >= ~gpa);
		lo += n & 0xffffffffu;
		hi += n >> 32;
	}
	if (bad)
		return -PT_E_BAD_RANGE;
	hi += lo >> 32;
	m->pages = hi >> 32 ? UINT64_MAX : hi << 32 | (lo & 0xffffffffu);
	return 0;
}

/* Entries after the fixed part; pt_hdr_check() has made the division exact. */
static uint32_t entries(const struct pt_msg *m)
{
	const struct pt_len_rule *r = len_rule(m->type);

	return (m->len - r->fixed) / r->entry;
}

static int cmd_id_check(uint32_t cmd_id)
{
	return cmd_id < PT_CMD_ID_MIN ? -PT_E_RESERVED_CMD : 0;
}

static int slot_check(const struct pt_reg_slot *s)
{
	struct pt_range r = { .gpa = s->gpa, .len = s->size };

	if (s->flags & ~PT_REG_SLOT_LOGGED)
		return -PT_E_BAD_FIELD;
	return pt_range_check(&r);
}

/*
 * Slots of one KVM address space (id >> 16) must not overlap; slots of different address
 * spaces may (x86 SMM). Duplicate slot ids are a device bug. n <= PT_MAX_REG_SLOTS, so the
 * quadratic scan is cheap and needs no scratch memory.
 */
static int slots_check(const struct pt_reg_slot *s, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		int err = slot_check(&s[i]);

		if (err)
			return err;
		for (uint32_t j = 0; j < i; j++) {
			if (s[i].id == s[j].id)
				return -PT_E_BAD_FIELD;
			if (s[i].id >> 16 != s[j].id >> 16)
				continue;
			if (s[i].gpa < s[j].gpa + s[j].size && s[j].gpa < s[i].gpa + s[i].size)
				return -PT_E_BAD_RANGE;
		}
	}
	return 0;
}

static int parse_register(struct pt_msg *m)
{
	const struct pt_register *reg = m->reg;

	if (reg->nslots != entries(m))
		return -PT_E_BAD_LENGTH;
	if (!reg->vmm_pid || reg->flags)
		return -PT_E_BAD_FIELD;
	if (reg->dirty_mode != PT_DIRTY_BITMAP && reg->dirty_mode != PT_DIRTY_RING)
		return -PT_E_BAD_FIELD;
	m->count = reg->nslots;
	m->slots = (const struct pt_reg_slot *)(reg + 1);
	return slots_check(m->slots, m->count);
}

/* The v1 checks on each slot's KVM part, plus: hva given exactly in the userfaultfd mode,
 * page aligned, not wrapping, and no two slots sharing host memory. */
static int slots2_check(const struct pt_reg_slot2 *s, uint32_t n, bool uffd)
{
	for (uint32_t i = 0; i < n; i++) {
		struct pt_reg_slot v1 = { s[i].gpa, s[i].size, s[i].id, s[i].flags };
		int err = slots_check(&v1, 1);

		if (err)
			return err;
		if (!uffd && s[i].hva)
			return -PT_E_BAD_FIELD;
		if (uffd &&
		    (!s[i].hva || s[i].hva % PT_PROTO_PAGE || s[i].hva + s[i].size < s[i].hva))
			return -PT_E_BAD_RANGE;
		for (uint32_t j = 0; j < i; j++) {
			if (s[i].id == s[j].id)
				return -PT_E_BAD_FIELD;
			if (s[i].id >> 16 == s[j].id >> 16 && s[i].gpa < s[j].gpa + s[j].size &&
			    s[j].gpa < s[i].gpa + s[i].size)
				return -PT_E_BAD_RANGE;
			if (uffd && s[i].hva < s[j].hva + s[j].size &&
			    s[j].hva < s[i].hva + s[i].size)
				return -PT_E_BAD_RANGE;
		}
	}
	return 0;
}

static int parse_register2(struct pt_msg *m)
{
	const struct pt_register2 *reg = m->reg2;
	bool uffd = reg->mode == PT_TRACK_UFFD;

	if (reg->nslots != entries(m))
		return -PT_E_BAD_LENGTH;
	if (!reg->vmm_pid || reg->flags || reg->pad || reg->mode > PT_TRACK_UFFD)
		return -PT_E_BAD_FIELD;
	if (uffd ? reg->nfds < 2 || reg->nfds > 3 || !reg->nslots : reg->nfds != 1)
		return -PT_E_BAD_FIELD;
	m->count = reg->nslots;
	m->slots2 = (const struct pt_reg_slot2 *)(reg + 1);
	return slots2_check(m->slots2, m->count, uffd);
}

static int parse_cmd(struct pt_msg *m)
{
	int err = cmd_id_check(m->cmd->cmd_id);

	if (err)
		return err;
	if (m->cmd->flags)
		return -PT_E_BAD_FIELD;
	m->cmd_id = m->cmd->cmd_id;
	return 0;
}

static int parse_hint(struct pt_msg *m)
{
	int err;

	if (m->hint->count != entries(m))
		return -PT_E_BAD_LENGTH;
	err = cmd_id_check(m->hint->cmd_id);
	if (err)
		return err;
	m->cmd_id = m->hint->cmd_id;
	m->count = m->hint->count;
	m->ranges = (const struct pt_range *)(m->hint + 1);
	return ranges_check(m);
}

static int parse_query(struct pt_msg *m)
{
	const struct pt_query *q = m->query;

	if (q->what > PT_Q_RECLAIMED)
		return -PT_E_BAD_FIELD;
	/* REPORTED and RECLAIMED are not tied to a command ID: any value is accepted there. */
	if (q->what == PT_Q_HINTS && cmd_id_check(q->cmd_id))
		return -PT_E_RESERVED_CMD;
	m->cmd_id = q->cmd_id;
	return 0;
}

static int parse_report(struct pt_msg *m)
{
	if (m->report->count != entries(m))
		return -PT_E_BAD_LENGTH;
	if (m->report->flags)
		return -PT_E_BAD_FIELD;
	m->count = m->report->count;
	m->ranges = (const struct pt_range *)(m->report + 1);
	return ranges_check(m);
}

static int parse_ack(struct pt_msg *m)
{
	return m->ack->status ? -PT_E_BAD_FIELD : 0;
}

static int parse_verdict(struct pt_msg *m)
{
	const struct pt_verdict *v = m->verdict;

	if (v->nranges != entries(m))
		return -PT_E_BAD_LENGTH;
	if (v->pad)
		return -PT_E_BAD_FIELD;
	m->cmd_id = v->cmd_id;
	m->count = v->nranges;
	m->ranges = (const struct pt_range *)(v + 1);
	return ranges_check(m);
}

static int parse_error(struct pt_msg *m)
{
	/* Unknown nonzero codes are accepted: a newer service may add some. */
	if (!m->error->code)
		return -PT_E_BAD_FIELD;
	m->reason = (const char *)(m->error + 1);
	m->reason_len = m->len - sizeof(struct pt_error);
	return 0;
}

static int parse_wr_caps(struct pt_msg *m)
{
	if (!m->caps->page_size || m->caps->flags)
		return -PT_E_BAD_FIELD;
	return 0;
}

int pt_frame_parse(const struct pt_hdr *h, const void *payload, struct pt_msg *out)
{
	int err;

	memset(out, 0, sizeof(*out));
	err = pt_hdr_check(h);
	if (err)
		return err;
	if (h->len && (!payload || (uintptr_t)payload % PT_PAYLOAD_ALIGN))
		return -PT_E_INTERNAL;
	out->type = h->type;
	out->flags = h->flags;
	out->seq = h->seq;
	out->len = h->len;
	out->body = h->len ? payload : NULL;

	switch (h->type) {
	case PT_MSG_REGISTER:
		return parse_register(out);
	case PT_MSG_REGISTER2:
		return parse_register2(out);
	case PT_MSG_ARM:
	case PT_MSG_STOP:
	case PT_MSG_DONE:
		return parse_cmd(out);
	case PT_MSG_HINT:
		return parse_hint(out);
	case PT_MSG_QUERY:
		return parse_query(out);
	case PT_MSG_REPORT:
	case PT_MSG_INFLATE:
	case PT_MSG_DEFLATE:
	case PT_MSG_WR_READ:
	case PT_MSG_WRITTEN:
		return parse_report(out);
	case PT_MSG_ACK:
		return parse_ack(out);
	case PT_MSG_VERDICT:
	case PT_MSG_WR_RECORDS:
		return parse_verdict(out);
	case PT_MSG_ERROR:
		return parse_error(out);
	case PT_MSG_WR_CAPS_REPLY:
		return parse_wr_caps(out);
	default: /* WR_CAPS, PING: empty, fully checked by the header */
		return 0;
	}
}

/* --- strings ---------------------------------------------------------------------------- */

static const char *const err_strs[] = {
	[0] = "success",
	[PT_E_BAD_MAGIC] = "bad magic",
	[PT_E_BAD_VERSION] = "unsupported protocol version",
	[PT_E_BAD_TYPE] = "unknown message type",
	[PT_E_BAD_LENGTH] = "bad payload length",
	[PT_E_RESERVED_CMD] = "reserved command ID (0 STOP or 1 DONE)",
	[PT_E_STALE_CMD] = "command ID is not the current one",
	[PT_E_CMD_REUSE] = "command ID reused before the driver's STOP",
	[PT_E_BAD_RANGE] = "bad range",
	[PT_E_NOT_REGISTERED] = "not registered",
	[PT_E_PERM] = "permission denied",
	[PT_E_BUSY] = "resource limit reached",
	[PT_E_STATE] = "request not valid in the current state",
	[PT_E_INTERNAL] = "internal error",
	[PT_E_BAD_FIELD] = "reserved field nonzero or unknown value",
};

const char *pt_err_str(int code)
{
	if (code < 0)
		code = -code;
	if ((size_t)code >= sizeof(err_strs) / sizeof(err_strs[0]) || !err_strs[code])
		return "unknown error";
	return err_strs[code];
}

static const char *const type_strs[] = {
	[PT_MSG_REGISTER] = "REGISTER",
	[PT_MSG_ARM] = "ARM",
	[PT_MSG_HINT] = "HINT",
	[PT_MSG_STOP] = "STOP",
	[PT_MSG_DONE] = "DONE",
	[PT_MSG_QUERY] = "QUERY",
	[PT_MSG_REPORT] = "REPORT",
	[PT_MSG_INFLATE] = "INFLATE",
	[PT_MSG_DEFLATE] = "DEFLATE",
	[PT_MSG_WR_CAPS] = "WR_CAPS",
	[PT_MSG_WR_READ] = "WR_READ",
	[PT_MSG_PING] = "PING",
	[PT_MSG_WRITTEN] = "WRITTEN",
	[PT_MSG_REGISTER2] = "REGISTER2",
	[PT_MSG_ACK] = "ACK",
	[PT_MSG_VERDICT] = "VERDICT",
	[PT_MSG_ERROR] = "ERROR",
	[PT_MSG_WR_CAPS_REPLY] = "WR_CAPS_REPLY",
	[PT_MSG_WR_RECORDS] = "WR_RECORDS",
};

const char *pt_msg_type_str(int type)
{
	if (type < 0 || (size_t)type >= sizeof(type_strs) / sizeof(type_strs[0]) ||
	    !type_strs[type])
		return "UNKNOWN";
	return type_strs[type];
}

/* --- encoders --------------------------------------------------------------------------- */

size_t pt_encode_hdr(void *buf, size_t cap, unsigned int type, unsigned int flags, uint32_t len,
		     uint32_t seq)
{
	struct pt_hdr h = {
		.magic = PT_PROTO_MAGIC,
		.version = PT_PROTO_VERSION,
		.type = type,
		.flags = flags,
		.len = len,
		.seq = seq,
	};

	if (cap < sizeof(h) || len > PT_MAX_PAYLOAD || cap - sizeof(h) < len)
		return 0;
	memcpy(buf, &h, sizeof(h));
	return sizeof(h);
}

/*
 * Writes header + fixed part + n entries of esize bytes. The sizes are computed in 64 bits
 * so a huge n cannot wrap past the PT_MAX_PAYLOAD check.
 */
static size_t build(void *buf, size_t cap, unsigned int type, unsigned int flags, uint32_t seq,
		    const void *fixed, size_t fsize, const void *ent, uint64_t n, size_t esize)
{
	uint64_t len = fsize + n * esize;
	uint8_t *p = buf;

	if (len > PT_MAX_PAYLOAD || !pt_encode_hdr(buf, cap, type, flags, len, seq))
		return 0;
	if (fsize)
		memcpy(p + PT_HDR_SIZE, fixed, fsize);
	if (n && ent)
		memcpy(p + PT_HDR_SIZE + fsize, ent, n * esize);
	return PT_HDR_SIZE + len;
}

size_t pt_build_register(void *buf, size_t cap, uint32_t seq, uint32_t vmm_pid, uint32_t dirty_mode,
			 const struct pt_reg_slot *slots, uint32_t nslots)
{
	struct pt_register r = { .vmm_pid = vmm_pid, .dirty_mode = dirty_mode, .nslots = nslots };

	return build(buf, cap, PT_MSG_REGISTER, 0, seq, &r, sizeof(r), slots, nslots,
		     sizeof(*slots));
}

size_t pt_build_register2(void *buf, size_t cap, uint32_t seq, const struct pt_register2 *r,
			  const struct pt_reg_slot2 *slots)
{
	return build(buf, cap, PT_MSG_REGISTER2, 0, seq, r, sizeof(*r), slots, r->nslots,
		     sizeof(*slots));
}

size_t pt_build_cmd(void *buf, size_t cap, unsigned int type, uint32_t seq, uint32_t cmd_id)
{
	struct pt_cmd c = { .cmd_id = cmd_id };

	return build(buf, cap, type, 0, seq, &c, sizeof(c), NULL, 0, 0);
}

size_t pt_build_hint(void *buf, size_t cap, uint32_t seq, uint32_t cmd_id,
		     const struct pt_range *ranges, uint32_t n)
{
	struct pt_hint h = { .cmd_id = cmd_id, .count = n };

	return build(buf, cap, PT_MSG_HINT, 0, seq, &h, sizeof(h), ranges, n, sizeof(*ranges));
}

size_t pt_build_report(void *buf, size_t cap, unsigned int type, uint32_t seq,
		       const struct pt_range *ranges, uint32_t n)
{
	struct pt_report r = { .count = n };

	return build(buf, cap, type, 0, seq, &r, sizeof(r), ranges, n, sizeof(*ranges));
}

size_t pt_build_query(void *buf, size_t cap, uint32_t seq, uint32_t cmd_id, uint32_t what)
{
	struct pt_query q = { .cmd_id = cmd_id, .what = what };

	return build(buf, cap, PT_MSG_QUERY, 0, seq, &q, sizeof(q), NULL, 0, 0);
}

size_t pt_build_empty(void *buf, size_t cap, unsigned int type, uint32_t seq)
{
	return build(buf, cap, type, 0, seq, NULL, 0, NULL, 0, 0);
}

size_t pt_build_ack(void *buf, size_t cap, uint32_t seq, uint32_t value32, uint64_t pages,
		    uint64_t ignored)
{
	struct pt_ack a = { .value32 = value32, .pages = pages, .ignored = ignored };

	return build(buf, cap, PT_MSG_ACK, 0, seq, &a, sizeof(a), NULL, 0, 0);
}

size_t pt_build_error(void *buf, size_t cap, uint32_t seq, int code, const char *reason)
{
	struct pt_error e = { .code = code < 0 ? -(int64_t)code : code, .bad_seq = seq };
	size_t rlen = reason ? strnlen(reason, PT_MAX_REASON) : 0;
	size_t room = PT_HDR_SIZE + sizeof(e);

	/* An error must always get out: shorten the text rather than fail. */
	if (cap < room)
		return 0;
	if (rlen > cap - room)
		rlen = cap - room;
	return build(buf, cap, PT_MSG_ERROR, 0, seq, &e, sizeof(e), reason, rlen, 1);
}

size_t pt_build_verdict_hdr(void *buf, size_t cap, unsigned int type, uint32_t seq,
			    unsigned int flags, const struct pt_verdict *v)
{
	struct pt_verdict fixed = *v;
	uint64_t len = sizeof(fixed) + (uint64_t)v->nranges * sizeof(struct pt_range);

	fixed.pad = 0;
	if (len > PT_MAX_PAYLOAD || !pt_encode_hdr(buf, cap, type, flags, len, seq))
		return 0;
	memcpy((uint8_t *)buf + PT_HDR_SIZE, &fixed, sizeof(fixed));
	return PT_HDR_SIZE + sizeof(fixed);
}

size_t pt_build_verdict(void *buf, size_t cap, unsigned int type, uint32_t seq, unsigned int flags,
			const struct pt_verdict *v, const struct pt_range *ranges)
{
	size_t off = pt_build_verdict_hdr(buf, cap, type, seq, flags, v);

	if (!off)
		return 0;
	if (v->nranges)
		memcpy((uint8_t *)buf + off, ranges, (size_t)v->nranges * sizeof(*ranges));
	return off + (size_t)v->nranges * sizeof(*ranges);
}

size_t pt_build_wr_caps(void *buf, size_t cap, uint32_t seq, const struct pt_wr_caps *caps)
{
	return build(buf, cap, PT_MSG_WR_CAPS_REPLY, 0, seq, caps, sizeof(*caps), NULL, 0, 0);
}

/* --- framer ----------------------------------------------------------------------------- */

#define FRAMER_MIN_BUF (64u << 10)

void pt_framer_init(struct pt_framer *f, unsigned int accept)
{
	memset(f, 0, sizeof(*f));
	f->accept = accept;
}

void pt_framer_release(struct pt_framer *f)
{
	free(f->buf);
	f->buf = NULL;
	f->buf_cap = 0;
}

bool pt_framer_idle(const struct pt_framer *f)
{
	return !f->hdr_have;
}

/* In the order of PROTOCOL.md section 7: a type of the wrong direction is reported before an
 * oversized len. */
static int framer_hdr_check(const struct pt_framer *f)
{
	int err = pt_hdr_check_framing(&f->hdr);

	if (err && err != -PT_E_BAD_LENGTH)
		return err;
	if (pt_type_is_request(f->hdr.type) && !(f->accept & PT_FRAMER_REQUESTS))
		return -PT_E_BAD_TYPE;
	if (pt_type_is_reply(f->hdr.type) && !(f->accept & PT_FRAMER_REPLIES))
		return -PT_E_BAD_TYPE;
	return err;
}

/* Grows by doubling so a connection reallocates only a handful of times in its life. */
static int framer_reserve(struct pt_framer *f, uint32_t len)
{
	uint32_t cap = f->buf_cap ? f->buf_cap : FRAMER_MIN_BUF;
	uint8_t *nb;

	if (len <= f->buf_cap)
		return 0;
	while (cap < len)
		cap *= 2;
	if (cap > PT_MAX_PAYLOAD)
		cap = PT_MAX_PAYLOAD;
	/* The old contents are dead: a frame is only reassembled after its header is known. */
	nb = malloc(cap);
	if (!nb)
		return -PT_E_BUSY;
	free(f->buf);
	f->buf = nb;
	f->buf_cap = cap;
	return 0;
}

/* Collects header bytes; returns 1 with a checked header, 0 for more bytes, or an error. */
static int framer_take_hdr(struct pt_framer *f, const uint8_t *p, size_t len, size_t *off)
{
	size_t n = sizeof(f->hdr) - f->hdr_have;

	if (n > len - *off)
		n = len - *off;
	memcpy((uint8_t *)&f->hdr + f->hdr_have, p + *off, n);
	f->hdr_have += n;
	*off += n;
	if (f->hdr_have < sizeof(f->hdr))
		return 0;
	f->pay_have = 0;
	f->err = framer_hdr_check(f);
	return f->err ? f->err : 1;
}

int pt_framer_feed(struct pt_framer *f, const void *data, size_t len, size_t *consumed,
		   const struct pt_hdr **hdr, const void **payload)
{
	const uint8_t *p = data;
	size_t off = 0, n;
	uint32_t need;
	int rc;

	*consumed = 0;
	if (f->err)
		return f->err;
	if (f->hdr_have < sizeof(f->hdr)) {
		rc = framer_take_hdr(f, p, len, &off);
		*consumed = off;
		if (rc <= 0)
			return rc;
	}
	need = f->hdr.len - f->pay_have;
	if (!need) {
		*payload = f->hdr.len ? f->buf : NULL;
	} else if (!f->pay_have && len - off >= need &&
		   (uintptr_t)(p + off) % PT_PAYLOAD_ALIGN == 0) {
		*payload = p + off; /* zero copy */
		off += need;
	} else {
		rc = framer_reserve(f, f->hdr.len);
		if (rc)
			return f->err = rc;
		n = len - off < need ? len - off : need;
		memcpy(f->buf + f->pay_have, p + off, n);
		f->pay_have += n;
		off += n;
		*consumed = off;
		if (f->pay_have < f->hdr.len)
			return 0;
		*payload = f->buf;
	}
	*consumed = off;
	*hdr = &f->hdr;
	f->hdr_have = 0;
	f->pay_have = 0;
	return 1;
}
