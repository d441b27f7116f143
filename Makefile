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

tests/test_llc: tests/test_llc.c llc.c llc.h
	$(CC) $(ALL_CFLAGS) -o $@ tests/test_llc.c $(LDLIBS)

tests/test_llc64: tests/test_llc.c llc.c llc.h
	$(CC) $(ALL_CFLAGS) -DLLC_DOUBLE -o $@ tests/test_llc.c $(LDLIBS)

# The float32 unit tests on the portable matmul kernel, as on a machine without SIMD.
tests/test_llc_nosimd: tests/test_llc.c llc.c llc.h
	$(CC) $(ALL_CFLAGS) -DLLC_NO_SIMD -o $@ tests/test_llc.c $(LDLIBS)

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

# Regenerates the shipped models (nine programs at max_seq_len 5 and 10).
PROGRAMS = length frac_prevs sort sort_unique hist sort_freq pair_balance dyck-2 dyck-3
weights:
	for p in $(PROGRAMS); do for n in 5 10; do \
	  python3 tracr_weights/compile.py $$p --max-seq-len $$n -o tracr_weights/$${p}_n$$n.llcw || exit 1; \
	done; done

clean:
	rm -f llc llc64 tests/test_llc tests/test_llc64 tests/test_llc_nosimd llc_result.json llc_trace.csv
	rm -rf bench/build

.PHONY: all run test bench weights clean
