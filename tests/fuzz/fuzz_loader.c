/*
 * libFuzzer harness for the weight loader. Each input is the bytes of an
 * .llcw file, read by model_read_stream from memory with the same checks as
 * a file on disk, first header only (as model_peek does) and then whole. A
 * model that loads must be usable: its values are finite, its sizes match
 * the header-only read, and a forward and backward pass over one short
 * input stays in bounds.
 *
 * Build and run with `make fuzz` (clang with -fsanitize=fuzzer,address,undefined).
 */
#define LLC_TESTING
#include "../../llc.c"

#include <assert.h>

/* Models with larger arenas or workspaces are rejected or not run, so that
 * no input reaches libFuzzer's default 2048 MB malloc limit. */
enum { FUZZ_MAX_VALUES = 1 << 22, FUZZ_MAX_WORKSPACE_BYTES = 64 << 20 };

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    g_max_model_values = FUZZ_MAX_VALUES;
    return 0;
}

/* Runs the model on BOS and one other token and back-propagates ones. */
static void run_once(const Model *m) {
    const ModelConfig *c = &m->cfg;
    int ids[2], seq_start[2] = {0, 2}, token = 0;
    Batch b = {1, 2, ids, seq_start};
    real *grad_arena, *dy;
    Weights g;
    Workspace *ws;
    const real *y;
    size_t j;

    if (workspace_bytes(c, 1) > FUZZ_MAX_WORKSPACE_BYTES) return;
    while (token == c->bos_id || token == c->pad_id) token++;
    assert(token < c->n_vocab);   /* the loader rejects a vocabulary of only BOS and PAD */
    ids[0] = c->bos_id;
    ids[1] = token;

    ws = workspace_new(c, 1);
    y = model_forward(c, &m->w, ws, &b);
    dy = xmalloc(2 * (size_t)c->n_outputs * sizeof(real), "dy");
    for (j = 0; j < 2 * (size_t)c->n_outputs; j++) dy[j] = (real)(y[j] == y[j]);
    grad_arena = xcalloc(m->n_params + m->n_fixed, sizeof(real), "gradients");
    weights_alloc(m, &g);
    weights_bind(m, grad_arena, grad_arena + m->n_params, &g);
    model_backward(c, &m->w, &g, ws, dy);
    free(g.layer);
    free(grad_arena);
    free(dy);
    workspace_free(ws);
}

/* Reads data as a weight file; returns model_read_stream's result. */
static int read_model(Model *m, const uint8_t *data, size_t size, int header_only) {
    static const uint8_t empty[1];
    FILE *f = fmemopen((void *)(size ? data : empty), size ? size : 1, "rb");
    int rc;
    if (!f) abort();
    rc = model_read_stream(m, f, size, "input", header_only);
    fclose(f);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    Model header, m;
    size_t j;
    int header_ok = read_model(&header, data, size, 1) == 0;
    if (read_model(&m, data, size, 0) != 0) {
        if (header_ok) model_free(&header);
        return 0;
    }
    assert(header_ok);   /* a file that loads passes the header-only read */
    assert(header.n_params == m.n_params);
    assert(header.n_fixed == m.n_fixed);
    assert(m.n_tensors == model_tensor_count(m.cfg.n_layers));
    for (j = 0; j < m.n_params + m.n_fixed; j++) assert(isfinite(m.params[j]));
    run_once(&m);
    model_free(&header);
    model_free(&m);
    return 0;
}
