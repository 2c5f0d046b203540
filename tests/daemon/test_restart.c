// SPDX-License-Identifier: GPL-2.0
/*
 * kill -9 of the service, guest writes while it is down, restart on the same pins: the
 * pinned links kept logging, the old command ID is gone (never answered "free"), and the
 * write made during the gap is in the log the restarted service reads.
 */
#include <signal.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <linux/kvm.h>

#include "t.h"
#include "vmm/minivm.h"
#include "pagetrack/client.h"
#include "tools/spawn.h"

#define GPA   (2ull << 30)
#define PAGES 1024

static struct pt_client *reg(struct pt_spawned *s, struct minivm *m)
{
	struct pt_reg_slot rs[2] = { { GPA, PAGES * 4096ull, 1, PT_REG_SLOT_LOGGED } };
	struct pt_client *c = pt_client_connect(s->socket);

	minivm_system_range(m, &rs[1].gpa, &rs[1].size);
	rs[1].flags = PT_REG_SLOT_LOGGED;
	if (c && pt_client_register(c, 0, PT_DIRTY_RING, rs, 2, NULL)) {
		pt_client_close(c);
		c = NULL;
	}
	return c;
}

static int kill9_restart_keeps_log(void)
{
	struct minivm_opts o = { .dirty = MINIVM_DIRTY_RING, .nslots = 1 };
	struct pt_range hint = { GPA, 16 * 4096 }, all = { GPA, PAGES * 4096ull };
	uint64_t p5 = GPA + 5 * 4096;
	struct pt_client_result res;
	struct pt_spawned s1, s2;
	struct pt_client *c;
	struct minivm *m;
	int st;

	T_REQUIRE(t_need_kvm());
	T_REQUIRE(t_need_bpf());
	o.slots[0] = (struct minivm_slot){ GPA, PAGES * 4096ull, 1 };
	CHECK(!minivm_create(&m, &o));
	CHECK(!pt_spawn_service(&s1, NULL, "restart", NULL));
	c = reg(&s1, m);
	CHECK(c);
	CHECK(!pt_client_arm(c, 2) && !minivm_sync(m));
	CHECK(!pt_client_hint(c, 2, &hint, 1));

	/* The service dies hard; its links stay pinned. The guest writes hinted page 5. */
	CHECK(!kill(s1.pid, SIGKILL) && waitpid(s1.pid, &st, 0) == s1.pid);
	pt_client_close(c);
	CHECK(!minivm_guest_write(m, &p5, 1, 7));

	/* Same pins (same tag and test pid): maps reused, links replaced. */
	CHECK(!pt_spawn_service(&s2, NULL, "restart", NULL));
	CHECK(!strcmp(s1.pin_dir, s2.pin_dir));
	c = reg(&s2, m);
	CHECK(c);
	/* The command-ID state died with the old process: ID 2 is not answered at all. */
	CHECK(pt_client_query(c, 2, PT_Q_HINTS, &res) < 0);
	CHECK(pt_client_last_error(c)->code == PT_E_STALE_CMD);
	/* The write made while no service ran is in the log. */
	CHECK(!pt_client_wr_read(c, &all, 1, &res));
	CHECKF(res.v.nranges == 1 && res.ranges[0].gpa == p5 && res.ranges[0].len == 4096,
	       "%u ranges", res.v.nranges);
	pt_client_result_free(&res);
	/* A new round works, and the earlier write does not block a fresh hint of page 5. */
	CHECK(!pt_client_arm(c, 3) && !minivm_sync(m));
	CHECK(!pt_client_hint(c, 3, &hint, 1));
	CHECK(!pt_client_query(c, 3, PT_Q_HINTS, &res));
	CHECK(!res.v.unsure_reason && res.v.free == 16);
	pt_client_result_free(&res);
	pt_client_close(c);
	minivm_destroy(m);
	s1.pid = 0;
	pt_spawn_stop(&s1, SIGTERM); /* only its directory is left */
	pt_spawn_stop(&s2, SIGTERM);
	return 0;
}

T_MAIN(T_CASE(kill9_restart_keeps_log))
