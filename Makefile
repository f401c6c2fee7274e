# DwarfStar 4 build.
#
#   make            core library + programs (./ds4, ./ds4-quantize)
#   make test       every test (C unit tests via cmocka, Python cross-checks)
#   make bench      benchmarks (print numbers; never part of `make test`)
#   make fuzz       libFuzzer harnesses (clang)
#
# Every src/*.c goes into libds4.a. Files named *_avx2.c are compiled with
# AVX2/FMA/F16C enabled and are only entered after a runtime CPU check, so the
# binaries still run on CPUs without AVX2.

CC      ?= cc
PYTHON  ?= $(if $(wildcard .venv/bin/python3),$(CURDIR)/.venv/bin/python3,python3)
OPT     ?= -O2
CFLAGS  ?= $(OPT) -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -pthread -Iinclude -Isrc -Iquantize -Icli -MMD -MP $(CPPFLAGS)
LDLIBS  += -lm -pthread
ARCH    := $(shell uname -m)
# AVX2 kernels are compiled only on x86-64 (quant_avx2.c is empty elsewhere).
SIMD_FLAGS_AVX2 = $(if $(filter x86_64 amd64,$(ARCH)),-mavx2 -mfma -mf16c,)

BUILD   = build
LIB_SRC = $(wildcard src/*.c)
LIB_OBJ = $(patsubst src/%.c,$(BUILD)/src/%.o,$(LIB_SRC))
LIB     = $(BUILD)/libds4.a

PROGRAMS = ds4 ds4-quantize ds4-server
TEST_SRC = $(wildcard tests/test_*.c)
TEST_BIN = $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRC))
BENCH_SRC = $(filter-out bench/ds4_bench.c,$(wildcard bench/*.c))
BENCH_BIN = $(patsubst bench/%.c,$(BUILD)/bench/%,$(BENCH_SRC))
TOOL_SRC = $(wildcard tests/tools/*.c)
TOOL_BIN = $(patsubst tests/tools/%.c,$(BUILD)/tests/tools/%,$(TOOL_SRC))

all: $(PROGRAMS)

$(BUILD)/src/%_avx2.o: src/%_avx2.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(SIMD_FLAGS_AVX2) -c $< -o $@

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(LIB): $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

# ./ds4 is cli/ds4_main.c (subcommand dispatch) + one cli/cmd_*.c per subcommand.
CLI_OBJ = $(patsubst %.c,$(BUILD)/%.o,$(wildcard cli/*.c))
ds4: $(CLI_OBJ) $(LIB)
	$(CC) $(CFLAGS) $(LDFLAGS) $^ -o $@ $(LDLIBS)

# ./ds4-quantize: the converter front-end (quantize/*.c; uses cJSON).
QUANTIZE_OBJ = $(patsubst %.c,$(BUILD)/%.o,$(wildcard quantize/*.c))
ds4-quantize: $(QUANTIZE_OBJ) $(LIB)
	$(CC) $(CFLAGS) $(LDFLAGS) $^ -o $@ -lcjson $(LDLIBS)

# ./ds4-server: OpenAI/Anthropic HTTP server (server/*.c; libmicrohttpd + cJSON).
SERVER_OBJ = $(patsubst %.c,$(BUILD)/%.o,$(wildcard server/*.c))
ds4-server: $(SERVER_OBJ) $(LIB)
	$(CC) $(CFLAGS) $(LDFLAGS) $^ -o $@ -lmicrohttpd -lcjson $(LDLIBS)

# Tests may use converter code (quantize/*.c except its main).
QUANTIZE_LIB_OBJ = $(filter-out $(BUILD)/quantize/main.o,$(QUANTIZE_OBJ))
$(BUILD)/tests/test_%: $(BUILD)/tests/test_%.o $(QUANTIZE_LIB_OBJ) $(LIB)
	$(CC) $(CFLAGS) $(LDFLAGS) $^ -o $@ -lcmocka -lcjson $(LDLIBS)

# tests/test_server*.c link the server's objects (all but its main).
SERVER_LIB_OBJ = $(filter-out $(BUILD)/server/main.o,$(SERVER_OBJ))
$(BUILD)/tests/test_server%: $(BUILD)/tests/test_server%.o $(SERVER_LIB_OBJ) $(LIB)
	$(CC) $(CFLAGS) $(LDFLAGS) $^ -o $@ -lcmocka -lmicrohttpd -lcjson $(LDLIBS)

$(BUILD)/tests/tools/%: $(BUILD)/tests/tools/%.o $(LIB)
	$(CC) $(CFLAGS) $(LDFLAGS) $^ -o $@ -lcjson $(LDLIBS)

$(BUILD)/bench/%: $(BUILD)/bench/%.o $(LIB)
	$(CC) $(CFLAGS) $(LDFLAGS) $^ -o $@ $(LDLIBS)

# `make test`: C unit tests first, then the script-driven checks that run the
# real programs on real files (tests/run_*.sh, in name order).
test: all $(TEST_BIN) $(TOOL_BIN)
	@set -e; for t in $(TEST_BIN); do echo "== $$t"; $$t; done
	@set -e; for s in $(sort $(wildcard tests/run_*.sh)); do echo "== $$s"; PYTHON=$(PYTHON) sh $$s; done
	@$(MAKE) --no-print-directory cuda-check
	@echo "all tests passed"

# `make deps`: Debian packages + .venv with the Python test requirements.
deps:
	.ci/install-deps

# `make demo`: the README's first command. Rebuilds the tiny Flash-shaped model
# from its seed (numpy), converts it with the q2 recipe, checks it and runs it.
DEMO_DIR = build/demo
demo: all
	@mkdir -p $(DEMO_DIR)
	$(PYTHON) tools/make_checkpoint.py --config tools/configs/tiny-flash.json --seed 1 --out $(DEMO_DIR)/tiny-flash-hf > /dev/null
	./ds4-quantize --hf $(DEMO_DIR)/tiny-flash-hf --out $(DEMO_DIR)/tiny-flash-q2.gguf --recipe q2
	./ds4 info --schema-only $(DEMO_DIR)/tiny-flash-q2.gguf
	./ds4 generate -m $(DEMO_DIR)/tiny-flash-q2.gguf --tokens "0 17 42 99 7" -n 16

bench: all $(BENCH_BIN)
	@for b in $(BENCH_BIN); do echo "== $$b"; $$b; done

# ./ds4-bench (docs/BENCH.md): speed at context frontiers; CPU build here,
# the CUDA build comes with `make cuda`.
ds4-bench: $(BUILD)/bench/ds4_bench.o $(LIB)
	$(CC) $(CFLAGS) $(LDFLAGS) $^ -o $@ $(LDLIBS)

# CUDA backend (docs/CUDA.md). `make cuda` relinks ./ds4 and builds ./ds4-bench
# and the op tests with the GPU backend (CUDA_ARCH=sm_90a by default: H100/H200
# with the warpgroup-MMA prefill; CUDA_ARCH=generic embeds sm_80/sm_90a/sm_120
# code plus PTX, for other cards
# such as the DGX Spark's). `make cuda-test` runs the op tests and the
# whole-model checks on a GPU machine. `make test` compiles the .cu files when
# nvcc is found (cuda-check) and skips that otherwise.
NVCC      ?= $(or $(shell command -v nvcc 2>/dev/null),$(wildcard /usr/local/cuda/bin/nvcc))
CUDA_ARCH ?= sm_90a
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
CUDA_GENCODE = $(if $(filter generic,$(CUDA_ARCH)),-gencode arch=compute_80$(,)code=sm_80 -gencode arch=compute_90a$(,)code=sm_90a -gencode arch=compute_120$(,)code=[sm_120$(,)compute_120],-arch=$(CUDA_ARCH))
, := ,
NVCCFLAGS ?= -O3 -std=c++17 -lineinfo
CUDA_OBJ  = $(patsubst src/cuda/%.cu,$(BUILD)/cuda/$(CUDA_ARCH)/%.o,$(wildcard src/cuda/*.cu))
CUDA_LIBS = -L$(CUDA_HOME)/lib64 -lcudart_static -ldl -lrt -lstdc++
$(BUILD)/cuda/$(CUDA_ARCH)/%.o: src/cuda/%.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) $(CUDA_GENCODE) -Iinclude -Isrc -MD -MF $(@:.o=.d) -c $< -o $@
cuda: $(CLI_OBJ) $(LIB) $(CUDA_OBJ) $(BUILD)/bench/ds4_bench.o $(BUILD)/tests/cuda/test_cuda_ops.o
	$(CC) $(CFLAGS) $(LDFLAGS) $(CLI_OBJ) $(CUDA_OBJ) $(LIB) -o ds4 $(CUDA_LIBS) $(LDLIBS)
	$(CC) $(CFLAGS) $(LDFLAGS) $(BUILD)/bench/ds4_bench.o $(CUDA_OBJ) $(LIB) -o ds4-bench $(CUDA_LIBS) $(LDLIBS)
	$(CC) $(CFLAGS) $(LDFLAGS) $(BUILD)/tests/cuda/test_cuda_ops.o $(CUDA_OBJ) $(LIB) -o $(BUILD)/tests/cuda/test_cuda_ops $(CUDA_LIBS) $(LDLIBS)
cuda-test: cuda ds4-quantize
	sh tests/cuda/run_cuda.sh
cuda-check:
	@if [ -n "$(NVCC)" ]; then $(MAKE) --no-print-directory $(CUDA_OBJ) > /dev/null && echo "cuda-check: the CUDA backend compiles ($(CUDA_ARCH))"; \
	else echo "cuda-check: no nvcc, CUDA compile check skipped"; fi

# `make cuda-server`: ./ds4-server with the CUDA backend linked in (docs/SERVER.md).
cuda-server: $(SERVER_OBJ) $(LIB) $(CUDA_OBJ)
	$(CC) $(CFLAGS) $(LDFLAGS) $(SERVER_OBJ) $(CUDA_OBJ) $(LIB) -o ds4-server $(CUDA_LIBS) -lmicrohttpd -lcjson $(LDLIBS)

FUZZ_CC ?= clang
fuzz: $(BUILD)/fuzz/fuzz_gguf
$(BUILD)/fuzz/fuzz_gguf: fuzz/fuzz_gguf.c $(LIB_SRC)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude -Isrc fuzz/fuzz_gguf.c src/gguf.c src/dtype.c -o $@ -lm

clean:
	rm -rf $(BUILD) $(PROGRAMS) ds4-bench

.PHONY: all test bench fuzz clean demo deps cuda cuda-test cuda-check cuda-server
-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
