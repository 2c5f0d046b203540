# SPDX-License-Identifier: GPL-2.0
#
# pagetrack build. Everything goes into $(BUILD). `make V=1` shows full commands,
# `make SANITIZE=address,undefined test` builds userspace with sanitizers.

SANITIZE ?=
BUILD    ?= build$(if $(SANITIZE),-san)
CC       ?= gcc
CLANG    ?= clang
BPFTOOL  ?= bpftool

ifeq ($(V),1)
Q :=
msg =
else
Q := @
msg = @printf '  %-8s %s\n' "$(1)" "$(2)";
endif

# The release number lives in VERSION and nowhere else: pagetrackd --version, pagetrack.pc,
# CHANGELOG.md's top entry and debian/changelog are checked against it (tests/pkg).
VERSION := $(shell cat VERSION)
# The library's ABI major (its SONAME), independent of the release number: bump it, and the
# version node, only with an incompatible change to include/pagetrack/.
LIB_SONAME := libpagetrack.so.1
LIB_VNODE  := LIBPAGETRACK_1

ARCH := $(shell uname -m | sed -e 's/x86_64/x86/' -e 's/aarch64/arm64/')

CFLAGS   ?= -O2 -g
CFLAGS   += -std=gnu11 -Wall -Wextra -Werror -Wno-unused-parameter -Wshadow -fno-strict-aliasing
CPPFLAGS += -D_GNU_SOURCE -Iinclude -Iuser -I$(BUILD) -DPAGETRACK_VERSION='"$(VERSION)"'
LDLIBS   += -lbpf -luring -lelf -lz -lpthread
# The verdict counts bits over the whole guest: use the instruction, not libgcc's loop.
ifeq ($(ARCH),x86)
CFLAGS   += -mpopcnt
endif
ifneq ($(SANITIZE),)
# Instrumentation confuses these two GCC diagnostics into false positives.
CFLAGS  += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -Wno-format-truncation -Wno-maybe-uninitialized
LDFLAGS += -fsanitize=$(SANITIZE)
endif

BPF_CFLAGS := -O2 -g -target bpf -mcpu=v3 -D__TARGET_ARCH_$(ARCH) -Wall -Werror -Iinclude -I. -Ibpf

BPF_SRCS  := $(wildcard bpf/*.bpf.c)
BPF_OBJS  := $(patsubst bpf/%.bpf.c,$(BUILD)/bpf/%.bpf.o,$(BPF_SRCS))
SKELS     := $(patsubst bpf/%.bpf.c,$(BUILD)/%.skel.h,$(BPF_SRCS))

# user/ has one folder per concern; each folder's sources are listed here once.
#   lib/      libpagetrack: the wire format and the client (built once, PIC, into .a and .so)
#   shared/   small helpers every other folder may use (logging)
#   writelog/ the write log: BPF loader, per-VM log, canary
#   vmm/      minivm, the tiny VMM over /dev/kvm
#   daemon/   pagetrackd: config, io_uring server, dispatch, command state, status
#   bench/    `pagetrackd bench`
#   tools/    ptballoon (the example device), ptdemo, spawn (a private service)
LIB_SRCS      := $(wildcard user/lib/*.c)
SHARED_SRCS   := $(wildcard user/shared/*.c)
WRITELOG_SRCS := $(wildcard user/writelog/*.c)
VMM_SRCS      := $(wildcard user/vmm/*.c)
DAEMON_SRCS   := $(filter-out user/daemon/pagetrackd.c,$(wildcard user/daemon/*.c))
BENCH_SRCS    := $(wildcard user/bench/*.c)
TOOLS_SRCS    := user/tools/spawn.c

# Everything but the library goes into one internal archive the programs and tests link.
CORE_SRCS := $(SHARED_SRCS) $(WRITELOG_SRCS) $(VMM_SRCS) $(DAEMON_SRCS) $(BENCH_SRCS) $(TOOLS_SRCS)
CORE_OBJS := $(patsubst user/%.c,$(BUILD)/obj/%.o,$(CORE_SRCS))
LIB_OBJS  := $(patsubst user/%.c,$(BUILD)/obj/%.o,$(LIB_SRCS))
LIB       := $(BUILD)/libpagetrack.a
CORE      := $(BUILD)/libpagetrack-core.a
BINS      := $(BUILD)/pagetrackd $(BUILD)/ptballoon $(BUILD)/ptdemo
USER_HDRS := $(wildcard user/*/*.h include/*.h include/pagetrack/*.h)

# Tests live in tests/<concern>/ beside the folder they test; binaries all land in build/tests/.
TEST_SRCS := $(wildcard tests/*/test_*.c)
TEST_BINS := $(addprefix $(BUILD)/tests/,$(basename $(notdir $(TEST_SRCS))))
FUZZ_SRCS := $(wildcard tests/*/fuzz_*.c)
FUZZ_BINS := $(addprefix $(BUILD)/fuzz/,$(basename $(notdir $(FUZZ_SRCS))))
vpath test_%.c $(sort $(dir $(TEST_SRCS)))
vpath fuzz_%.c $(sort $(dir $(FUZZ_SRCS)))

.PHONY: all deps test demo clean fuzz fuzz-long format check-format install uninstall bench
.PHONY: man deb progs
.DELETE_ON_ERROR:
.SECONDARY: $(SKELS) $(BPF_OBJS)

all: $(BINS) $(LIB) $(BUILD)/libpagetrack.so $(TEST_BINS) $(BUILD)/tests/compat32

# What gets installed (make install, the Debian package): no tests.
progs: $(BINS) $(LIB) $(BUILD)/libpagetrack.so man

# --- dependencies -----------------------------------------------------------------------------
deps:
	$(Q)scripts/deps.sh

# --- BPF ---------------------------------------------------------------------------------------
$(BUILD)/bpf/%.bpf.o: bpf/%.bpf.c $(wildcard bpf/*.bpf.h) $(wildcard include/*.h) vmlinux.h
	$(call msg,BPF,$@)
	$(Q)mkdir -p $(@D)
	$(Q)$(CLANG) $(BPF_CFLAGS) -c $< -o $@

# The bench's push loop includes the tracker's source.
$(BUILD)/bpf/push_loop.bpf.o: bpf/writelog.bpf.c

$(BUILD)/%.skel.h: $(BUILD)/bpf/%.bpf.o
	$(call msg,GEN-SKEL,$@)
	$(Q)$(BPFTOOL) gen skeleton $< name $(subst .,_,$*)_bpf > $@

# --- userspace ---------------------------------------------------------------------------------
# The library sees only its own folder and include/: it can never pick up a daemon header.
$(BUILD)/obj/lib/%.o: user/lib/%.c $(wildcard user/lib/*.h include/pagetrack/*.h)
	$(call msg,CC-LIB,$@)
	$(Q)mkdir -p $(@D)
	$(Q)$(CC) -D_GNU_SOURCE -Iinclude $(CFLAGS) -fPIC -fvisibility=hidden -DPT_BUILD_SHARED \
		-c $< -o $@

$(BUILD)/obj/%.o: user/%.c $(SKELS) $(USER_HDRS)
	$(call msg,CC,$@)
	$(Q)mkdir -p $(@D)
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@

$(LIB): $(LIB_OBJS)
	$(call msg,AR,$@)
	$(Q)rm -f $@ && ar rcs $@ $^

# The symbol version script: every PT_API function of the public headers, at $(LIB_VNODE),
# nothing else. (The ABI record is debian/libpagetrack1.symbols: dpkg-gensymbols fails the
# package build when a symbol disappears.)
$(BUILD)/libpagetrack.map: $(wildcard include/pagetrack/*.h)
	$(call msg,GEN,$@)
	$(Q)mkdir -p $(@D)
	$(Q){ printf '$(LIB_VNODE) {\nglobal:\n'; \
	  grep -ho 'PT_API[^(]*(' $^ | grep -o 'pt_[a-z0-9_]*($$' | tr -d '(' | sort | \
	  sed 's/.*/\t&;/'; printf 'local:\n\t*;\n};\n'; } >$@

# Exports exactly those, each at its version node. libpagetrack.so is the link-time name.
$(BUILD)/$(LIB_SONAME): $(LIB_OBJS) $(BUILD)/libpagetrack.map
	$(call msg,LD,$@)
	$(Q)$(CC) -shared $(LDFLAGS) -Wl,-soname,$(LIB_SONAME) \
		-Wl,--version-script=$(BUILD)/libpagetrack.map -o $@ $(LIB_OBJS)

$(BUILD)/libpagetrack.so: $(BUILD)/$(LIB_SONAME)
	$(Q)ln -sf $(LIB_SONAME) $@

$(BUILD)/obj/daemon/pagetrackd.o: VERSION

$(CORE): $(CORE_OBJS)
	$(call msg,AR,$@)
	$(Q)rm -f $@ && ar rcs $@ $^

$(BUILD)/pagetrackd: $(BUILD)/obj/daemon/pagetrackd.o $(CORE) $(LIB)
	$(call msg,LD,$@)
	$(Q)$(CC) $(CFLAGS) $(LDFLAGS) $^ $(LDLIBS) -o $@

$(BUILD)/ptdemo: $(BUILD)/obj/tools/ptdemo.o $(CORE) $(LIB)
	$(call msg,LD,$@)
	$(Q)$(CC) $(CFLAGS) $(LDFLAGS) $^ $(LDLIBS) -o $@

# The example device needs nothing but the client library.
$(BUILD)/ptballoon: $(BUILD)/obj/tools/ptballoon.o $(LIB)
	$(call msg,LD,$@)
	$(Q)$(CC) $(CFLAGS) $(LDFLAGS) $^ -o $@

# --- tests -------------------------------------------------------------------------------------
$(BUILD)/tests/%: %.c $(wildcard tests/*.h tests/*/*.h) $(CORE) $(LIB)
	$(call msg,LD,$@)
	$(Q)mkdir -p $(@D)
	$(Q)$(CC) $(CPPFLAGS) -Itests $(CFLAGS) $(LDFLAGS) $< $(CORE) $(LIB) $(LDLIBS) -o $@

# Tests that compile a source again (without the AVX2 clones) depend on what they include.
$(BUILD)/tests/test_proto_plain: tests/lib/test_proto.c user/lib/proto.c user/lib/proto.h
$(BUILD)/tests/test_cmdstate_ref_plain: tests/daemon/test_cmdstate_ref.c user/daemon/cmdstate.c \
	user/lib/proto.h

# A real 32-bit process for test_compat: binutils alone (as --32, ld -m elf_i386), no multilib.
$(BUILD)/tests/compat32: tests/writelog/compat32.S
	$(call msg,AS,$@)
	$(Q)mkdir -p $(@D)
	$(Q)as --32 $< -o $@.o && ld -m elf_i386 -static $@.o -o $@ && rm -f $@.o

# Every fuzz target links the wire format; FUZZ_SRCS_<target> adds what else it drives.
# fuzz_dispatch runs the service's dispatch and command state against fakes of the write log
# and the server (tests/daemon/fake_daemon.c): no BPF, no io_uring, no KVM.
FUZZ_SRCS_fuzz_dispatch := tests/daemon/fake_daemon.c user/daemon/cmdstate.c user/daemon/config.c \
	user/shared/log.c user/shared/fdlink.c user/shared/procfs.c \
	user/daemon/identity.c user/daemon/quota.c user/daemon/bigbatch.c user/daemon/wlog_feed.c \
	user/writelog/uffd.c
# Above 1 MiB, so that the largest frames and their reassembly across reads are covered.
FUZZ_MAX_LEN := 1200000
$(BUILD)/fuzz/%: %.c $(LIB_SRCS) $(USER_HDRS) $(wildcard tests/*/fake_*) user/daemon/service.c \
		user/daemon/cmdstate.c $(SKELS)
	$(call msg,FUZZ,$@)
	$(Q)mkdir -p $(@D)
	$(Q)$(CLANG) $(CPPFLAGS) -Itests -g -O1 -fsanitize=fuzzer,address,undefined $< user/lib/proto.c \
		$(FUZZ_SRCS_$*) -o $@

test: deps-check all man $(FUZZ_BINS)
	$(Q)BUILD=$(BUILD) tests/run.sh

# The tests that need /dev/kvm, inside a QEMU guest (software emulation with nested SVM) that has
# it: for machines without KVM. Slow, so not part of `make test`. NESTED_TESTS=name... picks tests.
.PHONY: test-nested
test-nested: deps-check all man
	$(Q)BUILD=$(BUILD) tests/nested/run-kvm.sh $(NESTED_TESTS)

fuzz-long: $(FUZZ_BINS)
	$(Q)for f in $(FUZZ_BINS); do mkdir -p fuzz-corpus/$$(basename $$f); \
		cp tests/*/$$(basename $$f).seeds/* fuzz-corpus/$$(basename $$f)/ 2>/dev/null; \
		$$f -max_len=$(FUZZ_MAX_LEN) -max_total_time=$${FUZZ_SECONDS:-600} \
			fuzz-corpus/$$(basename $$f) || exit 1; done

demo: deps-check all
	$(Q)BUILD=$(BUILD) scripts/demo.sh

bench: deps-check all
	$(Q)$(BUILD)/pagetrackd bench

# Runs `make deps` only when a tool or header is missing, so the README's commands work on a
# fresh Debian 12 machine and stay fast on a prepared one.
.PHONY: deps-check
deps-check:
	$(Q)scripts/deps.sh --check >/dev/null 2>&1 || scripts/deps.sh

# Installs pagetrackd, the client library, the units and a default configuration (as root).
install: progs
	$(Q)BUILD=$(BUILD) DESTDIR=$(DESTDIR) VERSION=$(VERSION) scripts/install.sh

# Stops the service, removes the installed files and every pin under the pin directory.
uninstall:
	$(Q)DESTDIR=$(DESTDIR) scripts/uninstall.sh

# --- manual pages (scdoc) -------------------------------------------------------------------
MAN_SRCS  := $(wildcard man/*.scd)
MAN_PAGES := $(patsubst man/%.scd,$(BUILD)/man/%,$(MAN_SRCS))

man: $(MAN_PAGES)

$(BUILD)/man/%: man/%.scd VERSION
	$(call msg,SCDOC,$@)
	$(Q)command -v scdoc >/dev/null || { echo "scdoc is missing: make deps" >&2; exit 1; }
	$(Q)mkdir -p $(@D)
	$(Q)sed 's/@VERSION@/$(VERSION)/g' $< | scdoc >$@

# --- Debian packages -----------------------------------------------------------------------
# Built from a copy of the tree inside $(BUILD)/deb (dpkg-buildpackage writes to the parent
# of the source directory); the .deb files end up in $(BUILD)/deb/.
deb: deps-check
	$(Q)scripts/deb.sh $(BUILD)/deb

format:
	clang-format -i bpf/*.c user/*/*.c user/*/*.h include/*.h include/pagetrack/*.h tests/*/*.c tests/*.h

check-format:
	$(Q)for f in bpf/*.c user/*/*.c user/*/*.h include/*.h include/pagetrack/*.h tests/*/*.c tests/*.h; do \
		clang-format "$$f" | cmp -s - "$$f" || { echo "not formatted: $$f"; exit 1; }; done

clean:
	rm -rf $(BUILD)
