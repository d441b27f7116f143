/*
 * libFuzzer harness for the --inputs reader. Each input is the text of an
 * inputs file, parsed by dataset_parse for a categorical model (sort) and a
 * numerical one (frac_prevs). A parsed dataset must contain only valid ids,
 * lengths and labels.
 *
 * Build and run with `make fuzz`, from the repository root (it loads
 * tracr_weights/sort_n5.llcw and tracr_weights/frac_prevs_n5.llcw).
 */
#define LLC_TESTING
#include "../../llc.c"

#include <assert.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static Model g_models[2];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    if (model_load(&g_models[0], "tracr_weights/sort_n5.llcw") != 0 ||
        model_load(&g_models[1], "tracr_weights/frac_prevs_n5.llcw") != 0) {
        fprintf(stderr, "fuzz_inputs: run it from the repository root\n");
        exit(1);
    }
    return 0;
}

static void check_dataset(const Dataset *d, const Model *m) {
    int i, t;
    assert(d->n > 0);
    assert(d->stride == m->cfg.max_seq_len + 1);
    for (i = 0; i < d->n; i++) {
        const int *ids = d->ids + (size_t)i * d->stride;
        const int *label = d->label + (size_t)i * d->stride;
        assert(d->len[i] >= 2);
        assert(d->len[i] <= d->stride);
        assert(ids[0] == m->cfg.bos_id);
        for (t = 1; t < d->len[i]; t++) {
            assert(ids[t] >= 0);
            assert(ids[t] < m->cfg.n_vocab);
            assert(ids[t] != m->cfg.bos_id);
            assert(label[t] >= -1);
            assert(label[t] < m->cfg.n_outputs);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const uint8_t empty[1];
    int k;
    for (k = 0; k < 2; k++) {
        FILE *f = fmemopen((void *)(size ? data : empty), size ? size : 1, "r");
        Dataset d;
        if (!f) return 0;
        if (!size) getc(f);   /* an empty input: read past the one placeholder byte */
        if (dataset_parse(&d, &g_models[k], f, "input") == 0) {
            check_dataset(&d, &g_models[k]);
            dataset_free(&d);
        }
        fclose(f);
    }
    return 0;
}
