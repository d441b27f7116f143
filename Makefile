# llc: the local learning coefficient of Tracr-compiled transformers.
# Building needs only a C99 compiler and libm; `cc -O2 -o llc llc.c -lm` works too.

CC ?= cc
CFLAGS ?= -O2
WARN = -std=c99 -Wall -Wextra
# Optional flags, each used only when the compiler accepts it: -march=native
# turns on the AVX2 or AVX-512 matmul kernel (NEON is on by default on
# arm64), -pthread runs SGLD chains in parallel.
NATIVE := $(shell echo 'int main(void){return 0;}' | $(CC) -march=native -x c -o /dev/null - 2>/dev/null && echo -march=native)
PTHREAD := $(shell echo 'int main(void){return 0;}' | $(CC) -pthread -x c -o /dev/null - 2>/dev/null && echo -pthread)
ALL_CFLAGS = $(WARN) $(CFLAGS) $(NATIVE) $(PTHREAD)
LDLIBS = -lm

# make DOUBLE=1 builds llc64, the same program with float64 arithmetic.
ifeq ($(DOUBLE),1)
all: llc64
else
all: llc
endif

llc: llc.c llc.h
	$(CC) $(ALL_CFLAGS) -o $@ llc.c $(LDLIBS)

llc64: llc.c llc.h
	$(CC) $(ALL_CFLAGS) -DLLC_DOUBLE -o $@ llc.c $(LDLIBS)

# The unit tests include llc.c without its main, so many of its functions go unused there.
TEST_CFLAGS = $(ALL_CFLAGS) -Wno-unused-function

tests/test_llc: tests/test_llc.c llc.c llc.h
	$(CC) $(TEST_CFLAGS) -o $@ tests/test_llc.c $(LDLIBS)

tests/test_llc64: tests/test_llc.c llc.c llc.h
	$(CC) $(TEST_CFLAGS) -DLLC_DOUBLE -o $@ tests/test_llc.c $(LDLIBS)

# The float32 unit tests on the portable matmul kernel, as on a machine without SIMD.
tests/test_llc_nosimd: tests/test_llc.c llc.c llc.h
	$(CC) $(TEST_CFLAGS) -DLLC_NO_SIMD -o $@ tests/test_llc.c $(LDLIBS)

# The main job on a shipped model: size, sparsity and LLC of `sort` at max_seq_len 5.
MODEL ?= tracr_weights/sort_n5.llcw
run: llc
	./llc info $(MODEL)
	./llc estimate $(MODEL) --json llc_result.json --trace llc_trace.csv

test: llc llc64 tests/test_llc tests/test_llc64 tests/test_llc_nosimd
	sh tests/run

# Speed of llc against PyTorch and OpenBLAS on Tracr models; writes
# bench/build/results.md. Installs python3-torch and libopenblas-dev with apt-get
# when they are missing. Neither the build nor the tests need this.
bench: llc
	sh bench/run

# make sanitize: the test suite on llc, llc64 and the three unit test builds with
# AddressSanitizer (leaks included) and UndefinedBehaviorSanitizer in
# build/sanitize. Any report fails the test that triggered it. Needs gcc's
# libasan and libubsan, or CC=clang with libclang-rt-14-dev.
SAN_DIR = build/sanitize
SAN_CFLAGS = $(WARN) -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
	-fsanitize=float-cast-overflow -fno-sanitize-recover=all $(NATIVE) $(PTHREAD)
# allocator_may_return_null: llc reports a failed allocation itself, with the
# size. exitcode=86: a sanitizer report never passes for llc's own status 1.
SAN_ENV = ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1:exitcode=86 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:exitcode=86

$(SAN_DIR)/llc: llc.c llc.h
	@mkdir -p $(SAN_DIR)
	$(CC) $(SAN_CFLAGS) -o $@ llc.c $(LDLIBS)

$(SAN_DIR)/llc64: llc.c llc.h
	@mkdir -p $(SAN_DIR)
	$(CC) $(SAN_CFLAGS) -DLLC_DOUBLE -o $@ llc.c $(LDLIBS)

$(SAN_DIR)/test_llc: tests/test_llc.c llc.c llc.h
	@mkdir -p $(SAN_DIR)
	$(CC) $(SAN_CFLAGS) -Wno-unused-function -o $@ tests/test_llc.c $(LDLIBS)

$(SAN_DIR)/test_llc64: tests/test_llc.c llc.c llc.h
	@mkdir -p $(SAN_DIR)
	$(CC) $(SAN_CFLAGS) -Wno-unused-function -DLLC_DOUBLE -o $@ tests/test_llc.c $(LDLIBS)

$(SAN_DIR)/test_llc_nosimd: tests/test_llc.c llc.c llc.h
	@mkdir -p $(SAN_DIR)
	$(CC) $(SAN_CFLAGS) -Wno-unused-function -DLLC_NO_SIMD -o $@ tests/test_llc.c $(LDLIBS)

sanitize: $(SAN_DIR)/llc $(SAN_DIR)/llc64 $(SAN_DIR)/test_llc $(SAN_DIR)/test_llc64 $(SAN_DIR)/test_llc_nosimd
	$(SAN_ENV) LLC_BUILD=$(SAN_DIR) LLC_SANITIZED=1 sh tests/run

# make fuzz: libFuzzer on the weight loader, the --inputs reader and the
# JSON reader, FUZZ_SECONDS each; a crash leaves its input in build/fuzz.
# Needs clang and libclang-rt-14-dev; not part of make test.
FUZZ_CC = clang
FUZZ_SECONDS ?= 120
FUZZ_DIR = build/fuzz
FUZZ_CFLAGS = -std=c99 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all

$(FUZZ_DIR)/fuzz_loader: tests/fuzz/fuzz_loader.c llc.c llc.h
	@mkdir -p $(FUZZ_DIR)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ tests/fuzz/fuzz_loader.c -lm

$(FUZZ_DIR)/fuzz_inputs: tests/fuzz/fuzz_inputs.c llc.c llc.h
	@mkdir -p $(FUZZ_DIR)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ tests/fuzz/fuzz_inputs.c -lm

$(FUZZ_DIR)/fuzz_json: tests/fuzz/fuzz_json.c llc.c llc.h
	@mkdir -p $(FUZZ_DIR)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ tests/fuzz/fuzz_json.c -lm

fuzz: llc $(FUZZ_DIR)/fuzz_loader $(FUZZ_DIR)/fuzz_inputs $(FUZZ_DIR)/fuzz_json
	sh tests/fuzz/run $(FUZZ_SECONDS)

# Regenerates the shipped models (nine programs at max_seq_len 5 and 10).
PROGRAMS = length frac_prevs sort sort_unique hist sort_freq pair_balance dyck-2 dyck-3
weights:
	for p in $(PROGRAMS); do for n in 5 10; do \
	  python3 tracr_weights/compile.py $$p --max-seq-len $$n -o tracr_weights/$${p}_n$$n.llcw || exit 1; \
	done; done

clean:
	rm -f llc llc64 tests/test_llc tests/test_llc64 tests/test_llc_nosimd llc_result.json llc_trace.csv
	rm -f llc_result.json.incomplete llc_trace.csv.incomplete
	rm -rf bench/build build

.PHONY: all run test sanitize fuzz bench weights clean
