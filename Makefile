# fedcoord: one non-recursive Makefile.
#
#   make                 build everything into build/ (-O2 -g, warnings are errors)
#   make test            install missing packages, then run every test suite twice:
#                        plainly and under AddressSanitizer + UndefinedBehaviorSanitizer;
#                        then the Python binding's tests (test-python) and the dashboard's
#                        (test-dashboard)
#   make check           run the test suites once, in the current configuration
#   make test-python     run the Python binding's tests against a real daemon (make test does)
#   make test-dashboard  the dashboard in headless Chromium against a real daemon (make test does)
#   make test-clang      run them built with clang (CI does)
#   make fuzz            build the libFuzzer targets with clang and run each for FUZZ_TIME s
#   make bench           build and run the benchmarks (QUICK=1 or BENCH_QUICK=1: under 5 min)
#   make deps            install the Debian packages the project needs, only if missing
#   make experiment-robustness  fedsim attacks x rules table -> docs/robustness.md
#   make experiment-fedau  fedavg vs fedau vs the 1/p oracle under data-tied participation
#                        -> docs/experiments/fedau.md and fedau.png
#   make demo            a real federation on this machine (tools/demo.sh; knobs RULE ROUNDS
#                        CLIENTS ALPHA MU OPT, e.g. make demo RULE=fedau OPT=adam)
#   make install         install into $(DESTDIR)$(PREFIX)
#   make clean
#
# Sources are found by folder, so a new module is a new .c file and nothing else:
#   core/ proto/          -> libfccore.a  (plus code generated from proto/*.proto)
#   aggregators/          -> libfcagg.a
#   storage/              -> libfcstore.a
#   server/*.c            -> libfcserver.a, except the program mains listed in SERVER_MAINS
#   client/*.c            -> libfedclient.a and libfedclient.so (with core/ and proto/ inside)
#   client/examples/lib/  -> libfcexamples.a (shared code of the example programs)
#   client/examples/X.c   -> build/bin/X          (example programs)
#   tests/unit/test_X.c   -> build/tests/test_X       (cmocka, run by make check)
#   tests/integration/test_X.c -> build/itests/test_X (cmocka + the real daemon, run after them)
#   tests/integration/hostile/test_X.c -> build/itests/hostile/test_X (hostile clients, the same)
#   tests/fuzz/fuzz_X.c   -> build/fuzz/bin/fuzz_X    (libFuzzer, seed corpus tests/fuzz/X/)
#   tests/bench/bench_X.c -> build/bench/bench_X      (run by make bench)

.DEFAULT_GOAL := all
.SECONDARY:
SHELL := /bin/bash

BUILD ?= build
SANITIZE ?=
PREFIX ?= /usr/local
DESTDIR ?=
FUZZ_TIME ?= 30
FUZZ_BUILD ?= build/fuzz
CLANG ?= clang

PKG_MODULES := libuv libprotobuf-c openssl sqlite3 jansson inih
PKG_CFLAGS := $(shell pkg-config --cflags $(PKG_MODULES) 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKG_MODULES) 2>/dev/null) -lhttp_parser -lm -lpthread
CMOCKA_CFLAGS := $(shell pkg-config --cflags cmocka 2>/dev/null)
CMOCKA_LIBS := $(shell pkg-config --libs cmocka 2>/dev/null)

WARNINGS := -Wall -Wextra -Werror -Wshadow -Wformat=2 -Wstrict-prototypes \
            -Wmissing-prototypes -Wpointer-arith -Wvla -Wundef -Wcast-align \
            -Wno-unknown-warning-option
# gcc does not know -Wno-unknown-warning-option but ignores unknown -Wno-* unless another
# diagnostic is printed; clang needs it for the gcc-only ones. Keep both happy:
ifeq ($(findstring clang,$(shell $(CC) --version 2>/dev/null | head -n1)),)
WARNINGS := $(filter-out -Wno-unknown-warning-option,$(WARNINGS))
endif

OPTIMIZE := -O2
ifneq ($(SANITIZE),)
OPTIMIZE := -O1
SAN_FLAGS := -fsanitize=$(SANITIZE) -fno-omit-frame-pointer
ifeq ($(findstring fuzzer,$(SANITIZE)),)
SAN_FLAGS += -fno-sanitize-recover=all
endif
endif

CPPFLAGS_ALL := -I. -Iclient/include -I$(BUILD)/gen -D_DEFAULT_SOURCE -D_POSIX_C_SOURCE=200809L
CFLAGS_ALL := -std=c11 $(OPTIMIZE) -g -fPIC $(WARNINGS) $(SAN_FLAGS) $(PKG_CFLAGS) $(CFLAGS)
# Generated protobuf-c code is not ours to restyle; it gets the base warnings only.
CFLAGS_GEN := -std=c11 $(OPTIMIZE) -g -fPIC -Wall -Werror $(SAN_FLAGS) $(PKG_CFLAGS) $(CFLAGS)
LDFLAGS_ALL := $(SAN_FLAGS) $(LDFLAGS)

# ---- sources ----
PROTO_FILES := $(wildcard proto/*.proto)
GEN_C := $(patsubst proto/%.proto,$(BUILD)/gen/%.pb-c.c,$(PROTO_FILES))
GEN_H := $(GEN_C:.c=.h)
# The dashboard page is compiled into the daemon: server/dashboard.html -> a byte array.
DASH_GEN := $(if $(wildcard server/dashboard.html),$(BUILD)/gen/dashboard_html.c)

CORE_SRC := $(wildcard core/*.c) $(wildcard proto/*.c)
AGG_SRC := $(wildcard aggregators/*.c)
STORE_SRC := $(wildcard storage/*.c)
SERVER_MAINS := server/main.c server/fedctl.c
SERVER_SRC := $(filter-out $(SERVER_MAINS),$(wildcard server/*.c))
CLIENT_SRC := $(wildcard client/*.c)
EXAMPLE_SRC := $(wildcard client/examples/*.c)
EXLIB_SRC := $(wildcard client/examples/lib/*.c)
TEST_SRC := $(wildcard tests/unit/test_*.c)
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
BENCH_SRC := $(wildcard tests/bench/bench_*.c)
CHAOS_SRC := $(wildcard tests/chaos/*.c)
TESTLIB_SRC := $(wildcard tests/lib/*.c)
ITEST_SRC := $(wildcard tests/integration/test_*.c tests/integration/hostile/test_*.c)
ITESTLIB_SRC := $(filter-out $(ITEST_SRC),$(wildcard tests/integration/*.c \
                                                      tests/integration/hostile/*.c))

obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))

CORE_OBJ := $(call obj,$(CORE_SRC)) $(patsubst $(BUILD)/gen/%.c,$(BUILD)/obj/gen/%.o,$(GEN_C))
AGG_OBJ := $(call obj,$(AGG_SRC))
STORE_OBJ := $(call obj,$(STORE_SRC))
SERVER_OBJ := $(call obj,$(SERVER_SRC)) $(patsubst $(BUILD)/gen/%.c,$(BUILD)/obj/gen/%.o,$(DASH_GEN))
CLIENT_OBJ := $(call obj,$(CLIENT_SRC))
EXLIB_OBJ := $(call obj,$(EXLIB_SRC))
TESTLIB_OBJ := $(call obj,$(TESTLIB_SRC))
ITESTLIB_OBJ := $(call obj,$(ITESTLIB_SRC))

LIB_CORE := $(BUILD)/lib/libfccore.a
LIB_AGG := $(BUILD)/lib/libfcagg.a
LIB_STORE := $(BUILD)/lib/libfcstore.a
LIB_SERVER := $(BUILD)/lib/libfcserver.a
LIB_CLIENT := $(BUILD)/lib/libfedclient.a
SO_CLIENT := $(BUILD)/lib/libfedclient.so
LIB_EXAMPLES := $(BUILD)/lib/libfcexamples.a

# Link order: higher layers first.
LIBS_ALL := $(if $(EXLIB_SRC),$(LIB_EXAMPLES)) $(if $(SERVER_SRC),$(LIB_SERVER)) \
            $(if $(STORE_SRC),$(LIB_STORE)) $(if $(AGG_SRC),$(LIB_AGG)) $(if $(CLIENT_SRC),$(LIB_CLIENT)) $(LIB_CORE)

BINS := $(if $(wildcard server/main.c),$(BUILD)/bin/fedcoord) \
        $(if $(wildcard server/fedctl.c),$(BUILD)/bin/fedctl) \
        $(patsubst client/examples/%.c,$(BUILD)/bin/%,$(EXAMPLE_SRC))
TESTS := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(TEST_SRC))
ITESTS := $(patsubst tests/integration/%.c,$(BUILD)/itests/%,$(ITEST_SRC))
BENCHES := $(patsubst tests/bench/%.c,$(BUILD)/bench/%,$(BENCH_SRC))
FUZZERS := $(patsubst tests/fuzz/%.c,$(FUZZ_BUILD)/bin/%,$(FUZZ_SRC))

ALL_OBJ := $(CORE_OBJ) $(AGG_OBJ) $(STORE_OBJ) $(SERVER_OBJ) $(CLIENT_OBJ) $(EXLIB_OBJ) \
           $(TESTLIB_OBJ) $(ITESTLIB_OBJ)

.PHONY: all libs tests benches check test test-plain test-asan test-python test-dashboard test-clang \
        fuzz fuzz-build bench deps demo experiment-robustness experiment-fedau install clean test-deploy test-chaos FORCE
all: libs $(BINS) $(if $(CLIENT_SRC),$(SO_CLIENT))
libs: $(LIBS_ALL)
tests: $(TESTS) $(ITESTS)
benches: $(BENCHES)

# ---- flags stamp: changing the flags rebuilds everything in this build folder ----
FLAGS_LINE := $(CC) $(CPPFLAGS_ALL) $(CFLAGS_ALL) $(LDFLAGS_ALL)
FLAGS_STAMP := $(BUILD)/flags.stamp
ifneq ($(shell cat $(FLAGS_STAMP) 2>/dev/null),$(FLAGS_LINE))
$(shell mkdir -p $(BUILD) && echo '$(FLAGS_LINE)' > $(FLAGS_STAMP))
endif

# ---- protobuf-c code generation ----
$(BUILD)/gen/%.pb-c.c $(BUILD)/gen/%.pb-c.h: proto/%.proto
	@mkdir -p $(BUILD)/gen
	protoc-c --c_out=$(BUILD)/gen -Iproto $<

$(BUILD)/obj/gen/%.o: $(BUILD)/gen/%.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS_ALL) $(CFLAGS_GEN) -MMD -MP -c $< -o $@

# The page's bytes as C (od and sed: no tool beyond coreutils). The page stays in one file that a
# browser can open directly while it is being edited.
$(BUILD)/gen/dashboard_html.c: server/dashboard.html
	@mkdir -p $(dir $@)
	{ echo '/* Generated from server/dashboard.html by the Makefile; do not edit. */'; \
	  echo '#include "server/dashboard.h"'; \
	  echo 'const unsigned char fc_dashboard_html[] = {'; \
	  od -An -v -tx1 $< | sed -e 's/ \([0-9a-f][0-9a-f]\)/0x\1,/g'; \
	  echo '};'; \
	  echo 'const size_t fc_dashboard_html_len = sizeof fc_dashboard_html;'; } >$@.tmp
	mv $@.tmp $@

# Every object may include generated headers, so they exist before anything compiles.
$(BUILD)/obj/%.o: %.c $(FLAGS_STAMP) | $(GEN_H)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS_ALL) $(CFLAGS_ALL) -MMD -MP -c $< -o $@

$(BUILD)/obj/tests/unit/%.o: CFLAGS_ALL += $(CMOCKA_CFLAGS)
$(BUILD)/obj/tests/integration/%.o: CFLAGS_ALL += $(CMOCKA_CFLAGS)

$(LIB_CORE): $(CORE_OBJ)
$(LIB_AGG): $(AGG_OBJ)
$(LIB_STORE): $(STORE_OBJ)
$(LIB_SERVER): $(SERVER_OBJ)
$(LIB_CLIENT): $(CLIENT_OBJ) $(CORE_OBJ)
$(LIB_EXAMPLES): $(EXLIB_OBJ)
$(BUILD)/lib/%.a:
	@mkdir -p $(dir $@)
	@rm -f $@
	ar rcs $@ $^

# The SDK's shared library exports exactly the functions listed in client/fedclient.map, all
# fc_* (checked by tests/unit/test_symbols.c).
$(SO_CLIENT): $(CLIENT_OBJ) $(CORE_OBJ) client/fedclient.map
	@mkdir -p $(dir $@)
	$(CC) -shared -Wl,--version-script=client/fedclient.map \
	    -Wl,-soname,libfedclient.so.1 $(LDFLAGS_ALL) -o $@ $(filter %.o,$^) $(PKG_LIBS)

$(BUILD)/bin/fedcoord: $(BUILD)/obj/server/main.o $(LIBS_ALL)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $< $(LIBS_ALL) $(PKG_LIBS)

$(BUILD)/bin/fedctl: $(BUILD)/obj/server/fedctl.o $(LIBS_ALL)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $< $(LIBS_ALL) $(PKG_LIBS)

$(BUILD)/bin/%: $(BUILD)/obj/client/examples/%.o $(LIBS_ALL)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $< $(LIBS_ALL) $(PKG_LIBS)

$(BUILD)/tests/%: $(BUILD)/obj/tests/unit/%.o $(TESTLIB_OBJ) $(LIBS_ALL)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $< $(TESTLIB_OBJ) $(LIBS_ALL) $(PKG_LIBS) $(CMOCKA_LIBS)

$(BUILD)/chaos/%: $(BUILD)/obj/tests/chaos/%.o $(LIBS_ALL)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $< $(LIBS_ALL) $(PKG_LIBS)

$(BUILD)/itests/%: $(BUILD)/obj/tests/integration/%.o $(ITESTLIB_OBJ) $(TESTLIB_OBJ) $(LIBS_ALL)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $< $(ITESTLIB_OBJ) $(TESTLIB_OBJ) $(LIBS_ALL) $(PKG_LIBS) $(CMOCKA_LIBS)

$(BUILD)/bench/%: $(BUILD)/obj/tests/bench/%.o $(LIBS_ALL)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $< $(LIBS_ALL) $(PKG_LIBS)

-include $(ALL_OBJ:.o=.d) $(wildcard $(BUILD)/obj/server/*.d $(BUILD)/obj/tests/*/*.d \
          $(BUILD)/obj/client/examples/*.d $(BUILD)/obj/gen/*.d)

# ---- tests ----
# check: run every unit and integration test binary in this configuration; tests/run-tests
# prints the summary.
check: all $(TESTS) $(ITESTS)
	@tests/run-tests $(BUILD) $(TESTS) $(ITESTS)

test-plain:
	@$(MAKE) --no-print-directory check
test-asan:
	@$(MAKE) --no-print-directory check BUILD=build/asan SANITIZE=address,undefined

test: deps
	@$(MAKE) --no-print-directory test-plain
	@$(MAKE) --no-print-directory test-asan
	@$(MAKE) --no-print-directory test-python
	@$(MAKE) --no-print-directory test-dashboard
	@$(MAKE) --no-print-directory test-deploy

# The Python binding (client/python) against libfedclient.so and a real fedcoord over TLS.
test-python: all
	@client/python/run-tests $(BUILD)

# The dashboard in headless Chromium against a real daemon and SDK clients (tests/dashboard/run).
DASH_CLIENT := $(BUILD)/tests/dashboard/dash_client
$(DASH_CLIENT): $(BUILD)/obj/tests/dashboard/dash_client.o $(LIB_CLIENT)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $< $(LIB_CLIENT) $(PKG_LIBS)
test-dashboard: all $(DASH_CLIENT)
	@tests/dashboard/run $(BUILD)

# The deployment files (docker/, packaging/) against what `make install` produces.
test-deploy: all
	@tests/deploy/test-deploy.sh $(BUILD)

# Chaos: a 50-round run whose daemon is SIGKILLed at random instants CHAOS_KILLS times
# (default 100); every round must commit exactly once and the store must verify.
CHAOS_KILLS ?= 100
test-chaos: all $(patsubst tests/chaos/%.c,$(BUILD)/chaos/%,$(CHAOS_SRC))
	@tests/chaos/run-chaos $(BUILD) $(CHAOS_KILLS)

# The suites once more, built with clang (CI runs it; clang's warnings differ from gcc's).
test-clang:
	@$(MAKE) --no-print-directory check CC=$(CLANG) BUILD=build/clang

# ---- fuzzing (clang + libFuzzer) ----
# Library code is built with -fsanitize=fuzzer-no-link in its own folder; targets link the
# fuzzer's main. New inputs go to build/fuzz/corpus/X; the committed seeds stay untouched.
fuzz-build:
	@$(MAKE) --no-print-directory CC=$(CLANG) BUILD=$(FUZZ_BUILD) \
	    SANITIZE=fuzzer-no-link,address,undefined fuzz-bins

.PHONY: fuzz-bins
fuzz-bins: $(FUZZERS)

$(FUZZ_BUILD)/bin/%: $(BUILD)/obj/tests/fuzz/%.o $(LIBS_ALL)
	@mkdir -p $(dir $@)
	$(CC) -fsanitize=fuzzer,address,undefined -o $@ $< $(LIBS_ALL) $(PKG_LIBS)

fuzz: deps fuzz-build
	@tests/fuzz/run $(FUZZ_BUILD) $(FUZZ_TIME) $(FUZZERS)

# ---- benchmarks ----
# QUICK=1 is the same as BENCH_QUICK=1. The daemon benchmarks also need the programs (all).
bench: deps all benches
	@BENCH_QUICK=$${BENCH_QUICK:-$(QUICK)} tests/bench/run $(BUILD)

# ---- packages ----
deps:
	@tools/deps.sh

# ---- demo: the knobs reach tools/demo.sh through the environment (command-line variables are
# exported); it installs packages and builds by itself ----
demo:
	@tools/demo.sh

# ---- experiment-robustness: regenerates the accuracy table of docs/robustness.md (~1 min) ----
experiment-robustness: $(BUILD)/bin/fedsim
	@tools/robustness.sh

# ---- experiment-fedau: docs/experiments/fedau.md and its plot (gnuplot; ~1 min) ----
experiment-fedau: $(BUILD)/bin/fedsim
	@tools/deps.sh
	@tools/fedau.sh

# ---- install ----
# The daemon, fedctl and the example trainer (the container's demo clients run it).
INSTALL_BINS := $(BUILD)/bin/fedcoord $(BUILD)/bin/fedctl $(BUILD)/bin/fedtrain
install: all
	install -d $(DESTDIR)$(PREFIX)/bin
	$(if $(filter $(INSTALL_BINS),$(BINS)),install -m 755 \
	    $(filter $(INSTALL_BINS),$(BINS)) $(DESTDIR)$(PREFIX)/bin/)
ifneq ($(CLIENT_SRC),)
	install -d $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/include/fedcoord
	install -m 644 $(LIB_CLIENT) $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(SO_CLIENT) $(DESTDIR)$(PREFIX)/lib/libfedclient.so.1
	ln -sf libfedclient.so.1 $(DESTDIR)$(PREFIX)/lib/libfedclient.so
	install -m 644 client/include/fedcoord/*.h $(DESTDIR)$(PREFIX)/include/fedcoord/
	sed -e 's|@PREFIX@|$(PREFIX)|g' client/fedclient.pc.in > \
	    $(DESTDIR)$(PREFIX)/lib/pkgconfig/fedclient.pc
endif

clean:
	rm -rf build
