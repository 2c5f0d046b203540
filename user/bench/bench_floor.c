// SPDX-License-Identifier: GPL-2.0
/*
 * The floor of the hint loads: a forked reader of the very byte stream the service gets that
 * does only the bitmap work a round needs and nothing else. Per HINT frame it sets the hinted
 * bits; per ARM it clears the log region and the hinted bitmap; per QUERY it reads both
 * (hinted AND NOT written, counted). No validation, no state machine, no replies: what is
 * left of pagetrackd's cost once everything that makes it safe is taken away.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench_pump.h"
#include "bench_util.h"

#define FLOOR_BUF (1 << 20)

struct floor {
	const struct pt_reg_slot *slots;
	uint32_t nslots;
	uint64_t *bit_off; /* region page index of each slot's first page */
	uint64_t words;
	uint64_t *log, *hinted;
	uint64_t free; /* the verdicts' sum, so that the reads are not optimised away */
};

static void set_bits(uint64_t *b, uint64_t first, uint64_t n)
{
	uint64_t w = first / 64, off = first % 64, k;

	if (off) {
		k = 64 - off < n ? 64 - off : n;
		b[w++] |= (k == 64 ? ~0ull : (1ull << k) - 1) << off;
		n -= k;
	}
	if (n >= 64) {
		memset(&b[w], 0xff, n / 64 * 8);
		w += n / 64;
		n %= 64;
	}
	if (n)
		b[w] |= (1ull << n) - 1;
}

/* The hinted ranges' bits; a range outside every slot is simply dropped. */
static void floor_hint(struct floor *f, const struct pt_range *r, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		for (uint32_t s = 0; s < f->nslots; s++) {
			uint64_t gpa = r[i].gpa - f->slots[s].gpa;

			if (gpa < f->slots[s].size) {
				set_bits(f->hinted, f->bit_off[s] + gpa / 4096, r[i].len / 4096);
				break;
			}
		}
	}
}

static void floor_query(struct floor *f)
{
	for (uint64_t w = 0; w < f->words; w++) {
		uint64_t h = f->hinted[w];

		if (h)
			f->free += __builtin_popcountll(
				h & ~__atomic_load_n(&f->log[w], __ATOMIC_RELAXED));
	}
}

static void floor_frame(struct floor *f, const struct pt_hdr *h, const uint8_t *pl)
{
	const struct pt_hint *hint = (const void *)pl;

	switch (h->type) {
	case PT_MSG_ARM:
		memset(f->log, 0, f->words * 8);
		memset(f->hinted, 0, f->words * 8);
		break;
	case PT_MSG_HINT:
		floor_hint(f, (const struct pt_range *)(hint + 1), hint->count);
		break;
	case PT_MSG_QUERY:
		floor_query(f);
		break;
	}
}

/* Whole frames of buf[0, len): returns the bytes consumed. */
static size_t floor_frames(struct floor *f, const uint8_t *buf, size_t len)
{
	size_t off = 0;

	while (len - off >= PT_HDR_SIZE) {
		const struct pt_hdr *h = (const void *)(buf + off);

		if (len - off < PT_HDR_SIZE + h->len)
			break;
		floor_frame(f, h, buf + off + PT_HDR_SIZE);
		off += PT_HDR_SIZE + h->len;
	}
	return off;
}

static void __attribute__((noreturn)) floor_main(struct floor *f, int fd)
{
	uint8_t *buf = aligned_alloc(8, FLOOR_BUF);
	size_t have = 0;
	uint64_t total = 0;
	ssize_t n;

	if (!buf)
		_exit(2);
	while ((n = read(fd, buf + have, FLOOR_BUF - have)) > 0) {
		size_t used;

		total += n;
		have += n;
		used = floor_frames(f, buf, have);
		memmove(buf, buf + used, have - used);
		have -= used;
	}
	bench_write_all(fd, &total, sizeof(total));
	_exit(f->free == ~0ull);
}

static int floor_setup(struct floor *f, const struct pt_reg_slot *slots, uint32_t n)
{
	uint64_t pages = 0;

	f->slots = slots;
	f->nslots = n;
	f->bit_off = calloc(n, sizeof(*f->bit_off));
	if (!f->bit_off)
		return -ENOMEM;
	for (uint32_t i = 0; i < n; i++) {
		f->bit_off[i] = pages;
		pages += slots[i].size / 4096;
	}
	f->words = (pages + 63) / 64;
	f->log = calloc(f->words, 8);
	f->hinted = calloc(f->words, 8);
	if (!f->log || !f->hinted)
		return -ENOMEM;
	/* Fault the bitmaps in before the clock starts, as the service's are. */
	memset(f->log, 0, f->words * 8);
	memset(f->hinted, 0, f->words * 8);
	return 0;
}

int bench_fork_floor(int *fd, pid_t *pid, const struct pt_reg_slot *slots, uint32_t n)
{
	struct floor f = { 0 };
	int cfd = -1, err = bench_fork_peer(fd, pid, &cfd);
	char ready = 'R';

	if (err)
		return err;
	if (*pid) {
		err = bench_read_all(*fd, &ready, 1);
		if (err || ready != 'R') {
			bench_child_reap(*fd, *pid);
			return err ? err : -ENOMEM;
		}
		return 0;
	}
	ready = floor_setup(&f, slots, n) ? 'E' : 'R';
	bench_write_all(cfd, &ready, 1);
	if (ready != 'R')
		_exit(1);
	floor_main(&f, cfd);
}
