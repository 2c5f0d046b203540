/* SPDX-License-Identifier: LGPL-2.1 OR BSD-2-Clause */
/*
 * Internal parser, encoder and stream framer for the pagetrack protocol
 * (include/pagetrack/proto.h, docs/PROTOCOL.md). Pure functions: no I/O, and no allocation
 * except the framer's reassembly buffer, which is allocated at most a few times per
 * connection. Linked by both the service and the client library.
 *
 * Error convention: functions that validate return 0 or a negative enum pt_err (-PT_E_*).
 * Builders return the number of bytes written, or 0 when the frame does not fit in `cap` (or
 * would exceed PT_MAX_PAYLOAD); a frame is never 0 bytes long.
 */
#ifndef PT_USER_PROTO_H
#define PT_USER_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <pagetrack/proto.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
/* Frames are read in place as structs: the wire is little-endian. */
#error "pagetrack protocol code assumes a little-endian host"
#endif

/*
 * For a function whose loop over a frame's ranges is written to vectorize (no early exit, no
 * branch per range). With GCC on x86-64 it gets an AVX2 clone beside the plain one, picked
 * once at load time by what the CPU has (an ifunc), and is compiled with vectorization on:
 * GCC 12 at -O2 does not vectorize, and plain x86-64 has no 64-bit compare in vectors.
 * Elsewhere the plain loop runs.
 */
#ifdef PT_RANGE_LOOP
/* defined by the includer: tests/lib/test_proto_plain.c builds the plain loops */
#elif defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__OPTIMIZE__) && \
	defined(__GLIBC__) /* target_clones needs the C library's ifunc */
#define PT_RANGE_LOOP __attribute__((target_clones("avx2", "default"), optimize("tree-vectorize")))
#else
#define PT_RANGE_LOOP
#endif

/* Size of the fixed part in front of the entries, per message type. */
#define PT_HDR_SIZE   sizeof(struct pt_hdr)
#define PT_MAX_FRAME  (PT_HDR_SIZE + PT_MAX_PAYLOAD)
#define PT_MAX_REASON 256 /* bytes of error text a builder writes; the parser accepts more */

/* Payloads handed to pt_frame_parse() must be aligned like this (struct pt_range has u64s). */
#define PT_PAYLOAD_ALIGN 8

/*
 * A validated frame, decoded in place: the pointers point into the payload buffer given to
 * pt_frame_parse() and are valid as long as it is. Only the members of the frame's type are
 * set; the others are zero/NULL.
 */
struct pt_msg {
	uint8_t type;	/* enum pt_msg_type */
	uint16_t flags; /* PT_F_* from the header */
	uint32_t seq;
	uint32_t len;	 /* payload bytes */
	uint32_t cmd_id; /* ARM, STOP, DONE, HINT, QUERY, VERDICT, WR_RECORDS */
	uint32_t count;	 /* entries in ranges[] or slots[] */
	uint64_t pages;	 /* pages in ranges[] (UINT64_MAX if more), for a request's batch */
	const struct pt_range
		*ranges; /* HINT, REPORT, INFLATE, DEFLATE, WR_READ, VERDICT, WR_RECORDS */
	union {
		const void *body; /* the fixed part of the payload, NULL for empty payloads */
		const struct pt_register *reg;
		const struct pt_register2 *reg2;
		const struct pt_cmd *cmd;
		const struct pt_hint *hint;
		const struct pt_query *query;
		const struct pt_report *report; /* REPORT, INFLATE, DEFLATE, WR_READ */
		const struct pt_ack *ack;
		const struct pt_verdict *verdict; /* VERDICT, WR_RECORDS */
		const struct pt_error *error;
		const struct pt_wr_caps *caps;
	};
	const struct pt_reg_slot *slots;   /* REGISTER */
	const struct pt_reg_slot2 *slots2; /* REGISTER2 */
	const char *reason;		   /* ERROR: not NUL-terminated */
	uint32_t reason_len;
};

/* Framing-level header checks only: magic, version, known type, len <= PT_MAX_PAYLOAD. */
int pt_hdr_check_framing(const struct pt_hdr *h);
/* pt_hdr_check_framing() plus every per-type length rule the header alone allows checking. */
int pt_hdr_check(const struct pt_hdr *h);
/*
 * Validates a whole frame and decodes it into @out. @payload holds h->len bytes, aligned to
 * PT_PAYLOAD_ALIGN (may be NULL when h->len is 0). Returns 0 or -PT_E_*; -PT_E_INTERNAL means
 * a misaligned payload (a caller bug), not bad input.
 */
int pt_frame_parse(const struct pt_hdr *h, const void *payload, struct pt_msg *out);
/* One range: page aligned, nonzero, end fits in 64 bits. Returns 0 or -PT_E_BAD_RANGE. */
int pt_range_check(const struct pt_range *r);
/* Appends [gpa, gpa + len) to the array *r of *n ranges, room for *cap, doubled when full
 * (first @first). 0, or -PT_E_BUSY out of memory (the array is as it was). */
int pt_ranges_append(struct pt_range **r, size_t *n, size_t *cap, size_t first, uint64_t gpa,
		     uint64_t len);

/* Requests are types 1..63, replies 64..; true for known types only. */
bool pt_type_is_request(unsigned int type);
bool pt_type_is_reply(unsigned int type);

const char *pt_err_str(int code); /* accepts code or -code */
const char *pt_msg_type_str(int type);

/* Encoders. See the file comment for the return convention. */
size_t pt_encode_hdr(void *buf, size_t cap, unsigned int type, unsigned int flags, uint32_t len,
		     uint32_t seq);
size_t pt_build_register(void *buf, size_t cap, uint32_t seq, uint32_t vmm_pid, uint32_t dirty_mode,
			 const struct pt_reg_slot *slots, uint32_t nslots);
/* @r->nslots entries from @slots */
size_t pt_build_register2(void *buf, size_t cap, uint32_t seq, const struct pt_register2 *r,
			  const struct pt_reg_slot2 *slots);
/* ARM, STOP or DONE */
size_t pt_build_cmd(void *buf, size_t cap, unsigned int type, uint32_t seq, uint32_t cmd_id);
size_t pt_build_hint(void *buf, size_t cap, uint32_t seq, uint32_t cmd_id,
		     const struct pt_range *ranges, uint32_t n);
/* REPORT, INFLATE, DEFLATE or WR_READ */
size_t pt_build_report(void *buf, size_t cap, unsigned int type, uint32_t seq,
		       const struct pt_range *ranges, uint32_t n);
size_t pt_build_query(void *buf, size_t cap, uint32_t seq, uint32_t cmd_id, uint32_t what);
/* WR_CAPS or PING */
size_t pt_build_empty(void *buf, size_t cap, unsigned int type, uint32_t seq);
size_t pt_build_ack(void *buf, size_t cap, uint32_t seq, uint32_t value32, uint64_t pages,
		    uint64_t ignored);
/* @reason may be NULL; it is cut to PT_MAX_REASON bytes and to what fits. */
size_t pt_build_error(void *buf, size_t cap, uint32_t seq, int code, const char *reason);
/*
 * VERDICT or WR_RECORDS header and fixed part, sized for v->nranges entries that the caller
 * writes right after the returned size (so a service can produce ranges in place). @flags is
 * 0 or PT_F_MORE. Returns 0 if the whole frame, ranges included, does not fit.
 */
size_t pt_build_verdict_hdr(void *buf, size_t cap, unsigned int type, uint32_t seq,
			    unsigned int flags, const struct pt_verdict *v);
/* pt_build_verdict_hdr() plus a copy of v->nranges @ranges. */
size_t pt_build_verdict(void *buf, size_t cap, unsigned int type, uint32_t seq, unsigned int flags,
			const struct pt_verdict *v, const struct pt_range *ranges);
size_t pt_build_wr_caps(void *buf, size_t cap, uint32_t seq, const struct pt_wr_caps *caps);

/*
 * Stream framer: cuts a byte stream into frames. One per connection and direction.
 *
 *	pt_framer_init(&f, PT_FRAMER_REQUESTS);
 *	while (len) {
 *		rc = pt_framer_feed(&f, data, len, &used, &hdr, &payload);
 *		data += used, len -= used;
 *		if (rc < 0)	-> send ERROR(-rc), then close: framing is lost
 *		if (rc == 1)	-> pt_frame_parse(hdr, payload, &msg); on error reply, skip frame
 *	}
 *
 * pt_framer_feed() consumes bytes up to the end of at most one frame. It returns 1 when a
 * frame is complete (*hdr and *payload are valid until the next call on @f, and, when the
 * payload was taken in place from @data, as long as @data is), 0 when all of @data was
 * consumed without completing a frame, or a negative -PT_E_* when a header fails
 * pt_hdr_check_framing() or has a type of the wrong direction (then every later call returns
 * the same error). The payload is handed out in place (zero copy) when the whole frame is
 * inside @data and suitably aligned; otherwise it is reassembled in a buffer that grows to at
 * most PT_MAX_PAYLOAD and is kept for the life of the framer (-PT_E_BUSY if that allocation
 * fails). *payload is NULL for an empty payload.
 */
#define PT_FRAMER_REQUESTS 1u /* accept request types (the service side) */
#define PT_FRAMER_REPLIES  2u /* accept reply types (the device side) */

struct pt_framer {
	struct pt_hdr hdr; /* header of the frame being assembled */
	uint32_t hdr_have; /* header bytes collected */
	uint32_t pay_have; /* payload bytes collected into buf */
	uint8_t *buf;
	uint32_t buf_cap;
	unsigned int accept; /* PT_FRAMER_* */
	int err;	     /* sticky negative error */
};

void pt_framer_init(struct pt_framer *f, unsigned int accept);
void pt_framer_release(struct pt_framer *f);
int pt_framer_feed(struct pt_framer *f, const void *data, size_t len, size_t *consumed,
		   const struct pt_hdr **hdr, const void **payload);
/* True when no partial frame is buffered (a clean place to close the stream). */
bool pt_framer_idle(const struct pt_framer *f);

/* Pages in a range (len / PT_PROTO_PAGE). */
static inline uint64_t pt_range_pages(const struct pt_range *r)
{
	return r->len / PT_PROTO_PAGE;
}

#endif
