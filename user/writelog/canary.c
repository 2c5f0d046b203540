// SPDX-License-Identifier: GPL-2.0
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "canary.h"
#include "shared/log.h"
#include "vmm/minivm.h"
#include "vmlog.h"

#define CANARY_GPA   (1ull << 30) /* a data slot away from GPA 0, as real guests have */
#define CANARY_SIZE  (2ull << 20)
#define CANARY_PAGES 64

static const char *const mode_name[2] = { "bitmap", "dirty-ring" };

const char *pt_cov_name(enum pt_cov c)
{
	switch (c) {
	case PT_COV_TRACKED:
		return "tracked";
	case PT_COV_NOT_TRACKED:
		return "NOT tracked";
	case PT_COV_UNAVAILABLE:
		return "unavailable";
	case PT_COV_ERROR:
		return "canary failed";
	default:
		return "unknown";
	}
}

static int track_canary(struct pt_tracker *t, struct minivm *m, uint32_t *vm)
{
	/* minivm turns dirty logging on for every slot it creates. */
	struct pt_slot_cfg s[2] = { { CANARY_GPA, CANARY_SIZE, 1, true } };
	bool existed;

	minivm_system_range(m, &s[1].gpa, &s[1].size);
	s[1].id = 0;
	s[1].logged = true;
	return pt_vm_track(t, getpid(), s, 2, 0, vm, &existed);
}

static bool has_gfn(const uint64_t *v, size_t n, uint64_t gfn)
{
	for (size_t i = 0; i < n; i++)
		if (v[i] == gfn)
			return true;
	return false;
}

struct canary_count {
	size_t data, missed, extra, kvm, bpf;
};

/*
 * Sync, write known pages, sync again; compare what KVM and what BPF saw. `data`: KVM's entries
 * in the canary's data slot (the guest wrote CANARY_PAGES there); `missed`: KVM entries BPF did
 * not see; `extra`: BPF pages KVM did not log; `kvm`, `bpf`: all each saw. Both logs are compared
 * whole, system slot too: a CPU may dirty the pages it walks or runs from (nested SVM under QEMU
 * logs them), and then KVM and BPF both see it, as they must.
 */
static int probe(struct pt_tracker *t, struct minivm *m, uint32_t vm, struct canary_count *c)
{
	uint64_t gpas[CANARY_PAGES], *kvm = NULL, *bpf = NULL, epoch;
	size_t nk, nb;
	int err;

	err = minivm_harvest(m, &kvm, &nk);
	free(kvm);
	if (!err)
		err = pt_vm_arm(t, vm, &epoch);
	if (err)
		return err;
	/* Every other page, so that a log shifted by one page would not match. */
	for (size_t i = 0; i < CANARY_PAGES; i++)
		gpas[i] = CANARY_GPA + i * 2 * 4096;
	err = minivm_guest_write(m, gpas, CANARY_PAGES, 0xca7a11);
	if (!err)
		err = minivm_harvest(m, &kvm, &nk);
	if (!err)
		err = pt_vm_written_gfns(t, vm, &bpf, &nb);
	if (err)
		goto out;
	*c = (struct canary_count){ .kvm = nk, .bpf = nb };
	for (size_t i = 0; i < nk; i++) {
		c->data += !minivm_is_system_gfn(m, kvm[i]);
		c->missed += !has_gfn(bpf, nb, kvm[i]);
	}
	for (size_t j = 0; j < nb; j++)
		c->extra += !has_gfn(kvm, nk, bpf[j]);
out:
	free(kvm);
	free(bpf);
	return err;
}

static void run_mode(struct pt_tracker *t, enum pt_dirty_mode mode, struct pt_coverage *cov)
{
	struct minivm_opts o = { .dirty = mode == PT_DIRTY_RING ? MINIVM_DIRTY_RING
								: MINIVM_DIRTY_BITMAP,
				 .nslots = 1 };
	struct canary_count n = { 0 };
	struct minivm *m = NULL;
	char *why = cov->why[mode];
	uint32_t vm = 0;
	bool tracked = false;
	int err;

	o.slots[0] = (struct minivm_slot){ CANARY_GPA, CANARY_SIZE, 1 };
	err = minivm_supported(o.dirty);
	if (err) {
		cov->mode[mode] = PT_COV_UNAVAILABLE;
		snprintf(why, 160, "KVM: %s", strerror(-err));
		return;
	}
	err = minivm_create(&m, &o);
	if (!err)
		err = track_canary(t, m, &vm);
	tracked = !err;
	if (!err)
		err = probe(t, m, vm, &n);
	if (tracked)
		pt_vm_untrack(t, vm);
	minivm_destroy(m);
	if (err) {
		cov->mode[mode] = PT_COV_ERROR;
		snprintf(why, 160, "%s", strerror(-err));
	} else if (n.data == CANARY_PAGES && !n.missed && !n.extra) {
		cov->mode[mode] = PT_COV_TRACKED;
		snprintf(why, 160, "%zu of %zu guest writes seen", n.data, n.data);
	} else {
		cov->mode[mode] = PT_COV_NOT_TRACKED;
		if (!n.bpf && mode == PT_DIRTY_BITMAP)
			snprintf(why, 160, "no write faults seen: shadow paging or Intel PML");
		else
			snprintf(why, 160, "BPF missed %zu of the %zu pages KVM logged (%zu extra)",
				 n.missed, n.kvm, n.extra);
	}
	pt_info("canary %s: %s (%s)", mode_name[mode], pt_cov_name(cov->mode[mode]), why);
}

int pt_canary_run(struct pt_tracker *t, struct pt_coverage *cov)
{
	memset(cov, 0, sizeof(*cov));
	run_mode(t, PT_DIRTY_RING, cov);
	run_mode(t, PT_DIRTY_BITMAP, cov);
	pt_canary_uffd(cov);
	return 0;
}

bool pt_coverage_tracked(const struct pt_coverage *cov, enum pt_dirty_mode mode)
{
	return (unsigned)mode < 2 && cov->mode[mode] == PT_COV_TRACKED;
}

const char *pt_coverage_str(const struct pt_coverage *cov, char *buf, size_t len)
{
	size_t off = 0;

	for (int m = PT_DIRTY_RING; m >= PT_DIRTY_BITMAP; m--) {
		off += snprintf(buf + off, off < len ? len - off : 0, "%s%s: %s", off ? "; " : "",
				mode_name[m], pt_cov_name(cov->mode[m]));
		if (cov->mode[m] != PT_COV_TRACKED && cov->why[m][0])
			off += snprintf(buf + off, off < len ? len - off : 0, " (%s)", cov->why[m]);
	}
	off += snprintf(buf + off, off < len ? len - off : 0, "; uffd-wp: %s",
			pt_cov_name(cov->uffd));
	if ((cov->uffd != PT_COV_TRACKED || cov->uffd_host_only) && cov->uffd_why[0])
		snprintf(buf + off, off < len ? len - off : 0, " (%s)", cov->uffd_why);
	return buf;
}
