/* losses: softmax, log-softmax and the fused softmax + cross-entropy (the
 * regression losses, MSE, L1 and Huber, are in losses_regression.c).
 *
 * Row kernels (softmax family, cross-entropy) run one row per task; threads
 * split rows. Every sum that produces one value accumulates in double in a
 * fixed order: within a row, per SIMD lane then lanes combined in a fixed
 * pattern; across rows or elements, fixed-size blocks whose partials are
 * added in block order. So results do not depend on the thread count.
 *
 * Special values in softmax follow the spec (PyTorch): a row holding NaN or
 * +inf, or only -inf, becomes all NaN; -inf entries of other rows get
 * probability 0. Cross-entropy and the regression losses only see finite
 * inputs (the wrapper rejects the rest). */
#include "losses_parts.h"
#include "simd_math.h"

#include <math.h>
#include <string.h>

/* ------------------------------------------------------ softmax family ---- */
static void fill_nan(float *y, int64_t v)
{
    for (int64_t j = 0; j < v; j++)
        y[j] = NAN;
}

/* max of a row; returns 0 when the row is all NaN-free and m finite */
static int row_max_scalar(const float *x, int64_t v, float *m_out)
{
    float m = -INFINITY;
    int nan = 0;
    for (int64_t j = 0; j < v; j++) {
        if (x[j] != x[j])
            nan = 1;
        else if (x[j] > m)
            m = x[j];
    }
    *m_out = m;
    return nan || isinf(m);
}

static void softmax_row_scalar(const float *x, float *y, int64_t v, int log_sm)
{
    float m;
    if (row_max_scalar(x, v, &m)) {
        fill_nan(y, v);
        return;
    }
    double s = 0.0;
    for (int64_t j = 0; j < v; j++) {
        float e = expf(x[j] - m);
        if (!log_sm)
            y[j] = e;
        s += e;
    }
    if (log_sm) {
        float lse = (float)log(s);
        for (int64_t j = 0; j < v; j++)
            y[j] = (x[j] - m) - lse;
    } else {
        float inv = (float)(1.0 / s);
        for (int64_t j = 0; j < v; j++)
            y[j] *= inv;
    }
}

static void softmax_back_row_scalar(const float *dy, const float *y, float *dx,
                                    int64_t v, int log_sm)
{
    double s = 0.0;
    if (log_sm) {
        for (int64_t j = 0; j < v; j++)
            s += dy[j];
        float sf = (float)s;
        for (int64_t j = 0; j < v; j++)
            dx[j] = dy[j] - expf(y[j]) * sf;
    } else {
        for (int64_t j = 0; j < v; j++)
            s += (double)dy[j] * (double)y[j];
        float sf = (float)s;
        for (int64_t j = 0; j < v; j++)
            dx[j] = y[j] * (dy[j] - sf);
    }
}

#if CLLM_X86
CLLM_AVX2 static inline void add_pd8(__m256 v, __m256d *a0, __m256d *a1)
{
    *a0 = _mm256_add_pd(*a0, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    *a1 = _mm256_add_pd(*a1, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
}

/* max ignoring NaN, plus whether the row needs the all-NaN answer */
CLLM_AVX2 static int row_max_avx2(const float *x, int64_t v, float *m_out)
{
    __m256 m = _mm256_set1_ps(-INFINITY), bad = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= v; j += 8) {
        __m256 a = _mm256_loadu_ps(x + j);
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
        m = _mm256_max_ps(a, m); /* NaN in a: keeps m */
    }
    float mm = cllm_hmax256(m);
    int nan = _mm256_movemask_ps(bad) != 0;
    for (; j < v; j++) {
        if (x[j] != x[j])
            nan = 1;
        else if (x[j] > mm)
            mm = x[j];
    }
    *m_out = mm;
    return nan || isinf(mm);
}

/* sum of exp(x - m) in double over [j, v), into the accumulators a0, a1 of
 * the elements before j; stores exp(x - m) into e when e != NULL */
CLLM_AVX2 static inline double sum_exp_from(const float *x, float m, float *e, int64_t v,
                                            int64_t j, __m256d a0, __m256d a1)
{
    __m256 vm = _mm256_set1_ps(m);
    for (; j + 8 <= v; j += 8) {
        __m256 p = cllm_exp256(_mm256_sub_ps(_mm256_loadu_ps(x + j), vm));
        if (e)
            _mm256_storeu_ps(e + j, p);
        add_pd8(p, &a0, &a1);
    }
    if (j < v) {
        __m256i mask = cllm_tail_mask(v - j);
        __m256 p = cllm_exp256(_mm256_sub_ps(_mm256_maskload_ps(x + j, mask), vm));
        p = _mm256_and_ps(p, _mm256_castsi256_ps(mask));
        if (e)
            _mm256_maskstore_ps(e + j, mask, p);
        add_pd8(p, &a0, &a1);
    }
    return cllm_hsum256d(_mm256_add_pd(a0, a1));
}

/* 16 exps per step (cllm_exp512 is cllm_exp256 lane for lane), added to
 * the double accumulators 8 at a time in the AVX2 order: the same bits */
CLLM_AVX512 static double sum_exp_avx512(const float *x, float m, float *e, int64_t v)
{
    __m512 vm = _mm512_set1_ps(m);
    __m256d a0 = _mm256_setzero_pd(), a1 = a0;
    int64_t j = 0;
    for (; j + 16 <= v; j += 16) {
        __m512 p = cllm_exp512(_mm512_sub_ps(_mm512_loadu_ps(x + j), vm));
        if (e)
            _mm512_storeu_ps(e + j, p);
        add_pd8(_mm512_castps512_ps256(p), &a0, &a1);
        add_pd8(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(p), 1)), &a0, &a1);
    }
    return sum_exp_from(x, m, e, v, j, a0, a1);
}

CLLM_AVX2 static double sum_exp_avx2(const float *x, float m, float *e, int64_t v)
{
    if (cllm_simd_current >= CLLM_SIMD_AVX512)
        return sum_exp_avx512(x, m, e, v);
    return sum_exp_from(x, m, e, v, 0, _mm256_setzero_pd(), _mm256_setzero_pd());
}

CLLM_AVX2 static void scale_row_avx2(float *y, float s, int64_t v)
{
    __m256 vs = _mm256_set1_ps(s);
    int64_t j = 0;
    for (; j + 8 <= v; j += 8)
        _mm256_storeu_ps(y + j, _mm256_mul_ps(_mm256_loadu_ps(y + j), vs));
    for (; j < v; j++)
        y[j] *= s;
}

CLLM_AVX2 static void softmax_row_avx2(const float *x, float *y, int64_t v, int log_sm)
{
    float m;
    if (row_max_avx2(x, v, &m)) {
        fill_nan(y, v);
        return;
    }
    double s = sum_exp_avx2(x, m, log_sm ? NULL : y, v);
    if (!log_sm) {
        scale_row_avx2(y, (float)(1.0 / s), v);
        return;
    }
    float lse = (float)log(s);
    __m256 vm = _mm256_set1_ps(m), vl = _mm256_set1_ps(lse);
    int64_t j = 0;
    for (; j + 8 <= v; j += 8)
        _mm256_storeu_ps(y + j, _mm256_sub_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), vm), vl));
    for (; j < v; j++)
        y[j] = (x[j] - m) - lse;
}

CLLM_AVX2 static void softmax_back_row_avx2(const float *dy, const float *y,
                                            float *dx, int64_t v, int log_sm)
{
    __m256d a0 = _mm256_setzero_pd(), a1 = a0;
    int64_t j = 0;
    double tail = 0.0;
    for (; j + 8 <= v; j += 8) {
        __m256 g = _mm256_loadu_ps(dy + j);
        if (log_sm) {
            add_pd8(g, &a0, &a1);
        } else {
            __m256 p = _mm256_loadu_ps(y + j);
            __m256d g0 = _mm256_cvtps_pd(_mm256_castps256_ps128(g));
            __m256d g1 = _mm256_cvtps_pd(_mm256_extractf128_ps(g, 1));
            a0 = _mm256_fmadd_pd(g0, _mm256_cvtps_pd(_mm256_castps256_ps128(p)), a0);
            a1 = _mm256_fmadd_pd(g1, _mm256_cvtps_pd(_mm256_extractf128_ps(p, 1)), a1);
        }
    }
    for (; j < v; j++)
        tail += log_sm ? (double)dy[j] : (double)dy[j] * (double)y[j];
    float s = (float)(cllm_hsum256d(_mm256_add_pd(a0, a1)) + tail);
    __m256 vs = _mm256_set1_ps(s);
    for (j = 0; j + 8 <= v; j += 8) {
        __m256 g = _mm256_loadu_ps(dy + j), p = _mm256_loadu_ps(y + j);
        __m256 r = log_sm ? _mm256_fnmadd_ps(cllm_exp256(p), vs, g)
                          : _mm256_mul_ps(p, _mm256_sub_ps(g, vs));
        _mm256_storeu_ps(dx + j, r);
    }
    for (; j < v; j++)
        dx[j] = log_sm ? dy[j] - expf(y[j]) * s : y[j] * (dy[j] - s);
}
#endif

#define SOFTMAX_ROWS 8

typedef struct {
    const float *x, *dy, *y;
    float *out;
    int64_t rows, v;
    int log_sm, backward, simd;
} softmax_job;

static void softmax_task(void *arg, int64_t q, int worker)
{
    const softmax_job *j = arg;
    int64_t v = j->v;
    int64_t end = (q + 1) * SOFTMAX_ROWS < j->rows ? (q + 1) * SOFTMAX_ROWS : j->rows;
    (void)worker;
    for (int64_t r = q * SOFTMAX_ROWS; r < end; r++) {
#if CLLM_X86
        if (j->simd >= CLLM_SIMD_AVX2) {
            if (j->backward)
                softmax_back_row_avx2(j->dy + r * v, j->y + r * v, j->out + r * v, v,
                                      j->log_sm);
            else
                softmax_row_avx2(j->x + r * v, j->out + r * v, v, j->log_sm);
            continue;
        }
#endif
        if (j->backward)
            softmax_back_row_scalar(j->dy + r * v, j->y + r * v, j->out + r * v, v,
                                    j->log_sm);
        else
            softmax_row_scalar(j->x + r * v, j->out + r * v, v, j->log_sm);
    }
}

static void softmax_run(softmax_job *j)
{
    j->simd = cllm_simd_current;
    cllm_parallel((j->rows + SOFTMAX_ROWS - 1) / SOFTMAX_ROWS,
                  cllm_threads_for(j->rows * j->v, ELEM_BLOCK), softmax_task, j);
}

int cllm_softmax_forward(const float *x, float *y, int64_t rows, int64_t v,
                         int log_softmax)
{
    CLLM_CHECK(x && y && rows >= 0 && v >= 1);
    softmax_job j = {x, NULL, NULL, y, rows, v, log_softmax, 0, 0};
    softmax_run(&j);
    return CLLM_OK;
}

int cllm_softmax_backward(const float *dy, const float *y, float *dx, int64_t rows,
                          int64_t v, int log_softmax)
{
    CLLM_CHECK(dy && y && dx && rows >= 0 && v >= 1);
    softmax_job j = {NULL, dy, y, dx, rows, v, log_softmax, 1, 0};
    softmax_run(&j);
    return CLLM_OK;
}

/* -------------------------------------------------------- cross-entropy ---- */
/* One row: probs = softmax(z), returns lse and writes sum_c z_c to *zsum
 * (z = logits - max). Finite input only. */
static double ce_row_scalar(const float *x, float *p, int64_t v, float *m_out,
                            double *xsum)
{
    float m = x[0];
    double sx = 0.0, s = 0.0;
    for (int64_t j = 0; j < v; j++) {
        m = x[j] > m ? x[j] : m;
        sx += x[j];
    }
    for (int64_t j = 0; j < v; j++) {
        p[j] = expf(x[j] - m);
        s += p[j];
    }
    float inv = (float)(1.0 / s);
    for (int64_t j = 0; j < v; j++)
        p[j] *= inv;
    *m_out = m;
    *xsum = sx;
    return log(s);
}

#if CLLM_X86
/* xsum (the row's sum, for label smoothing) only when xsum != NULL: the
 * double conversions are most of the first pass's work */
CLLM_AVX2 static void ce_max_avx2(const float *x, int64_t v, float *m_out, double *xsum)
{
    __m256 m8 = _mm256_set1_ps(-INFINITY);
    __m256d a0 = _mm256_setzero_pd(), a1 = a0;
    int64_t j = 0;
    double tail = 0.0;
    for (; j + 8 <= v; j += 8) {
        __m256 a = _mm256_loadu_ps(x + j);
        m8 = _mm256_max_ps(a, m8);
        if (xsum)
            add_pd8(a, &a0, &a1);
    }
    float m = cllm_hmax256(m8);
    for (; j < v; j++) {
        m = x[j] > m ? x[j] : m;
        tail += x[j];
    }
    if (xsum)
        *xsum = cllm_hsum256d(_mm256_add_pd(a0, a1)) + tail;
    *m_out = m;
}

CLLM_AVX2 static double ce_row_avx2(const float *x, float *p, int64_t v,
                                    float *m_out, double *xsum)
{
    ce_max_avx2(x, v, m_out, xsum);
    double s = sum_exp_avx2(x, *m_out, p, v);
    scale_row_avx2(p, (float)(1.0 / s), v);
    return log(s);
}

/* The training forward's row on AVX-512 (cllm_cross_entropy_forward_grad):
 * the exps exp(x - m) of the sum's pass are stored in d (over the logits
 * when d == x: each vector is read before its exps are written), and a last
 * pass over the row, now in L1 or L2, turns them into the gradient
 * d = (p * inv - off) * coef in place. The ops and roundings of ce_row_avx2
 * and then ce_back_row_avx2: the same bits, with no row of probabilities
 * written and read back from memory. Returns the lse; *pt the target's
 * probability.
 *
 * It used to take the exps again in the last pass instead of storing them,
 * its stores streamed past the cache: storing measured faster everywhere
 * (forward + gradient of (1024, 4096) in place, one thread, 4.5-5.7 -> 3.1-4.1
 * ms; two threads 2.8 -> 2.1; (4096, 30000) 119-129 -> 87-100; (3072, 261)
 * 1.13-1.20 -> 0.80-0.87; not in place 5.0-6.9 -> 3.3-4.4). */
CLLM_AVX512 static double ce_grad_row_avx512(const float *x, float *d, int64_t v, float xt,
                                              float off, float coef, float *m_out,
                                              double *xsum, float *pt)
{
    ce_max_avx2(x, v, m_out, xsum);
    float m = *m_out;
    double s = sum_exp_avx512(x, m, d, v);
    float inv = (float)(1.0 / s);
    __m512 vi = _mm512_set1_ps(inv), vo = _mm512_set1_ps(off), vc = _mm512_set1_ps(coef);
    *pt = _mm512_cvtss_f32(_mm512_mul_ps(cllm_exp512(_mm512_set1_ps(xt - m)), vi));
    int64_t j = 0;
    for (; j + 16 <= v; j += 16) {
        __m512 p = _mm512_mul_ps(_mm512_loadu_ps(d + j), vi);
        _mm512_storeu_ps(d + j, _mm512_mul_ps(_mm512_sub_ps(p, vo), vc));
    }
    if (j < v) {
        __mmask16 k = (__mmask16)((1u << (v - j)) - 1u);
        __m512 p = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, d + j), vi);
        _mm512_mask_storeu_ps(d + j, k, _mm512_mul_ps(_mm512_sub_ps(p, vo), vc));
    }
    return log(s);
}
#endif

typedef struct ce_job {
    const float *logits;
    const int64_t *targets;
    const float *weight_in, *dloss;
    int64_t n, v, ignore_index;
    double eps;
    float scale, off, hit;
    float *probs, *weight, *out;
    int simd;
    int dloss_per_row;
    const struct ce_job *grad; /* forward: then this backward on each row */
} ce_job;

static void ce_backward_task(void *arg, int64_t i, int worker);
static void ce_row_forward(const ce_job *j, int64_t i);

static void ce_forward_task(void *arg, int64_t i, int worker)
{
    const ce_job *j = arg;
#if CLLM_X86
    if (j->grad && j->simd >= CLLM_SIMD_AVX512) {
        ce_row_forward(j, i); /* the gradient in the row's own passes */
        return;
    }
#endif
    ce_row_forward(j, i);
    if (j->grad) /* the row's gradient while it is in L2 */
        ce_backward_task((void *)j->grad, i, worker);
}

static void ce_row_forward(const ce_job *j, int64_t i)
{
    const float *x = j->logits + i * j->v;
    float m;
    double xsum = 0.0, lse;
    int64_t t = j->targets[i];
    /* the target's logit is read before the row is written: probs may be logits */
    float xt = t == j->ignore_index ? 0.0f : x[t];
    double *want_xsum = j->eps == 0.0 ? NULL : &xsum;
#if CLLM_X86
    if (j->grad && j->simd >= CLLM_SIMD_AVX512) {
        const ce_job *b = j->grad;
        float *d = j->probs + i * j->v, pt;
        int counted = t != j->ignore_index;
        /* the backward's coef for dloss = 1: 1 * weight */
        float coef = 1.0f * (counted ? j->scale : 0.0f);
        lse = ce_grad_row_avx512(x, d, j->v, xt, b->off, coef, &m, want_xsum, &pt);
        if (counted)
            d[t] = ((pt - b->off) - b->hit) * coef;
    } else if (j->simd >= CLLM_SIMD_AVX2)
        lse = ce_row_avx2(x, j->probs + i * j->v, j->v, &m, want_xsum);
    else
#endif
        lse = ce_row_scalar(x, j->probs + i * j->v, j->v, &m, &xsum);
    if (t == j->ignore_index) {
        j->out[i] = 0.0f;
        j->weight[i] = 0.0f;
        return;
    }
    /* lse - z_c >= 0 for every class: the loss cannot go negative */
    double nll = lse - ((double)xt - m);
    double smooth = lse - (xsum / (double)j->v - m);
    j->out[i] = (float)(j->eps == 0.0 ? nll : (1.0 - j->eps) * nll + j->eps * smooth);
    j->weight[i] = j->scale;
}

static int ce_forward(const float *logits, const int64_t *targets, int64_t n, int64_t v,
                      int64_t ignore_index, double label_smoothing, int reduction,
                      float *probs, float *weight, float *per_row, float *loss, int grad)
{
    CLLM_CHECK(logits && targets && probs && weight && per_row && n >= 1 && v >= 1);
    CLLM_CHECK(reduction >= RED_MEAN && reduction <= RED_NONE);
    CLLM_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0);
    int64_t count = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t t = targets[i];
        if (t == ignore_index)
            continue;
        if (t < 0 || t >= v)
            return CLLM_ERR_ID_RANGE;
        count++;
    }
    /* grad: the backward's job with dloss = 1 (coef = 1 * weight: the bits of
     * cllm_cross_entropy_backward called so), over the probabilities */
    static const float one = 1.0f;
    ce_job back = {NULL, targets, weight, &one, n, v, 0, label_smoothing, 0.0f,
                   (float)(label_smoothing / (double)v), (float)(1.0 - label_smoothing),
                   probs, NULL, probs, cllm_simd_current, 0, NULL};
    ce_job j = {logits, targets, NULL, NULL, n, v, ignore_index, label_smoothing,
                reduction != RED_MEAN ? 1.0f : count ? (float)(1.0 / (double)count) : 0.0f,
                0.0f, 0.0f, probs, weight, per_row, cllm_simd_current, 0,
                grad ? &back : NULL};
    cllm_parallel(n, cllm_threads_for(n * v, ELEM_BLOCK), ce_forward_task, &j);
    if (loss && reduction != RED_NONE) {
        double total = 0.0;
        for (int64_t i = 0; i < n; i++)
            total += per_row[i];
        if (reduction == RED_SUM)
            *loss = (float)total;
        else
            *loss = count ? (float)(total / (double)count) : NAN;
    }
    return CLLM_OK;
}

int cllm_cross_entropy_forward(const float *logits, const int64_t *targets,
                               int64_t n, int64_t v, int64_t ignore_index,
                               double label_smoothing, int reduction, float *probs,
                               float *weight, float *per_row, float *loss)
{
    return ce_forward(logits, targets, n, v, ignore_index, label_smoothing, reduction,
                      probs, weight, per_row, loss, 0);
}

int cllm_cross_entropy_forward_grad(const float *logits, const int64_t *targets,
                                    int64_t n, int64_t v, int64_t ignore_index,
                                    double label_smoothing, int reduction,
                                    float *dlogits, float *weight, float *per_row,
                                    float *loss)
{
    return ce_forward(logits, targets, n, v, ignore_index, label_smoothing, reduction,
                      dlogits, weight, per_row, loss, 1);
}

static void ce_back_row_scalar(const float *p, float *d, int64_t v, float off,
                               float coef)
{
    for (int64_t j = 0; j < v; j++)
        d[j] = (p[j] - off) * coef;
}

#if CLLM_X86
/* dlogits is written once and not read again soon: stream it past the cache
 * once the destination is 32-byte aligned */
CLLM_AVX2 static void ce_back_row_avx2(const float *p, float *d, int64_t v, float off,
                                       float coef)
{
    __m256 vo = _mm256_set1_ps(off), vc = _mm256_set1_ps(coef);
    int64_t j = 0;
    for (; j < v && ((uintptr_t)(d + j) & 31); j++)
        d[j] = (p[j] - off) * coef;
    for (; j + 8 <= v; j += 8)
        _mm256_stream_ps(d + j, _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(p + j), vo), vc));
    for (; j < v; j++)
        d[j] = (p[j] - off) * coef;
    _mm_sfence(); /* order the streamed stores before the caller's fix-up */
}
#endif

static void ce_backward_task(void *arg, int64_t i, int worker)
{
    const ce_job *j = arg;
    const float *p = j->probs + i * j->v;
    float *d = j->out + i * j->v;
    float coef = (j->dloss_per_row ? j->dloss[i] : j->dloss[0]) * j->weight_in[i];
    int counted = j->weight_in[i] != 0.0f;
    /* the target's probability is read before the row is written: d may be p */
    float pt = counted ? p[j->targets[i]] : 0.0f;
    (void)worker;
#if CLLM_X86
    if (j->simd >= CLLM_SIMD_AVX2)
        ce_back_row_avx2(p, d, j->v, j->off, coef);
    else
#endif
        ce_back_row_scalar(p, d, j->v, j->off, coef);
    if (counted)
        d[j->targets[i]] = ((pt - j->off) - j->hit) * coef;
}

int cllm_cross_entropy_backward(const float *probs, const int64_t *targets,
                                const float *weight, const float *dloss,
                                int dloss_per_row, int64_t n, int64_t v,
                                double label_smoothing, float *dlogits)
{
    CLLM_CHECK(probs && targets && weight && dloss && dlogits && n >= 1 && v >= 1);
    CLLM_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0);
    for (int64_t i = 0; i < n; i++)
        if (weight[i] != 0.0f && (targets[i] < 0 || targets[i] >= v))
            return CLLM_ERR_ID_RANGE;
    ce_job j = {NULL, targets, weight, dloss, n, v, 0, label_smoothing, 0.0f,
                (float)(label_smoothing / (double)v), (float)(1.0 - label_smoothing),
                (float *)probs, NULL, dlogits, cllm_simd_current, dloss_per_row, NULL};
    cllm_parallel(n, cllm_threads_for(n * v, ELEM_BLOCK), ce_backward_task, &j);
    return CLLM_OK;
}

/* ------------------------------------------------------------- float64 ---- */
/* The float64 path: the scalar formulas above in double, one thread. */
int cllm_softmax_forward_f64(const double *x, double *y, int64_t rows, int64_t v,
                             int log_softmax)
{
    CLLM_CHECK(x && y && rows >= 0 && v >= 1);
    for (int64_t r = 0; r < rows; r++) {
        const double *xr = x + r * v;
        double *yr = y + r * v, m = -INFINITY, s = 0.0;
        int nan = 0;
        for (int64_t j = 0; j < v; j++) {
            nan |= xr[j] != xr[j];
            m = xr[j] > m ? xr[j] : m;
        }
        if (nan || isinf(m)) {
            for (int64_t j = 0; j < v; j++)
                yr[j] = NAN;
            continue;
        }
        for (int64_t j = 0; j < v; j++)
            s += exp(xr[j] - m);
        double lse = log(s);
        for (int64_t j = 0; j < v; j++)
            yr[j] = log_softmax ? (xr[j] - m) - lse : exp(xr[j] - m) / s;
    }
    return CLLM_OK;
}

int cllm_softmax_backward_f64(const double *dy, const double *y, double *dx,
                              int64_t rows, int64_t v, int log_softmax)
{
    CLLM_CHECK(dy && y && dx && rows >= 0 && v >= 1);
    for (int64_t r = 0; r < rows; r++) {
        const double *g = dy + r * v, *p = y + r * v;
        double s = 0.0;
        for (int64_t j = 0; j < v; j++)
            s += log_softmax ? g[j] : g[j] * p[j];
        for (int64_t j = 0; j < v; j++)
            dx[r * v + j] = log_softmax ? g[j] - exp(p[j]) * s : p[j] * (g[j] - s);
    }
    return CLLM_OK;
}

int cllm_cross_entropy_forward_f64(const double *logits, const int64_t *targets,
                                   int64_t n, int64_t v, int64_t ignore_index,
                                   double label_smoothing, int reduction,
                                   double *probs, double *weight, double *per_row,
                                   double *loss)
{
    CLLM_CHECK(logits && targets && probs && weight && per_row && n >= 1 && v >= 1);
    CLLM_CHECK(reduction >= RED_MEAN && reduction <= RED_NONE);
    CLLM_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0);
    int64_t count = 0;
    for (int64_t i = 0; i < n; i++) {
        if (targets[i] == ignore_index)
            continue;
        if (targets[i] < 0 || targets[i] >= v)
            return CLLM_ERR_ID_RANGE;
        count++;
    }
    double scale = reduction != RED_MEAN ? 1.0 : count ? 1.0 / (double)count : 0.0;
    double total = 0.0, eps = label_smoothing;
    for (int64_t i = 0; i < n; i++) {
        const double *x = logits + i * v;
        double *p = probs + i * v, m = x[0], s = 0.0, zsum = 0.0;
        for (int64_t j = 0; j < v; j++)
            m = x[j] > m ? x[j] : m;
        int64_t t = targets[i];
        /* read before the row is written: probs may be logits (in place) */
        double xt = t == ignore_index ? 0.0 : x[t];
        for (int64_t j = 0; j < v; j++) {
            double xj = x[j];
            p[j] = exp(xj - m);
            s += p[j];
            zsum += xj - m;
        }
        for (int64_t j = 0; j < v; j++)
            p[j] /= s;
        double lse = log(s);
        if (t == ignore_index) {
            per_row[i] = weight[i] = 0.0;
            continue;
        }
        double nll = lse - (xt - m);
        per_row[i] = eps == 0.0 ? nll : (1.0 - eps) * nll + eps * (lse - zsum / (double)v);
        weight[i] = scale;
        total += per_row[i];
    }
    if (loss && reduction != RED_NONE)
        *loss = reduction == RED_SUM ? total : count ? total / (double)count : NAN;
    return CLLM_OK;
}

int cllm_cross_entropy_backward_f64(const double *probs, const int64_t *targets,
                                    const double *weight, const double *dloss,
                                    int dloss_per_row, int64_t n, int64_t v,
                                    double label_smoothing, double *dlogits)
{
    CLLM_CHECK(probs && targets && weight && dloss && dlogits && n >= 1 && v >= 1);
    CLLM_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0);
    double off = label_smoothing / (double)v, hit = 1.0 - label_smoothing;
    for (int64_t i = 0; i < n; i++)
        if (weight[i] != 0.0 && (targets[i] < 0 || targets[i] >= v))
            return CLLM_ERR_ID_RANGE;
    for (int64_t i = 0; i < n; i++) {
        double coef = (dloss_per_row ? dloss[i] : dloss[0]) * weight[i];
        /* read before the row is written: dlogits may be probs (in place) */
        double pt = weight[i] != 0.0 ? probs[i * v + targets[i]] : 0.0;
        for (int64_t j = 0; j < v; j++)
            dlogits[i * v + j] = (probs[i * v + j] - off) * coef;
        if (weight[i] != 0.0)
            dlogits[i * v + targets[i]] = ((pt - off) - hit) * coef;
    }
    return CLLM_OK;
}
