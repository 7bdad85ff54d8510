# nextq — one flat Makefile.
#   make            build/nextq
#   make test       unit + integration tests (starts its own redis-server on a free port)
#   make demo       the main job on the embedded queue with the bundled tiny models
#   make bench      benchmarks with in-run baselines
#   make sanitize   ASan+UBSan build of the unit tests, then runs them
# Feature flags: WITH_OPENBLAS=1 WITH_ONEDNN=1 (default on), WITH_CUDA=1 (auto when nvcc exists).
# Every module contributes its sources by wildcard: a new file in a module dir needs no Makefile edit.

CC      ?= cc
BUILD   ?= build
SHARED  ?= $(abspath ../shared)
OPT     ?= -O2 -march=x86-64-v3 -mtune=native
CSTD    := -std=c11 -D_GNU_SOURCE
WARN    := -Wall -Wextra -Werror -Wno-unused-parameter -Wno-format-truncation -Wshadow -Wpointer-arith -Wstrict-prototypes
CFLAGS  += $(CSTD) $(OPT) -g $(WARN) -I. -pthread -fno-strict-aliasing
LDFLAGS += -pthread

WITH_OPENBLAS ?= 1
WITH_ONEDNN   ?= 1
WITH_CUDA     ?= $(shell command -v nvcc >/dev/null 2>&1 && echo 1 || echo 0)

PKGS    := yaml-0.1 jansson libcrypto hiredis libarchive rdkafka zlib libpcre2-8 icu-uc libpng libjpeg libwebp libwebpdemux sndfile \
           libavformat libavcodec libavutil libswscale libmicrohttpd libcurl
LIBS     = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lm
ifeq ($(WITH_OPENBLAS),1)
CFLAGS  += -DNQ_WITH_OPENBLAS $(shell pkg-config --cflags openblas 2>/dev/null)
LIBS    += $(shell pkg-config --libs openblas 2>/dev/null || echo -lopenblas)
endif
ifeq ($(WITH_ONEDNN),1)
CFLAGS  += -DNQ_WITH_ONEDNN
LIBS    += -ldnnl
endif
ifeq ($(WITH_CUDA),1)
# The cuda backend: compute/backends/cuda.c (C, cuBLAS + CUDA runtime) and compute/backends/*.cu (kernels, nvcc).
# Code for sm_80 (A100) and sm_90 (H100/H200) plus compute_90 PTX for newer GPUs.
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(shell command -v nvcc 2>/dev/null))
NVCC      ?= $(CUDA_HOME)/bin/nvcc
NVCCFLAGS ?= -O3 -std=c++17 -I. -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
             -gencode arch=compute_90,code=compute_90 -Xcompiler -Wall,-Wextra,-Werror
CFLAGS  += -DNQ_WITH_CUDA -I$(CUDA_HOME)/include
LIBS    += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublas -lcudart -lstdc++
endif
EXTRA_LIBS ?=
LIBS    += $(EXTRA_LIBS)

MODULES := common store queue datasets scheduler worker api \
           compute/core compute/backends compute/io compute/tokenizers compute/models \
           compute/models/samplers compute/pipelines
LIB_SRC := $(foreach m,$(MODULES),$(wildcard $(m)/*.c))
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
ifeq ($(WITH_CUDA),1)
LIB_OBJ += $(patsubst %.cu,$(BUILD)/obj/%.cu.o,$(wildcard compute/backends/*.cu))
endif
CLI_SRC := $(wildcard cli/*.c)
CLI_OBJ := $(CLI_SRC:%.c=$(BUILD)/obj/%.o)
UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
ITEST_SRC := $(wildcard tests/integration/test_*.c)
ITEST_BIN := $(ITEST_SRC:tests/integration/%.c=$(BUILD)/tests/%)
TEST_HELP := $(wildcard tests/helpers/*.c)
TEST_HELP_OBJ := $(TEST_HELP:%.c=$(BUILD)/obj/%.o)
BENCH_SRC := $(wildcard bench/*.c)
BENCH_BIN := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)

.PHONY: all deps test unit integration golden demo bench sanitize clean docs chaos
all: deps $(BUILD)/nextq

# deps: if a pkg-config module is missing, install (root) or print the apt-get line.
deps:
	@pkg-config --exists $(PKGS) criterion 2>/dev/null && test -f /usr/include/oneapi/dnnl/dnnl.h \
	  && command -v redis-server >/dev/null || deploy/install-deps.sh

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC  $<"
	@$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/obj/%.cu.o: %.cu compute/backends/cuda_kernels.h
	@mkdir -p $(dir $@)
	@echo "  NVCC $<"
	@$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(BUILD)/libnextq.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/nextq: $(CLI_OBJ) $(BUILD)/libnextq.a
	$(CC) $(LDFLAGS) -o $@ $(CLI_OBJ) $(BUILD)/libnextq.a $(LIBS)

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libnextq.a $(TEST_HELP_OBJ)
	@mkdir -p $(dir $@)
	@echo "  LD  $@"
	@$(CC) $(CFLAGS) -DNQ_SHARED_DIR='"$(SHARED)"' -o $@ $< $(TEST_HELP_OBJ) $(BUILD)/libnextq.a $(LIBS) -lcriterion

$(BUILD)/tests/%: tests/integration/%.c $(BUILD)/libnextq.a $(TEST_HELP_OBJ)
	@mkdir -p $(dir $@)
	@echo "  LD  $@"
	@$(CC) $(CFLAGS) -DNQ_SHARED_DIR='"$(SHARED)"' -o $@ $< $(TEST_HELP_OBJ) $(BUILD)/libnextq.a $(LIBS) -lcriterion

$(BUILD)/bench/%: bench/%.c $(BUILD)/libnextq.a $(TEST_HELP_OBJ)
	@mkdir -p $(dir $@)
	@echo "  LD  $@"
	@$(CC) $(CFLAGS) -DNQ_SHARED_DIR='"$(SHARED)"' -o $@ $< $(TEST_HELP_OBJ) $(BUILD)/libnextq.a $(LIBS)

unit: all $(UNIT_BIN)
	@tests/run-tests.sh $(UNIT_BIN)

integration: all $(ITEST_BIN)
	@NQ_BIN=$(abspath $(BUILD)/nextq) tests/run-tests.sh $(ITEST_BIN)

test: all $(UNIT_BIN) $(ITEST_BIN)
	@NQ_BIN=$(abspath $(BUILD)/nextq) NQ_SHARED=$(SHARED) tests/run-tests.sh $(UNIT_BIN) $(ITEST_BIN)

# Full chaos runs (short ones are part of `make test`): Redis 10,000 noop + 200 tiny-LLM tasks, workers SIGKILLed
# every 1.5 s, one redis-server restart; Kafka the same 10,000 + 200, SIGKILLs every 8 s (longer than a consumer
# group's 6 s session), one broker down and up. (librdkafka 2.0.2's mock broker keeps 5 MiB per partition: the job's
# results fit because results are produced lz4-compressed and recorded redeliveries are not run again.) Prints tasks
# terminal / lost / duplicated executions.
chaos: all $(BUILD)/tests/test_chaos
	@NQ_BIN=$(abspath $(BUILD)/nextq) NQ_CHAOS_NOOP=10000 NQ_CHAOS_LLM=200 NQ_CHAOS_KAFKA_NOOP=10000 NQ_CHAOS_KAFKA_LLM=200 NQ_CHAOS_KAFKA_DOWN=1 \
	  $(BUILD)/tests/test_chaos --verbose=0 --timeout 1800 -j1

demo: all
	@NQ_SHARED=$(SHARED) scripts/demo.sh $(BUILD)/nextq

bench: all $(BENCH_BIN)
	@NQ_BIN=$(abspath $(BUILD)/nextq) NQ_SHARED=$(SHARED) scripts/bench.sh $(BENCH_BIN)

sanitize:
	LSAN_OPTIONS=suppressions=$(abspath tests/lsan.supp) $(MAKE) BUILD=build-san OPT="-O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined" \
	  LDFLAGS="-pthread -fsanitize=address,undefined" unit

clean:
	rm -rf $(BUILD) build-san

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d)

# api/page.c embeds the page with .incbin, which -MMD cannot see
$(BUILD)/obj/api/page.o: api/static/index.html api/static/openapi.json

# ---- fuzzing: make fuzz [FUZZ_SECONDS=30] [FUZZ_JOBS=1] [FUZZ_TARGETS="envelope tar"] -----------------------
# libFuzzer targets tests/fuzz/fuzz_<name>.c, built with clang + ASan + UBSan against the library sources they
# need, compiled again into build-fuzz/ (build/libnextq.a is gcc without sanitizers). Needs clang and
# libclang-rt-dev (Debian). Seeds: tests/fuzz/corpus/<name>/; each target runs FUZZ_SECONDS.
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 30
FUZZ_BUILD   ?= build-fuzz
FUZZ_MODULES := common store queue datasets scheduler compute/core compute/io compute/tokenizers
FUZZ_LIB_SRC := $(foreach m,$(FUZZ_MODULES),$(wildcard $(m)/*.c))
FUZZ_LIB_OBJ := $(FUZZ_LIB_SRC:%.c=$(FUZZ_BUILD)/obj/%.o)
FUZZ_TARGETS ?= $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_BIN     := $(FUZZ_TARGETS:%=$(FUZZ_BUILD)/fuzz_%)
FUZZ_CFLAGS  := $(CSTD) -O1 -g -fno-omit-frame-pointer $(filter-out -Werror -Wno-format-truncation,$(WARN)) -I. -pthread -fno-strict-aliasing \
                -fsanitize=address,undefined -fno-sanitize-recover=undefined

.PHONY: fuzz fuzz-build
$(FUZZ_BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC(fuzz) $<"
	@$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c $< -o $@

$(FUZZ_BUILD)/libnextq-fuzz.a: $(FUZZ_LIB_OBJ)
	@rm -f $@
	@ar rcs $@ $^

$(FUZZ_BUILD)/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz_util.h $(FUZZ_BUILD)/libnextq-fuzz.a
	@echo "  LD(fuzz) $@"
	@$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -DNQ_SHARED_DIR='"$(SHARED)"' -o $@ $< \
	  $(FUZZ_BUILD)/libnextq-fuzz.a $(LIBS)

fuzz-build: $(FUZZ_BIN)

fuzz: fuzz-build
	@FUZZ_OUT=$(FUZZ_BUILD) tests/fuzz/run-fuzz.sh $(FUZZ_SECONDS) $(FUZZ_BIN)

-include $(FUZZ_LIB_OBJ:.o=.d)
.SECONDARY:

# Standalone Kafka test broker on librdkafka's mock cluster (prints its bootstrap URL on the first stdout line).
$(BUILD)/tools/kafka_mock_broker: tests/tools/kafka_mock_broker.c tests/helpers/kafka_broker.c tests/helpers/kafka_broker.h
	@mkdir -p $(dir $@)
	@echo "  LD  $@"
	@$(CC) $(CFLAGS) -o $@ tests/tools/kafka_mock_broker.c tests/helpers/kafka_broker.c -lrdkafka -pthread
all: $(BUILD)/tools/kafka_mock_broker
