/*
 * matmul_bench: GFLOP/s of llc's matmul_nn, matmul_nt and matmul_tn against
 * OpenBLAS's cblas_sgemm on one core, on the shapes of a model's forward
 * and backward passes with a batch of 32 full-length inputs.
 *
 * Build (bench/run does this): cc -O2 -march=native -o matmul_bench
 *   bench/matmul_bench.c -lopenblas -lm -pthread
 * Usage: matmul_bench MODEL.llcw...
 * Prints one line per shape: model, product, M K N, then the GFLOP/s of
 * OpenBLAS and of each of llc's SIMD kernels (AVX2, and AVX-512 when the
 * compiler targets it) with its ratio to OpenBLAS. Each number is the best
 * of five timings of at least 0.2 s.
 * OpenBLAS is linked here only; llc itself never uses it.
 */
#define LLC_TESTING
#include "../llc.c"

#include <cblas.h>

enum { SHAPE_NN, SHAPE_NT, SHAPE_TN };

typedef struct {
    const char *what;   /* the product in the model, e.g. "q = x Wq" */
    int shape;
    int M, K, N;
} Shape;

/* Runs one product with an llc kernel (OpenBLAS's cblas_sgemm when kern is
 * NULL) and returns its GFLOP/s: the best of five timings, each of enough
 * repetitions to take at least 0.2 s. */
static double time_product(const Shape *s, const MatmulKernel *kern, const real *A, const real *B, real *C,
                           real *pack) {
    double flops = 2.0 * s->M * s->K * s->N, best = 0.0;
    int timing;
    for (timing = 0; timing < 5; timing++) {
        long reps = 0;
        double start = now_seconds(), elapsed;
        do {
            /* the strides of matmul_nn, matmul_nt and matmul_tn */
            if (kern && s->shape == SHAPE_NN)
                gemm(kern, pack, s->M, s->N, s->K, A, s->K, 1, B, s->N, 1, C, s->N, 0);
            else if (kern && s->shape == SHAPE_NT)
                gemm(kern, pack, s->M, s->N, s->K, A, s->K, 1, B, 1, s->K, C, s->N, 0);
            else if (kern)
                gemm(kern, pack, s->M, s->N, s->K, A, 1, s->M, B, s->N, 1, C, s->N, 0);
            else {
                enum CBLAS_TRANSPOSE ta = s->shape == SHAPE_TN ? CblasTrans : CblasNoTrans;
                enum CBLAS_TRANSPOSE tb = s->shape == SHAPE_NT ? CblasTrans : CblasNoTrans;
                int lda = s->shape == SHAPE_TN ? s->M : s->K, ldb = s->shape == SHAPE_NT ? s->K : s->N;
                cblas_sgemm(CblasRowMajor, ta, tb, s->M, s->N, s->K, 1.0f, A, lda, B, ldb, 0.0f, C, s->N);
            }
            reps++;
            elapsed = now_seconds() - start;
        } while (elapsed < 0.2);
        if (flops * reps / elapsed / 1e9 > best) best = flops * reps / elapsed / 1e9;
    }
    return best;
}

int main(int argc, char **argv) {
    /* llc's SIMD kernels (AVX2 or NEON, then AVX-512), or the portable one when there is none */
    const MatmulKernel *const *kernels = MATMUL_N_KERNELS > 1 ? matmul_kernels + 1 : matmul_kernels;
    const int n_kernels = MATMUL_N_KERNELS > 1 ? MATMUL_N_KERNELS - 1 : 1;
    int i, k, q;
    openblas_set_num_threads(1);
    printf("# OpenBLAS %s, core %s, 1 thread; llc uses %s\n", openblas_get_config(), openblas_get_corename(),
           matmul_kernel->name);
    printf("%-16s %-16s %5s %5s %5s %10s", "model", "product", "M", "K", "N", "OpenBLAS");
    for (q = 0; q < n_kernels; q++) printf(" | %-22s %6s", kernels[q]->name, "ratio");
    printf("\n");
    for (i = 1; i < argc; i++) {
        Model m;
        const char *name = strrchr(argv[i], '/') ? strrchr(argv[i], '/') + 1 : argv[i];
        int R, D, HK, Mlp;
        if (model_load(&m, argv[i]) != 0) return 1;
        R = 32 * (m.cfg.max_seq_len + 1);
        D = m.cfg.d_model;
        HK = m.cfg.n_heads * m.cfg.d_head;
        Mlp = m.cfg.d_mlp;
        {
            const Shape shapes[] = {
                {"q = x Wq", SHAPE_NN, R, D, HK},
                {"x += z Wo", SHAPE_NN, R, HK, D},
                {"h = x W1", SHAPE_NN, R, D, Mlp},
                {"dz = dx Wo^T", SHAPE_NT, R, D, HK},
                {"dx += dq Wq^T", SHAPE_NT, R, HK, D},
                {"dWq = x^T dq", SHAPE_TN, D, R, HK},
                {"dW2 = h^T dx", SHAPE_TN, Mlp, R, D},
            };
            for (k = 0; k < (int)(sizeof shapes / sizeof shapes[0]); k++) {
                const Shape *s = &shapes[k];
                size_t a_size = (size_t)s->M * s->K, b_size = (size_t)s->K * s->N;
                real *A = xmalloc(a_size * sizeof(real), "A"), *B = xmalloc(b_size * sizeof(real), "B");
                real *C = xmalloc((size_t)s->M * s->N * sizeof(real), "C");
                real *pack = xmalloc(MM_PACK_REALS * sizeof(real), "pack");
                double blas;
                size_t j;
                Rng rng;
                rng_seed(&rng, 1);
                for (j = 0; j < a_size; j++) A[j] = (real)rng_normal(&rng);
                for (j = 0; j < b_size; j++) B[j] = (real)rng_normal(&rng);
                blas = time_product(s, NULL, A, B, C, pack);
                printf("%-16s %-16s %5d %5d %5d %10.1f", name, s->what, s->M, s->K, s->N, blas);
                for (q = 0; q < n_kernels; q++) {
                    double ours = time_product(s, kernels[q], A, B, C, pack);
                    printf(" | %22.1f %6.2f", ours, ours / blas);
                }
                printf("\n");
                fflush(stdout);
                free(A), free(B), free(C), free(pack);
            }
        }
        model_free(&m);
    }
    return 0;
}
