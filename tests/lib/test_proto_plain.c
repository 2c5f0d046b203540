// SPDX-License-Identifier: GPL-2.0
/*
 * test_proto's cases against the parser built without PT_RANGE_LOOP's clones: the plain loops
 * that hosts without AVX2 and other compilers run (on an AVX2 machine every other binary takes
 * the AVX2 clone). The parser's source and test_proto's cases, compiled once more here.
 */
#define PT_RANGE_LOOP
#include "lib/proto.c"
#include "test_proto.c"
