// SPDX-License-Identifier: GPL-2.0
/*
 * docs/PROTOCOL.md against include/pagetrack/proto.h: a device is written from the document
 * alone, so every number it gives must be the header's. Read from the document (run from the
 * repository's top, as tests/run.sh does):
 *
 *   message_types     the message table of section 4: type numbers, directions, and the sizes
 *                     in parentheses of its payload column (`pt_x` (N))
 *   struct_layouts    every "| offset | size | field |" table (in the order of the document),
 *                     every "`field` (uNN at OFF" of the text, every "`struct pt_x` (N bytes)"
 *   enum_tables       error codes (section 7), PT_WHY_* bits (section 8), `what` values (4.4)
 *   constants         magic, version, limits and flags quoted in the text, and the ranges per
 *                     reply frame this service sends
 */
#include <ctype.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pagetrack/proto.h>

#include "t.h"
#include "lib/proto.h" /* PT_MAX_REASON */

#define DOC "docs/PROTOCOL.md"

static char *doc; /* the whole document, NUL-terminated */

static int load_doc(void)
{
	FILE *f = fopen(DOC, "r");
	long n;

	if (!f)
		return t_skip("%s not found (run from the repository's top)", DOC);
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	rewind(f);
	doc = malloc(n + 1);
	CHECK(doc && fread(doc, 1, n, f) == (size_t)n);
	doc[n] = 0;
	fclose(f);
	return 0;
}

#define NEED_DOC()                             \
	do {                                   \
		if (!doc)                      \
			T_REQUIRE(load_doc()); \
	} while (0)

/* --- what the header says ------------------------------------------------------------------ */

struct named {
	const char *name;
	long long value;
};

#define N(x)                       \
	{                          \
#x, (long long)(x) \
	}

static const struct named msg_types[] = {
	{ "REGISTER", PT_MSG_REGISTER },
	{ "ARM", PT_MSG_ARM },
	{ "HINT", PT_MSG_HINT },
	{ "STOP", PT_MSG_STOP },
	{ "DONE", PT_MSG_DONE },
	{ "QUERY", PT_MSG_QUERY },
	{ "REPORT", PT_MSG_REPORT },
	{ "INFLATE", PT_MSG_INFLATE },
	{ "DEFLATE", PT_MSG_DEFLATE },
	{ "WR_CAPS", PT_MSG_WR_CAPS },
	{ "WR_READ", PT_MSG_WR_READ },
	{ "PING", PT_MSG_PING },
	{ "WRITTEN", PT_MSG_WRITTEN },
	{ "REGISTER2", PT_MSG_REGISTER2 },
	{ "ACK", PT_MSG_ACK },
	{ "VERDICT", PT_MSG_VERDICT },
	{ "ERROR", PT_MSG_ERROR },
	{ "WR_CAPS_REPLY", PT_MSG_WR_CAPS_REPLY },
	{ "WR_RECORDS", PT_MSG_WR_RECORDS },
};

static const struct named enums[] = {
	N(PT_E_BAD_MAGIC),	N(PT_E_BAD_VERSION), N(PT_E_BAD_TYPE),	N(PT_E_BAD_LENGTH),
	N(PT_E_RESERVED_CMD),	N(PT_E_STALE_CMD),   N(PT_E_CMD_REUSE), N(PT_E_BAD_RANGE),
	N(PT_E_NOT_REGISTERED), N(PT_E_PERM),	     N(PT_E_BUSY),	N(PT_E_STATE),
	N(PT_E_INTERNAL),	N(PT_E_BAD_FIELD),   N(PT_Q_HINTS),	N(PT_Q_REPORTED),
	N(PT_Q_RECLAIMED),	N(PT_DIRTY_BITMAP),  N(PT_DIRTY_RING),	N(PT_TRACK_UFFD),
};

static const struct named why_bits[] = {
	N(PT_WHY_UNTRACKED), N(PT_WHY_TAINTED), N(PT_WHY_NO_SYNC),   N(PT_WHY_UNKNOWN_MEM),
	N(PT_WHY_DONE),	     N(PT_WHY_STALE),	N(PT_WHY_UFFD_LOST),
};

static const struct named sizes[] = {
	{ "pt_hdr", sizeof(struct pt_hdr) },
	{ "pt_range", sizeof(struct pt_range) },
	{ "pt_register", sizeof(struct pt_register) },
	{ "pt_reg_slot", sizeof(struct pt_reg_slot) },
	{ "pt_register2", sizeof(struct pt_register2) },
	{ "pt_reg_slot2", sizeof(struct pt_reg_slot2) },
	{ "pt_cmd", sizeof(struct pt_cmd) },
	{ "pt_hint", sizeof(struct pt_hint) },
	{ "pt_query", sizeof(struct pt_query) },
	{ "pt_report", sizeof(struct pt_report) },
	{ "pt_ack", sizeof(struct pt_ack) },
	{ "pt_verdict", sizeof(struct pt_verdict) },
	{ "pt_error", sizeof(struct pt_error) },
	{ "pt_wr_caps", sizeof(struct pt_wr_caps) },
};

struct field {
	const char *strct, *name;
	size_t off, size;
};

#define F(s, f)                                                           \
	{                                                                 \
#s, #f, offsetof(struct s, f), sizeof(((struct s *)0)->f) \
	}

static const struct field fields[] = {
	F(pt_hdr, magic),
	F(pt_hdr, version),
	F(pt_hdr, type),
	F(pt_hdr, flags),
	F(pt_hdr, len),
	F(pt_hdr, seq),
	F(pt_range, gpa),
	F(pt_range, len),
	F(pt_register, vmm_pid),
	F(pt_register, dirty_mode),
	F(pt_register, nslots),
	F(pt_register, flags),
	F(pt_reg_slot, gpa),
	F(pt_reg_slot, size),
	F(pt_reg_slot, id),
	F(pt_reg_slot, flags),
	F(pt_register2, vmm_pid),
	F(pt_register2, mode),
	F(pt_register2, nslots),
	F(pt_register2, nfds),
	F(pt_register2, resume),
	F(pt_register2, flags),
	F(pt_register2, pad),
	F(pt_reg_slot2, gpa),
	F(pt_reg_slot2, size),
	F(pt_reg_slot2, hva),
	F(pt_reg_slot2, id),
	F(pt_reg_slot2, flags),
	F(pt_verdict, cmd_id),
	F(pt_verdict, unsure_reason),
	F(pt_verdict, hinted),
	F(pt_verdict, free),
	F(pt_verdict, kept_written),
	F(pt_verdict, kept_unsure),
	F(pt_verdict, nranges),
	F(pt_verdict, pad),
	F(pt_cmd, cmd_id),
	F(pt_cmd, flags),
	F(pt_hint, cmd_id),
	F(pt_hint, count),
	F(pt_query, cmd_id),
	F(pt_query, what),
	F(pt_report, count),
	F(pt_report, flags),
	F(pt_ack, status),
	F(pt_ack, value32),
	F(pt_ack, pages),
	F(pt_ack, ignored),
	F(pt_ack, token),
	F(pt_error, code),
	F(pt_error, bad_seq),
	F(pt_wr_caps, page_size),
	F(pt_wr_caps, max_ranges),
	F(pt_wr_caps, flags),
};

/* The field tables of the document, in its order. */
static const char *const tables[] = { "pt_hdr",	      "pt_range",     "pt_register", "pt_reg_slot",
				      "pt_register2", "pt_reg_slot2", "pt_verdict" };

static const struct named *find(const struct named *t, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (!strcmp(t[i].name, name))
			return &t[i];
	return NULL;
}

static const struct field *find_field(const char *strct, const char *name)
{
	for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
		if (!strcmp(fields[i].strct, strct) && !strcmp(fields[i].name, name))
			return &fields[i];
	return NULL;
}

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* --- reading the document ------------------------------------------------------------------ */

/* Line @i of the document (0-based) into @buf; false past the end. */
static bool line_at(size_t i, char *buf, size_t cap)
{
	const char *p = doc;

	for (; i && p; i--) {
		p = strchr(p, '\n');
		p = p ? p + 1 : NULL;
	}
	if (!p || !*p)
		return false;
	snprintf(buf, cap, "%.*s", (int)strcspn(p, "\n"), p);
	return true;
}

/* The cells of a table row "| a | b | c |", trimmed, allocated (free_cells); their number. A
 * pipe escaped as "\|" is text. */
static int cells(const char *line, char **cell, int max)
{
	const char *p = line + 1;
	int n = 0;

	if (line[0] != '|')
		return 0;
	while (*p && n < max) {
		const char *e = p, *a = p, *b;

		while (*e && !(*e == '|' && e[-1] != '\\'))
			e++;
		if (!*e)
			break;
		b = e;
		while (a < b && isspace((unsigned char)*a))
			a++;
		while (b > a && isspace((unsigned char)b[-1]))
			b--;
		cell[n++] = strndup(a, b - a);
		p = e + 1;
	}
	return n;
}

/* The name between the first pair of backquotes of @s (or @s itself), into @out. */
static const char *unquote(const char *s, char *out, size_t cap)
{
	const char *a = strchr(s, '`'), *b = a ? strchr(a + 1, '`') : NULL;

	if (a && b)
		snprintf(out, cap, "%.*s", (int)(b - a - 1), a + 1);
	else
		snprintf(out, cap, "%s", s);
	return out;
}

static void free_cells(char **cell, int n)
{
	while (n--)
		free(cell[n]);
}

/* --- the cases ---------------------------------------------------------------------------- */

/* Section 4's message table: number, name, direction; sizes "`pt_x` (N)" in the payload. */
static int message_types(void)
{
	char line[1024], *c[8];
	unsigned rows = 0;

	NEED_DOC();
	for (size_t i = 0; line_at(i, line, sizeof(line)); i++) {
		const struct named *t;
		int n = cells(line, c, 8);

		if (n != 5 || (strcmp(c[2], "request") && strcmp(c[2], "reply"))) {
			free_cells(c, n);
			continue;
		}
		t = find(msg_types, COUNT(msg_types), c[1]);
		CHECKF(t && t->value == atoll(c[0]), "message %s: document %s, header %lld", c[1],
		       c[0], t ? t->value : -1);
		CHECKF(!strcmp(c[2], "request") == (t->value < 64), "%s is a %s", c[1], c[2]);
		for (const char *p = c[3]; (p = strchr(p, '`'));) {
			char name[64];
			const char *q = strchr(p + 1, '`'), *paren;
			const struct named *sz;

			if (!q)
				break;
			snprintf(name, sizeof(name), "%.*s", (int)(q - p - 1), p + 1);
			paren = strchr(q, '(');
			sz = find(sizes, COUNT(sizes), name);
			CHECKF(sz, "message %s: unknown structure %s", c[1], name);
			if (paren && (size_t)(paren - q) <= 5 && isdigit((unsigned char)paren[1]))
				CHECKF(atoll(paren + 1) == sz->value,
				       "message %s: %s is %lld bytes, the document says %s", c[1],
				       name, sz->value, paren + 1);
			p = q + 1;
		}
		rows++;
		free_cells(c, n);
	}
	CHECKF(rows == COUNT(msg_types), "%u message rows, the header has %zu types", rows,
	       COUNT(msg_types));
	return 0;
}

/* One "| offset | size | field | ..." row against the header's field of @strct. */
static int field_row(const char *strct, char **c)
{
	char name[64];
	const struct field *f = find_field(strct, unquote(c[2], name, sizeof(name)));

	CHECKF(f, "%s: the document's field %s is not in the header", strct, name);
	CHECKF(f->off == (size_t)atoll(c[0]) && f->size == (size_t)atoll(c[1]),
	       "%s.%s: header offset %zu size %zu, document %s %s", strct, name, f->off, f->size,
	       c[0], c[1]);
	return 0;
}

/* "`field` (u32 at 4" in the text, after "`struct pt_x`" in the same paragraph. */
static int inline_fields(void)
{
	char strct[64] = "";
	unsigned checked = 0;

	for (const char *p = doc; *p; p++) {
		char name[64];
		unsigned bits, off;
		const struct field *f;

		if (p[0] == '\n' && p[1] == '\n')
			strct[0] = 0; /* a paragraph ends */
		if (!strncmp(p, "`struct pt_", 11)) {
			snprintf(strct, sizeof(strct), "%.*s", (int)strcspn(p + 8, "`"), p + 8);
			continue;
		}
		if (*p != '`' || !strct[0] ||
		    sscanf(p, "`%63[a-z0-9_]` (u%u at %u", name, &bits, &off) != 3)
			continue;
		f = find_field(strct, name);
		CHECKF(f && f->off == off && f->size * 8 == bits,
		       "%s.%s: the document says u%u at %u, the header %zu bytes at %zu", strct,
		       name, bits, off, f ? f->size : 0, f ? f->off : 0);
		checked++;
	}
	CHECKF(checked >= 15, "only %u inline field descriptions found", checked);
	return 0;
}

/* "`struct pt_x` (N bytes)" */
static int struct_sizes(void)
{
	unsigned checked = 0;

	for (const char *p = doc; (p = strstr(p, "`struct pt_")); p++) {
		char name[64];
		unsigned n;
		const struct named *sz;

		if (sscanf(p, "`struct %63[a-z0-9_]` (%u bytes)", name, &n) != 2)
			continue;
		sz = find(sizes, COUNT(sizes), name);
		CHECKF(sz && sz->value == n,
		       "struct %s: %u bytes in the document, %lld in the header", name, n,
		       sz ? sz->value : -1);
		checked++;
	}
	CHECK(checked >= 3);
	return 0;
}

static int struct_layouts(void)
{
	char line[1024], *c[8];
	size_t table = 0;
	bool in = false;

	NEED_DOC();
	for (size_t i = 0; line_at(i, line, sizeof(line)); i++) {
		int n = cells(line, c, 8);

		if (n >= 3 && !strcmp(c[0], "offset") && !strcmp(c[1], "size")) {
			CHECKF(table < COUNT(tables), "more field tables than the %zu known",
			       COUNT(tables));
			in = true;
			table++;
		} else if (!n) {
			in = false;
		} else if (in && isdigit((unsigned char)c[0][0])) {
			CHECK(!field_row(tables[table - 1], c));
		}
		free_cells(c, n);
	}
	CHECKF(table == COUNT(tables), "%zu field tables, %zu expected", table, COUNT(tables));
	CHECK(!inline_fields());
	return struct_sizes();
}

/* Rows "| N | `PT_X` | ..." (error codes, `what`) and "| bit | `PT_WHY_X` |". */
static int enum_tables(void)
{
	char line[1024], *c[8], name[64];
	unsigned errs = 0, whys = 0, whats = 0;

	NEED_DOC();
	for (size_t i = 0; line_at(i, line, sizeof(line)); i++) {
		int n = cells(line, c, 8);
		const struct named *e;

		if (n < 2 || !isdigit((unsigned char)c[0][0]) || c[1][0] != '`') {
			free_cells(c, n);
			continue;
		}
		unquote(c[1], name, sizeof(name));
		if ((e = find(why_bits, COUNT(why_bits), name))) {
			CHECKF(e->value == 1ll << atoi(c[0]), "%s: bit %s, header %#llx", name,
			       c[0], e->value);
			whys++;
		} else if ((e = find(enums, COUNT(enums), name))) {
			CHECKF(e->value == atoll(c[0]),
			       "%s: %s in the document, %lld in the header", name, c[0], e->value);
			errs += !strncmp(name, "PT_E_", 5);
			whats += !strncmp(name, "PT_Q_", 5);
		} else {
			CHECKF(strncmp(name, "PT_", 3), "%s: not in the header", name);
		}
		free_cells(c, n);
	}
	/* PT_E_BAD_LENGTH has two rows (close, skip). */
	CHECKF(errs == PT_E_BAD_FIELD + 1 && whys == COUNT(why_bits) && whats == 3,
	       "rows: %u errors, %u PT_WHY bits, %u what values", errs, whys, whats);
	return 0;
}

/* The number right before some occurrence of @marker (spaces between), or -1. */
static long long number_before(const char *marker)
{
	for (const char *p = doc; (p = strstr(p, marker)); p++) {
		const char *q = p;

		while (q > doc && isspace((unsigned char)q[-1]))
			q--;
		if (q > doc && isdigit((unsigned char)q[-1])) {
			while (q > doc && isalnum((unsigned char)q[-1]))
				q--;
			return strtoll(q, NULL, 0);
		}
	}
	return -1;
}

/* The number right after @marker ("2^30" is a power), or -1. */
static long long number_after(const char *marker)
{
	const char *p = strstr(doc, marker);
	char *end;
	long long v;

	if (!p)
		return -1;
	v = strtoll(p + strlen(marker), &end, 0);
	if (*end == '^')
		v = 1ll << strtoll(end + 1, NULL, 10);
	return v;
}

/* The value cell of the header table's row for @field: "| 0 | 4 | `magic` | `0x...` ...". */
static long long hdr_value(const char *field)
{
	const char *p = strstr(doc, field);

	p = p ? strstr(p + 1, "| `") : NULL;
	return p ? strtoll(p + 3, NULL, 0) : -1;
}

#define SAYS(got, want)                               \
	CHECKF((long long)(got) == (long long)(want), \
	       "the document says %lld for %s, the "  \
	       "header %lld",                         \
	       (long long)(got), #want, (long long)(want))

static int constants(void)
{
	NEED_DOC();
	SAYS(hdr_value("| `magic`"), PT_PROTO_MAGIC);
	SAYS(hdr_value("| `version`"), PT_PROTO_VERSION);
	SAYS(number_after("`PT_F_MORE` (`"), PT_F_MORE);
	SAYS(number_after("PT_MAX_PAYLOAD` ("), PT_MAX_PAYLOAD);
	SAYS(number_before("(`PT_MAX_HINTS`"), PT_MAX_HINTS);
	SAYS(number_before(" ranges cannot be sent"), PT_MAX_HINTS);
	SAYS(number_before("(`PT_MAX_REPORT`"), PT_MAX_REPORT);
	SAYS(number_before("(`PT_MAX_REG_SLOTS`)"), PT_MAX_REG_SLOTS);
	SAYS(number_after("`PT_MAX_BATCH_PAGES` ("), PT_MAX_BATCH_PAGES);
	SAYS(number_before(" bytes (`PT_PROTO_PAGE`)"), PT_PROTO_PAGE);
	SAYS(1ll << number_before("`PT_REG_SLOT_LOGGED`"), PT_REG_SLOT_LOGGED);
	SAYS(number_before("`PT_DIRTY_BITMAP`"), PT_DIRTY_BITMAP);
	SAYS(number_before("`PT_DIRTY_RING`"), PT_DIRTY_RING);
	SAYS(number_before("`PT_TRACK_UFFD`"), PT_TRACK_UFFD);
	SAYS(number_after("the service sends at most "), PT_MAX_REASON);
	CHECK(strstr(doc, "Command IDs 0 (STOP) and 1 (DONE) are reserved"));
	CHECK(PT_CMD_ID_STOP == 0 && PT_CMD_ID_DONE == 1 && PT_CMD_ID_MIN == 2);
	/* "the bytes P T R K": the magic read as a little-endian u32. */
	CHECK(strstr(doc, "(the bytes `P` `T` `R` `K`)"));
	CHECK(!memcmp(&(uint32_t){ PT_PROTO_MAGIC }, "PTRK", 4));
	/* Section 6: a frame of 64 KiB, header included, holds this many ranges. */
	SAYS(number_after("service sends at most "),
	     (65536 - sizeof(struct pt_hdr) - sizeof(struct pt_verdict)) / sizeof(struct pt_range));
	return 0;
}

T_MAIN(T_CASE(message_types), T_CASE(struct_layouts), T_CASE(enum_tables), T_CASE(constants))
