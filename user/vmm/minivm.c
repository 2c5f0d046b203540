// SPDX-License-Identifier: GPL-2.0
/*
 * minivm: a tiny VMM over /dev/kvm. See minivm.h for the model.
 *
 * The vcpu starts directly in 64-bit long mode (set through KVM_SET_SREGS) with identity page
 * tables of 2 MiB pages covering every slot. It runs a loop that reads the command block
 * (count, value, gpa[]) at a GPA held in RSI, stores the value at each gpa, then does
 * "out MINIVM_PORT, al" and jumps back to the top. The OUT makes KVM_RUN return to us; the
 * next KVM_RUN resumes after it and picks up the next batch the host wrote meanwhile.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <linux/kvm.h>

#include "minivm.h"

#define PG		 MINIVM_PAGE_SIZE
#define SZ_2M		 (2ULL << 20)
#define SZ_1G		 (1ULL << 30)
#define SZ_512G		 (512ULL << 30)
#define ALIGN_UP(x, a)	 (((x) + (a)-1) & ~((uint64_t)(a)-1))
#define ALIGN_DOWN(x, a) ((x) & ~((uint64_t)(a)-1))

#define MINIVM_PORT  0xf5 /* any port without an in-kernel device; 8-bit immediate */
#define DEFAULT_RING 4096
/*
 * Ring entries a guest batch leaves free: KVM's own reserve (KVM_DIRTY_RING_RSVD_ENTRIES) plus
 * slack. KVM only asks the vcpu to exit once the ring is "soft full" (size - reserve), and
 * PVM emulates a run of guest instructions before it looks at that request, so it overshoots
 * (by ~60 entries, seen with a 1024 entry ring) and can fill the ring completely, at which
 * point KVM overwrites entries (WARN in kvm_dirty_ring_push) and the log is lost. So minivm
 * never hands the guest more writes than the ring has room for minus this much.
 */
#define RING_SLACK 128
#define MIN_RING   (2 * RING_SLACK)

/* System slot layout, in pages from its base. Page tables follow the fixed part. */
#define SYS_GDT	  0
#define SYS_CODE  1
#define SYS_STACK 2
#define SYS_CMD	  3 /* MINIVM_CMD_PAGES per vCPU, for MINIVM_MAX_VCPUS */
#define SYS_PML4  (SYS_CMD + MINIVM_CMD_PAGES * MINIVM_MAX_VCPUS)
#define SYS_FIXED (SYS_PML4 + 1)

/* Page table entry bits. A and D are preset so the guest never writes its page tables. */
#define PTE_P  (1ULL << 0)
#define PTE_RW (1ULL << 1)
#define PTE_A  (1ULL << 5)
#define PTE_D  (1ULL << 6)
#define PTE_PS (1ULL << 7)

#define CR0_PE	 (1ULL << 0)
#define CR0_MP	 (1ULL << 1)
#define CR0_ET	 (1ULL << 4)
#define CR0_NE	 (1ULL << 5)
#define CR0_WP	 (1ULL << 16)
#define CR0_PG	 (1ULL << 31)
#define CR4_PAE	 (1ULL << 5)
#define EFER_LME (1ULL << 8)
#define EFER_LMA (1ULL << 10)

#define SEL_CODE 0x08
#define SEL_DATA 0x10
#define SEL_TSS	 0x18

/*
 * Guest code, position independent; RSI = command block GPA (identity mapped).
 * Command block: u64 count, u64 value, u64 gpa[count].
 */
/* clang-format off */
static const uint8_t guest_code[] = {
	/* top: */
	0x48, 0x8b, 0x0e,		/*  0: mov rcx, [rsi]       ; count */
	0x48, 0x8b, 0x46, 0x08,		/*  3: mov rax, [rsi + 8]   ; value */
	0x48, 0x8d, 0x7e, 0x10,		/*  7: lea rdi, [rsi + 16]  ; gpa[0] */
	/* loop: */
	0x48, 0x85, 0xc9,		/* 11: test rcx, rcx */
	0x74, 0x0f,			/* 14: jz done (31) */
	0x48, 0x8b, 0x17,		/* 16: mov rdx, [rdi]       ; gpa */
	0x48, 0x89, 0x02,		/* 19: mov [rdx], rax       ; the write */
	0x48, 0x83, 0xc7, 0x08,		/* 22: add rdi, 8 */
	0x48, 0xff, 0xc9,		/* 26: dec rcx */
	0xeb, 0xec,			/* 29: jmp loop (11) */
	/* done: tell the host, then start over with the next batch */
	0xe6, MINIVM_PORT,		/* 31: out MINIVM_PORT, al */
	0xeb, 0xdd,			/* 33: jmp top (0) */
};
/* clang-format on */

struct mvm_mem {
	uint64_t gpa;
	uint64_t size;
	uint32_t id;
	uint8_t *hva;
	uint64_t *bitmap; /* KVM_GET_DIRTY_LOG buffer, bitmap mode only */
};

/*
 * One vCPU: its fd, run area, dirty ring and the write it is doing. The thread driving the
 * vCPU and a thread harvesting its ring may differ: `lock` guards the ring bookkeeping.
 */
struct mvm_vcpu {
	int fd;
	struct kvm_run *run;
	struct kvm_dirty_gfn *ring;
	pthread_mutex_t lock;
	uint32_t ring_fetch;   /* next ring index to look at; free-running */
	uint32_t ring_unreset; /* ring_fetch when the last KVM_RESET_DIRTY_RINGS began */

	/* Write interrupted by a full dirty ring, finished by minivm_vcpu_resume(). */
	uint64_t *pending;
	size_t pending_n;
	size_t pending_off; /* next GPA to hand to the guest */
	uint64_t pending_value;
	bool in_batch; /* the guest is mid-batch: just KVM_RUN again */
};

struct minivm {
	int kvm_fd;
	int vm_fd;
	size_t run_size;
	enum minivm_dirty dirty;
	unsigned int nvcpus;
	struct mvm_vcpu vcpu[MINIVM_MAX_VCPUS];

	uint32_t ring_entries;
	bool ring_acq_rel;

	unsigned int nmem; /* mem[0] is the system slot */
	struct mvm_mem mem[MINIVM_MAX_SLOTS + 1];
	unsigned int pt_pages; /* page table pages available after SYS_PML4 */
	unsigned int pt_used;
	unsigned int phys_bits; /* guest MAXPHYADDR */
	bool memory_ready;
	pid_t owner; /* the creating process: the only one KVM and the memory work for */
};

static int kvm_open(void)
{
	int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);

	if (fd < 0)
		return (errno == ENOENT || errno == ENXIO || errno == ENODEV) ? -ENODEV : -errno;
	if (ioctl(fd, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) {
		close(fd);
		return -ENODEV;
	}
	return fd;
}

/* Checks the capabilities a mode needs on a /dev/kvm or VM fd. */
static int check_mode(int fd, enum minivm_dirty mode)
{
	int r;

	switch (mode) {
	case MINIVM_DIRTY_NONE:
		return 0;
	case MINIVM_DIRTY_BITMAP:
		r = ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2);
		return r > 0 && (r & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE) ? 0 : -EOPNOTSUPP;
	case MINIVM_DIRTY_RING:
		if (ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_DIRTY_LOG_RING_ACQ_REL) > 0 ||
		    ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_DIRTY_LOG_RING) > 0)
			return 0;
		return -EOPNOTSUPP;
	}
	return -EINVAL;
}

int minivm_supported(enum minivm_dirty mode)
{
	int fd = kvm_open(), r;

	if (fd < 0)
		return fd;
	r = check_mode(fd, mode);
	close(fd);
	return r;
}

static bool ranges_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
	return a < b + blen && b < a + alen;
}

static int check_slots(const struct minivm_opts *o, unsigned int phys_bits)
{
	/* Identity mapping in the lower canonical half of 4-level paging: below 2^47. */
	uint64_t limit = 1ULL << (phys_bits < 47 ? phys_bits : 47);

	if (o->nslots > MINIVM_MAX_SLOTS)
		return -EINVAL;
	for (unsigned int i = 0; i < o->nslots; i++) {
		const struct minivm_slot *s = &o->slots[i];

		if (s->id == 0 || s->id >= 0x8000 || !s->size || (s->gpa | s->size) % PG)
			return -EINVAL;
		if (s->gpa >= limit || s->size > limit - s->gpa)
			return -ERANGE;
		for (unsigned int j = 0; j < i; j++) {
			if (o->slots[j].id == s->id ||
			    ranges_overlap(s->gpa, s->size, o->slots[j].gpa, o->slots[j].size))
				return -EINVAL;
		}
	}
	return 0;
}

/* Page-table pages (PDPTs + PDs) a range can need; overcounting only costs address space. */
static uint64_t pt_pages_for(uint64_t gpa, uint64_t size)
{
	uint64_t n1g = (ALIGN_UP(gpa + size, SZ_1G) - ALIGN_DOWN(gpa, SZ_1G)) / SZ_1G;
	uint64_t n512g = (ALIGN_UP(gpa + size, SZ_512G) - ALIGN_DOWN(gpa, SZ_512G)) / SZ_512G;

	return n1g + n512g;
}

/* Places the system slot at the lowest 2 MiB aligned GPA clear of all data slots. */
static int place_system_slot(struct minivm *vm, const struct minivm_opts *o)
{
	uint64_t limit = 1ULL << (vm->phys_bits < 47 ? vm->phys_bits : 47);
	uint64_t pt = 2 + 2; /* the system slot's own PDPT + PD, with slack */
	uint64_t size, best = UINT64_MAX;

	for (unsigned int i = 0; i < o->nslots; i++)
		pt += pt_pages_for(o->slots[i].gpa, o->slots[i].size);
	if (pt > (1u << 20)) /* 4 GiB of page tables: nobody means that */
		return -E2BIG;
	size = ALIGN_UP((SYS_FIXED + pt) * PG, 64 * 1024);

	for (unsigned int i = 0; i <= o->nslots; i++) {
		uint64_t cand = i ? ALIGN_UP(o->slots[i - 1].gpa + o->slots[i - 1].size, SZ_2M) : 0;
		bool ok = cand < best && cand + size <= limit;

		for (unsigned int j = 0; ok && j < o->nslots; j++)
			ok = !ranges_overlap(cand, size, o->slots[j].gpa, o->slots[j].size);
		if (ok)
			best = cand;
	}
	if (best == UINT64_MAX)
		return -ERANGE;
	vm->mem[0] = (struct mvm_mem){ .gpa = best, .size = size, .id = 0 };
	vm->pt_pages = pt;
	return 0;
}

static struct kvm_cpuid2 *get_supported_cpuid(int kvm_fd)
{
	for (int nent = 64; nent <= 4096; nent *= 2) {
		struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + nent * sizeof(c->entries[0]));

		if (!c)
			return NULL;
		c->nent = nent;
		if (!ioctl(kvm_fd, KVM_GET_SUPPORTED_CPUID, c))
			return c;
		free(c);
		if (errno != E2BIG)
			return NULL;
	}
	errno = E2BIG;
	return NULL;
}

/* KVM checks EFER.LME against the guest CPUID, so a vcpu needs one before KVM_SET_SREGS. */
static int setup_cpuid(struct minivm *vm, struct mvm_vcpu *v)
{
	struct kvm_cpuid2 *c = get_supported_cpuid(vm->kvm_fd);
	int r = 0;

	if (!c)
		return -errno;
	vm->phys_bits = 36; /* the architectural default without leaf 0x80000008 */
	for (unsigned int i = 0; i < c->nent; i++) {
		if (c->entries[i].function == 0x80000008 && (c->entries[i].eax & 0xff))
			vm->phys_bits = c->entries[i].eax & 0xff;
	}
	if (ioctl(v->fd, KVM_SET_CPUID2, c))
		r = -errno;
	free(c);
	return r;
}

static int enable_dirty_logging(struct minivm *vm, uint32_t entries)
{
	struct kvm_enable_cap cap = { 0 };
	int max;

	if (vm->dirty == MINIVM_DIRTY_BITMAP) {
		/* Without INITIALLY_SET: the first harvest reports only real writes. */
		cap.cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2;
		cap.args[0] = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE;
		return ioctl(vm->vm_fd, KVM_ENABLE_CAP, &cap) ? -errno : 0;
	}
	if (vm->dirty != MINIVM_DIRTY_RING)
		return 0;

	if (!entries)
		entries = DEFAULT_RING;
	if ((entries & (entries - 1)) || entries < MIN_RING)
		return -EINVAL;
	/* The ACQ_REL flavour is the one that is correct on weakly ordered CPUs; prefer it. */
	max = ioctl(vm->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_DIRTY_LOG_RING_ACQ_REL);
	cap.cap = KVM_CAP_DIRTY_LOG_RING_ACQ_REL;
	vm->ring_acq_rel = true;
	if (max <= 0) {
		max = ioctl(vm->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_DIRTY_LOG_RING);
		cap.cap = KVM_CAP_DIRTY_LOG_RING;
		vm->ring_acq_rel = false;
	}
	if (max <= 0)
		return -EOPNOTSUPP;
	if ((uint64_t)entries * sizeof(struct kvm_dirty_gfn) > (uint64_t)max)
		return -EINVAL;
	cap.args[0] = (uint64_t)entries * sizeof(struct kvm_dirty_gfn);
	if (ioctl(vm->vm_fd, KVM_ENABLE_CAP, &cap))
		return -errno;
	vm->ring_entries = entries;
	return 0;
}

/* vCPU i: fd, run area, ring, CPUID. */
static int create_vcpu(struct minivm *vm, unsigned int i)
{
	struct mvm_vcpu *v = &vm->vcpu[i];

	v->fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, i);
	if (v->fd < 0)
		return -errno;
	v->run = mmap(NULL, vm->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd, 0);
	if (v->run == MAP_FAILED) {
		v->run = NULL;
		return -errno;
	}
	if (vm->ring_entries) {
		v->ring = mmap(NULL, vm->ring_entries * sizeof(*v->ring), PROT_READ | PROT_WRITE,
			       MAP_SHARED, v->fd, KVM_DIRTY_LOG_PAGE_OFFSET * getpagesize());
		if (v->ring == MAP_FAILED) {
			v->ring = NULL;
			return -errno;
		}
	}
	return setup_cpuid(vm, v);
}

int minivm_create(struct minivm **out, const struct minivm_opts *o)
{
	struct minivm *vm;
	int r;

	*out = NULL;
	if (o->dirty > MINIVM_DIRTY_RING)
		return -EINVAL;
	vm = calloc(1, sizeof(*vm));
	if (!vm)
		return -ENOMEM;
	vm->kvm_fd = vm->vm_fd = -1;
	vm->dirty = o->dirty;
	vm->owner = getpid();
	vm->nvcpus = o->nvcpus ? o->nvcpus : 1;
	for (unsigned int i = 0; i < MINIVM_MAX_VCPUS; i++) {
		vm->vcpu[i].fd = -1;
		pthread_mutex_init(&vm->vcpu[i].lock, NULL);
	}
	if (vm->nvcpus > MINIVM_MAX_VCPUS) {
		free(vm);
		return -EINVAL;
	}

	vm->kvm_fd = kvm_open();
	if (vm->kvm_fd < 0) {
		r = vm->kvm_fd;
		goto cleanup;
	}
	vm->vm_fd = ioctl(vm->kvm_fd, KVM_CREATE_VM, 0);
	if (vm->vm_fd < 0) {
		r = -errno;
		goto cleanup;
	}
	r = check_mode(vm->vm_fd, vm->dirty);
	if (r)
		goto cleanup;
	/* The ring size is fixed per VM and must be set before the first vcpu exists. */
	r = enable_dirty_logging(vm, o->ring_entries);
	if (r)
		goto cleanup;

	r = ioctl(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (r < 0) {
		r = -errno;
		goto cleanup;
	}
	vm->run_size = r;
	for (unsigned int i = 0; i < vm->nvcpus; i++) {
		r = create_vcpu(vm, i);
		if (r)
			goto cleanup;
	}

	r = check_slots(o, vm->phys_bits);
	if (r)
		goto cleanup;
	r = place_system_slot(vm, o);
	if (r)
		goto cleanup;
	for (unsigned int i = 0; i < o->nslots; i++) {
		vm->mem[i + 1] = (struct mvm_mem){ .gpa = o->slots[i].gpa,
						   .size = o->slots[i].size,
						   .id = o->slots[i].id };
	}
	vm->nmem = o->nslots + 1;

	if (!o->defer_memory) {
		r = minivm_setup_memory(vm);
		if (r)
			goto cleanup;
	}
	*out = vm;
	return 0;

cleanup:
	minivm_destroy(vm);
	return r;
}

/*
 * An inherited handle in a fork()ed child: KVM fails its ioctls with -EIO and the guest
 * memory is not mapped there (MADV_DONTFORK), so refuse up front instead of crashing.
 */
static bool foreign(const struct minivm *vm)
{
	return getpid() != vm->owner;
}

static uint8_t *sys_page(struct minivm *vm, uint64_t idx)
{
	return vm->mem[0].hva + idx * PG;
}

static uint64_t sys_gpa(struct minivm *vm, uint64_t idx)
{
	return vm->mem[0].gpa + idx * PG;
}

/* Returns the table an entry points to, creating it from the system slot's pool. */
static int pt_next_level(struct minivm *vm, uint64_t *entry, uint64_t **table)
{
	if (!*entry) {
		uint64_t idx = SYS_FIXED + vm->pt_used;

		if (vm->pt_used >= vm->pt_pages)
			return -E2BIG; /* place_system_slot() counted wrong */
		vm->pt_used++;
		*entry = sys_gpa(vm, idx) | PTE_P | PTE_RW | PTE_A;
	}
	*table = (uint64_t *)sys_page(vm, ((*entry & ~0xfffULL) - vm->mem[0].gpa) / PG);
	return 0;
}

static int identity_map(struct minivm *vm, uint64_t gpa, uint64_t size)
{
	uint64_t *pml4 = (uint64_t *)sys_page(vm, SYS_PML4), *pdpt, *pd;
	int r;

	for (uint64_t a = ALIGN_DOWN(gpa, SZ_2M); a < gpa + size; a += SZ_2M) {
		r = pt_next_level(vm, &pml4[(a >> 39) & 511], &pdpt);
		if (r)
			return r;
		r = pt_next_level(vm, &pdpt[(a >> 30) & 511], &pd);
		if (r)
			return r;
		pd[(a >> 21) & 511] = a | PTE_P | PTE_RW | PTE_A | PTE_D | PTE_PS;
	}
	return 0;
}

static void set_seg(struct kvm_segment *s, uint16_t sel, uint8_t type, bool code)
{
	*s = (struct kvm_segment){
		.base = 0,
		.limit = 0xffffffff,
		.selector = sel,
		.type = type,
		.present = 1,
		.dpl = 0,
		.db = !code,
		.s = 1,
		.l = code,
		.g = 1,
	};
}

/* Writes the GDT the segment registers claim to come from (only matters on reloads). */
static void write_gdt(struct minivm *vm)
{
	uint64_t *gdt = (uint64_t *)sys_page(vm, SYS_GDT);
	uint64_t tss = sys_gpa(vm, SYS_GDT) + 0x800;

	gdt[0] = 0;
	gdt[SEL_CODE / 8] = 0x00af9b000000ffffULL; /* 64-bit code, DPL 0, accessed */
	gdt[SEL_DATA / 8] = 0x00cf93000000ffffULL; /* 32-bit data, read/write, accessed */
	/* 64-bit busy TSS descriptor (two slots): limit 0x67 */
	gdt[SEL_TSS / 8] =
		0x67 | ((tss & 0xffffff) << 16) | (0x8bULL << 40) | (((tss >> 24) & 0xff) << 56);
	gdt[SEL_TSS / 8 + 1] = tss >> 32;
}

/* Every vCPU runs the same code on its own command block (and stack, though it uses none). */
static int setup_vcpu_state(struct minivm *vm, unsigned int i)
{
	int fd = vm->vcpu[i].fd;
	struct kvm_sregs sregs;
	struct kvm_regs regs = { 0 };

	if (ioctl(fd, KVM_GET_SREGS, &sregs))
		return -errno;
	set_seg(&sregs.cs, SEL_CODE, 0xb, true);
	set_seg(&sregs.ds, SEL_DATA, 0x3, false);
	sregs.es = sregs.fs = sregs.gs = sregs.ss = sregs.ds;
	sregs.tr = (struct kvm_segment){
		.base = sys_gpa(vm, SYS_GDT) + 0x800,
		.limit = 0x67,
		.selector = SEL_TSS,
		.type = 0xb,
		.present = 1,
	};
	sregs.ldt = (struct kvm_segment){ .unusable = 1 };
	sregs.gdt.base = sys_gpa(vm, SYS_GDT);
	sregs.gdt.limit = 5 * 8 - 1;
	sregs.idt.base = 0;
	sregs.idt.limit = 0;
	sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
	sregs.cr3 = sys_gpa(vm, SYS_PML4);
	sregs.cr4 = CR4_PAE;
	sregs.efer = EFER_LME | EFER_LMA;
	if (ioctl(fd, KVM_SET_SREGS, &sregs))
		return -errno;

	regs.rflags = 0x2;
	regs.rip = sys_gpa(vm, SYS_CODE);
	regs.rsp = sys_gpa(vm, SYS_STACK + 1);
	regs.rsi = sys_gpa(vm, SYS_CMD + i * MINIVM_CMD_PAGES);
	if (ioctl(fd, KVM_SET_REGS, &regs))
		return -errno;
	return 0;
}

int minivm_setup_memory(struct minivm *vm)
{
	uint32_t flags = vm->dirty != MINIVM_DIRTY_NONE ? KVM_MEM_LOG_DIRTY_PAGES : 0;
	int r;

	if (foreign(vm))
		return -EIO;
	if (vm->memory_ready)
		return 0;
	for (unsigned int i = 0; i < vm->nmem; i++) {
		struct mvm_mem *m = &vm->mem[i];

		if (m->hva)
			continue; /* a previous attempt got this far */
		/* Sparse and lazily backed: a 64 GiB slot costs only what the guest touches. */
		m->hva = mmap(NULL, m->size, PROT_READ | PROT_WRITE,
			      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (m->hva == MAP_FAILED) {
			m->hva = NULL;
			return -errno;
		}
		/* Children must not share (COW) pages KVM maps into our guest. */
		madvise(m->hva, m->size, MADV_DONTFORK);
		if (vm->dirty == MINIVM_DIRTY_BITMAP) {
			m->bitmap = calloc(ALIGN_UP(m->size / PG, 64) / 64, 8);
			if (!m->bitmap)
				return -ENOMEM;
		}
	}

	/* Guest code, GDT and page tables go in before KVM can see the memory. */
	memcpy(sys_page(vm, SYS_CODE), guest_code, sizeof(guest_code));
	write_gdt(vm);
	memset(sys_page(vm, SYS_PML4), 0, (1 + vm->pt_pages) * PG);
	vm->pt_used = 0;
	for (unsigned int i = 0; i < vm->nmem; i++) {
		r = identity_map(vm, vm->mem[i].gpa, vm->mem[i].size);
		if (r)
			return r;
	}

	for (unsigned int i = 0; i < vm->nmem; i++) {
		struct kvm_userspace_memory_region region = {
			.slot = vm->mem[i].id,
			.flags = flags,
			.guest_phys_addr = vm->mem[i].gpa,
			.memory_size = vm->mem[i].size,
			.userspace_addr = (uintptr_t)vm->mem[i].hva,
		};

		if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &region))
			return -errno;
	}
	for (unsigned int i = 0; i < vm->nvcpus; i++) {
		r = setup_vcpu_state(vm, i);
		if (r)
			return r;
	}
	vm->memory_ready = true;
	return 0;
}

void minivm_destroy(struct minivm *vm)
{
	if (!vm)
		return;
	for (unsigned int i = 0; i < MINIVM_MAX_SLOTS + 1; i++) {
		if (vm->mem[i].hva)
			munmap(vm->mem[i].hva, vm->mem[i].size);
		free(vm->mem[i].bitmap);
	}
	for (unsigned int i = 0; i < MINIVM_MAX_VCPUS; i++) {
		struct mvm_vcpu *v = &vm->vcpu[i];

		if (v->ring)
			munmap(v->ring, vm->ring_entries * sizeof(*v->ring));
		if (v->run)
			munmap(v->run, vm->run_size);
		if (v->fd >= 0)
			close(v->fd);
		free(v->pending);
		pthread_mutex_destroy(&v->lock);
	}
	if (vm->vm_fd >= 0)
		close(vm->vm_fd);
	if (vm->kvm_fd >= 0)
		close(vm->kvm_fd);
	free(vm);
}

static struct mvm_mem *find_mem(struct minivm *vm, uint64_t gpa, uint64_t len, bool data_only)
{
	for (unsigned int i = data_only ? 1 : 0; i < vm->nmem; i++) {
		struct mvm_mem *m = &vm->mem[i];

		if (gpa >= m->gpa && gpa - m->gpa < m->size && len <= m->size - (gpa - m->gpa))
			return m;
	}
	return NULL;
}

void *minivm_hva(struct minivm *vm, uint64_t gpa, uint64_t len)
{
	struct mvm_mem *m = vm->memory_ready && !foreign(vm) ? find_mem(vm, gpa, len, false) : NULL;

	return m ? m->hva + (gpa - m->gpa) : NULL;
}

/* Runs the vcpu until the guest reports a finished batch. */
static int run_batch(struct mvm_vcpu *v)
{
	for (;;) {
		if (ioctl(v->fd, KVM_RUN, 0)) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return -errno;
		}
		switch (v->run->exit_reason) {
		case KVM_EXIT_IO:
			if (v->run->io.port == MINIVM_PORT &&
			    v->run->io.direction == KVM_EXIT_IO_OUT)
				return 0;
			break;
		case KVM_EXIT_INTR:
			continue;
		case KVM_EXIT_DIRTY_RING_FULL:
			/* KVM_RUN re-enters the guest fine once the ring has been reset. */
			return -ENOSPC;
		}
		fprintf(stderr, "minivm: unexpected exit %u (internal suberror %u, port 0x%x)\n",
			v->run->exit_reason, v->run->internal.suberror, v->run->io.port);
		return -EPROTO;
	}
}

/* Dirty ring entries KVM has published that nobody has harvested yet (lock held). */
static uint32_t ring_dirty(const struct minivm *vm, const struct mvm_vcpu *v)
{
	uint32_t n = 0;

	while (n < vm->ring_entries) {
		struct kvm_dirty_gfn *e = &v->ring[(v->ring_fetch + n) & (vm->ring_entries - 1)];

		if (!(__atomic_load_n(&e->flags, __ATOMIC_ACQUIRE) & KVM_DIRTY_GFN_F_DIRTY))
			break;
		n++;
	}
	return n;
}

/* Entries taking room in the ring: dirty, plus harvested but perhaps not reset yet. */
static uint32_t ring_used(const struct minivm *vm, struct mvm_vcpu *v)
{
	uint32_t n;

	pthread_mutex_lock(&v->lock);
	n = ring_dirty(vm, v) + (v->ring_fetch - v->ring_unreset);
	pthread_mutex_unlock(&v->lock);
	return n;
}

/* Feeds v->pending to the guest batch by batch. */
static int run_pending(struct minivm *vm, unsigned int idx)
{
	struct mvm_vcpu *v = &vm->vcpu[idx];
	uint64_t *cmd = (uint64_t *)sys_page(vm, SYS_CMD + idx * MINIVM_CMD_PAGES);
	int r;

	for (;;) {
		if (!v->in_batch) {
			size_t n = v->pending_n - v->pending_off;

			if (!n)
				break;
			if (n > MINIVM_CMD_MAX)
				n = MINIVM_CMD_MAX;
			/*
			 * Each write can push one ring entry (on PVM every write does, even to
			 * a page already in the ring), so a batch must fit in what is free.
			 */
			if (vm->ring_entries) {
				uint32_t used = ring_used(vm, v), room = 0;

				if (used + RING_SLACK < vm->ring_entries)
					room = vm->ring_entries - RING_SLACK - used;
				if (!room)
					return -ENOSPC;
				if (n > room)
					n = room;
			}
			cmd[0] = n;
			cmd[1] = v->pending_value;
			memcpy(&cmd[2], v->pending + v->pending_off, n * sizeof(uint64_t));
			v->pending_off += n;
			v->in_batch = true;
		}
		r = run_batch(v);
		/* Stays in_batch: resume just runs again. With one vCPU and nothing to harvest,
		 * KVM's ring is out of step with ours and no harvest will ever make room (with
		 * several, another thread may have harvested and not reset yet). */
		if (r == -ENOSPC)
			return ring_used(vm, v) || vm->nvcpus > 1 ? r : -EOVERFLOW;
		v->in_batch = false;
		if (r)
			goto cleanup;
	}
	r = 0;
cleanup:
	free(v->pending);
	v->pending = NULL;
	v->pending_n = v->pending_off = 0;
	return r;
}

int minivm_vcpu_write(struct minivm *vm, unsigned int idx, const uint64_t *gpas, size_t n,
		      uint64_t value)
{
	struct mvm_vcpu *v = &vm->vcpu[idx < MINIVM_MAX_VCPUS ? idx : 0];

	if (foreign(vm))
		return -EIO;
	if (!vm->memory_ready || idx >= vm->nvcpus)
		return -EINVAL;
	if (v->pending)
		return -EBUSY;
	for (size_t i = 0; i < n; i++) {
		if (!find_mem(vm, gpas[i], 8, true))
			return -EFAULT;
	}
	if (!n)
		return 0;
	/* A copy, so a write interrupted by a full ring can be resumed later. */
	v->pending = malloc(n * sizeof(*gpas));
	if (!v->pending)
		return -ENOMEM;
	memcpy(v->pending, gpas, n * sizeof(*gpas));
	v->pending_n = n;
	v->pending_off = 0;
	v->pending_value = value;
	v->in_batch = false;
	return run_pending(vm, idx);
}

int minivm_vcpu_resume(struct minivm *vm, unsigned int idx)
{
	if (foreign(vm))
		return -EIO;
	if (idx >= vm->nvcpus)
		return -EINVAL;
	return vm->vcpu[idx].pending ? run_pending(vm, idx) : 0;
}

int minivm_guest_write(struct minivm *vm, const uint64_t *gpas, size_t n, uint64_t value)
{
	return minivm_vcpu_write(vm, 0, gpas, n, value);
}

int minivm_resume(struct minivm *vm)
{
	return minivm_vcpu_resume(vm, 0);
}

bool minivm_write_pending(const struct minivm *vm)
{
	return vm->vcpu[0].pending != NULL;
}

unsigned int minivm_nvcpus(const struct minivm *vm)
{
	return vm->nvcpus;
}

int minivm_host_read(struct minivm *vm, uint64_t gpa, uint64_t *value)
{
	void *p = minivm_hva(vm, gpa, sizeof(*value));

	if (foreign(vm))
		return -EIO;
	if (!p)
		return -EFAULT;
	memcpy(value, p, sizeof(*value));
	return 0;
}

struct gfn_vec {
	uint64_t *v;
	size_t n, cap;
};

static int gfn_push(struct gfn_vec *g, uint64_t gfn)
{
	if (g->n == g->cap) {
		size_t cap = g->cap ? g->cap * 2 : 256;
		uint64_t *v = realloc(g->v, cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		g->v = v;
		g->cap = cap;
	}
	g->v[g->n++] = gfn;
	return 0;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static int harvest_bitmap(struct minivm *vm, struct gfn_vec *g)
{
	for (unsigned int i = 0; i < vm->nmem; i++) {
		struct mvm_mem *m = &vm->mem[i];
		uint64_t npages = m->size / PG, words = ALIGN_UP(npages, 64) / 64;
		struct kvm_dirty_log log = { .slot = m->id, .dirty_bitmap = m->bitmap };
		struct kvm_clear_dirty_log clear = {
			.slot = m->id,
			.first_page = 0,
			.num_pages = npages,
			.dirty_bitmap = m->bitmap,
		};
		bool any = false;
		int r;

		memset(m->bitmap, 0, words * 8);
		if (ioctl(vm->vm_fd, KVM_GET_DIRTY_LOG, &log))
			return -errno;
		for (uint64_t w = 0; w < words; w++) {
			for (uint64_t bits = m->bitmap[w]; bits; bits &= bits - 1) {
				r = gfn_push(g, m->gpa / PG + w * 64 + __builtin_ctzll(bits));
				if (r)
					return r;
				any = true;
			}
		}
		/* Clears (and write-protects again) exactly the pages we just reported. */
		if (any && ioctl(vm->vm_fd, KVM_CLEAR_DIRTY_LOG, &clear))
			return -errno;
	}
	return 0;
}

/* Collects one ring's dirty entries into g and flags them for reset; *count gets how many. */
static int collect_ring(struct minivm *vm, struct mvm_vcpu *v, struct gfn_vec *g, uint32_t *count)
{
	int r = 0;

	*count = 0;
	pthread_mutex_lock(&v->lock);
	for (;;) {
		struct kvm_dirty_gfn *e = &v->ring[v->ring_fetch & (vm->ring_entries - 1)];
		struct mvm_mem *m = NULL;

		/* Acquire: the slot/offset KVM wrote before publishing the DIRTY flag. */
		if (!(__atomic_load_n(&e->flags, __ATOMIC_ACQUIRE) & KVM_DIRTY_GFN_F_DIRTY))
			break;
		for (unsigned int i = 0; i < vm->nmem; i++) {
			if (e->slot == vm->mem[i].id) /* as_id 0 in the upper half */
				m = &vm->mem[i];
		}
		if (!m || e->offset >= m->size / PG) {
			fprintf(stderr, "minivm: ring entry for unknown slot 0x%x offset 0x%llx\n",
				e->slot, (unsigned long long)e->offset);
			r = -EPROTO;
			break;
		}
		r = g ? gfn_push(g, m->gpa / PG + e->offset) : 0;
		if (r)
			break;
		__atomic_store_n(&e->flags, KVM_DIRTY_GFN_F_RESET, __ATOMIC_RELEASE);
		v->ring_fetch++;
		/* A full lap without a free entry: KVM may have overwritten some. */
		if (++*count == vm->ring_entries) {
			r = -EOVERFLOW;
			break;
		}
	}
	pthread_mutex_unlock(&v->lock);
	return r;
}

int minivm_reset_rings(struct minivm *vm)
{
	uint32_t upto[MINIVM_MAX_VCPUS];

	if (foreign(vm))
		return -EIO;
	/* Entries flagged before the ioctl begins are all reset by it (KVM resets flagged
	 * entries in order), so that much room is known to be free again afterwards. */
	for (unsigned int i = 0; i < vm->nvcpus; i++)
		upto[i] = __atomic_load_n(&vm->vcpu[i].ring_fetch, __ATOMIC_ACQUIRE);
	if (ioctl(vm->vm_fd, KVM_RESET_DIRTY_RINGS, 0) < 0)
		return -errno;
	for (unsigned int i = 0; i < vm->nvcpus; i++) {
		struct mvm_vcpu *v = &vm->vcpu[i];

		pthread_mutex_lock(&v->lock);
		if ((int32_t)(upto[i] - v->ring_unreset) > 0)
			v->ring_unreset = upto[i];
		pthread_mutex_unlock(&v->lock);
	}
	return 0;
}

int minivm_harvest_vcpu(struct minivm *vm, unsigned int idx, uint64_t **gfns, size_t *n)
{
	struct gfn_vec g = { 0 };
	uint32_t count;
	int r;

	*gfns = NULL;
	*n = 0;
	if (foreign(vm))
		return -EIO;
	if (vm->dirty != MINIVM_DIRTY_RING || idx >= vm->nvcpus || !vm->memory_ready)
		return -EINVAL;
	r = collect_ring(vm, &vm->vcpu[idx], &g, &count);
	if (r) {
		free(g.v);
		return r;
	}
	*gfns = g.v;
	*n = g.n;
	return 0;
}

static int harvest_ring(struct minivm *vm, struct gfn_vec *g)
{
	uint32_t count, total = 0;
	int r = 0, rc;

	for (unsigned int i = 0; i < vm->nvcpus && !r; i++) {
		r = collect_ring(vm, &vm->vcpu[i], g, &count);
		total += count;
	}
	if (r && r != -EOVERFLOW)
		return r;
	/* Collects the RESET entries and write-protects their pages again. */
	rc = total ? minivm_reset_rings(vm) : 0;
	return rc ? rc : r;
}

int minivm_harvest(struct minivm *vm, uint64_t **gfns, size_t *n)
{
	struct gfn_vec g = { 0 };
	size_t out = 0;
	int r;

	*gfns = NULL;
	*n = 0;
	if (foreign(vm))
		return -EIO;
	if (!vm->memory_ready)
		return -EINVAL;
	if (vm->dirty == MINIVM_DIRTY_BITMAP)
		r = harvest_bitmap(vm, &g);
	else if (vm->dirty == MINIVM_DIRTY_RING)
		r = harvest_ring(vm, &g);
	else
		r = -EINVAL;
	if (r)
		goto cleanup;

	if (g.n)
		qsort(g.v, g.n, sizeof(*g.v), cmp_u64);
	for (size_t i = 0; i < g.n; i++) {
		if (!out || g.v[out - 1] != g.v[i])
			g.v[out++] = g.v[i];
	}
	*gfns = out ? g.v : NULL;
	*n = out;
	if (out)
		return 0;
cleanup:
	free(g.v);
	return r;
}

bool minivm_is_system_gfn(const struct minivm *vm, uint64_t gfn)
{
	return gfn >= vm->mem[0].gpa / PG && gfn - vm->mem[0].gpa / PG < vm->mem[0].size / PG;
}

void minivm_system_range(const struct minivm *vm, uint64_t *gpa, uint64_t *size)
{
	*gpa = vm->mem[0].gpa;
	*size = vm->mem[0].size;
}

int minivm_vm_fd(const struct minivm *vm)
{
	return vm->vm_fd;
}

int minivm_vcpu_fd(const struct minivm *vm)
{
	return vm->vcpu[0].fd;
}

uint32_t minivm_ring_entries(const struct minivm *vm)
{
	return vm->ring_entries;
}

bool minivm_ring_acq_rel(const struct minivm *vm)
{
	return vm->ring_acq_rel;
}

int minivm_sync(struct minivm *vm)
{
	uint64_t *gfns = NULL;
	size_t n;
	int err = minivm_harvest(vm, &gfns, &n);

	free(gfns);
	if (!err && vm->dirty == MINIVM_DIRTY_RING)
		err = minivm_reset_rings(vm);
	return err;
}
