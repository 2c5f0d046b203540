// SPDX-License-Identifier: GPL-2.0
/*
 * Conformance: docs/PROTOCOL.md, one case per normative statement (MUST, MUST NOT, SHOULD),
 * named after its section (s4_2_... is section 4.2), against the real service (a private
 * pagetrackd started once for this binary). The appendix of PROTOCOL.md maps every statement
 * to its case here, and lists the statements no case tests.
 *
 * Cases that need a verdict from a real guest run a minivm (dirty ring) and skip where
 * /dev/kvm is missing; the others (framing, errors, PING, command-ID rules, coverage) need
 * only BPF. The service allows one registration per VMM pid, so every case that registers
 * runs in a forked child whose pid is the VMM pid, and reports by exit status.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <grp.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <linux/kvm.h>

#include <pagetrack/client.h>

#include "t.h"
/* Replies to 4096-range requests on a loaded machine: give them time. */
#define SVC_RAW_TIMEOUT_S 20
#include "svc.h"
#include "guest.h"

#define PG	  4096ull
#define SLOT_GPA  (1ull << 30)
#define SLOT_SIZE (64ull << 20)
static const struct pt_reg_slot slot1 = { SLOT_GPA, SLOT_SIZE, 1, PT_REG_SLOT_LOGGED };

/* --- the service of this binary (svc.h), and a guest ------------------------------------- */

static int need_guest(void)
{
	T_REQUIRE(need_ring_guest());
	return need_service();
}

/* A case whose body runs in a forked child (a fresh VMM pid, svc.h's in_child()), once
 * `need` (need_service, or need_guest for a KVM guest too) is met. */
#define FORKED_CASE(name, need)                      \
	static int name##_child(void *unused);       \
	static int name(void)                        \
	{                                            \
		T_REQUIRE(need());                   \
		return in_child(name##_child, NULL); \
	}                                            \
	static int name##_child(void *unused)
#define CHILD_CASE(name) FORKED_CASE(name, need_service)
#define GUEST_CASE(name) FORKED_CASE(name, need_guest)

/* --- raw frames (svc.h: tx, raw_send(), raw_recv(), SEND_EXPECT_*) ------------------------- */

static int send_recv(int fd, size_t n, struct pt_hdr *h, struct pt_msg *m)
{
	if (!n || raw_send(fd, tx, n))
		return -1;
	return raw_recv(fd, h, m);
}

static size_t cmd(unsigned type, uint32_t seq, uint32_t id)
{
	return pt_build_cmd(tx, sizeof(tx), type, seq, id);
}

static size_t ping(uint32_t seq)
{
	return pt_build_empty(tx, sizeof(tx), PT_MSG_PING, seq);
}

/* A connection with this process registered (ring mode, slot1). */
static int registered(struct pt_ack *ack)
{
	int fd = raw_connect();

	if (fd < 0 ||
	    send_expect_ack(
		    fd, pt_build_register(tx, sizeof(tx), 1, getpid(), PT_DIRTY_RING, &slot1, 1), 1,
		    ack, __LINE__)) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	return fd;
}

/* The connection is still usable: a PING gets its ACK. */
static bool alive(int fd)
{
	return !send_expect_ack(fd, ping(999), 999, NULL, __LINE__);
}

/* --- 2. Transport ------------------------------------------------------------------------- */

/* 2: "The first request that touches a VM MUST be REGISTER." */
static int s2_first_request_must_be_register(void)
{
	struct pt_range r = { SLOT_GPA, PG };
	int fd;

	T_REQUIRE(need_service());
	fd = raw_connect();
	CHECK(fd >= 0);
	SEND_EXPECT_ERROR(fd, cmd(PT_MSG_ARM, 1, 2), 1, PT_E_NOT_REGISTERED);
	SEND_EXPECT_ERROR(fd, pt_build_hint(tx, sizeof(tx), 2, 2, &r, 1), 2, PT_E_NOT_REGISTERED);
	SEND_EXPECT_ERROR(fd, pt_build_query(tx, sizeof(tx), 3, 2, PT_Q_HINTS), 3,
			  PT_E_NOT_REGISTERED);
	SEND_EXPECT_ERROR(fd, pt_build_report(tx, sizeof(tx), PT_MSG_REPORT, 4, &r, 1), 4,
			  PT_E_NOT_REGISTERED);
	close(fd);
	return 0;
}

/* 2: "A device SHOULD still match replies to requests by seq": the service processes one
 * connection's requests in order and every reply echoes its request's seq. */
CHILD_CASE(s2_pipelined_replies_in_order_with_seq)
{
	static const uint32_t seqs[] = { 70, 9, 123456, 5 };
	size_t n = 0;
	int fd = registered(NULL);

	CHECK(fd >= 0);
	n += cmd(PT_MSG_ARM, seqs[0], 2);
	n += pt_build_cmd(tx + n, sizeof(tx) - n, PT_MSG_ARM, seqs[1], 0); /* an error */
	n += pt_build_empty(tx + n, sizeof(tx) - n, PT_MSG_PING, seqs[2]);
	n += pt_build_cmd(tx + n, sizeof(tx) - n, PT_MSG_STOP, seqs[3], 2);
	CHECK(!raw_send(fd, tx, n));
	for (unsigned i = 0; i < 4; i++) {
		struct pt_hdr h;
		struct pt_msg m;

		CHECK(raw_recv(fd, &h, &m) == 1);
		CHECKF(h.seq == seqs[i], "reply %u has seq %u, wanted %u", i, h.seq, seqs[i]);
		CHECK(m.type == (i == 1 ? PT_MSG_ERROR : PT_MSG_ACK));
	}
	close(fd);
	return 0;
}

/*
 * 2: "A connection over its uid's limit is answered with one ERROR PT_E_BUSY (seq 0) naming
 * the quota and closed." The device that meets it through the client library gets that code
 * and reason (EBUSY), not a protocol error: uid 65534 fills its connection quota, then a
 * client connects and pings.
 */
static int quota_child(void *unused)
{
	int fds[256], n = 0, err = 0;
	struct pt_client *c;

	CHECK(!setgroups(0, NULL) && !setgid(65534) && !setuid(65534));
	while (n < 256) {
		fds[n] = raw_connect();
		CHECK(fds[n] >= 0);
		if (raw_ping(fds[n], 1)) /* the refusal came instead */
			break;
		n++;
	}
	CHECKF(n < 256, "no connection quota met after %d connections", n);
	c = connect_svc();
	CHECK(c);
	err = pt_client_ping(c);
	CHECKF(err == -EBUSY && pt_client_last_error(c)->code == PT_E_BUSY &&
		       strstr(pt_client_last_error(c)->reason, "quota"),
	       "ping over the quota: %d (%s), code %d: %s", err, strerror(-err),
	       pt_client_last_error(c)->code, pt_client_last_error(c)->reason);
	pt_client_close(c);
	while (n >= 0)
		close(fds[n--]);
	return 0;
}

static int s2_quota_refusal_reaches_device(void)
{
	struct stat dir, sock;
	int rc;

	T_REQUIRE(need_service());
	if (geteuid() != 0)
		return t_skip("needs root to switch to uid 65534");
	CHECK(!stat(svc.dir, &dir) && !stat(svc.socket, &sock));
	CHECK(!chmod(svc.dir, 0755) && !chmod(svc.socket, 0666));
	rc = in_child(quota_child, NULL);
	chmod(svc.dir, dir.st_mode & 07777);
	chmod(svc.socket, sock.st_mode & 07777);
	CHECK(rc == 0);
	return 0;
}

/* --- 3. Framing --------------------------------------------------------------------------- */

/* 3: "Its length MUST be exactly fixed + count * entry_size": else BAD_LENGTH, frame skipped. */
CHILD_CASE(s3_length_must_match_count)
{
	struct pt_range r[2] = { { SLOT_GPA, PG }, { SLOT_GPA + 2 * PG, PG } };
	int fd = registered(NULL);
	size_t n;

	CHECK(fd >= 0);
	SEND_EXPECT_ACK(fd, cmd(PT_MSG_ARM, 2, 2), 2, NULL);
	n = pt_build_hint(tx, sizeof(tx), 3, 2, r, 2);
	((struct pt_hint *)(tx + sizeof(struct pt_hdr)))->count = 1; /* disagrees with len */
	SEND_EXPECT_ERROR(fd, n, 3, PT_E_BAD_LENGTH);
	CHECK(alive(fd));
	close(fd);
	return 0;
}

/* 3: "All fields documented as 0 or reserved MUST be sent as zero and are checked." */
CHILD_CASE(s3_reserved_fields_must_be_zero)
{
	int fd = registered(NULL);
	size_t n;

	CHECK(fd >= 0);
	n = cmd(PT_MSG_ARM, 2, 2);
	((struct pt_cmd *)(tx + sizeof(struct pt_hdr)))->flags = 1;
	SEND_EXPECT_ERROR(fd, n, 2, PT_E_BAD_FIELD);
	/* The refused ARM had no effect: 2 is not blocked. */
	SEND_EXPECT_ACK(fd, cmd(PT_MSG_ARM, 3, 2), 3, NULL);
	close(fd);
	return 0;
}

/* 3: "gpa + len MUST NOT exceed 2^64 - 1": BAD_RANGE, nothing of the frame recorded. */
CHILD_CASE(s3_range_end_must_not_overflow)
{
	struct pt_range r[2] = { { SLOT_GPA, PG }, { ~0ull - PG + 1, 2 * PG } };
	int fd = registered(NULL);
	struct pt_ack ack;

	CHECK(fd >= 0);
	SEND_EXPECT_ACK(fd, cmd(PT_MSG_ARM, 2, 2), 2, NULL);
	SEND_EXPECT_ERROR(fd, pt_build_hint(tx, sizeof(tx), 3, 2, r, 2), 3, PT_E_BAD_RANGE);
	SEND_EXPECT_ACK(fd, pt_build_hint(tx, sizeof(tx), 4, 2, r, 1), 4, &ack);
	CHECK(ack.pages == 1);
	close(fd);
	return 0;
}

/* --- 4.1 REGISTER ------------------------------------------------------------------------- */

/* 4.1: "Slots of the same address space MUST NOT overlap (PT_E_BAD_RANGE)." */
CHILD_CASE(s4_1_slots_must_not_overlap)
{
	struct pt_reg_slot s[2] = { slot1, { SLOT_GPA + SLOT_SIZE - PG, 4 * PG, 2, 0 } };
	int fd = raw_connect();

	CHECK(fd >= 0);
	SEND_EXPECT_ERROR(fd, pt_build_register(tx, sizeof(tx), 1, getpid(), PT_DIRTY_RING, s, 2),
			  1, PT_E_BAD_RANGE);
	/* Another address space (id >> 16) may overlap. */
	s[1].id = 1u << 16 | 2;
	SEND_EXPECT_ACK(fd, pt_build_register(tx, sizeof(tx), 2, getpid(), PT_DIRTY_RING, s, 2), 2,
			NULL);
	close(fd);
	return 0;
}

/* 4.1: coverage carries the bits that make every verdict keep: an unlogged slot is one. */
CHILD_CASE(s4_1_coverage_reports_unlogged_slot)
{
	struct pt_reg_slot s = slot1;
	struct pt_ack ack;
	int fd = raw_connect();

	CHECK(fd >= 0);
	s.flags = 0;
	SEND_EXPECT_ACK(fd, pt_build_register(tx, sizeof(tx), 1, getpid(), PT_DIRTY_RING, &s, 1), 1,
			&ack);
	CHECKF(ack.pages & PT_WHY_UNTRACKED, "coverage %#llx", (unsigned long long)ack.pages);
	close(fd);
	return 0;
}

/*
 * 4.1: learned slots registered before the VMM holds a VM: nothing unknown yet. The service
 * cannot read a root VMM's descriptors once it dropped its capabilities; it knows this one holds
 * no VM because the VMM started after its programs and created none. Start times count in clock
 * ticks (10 ms): the child is forked a few ticks after the service started, or it could not be
 * told from a VMM that was already running.
 */
static int s4_1_learned_slots_before_vm_known_child(void *unused);
static int s4_1_learned_slots_before_vm_known(void)
{
	T_REQUIRE(need_service());
	usleep(30000);
	return in_child(s4_1_learned_slots_before_vm_known_child, NULL);
}

static int s4_1_learned_slots_before_vm_known_child(void *unused)
{
	struct pt_ack ack;
	int fd = raw_connect();

	CHECK(fd >= 0);
	SEND_EXPECT_ACK(fd, pt_build_register(tx, sizeof(tx), 1, getpid(), PT_DIRTY_RING, NULL, 0),
			1, &ack);
	CHECKF(!(ack.pages & PT_WHY_UNKNOWN_MEM), "coverage %#llx", (unsigned long long)ack.pages);
	close(fd);
	return 0;
}

/*
 * 4.1: the same without a guest: the VMM issued KVM_CREATE_VM before REGISTER (on a pipe here,
 * where it fails with ENOTTY; the service sees the ioctl all the same and cannot read this root
 * process's descriptors): its learned registration reports PT_WHY_UNKNOWN_MEM.
 */
CHILD_CASE(s4_1_learned_slots_after_create_vm_unknown_mem)
{
	struct pt_ack ack;
	int fd, p[2];

	CHECK(!pipe(p));
	CHECK(ioctl(p[0], KVM_CREATE_VM, 0) < 0 && errno == ENOTTY);
	fd = raw_connect();
	CHECK(fd >= 0);
	SEND_EXPECT_ACK(fd, pt_build_register(tx, sizeof(tx), 1, getpid(), PT_DIRTY_RING, NULL, 0),
			1, &ack);
	CHECKF(ack.pages & PT_WHY_UNKNOWN_MEM, "coverage %#llx", (unsigned long long)ack.pages);
	close(fd);
	return 0;
}

/* 4.1: "A device that registers with nslots = 0 MUST do so before its VMM creates the VM's
 * memslots": one that registers later is told, in the coverage and in every verdict. */
GUEST_CASE(s4_1_learned_slots_after_vm_unknown_mem)
{
	struct minivm_opts o = { .dirty = MINIVM_DIRTY_RING, .nslots = 1 };
	struct pt_client_result res;
	struct pt_client *c;
	struct minivm *m;

	o.slots[0] = (struct minivm_slot){ SLOT_GPA, SLOT_SIZE, 1 };
	CHECK(!minivm_create(&m, &o));
	c = pt_client_connect(svc.socket);
	CHECK(c);
	CHECK(!pt_client_register(c, 0, PT_DIRTY_RING, NULL, 0, NULL));
	CHECK(pt_client_coverage(c) & PT_WHY_UNKNOWN_MEM);
	CHECK(!pt_client_arm(c, 2));
	CHECK(!minivm_sync(m));
	CHECK(!pt_client_query(c, 2, PT_Q_HINTS, &res));
	CHECK(res.v.unsure_reason & PT_WHY_UNKNOWN_MEM);
	pt_client_result_free(&res);
	pt_client_close(c);
	minivm_destroy(m);
	return 0;
}

/*
 * 2: "A second REGISTER on the same connection gets PT_E_STATE", and 7: a refused frame "has
 * no effect": a second REGISTER2 of the userfaultfd mode on a connection that holds the VM
 * leaves the write log as it was (the pages hinted stay free).
 */
/*
 * The userfaultfd mode with this process as the VMM (ARM is the sync: no guest needed): 64
 * populated pages of its memory registered as slot 1 at UFFD_GPA. 0, T_SKIP or -1.
 */
#define UFFD_GPA   (1ull << 32)
#define UFFD_PAGES 64

struct uffd_vm {
	struct pt_reg_slot2 sl;
	struct pt_client *c;
	char *mem;
	int uffd;
};

static int uffd_vm_register(struct uffd_vm *v)
{
	int err;

	*v = (struct uffd_vm){ .sl = { .gpa = UFFD_GPA, .size = UFFD_PAGES * PG, .id = 1 },
			       .c = connect_svc(),
			       .uffd = -1 };
	v->mem = mmap(NULL, UFFD_PAGES * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		      -1, 0);
	CHECK(v->c && v->mem != MAP_FAILED);
	memset(v->mem, 1, UFFD_PAGES * PG);
	v->sl.hva = (uintptr_t)v->mem;
	err = pt_client_register_uffd(v->c, &v->sl, 1, -1, &v->uffd, NULL);
	if (err == -EOPNOTSUPP)
		return t_skip("no asynchronous userfaultfd write-protect");
	CHECKF(!err, "register: %s (%s)", strerror(-err), pt_client_last_error(v->c)->reason);
	return 0;
}

static void uffd_vm_close(struct uffd_vm *v)
{
	pt_client_close(v->c);
	if (v->uffd >= 0)
		close(v->uffd);
	munmap(v->mem, UFFD_PAGES * PG);
}

CHILD_CASE(s4_1a_second_register2_no_effect)
{
	struct pt_range r = { UFFD_GPA, 8 * PG };
	struct pt_client_result res;
	struct uffd_vm v;
	int err = uffd_vm_register(&v);
	struct pt_client *c = v.c;

	if (err)
		return err;
	CHECK(!pt_client_arm(c, 2));
	CHECK(!pt_client_hint(c, 2, &r, 1));
	err = pt_client_register_uffd(c, &v.sl, 1, -1, &v.uffd, NULL);
	CHECKF(err == -EBADFD && pt_client_last_error(c)->code == PT_E_STATE,
	       "second REGISTER2: %d %s", err, pt_client_last_error(c)->reason);
	CHECK(!pt_client_query(c, 2, PT_Q_HINTS, &res));
	CHECKF(!res.v.unsure_reason && res.v.free == 8 && res.v.kept_written == 0,
	       "why %#x free %llu written %llu", res.v.unsure_reason,
	       (unsigned long long)res.v.free, (unsigned long long)res.v.kept_written);
	pt_client_result_free(&res);
	uffd_vm_close(&v);
	return 0;
}

/* --- 4.2 ARM, STOP, DONE ------------------------------------------------------------------ */

/* 4.2: "cmd_id MUST be >= 2". */
CHILD_CASE(s4_2_cmd_id_must_be_at_least_2)
{
	int fd = registered(NULL);

	CHECK(fd >= 0);
	for (uint32_t id = 0; id < 2; id++) {
		SEND_EXPECT_ERROR(fd, cmd(PT_MSG_ARM, 10 + id, id), 10 + id, PT_E_RESERVED_CMD);
		SEND_EXPECT_ERROR(fd, cmd(PT_MSG_STOP, 20 + id, id), 20 + id, PT_E_RESERVED_CMD);
		SEND_EXPECT_ERROR(fd, cmd(PT_MSG_DONE, 30 + id, id), 30 + id, PT_E_RESERVED_CMD);
	}
	close(fd);
	return 0;
}

/* Runs ARM/STOP/DONE steps on @fd ("A10" arm 10, "S10" stop 10, "D10" done 10), seq from
 * *seq on. Each must ACK, except a step written "S10=6", which must be ERROR 6. */
static int id_steps(int fd, uint32_t *seq, const char *const *steps, unsigned n)
{
	for (unsigned i = 0; i < n; i++, (*seq)++) {
		unsigned type = steps[i][0] == 'A'   ? PT_MSG_ARM
				: steps[i][0] == 'S' ? PT_MSG_STOP
						     : PT_MSG_DONE;
		const char *want = strchr(steps[i], '=');
		size_t len = cmd(type, *seq, (uint32_t)atoi(steps[i] + 1));

		if (want)
			CHECKF(send_expect_error(fd, len, *seq, atoi(want + 1), __LINE__) == 0,
			       "step %u (%s)", i, steps[i]);
		else
			CHECKF(send_expect_ack(fd, len, *seq, NULL, __LINE__) == 0, "step %u (%s)",
			       i, steps[i]);
	}
	return 0;
}

/* Runs ARM/STOP steps ("A10" arm 10, "S10" stop 10): each must ACK, the last step's result
 * must be `last` (0: ACK, else that error code). */
static int id_sequence(const char *const *steps, unsigned n, int last)
{
	int fd = registered(NULL);
	uint32_t seq = 100;

	CHECK(fd >= 0);
	for (unsigned i = 0; i < n; i++, seq++) {
		unsigned type = steps[i][0] == 'A' ? PT_MSG_ARM : PT_MSG_STOP;
		size_t len = cmd(type, seq, (uint32_t)atoi(steps[i] + 1));

		if (i + 1 == n && last)
			SEND_EXPECT_ERROR(fd, len, seq, last);
		else
			SEND_EXPECT_ACK(fd, len, seq, NULL);
	}
	close(fd);
	return 0;
}

/* 4.2: "N MUST NOT be an ID armed since the last STOP": the virtio rule, exactly. */
CHILD_CASE(s4_2_no_reuse_before_stop)
{
	static const char *const a[] = { "A10", "S10", "A10" };
	static const char *const b[] = { "A10", "S10", "A11", "A10" };
	static const char *const c[] = { "A10", "A11", "S11", "A10" };
	static const char *const d[] = { "A10", "A11", "A10" };
	static const char *const e[] = { "A10", "A10" };

	CHECK(!id_sequence(a, 3, 0));
	CHECK(!id_sequence(b, 4, 0));
	CHECK(!id_sequence(c, 4, 0));
	CHECK(!id_sequence(d, 3, PT_E_CMD_REUSE));
	CHECK(!id_sequence(e, 2, PT_E_CMD_REUSE));
	return 0;
}

/* 4.2: the blocked-ID limit is documented with its recovery, and a counting device whose
 * guest never sends STOP is never wedged. */
CHILD_CASE(s4_2_blocked_id_limit_and_recovery)
{
	int fd = registered(NULL);
	uint32_t seq = 10, id;

	CHECK(fd >= 0);
	/* A counting device: thousands of ARMs without a STOP. */
	for (id = 2; id < 3002; id++, seq++)
		SEND_EXPECT_ACK(fd, cmd(PT_MSG_ARM, seq, id), seq, NULL);
	SEND_EXPECT_ACK(fd, cmd(PT_MSG_STOP, seq, id - 1), seq, NULL);
	seq++;
	/* 64 disjoint runs (even IDs), then a 65th: BUSY, nothing changes. */
	for (id = 10000; id < 10128; id += 2, seq++)
		SEND_EXPECT_ACK(fd, cmd(PT_MSG_ARM, seq, id), seq, NULL);
	SEND_EXPECT_ERROR(fd, cmd(PT_MSG_ARM, seq, 20000), seq, PT_E_BUSY);
	seq++;
	/* Recovery: an ID adjacent to a used one. */
	SEND_EXPECT_ACK(fd, cmd(PT_MSG_ARM, seq, 10127), seq, NULL);
	seq++;
	SEND_EXPECT_ERROR(fd, cmd(PT_MSG_ARM, seq, 20000), seq, PT_E_BUSY);
	seq++;
	/* 10001 joins the runs of 10000 and 10002: room again for a new run. */
	SEND_EXPECT_ACK(fd, cmd(PT_MSG_ARM, seq, 10001), seq, NULL);
	seq++;
	SEND_EXPECT_ACK(fd, cmd(PT_MSG_ARM, seq, 20000), seq, NULL);
	seq++;
	SEND_EXPECT_ACK(fd, cmd(PT_MSG_STOP, seq, 20000), seq, NULL);
	seq++;
	SEND_EXPECT_ACK(fd, cmd(PT_MSG_ARM, seq, 10000), seq, NULL);
	close(fd);
	return 0;
}

/* 4.2: STOP and DONE of an ID that is not current are STALE; STOP after DONE is ACKed. */
CHILD_CASE(s4_2_stop_done_current_only)
{
	int fd = registered(NULL);

	CHECK(fd >= 0);
	SEND_EXPECT_ERROR(fd, cmd(PT_MSG_STOP, 2, 5), 2, PT_E_STALE_CMD); /* nothing armed */
	SEND_EXPECT_ACK(fd, cmd(PT_MSG_ARM, 3, 5), 3, NULL);
	SEND_EXPECT_ERROR(fd, cmd(PT_MSG_STOP, 4, 6), 4, PT_E_STALE_CMD);
	SEND_EXPECT_ERROR(fd, cmd(PT_MSG_DONE, 5, 6), 5, PT_E_STALE_CMD);
	SEND_EXPECT_ACK(fd, cmd(PT_MSG_DONE, 6, 5), 6, NULL);
	SEND_EXPECT_ACK(fd, cmd(PT_MSG_STOP, 7, 5), 7, NULL);
	SEND_EXPECT_ACK(fd, cmd(PT_MSG_STOP, 8, 5), 8, NULL);
	close(fd);
	return 0;
}

/*
 * 4.2: "The blocked set ... a takeover by another connection keeps it": a device that
 * registers the VM from a new connection while the old one is open (without the token, so the
 * VM starts afresh; or with another memory map) still may not re-arm an ID the guest may hold
 * buffers of. Virtio: "The device MUST NOT reuse a command ID until it has received an output
 * buffer containing VIRTIO_BALLOON_CMD_ID_STOP from the driver."
 */
CHILD_CASE(s4_2_takeover_keeps_blocked_ids)
{
	static const char *const first[] = { "A10", "A11" };
	static const char *const second[] = { "A10=7", "A11=7", "A12" };
	static const char *const third[] = { "A12=7", "A10=7", "A13", "S13", "A10" };
	struct pt_reg_slot other = slot1;
	int fd1 = registered(NULL), fd2 = -1, fd3;
	uint32_t seq = 10;

	CHECK(fd1 >= 0);
	CHECK(!id_steps(fd1, &seq, first, 2));
	fd2 = registered(NULL); /* afresh: no token */
	CHECK(fd2 >= 0);
	CHECK(!id_steps(fd2, &seq, second, 3));
	/* Registered again with another memory map: the same guest, the same rule. */
	other.size /= 2;
	fd3 = raw_connect();
	CHECK(fd3 >= 0);
	SEND_EXPECT_ACK(fd3,
			pt_build_register(tx, sizeof(tx), seq, getpid(), PT_DIRTY_RING, &other, 1),
			seq, NULL);
	seq++;
	CHECK(!id_steps(fd3, &seq, third, 5));
	close(fd1);
	close(fd2);
	close(fd3);
	return 0;
}

/*
 * 4.2: STOP(N) names the round the driver's STOP buffer ends. The STOP of a round whose ID is
 * no longer current (the device published 11 while the driver still hinted under 10) is
 * PT_E_STALE_CMD and unblocks nothing: the driver may still send buffers under 11.
 */
CHILD_CASE(s4_2_stop_of_an_earlier_round_unblocks_nothing)
{
	static const char *const steps[] = { "A10",   "A11", "S10=6", "A10=7",
					     "A11=7", "S11", "A10",   "A11" };
	int fd = registered(NULL);
	uint32_t seq = 10;

	CHECK(fd >= 0);
	CHECK(!id_steps(fd, &seq, steps, 8));
	close(fd);
	return 0;
}

/*
 * 4.2: "STOP(N) after DONE(N) is ACKed": the state stays DONE (nothing may be discarded), and,
 * being the driver's STOP, it unblocks the IDs like any STOP.
 */
CHILD_CASE(s4_2_stop_after_done_stays_done_unblocks)
{
	static const char *const steps[] = { "A10", "A11", "D11", "S11" };
	static const char *const after[] = { "A10" };
	struct pt_hdr h;
	struct pt_msg m;
	int fd = registered(NULL);
	uint32_t seq = 10;

	CHECK(fd >= 0);
	CHECK(!id_steps(fd, &seq, steps, 4));
	CHECK(send_recv(fd, pt_build_query(tx, sizeof(tx), seq, 11, PT_Q_HINTS), &h, &m) == 1);
	CHECK(m.type == PT_MSG_VERDICT && h.seq == seq);
	CHECKF(m.verdict->unsure_reason & PT_WHY_DONE, "unsure_reason %#x",
	       m.verdict->unsure_reason);
	seq++;
	CHECK(!id_steps(fd, &seq, after, 1));
	close(fd);
	return 0;
}

/* --- 4.3 HINT ----------------------------------------------------------------------------- */

/* 4.3 (virtio: "The device MUST ignore pages that are provided with a command ID that does
 * not match the current"): STALE_CMD, the frame skipped, the connection goes on. */
CHILD_CASE(s4_3_stale_hints_ignored)
{
	struct pt_range r = { SLOT_GPA, 8 * PG };
	struct pt_client_result res;
	struct pt_client *c = pt_client_connect(svc.socket);

	CHECK(c && !pt_client_register(c, 0, PT_DIRTY_RING, &slot1, 1, NULL));
	CHECK(!pt_client_arm(c, 10));
	CHECK(pt_client_hint(c, 11, &r, 1) < 0);
	CHECK(pt_client_last_error(c)->code == PT_E_STALE_CMD);
	CHECK(!pt_client_done(c, 10));
	CHECK(pt_client_hint(c, 10, &r, 1) < 0); /* after DONE too */
	CHECK(pt_client_last_error(c)->code == PT_E_STALE_CMD);
	CHECK(!pt_client_query(c, 10, PT_Q_HINTS, &res));
	CHECK(res.v.hinted == 0);
	pt_client_result_free(&res);
	pt_client_close(c);
	return 0;
}

/* 4.3: "`count` may be 0": an empty HINT is ACKed with nothing recorded; under an ID that is
 * not current it is PT_E_STALE_CMD like any other. */
CHILD_CASE(s4_3_empty_hint)
{
	struct pt_ack ack;
	int fd = registered(NULL);

	CHECK(fd >= 0);
	SEND_EXPECT_ACK(fd, cmd(PT_MSG_ARM, 2, 2), 2, NULL);
	SEND_EXPECT_ACK(fd, pt_build_hint(tx, sizeof(tx), 3, 2, NULL, 0), 3, &ack);
	CHECK(ack.value32 == 0 && ack.pages == 0 && ack.ignored == 0);
	SEND_EXPECT_ERROR(fd, pt_build_hint(tx, sizeof(tx), 4, 3, NULL, 0), 4, PT_E_STALE_CMD);
	close(fd);
	return 0;
}

/* 4.3: HINT after STOP, with the ID still current, is recorded. */
CHILD_CASE(s4_3_hint_after_stop_recorded)
{
	struct pt_range r = { SLOT_GPA, 8 * PG };
	struct pt_client_result res;
	struct pt_client *c = pt_client_connect(svc.socket);

	CHECK(c && !pt_client_register(c, 0, PT_DIRTY_RING, &slot1, 1, NULL));
	CHECK(!pt_client_arm(c, 10));
	CHECK(!pt_client_stop(c, 10));
	CHECK(!pt_client_hint(c, 10, &r, 1));
	CHECK(!pt_client_query(c, 10, PT_Q_HINTS, &res));
	CHECK(res.v.hinted == 8);
	pt_client_result_free(&res);
	pt_client_close(c);
	return 0;
}

/* --- 4.4 QUERY, 8 Safety ------------------------------------------------------------------ */

/* 4.2/8: after DONE(N) nothing hinted under N may be discarded: QUERY(N) confirms nothing. */
CHILD_CASE(s8_nothing_free_after_done)
{
	struct pt_range r = { SLOT_GPA, 8 * PG };
	struct pt_client_result res;
	struct pt_client *c = pt_client_connect(svc.socket);

	CHECK(c && !pt_client_register(c, 0, PT_DIRTY_RING, &slot1, 1, NULL));
	CHECK(!pt_client_arm(c, 7));
	CHECK(!pt_client_hint(c, 7, &r, 1));
	CHECK(!pt_client_done(c, 7));
	CHECK(!pt_client_query(c, 7, PT_Q_HINTS, &res));
	CHECK(res.v.free == 0 && res.v.nranges == 0 && res.v.kept_unsure == 8 &&
	      (res.v.unsure_reason & PT_WHY_DONE));
	pt_client_result_free(&res);
	pt_client_close(c);
	return 0;
}

/* 4.4: "the device MUST then treat every inflated page as possibly reclaimed" needs the
 * service to say when its list may be short: without a sync, unsure_reason is set. */
CHILD_CASE(s4_4_reclaimed_list_says_when_short)
{
	struct pt_range r = { SLOT_GPA, 8 * PG };
	struct pt_client_result res;
	struct pt_client *c = pt_client_connect(svc.socket);

	CHECK(c && !pt_client_register(c, 0, PT_DIRTY_RING, &slot1, 1, NULL));
	CHECK(!pt_client_arm(c, 2));
	CHECK(!pt_client_inflate(c, &r, 1, NULL));
	CHECK(!pt_client_query(c, 0, PT_Q_RECLAIMED, &res));
	CHECK(res.v.hinted == 8 && res.v.unsure_reason != 0);
	pt_client_result_free(&res);
	pt_client_close(c);
	return 0;
}

/* --- 4.5 REPORT ----------------------------------------------------------------------------- */

/* 4.5: REPORT holds at most 32 ranges: BAD_LENGTH, skipped. */
CHILD_CASE(s4_5_report_at_most_32)
{
	struct pt_range r[33];
	int fd = registered(NULL);

	CHECK(fd >= 0);
	for (int i = 0; i < 33; i++)
		r[i] = (struct pt_range){ SLOT_GPA + i * 2 * PG, PG };
	SEND_EXPECT_ERROR(fd, pt_build_report(tx, sizeof(tx), PT_MSG_REPORT, 5, r, 33), 5,
			  PT_E_BAD_LENGTH);
	CHECK(alive(fd));
	close(fd);
	return 0;
}

/* --- 4.6 PING ------------------------------------------------------------------------------- */

/* 4.6: PING is ACKed before REGISTER (value32 0), after it (1), and after the VM moved to
 * another connection (0). */
CHILD_CASE(s4_6_ping_says_registration)
{
	struct pt_ack ack;
	int fd = raw_connect(), fd2;

	CHECK(fd >= 0);
	SEND_EXPECT_ACK(fd, ping(1), 1, &ack);
	CHECK(ack.value32 == 0 && ack.status == 0 && ack.pages == 0);
	SEND_EXPECT_ACK(fd,
			pt_build_register(tx, sizeof(tx), 2, getpid(), PT_DIRTY_RING, &slot1, 1), 2,
			NULL);
	SEND_EXPECT_ACK(fd, ping(3), 3, &ack);
	CHECK(ack.value32 == 1);
	fd2 = registered(NULL); /* the device reconnected: the VM moves */
	CHECK(fd2 >= 0);
	SEND_EXPECT_ACK(fd, ping(4), 4, &ack);
	CHECK(ack.value32 == 0);
	SEND_EXPECT_ACK(fd2, ping(5), 5, &ack);
	CHECK(ack.value32 == 1);
	close(fd);
	close(fd2);
	return 0;
}

/* --- 4.7 WR_READ ---------------------------------------------------------------------------- */

/* 4.7: "WR_READ with more than max_ranges ranges is PT_E_BUSY", reachable, and skipped. */
CHILD_CASE(s4_7_wr_read_over_max_ranges_busy)
{
	struct pt_wr_caps caps;
	struct pt_range *r;
	struct pt_hdr h;
	struct pt_msg m;
	int fd = registered(NULL);

	CHECK(fd >= 0);
	CHECK(send_recv(fd, pt_build_empty(tx, sizeof(tx), PT_MSG_WR_CAPS, 6), &h, &m) == 1);
	CHECK(m.type == PT_MSG_WR_CAPS_REPLY && h.seq == 6);
	caps = *m.caps;
	/* One more than the limit still fits in a frame: the limit is reachable. */
	CHECK(caps.max_ranges >= 1 && caps.max_ranges < PT_MAX_HINTS);
	r = calloc(caps.max_ranges + 1, sizeof(*r));
	CHECK(r);
	for (uint32_t i = 0; i <= caps.max_ranges; i++)
		r[i] = (struct pt_range){ SLOT_GPA + (uint64_t)i * 2 * PG, PG };
	SEND_EXPECT_ERROR(
		fd, pt_build_report(tx, sizeof(tx), PT_MSG_WR_READ, 7, r, caps.max_ranges + 1), 7,
		PT_E_BUSY);
	CHECK(alive(fd));
	free(r);
	close(fd);
	return 0;
}

/*
 * 4.7: WR_RECORDS "hinted = pages asked about", "free = the rest", and the ranges list every
 * written page: a page asked twice (overlapping asked ranges) is one page asked, so that
 * hinted = free + kept_written + kept_unsure as in a verdict. In the userfaultfd mode (ARM is
 * the sync: no guest needed) this process is the VMM and writes one page of its memory.
 */
CHILD_CASE(s4_7_wr_records_count_each_page_once)
{
	struct pt_range ask[2] = { { UFFD_GPA, 4 * PG }, { UFFD_GPA + 2 * PG, 4 * PG } };
	struct pt_client_result res;
	uint64_t listed = 0;
	struct uffd_vm v;
	int err = uffd_vm_register(&v);
	struct pt_client *c = v.c;

	if (err)
		return err;
	CHECK(!pt_client_arm(c, 2));
	v.mem[3 * PG] = 2; /* asked twice */
	CHECK(!pt_client_wr_read(c, ask, 2, &res));
	for (uint32_t i = 0; i < res.v.nranges; i++)
		listed += res.ranges[i].len / PG;
	CHECKF(!res.v.unsure_reason && res.v.hinted == 6 && res.v.kept_written == 1 &&
		       res.v.free == 5 && res.v.kept_unsure == 0 && listed == 1,
	       "why %#x hinted %llu free %llu written %llu unsure %llu listed %llu",
	       res.v.unsure_reason, (unsigned long long)res.v.hinted,
	       (unsigned long long)res.v.free, (unsigned long long)res.v.kept_written,
	       (unsigned long long)res.v.kept_unsure, (unsigned long long)listed);
	pt_client_result_free(&res);
	uffd_vm_close(&v);
	return 0;
}

/*
 * 4.7: "a reader MUST treat unsure as written": the service lists every asked page when it
 * cannot vouch for the log (here: no sync after ARM). 6: "it SHOULD keep them near 64 KiB":
 * 4096 disjoint ranges come in several frames of at most 64 KiB, MORE on all but the last,
 * every frame with the request's seq, totals in the last, ranges ascending and disjoint.
 */
CHILD_CASE(s6_multi_frame_reply_near_64k)
{
	const uint32_t n = 4096;
	struct pt_range *r = calloc(n, sizeof(*r));
	uint64_t listed = 0, last_end = 0;
	unsigned frames = 0;
	struct pt_hdr h;
	struct pt_msg m;
	int fd = registered(NULL);

	CHECK(r && fd >= 0);
	SEND_EXPECT_ACK(fd, cmd(PT_MSG_ARM, 2, 2), 2, NULL);
	for (uint32_t i = 0; i < n; i++) /* descending: the reply must still ascend */
		r[i] = (struct pt_range){ SLOT_GPA + (uint64_t)(n - 1 - i) * 2 * PG, PG };
	CHECK(!raw_send(fd, tx, pt_build_report(tx, sizeof(tx), PT_MSG_WR_READ, 77, r, n)));
	do {
		CHECK(raw_recv(fd, &h, &m) == 1 && m.type == PT_MSG_WR_RECORDS && h.seq == 77);
		CHECKF(sizeof(h) + h.len <= 65536, "frame of %zu bytes", sizeof(h) + h.len);
		for (uint32_t i = 0; i < m.count; i++) {
			CHECK(m.ranges[i].gpa >= last_end);
			last_end = m.ranges[i].gpa + m.ranges[i].len;
			listed += m.ranges[i].len / PG;
		}
		frames++;
	} while (h.flags & PT_F_MORE);
	CHECK(frames >= 2);
	CHECK(m.verdict->unsure_reason & PT_WHY_NO_SYNC);
	CHECK(m.verdict->hinted == n && m.verdict->kept_unsure == n && listed == n);
	free(r);
	close(fd);
	return 0;
}

/* The ranges of a reply ascend and do not overlap. */
static bool ascending(const struct pt_client_result *res)
{
	for (uint32_t i = 1; i < res->v.nranges; i++)
		if (res->ranges[i].gpa < res->ranges[i - 1].gpa + res->ranges[i - 1].len)
			return false;
	return true;
}

/*
 * 6: "Ranges are disjoint and in ascending order", also when the device registered its slots
 * in another order (here the slot at 2 GiB before the one at 1 GiB): a VERDICT and WR_RECORDS
 * listing pages of both. Userfaultfd mode (ARM is the sync, no guest): this process is the
 * VMM and writes page 5 of each slot.
 */
CHILD_CASE(s6_ranges_ascend_across_slots)
{
	const uint64_t hi = 2ull << 30, lo = 1ull << 30, n = 64;
	struct pt_range all[2] = { { lo, n * PG }, { hi, n * PG } };
	struct pt_reg_slot2 sl[2] = { { .gpa = hi, .size = n * PG, .id = 1 },
				      { .gpa = lo, .size = n * PG, .id = 2 } };
	struct pt_client_result res;
	struct pt_client *c = connect_svc();
	char *mem =
		mmap(NULL, 2 * n * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int uffd = -1, err;

	CHECK(c && mem != MAP_FAILED);
	memset(mem, 1, 2 * n * PG);
	sl[0].hva = (uintptr_t)mem;
	sl[1].hva = (uintptr_t)mem + n * PG;
	err = pt_client_register_uffd(c, sl, 2, -1, &uffd, NULL);
	if (err == -EOPNOTSUPP)
		return t_skip("no asynchronous userfaultfd write-protect");
	CHECKF(!err, "register: %s (%s)", strerror(-err), pt_client_last_error(c)->reason);
	CHECK(!pt_client_arm(c, 2));
	CHECK(!pt_client_hint(c, 2, all, 2));
	mem[5 * PG] = 2;
	mem[(n + 5) * PG] = 2;
	err = pt_client_query(c, 2, PT_Q_HINTS, &res);
	CHECKF(!err, "query: %d %s", err, pt_client_last_error(c)->reason);
	CHECKF(!res.v.unsure_reason && res.v.free == 2 * n - 2 && ascending(&res),
	       "why %#x free %llu, %u ranges, first at %#llx", res.v.unsure_reason,
	       (unsigned long long)res.v.free, res.v.nranges,
	       (unsigned long long)(res.v.nranges ? res.ranges[0].gpa : 0));
	pt_client_result_free(&res);
	err = pt_client_wr_read(c, all, 2, &res);
	CHECKF(!err, "write records: %d %s", err, pt_client_last_error(c)->reason);
	CHECKF(res.v.nranges == 2 && res.ranges[0].gpa == lo + 5 * PG &&
		       res.ranges[1].gpa == hi + 5 * PG,
	       "%u ranges, first at %#llx", res.v.nranges,
	       (unsigned long long)(res.v.nranges ? res.ranges[0].gpa : 0));
	pt_client_result_free(&res);
	pt_client_close(c);
	close(uffd);
	munmap(mem, 2 * n * PG);
	return 0;
}

/*
 * 6: "A device MUST treat a reply that breaks this [ranges listing exactly free, resp.
 * kept_written + kept_unsure pages, disjoint and ascending] as keep everything": the client
 * library, a device, fails such a reply (EPROTO) instead of handing it on. A fake service
 * (a socket of this test) has the reply written before the request is sent (a fresh client's
 * first seq is 1).
 */
static int broken_reply(unsigned type, const struct pt_verdict *v, const struct pt_range *r)
{
	char path[64];
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct pt_client_result res;
	struct pt_range ask = { 0, 16 * PG };
	struct pt_client *c;
	int lfd, sfd, err;

	snprintf(path, sizeof(path), "/tmp/ptconf-fake.%d.sock", (int)getpid());
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	unlink(path);
	lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) || listen(lfd, 1))
		return -1000;
	c = pt_client_connect(path);
	sfd = accept(lfd, NULL, NULL);
	close(lfd);
	unlink(path);
	if (!c || sfd < 0 || raw_send(sfd, tx, pt_build_verdict(tx, sizeof(tx), type, 1, 0, v, r)))
		return -1000;
	pt_client_set_timeout(c, 5000);
	if (type == PT_MSG_VERDICT)
		err = pt_client_query(c, 2, PT_Q_HINTS, &res);
	else
		err = pt_client_wr_read(c, &ask, 1, &res);
	if (!err)
		pt_client_result_free(&res);
	pt_client_close(c);
	close(sfd);
	return err;
}

static int s6_device_fails_broken_reply(void)
{
	struct pt_range up[2] = { { 0, PG }, { 8 * PG, PG } }, down[2] = { up[1], up[0] };
	struct pt_verdict v = {
		.cmd_id = 2, .hinted = 4, .free = 2, .kept_written = 2, .nranges = 2
	};
	int err;

	/* The control: a reply that keeps the rules is taken. */
	err = broken_reply(PT_MSG_VERDICT, &v, up);
	CHECKF(err == 0, "a sound verdict: %d", err);
	err = broken_reply(PT_MSG_VERDICT, &v, down);
	CHECKF(err == -EPROTO, "a verdict with descending ranges: %d", err);
	v.nranges = 1; /* one page listed, two free */
	err = broken_reply(PT_MSG_VERDICT, &v, up);
	CHECKF(err == -EPROTO, "a verdict listing fewer pages than free: %d", err);
	/* WR_RECORDS lists kept_written + kept_unsure pages: here 2, listed 1. */
	v = (struct pt_verdict){ .hinted = 16, .free = 14, .kept_written = 2, .nranges = 1 };
	err = broken_reply(PT_MSG_WR_RECORDS, &v, up);
	CHECKF(err == -EPROTO, "write records listing fewer pages than written: %d", err);
	v.nranges = 2;
	err = broken_reply(PT_MSG_WR_RECORDS, &v, down);
	CHECKF(err == -EPROTO, "write records with descending ranges: %d", err);
	err = broken_reply(PT_MSG_WR_RECORDS, &v, up);
	CHECKF(err == 0, "sound write records: %d", err);
	return 0;
}

/* --- 7. Errors ------------------------------------------------------------------------------ */

/* 7 "close": a header that cannot be trusted gets its ERROR, then the connection closes. */
static int s7_bad_header_closes(void)
{
	struct pt_hdr h = { 0x12345678, 1, PT_MSG_PING, 0, 0, 4242 };
	struct pt_hdr rh;
	struct pt_msg m;
	uint8_t b;
	int fd;

	T_REQUIRE(need_service());
	fd = raw_connect();
	CHECK(fd >= 0);
	CHECK(!raw_send(fd, &h, sizeof(h)));
	CHECK(raw_recv(fd, &rh, &m) == 1 && m.type == PT_MSG_ERROR &&
	      m.error->code == PT_E_BAD_MAGIC);
	CHECK(recv(fd, &b, 1, 0) == 0);
	close(fd);
	/* "the first failing check in this order is reported: header (magic, version, type, len
	 * limit, ...": a reply type from the device with an oversized len is BAD_TYPE. */
	h = (struct pt_hdr){ PT_PROTO_MAGIC, 1, PT_MSG_ACK, 0, PT_MAX_PAYLOAD + 1, 4343 };
	fd = raw_connect();
	CHECK(fd >= 0);
	CHECK(!raw_send(fd, &h, sizeof(h)));
	CHECK(raw_recv(fd, &rh, &m) == 1 && m.type == PT_MSG_ERROR && rh.seq == 4343);
	CHECKF(m.error->code == PT_E_BAD_TYPE, "got %s: %.*s", pt_err_str(m.error->code),
	       (int)m.reason_len, m.reason);
	CHECK(recv(fd, &b, 1, 0) == 0);
	close(fd);
	return 0;
}

/* 7 "skip": a frame that fails the payload checks has no effect and the connection goes on;
 * the first failing check is reported (fields in offset order). */
CHILD_CASE(s7_bad_payload_skipped)
{
	struct pt_range bad[2] = { { SLOT_GPA, PG }, { SLOT_GPA + 1, PG } };
	int fd = registered(NULL);
	struct pt_ack ack;
	size_t n;

	CHECK(fd >= 0);
	SEND_EXPECT_ACK(fd, cmd(PT_MSG_ARM, 2, 2), 2, NULL);
	SEND_EXPECT_ERROR(fd, pt_build_hint(tx, sizeof(tx), 3, 2, bad, 2), 3, PT_E_BAD_RANGE);
	/* cmd_id 0 comes before the ranges: RESERVED_CMD, not BAD_RANGE. */
	SEND_EXPECT_ERROR(fd, pt_build_hint(tx, sizeof(tx), 4, 0, bad, 2), 4, PT_E_RESERVED_CMD);
	n = pt_build_query(tx, sizeof(tx), 5, 2, 99);
	SEND_EXPECT_ERROR(fd, n, 5, PT_E_BAD_FIELD);
	/* Nothing of the bad HINT was recorded: the first page is hinted only now. */
	SEND_EXPECT_ACK(fd, pt_build_hint(tx, sizeof(tx), 6, 2, bad, 1), 6, &ack);
	CHECK(ack.pages == 1);
	close(fd);
	return 0;
}

/* --- verdicts with a real guest ------------------------------------------------------------ */

#define G_DATA_GPA   (1ull << 30)
#define G_DATA_PAGES 4096

struct genv {
	struct minivm *m;
	struct pt_client *c;
};

static int genv_setup(struct genv *e)
{
	struct minivm_opts o = { .dirty = MINIVM_DIRTY_RING, .nslots = 1, .ring_entries = 8192 };
	struct pt_reg_slot rs[2];

	o.slots[0] = (struct minivm_slot){ G_DATA_GPA, G_DATA_PAGES * PG, 1 };
	if (minivm_create(&e->m, &o))
		return -1;
	rs[0] = (struct pt_reg_slot){ G_DATA_GPA, G_DATA_PAGES * PG, 1, PT_REG_SLOT_LOGGED };
	minivm_system_range(e->m, &rs[1].gpa, &rs[1].size);
	rs[1].id = 0;
	rs[1].flags = PT_REG_SLOT_LOGGED;
	e->c = pt_client_connect(svc.socket);
	if (!e->c)
		return -1;
	pt_client_set_timeout(e->c, 30000);
	return pt_client_register(e->c, 0, PT_DIRTY_RING, rs, 2, NULL);
}

static void genv_free(struct genv *e)
{
	pt_client_close(e->c);
	minivm_destroy(e->m);
}

/* The guest writes pages [first, first + n) of the data slot; the VMM harvests as it must. */
static int gwrite(struct genv *e, uint32_t first, uint32_t n)
{
	uint64_t *g = malloc(n * sizeof(*g));
	int err;

	if (!g)
		return -1;
	for (uint32_t i = 0; i < n; i++)
		g[i] = G_DATA_GPA + (uint64_t)(first + i) * PG;
	err = minivm_guest_write(e->m, g, n, 0x55);
	while (err == -ENOSPC) {
		uint64_t *junk;
		size_t nj;

		/* A harvest mid-epoch is fine: post-ARM entries are logged when pushed. */
		err = minivm_harvest(e->m, &junk, &nj);
		free(junk);
		if (!err)
			err = minivm_resume(e->m);
	}
	free(g);
	return err;
}

static struct pt_range pages(uint32_t first, uint32_t n)
{
	return (struct pt_range){ G_DATA_GPA + (uint64_t)first * PG, (uint64_t)n * PG };
}

/* 5 rule 1: "ARM(N) MUST be acknowledged before the dirty-log sync": a sync before the ARM
 * does not count; the first complete one after it does. */
GUEST_CASE(s5_1_sync_must_follow_arm)
{
	struct pt_range r = pages(100, 50);
	struct pt_client_result res;
	struct genv e;

	CHECK(!genv_setup(&e));
	CHECK(!minivm_sync(e.m));
	CHECK(!pt_client_arm(e.c, 2));
	CHECK(!pt_client_hint(e.c, 2, &r, 1));
	CHECK(!pt_client_query(e.c, 2, PT_Q_HINTS, &res));
	CHECK(res.v.free == 0 && (res.v.unsure_reason & PT_WHY_NO_SYNC));
	pt_client_result_free(&res);
	CHECK(!pt_client_arm(e.c, 3));
	CHECK(!minivm_sync(e.m));
	CHECK(!pt_client_hint(e.c, 3, &r, 1));
	CHECK(!pt_client_query(e.c, 3, PT_Q_HINTS, &res));
	CHECK(!res.v.unsure_reason && res.v.free == 50);
	pt_client_result_free(&res);
	genv_free(&e);
	return 0;
}

/* Flags every harvested entry and resets nothing else: half a harvest, as a VMM whose
 * reaper started before the ARM. The reset that follows is then incomplete. */
static int reset_without_harvest(struct genv *e)
{
	return ioctl(minivm_vm_fd(e->m), KVM_RESET_DIRTY_RINGS, 0) < 0 ? -1 : 0;
}

/*
 * 5 "What the service accepts as the sync", ring mode: a reset that leaves pre-arm entries
 * is not the sync (NO_SYNC), is no taint and no lost event; the complete one after it is
 * the sync, and the epoch then confirms pages as usual.
 */
GUEST_CASE(s5_ring_incomplete_reset_is_not_yet_synced)
{
	struct pt_range r = pages(1000, 200);
	struct pt_client_result res;
	struct genv e;

	CHECK(!genv_setup(&e));
	CHECK(!minivm_sync(e.m));
	CHECK(!gwrite(&e, 0, 64)); /* dirty before the ARM, not harvested */
	CHECK(!pt_client_arm(e.c, 2));
	CHECK(!reset_without_harvest(&e));
	CHECK(!pt_client_hint(e.c, 2, &r, 1));
	CHECK(!pt_client_query(e.c, 2, PT_Q_HINTS, &res));
	CHECK(res.v.free == 0 && res.v.unsure_reason == PT_WHY_NO_SYNC);
	pt_client_result_free(&res);
	CHECK(!minivm_sync(e.m)); /* the second pass: complete */
	CHECK(!pt_client_arm(e.c, 3));
	CHECK(!minivm_sync(e.m));
	CHECK(!pt_client_hint(e.c, 3, &r, 1));
	CHECK(!gwrite(&e, 1000, 10));
	CHECK(!pt_client_query(e.c, 3, PT_Q_HINTS, &res));
	CHECKF(!res.v.unsure_reason && res.v.free == 190 && res.v.kept_written == 10,
	       "why %#x free %llu", res.v.unsure_reason, (unsigned long long)res.v.free);
	pt_client_result_free(&res);
	genv_free(&e);
	return 0;
}

/* 5 rule 8: hints before the sync are unsure (not written); the rest of the verdict holds. */
GUEST_CASE(s5_8_hints_before_sync_unsure)
{
	struct pt_range early = pages(10, 5), late = pages(20, 5);
	struct pt_client_result res;
	struct genv e;

	CHECK(!genv_setup(&e));
	CHECK(!pt_client_arm(e.c, 2));
	CHECK(!pt_client_hint(e.c, 2, &early, 1));
	CHECK(!minivm_sync(e.m));
	CHECK(!pt_client_hint(e.c, 2, &late, 1));
	CHECK(!pt_client_query(e.c, 2, PT_Q_HINTS, &res));
	CHECK(res.v.unsure_reason == PT_WHY_NO_SYNC && res.v.free == 5 && res.v.kept_unsure == 5 &&
	      res.v.kept_written == 0 && res.v.nranges == 1 && res.ranges[0].gpa == late.gpa);
	pt_client_result_free(&res);
	genv_free(&e);
	return 0;
}

/* 4.4: one REPORT before a sync loses only itself, not the pages reported earlier. */
GUEST_CASE(s4_4_reported_set_survives_early_report)
{
	struct pt_range r[32], early = pages(3000, 1);
	struct pt_client_result res;
	struct genv e;

	CHECK(!genv_setup(&e));
	CHECK(!pt_client_arm(e.c, 2));
	CHECK(!minivm_sync(e.m));
	for (int i = 0; i < 32; i++)
		r[i] = pages(100 + i * 4, 2);
	CHECK(!pt_client_report(e.c, r, 32, NULL));
	CHECK(!pt_client_arm(e.c, 3));
	CHECK(!pt_client_report(e.c, &early, 1, NULL)); /* before the sync */
	CHECK(!minivm_sync(e.m));
	CHECK(!pt_client_query(e.c, 0, PT_Q_REPORTED, &res));
	CHECK(res.v.free == 64 && res.v.kept_unsure == 1 && res.v.kept_written == 0);
	pt_client_result_free(&res);
	CHECK(!pt_client_arm(e.c, 4));
	CHECK(!minivm_sync(e.m));
	CHECK(!pt_client_query(e.c, 0, PT_Q_REPORTED, &res));
	CHECKF(!res.v.unsure_reason && res.v.hinted == 64 && res.v.free == 64,
	       "hinted %llu free %llu", (unsigned long long)res.v.hinted,
	       (unsigned long long)res.v.free);
	pt_client_result_free(&res);
	genv_free(&e);
	return 0;
}

/* 4.1 "Memslots that change": deleted and re-created, the slot is tainted for the epoch of
 * the change and usable from the next ARM on, with the guest writing to it. */
GUEST_CASE(s4_1_recreated_memslot_usable_next_epoch)
{
	struct kvm_userspace_memory_region reg = { .slot = 1,
						   .flags = KVM_MEM_LOG_DIRTY_PAGES,
						   .guest_phys_addr = G_DATA_GPA };
	struct pt_range r = pages(0, 512);
	struct pt_client_result res;
	struct genv e;

	CHECK(!genv_setup(&e));
	reg.userspace_addr = (uint64_t)minivm_hva(e.m, G_DATA_GPA, G_DATA_PAGES * PG);
	CHECK(reg.userspace_addr);
	CHECK(!pt_client_arm(e.c, 2));
	CHECK(!minivm_sync(e.m));
	CHECK(!ioctl(minivm_vm_fd(e.m), KVM_SET_USER_MEMORY_REGION, &reg)); /* delete */
	CHECK(pt_client_hint(e.c, 2, &r, 1) < 0);
	CHECK(pt_client_last_error(e.c)->code == PT_E_BAD_RANGE);
	reg.memory_size = G_DATA_PAGES * PG;
	CHECK(!ioctl(minivm_vm_fd(e.m), KVM_SET_USER_MEMORY_REGION, &reg)); /* re-create */
	/* Inside the epoch of the change: never usable. */
	CHECK(!pt_client_hint(e.c, 2, &r, 1));
	CHECK(!pt_client_query(e.c, 2, PT_Q_HINTS, &res));
	CHECK(res.v.free == 0 && (res.v.unsure_reason & PT_WHY_TAINTED));
	pt_client_result_free(&res);
	/* The next epoch: usable, and the guest's writes to it are seen. */
	CHECK(!pt_client_arm(e.c, 3));
	CHECK(!minivm_sync(e.m));
	CHECK(!pt_client_hint(e.c, 3, &r, 1));
	CHECK(!gwrite(&e, 100, 20));
	CHECK(!pt_client_query(e.c, 3, PT_Q_HINTS, &res));
	CHECKF(!res.v.unsure_reason && res.v.free == 492 && res.v.kept_written == 20,
	       "why %#x free %llu written %llu", res.v.unsure_reason,
	       (unsigned long long)res.v.free, (unsigned long long)res.v.kept_written);
	pt_client_result_free(&res);
	genv_free(&e);
	return 0;
}

/* A userfaultfd-mode device on a minivm guest with dirty logging off, slot 1 at `hva`. */
static struct pt_client *uffd_device(struct minivm *m, uint64_t hva)
{
	struct pt_reg_slot2 s = { G_DATA_GPA, G_DATA_PAGES * PG, hva, 1, 0 };
	struct pt_client *c = pt_client_connect(svc.socket);
	int uffd = -1;

	if (c)
		pt_client_set_timeout(c, 30000);
	if (c && pt_client_register_uffd(c, &s, 1, minivm_vm_fd(m), &uffd, NULL)) {
		pt_client_close(c);
		c = NULL;
	}
	/* The VMM keeps its userfaultfd (5a rule 1): leaked for the test's short life. */
	return c;
}

/* One hinting round of 512 pages under `id`; the verdict's free pages and unsure reasons. */
static int uffd_round(struct pt_client *c, uint32_t id, uint64_t *free_pages, uint32_t *why)
{
	struct pt_range r = pages(0, 512);
	struct pt_client_result res;

	if (pt_client_arm(c, id) || pt_client_hint(c, id, &r, 1) ||
	    pt_client_query(c, id, PT_Q_HINTS, &res))
		return -1;
	*free_pages = res.v.free;
	*why = res.v.unsure_reason;
	pt_client_result_free(&res);
	return pt_client_stop(c, id);
}

/* 5a rule 2: "A VMM that moves guest memory (another mapping, another memslot layout) MUST
 * register again": until it does, the pages are kept, in every later epoch too. */
GUEST_CASE(s5a_2_slot_given_other_memory_kept_until_registered_again)
{
	struct minivm_opts o = { .dirty = MINIVM_DIRTY_NONE, .nslots = 1 };
	struct kvm_userspace_memory_region reg = { .slot = 1, .guest_phys_addr = G_DATA_GPA };
	struct pt_client *c;
	struct minivm *m;
	uint64_t free_pages;
	uint32_t why;
	void *other;

	o.slots[0] = (struct minivm_slot){ G_DATA_GPA, G_DATA_PAGES * PG, 1 };
	CHECK(!minivm_create(&m, &o));
	c = uffd_device(m, (uint64_t)minivm_hva(m, G_DATA_GPA, G_DATA_PAGES * PG));
	CHECK(c);
	CHECK(!uffd_round(c, 2, &free_pages, &why));
	CHECKF(!why && free_pages == 512, "before: why %#x free %llu", why,
	       (unsigned long long)free_pages);
	/* The VMM puts other memory behind the slot: delete, then create at the same GPA. */
	other = mmap(NULL, G_DATA_PAGES * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		     -1, 0);
	CHECK(other != MAP_FAILED);
	CHECK(!ioctl(minivm_vm_fd(m), KVM_SET_USER_MEMORY_REGION, &reg));
	reg.memory_size = G_DATA_PAGES * PG;
	reg.userspace_addr = (uint64_t)other;
	CHECK(!ioctl(minivm_vm_fd(m), KVM_SET_USER_MEMORY_REGION, &reg));
	for (uint32_t id = 3; id <= 4; id++) {
		CHECK(!uffd_round(c, id, &free_pages, &why));
		CHECKF(free_pages == 0 && (why & PT_WHY_UNKNOWN_MEM),
		       "epoch %u after the change: why %#x free %llu", id, why,
		       (unsigned long long)free_pages);
	}
	pt_client_close(c);
	/* Registered again with the new memory: vouched for from its first ARM. */
	c = uffd_device(m, (uint64_t)other);
	CHECK(c);
	CHECK(!uffd_round(c, 5, &free_pages, &why));
	CHECKF(!why && free_pages == 512, "registered again: why %#x free %llu", why,
	       (unsigned long long)free_pages);
	pt_client_close(c);
	minivm_destroy(m);
	munmap(other, G_DATA_PAGES * PG);
	return 0;
}

/* 5 rule 10: "A device whose VMM does that MUST report them with WRITTEN before QUERY":
 * pages so reported are never confirmed free. */
GUEST_CASE(s5_10_vmm_writes_reported_are_kept)
{
	struct pt_range r = pages(0, 100), w = pages(10, 3);
	struct pt_client_result res;
	struct genv e;

	CHECK(!genv_setup(&e));
	CHECK(!pt_client_arm(e.c, 2));
	CHECK(!minivm_sync(e.m));
	CHECK(!pt_client_hint(e.c, 2, &r, 1));
	CHECK(!pt_client_written(e.c, &w, 1, NULL));
	CHECK(!pt_client_query(e.c, 2, PT_Q_HINTS, &res));
	CHECK(!res.v.unsure_reason && res.v.free == 97 && res.v.kept_written == 3);
	pt_client_result_free(&res);
	genv_free(&e);
	return 0;
}

T_MAIN(T_CASE(s2_first_request_must_be_register), T_CASE(s2_pipelined_replies_in_order_with_seq),
       T_CASE(s2_quota_refusal_reaches_device), T_CASE(s3_length_must_match_count),
       T_CASE(s3_reserved_fields_must_be_zero), T_CASE(s3_range_end_must_not_overflow),
       T_CASE(s4_1_slots_must_not_overlap), T_CASE(s4_1_coverage_reports_unlogged_slot),
       T_CASE(s4_1_learned_slots_before_vm_known),
       T_CASE(s4_1_learned_slots_after_create_vm_unknown_mem),
       T_CASE(s4_1_learned_slots_after_vm_unknown_mem),
       T_CASE(s4_1_recreated_memslot_usable_next_epoch), T_CASE(s4_1a_second_register2_no_effect),
       T_CASE(s4_2_cmd_id_must_be_at_least_2), T_CASE(s4_2_no_reuse_before_stop),
       T_CASE(s4_2_blocked_id_limit_and_recovery), T_CASE(s4_2_stop_done_current_only),
       T_CASE(s4_2_takeover_keeps_blocked_ids),
       T_CASE(s4_2_stop_of_an_earlier_round_unblocks_nothing),
       T_CASE(s4_2_stop_after_done_stays_done_unblocks), T_CASE(s4_3_stale_hints_ignored),
       T_CASE(s4_3_empty_hint), T_CASE(s4_3_hint_after_stop_recorded),
       T_CASE(s4_4_reclaimed_list_says_when_short), T_CASE(s4_4_reported_set_survives_early_report),
       T_CASE(s4_5_report_at_most_32), T_CASE(s4_6_ping_says_registration),
       T_CASE(s4_7_wr_read_over_max_ranges_busy), T_CASE(s4_7_wr_records_count_each_page_once),
       T_CASE(s5_1_sync_must_follow_arm), T_CASE(s5_ring_incomplete_reset_is_not_yet_synced),
       T_CASE(s5_8_hints_before_sync_unsure), T_CASE(s5_10_vmm_writes_reported_are_kept),
       T_CASE(s5a_2_slot_given_other_memory_kept_until_registered_again),
       T_CASE(s6_multi_frame_reply_near_64k), T_CASE(s6_device_fails_broken_reply),
       T_CASE(s6_ranges_ascend_across_slots), T_CASE(s7_bad_header_closes),
       T_CASE(s7_bad_payload_skipped), T_CASE(s8_nothing_free_after_done))
