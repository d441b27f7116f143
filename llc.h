/*
 * llc.h: public interface of llc, the Local Learning Coefficient of
 * Tracr-compiled transformers, in one C99 file (llc.c).
 *
 * Build: cc -O2 -o llc llc.c -lm   (add -DLLC_DOUBLE for float64 arithmetic,
 * and -march=native for the AVX2 or AVX-512 matmul kernel on x86-64)
 *
 * ---------------------------------------------------------------------------
 * LLCW weight file, format versions 1 and 2
 *
 * All integers are unsigned little-endian (u32, u64); weights are IEEE 754
 * float32 little-endian. A string is a u32 byte count (at most 65535)
 * followed by that many UTF-8 bytes without a terminating NUL. Strings
 * contain no control characters, except that metadata values may contain
 * tabs and line breaks.
 *
 * The header comes first, its fields in this order:
 *
 *   char   magic[4]            "LLCW"
 *   u32    version             1: every tensor dense; 2: a tensor may be sparse
 *   u32    flags               bit 0: causal attention; other bits must be 0
 *   u32    n_layers, n_heads, d_model, d_head, d_mlp, max_seq_len
 *   u32    n_vocab             input ids, BOS and PAD included
 *   u32    bos_id, pad_id      input ids of BOS and PAD
 *   u32    output_kind         0: categorical (decode by argmax); 1: numerical
 *   u32    n_outputs           output values (1 for a numerical output)
 *   u32    n_output_dims       0, or n_outputs when the output is a fixed
 *                              projection of residual dims (a Tracr model)
 *   u32    n_residual_labels   0 or d_model
 *   u32    n_meta              metadata key/value pairs
 *   u32    n_tensors
 *   string vocab[n_vocab]                   token of each input id
 *   string output_values[n_outputs]         value of each output id
 *                                           (numerical: the output's name)
 *   u32    output_dims[n_output_dims]       residual dim of each output
 *   string residual_labels[n_residual_labels]
 *   string meta[2 * n_meta]                 key, value, key, value, ...
 *   tensor directory, n_tensors entries of:
 *     string name
 *     u32    ndim (1 or 2), u32 dims[ndim]
 *     u32    trainable (0 or 1; SGLD, distillation and PCA move only
 *            trainable tensors)
 *     u32    encoding (version 2 only: 0 dense, 1 sparse)
 *     u64    offset, u64 n_bytes    byte range of the data in the file
 *
 * Tensor data follows the header at the recorded offsets. A dense tensor is
 * its values in row-major order (4 * numel bytes). A sparse tensor is a u32
 * count nnz, then nnz u32 flat indices in strictly increasing order, then
 * nnz float32 values (4 + 8 * nnz bytes); absent entries are zero.
 *
 * The tensors are exactly these, in any order (V = n_vocab, D = d_model,
 * N = max_seq_len, HK = n_heads * d_head, M = d_mlp, O = n_outputs):
 *
 *   token_embed/embeddings                 [V, D]
 *   pos_embed/embeddings                   [N + 1, D]  row 0 is the BOS position
 *   transformer/layer_L/attn/query/w       [D, HK]     and .../query/b [HK]
 *   transformer/layer_L/attn/key/w         [D, HK]     and .../key/b [HK]
 *   transformer/layer_L/attn/value/w       [D, HK]     and .../value/b [HK]
 *   transformer/layer_L/attn/linear/w      [HK, D]     and .../linear/b [D]
 *   transformer/layer_L/mlp/linear_1/w     [D, M]      and .../linear_1/b [M]
 *   transformer/layer_L/mlp/linear_2/w     [M, D]      and .../linear_2/b [D]
 *   unembed/w                              [D, O]      and unembed/b [O]
 *
 * for L = 0 .. n_layers - 1. A Tracr model stores unembed/w as the fixed 0/1
 * projection onto output_dims and unembed/b as fixed zeros; a distilled
 * student learns both. Known metadata keys: program, source, teacher (the
 * teacher's path, for a student), loss.
 *
 * The forward pass (no layer norm, no dropout):
 *   x[t]  = token_embed[id[t]] + pos_embed[t]           t = 0 .. T-1, id[0] = BOS
 *   per layer: x += Attn(x) with scores q.k / sqrt(d_head) and softmax over
 *              keys (keys after the query masked when causal); then
 *              x += relu(x W1 + b1) W2 + b2
 *   y[t]  = x[t] unembed/w + unembed/b                  the output logits or value
 * ---------------------------------------------------------------------------
 */
#ifndef LLC_H
#define LLC_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef LLC_DOUBLE
typedef double real;
#define LLC_REAL_NAME "float64"
#else
typedef float real;
#define LLC_REAL_NAME "float32"
#endif

#define LLCW_MAGIC "LLCW"
#define LLCW_VERSION_DENSE 1
#define LLCW_VERSION_SPARSE 2
#define LLCW_MAX_STRING 65535u

enum { OUTPUT_CATEGORICAL = 0, OUTPUT_NUMERICAL = 1 };

typedef struct {
    int n_layers;
    int n_heads;
    int d_model;
    int d_head;
    int d_mlp;
    int max_seq_len;   /* inputs have at most max_seq_len tokens after BOS */
    int n_vocab;
    int bos_id;
    int pad_id;
    int output_kind;   /* OUTPUT_CATEGORICAL or OUTPUT_NUMERICAL */
    int n_outputs;
    int causal;
} ModelConfig;

/* One tensor of a model: where its values sit in the parameter arena. */
typedef struct {
    char name[64];
    int rows, cols;    /* a 1-D tensor (a bias) has rows == 1, and so can a matrix when d_model is 1 */
    size_t numel;
    int trainable;
    size_t offset;     /* into Model.params when trainable, else Model.fixed */
} TensorInfo;

/* The weights of one transformer layer, as pointers into an arena. */
typedef struct {
    real *wq, *bq, *wk, *bk, *wv, *bv;   /* [D, HK], [HK] */
    real *wo, *bo;                       /* [HK, D], [D] */
    real *w1, *b1;                       /* [D, M], [M] */
    real *w2, *b2;                       /* [M, D], [D] */
} LayerWeights;

typedef struct {
    real *token_embed;     /* [V, D] */
    real *pos_embed;       /* [N + 1, D] */
    LayerWeights *layer;   /* [n_layers] */
    real *unembed_w;       /* [D, O] */
    real *unembed_b;       /* [O] */
} Weights;

typedef struct {
    ModelConfig cfg;
    char **vocab;            /* [n_vocab] token of each input id */
    char **output_values;    /* [n_outputs] */
    int *output_dims;        /* [n_outputs], or NULL for a student */
    char **residual_labels;  /* [d_model], or NULL */
    int n_meta;
    char **meta_keys, **meta_values;
    int n_tensors;
    TensorInfo *tensors;     /* canonical order, see model_tensor_name() */
    size_t n_params;         /* trainable parameters */
    size_t n_fixed;          /* fixed values (a teacher's output projection) */
    real *params;            /* [n_params] trainable values */
    real *fixed;             /* [n_fixed] */
    Weights w;               /* views into params and fixed */
} Model;

/* Model files. Both functions print a one-line error naming the file and
 * return non-zero on failure; the writer replaces path atomically. */
int model_load(Model *m, const char *path);
int model_save(const Model *m, const char *path);
void model_free(Model *m);
const char *model_meta(const Model *m, const char *key);
size_t model_count_nonzero(const Model *m);

/* Per-call scratch space of a forward and backward pass over up to
 * max_rows token positions (max_seqs sequences). */
typedef struct Workspace Workspace;
Workspace *workspace_new(const ModelConfig *cfg, int max_seqs);
void workspace_free(Workspace *ws);
size_t workspace_bytes(const ModelConfig *cfg, int max_seqs);

/* A batch: n_seqs sequences laid end to end, each starting with BOS. */
typedef struct {
    int n_seqs;
    int n_rows;
    const int *ids;        /* [n_rows] input ids */
    const int *seq_start;  /* [n_seqs + 1] first row of each sequence */
} Batch;

/* Runs the model; returns the outputs y [n_rows, n_outputs] (owned by ws). */
const real *model_forward(const ModelConfig *cfg, const Weights *w, Workspace *ws,
                          const Batch *batch);

/* Back-propagates dy [n_rows, n_outputs] through the last forward pass and
 * adds the parameter gradients into grad. */
void model_backward(const ModelConfig *cfg, const Weights *w, const Weights *grad,
                    Workspace *ws, const real *dy);

/* Losses, averaged over the non-BOS positions of a batch. */
typedef enum { LOSS_CE, LOSS_MSE, LOSS_KL } LossKind;

/* ---------------------------------------------------------------------------
 * The SGLD estimator uses only this interface: a parameter vector and a
 * function returning the mean loss of a minibatch and its gradient. */
typedef struct LlcProblem {
    size_t n_params;
    const real *w_star;    /* [n_params] the weights being measured */
    int n_samples;         /* minibatches are drawn from sample ids 0 .. n_samples-1 */
    void *ctx;
    /* Starts a chain whose parameters live at w (n_params values). */
    void *(*chain_new)(const struct LlcProblem *p, real *w);
    /* Returns the mean loss over the samples at the chain's current w and,
     * when grad is not NULL, stores its gradient there. */
    double (*loss_grad)(void *chain, const int *samples, int n_samples, real *grad);
    void (*chain_free)(void *chain);
} LlcProblem;

typedef struct {
    double lr;             /* SGLD step size epsilon */
    double nbeta;          /* n * beta; 0 means batch / ln(batch) */
    double localization;   /* gamma, the pull towards w* */
    double noise_level;    /* std of the injected noise before sqrt(lr); 1 in devinterp */
    int chains;
    int draws;
    int burnin;            /* steps before the first draw */
    int every;             /* steps between draws */
    int batch;             /* samples per minibatch */
    int shuffle;           /* reshuffle the samples every epoch, per chain */
    int threads;           /* 0: one per core */
    uint64_t seed;
    int mala_same_batch;   /* MALA potentials of both points on the same minibatch (one more forward pass a step) */
} SgldSettings;

typedef struct {
    int chains, draws;
    double nbeta;          /* the value used */
    double init_loss;      /* mean loss at w* over the first min(chains, batches) batches */
    double *loss_trace;    /* [chains * draws] minibatch loss before each drawn step */
    double *llc_chain;     /* [chains] nbeta * (mean draws - init_loss); NaN if diverged */
    int *diverged_step;    /* [chains] first step with a non-finite loss or gradient, or -1 */
    int *diverged_draw;    /* [chains] first draw without a finite loss, which equals draws_done;
                            * -1 during burn-in or without divergence */
    int *draws_done;       /* [chains] draws recorded (fewer than draws after SIGINT, SIGTERM or divergence) */
    int n_diverged;
    double unchanged_fraction; /* share of parameter updates that rounded to no change */
    double unchanged_fraction_nonzero; /* the same among parameters that are non-zero at w* */
    double llc_mean;       /* over chains that did not diverge; NaN when none is left */
    double llc_std;        /* sample std (n - 1) over those chains; NaN for fewer than 2 */
    double seconds;
    int interrupted;       /* stopped early by SIGINT or SIGTERM */

    /* Diagnostics of whether the estimate can be trusted. */
    double grad_norm;      /* ||mean minibatch gradient|| of the loss at w* */
    double grad_noise;     /* standard error of that mean: sqrt(trace of the batch gradients' covariance / K) */
    int grad_batches;      /* K, the batches behind grad_norm */
    int not_minimum;       /* grad_norm far above grad_noise: w* is not a local minimum of the loss */
    double *mala_chain;    /* [chains] mean MALA acceptance probability of the chain's steps (devinterp's formula) */
    double mala_mean;      /* over chains that did not diverge */
    double r_hat;          /* split-R-hat of the loss traces; NaN for fewer than 2 chains or 4 draws */
    double second_half_slope;   /* per draw, of the mean loss trace over chains in the second half of the draws */
    double second_half_change;  /* that slope times the number of draws in the second half */
    double second_half_std;     /* standard deviation of the mean loss trace there */
    int flat;              /* the chains' slopes are within 3 standard errors of 0 (one chain: settled) */
    int settled;           /* the stricter |second_half_change| <= second_half_std, used by calibration */
    int n_below_init;      /* chains whose mean draw loss is below init_loss (a negative LLC) */
} LlcResult;

double sgld_default_nbeta(int batch);
int llc_estimate(const LlcProblem *p, const SgldSettings *s, LlcResult *r);
void llc_result_free(LlcResult *r);

/* ---------------------------------------------------------------------------
 * Loss landscape along the top two principal components of minibatch
 * gradients at w*, on the same LlcProblem interface. */
typedef struct {
    int batches;           /* K minibatch gradients */
    int batch;             /* samples per minibatch */
    int grid;              /* N points per axis */
    double span;           /* the grid covers [-span, span]^2 */
    int scale_by_norm;     /* measure a and b in units of ||w*|| instead of parameter units */
    int shuffle;           /* draw the gradient batches from a seeded permutation */
    uint64_t seed;
    int threads;           /* 0: one per core */
} LandscapeSettings;

typedef struct {
    int grid;
    double *a, *b;             /* [grid] coordinates along the first and second direction */
    double *loss;              /* [grid * grid] loss at w* + a[j] d1 + b[i] d2, index i * grid + j */
    double variance_share[2];  /* share of the centred gradients' variance along d1 and d2 */
    double eigenvalue[2];      /* variance along d1 and d2 (per parameter-space unit) */
    double angle_degrees;      /* between d1 and d2 */
    double w_norm;             /* ||w*|| */
    double step_unit;          /* parameter-space length of a unit of a and b */
    double centre_loss;        /* loss at w* */
    double min_loss, max_loss; /* over the grid */
    real *d1, *d2;             /* [n_params] unit directions */
    int random_directions;     /* directions drawn at random: the gradients vary along them by no more than rounding */
    double seconds;
} Landscape;

int landscape_compute(const LlcProblem *p, const LandscapeSettings *s, Landscape *out);
void landscape_free(Landscape *l);

#endif /* LLC_H */
