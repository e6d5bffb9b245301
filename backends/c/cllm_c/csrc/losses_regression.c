/* The regression losses, MSE, L1 and Huber (formulas in cllm_spec/losses.py):
 * forward and backward, a scalar twin next to the AVX2 path, elements in
 * fixed blocks whose double partial sums are added in block order (so the
 * bits do not depend on the thread count); the float64 path at the end. */
#include "losses_parts.h"
#include "simd_math.h"

#include <math.h>

enum { REG_MSE = 0, REG_L1 = 1, REG_HUBER = 2 };

/* ---------------------------------------------------- regression losses ---- */
static inline __attribute__((always_inline)) float
reg_elem(int kind, float d, float delta)
{
    float a = fabsf(d);
    if (kind == REG_MSE)
        return d * d;
    if (kind == REG_L1)
        return a;
    return a < delta ? 0.5f * d * d : delta * (a - 0.5f * delta);
}

/* one block: diff, optional per-item losses, and the block's double sum */
static inline __attribute__((always_inline)) double
reg_block(int kind, const float *pred, const float *target, int64_t len,
          float delta, float *diff, float *per_item)
{
    double s = 0.0;
    for (int64_t i = 0; i < len; i++)
        diff[i] = pred[i] - target[i];
    for (int64_t i = 0; i < len; i++) {
        float e = reg_elem(kind, diff[i], delta);
        if (per_item)
            per_item[i] = e;
        s += e;
    }
    return s;
}

static double reg_block_scalar(int kind, const float *p, const float *t, int64_t len,
                               float delta, float *diff, float *per_item)
{
    return reg_block(kind, p, t, len, delta, diff, per_item);
}

#if CLLM_X86
/* the same source compiled for AVX2: the elementwise loops vectorize, the
 * double sum stays in order, so both paths give the same bits */
CLLM_AVX2 static double reg_block_avx2(int kind, const float *p, const float *t,
                                       int64_t len, float delta, float *diff,
                                       float *per_item)
{
    return reg_block(kind, p, t, len, delta, diff, per_item);
}
#endif

typedef struct {
    int kind, simd, per_item_dloss;
    const float *a, *b, *dloss;
    int64_t n;
    float delta, s0;
    float *out, *per_item;
    double *partial;
} reg_job;

static void reg_forward_task(void *arg, int64_t q, int worker)
{
    const reg_job *j = arg;
    int64_t i0 = q * ELEM_BLOCK, len = j->n - i0 < ELEM_BLOCK ? j->n - i0 : ELEM_BLOCK;
    float *pi = j->per_item ? j->per_item + i0 : NULL;
    (void)worker;
#if CLLM_X86
    if (j->simd >= CLLM_SIMD_AVX2) {
        j->partial[q] = reg_block_avx2(j->kind, j->a + i0, j->b + i0, len, j->delta,
                                       j->out + i0, pi);
        return;
    }
#endif
    j->partial[q] = reg_block_scalar(j->kind, j->a + i0, j->b + i0, len, j->delta,
                                     j->out + i0, pi);
}

int cllm_regression_forward(int kind, const float *pred, const float *target,
                            int64_t n, float delta, int reduction, float *diff,
                            float *per_item, float *loss)
{
    CLLM_CHECK(pred && target && diff && n >= 1 && kind >= REG_MSE && kind <= REG_HUBER);
    CLLM_CHECK(reduction >= RED_MEAN && reduction <= RED_NONE);
    CLLM_CHECK(kind != REG_HUBER || delta > 0.0f);
    int64_t blocks = (n + ELEM_BLOCK - 1) / ELEM_BLOCK;
    double *partial = cllm_alloc((size_t)blocks * sizeof(double));
    if (!partial)
        return CLLM_ERR_NOMEM;
    reg_job j = {kind, cllm_simd_current, 0, pred, target, NULL, n, delta, 0.0f, diff,
                 per_item, partial};
    cllm_parallel(blocks, cllm_threads_for(n, ELEM_BLOCK), reg_forward_task, &j);
    double total = 0.0;
    for (int64_t q = 0; q < blocks; q++)
        total += partial[q];
    cllm_free(partial);
    if (loss)
        *loss = (float)(reduction == RED_MEAN ? total / (double)n : total);
    return CLLM_OK;
}

static inline __attribute__((always_inline)) void
reg_back_block(int kind, const float *diff, const float *dloss, int per_item,
               float s0, int64_t len, float delta, float *dpred)
{
    for (int64_t i = 0; i < len; i++) {
        float d = diff[i], g;
        float s = per_item ? dloss[i] : s0;
        if (kind == REG_MSE)
            g = 2.0f * d;
        else if (kind == REG_L1) /* sign(d); NaN stays NaN, as in the reference */
            g = d != d ? d : (float)((d > 0.0f) - (d < 0.0f));
        else
            g = d < -delta ? -delta : (d > delta ? delta : d);
        dpred[i] = g * s;
    }
}

static void reg_back_scalar(int kind, const float *diff, const float *dloss,
                            int per_item, float s0, int64_t len, float delta,
                            float *dpred)
{
    reg_back_block(kind, diff, dloss, per_item, s0, len, delta, dpred);
}

#if CLLM_X86
CLLM_AVX2 static void reg_back_avx2(int kind, const float *diff, const float *dloss,
                                    int per_item, float s0, int64_t len, float delta,
                                    float *dpred)
{
    reg_back_block(kind, diff, dloss, per_item, s0, len, delta, dpred);
}
#endif

static void reg_backward_task(void *arg, int64_t q, int worker)
{
    const reg_job *j = arg;
    int64_t i0 = q * ELEM_BLOCK, len = j->n - i0 < ELEM_BLOCK ? j->n - i0 : ELEM_BLOCK;
    const float *dl = j->per_item_dloss ? j->dloss + i0 : j->dloss;
    (void)worker;
#if CLLM_X86
    if (j->simd >= CLLM_SIMD_AVX2) {
        reg_back_avx2(j->kind, j->a + i0, dl, j->per_item_dloss, j->s0, len, j->delta,
                      j->out + i0);
        return;
    }
#endif
    reg_back_scalar(j->kind, j->a + i0, dl, j->per_item_dloss, j->s0, len, j->delta,
                    j->out + i0);
}

int cllm_regression_backward(int kind, const float *diff, const float *dloss,
                             int dloss_per_item, int64_t n, float delta,
                             int reduction, float *dpred)
{
    CLLM_CHECK(diff && dloss && dpred && n >= 1 && kind >= REG_MSE && kind <= REG_HUBER);
    CLLM_CHECK(reduction >= RED_MEAN && reduction <= RED_NONE);
    int64_t blocks = (n + ELEM_BLOCK - 1) / ELEM_BLOCK;
    /* mean: s = dloss / n, rounded once to float like the reference */
    float s0 = dloss_per_item ? 0.0f : dloss[0];
    if (reduction == RED_MEAN && !dloss_per_item)
        s0 = (float)((double)dloss[0] / (double)n);
    reg_job j = {kind, cllm_simd_current, dloss_per_item, diff, NULL, dloss, n, delta,
                 s0, dpred, NULL, NULL};
    cllm_parallel(blocks, cllm_threads_for(n, ELEM_BLOCK), reg_backward_task, &j);
    return CLLM_OK;
}

/* ---------------------------------------------------------------- float64 ---- */
int cllm_regression_forward_f64(int kind, const double *pred, const double *target,
                                int64_t n, double delta, int reduction, double *diff,
                                double *per_item, double *loss)
{
    CLLM_CHECK(pred && target && diff && n >= 1 && kind >= REG_MSE && kind <= REG_HUBER);
    CLLM_CHECK(reduction >= RED_MEAN && reduction <= RED_NONE);
    CLLM_CHECK(kind != REG_HUBER || delta > 0.0);
    double total = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double d = pred[i] - target[i], a = fabs(d), e;
        diff[i] = d;
        if (kind == REG_MSE)
            e = d * d;
        else if (kind == REG_L1)
            e = a;
        else
            e = a < delta ? 0.5 * d * d : delta * (a - 0.5 * delta);
        if (per_item)
            per_item[i] = e;
        total += e;
    }
    if (loss)
        *loss = reduction == RED_MEAN ? total / (double)n : total;
    return CLLM_OK;
}

int cllm_regression_backward_f64(int kind, const double *diff, const double *dloss,
                                 int dloss_per_item, int64_t n, double delta,
                                 int reduction, double *dpred)
{
    CLLM_CHECK(diff && dloss && dpred && n >= 1 && kind >= REG_MSE && kind <= REG_HUBER);
    CLLM_CHECK(reduction >= RED_MEAN && reduction <= RED_NONE);
    double s0 = dloss_per_item ? 0.0 : dloss[0];
    if (reduction == RED_MEAN && !dloss_per_item)
        s0 = dloss[0] / (double)n;
    for (int64_t i = 0; i < n; i++) {
        double d = diff[i], s = dloss_per_item ? dloss[i] : s0, g;
        if (kind == REG_MSE)
            g = 2.0 * d;
        else if (kind == REG_L1) /* sign(d); NaN stays NaN, as in the reference */
            g = d != d ? d : (double)((d > 0.0) - (d < 0.0));
        else
            g = d < -delta ? -delta : (d > delta ? delta : d);
        dpred[i] = g * s;
    }
    return CLLM_OK;
}
