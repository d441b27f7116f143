/*
 * Unit tests of llc.c: matrix multiplication, the weight file, gradients by
 * finite differences, losses, Adam, and the SGLD estimator against known
 * learning coefficients. Built three times by the Makefile: in float32, in
 * float32 with -DLLC_NO_SIMD (the portable matmul kernel), and with
 * -DLLC_DOUBLE in float64.
 *
 * Usage: tests/test_llc [MODEL_DIR]
 *   MODEL_DIR holds Tracr reference models converted to .llcw (tests/run
 *   makes it); tests that need it are skipped when it is not given.
 * Prints one line per test: "ok NAME", "FAIL NAME: why" or "skip NAME: why".
 */
#define LLC_TESTING
#include "../llc.c"

static const char *g_model_dir = NULL;
static int g_failed, g_skipped, g_n_failed;
static char g_message[1024];

static void fail(const char *fmt, ...) {
    va_list ap;
    if (g_failed) return;   /* keep the first failure */
    g_failed = 1;
    va_start(ap, fmt);
    vsnprintf(g_message, sizeof g_message, fmt, ap);
    va_end(ap);
}

static void skip(const char *why) {
    g_skipped = 1;
    snprintf(g_message, sizeof g_message, "%s", why);
}

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) fail(__VA_ARGS__);                                                            \
    } while (0)

static void run_test(const char *name, void (*fn)(void)) {
    g_failed = g_skipped = 0;
    g_message[0] = 0;
    fn();
    if (g_failed) {
        printf("FAIL %s: %s\n", name, g_message);
        g_n_failed++;
    } else if (g_skipped) {
        printf("skip %s: %s\n", name, g_message);
    } else {
        printf("ok %s\n", name);
    }
    fflush(stdout);
}

static const int is_double = sizeof(real) == sizeof(double);

/* ------------------------------------------------------------------------ */
/* Matrix multiplication                                                     */

static void fill_normal(real *a, size_t n, Rng *rng) {
    size_t i;
    for (i = 0; i < n; i++) a[i] = (real)rng_normal(rng);
}

static double max_abs_diff(const real *a, const real *b, size_t n) {
    double m = 0.0;
    size_t i;
    for (i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > m || d != d) m = d;
    }
    return m;
}

/* Every kernel against the double-accumulating reference, on sizes that
 * leave edge tiles in both directions and span several K, M and N blocks.
 * The tolerance, 4 eps sqrt(K) times the largest |C|, is about the worst
 * rounding of a K-term sum of N(0, 1) products (eps K times their mean
 * size), while a missing or doubled product, of size about 1, exceeds it. */
static void check_kernel(const MatmulKernel *kern, int M, int K, int N, Rng *rng) {
    real *A = xmalloc((size_t)M * K * sizeof(real), "A"), *B = xmalloc((size_t)K * N * sizeof(real), "B");
    real *C = xmalloc((size_t)M * N * sizeof(real), "C"), *R = xmalloc((size_t)M * N * sizeof(real), "R");
    real *At = xmalloc((size_t)M * K * sizeof(real), "At"), *Bt = xmalloc((size_t)K * N * sizeof(real), "Bt");
    real *pack = xmalloc(MM_PACK_REALS * sizeof(real), "pack");
    double eps = is_double ? DBL_EPSILON : FLT_EPSILON;
    int i, k, acc, shape;

    fill_normal(A, (size_t)M * K, rng);
    fill_normal(B, (size_t)K * N, rng);
    for (i = 0; i < M; i++)
        for (k = 0; k < K; k++) At[(size_t)k * M + i] = A[(size_t)i * K + k];
    for (k = 0; k < K; k++)
        for (i = 0; i < N; i++) Bt[(size_t)i * K + k] = B[(size_t)k * N + i];

    for (acc = 0; acc <= 1; acc++) {
        for (shape = 0; shape < 3; shape++) {
            static const char *names[3] = {"nn", "nt", "tn"};
            double d, scale = 1.0, tol;
            size_t j;
            fill_normal(C, (size_t)M * N, rng);
            memcpy(R, C, (size_t)M * N * sizeof(real));
            if (shape == 0) {
                gemm(kern, pack, M, N, K, A, K, 1, B, N, 1, C, N, acc);
                matmul_nn_ref(R, A, B, M, K, N, acc);
            } else if (shape == 1) {
                gemm(kern, pack, M, N, K, A, K, 1, Bt, 1, K, C, N, acc);
                matmul_nt_ref(R, A, Bt, M, K, N, acc);
            } else {
                gemm(kern, pack, M, N, K, At, 1, M, B, N, 1, C, N, acc);
                matmul_tn_ref(R, At, B, M, K, N, acc);
            }

            for (j = 0; j < (size_t)M * N; j++)
                if (fabs((double)R[j]) > scale) scale = fabs((double)R[j]);
            tol = 4 * eps * sqrt((double)K) * scale;
            d = max_abs_diff(C, R, (size_t)M * N);
            CHECK(d <= tol, "%s kernel, matmul_%s %dx%dx%d acc %d: max diff %g > %g", kern->name, names[shape],
                  M, K, N, acc, d, tol);
        }
    }
    free(A), free(B), free(C), free(R), free(At), free(Bt), free(pack);
}

/* Every kernel compiled in: the portable one, AVX2 or NEON, and AVX-512. */
static void test_matmul_paths(void) {
    static const int sizes[][3] = {{1, 1, 1}, {3, 5, 7}, {17, 33, 9}, {64, 64, 64}, {33, 257, 515},
                                   {130, 7, 600}, {5, 600, 3}, {1, 1000, 1}, {97, 520, 259}, {6, 16, 16},
                                   {12, 16, 16}, {13, 3, 17}};
    size_t s;
    int k;
    Rng rng;
    rng_seed(&rng, 7);
    for (s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
        for (k = 0; k < MATMUL_N_KERNELS; k++)
            check_kernel(matmul_kernels[k], sizes[s][0], sizes[s][1], sizes[s][2], &rng);
}

/* The wrappers pass the right strides: each equals the reference on one size. */
static void test_matmul_wrappers(void) {
    enum { M = 37, K = 300, N = 21 };
    real *A = xmalloc((size_t)M * K * sizeof(real), "A"), *B = xmalloc((size_t)K * N * sizeof(real), "B");
    real *C = xmalloc((size_t)M * N * sizeof(real), "C"), *R = xmalloc((size_t)M * N * sizeof(real), "R");
    real *At = xmalloc((size_t)K * M * sizeof(real), "At"), *Bt = xmalloc((size_t)N * K * sizeof(real), "Bt");
    real *pack = xmalloc(MM_PACK_REALS * sizeof(real), "pack");
    double tol = (is_double ? 1e-12 : 1e-4);
    Rng rng;
    rng_seed(&rng, 8);
    fill_normal(A, (size_t)M * K, &rng);
    fill_normal(B, (size_t)K * N, &rng);
    fill_normal(At, (size_t)K * M, &rng);
    fill_normal(Bt, (size_t)N * K, &rng);
    matmul_nn(pack, C, A, B, M, K, N, 0);
    matmul_nn_ref(R, A, B, M, K, N, 0);
    CHECK(max_abs_diff(C, R, (size_t)M * N) <= tol, "matmul_nn differs by %g", max_abs_diff(C, R, (size_t)M * N));
    matmul_nt(pack, C, A, Bt, M, K, N, 0);
    matmul_nt_ref(R, A, Bt, M, K, N, 0);
    CHECK(max_abs_diff(C, R, (size_t)M * N) <= tol, "matmul_nt differs by %g", max_abs_diff(C, R, (size_t)M * N));
    matmul_tn(pack, C, At, B, M, K, N, 0);
    matmul_tn_ref(R, At, B, M, K, N, 0);
    CHECK(max_abs_diff(C, R, (size_t)M * N) <= tol, "matmul_tn differs by %g", max_abs_diff(C, R, (size_t)M * N));
    free(A), free(B), free(C), free(R), free(At), free(Bt), free(pack);
}

/* ------------------------------------------------------------------------ */
/* Random numbers                                                            */

static void test_rng_normal_moments(void) {
    Rng rng;
    double sum = 0, sq = 0;
    int i, n = 200000;
    rng_seed(&rng, 3);
    for (i = 0; i < n; i++) {
        double x = rng_normal(&rng);
        sum += x;
        sq += x * x;
    }
    /* mean has std 1/sqrt(n) = 0.0022; variance about sqrt(2/n) = 0.0032 */
    CHECK(fabs(sum / n) < 0.01, "mean %g", sum / n);
    CHECK(fabs(sq / n - 1.0) < 0.015, "variance %g", sq / n);
}

/* Tail probabilities P(|x| > t) of the standard normal, at t = 1, 2, 3 and
 * beyond the ziggurat's tail start 3.6541528853610088 (erfc(t / sqrt 2)),
 * for the ziggurat that draws the SGLD noise and for Box-Muller. With
 * n = 10^6 draws each count is within 5 of its standard deviations. */
static void test_rng_normal_tails(void) {
    static const double t[4] = {1.0, 2.0, 3.0, 3.6541528853610088};
    enum { N = 1000000, BLOCK = 1000 };
    real *block = xmalloc(BLOCK * sizeof(real), "a block of normals");
    int generator, k;
    for (generator = 0; generator < 2; generator++) {
        long count[4] = {0, 0, 0, 0}, i;
        Rng rng;
        rng_seed(&rng, 4);
        for (i = 0; i < N; i++) {
            double x;
            if (generator == 0) {
                if (i % BLOCK == 0) rng_fill_normal(&rng, block, BLOCK);
                x = fabs((double)block[i % BLOCK]);
            } else {
                x = fabs(rng_normal(&rng));
            }
            for (k = 0; k < 4; k++) count[k] += x > t[k];
        }
        for (k = 0; k < 4; k++) {
            double p = erfc(t[k] / sqrt(2.0)), expected = p * N, sd = sqrt(N * p * (1 - p));
            CHECK(fabs(count[k] - expected) <= 5 * sd, "%s: P(|x| > %g): %ld draws, expected %.0f +- %.0f",
                  generator == 0 ? "ziggurat" : "Box-Muller", t[k], count[k], expected, sd);
        }
    }
    free(block);
}

/* rng_fill_normal() gives the same numbers as one rng_ziggurat() call each,
 * whatever the block boundaries. */
static void test_rng_fill_matches_single(void) {
    enum { N = 5000 };
    real *block = xmalloc(N * sizeof(real), "normals");
    Rng a, b;
    int i;
    rng_seed(&a, 6);
    rng_seed(&b, 6);
    rng_fill_normal(&a, block, 1234);
    rng_fill_normal(&a, block + 1234, N - 1234);
    for (i = 0; i < N; i++) {
        real single = (real)rng_ziggurat(&b);
        if (block[i] != single) {
            CHECK(0, "draw %d: block %.9g, single %.9g", i, (double)block[i], (double)single);
            break;
        }
    }
    CHECK(rng_next(&a) == rng_next(&b), "the streams are at different positions afterwards");
    free(block);
}

static void test_rng_jump_streams_differ(void) {
    Rng a, b;
    rng_seed(&a, 5);
    rng_seed(&b, 5);
    CHECK(rng_next(&a) == rng_next(&b), "same seed gives different streams");
    rng_jump(&b);
    CHECK(rng_next(&a) != rng_next(&b), "jumped stream equals the original");
}

/* ------------------------------------------------------------------------ */
/* A small random model, for tests that need no reference data               */

static void make_random_model(Model *m, int n_layers, int n_heads, int d_model, int d_head, int d_mlp,
                              int max_seq_len, int n_vocab, int n_outputs, int kind, int causal,
                              double scale, uint64_t seed) {
    int *trainable, k;
    Rng rng;
    size_t j;
    memset(m, 0, sizeof *m);
    m->cfg.n_layers = n_layers;
    m->cfg.n_heads = n_heads;
    m->cfg.d_model = d_model;
    m->cfg.d_head = d_head;
    m->cfg.d_mlp = d_mlp;
    m->cfg.max_seq_len = max_seq_len;
    m->cfg.n_vocab = n_vocab;
    m->cfg.bos_id = 0;
    m->cfg.pad_id = n_vocab - 1;
    m->cfg.output_kind = kind;
    m->cfg.n_outputs = n_outputs;
    m->cfg.causal = causal;
    trainable = xmalloc((size_t)model_tensor_count(n_layers) * sizeof(int), "flags");
    for (k = 0; k < model_tensor_count(n_layers); k++) trainable[k] = 1;
    model_layout(m, trainable);
    free(trainable);
    m->vocab = xcalloc((size_t)n_vocab, sizeof(char *), "vocab");
    for (k = 0; k < n_vocab; k++) {
        char s[16];
        if (k == 0) snprintf(s, sizeof s, "bos");
        else if (k == n_vocab - 1) snprintf(s, sizeof s, "pad");
        else snprintf(s, sizeof s, "t%d", k);
        m->vocab[k] = xstrdup(s);
    }
    m->output_values = xcalloc((size_t)n_outputs, sizeof(char *), "outputs");
    for (k = 0; k < n_outputs; k++) {
        char s[16];
        snprintf(s, sizeof s, "o%d", k);
        m->output_values[k] = xstrdup(s);
    }
    rng_seed(&rng, seed);
    for (j = 0; j < m->n_params; j++) m->params[j] = (real)(scale * rng_normal(&rng));
}

static void test_weight_file_round_trip(void) {
    Model a, b;
    char path[] = "/tmp/llc_test_roundtrip.llcw";
    size_t j;
    int k;
    make_random_model(&a, 2, 3, 8, 4, 6, 5, 6, 4, OUTPUT_CATEGORICAL, 1, 1.0, 11);
    /* a sparse tensor and a fixed one, so both encodings and both arenas are used */
    for (j = 0; j < a.tensors[1].numel; j++)
        if (j % 7) a.params[a.tensors[1].offset + j] = 0;
    model_set_meta(&a, "program", "random");
    a.output_dims = NULL;
    CHECK(model_save(&a, path) == 0, "model_save failed");
    CHECK(model_load(&b, path) == 0, "model_load failed");
    if (g_failed) return;
    CHECK(!memcmp(&a.cfg, &b.cfg, sizeof a.cfg), "config differs after the round trip");
    CHECK(a.n_params == b.n_params, "n_params %zu vs %zu", a.n_params, b.n_params);
    for (j = 0; j < a.n_params && !g_failed; j++)
        CHECK((float)a.params[j] == (float)b.params[j], "parameter %zu: %g vs %g", j,
              (double)a.params[j], (double)b.params[j]);
    for (k = 0; k < a.cfg.n_vocab; k++) CHECK(!strcmp(a.vocab[k], b.vocab[k]), "vocab %d differs", k);
    CHECK(b.n_meta == 1, "%d metadata entries after the round trip", b.n_meta);
    CHECK(model_meta(&b, "program") != NULL, "metadata key lost");
    CHECK(!model_meta(&b, "program") || !strcmp(model_meta(&b, "program"), "random"), "metadata value changed");
    model_free(&a);
    model_free(&b);
    remove(path);
}

/* A chain's arena is measured by the same layout that fills it, so it is
 * used to the byte, and its buffers are aligned for SIMD loads. */
static void test_chain_arena_exact_size(void) {
    Model m;
    Dataset d;
    ModelProblem mp;
    LlcProblem p;
    ModelChain *ch;
    Workspace *ws;
    Rng rng;
    make_random_model(&m, 2, 3, 8, 4, 6, 5, 6, 4, OUTPUT_CATEGORICAL, 0, 1.0, 12);
    rng_seed(&rng, 3);
    dataset_random(&d, &m.cfg, 7, &rng);
    mp.m = &m;
    mp.data = &d;
    mp.loss = LOSS_CE;
    mp.max_batch = 7;
    p = model_problem(&mp);
    ch = p.chain_new(&p, m.params);
    CHECK(ch->arena.used == ch->arena.size, "chain arena: %zu of %zu bytes used", ch->arena.used, ch->arena.size);
    CHECK(ch->arena.size == model_chain_bytes(&mp), "chain arena has %zu bytes, model_chain_bytes %zu",
          ch->arena.size, model_chain_bytes(&mp));
    CHECK((uintptr_t)ch->ws->pack % ARENA_ALIGN == 0, "the pack buffer is not aligned");
    CHECK((uintptr_t)ch->dy % ARENA_ALIGN == 0, "dy is not aligned");
    p.chain_free(ch);
    ws = workspace_new(&m.cfg, 3);
    CHECK(ws->owned.used == ws->owned.size, "workspace arena: %zu of %zu bytes used", ws->owned.used,
          ws->owned.size);
    workspace_free(ws);
    dataset_free(&d);
    model_free(&m);
}

/* ------------------------------------------------------------------------ */
/* Gradients by central finite differences                                   */

/* Compares the gradient of the mean loss over all samples with central
 * differences at n_per_tensor coordinates of every trainable tensor. No one
 * step suits every coordinate: on Tracr's steep weights a large step has
 * truncation error and a small one has rounding error, so each coordinate
 * takes the best of several steps. Returns the largest
 * |g - fd| / (abs_tol + rel_tol max(|g|, |fd|)), at most 1 where they agree. */
static double gradient_error(const Model *m, const Dataset *d, LossKind loss, int n_per_tensor,
                             uint64_t seed, char *worst, size_t worst_size) {
    static const double steps64[] = {1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9};
    static const double steps32[] = {3e-2, 1e-2, 3e-3, 1e-3};
    const double *steps = is_double ? steps64 : steps32;
    int n_steps = is_double ? 7 : 4;
    double abs_tol = is_double ? 1e-8 : 2e-3, rel_tol = is_double ? 1e-4 : 5e-2, err = 0.0;
    ModelProblem mp;
    LlcProblem p;
    real *w = xmalloc(m->n_params * sizeof(real), "w"), *g = xmalloc(m->n_params * sizeof(real), "g");
    int *samples = xmalloc((size_t)d->n * sizeof(int), "samples"), k, i, h;
    void *chain;
    Rng rng;

    rng_seed(&rng, seed);
    for (i = 0; i < d->n; i++) samples[i] = i;
    mp.m = m;
    mp.data = d;
    mp.loss = loss;
    mp.max_batch = d->n;
    p = model_problem(&mp);
    memcpy(w, m->params, m->n_params * sizeof(real));
    chain = p.chain_new(&p, w);
    p.loss_grad(chain, samples, d->n, g);

    for (k = 0; k < m->n_tensors; k++) {
        const TensorInfo *t = &m->tensors[k];
        if (!t->trainable) continue;
        for (i = 0; i < n_per_tensor; i++) {
            size_t j = t->offset + (size_t)rng_below(&rng, t->numel);
            real saved = w[j];
            double best = INFINITY, best_fd = 0.0;
            for (h = 0; h < n_steps; h++) {
                double up, down, fd, e;
                w[j] = saved + (real)steps[h];
                up = p.loss_grad(chain, samples, d->n, NULL);
                w[j] = saved - (real)steps[h];
                down = p.loss_grad(chain, samples, d->n, NULL);
                w[j] = saved;
                fd = (up - down) / ((double)(saved + (real)steps[h]) - (double)(saved - (real)steps[h]));
                e = fabs(g[j] - fd) / (abs_tol + rel_tol * (fabs(g[j]) > fabs(fd) ? fabs(g[j]) : fabs(fd)));
                if (e < best) best = e, best_fd = fd;
            }
            if (best > err) {
                err = best;
                snprintf(worst, worst_size, "%s[%zu]: grad %.9g, finite difference %.9g", t->name,
                         j - t->offset, (double)g[j], best_fd);
            }
        }
    }
    p.chain_free(chain);
    free(w);
    free(g);
    free(samples);
    return err;
}

static void test_gradient_random_models(void) {
    static const struct { int layers, heads, d_model, d_head, d_mlp, outputs, kind, causal; } shapes[] = {
        {1, 1, 6, 3, 5, 4, OUTPUT_CATEGORICAL, 0},
        {2, 3, 8, 4, 7, 5, OUTPUT_CATEGORICAL, 1},
        {3, 2, 5, 3, 9, 1, OUTPUT_NUMERICAL, 0},
    };
    size_t s;
    for (s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        Model m;
        Dataset d;
        Rng rng;
        int loss;
        make_random_model(&m, shapes[s].layers, shapes[s].heads, shapes[s].d_model, shapes[s].d_head,
                          shapes[s].d_mlp, 6, 7, shapes[s].outputs, shapes[s].kind, shapes[s].causal, 0.5,
                          100 + s);
        rng_seed(&rng, 9);
        dataset_random(&d, &m.cfg, 5, &rng);
        d.len[1] = 3;   /* a shorter sequence in the batch */
        dataset_label(&d, &m, 5);
        /* move the targets off the model's own outputs so every loss has a gradient */
        {
            size_t j;
            for (j = 0; j < (size_t)d.n * d.stride * d.n_outputs; j++) {
                d.ref[j] += (real)rng_normal(&rng);
                d.target[j] += (real)(0.5 * rng_normal(&rng));
            }
        }
        for (loss = LOSS_CE; loss <= LOSS_KL; loss++) {
            char worst[256] = "";
            double e;
            if (shapes[s].kind == OUTPUT_NUMERICAL && loss != LOSS_MSE) continue;
            e = gradient_error(&m, &d, (LossKind)loss, 12, 5 + s, worst, sizeof worst);
            CHECK(e <= 1, "model %zu, loss %s: error %.3g times the tolerance at %s", s, loss_name((LossKind)loss), e,
                  worst);
        }
        dataset_free(&d);
        model_free(&m);
    }
}

static int load_reference(Model *m, const char *name) {
    char path[1024];
    FILE *f;
    snprintf(path, sizeof path, "%s/%s.llcw", g_model_dir, name);
    f = fopen(path, "rb");
    if (!f) return -1;
    fclose(f);
    return model_load(m, path);
}

/* Gradients of Tracr models, at weights moved off w* by a little noise so
 * that no ReLU sits exactly at its kink. */
static void test_gradient_tracr_models(void) {
    static const char *names[] = {"sort_n5", "hist_n5", "frac_prevs_n5", "pair_balance_n4", "sort_unique_n4",
                                  "dyck-2_n4", "sort_freq_n4"};
    /* Under sanitizers (LLC_SANITIZED set by make sanitize) the 7 models take
     * about 5 minutes on 2 cores, so only the first two are checked there. */
    size_t s, n_models = getenv("LLC_SANITIZED") ? 2 : sizeof names / sizeof names[0];
    if (!g_model_dir) {
        skip("no reference models (../shared/tracr_reference is absent)");
        return;
    }
    if (!is_double) {
        skip("float32 cannot resolve finite differences on Tracr's steep weights; the float64 build checks them");
        return;
    }
    for (s = 0; s < n_models; s++) {
        Model m;
        Dataset d;
        Rng rng;
        size_t j;
        int loss;
        if (load_reference(&m, names[s]) != 0) {
            fail("cannot load reference model %s", names[s]);
            return;
        }
        rng_seed(&rng, 21);
        dataset_random(&d, &m.cfg, 4, &rng);
        dataset_label(&d, &m, 4);
        for (j = 0; j < m.n_params; j++) m.params[j] += (real)(0.001 * rng_normal(&rng));
        for (loss = LOSS_CE; loss <= LOSS_KL; loss++) {
            char worst[256] = "";
            double e;
            if (m.cfg.output_kind == OUTPUT_NUMERICAL && loss != LOSS_MSE) continue;
            e = gradient_error(&m, &d, (LossKind)loss, 10, 31 + s, worst, sizeof worst);
            CHECK(e <= 1, "%s, loss %s: error %.3g times the tolerance at %s", names[s], loss_name((LossKind)loss), e,
                  worst);
        }
        dataset_free(&d);
        model_free(&m);
    }
}

/* A freshly initialised student of a Tracr model: every tensor trainable,
 * learned embeddings and unembedding included. */
static void test_gradient_student(void) {
    Model teacher, student;
    Dataset d;
    Rng rng;
    int loss;
    if (!g_model_dir) {
        skip("no reference models (../shared/tracr_reference is absent)");
        return;
    }
    if (load_reference(&teacher, "sort_n4") != 0) {
        fail("cannot load reference model sort_n4");
        return;
    }
    rng_seed(&rng, 5);
    student_init(&student, &teacher, 0.5, "sort_n4.llcw", &rng);
    CHECK(student.n_fixed == 0, "the student has %zu fixed values", student.n_fixed);
    dataset_alloc(&d, 4, &teacher.cfg);
    dataset_fill_random(&d, &teacher.cfg, 0, 1, &rng);
    dataset_label(&d, &teacher, 4);
    for (loss = LOSS_CE; loss <= LOSS_KL; loss++) {
        char worst[256] = "";
        double e = gradient_error(&student, &d, (LossKind)loss, 12, 77, worst, sizeof worst);
        CHECK(e <= 1, "loss %s: error %.3g times the tolerance at %s", loss_name((LossKind)loss), e, worst);
    }
    dataset_free(&d);
    model_free(&student);
    model_free(&teacher);
}

/* A student with d_model 1 still gets random weight matrices (one row each),
 * zero biases, and survives a save and a load. */
static void test_student_one_row_matrices(void) {
    Model teacher, student, loaded;
    Rng rng;
    int k;
    char path[] = "/tmp/llc_test_student_d1.llcw";
    make_random_model(&teacher, 2, 1, 20, 3, 20, 5, 6, 4, OUTPUT_CATEGORICAL, 0, 1.0, 3);
    rng_seed(&rng, 2);
    student_init(&student, &teacher, 0.95, "teacher.llcw", &rng);
    CHECK(student.cfg.d_model == 1, "d_model %d, expected 1", student.cfg.d_model);
    for (k = 0; k < student.n_tensors; k++) {
        const TensorInfo *t = &student.tensors[k];
        size_t j, nonzero = 0;
        for (j = 0; j < t->numel; j++) nonzero += student.params[t->offset + j] != 0;
        if (model_tensor_is_bias(&student.cfg, k))
            CHECK(nonzero == 0, "bias %s starts non-zero", t->name);
        else
            CHECK(nonzero == t->numel, "matrix %s has %zu of %zu entries non-zero", t->name, nonzero, t->numel);
    }
    CHECK(model_save(&student, path) == 0, "model_save failed");
    CHECK(model_load(&loaded, path) == 0, "the saved student does not load");
    if (!g_failed) {
        CHECK(loaded.n_params == student.n_params, "n_params %zu vs %zu", loaded.n_params, student.n_params);
        model_free(&loaded);
    }
    remove(path);
    model_free(&student);
    model_free(&teacher);
}

static void test_student_shapes(void) {
    CHECK(shrink_dim(50, 0.48) == 26, "50 shrunk by 0.48 is %d, expected 26", shrink_dim(50, 0.48));
    CHECK(shrink_dim(25, 0.48) == 13, "25 shrunk by 0.48 is %d, expected 13", shrink_dim(25, 0.48));
    CHECK(shrink_dim(50, 0.95) == 3, "50 shrunk by 0.95 is %d, expected 3", shrink_dim(50, 0.95));
    CHECK(shrink_dim(1, 0.95) == 1, "1 shrunk by 0.95 is %d, expected 1", shrink_dim(1, 0.95));
    CHECK(shrink_dim(19, 0) == 19, "19 shrunk by 0 is %d", shrink_dim(19, 0));
}

/* ------------------------------------------------------------------------ */
/* Losses                                                                    */

static void test_loss_values(void) {
    /* one sequence of BOS + 2 tokens, 3 outputs */
    Dataset d;
    ModelConfig c;
    real y[9] = {0, 0, 0, 1, 2, 3, 0.5, 0.5, -1}, dy[9];
    int ids[3] = {0, 1, 1}, seq_start[2] = {0, 3}, row_src[3] = {0, 1, 2};
    Batch b = {1, 3, ids, seq_start};
    double ce, want, mse, kl;
    memset(&c, 0, sizeof c);
    c.max_seq_len = 2;
    c.n_outputs = 3;
    dataset_alloc(&d, 1, &c);
    d.len[0] = 3;
    d.label[0] = -1, d.label[1] = 2, d.label[2] = 0;
    d.target[3 + 2] = 1, d.target[6 + 0] = 1;
    memcpy(d.ref, y, sizeof y);

    ce = loss_compute(LOSS_CE, y, &b, row_src, &d, dy);
    want = 0.5 * ((log(exp(1.0) + exp(2.0) + exp(3.0)) - 3.0) + (log(2 * exp(0.5) + exp(-1.0)) - 0.5));
    CHECK(fabs(ce - want) < 1e-6, "cross-entropy %.9g, expected %.9g", ce, want);
    CHECK(fabs(dy[5] - 0.5 * (exp(3.0) / (exp(1.0) + exp(2.0) + exp(3.0)) - 1)) < 1e-6, "ce gradient");
    CHECK(max_abs_diff(dy, (real[3]){0}, 3) == 0, "BOS row has a gradient");

    mse = loss_compute(LOSS_MSE, y, &b, row_src, &d, dy);
    want = ((1 + 4 + 4) + (0.25 + 0.25 + 1)) / 6.0;
    CHECK(fabs(mse - want) < 1e-6, "mse %.9g, expected %.9g", mse, want);

    kl = loss_compute(LOSS_KL, y, &b, row_src, &d, dy);
    CHECK(fabs(kl) < 1e-7, "KL of the outputs to themselves is %g", kl);
    CHECK(max_abs_diff(dy, (real[9]){0}, 9) < 1e-7, "KL gradient at the reference is not zero");
    dataset_free(&d);
}

/* ------------------------------------------------------------------------ */
/* Adam                                                                      */

static void test_adam_two_steps(void) {
    /* Computed by hand (Python floats): PyTorch's Adam, lr 0.1, betas 0.9/0.999, eps 1e-8. */
    real w[2] = {1.0, -2.0}, g1[2] = {0.5, -1.0}, g2[2] = {0.1, 0.3};
    double tol = is_double ? 1e-12 : 1e-6;
    Adam a;
    adam_init(&a, 2, 0.1);
    adam_step(&a, w, g1);
    CHECK(fabs(w[0] - 0.900000002) < tol, "after step 1: w[0] %.10g", (double)w[0]);
    CHECK(fabs(w[1] + 1.900000001) < tol, "after step 1: w[1] %.10g", (double)w[1]);
    adam_step(&a, w, g2);
    CHECK(fabs(w[0] - 0.8196959063846518) < tol, "after step 2: w[0] %.12g", (double)w[0]);
    CHECK(fabs(w[1] + 1.8572151424292265) < tol, "after step 2: w[1] %.12g", (double)w[1]);
    adam_free(&a);
}

/* ------------------------------------------------------------------------ */
/* SGLD: problems with known learning coefficients, through LlcProblem       */

/* devinterp's normal-crossing model f(x) = x prod_i w_i^p_i with MSE loss. */
typedef struct {
    int d;
    const int *powers;
    int n;
    double *x, *y;
} Polynomial;

typedef struct {
    const Polynomial *poly;
    real *w;
} PolyChain;

static void *poly_chain_new(const LlcProblem *p, real *w) {
    PolyChain *c = xmalloc(sizeof *c, "chain");
    c->poly = p->ctx;
    c->w = w;
    return c;
}

static void poly_chain_free(void *c) { free(c); }

static double poly_loss_grad(void *chain, const int *samples, int n, real *grad) {
    PolyChain *c = chain;
    const Polynomial *q = c->poly;
    double prod = 1.0, sum_r2 = 0.0, sum_rx = 0.0, dprod[16];
    int i, j, k;
    for (j = 0; j < q->d; j++) prod *= pow((double)c->w[j], q->powers[j]);
    for (j = 0; j < q->d; j++) {
        dprod[j] = q->powers[j] == 0 ? 0.0 : q->powers[j] * pow((double)c->w[j], q->powers[j] - 1);
        for (k = 0; k < q->d; k++)
            if (k != j) dprod[j] *= pow((double)c->w[k], q->powers[k]);
    }
    for (i = 0; i < n; i++) {
        double x = q->x[samples[i]], r = x * prod - q->y[samples[i]];
        sum_r2 += r * r;
        sum_rx += r * x;
    }
    if (grad)
        for (j = 0; j < q->d; j++) grad[j] = (real)(2.0 * sum_rx / n * dprod[j]);
    return sum_r2 / n;
}

static void make_normal_crossing_data(Polynomial *q, int n, uint64_t seed) {
    Rng rng;
    int i;
    rng_seed(&rng, seed);
    q->n = n;
    q->x = xmalloc((size_t)n * sizeof(double), "x");
    q->y = xmalloc((size_t)n * sizeof(double), "y");
    for (i = 0; i < n; i++) q->x[i] = 2.0 * rng_normal(&rng);
    for (i = 0; i < n; i++) q->y[i] = 0.25 * rng_normal(&rng);
}

static LlcProblem poly_problem(Polynomial *q, real *w_star) {
    LlcProblem p;
    p.n_params = (size_t)q->d;
    p.w_star = w_star;
    p.n_samples = q->n;
    p.ctx = q;
    p.chain_new = poly_chain_new;
    p.loss_grad = poly_loss_grad;
    p.chain_free = poly_chain_free;
    return p;
}

static SgldSettings default_settings(void) {
    SgldSettings s;
    memset(&s, 0, sizeof s);
    s.noise_level = 1.0;
    s.every = 1;
    s.shuffle = 1;
    s.threads = 2;
    s.seed = 42;
    return s;
}

/* devinterp's sampler accuracy test: lr 4e-4, nbeta 1000 / ln 1000, 10
 * chains x 5000 draws at w* = 0; the true lambda = 1 / (2 max p) must lie
 * within llc_mean +- 3.5 llc_std. */
static void test_sgld_normal_crossing(void) {
    static const int powers[][2] = {{0, 1}, {1, 1}, {0, 2}, {1, 2}, {2, 2}, {0, 3}, {1, 3}, {2, 3}, {3, 3}};
    Polynomial q;
    size_t k;
    g_quiet = 1;
    make_normal_crossing_data(&q, 1000, 42);
    q.d = 2;
    for (k = 0; k < sizeof powers / sizeof powers[0]; k++) {
        real w_star[2] = {0, 0};
        int max_p = powers[k][0] > powers[k][1] ? powers[k][0] : powers[k][1];
        double lambda = 1.0 / (2.0 * max_p);
        SgldSettings s = default_settings();
        LlcProblem p;
        LlcResult r;
        q.powers = powers[k];
        p = poly_problem(&q, w_star);
        s.lr = 4e-4;
        s.batch = 1000;
        s.chains = 10;
        s.draws = 5000;
        llc_estimate(&p, &s, &r);
        CHECK(fabs(r.nbeta - 1000.0 / log(1000.0)) < 1e-9, "nbeta %g", r.nbeta);
        CHECK(fabs(r.llc_mean - lambda) <= 3.5 * r.llc_std, "powers [%d,%d]: llc %.4g +- %.4g, true %.4g",
              powers[k][0], powers[k][1], r.llc_mean, r.llc_std, lambda);
        llc_result_free(&r);
    }
    free(q.x);
    free(q.y);
}

/* Two-layer linear network x -> W2 W1 x fitted to pure noise (true rank 0). */
typedef struct {
    int m, h, o, n;
    double *x, *y;   /* [n, m], [n, o] */
} Dln;

typedef struct {
    const Dln *dln;
    real *w;         /* W1 [h, m], then W2 [o, h] */
} DlnChain;

static void *dln_chain_new(const LlcProblem *p, real *w) {
    DlnChain *c = xmalloc(sizeof *c, "chain");
    c->dln = p->ctx;
    c->w = w;
    return c;
}

static double dln_loss_grad(void *chain, const int *samples, int n, real *grad) {
    DlnChain *c = chain;
    const Dln *q = c->dln;
    const real *W1 = c->w, *W2 = c->w + q->h * q->m;
    double hid[64], r[64], loss = 0.0, *g = xcalloc((size_t)(q->h * q->m + q->o * q->h), sizeof(double), "g");
    int i, a, b, j;
    for (i = 0; i < n; i++) {
        const double *x = q->x + (size_t)samples[i] * q->m, *y = q->y + (size_t)samples[i] * q->o;
        for (a = 0; a < q->h; a++) {
            hid[a] = 0;
            for (b = 0; b < q->m; b++) hid[a] += W1[a * q->m + b] * x[b];
        }
        for (a = 0; a < q->o; a++) {
            double f = 0;
            for (b = 0; b < q->h; b++) f += W2[a * q->h + b] * hid[b];
            r[a] = f - y[a];
            loss += r[a] * r[a];
        }
        /* d loss / d W2[a,b] = 2 r[a] hid[b]; d loss / d W1[b,j] = 2 sum_a r[a] W2[a,b] x[j] */
        for (a = 0; a < q->o; a++)
            for (b = 0; b < q->h; b++) g[q->h * q->m + a * q->h + b] += 2 * r[a] * hid[b];
        for (b = 0; b < q->h; b++) {
            double back = 0;
            for (a = 0; a < q->o; a++) back += r[a] * W2[a * q->h + b];
            for (j = 0; j < q->m; j++) g[b * q->m + j] += 2 * back * x[j];
        }
    }
    if (grad)
        for (j = 0; j < q->h * q->m + q->o * q->h; j++) grad[j] = (real)(g[j] / ((double)n * q->o));
    free(g);
    return loss / ((double)n * q->o);
}

/* Returns the estimator's problem for q, with w* found from the start w
 * (n_w values, overwritten) by devinterp's recipe: Adam, lr 0.01, 5000
 * full-batch steps. */
static LlcProblem dln_fit(Dln *q, real *w, int n_w) {
    LlcProblem p;
    Adam adam;
    real *g = xmalloc((size_t)n_w * sizeof(real), "g");
    int *all = xmalloc((size_t)q->n * sizeof(int), "samples"), i, step;
    void *chain;
    memset(&p, 0, sizeof p);
    p.n_params = (size_t)n_w;
    p.n_samples = q->n;
    p.ctx = q;
    p.chain_new = dln_chain_new;
    p.loss_grad = dln_loss_grad;
    p.chain_free = poly_chain_free;
    for (i = 0; i < q->n; i++) all[i] = i;

    chain = p.chain_new(&p, w);
    adam_init(&adam, (size_t)n_w, 0.01);
    for (step = 0; step < 5000; step++) {
        p.loss_grad(chain, all, q->n, g);
        adam_step(&adam, w, g);
    }
    p.chain_free(chain);
    adam_free(&adam);
    free(g);
    free(all);
    p.w_star = w;
    return p;
}

/* devinterp's reduced-rank regression test: Adam (lr 0.01, 5000 full-batch
 * steps) finds w*, then SGLD lr 6e-4, localization 1, nbeta 1000 / ln 1000,
 * 3 chains x 2000 draws; the estimate must be within 40 % of Aoyagi's lambda. */
static void test_sgld_deep_linear_network(void) {
    static const struct { int m, h, o; double lambda; } cases[] = {
        {5, 3, 5, 6.5}, {5, 4, 5, 8.0}, {4, 3, 8, 6.0}, {8, 3, 4, 6.0}, {3, 8, 4, 6.0}};
    size_t k;
    g_quiet = 1;
    for (k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        Dln q;
        int n_w = cases[k].h * cases[k].m + cases[k].o * cases[k].h, i;
        real *w = xmalloc((size_t)n_w * sizeof(real), "w");
        SgldSettings s = default_settings();
        LlcProblem p;
        LlcResult r;
        Rng rng;
        q.m = cases[k].m, q.h = cases[k].h, q.o = cases[k].o, q.n = 1000;
        rng_seed(&rng, 1);
        q.x = xmalloc((size_t)q.n * q.m * sizeof(double), "x");
        q.y = xmalloc((size_t)q.n * q.o * sizeof(double), "y");
        for (i = 0; i < q.n * q.m; i++) q.x[i] = rng_normal(&rng);
        for (i = 0; i < q.n * q.o; i++) q.y[i] = rng_normal(&rng);
        for (i = 0; i < q.h * q.m; i++) w[i] = (real)((2 * rng_uniform(&rng) - 1) / sqrt((double)q.m));
        for (; i < n_w; i++) w[i] = (real)((2 * rng_uniform(&rng) - 1) / sqrt((double)q.h));

        p = dln_fit(&q, w, n_w);

        s.lr = 6e-4;
        s.localization = 1.0;
        s.batch = 1000;
        s.chains = 3;
        s.draws = 2000;
        llc_estimate(&p, &s, &r);
        CHECK(fabs(r.llc_mean - cases[k].lambda) <= 0.4 * cases[k].lambda,
              "widths (%d,%d,%d): llc %.4g, true %.4g", q.m, q.h, q.o, r.llc_mean, cases[k].lambda);
        llc_result_free(&r);
        free(q.x), free(q.y), free(w);
    }
}

/* With no noise, SGLD is gradient descent with step lr/2 * nbeta. */
static void test_sgld_zero_noise_is_gradient_descent(void) {
    static const int powers[2] = {1, 2};
    Polynomial q;
    real w_star[2] = {0.7f, -0.4f}, w[2];
    SgldSettings s = default_settings();
    LlcProblem p;
    LlcResult r;
    int all[64], i, d;
    void *chain;
    make_normal_crossing_data(&q, 64, 8);
    q.d = 2;
    q.powers = powers;
    p = poly_problem(&q, w_star);
    s.lr = 1e-2;
    s.nbeta = 3.0;
    s.noise_level = 0.0;
    s.batch = 64;
    s.chains = 1;
    s.draws = 50;
    llc_estimate(&p, &s, &r);

    for (i = 0; i < 64; i++) all[i] = i;
    memcpy(w, w_star, sizeof w);
    chain = p.chain_new(&p, w);
    for (d = 0; d < 50; d++) {
        real g[2];
        double loss = p.loss_grad(chain, all, 64, g);
        CHECK(fabs(loss - r.loss_trace[d]) <= 1e-12 * fabs(loss), "draw %d: SGLD %.12g, descent %.12g", d,
              r.loss_trace[d], loss);
        for (i = 0; i < 2; i++) w[i] = w[i] - (real)(s.lr / 2) * ((real)s.nbeta * g[i]);
    }
    CHECK(r.loss_trace[49] < r.loss_trace[0], "loss did not decrease");
    p.chain_free(chain);
    llc_result_free(&r);
    free(q.x);
    free(q.y);
}

/* Seeded runs repeat exactly, whatever the number of threads. */
static void test_sgld_seeded_repeat_and_threads(void) {
    static const int powers[2] = {1, 2};
    Polynomial q;
    real w_star[2] = {0, 0};
    SgldSettings s = default_settings();
    LlcProblem p;
    LlcResult a, b, c;
    make_normal_crossing_data(&q, 200, 4);
    q.d = 2;
    q.powers = powers;
    p = poly_problem(&q, w_star);
    s.lr = 1e-3;
    s.batch = 32;
    s.chains = 3;
    s.draws = 100;
    s.threads = 1;
    llc_estimate(&p, &s, &a);
    llc_estimate(&p, &s, &b);
    s.threads = 2;
    llc_estimate(&p, &s, &c);
    CHECK(!memcmp(a.loss_trace, b.loss_trace, 300 * sizeof(double)), "two seeded runs differ");
    CHECK(!memcmp(a.loss_trace, c.loss_trace, 300 * sizeof(double)), "1 and 2 threads differ");
    CHECK(a.llc_mean == c.llc_mean, "llc_mean %g vs %g", a.llc_mean, c.llc_mean);
    s.seed = 43;
    llc_result_free(&b);
    llc_estimate(&p, &s, &b);
    CHECK(memcmp(a.loss_trace, b.loss_trace, 300 * sizeof(double)) != 0, "another seed gives the same run");
    llc_result_free(&a);
    llc_result_free(&b);
    llc_result_free(&c);
    free(q.x);
    free(q.y);
}

/* A problem whose loss is the number of earlier calls in the chain, and
 * whose chain number 1 returns a NaN loss at call g_counting_nan_call and
 * an infinite gradient at call g_counting_inf_call (the first call is 1). */
typedef struct {
    int n_chains_started;
    int calls;
    int chain;
} CountingChain;

static int g_counting_started;
static int g_counting_nan_call = 8;   /* the call of chain 1 that returns a NaN loss */
static int g_counting_inf_call = 0;   /* the call of chain 1 that returns an infinite gradient, 0 for none */

static void *counting_chain_new(const LlcProblem *p, real *w) {
    CountingChain *c = xcalloc(1, sizeof *c, "chain");
    (void)p;
    (void)w;
    c->chain = g_counting_started++ - 1;   /* the first chain made computes init_loss */
    return c;
}

static double counting_loss_grad(void *chain, const int *samples, int n, real *grad) {
    CountingChain *c = chain;
    double loss = c->calls++;
    (void)samples;
    (void)n;
    if (grad) grad[0] = c->chain == 1 && c->calls == g_counting_inf_call ? INFINITY : 0;
    if (c->chain == 1 && c->calls == g_counting_nan_call) return NAN;
    return loss;
}

static LlcProblem counting_problem(real *w_star) {
    LlcProblem p;
    p.n_params = 1;
    p.w_star = w_star;
    p.n_samples = 10;
    p.ctx = NULL;
    p.chain_new = counting_chain_new;
    p.loss_grad = counting_loss_grad;
    p.chain_free = poly_chain_free;
    return p;
}

/* Burn-in 3 and every 2 record the losses of steps 4, 6, 8, 10 (the loss
 * before each of those steps' updates); chain 1 diverges at step 7, which
 * lies in draw (7 - 3) / 2 = 2, and is left out of llc_mean. */
static void test_sgld_draw_rule_and_divergence(void) {
    real w_star[1] = {0};
    SgldSettings s = default_settings();
    LlcProblem p = counting_problem(w_star);
    LlcResult r;
    int d;
    s.lr = 1e-3;
    s.nbeta = 1.0;
    s.batch = 5;
    s.chains = 3;
    s.draws = 4;
    s.burnin = 3;
    s.every = 2;
    s.threads = 1;
    g_counting_started = 0;
    llc_estimate(&p, &s, &r);
    /* init loss: min(3 chains, 2 batches) = 2 calls with losses 0 and 1 */
    CHECK(r.init_loss == 0.5, "init_loss %g, expected 0.5", r.init_loss);
    for (d = 0; d < 4; d++)
        CHECK(r.loss_trace[d] == 4 + 2 * d, "chain 0 draw %d is %g, expected %d", d, r.loss_trace[d], 4 + 2 * d);
    CHECK(r.diverged_step[0] == -1, "healthy chain 0 is marked diverged");
    CHECK(r.diverged_step[2] == -1, "healthy chain 2 is marked diverged");
    CHECK(r.diverged_step[1] == 7, "chain 1 diverged at step %d, expected 7", r.diverged_step[1]);
    CHECK(r.diverged_draw[1] == 2, "chain 1 diverged in draw %d, expected 2", r.diverged_draw[1]);
    CHECK(r.n_diverged == 1, "n_diverged %d", r.n_diverged);
    CHECK(isnan(r.llc_chain[1]), "the diverged chain has llc %g", r.llc_chain[1]);
    CHECK(r.llc_mean == 1.0 * (7.0 - 0.5), "llc_mean %g, expected 6.5 from chains 0 and 2", r.llc_mean);
    llc_result_free(&r);
}

/* With every = 3, draw d is recorded at step burnin + 3 d + 2. A divergence
 * is reported at its step, with diverged_draw the first draw without a
 * finite loss, which is the number of draws recorded. A NaN loss at a draw
 * step leaves that draw NaN. An infinite gradient at a draw step leaves
 * that draw's loss, taken before the update, recorded. */
static void test_sgld_divergence_between_draws(void) {
    static const struct { int burnin, nan_call, inf_call, step, draws_done, draw; } cases[] = {
        {0, 2, 0, 1, 0, 0},      /* NaN loss at step 1, before draw 0 at step 2 */
        {0, 6, 0, 5, 1, 1},      /* NaN loss at step 5, the step of draw 1 */
        {0, 0, 6, 5, 2, 2},      /* infinite gradient at step 5, after draw 1 is recorded */
        {0, 0, 4, 3, 1, 1},      /* infinite gradient at step 3, between draws 0 and 1 */
        {2, 0, 2, 1, 0, -1}};    /* infinite gradient at step 1, during burn-in */
    real w_star[1] = {0};
    size_t k;
    for (k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        SgldSettings s = default_settings();
        LlcProblem p = counting_problem(w_star);
        LlcResult r;
        int d;
        s.lr = 1e-3;
        s.nbeta = 1.0;
        s.batch = 5;
        s.chains = 3;
        s.draws = 4;
        s.burnin = cases[k].burnin;
        s.every = 3;
        s.threads = 1;
        g_counting_started = 0;
        g_counting_nan_call = cases[k].nan_call;
        g_counting_inf_call = cases[k].inf_call;
        llc_estimate(&p, &s, &r);
        CHECK(r.diverged_step[1] == cases[k].step, "case %zu: diverged at step %d, expected %d", k,
              r.diverged_step[1], cases[k].step);
        CHECK(r.draws_done[1] == cases[k].draws_done, "case %zu: %d draws recorded, expected %d", k, r.draws_done[1],
              cases[k].draws_done);
        CHECK(r.diverged_draw[1] == cases[k].draw, "case %zu: diverged_draw %d, expected %d", k, r.diverged_draw[1],
              cases[k].draw);
        for (d = 0; d < cases[k].draws_done; d++)
            CHECK(r.loss_trace[s.draws + d] == s.burnin + 3 * d + 2, "case %zu: draw %d is %g, expected %d", k, d,
                  r.loss_trace[s.draws + d], s.burnin + 3 * d + 2);
        for (d = cases[k].draws_done; d < s.draws; d++)
            CHECK(isnan(r.loss_trace[s.draws + d]), "case %zu: draw %d after the divergence is %g", k, d,
                  r.loss_trace[s.draws + d]);
        CHECK(r.diverged_step[0] == -1, "case %zu: healthy chain 0 is marked diverged", k);
        CHECK(r.diverged_step[2] == -1, "case %zu: healthy chain 2 is marked diverged", k);
        CHECK(r.n_diverged == 1, "case %zu: n_diverged %d", k, r.n_diverged);
        llc_result_free(&r);
    }
    g_counting_nan_call = 8;
    g_counting_inf_call = 0;
}

/* An update is lost when w stays the same although the exact step is not
 * zero. At lr 1e-320 every step of a weight near 1 rounds away in both
 * builds. In float32 lr / 2 and sqrt(lr) themselves round to 0, and in
 * float64 the step of about sqrt(lr) = 1e-160 is far below half a weight's
 * spacing. A step that is zero by intent (no noise, zero drift) is not a
 * lost update. */
static void test_sgld_lost_updates(void) {
    static const int powers[2] = {1, 2};
    Polynomial q;
    real w_star[2] = {0.7f, -0.4f}, zero[1] = {0};
    SgldSettings s = default_settings();
    LlcProblem p;
    LlcResult r;
    make_normal_crossing_data(&q, 64, 8);
    q.d = 2;
    q.powers = powers;
    p = poly_problem(&q, w_star);
    s.batch = 16;
    s.chains = 2;
    s.draws = 20;

    s.lr = 1e-320;
    llc_estimate(&p, &s, &r);
    CHECK(r.unchanged_fraction == 1, "lr 1e-320: %g of the updates lost, expected all", r.unchanged_fraction);
    CHECK(r.unchanged_fraction_nonzero == 1, "lr 1e-320: %g of the updates of non-zero weights lost, expected all",
          r.unchanged_fraction_nonzero);
    llc_result_free(&r);

    s.lr = 1e-3;
    llc_estimate(&p, &s, &r);
    CHECK(r.unchanged_fraction == 0, "lr 1e-3: %g of the updates lost", r.unchanged_fraction);
    llc_result_free(&r);
    free(q.x);
    free(q.y);

    /* The counting problem's gradient is 0, so only noise moves w. Noise of
     * sqrt(lr) 1e-200 underflows to a step of exactly 0 even in float64,
     * and without noise no step is intended. */
    p = counting_problem(zero);
    s.lr = 1e-320;
    s.noise_level = 1e-200;
    s.batch = 5;
    s.threads = 1;
    g_counting_started = 0;
    g_counting_nan_call = 0;
    llc_estimate(&p, &s, &r);
    CHECK(r.n_diverged == 0, "%d chains of the counting problem diverged", r.n_diverged);
    CHECK(r.unchanged_fraction == 1, "noise 1e-200: %g of the updates lost, expected all", r.unchanged_fraction);
    llc_result_free(&r);

    s.noise_level = 0;
    g_counting_started = 0;
    llc_estimate(&p, &s, &r);
    CHECK(r.unchanged_fraction == 0, "no step intended, yet %g of the updates counted as lost", r.unchanged_fraction);
    llc_result_free(&r);
    g_counting_nan_call = 8;
}

/* devinterp's NaN test: Polynomial([2, 2]) at 0 with lr 1000, nbeta 1000. */
static void test_sgld_polynomial_blows_up(void) {
    static const int powers[2] = {2, 2};
    Polynomial q;
    real w_star[2] = {0, 0};
    SgldSettings s = default_settings();
    LlcProblem p;
    LlcResult r;
    make_normal_crossing_data(&q, 100, 42);
    q.d = 2;
    q.powers = powers;
    p = poly_problem(&q, w_star);
    s.lr = 1000;
    s.nbeta = 1000;
    s.batch = 100;
    s.chains = 2;
    s.draws = 100;
    llc_estimate(&p, &s, &r);
    CHECK(r.n_diverged == 2, "%d of 2 chains diverged", r.n_diverged);
    CHECK(r.diverged_draw[0] >= 1, "chain 0 diverged at draw %d, before any update", r.diverged_draw[0]);
    CHECK(r.diverged_draw[0] < 20, "chain 0 diverged only at draw %d", r.diverged_draw[0]);
    CHECK(isnan(r.llc_mean), "llc_mean is %g, not NaN, with every chain diverged", r.llc_mean);
    llc_result_free(&r);
    free(q.x);
    free(q.y);
}

/* The JSON reader stays within the length it is given: each text sits in a
 * buffer of exactly its size, so AddressSanitizer (make sanitize) reports a
 * read past it. The fuzzer found such reads in the literals true, false
 * and null at the end of a text. */
static void test_json_parse_bounds(void) {
    static const struct { const char *text; size_t len; int ok; } cases[] = {
        {"true", 4, 1}, {"null", 4, 1}, {"[false]", 7, 1}, {"-2.5e-3", 7, 1}, {"{\"a\": [1, \"b\"]}", 15, 1},
        {"tru", 3, 0}, {"nul", 3, 0}, {"fals", 4, 0}, {"[1,", 3, 0}, {"{\"a\":", 5, 0}, {"\"abc", 4, 0},
        {"1\0", 2, 0}, {"\"\\u00", 5, 0}};
    size_t k;
    for (k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        char *text = xmalloc(cases[k].len, "a JSON text");
        const char *error = NULL;
        JsonValue v;
        int rc;
        memcpy(text, cases[k].text, cases[k].len);
        rc = json_parse(text, cases[k].len, &v, &error);
        CHECK((rc == 0) == cases[k].ok, "case %zu (%.*s): json_parse returned %d (%s)", k, (int)cases[k].len,
              cases[k].text, rc, error ? error : "no error");
        if (rc == 0) json_value_free(&v);
        free(text);
    }
}

/* An input string and what a string writer must print for it. */
typedef struct {
    const char *in, *out;
} WriterCase;

/* Runs write on each case's input into memory and compares the text. */
static void check_string_writer(void (*write)(FILE *, const char *), const WriterCase *cases, size_t n) {
    size_t k;
    for (k = 0; k < n; k++) {
        char *text = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);
        if (!f) {
            CHECK(0, "open_memstream failed");
            return;
        }
        write(f, cases[k].in);
        fclose(f);
        CHECK(!strcmp(text, cases[k].out), "case %zu: wrote [%s], expected [%s]", k, text, cases[k].out);
        free(text);
    }
}

/* Strings in JSON output stay valid UTF-8: each byte outside a valid
 * sequence becomes \ufffd, and valid sequences pass through. */
static void test_json_string_invalid_utf8(void) {
    static const WriterCase cases[] = {
        {"plain", "\"plain\""},
        {"bad\xff.llcw", "\"bad\\ufffd.llcw\""},
        {"caf\xc3\xa9 \xf0\x9f\x98\x80", "\"caf\xc3\xa9 \xf0\x9f\x98\x80\""},
        {"\xc0\xaf", "\"\\ufffd\\ufffd\""},                         /* overlong '/' */
        {"\xed\xa0\x80", "\"\\ufffd\\ufffd\\ufffd\""},                /* surrogate U+D800 */
        {"\xf4\x90\x80\x80", "\"\\ufffd\\ufffd\\ufffd\\ufffd\""},       /* above U+10FFFF */
        {"x\xe2\x82", "\"x\\ufffd\\ufffd\""},                        /* cut short at the end */
        {"\xe2\x82y", "\"\\ufffd\\ufffdy\""},                        /* cut short by ASCII */
        {"\x80", "\"\\ufffd\""},                                    /* stray continuation byte */
        {"q\"\\\n", "\"q\\\"\\\\\\n\""}};
    check_string_writer(json_string_body, cases, sizeof cases / sizeof cases[0]);
}

/* CSV text fields are quoted (RFC 4180) exactly when they contain a comma,
 * a double quote, CR or LF. */
static void test_csv_field_quoting(void) {
    static const WriterCase cases[] = {
        {"sort", "sort"},
        {"", ""},
        {"a,b", "\"a,b\""},
        {"say \"hi\"", "\"say \"\"hi\"\"\""},
        {"line\nbreak", "\"line\nbreak\""},
        {"carriage\rreturn", "\"carriage\rreturn\""},
        {"semi;colon and space", "semi;colon and space"}};
    check_string_writer(csv_field, cases, sizeof cases / sizeof cases[0]);
}

/* Numbers written as digits only keep their exact value up to 2^64 - 1,
 * beyond the 2^53 that a double stores exactly. */
static void test_json_exact_integers(void) {
    static const struct { const char *text; int exact; unsigned long long value; } cases[] = {
        {"{\"seed\": 18446744073709551615}", 1, 18446744073709551615ULL},
        {"{\"seed\": 9007199254740993}", 1, 9007199254740993ULL},
        {"{\"seed\": 0}", 1, 0},
        {"{\"seed\": 18446744073709551616}", 0, 0},
        {"{\"seed\": -1}", 0, 0},
        {"{\"seed\": 1e3}", 0, 0},
        {"{\"seed\": 5.0}", 0, 0},
        {"{\"seed\": \"5\"}", 0, 0}};
    size_t k;
    for (k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        JsonValue v;
        const char *error = NULL;
        unsigned long long seed = 0;
        int exact;
        if (json_parse(cases[k].text, strlen(cases[k].text), &v, &error) != 0) {
            CHECK(0, "%s does not parse: %s", cases[k].text, error);
            continue;
        }
        exact = json_uint64(&v, "seed", &seed);
        CHECK(exact == cases[k].exact, "%s: json_uint64 returned %d", cases[k].text, exact);
        CHECK(!exact || seed == cases[k].value, "%s: read %llu", cases[k].text, seed);
        json_value_free(&v);
    }
}

/* Outputs count as the same file as another path through "." in the path,
 * a symbolic link (dangling too) or a hard link, but not when both are one
 * character device. Only stat looks at /dev/null here. */
static void test_output_overlaps(void) {
    char folder[] = "/tmp/llc_test_overlaps.XXXXXX", a[80], b[80], dotted[80], symbolic[80], hard[80];
    FILE *f;
    if (!mkdtemp(folder)) {
        CHECK(0, "mkdtemp failed: %s", strerror(errno));
        return;
    }
    snprintf(a, sizeof a, "%s/a", folder);
    snprintf(b, sizeof b, "%s/b", folder);
    snprintf(dotted, sizeof dotted, "%s/./a", folder);
    snprintf(symbolic, sizeof symbolic, "%s/symbolic", folder);
    snprintf(hard, sizeof hard, "%s/hard", folder);
    CHECK(output_overlaps(a, dotted) == 1, "a new file and its path through \".\" differ");
    CHECK(output_overlaps(a, b) == 0, "two new files in one folder overlap");
    CHECK(symlink("a", symbolic) == 0, "symlink failed: %s", strerror(errno));
    CHECK(output_overlaps(symbolic, a) == 1, "a dangling link and its target differ");
    f = fopen(a, "w");
    CHECK(f != NULL, "cannot create %s", a);
    if (f) fclose(f);
    CHECK(link(a, hard) == 0, "link failed: %s", strerror(errno));
    CHECK(output_overlaps(hard, a) == 1, "a hard link and its file differ");
    CHECK(output_overlaps(symbolic, a) == 1, "a link and its existing target differ");
    CHECK(output_overlaps("/dev/null", "/dev/null") == 0, "/dev/null counts as one file for two outputs");
    remove(hard);
    remove(symbolic);
    remove(a);
    rmdir(folder);
}

static void test_default_nbeta(void) {
    CHECK(fabs(sgld_default_nbeta(32) - 32 / log(32.0)) < 1e-12, "B=32");
    CHECK(sgld_default_nbeta(1) == 1.0, "B=1 gives %g", sgld_default_nbeta(1));
}

/* devinterp's closed-form MALA cases: previous point, drift and potential,
 * current point, drift and potential, step size -> acceptance. devinterp's
 * values come from float32 arithmetic, which the float32 build repeats; the
 * float64 build is checked against the exact values of the same formula
 * (the third case differs from devinterp's float32 value by 6e-6). */
static void test_mala_known_values(void) {
    static const struct {
        real w0[2], d0[2];
        double U0;
        real w1[2], d1[2];
        double U1, eps, devinterp, exact;
    } cases[] = {
        {{0, 0}, {0, 0}, 0, {1.5, 5.5}, {1.5, 5.5}, 16.25, 0.1, 0.6661436, 0.66614361},
        {{1, 1}, {1, 1}, 1, {1.5, 0.5}, {1.5, 0.5}, 1.25, 0.5, 0.9692332, 0.96923323},
        {{0, 0}, {0, 0}, 0, {10.5, 5.5}, {10.5, 5.5}, 70.25, 0.1, 0.17268492, 0.17269125},
        {{0, 0}, {0, 0}, 0, {10.5, 5.5}, {10.5, 5.5}, 70.25, 0.5, 0.00015359, 0.00015359},
    };
    size_t k;
    for (k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        double got = mala_acceptance(cases[k].w0, cases[k].d0, cases[k].U0, cases[k].w1, cases[k].d1, cases[k].U1,
                                     cases[k].eps, 2);
        double want = is_double ? cases[k].exact : cases[k].devinterp;
        CHECK(fabs(got - want) < 1e-6, "case %zu: acceptance %.9f, expected %.9f", k, got, want);
    }
}

/* Calibration on the known-answer models: the recommended step size and
 * nbeta must give an estimate inside devinterp's acceptance band. */
static const double calibration_lrs[] = {1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2};

static void test_calibration_normal_crossing(void) {
    static const int powers[][2] = {{0, 1}, {1, 2}, {2, 3}};
    Polynomial q;
    size_t k;
    double nbetas[5], base = 1000.0 / log(1000.0);
    int j;
    for (j = 0; j < 5; j++) nbetas[j] = base * pow(10.0, (j - 2) / 2.0);
    g_quiet = getenv("LLC_TEST_VERBOSE") == NULL;
    make_normal_crossing_data(&q, 1000, 42);
    q.d = 2;
    for (k = 0; k < sizeof powers / sizeof powers[0]; k++) {
        real w_star[2] = {0, 0};
        int max_p = powers[k][0] > powers[k][1] ? powers[k][0] : powers[k][1];
        double lambda = 1.0 / (2.0 * max_p);
        SgldSettings s = default_settings();
        Calibration cal;
        LlcProblem p;
        LlcResult r;
        q.powers = powers[k];
        p = poly_problem(&q, w_star);
        s.batch = 1000;
        s.chains = 4;
        s.draws = 400;
        CHECK(calibrate(&p, &s, calibration_lrs, 7, nbetas, 5, &cal) == 0, "calibrate failed");
        CHECK(cal.best >= 0, "powers [%d,%d]: no recommendation: %s", powers[k][0], powers[k][1], cal.explanation);
        if (g_failed) return;
        s.lr = cal.lr;
        s.nbeta = cal.nbeta;
        s.chains = 10;
        s.draws = 5000;
        llc_estimate(&p, &s, &r);
        CHECK(fabs(r.llc_mean - lambda) <= 3.5 * r.llc_std,
              "powers [%d,%d]: at lr %g, nbeta %g: llc %.4g +- %.4g, true %.4g", powers[k][0], powers[k][1], cal.lr,
              cal.nbeta, r.llc_mean, r.llc_std, lambda);
        if (getenv("LLC_TEST_VERBOSE"))
            printf("powers [%d,%d]: lr %g nbeta %g llc %.4g +- %.4g (true %.4g)\n%s\n", powers[k][0], powers[k][1],
                   cal.lr, cal.nbeta, r.llc_mean, r.llc_std, lambda, cal.explanation);
        llc_result_free(&r);
        calibration_free(&cal);
    }
    free(q.x);
    free(q.y);
}

static void test_calibration_deep_linear_network(void) {
    Dln q;
    int n_w, i, j;
    real *w;
    SgldSettings s = default_settings();
    double nbetas[5], base = 1000.0 / log(1000.0), lambda = 6.5;
    Calibration cal;
    LlcProblem p;
    LlcResult r;
    Rng rng;
    g_quiet = 1;
    for (j = 0; j < 5; j++) nbetas[j] = base * pow(10.0, (j - 2) / 2.0);
    q.m = 5, q.h = 3, q.o = 5, q.n = 1000;
    n_w = q.h * q.m + q.o * q.h;
    w = xmalloc((size_t)n_w * sizeof(real), "w");
    rng_seed(&rng, 1);
    q.x = xmalloc((size_t)q.n * q.m * sizeof(double), "x");
    q.y = xmalloc((size_t)q.n * q.o * sizeof(double), "y");
    for (i = 0; i < q.n * q.m; i++) q.x[i] = rng_normal(&rng);
    for (i = 0; i < q.n * q.o; i++) q.y[i] = rng_normal(&rng);
    for (i = 0; i < n_w; i++) w[i] = (real)((2 * rng_uniform(&rng) - 1) / sqrt(3.0));
    p = dln_fit(&q, w, n_w);

    s.localization = 1.0;
    s.batch = 1000;
    s.chains = 3;
    s.draws = 400;
    CHECK(calibrate(&p, &s, calibration_lrs, 7, nbetas, 5, &cal) == 0, "calibrate failed");
    CHECK(cal.best >= 0, "no recommendation: %s", cal.explanation);
    if (!g_failed) {
        s.lr = cal.lr;
        s.nbeta = cal.nbeta;
        s.draws = 2000;
        llc_estimate(&p, &s, &r);
        CHECK(fabs(r.llc_mean - lambda) <= 0.4 * lambda, "at lr %g, nbeta %g: llc %.4g, true %.4g", cal.lr, cal.nbeta,
              r.llc_mean, lambda);
        if (getenv("LLC_TEST_VERBOSE"))
            printf("dln: lr %g nbeta %g llc %.4g (true %.4g)\n%s\n", cal.lr, cal.nbeta, r.llc_mean, lambda,
                   cal.explanation);
        llc_result_free(&r);
    }
    calibration_free(&cal);
    free(q.x), free(q.y), free(w);
}

/* ------------------------------------------------------------------------ */
/* PCA and the loss landscape                                                */

/* Eigenvalues (descending) and eigenvectors (columns of V) of a symmetric
 * n x n matrix by cyclic Jacobi rotations, the explicit reference. */
static void jacobi_eigen(double *A, int n, double *values, double *V) {
    int sweep, p, q, k, i, j;
    for (i = 0; i < n; i++)
        for (j = 0; j < n; j++) V[i * n + j] = i == j;
    for (sweep = 0; sweep < 100; sweep++) {
        double off = 0.0;
        for (p = 0; p < n; p++)
            for (q = p + 1; q < n; q++) off += A[p * n + q] * A[p * n + q];
        if (off < 1e-30) break;
        for (p = 0; p < n; p++)
            for (q = p + 1; q < n; q++) {
                double theta, t, c, s;
                if (fabs(A[p * n + q]) < 1e-300) continue;
                theta = (A[q * n + q] - A[p * n + p]) / (2 * A[p * n + q]);
                t = (theta >= 0 ? 1 : -1) / (fabs(theta) + sqrt(theta * theta + 1));
                c = 1 / sqrt(t * t + 1);
                s = t * c;
                for (k = 0; k < n; k++) {   /* A <- A J */
                    double akp = A[k * n + p], akq = A[k * n + q];
                    A[k * n + p] = c * akp - s * akq;
                    A[k * n + q] = s * akp + c * akq;
                }
                for (k = 0; k < n; k++) {   /* A <- J^T A */
                    double apk = A[p * n + k], aqk = A[q * n + k];
                    A[p * n + k] = c * apk - s * aqk;
                    A[q * n + k] = s * apk + c * aqk;
                }
                for (k = 0; k < n; k++) {
                    double vkp = V[k * n + p], vkq = V[k * n + q];
                    V[k * n + p] = c * vkp - s * vkq;
                    V[k * n + q] = s * vkp + c * vkq;
                }
            }
    }
    for (i = 0; i < n; i++) values[i] = A[i * n + i];
    for (i = 0; i < n; i++)   /* selection sort, descending, with the columns */
        for (j = i + 1; j < n; j++)
            if (values[j] > values[i]) {
                double t = values[i];
                values[i] = values[j];
                values[j] = t;
                for (k = 0; k < n; k++) {
                    t = V[k * n + i];
                    V[k * n + i] = V[k * n + j];
                    V[k * n + j] = t;
                }
            }
}

static void test_power_iteration_vs_jacobi(void) {
    enum { K = 8, P = 30 };
    double G[K * P], M[K * K], A[K * K], values[2], vecs[2 * K], ref_values[K], V[K * K];
    int i, j, k, which;
    Rng rng;
    rng_seed(&rng, 12);
    for (i = 0; i < K * P; i++) G[i] = rng_normal(&rng) * (1 + i % 3);
    for (i = 0; i < K; i++)
        for (j = 0; j < K; j++) {
            double sum = 0;
            for (k = 0; k < P; k++) sum += G[i * P + k] * G[j * P + k];
            M[i * K + j] = A[i * K + j] = sum / (K - 1);
        }
    power_iteration_top2(M, K, 3, values, vecs);
    jacobi_eigen(A, K, ref_values, V);
    for (which = 0; which < 2; which++) {
        double dot = 0;
        for (i = 0; i < K; i++) dot += vecs[which * K + i] * V[i * K + which];
        CHECK(fabs(values[which] - ref_values[which]) <= 1e-9 * ref_values[0], "eigenvalue %d: %.12g vs Jacobi %.12g",
              which, values[which], ref_values[which]);
        CHECK(fabs(fabs(dot) - 1) < 1e-9, "eigenvector %d: |cos| %.12g with Jacobi's", which, fabs(dot));
    }
}

/* Per-sample loss 1/2 w^T A w + z_s . w with w* = 0, so the gradient of
 * sample s at w* is z_s. The six samples are +-3 q1, +-2 q2, +-1 q3 for
 * orthonormal q, so the centred gradients have principal axes q1, q2, q3
 * with variances 18/5, 8/5, 2/5 (shares 9/14, 4/14, 1/14). */
typedef struct {
    int P;
    double A[36], z[6][6], q[3][6];
} Quadratic;

typedef struct {
    const Quadratic *quad;
    real *w;
} QuadChain;

static void *quad_chain_new(const LlcProblem *p, real *w) {
    QuadChain *c = xmalloc(sizeof *c, "chain");
    c->quad = p->ctx;
    c->w = w;
    return c;
}

static double quad_loss_grad(void *chain, const int *samples, int n, real *grad) {
    QuadChain *c = chain;
    const Quadratic *q = c->quad;
    double loss = 0.0;
    int s, i, j;
    if (grad)
        for (i = 0; i < q->P; i++) grad[i] = 0;
    for (s = 0; s < n; s++) {
        const double *z = q->z[samples[s]];
        for (i = 0; i < q->P; i++) {
            double Aw = 0;
            for (j = 0; j < q->P; j++) Aw += q->A[i * q->P + j] * c->w[j];
            loss += 0.5 * c->w[i] * Aw + z[i] * c->w[i];
            if (grad) grad[i] += (real)((Aw + z[i]) / n);
        }
    }
    return loss / n;
}

static double quad_value(const Quadratic *q, const double *w) {
    double loss = 0;
    int i, j;
    for (i = 0; i < q->P; i++)
        for (j = 0; j < q->P; j++) loss += 0.5 * w[i] * q->A[i * q->P + j] * w[j];
    return loss;
}

/* Random orthonormal q1..q3 (Gram-Schmidt), a random SPD A, and the six
 * gradients +-3 q1, +-2 q2, +-1 q3. */
static void make_quadratic(Quadratic *qp) {
    static const double scale[3] = {3, 2, 1};
    Quadratic q;
    Rng rng;
    int i, j, k;
    q.P = 6;
    rng_seed(&rng, 8);
    for (i = 0; i < 3; i++) {
        double norm = 0;
        for (k = 0; k < 6; k++) q.q[i][k] = rng_normal(&rng);
        for (j = 0; j < i; j++) {
            double dot = 0;
            for (k = 0; k < 6; k++) dot += q.q[i][k] * q.q[j][k];
            for (k = 0; k < 6; k++) q.q[i][k] -= dot * q.q[j][k];
        }
        for (k = 0; k < 6; k++) norm += q.q[i][k] * q.q[i][k];
        for (k = 0; k < 6; k++) q.q[i][k] /= sqrt(norm);
    }
    for (i = 0; i < 6; i++)
        for (k = 0; k < 6; k++) q.z[i][k] = (i % 2 ? -1 : 1) * scale[i / 2] * q.q[i / 2][k];
    {
        double B[36];
        for (i = 0; i < 36; i++) B[i] = rng_normal(&rng);
        for (i = 0; i < 6; i++)
            for (j = 0; j < 6; j++) {
                double sum = i == j ? 1.0 : 0.0;
                for (k = 0; k < 6; k++) sum += B[i * 6 + k] * B[j * 6 + k];
                q.A[i * 6 + j] = sum;
            }
    }
    *qp = q;
}

static LlcProblem quad_problem(Quadratic *q, real *w_star) {
    LlcProblem p;
    p.n_params = (size_t)q->P;
    p.w_star = w_star;
    p.n_samples = 6;
    p.ctx = q;
    p.chain_new = quad_chain_new;
    p.loss_grad = quad_loss_grad;
    p.chain_free = poly_chain_free;
    return p;
}

static void test_landscape_exact_quadratic(void) {
    Quadratic q;
    real w_star[6] = {0, 0, 0, 0, 0, 0};
    LandscapeSettings s;
    Landscape l;
    LlcProblem p;
    int i, j, k, n_bad = 0;
    double worst = 0;

    make_quadratic(&q);
    p = quad_problem(&q, w_star);
    memset(&s, 0, sizeof s);
    s.batches = 6;
    s.batch = 1;
    s.grid = 5;
    s.span = 0.5;
    s.threads = 2;
    CHECK(landscape_compute(&p, &s, &l) == 0, "landscape_compute failed");
    if (g_failed) return;
    for (j = 0; j < 2; j++) {
        const real *d = j == 0 ? l.d1 : l.d2;
        double dot = 0;
        for (k = 0; k < 6; k++) dot += d[k] * q.q[j][k];
        CHECK(fabs(fabs(dot) - 1) < 1e-4, "direction %d: |cos| with the true axis is %.8f", j + 1, fabs(dot));
    }
    CHECK(fabs(l.variance_share[0] - 9.0 / 14) < 1e-6, "share of PC1 %.8f, expected %.8f", l.variance_share[0], 9.0 / 14);
    CHECK(fabs(l.variance_share[1] - 4.0 / 14) < 1e-6, "share of PC2 %.8f, expected %.8f", l.variance_share[1], 4.0 / 14);
    CHECK(fabs(l.angle_degrees - 90) < 1e-4, "angle %.6f degrees", l.angle_degrees);
    CHECK(l.centre_loss == 0, "centre loss %g", l.centre_loss);
    CHECK(l.loss[2 * 5 + 2] == l.centre_loss, "grid centre %g differs from the loss at w* %g", l.loss[12], l.centre_loss);
    for (i = 0; i < 5; i++)
        for (j = 0; j < 5; j++) {
            double w[6], want, got = l.loss[i * 5 + j];
            for (k = 0; k < 6; k++) w[k] = l.a[j] * l.d1[k] + l.b[i] * l.d2[k];
            want = quad_value(&q, w);
            if (fabs(got - want) > 1e-5 * (1 + want)) n_bad++;
            if (fabs(got - want) > worst) worst = fabs(got - want);
        }
    CHECK(n_bad == 0, "%d grid values differ from 1/2 w^T A w, by up to %g", n_bad, worst);
    landscape_free(&l);
}

/* Gradients that vary along q1 only leave no second principal component:
 * two batches (whose centred gradients are always opposite), and six
 * batches with every gradient a multiple of q1. The second direction must
 * be a random one and the first must still be q1. The two are orthogonal
 * up to the rounding of their real entries: |cos| <= 4 eps, which is
 * 2.7e-5 degrees in float32 and 5e-14 in float64. */
static void test_landscape_rank_one_gradients(void) {
    static const double multiples[6] = {3, -3, 2, -2, 1, -1};
    const double eps = is_double ? DBL_EPSILON : FLT_EPSILON;
    int variant;
    for (variant = 0; variant < 2; variant++) {
        Quadratic q;
        real w_star[6] = {0, 0, 0, 0, 0, 0};
        LandscapeSettings s;
        Landscape l;
        LlcProblem p;
        double dot1 = 0, dot12 = 0, norm2 = 0;
        int i, k;
        make_quadratic(&q);
        if (variant == 1)
            for (i = 0; i < 6; i++)
                for (k = 0; k < 6; k++) q.z[i][k] = multiples[i] * q.q[0][k];
        p = quad_problem(&q, w_star);
        memset(&s, 0, sizeof s);
        s.batches = variant == 0 ? 2 : 6;
        s.batch = 1;
        s.grid = 3;
        s.span = 0.5;
        s.threads = 1;
        s.seed = 5;
        CHECK(landscape_compute(&p, &s, &l) == 0, "%d batches: landscape_compute failed", s.batches);
        if (g_failed) return;
        for (k = 0; k < 6; k++) dot1 += l.d1[k] * q.q[0][k];
        for (k = 0; k < 6; k++) norm2 += (double)l.d2[k] * l.d2[k];
        CHECK(fabs(fabs(dot1) - 1) < 1e-6, "%d batches: |cos| of d1 with q1 is %.9f", s.batches, fabs(dot1));
        CHECK(l.random_directions == 1, "%d batches: %d random directions, expected 1", s.batches,
              l.random_directions);
        CHECK(isnan(l.variance_share[1]), "%d batches: PC2 has variance share %g", s.batches, l.variance_share[1]);
        CHECK(fabs(l.variance_share[0] - 1) < 1e-6, "%d batches: PC1 has variance share %.9f", s.batches,
              l.variance_share[0]);
        CHECK(fabs(norm2 - 1) < 8 * eps, "%d batches: |d2|^2 is %.9f", s.batches, norm2);
        for (k = 0; k < 6; k++) dot12 += (double)l.d1[k] * l.d2[k];
        CHECK(fabs(dot12) <= 4 * eps, "%d batches: cos(d1, d2) is %.3g", s.batches, dot12);
        CHECK(fabs(l.angle_degrees - 90) <= 4 * eps * 180 / LLC_PI, "%d batches: d1 and d2 are %.9f degrees apart",
              s.batches, l.angle_degrees);
        landscape_free(&l);
    }
}

/* ------------------------------------------------------------------------ */

int main(int argc, char **argv) {
    if (argc > 1 && argv[1][0]) g_model_dir = argv[1];
    g_program = "test_llc";
    printf("# matmul kernels: %d compiled in, %s used\n", MATMUL_N_KERNELS, matmul_kernel->name);
    run_test("matmul paths vs reference", test_matmul_paths);
    run_test("matmul wrappers vs reference", test_matmul_wrappers);
    run_test("rng normal moments", test_rng_normal_moments);
    run_test("rng normal tails", test_rng_normal_tails);
    run_test("rng fill matches single draws", test_rng_fill_matches_single);
    run_test("rng jump streams differ", test_rng_jump_streams_differ);
    run_test("weight file round trip", test_weight_file_round_trip);
    run_test("chain arena exact size", test_chain_arena_exact_size);
    run_test("gradient random models", test_gradient_random_models);
    run_test("gradient tracr models", test_gradient_tracr_models);
    run_test("gradient distilled student", test_gradient_student);
    run_test("student shapes", test_student_shapes);
    run_test("student one-row matrices", test_student_one_row_matrices);
    run_test("loss values", test_loss_values);
    run_test("adam two steps", test_adam_two_steps);
    run_test("default nbeta", test_default_nbeta);
    run_test("json parse bounds", test_json_parse_bounds);
    run_test("json string invalid utf-8", test_json_string_invalid_utf8);
    run_test("json exact integers", test_json_exact_integers);
    run_test("csv field quoting", test_csv_field_quoting);
    run_test("output overlaps", test_output_overlaps);
    run_test("sgld zero noise is descent", test_sgld_zero_noise_is_gradient_descent);
    run_test("sgld seeded repeat and threads", test_sgld_seeded_repeat_and_threads);
    run_test("sgld lost updates", test_sgld_lost_updates);
    run_test("sgld draw rule and divergence", test_sgld_draw_rule_and_divergence);
    run_test("sgld divergence between draws", test_sgld_divergence_between_draws);
    run_test("sgld polynomial blows up", test_sgld_polynomial_blows_up);
    run_test("sgld normal crossing", test_sgld_normal_crossing);
    run_test("sgld deep linear network", test_sgld_deep_linear_network);
    run_test("mala known values", test_mala_known_values);
    run_test("calibration normal crossing", test_calibration_normal_crossing);
    run_test("calibration deep linear network", test_calibration_deep_linear_network);
    run_test("power iteration vs jacobi", test_power_iteration_vs_jacobi);
    run_test("landscape exact quadratic", test_landscape_exact_quadratic);
    run_test("landscape rank-one gradients", test_landscape_rank_one_gradients);
    return g_n_failed ? 1 : 0;
}
