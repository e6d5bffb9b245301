/* decode.c: one decoding step of the whole model in one call.
 *
 * cllm_spec/model.py's forward with logits="last" over KV caches that hold
 * start >= 0 positions, composed from the entry points the model kernels call
 * one at a time, in the same order on the same sizes:
 *
 *   x = wte[ids] + wpe[start + t]                              (B, T, C)
 *   per block i:  h = LN_1(x)
 *                 a = cllm_mha_decode(h, cache i)   (QKV, append, attention, proj)
 *                 x = x + a,  h = LN_2(x)           (one fused pass)
 *                 x = x + FFN(h)
 *   logits = LN_f(x[:, T-1]) W_head^T                          (B, V)
 *
 * so over a nonempty cache the logits are bit-identical to the per-call path's
 * (tests/test_c_decode.py checks it); over an empty one (a prefill) attention
 * runs on the decoding kernel where the per-call path uses the GEMM-based one,
 * equal up to rounding (the conformance suite checks both against the oracle).
 * What the one call saves is the ~5 + 5L round trips from Python per
 * step, each with its argument conversion and output allocation: on models of a
 * few MB they were most of a token's time.
 *
 * The parameters are one flat buffer; offsets[] says where each tensor starts
 * (in floats): wte, wpe, ln_f.weight, ln_f.bias, the LM head, then for each
 * block the CLLM_DECODE_BLOCK_TENSORS tensors in the order of enum block_tensor.
 * The caller sizes work[] with cllm_model_decode_work and checks everything
 * the sizes rely on (the wrapper validates; C re-checks what it can).
 */
#include "cllm.h"

#include <stddef.h>
#include <stdint.h>

enum block_tensor {
    LN1_W, LN1_B, QKV_W, QKV_B, PROJ_W, PROJ_B,
    LN2_W, LN2_B, FC_W, FC_B, MLP_W, MLP_B, BLOCK_TENSORS
};
enum { WTE, WPE, LNF_W, LNF_B, HEAD, GLOBAL_TENSORS };

/* the scratch of one step, carved out of work[] */
typedef struct {
    float *x, *h, *x_hat, *rstd, *qkv, *merged, *att, *y, *fh, *fa, *m;
    float *last, *last_h, *last_hat, *last_rstd;
} scratch_t;

static int64_t carve(scratch_t *s, float *work, int64_t b, int64_t t, int64_t nh,
                     int64_t c, int64_t f, int64_t t_max)
{
    int64_t n = b * t, at = 0;
#define TAKE(field, size)                               \
    do {                                                \
        if (s)                                          \
            s->field = work + at;                       \
        at += (size);                                   \
    } while (0)
    TAKE(x, n * c);
    TAKE(h, n * c);
    TAKE(x_hat, n * c);
    TAKE(rstd, n);
    TAKE(qkv, n * 3 * c);
    TAKE(merged, n * c);
    TAKE(att, b * nh * t * t_max);
    TAKE(y, n * c);
    TAKE(fh, n * f);
    TAKE(fa, n * f);
    TAKE(m, n * c);
    TAKE(last, b * c);
    TAKE(last_h, b * c);
    TAKE(last_hat, b * c);
    TAKE(last_rstd, b);
#undef TAKE
    return at;
}

int64_t cllm_model_decode_work(int64_t b, int64_t t, int64_t nh, int64_t c, int64_t f,
                               int64_t t_max)
{
    if (b < 1 || t < 1 || nh < 1 || c < 1 || f < 1 || t_max < t)
        return -1;
    return carve(NULL, NULL, b, t, nh, c, f, t_max);
}

/* the block tensors of block i */
static const float *bt(const float *params, const int64_t *offsets, int64_t i,
                       enum block_tensor which)
{
    return params + offsets[GLOBAL_TENSORS + i * BLOCK_TENSORS + which];
}

static int run_block(const float *params, const int64_t *offsets, int64_t i,
                     const scratch_t *s, int64_t b, int64_t t, int64_t nh, int64_t c,
                     int64_t f, int act_kind, float eps, float scale, float *k_cache,
                     float *v_cache, int64_t t_max, int64_t start)
{
    int64_t n = b * t;
    int status = cllm_layernorm_forward(s->x, bt(params, offsets, i, LN1_W),
                                        bt(params, offsets, i, LN1_B), eps, s->h,
                                        s->x_hat, s->rstd, n, c);
    if (status == CLLM_OK)
        status = cllm_mha_decode(s->h, bt(params, offsets, i, QKV_W),
                                 bt(params, offsets, i, QKV_B),
                                 bt(params, offsets, i, PROJ_W),
                                 bt(params, offsets, i, PROJ_B), b, t, nh, c / nh,
                                 k_cache, v_cache, t_max, start, scale, s->qkv,
                                 s->merged, s->att, s->y);
    if (status == CLLM_OK)
        status = cllm_residual_layernorm_forward(
            s->x, s->y, bt(params, offsets, i, LN2_W), bt(params, offsets, i, LN2_B),
            eps, s->x, s->h, s->x_hat, s->rstd, n, c);
    if (status == CLLM_OK)
        status = cllm_ffn_forward(s->h, bt(params, offsets, i, FC_W),
                                  bt(params, offsets, i, FC_B),
                                  bt(params, offsets, i, MLP_W),
                                  bt(params, offsets, i, MLP_B), act_kind, s->fh, s->fa,
                                  s->m, n, c, f);
    if (status == CLLM_OK)
        for (int64_t j = 0; j < n * c; j++)
            s->x[j] += s->m[j]; /* the residual, as the model's in-place add */
    return status;
}

int cllm_model_decode(const float *params, const int64_t *offsets, const int64_t *ids,
                      int64_t b, int64_t t, int64_t n_layer, int64_t nh, int64_t c,
                      int64_t f, int64_t v, int64_t block_size, int act_kind,
                      float eps, float scale, float *const *k_caches,
                      float *const *v_caches, int64_t t_max, int64_t start,
                      float *work, float *logits)
{
    CLLM_CHECK(params && offsets && ids && k_caches && v_caches && work && logits);
    CLLM_CHECK(n_layer >= 1 && nh >= 1 && c % nh == 0 && v >= 1);
    CLLM_CHECK(start >= 0 && start + t <= t_max && start + t <= block_size);
    CLLM_CHECK(cllm_model_decode_work(b, t, nh, c, f, t_max) > 0);
    scratch_t s;
    carve(&s, work, b, t, nh, c, f, t_max);
    int status = cllm_embedding_forward(ids, params + offsets[WTE], params + offsets[WPE],
                                        b, t, c, v, block_size, start, s.x);
    for (int64_t i = 0; i < n_layer && status == CLLM_OK; i++) {
        CLLM_CHECK(k_caches[i] && v_caches[i]);
        status = run_block(params, offsets, i, &s, b, t, nh, c, f, act_kind, eps, scale,
                           k_caches[i], v_caches[i], t_max, start);
    }
    if (status != CLLM_OK)
        return status;
    /* the last position of each sequence: the only one generation samples from */
    for (int64_t r = 0; r < b; r++)
        for (int64_t j = 0; j < c; j++)
            s.last[r * c + j] = s.x[(r * t + t - 1) * c + j];
    status = cllm_layernorm_forward(s.last, params + offsets[LNF_W],
                                    params + offsets[LNF_B], eps, s.last_h, s.last_hat,
                                    s.last_rstd, b, c);
    if (status == CLLM_OK)
        status = cllm_linear_forward(s.last_h, params + offsets[HEAD], NULL, logits, b,
                                     c, v);
    return status;
}
