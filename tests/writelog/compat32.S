# SPDX-License-Identifier: GPL-2.0
# A real 32-bit (i386) process for test_compat, static, no libc: assembled with `as --32` and
# linked with `ld -m elf_i386` by the Makefile into build/tests/compat32. Every syscall it makes
# is a compat syscall (int $0x80), which the syscall tracepoints never show.
#   compat32         writes "y" to fd 1, then waits to be killed
#   compat32 fork    forks first (a 32-bit fork); parent and child each write "y", then wait
	.text
	.globl _start
_start:
	cmpl	$1, (%esp)		# argc
	jbe	ready
	movl	$2, %eax		# fork
	int	$0x80
ready:
	movl	$4, %eax		# write(1, "y", 1)
	movl	$1, %ebx
	movl	$msg, %ecx
	movl	$1, %edx
	int	$0x80
wait:
	movl	$29, %eax		# pause()
	int	$0x80
	jmp	wait

	.data
msg:	.ascii	"y"
