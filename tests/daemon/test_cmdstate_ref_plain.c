// SPDX-License-Identifier: GPL-2.0
/*
 * test_cmdstate_ref's model check against cmdstate built without PT_RANGE_LOOP's clones: the
 * plain slot-window loop that hosts without AVX2 and other compilers run (on an AVX2 machine
 * every other binary takes the AVX2 clone). cmdstate's source and the cases, compiled once more.
 */
#define PT_RANGE_LOOP
#include "daemon/cmdstate.c"
#include "test_cmdstate_ref.c"
