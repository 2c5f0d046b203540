// SPDX-License-Identifier: GPL-2.0
/*
 * The decision two records share (user/writelog/clues.c): may a VMM hold a VM whose memslots
 * were never seen (pt_vm_created and /proc/PID/fd), may it run 32-bit code (pt_compat and
 * /proc/PID/exe)? Every combination of clues, through the shared decision and through each of
 * the two questions' own names for their clues.
 */
#include <stdbool.h>
#include <stdint.h>

#include "t.h"
#include "writelog/clues.h"
#include "writelog/compat.h"
#include "writelog/vmlog.h"

static const struct {
	int recorded;
	bool after;
	int proc;
	bool yes;
} clue_cases[] = {
	/* In the record, or /proc says yes: yes, whatever else. */
	{ 1, true, -1, true },
	{ 1, false, 0, true },
	{ 0, true, 1, true },
	{ -1, false, 1, true },
	/* Started after the record was complete and not in it: no, even with /proc unreadable
	 * (an ordinary root VMM of a service without CAP_SYS_PTRACE). */
	{ 0, true, -1, false },
	{ 0, true, 0, false },
	/* Otherwise /proc answers. */
	{ 0, false, 0, false },
	{ -1, false, 0, false },
	{ -1, true, 0, false },
	/* Nothing readable: cannot tell, yes. */
	{ 0, false, -1, true },
	{ -1, false, -1, true },
	{ -1, true, -1, true },
};

static const struct pt_clue_why words = { "recorded", "proc yes",   "covered",
					  "proc no",  "unreadable", "before" };

static int shared_decision(void)
{
	for (size_t i = 0; i < sizeof(clue_cases) / sizeof(clue_cases[0]); i++) {
		const char *why = NULL;

		CHECKF(pt_clues_decide(clue_cases[i].recorded, clue_cases[i].after,
				       clue_cases[i].proc, &words, &why) == clue_cases[i].yes &&
			       why && *why,
		       "recorded %d after %d proc %d", clue_cases[i].recorded, clue_cases[i].after,
		       clue_cases[i].proc);
	}
	return 0;
}

/* Each question puts its clues in the right places, and has a reason for every outcome. */
static int each_question_wired(void)
{
	for (size_t i = 0; i < sizeof(clue_cases) / sizeof(clue_cases[0]); i++) {
		struct pt_vm_clues v = { clue_cases[i].recorded, clue_cases[i].after,
					 clue_cases[i].proc };
		struct pt_compat_clues c = { clue_cases[i].recorded, clue_cases[i].after,
					     clue_cases[i].proc };
		const char *why_v = NULL, *why_c = NULL;

		CHECKF(pt_vm_clues_decide(&v, &why_v) == clue_cases[i].yes && why_v && *why_v,
		       "VM created %d after %d fds %d", v.created, v.after_since, v.fds);
		CHECKF(pt_compat_clues_decide(&c, &why_c) == clue_cases[i].yes && why_c && *why_c,
		       "32-bit marked %d after %d exe %d", c.marked, c.after_since, c.exe);
		CHECK(strcmp(why_v, why_c)); /* each in its own words */
	}
	return 0;
}

T_MAIN(T_CASE(shared_decision), T_CASE(each_question_wired))
