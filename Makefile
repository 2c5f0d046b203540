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

ARCH := $(shell uname -m | sed -e 's/x86_64/x86/' -e 's/aarch64/arm64/')

CFLAGS   ?= -O2 -g
CFLAGS   += -std=gnu11 -Wall -Wextra -Werror -Wno-unused-parameter -Wshadow -fno-strict-aliasing
CPPFLAGS += -D_GNU_SOURCE -Iinclude -Iuser -I$(BUILD)
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

# Programs with a main(); every other user/*.c is a library module.
MAINS       := user/pagetrackd.c user/ptballoon.c user/ptdemo.c
CLIENT_SRCS := user/client.c user/proto.c
CORE_SRCS   := $(filter-out $(MAINS),$(wildcard user/*.c))
CORE_OBJS   := $(patsubst user/%.c,$(BUILD)/user/%.o,$(CORE_SRCS))
CLIENT_OBJS := $(patsubst user/%.c,$(BUILD)/pic/%.o,$(filter $(wildcard $(CLIENT_SRCS)),$(CLIENT_SRCS)))
BINS        := $(patsubst user/%.c,$(BUILD)/%,$(filter $(wildcard $(MAINS)),$(MAINS)))

TEST_SRCS := $(wildcard tests/test_*.c)
TEST_BINS := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRCS))
TEST_LIB  := $(filter-out $(TEST_SRCS) $(wildcard tests/fuzz_*.c),$(wildcard tests/*.c))
FUZZ_SRCS := $(wildcard tests/fuzz_*.c)

.PHONY: all deps test demo clean fuzz fuzz-long format check-format install uninstall bench
.DELETE_ON_ERROR:
.SECONDARY: $(SKELS) $(BPF_OBJS)

all: $(BINS) $(BUILD)/libpagetrack.a $(BUILD)/libpagetrack.so $(TEST_BINS)

# --- dependencies -----------------------------------------------------------------------------
deps:
	$(Q)scripts/deps.sh

# --- BPF ---------------------------------------------------------------------------------------
$(BUILD)/bpf/%.bpf.o: bpf/%.bpf.c $(wildcard bpf/*.bpf.h) $(wildcard include/*.h) vmlinux.h
	$(call msg,BPF,$@)
	$(Q)mkdir -p $(@D)
	$(Q)$(CLANG) $(BPF_CFLAGS) -c $< -o $@

$(BUILD)/%.skel.h: $(BUILD)/bpf/%.bpf.o
	$(call msg,GEN-SKEL,$@)
	$(Q)$(BPFTOOL) gen skeleton $< name $(subst .,_,$*)_bpf > $@

# --- userspace ---------------------------------------------------------------------------------
$(BUILD)/user/%.o: user/%.c $(SKELS) $(wildcard user/*.h include/*.h include/pagetrack/*.h)
	$(call msg,CC,$@)
	$(Q)mkdir -p $(@D)
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@

$(BUILD)/pic/%.o: user/%.c $(wildcard user/*.h include/pagetrack/*.h)
	$(call msg,CC-PIC,$@)
	$(Q)mkdir -p $(@D)
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) -fPIC -fvisibility=hidden -DPT_BUILD_SHARED -c $< -o $@

$(BUILD)/libpagetrack-core.a: $(CORE_OBJS)
	$(call msg,AR,$@)
	$(Q)rm -f $@ && ar rcs $@ $^

$(BUILD)/libpagetrack.a: $(CLIENT_OBJS)
	$(call msg,AR,$@)
	$(Q)rm -f $@ && ar rcs $@ $^

$(BUILD)/libpagetrack.so: $(CLIENT_OBJS)
	$(call msg,LD,$@)
	$(Q)$(CC) -shared $(LDFLAGS) -Wl,-soname,libpagetrack.so.0 -o $@ $^

$(BUILD)/%: user/%.c $(BUILD)/libpagetrack-core.a
	$(call msg,LD,$@)
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) $< $(BUILD)/libpagetrack-core.a $(LDLIBS) -o $@

# --- tests -------------------------------------------------------------------------------------
$(BUILD)/tests/%: tests/%.c $(TEST_LIB) $(wildcard tests/*.h) $(BUILD)/libpagetrack-core.a
	$(call msg,LD,$@)
	$(Q)mkdir -p $(@D)
	$(Q)$(CC) $(CPPFLAGS) -Itests $(CFLAGS) $(LDFLAGS) $< $(TEST_LIB) \
		$(BUILD)/libpagetrack-core.a $(LDLIBS) -o $@

$(BUILD)/fuzz/%: tests/%.c $(CORE_SRCS)
	$(call msg,FUZZ,$@)
	$(Q)mkdir -p $(@D)
	$(Q)$(CLANG) $(CPPFLAGS) -g -O1 -fsanitize=fuzzer,address,undefined $< user/proto.c -o $@

FUZZ_BINS := $(patsubst tests/%.c,$(BUILD)/fuzz/%,$(FUZZ_SRCS))

test: deps-check all $(FUZZ_BINS)
	$(Q)BUILD=$(BUILD) tests/run.sh

fuzz-long: $(FUZZ_BINS)
	$(Q)for f in $(FUZZ_BINS); do mkdir -p fuzz-corpus/$$(basename $$f); \
		$$f -max_total_time=$${FUZZ_SECONDS:-600} fuzz-corpus/$$(basename $$f) || exit 1; done

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
install: all
	$(Q)BUILD=$(BUILD) DESTDIR=$(DESTDIR) scripts/install.sh

# Stops the service, removes the installed files and every pin under the pin directory.
uninstall:
	$(Q)DESTDIR=$(DESTDIR) scripts/uninstall.sh

format:
	clang-format -i bpf/*.c user/*.c user/*.h include/*.h include/pagetrack/*.h tests/*.c tests/*.h

check-format:
	$(Q)for f in bpf/*.c user/*.c user/*.h include/*.h include/pagetrack/*.h tests/*.c tests/*.h; do \
		clang-format "$$f" | cmp -s - "$$f" || { echo "not formatted: $$f"; exit 1; }; done

clean:
	rm -rf $(BUILD)
