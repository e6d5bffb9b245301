/* The softmax and log-softmax, forward and backward, with the row kernels
 * they share with the cross-entropy (losses.c): the sum of a row's exps and
 * the scaling of a row, declared in losses_parts.h. The float64 path at the
 * end.
 *
 * A task runs the row kernel on SOFTMAX_ROWS rows; threads split rows. Every
 * sum that produces one value accumulates in double in a fixed order: within
 * a row, per SIMD lane then lanes combined in a fixed pattern. So results do
 * not depend on the thread count.
 *
 * Special values follow the spec (PyTorch): a row holding NaN or +inf, or
 * only -inf, becomes all NaN; -inf entries of other rows get probability 0. */
#include "losses_parts.h"
#include "simd_math.h"

#include <math.h>

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
        cllm_loss_add_pd8(p, &a0, &a1);
    }
    if (j < v) {
        __m256i mask = cllm_tail_mask(v - j);
        __m256 p = cllm_exp256(_mm256_sub_ps(_mm256_maskload_ps(x + j, mask), vm));
        p = _mm256_and_ps(p, _mm256_castsi256_ps(mask));
        if (e)
            _mm256_maskstore_ps(e + j, mask, p);
        cllm_loss_add_pd8(p, &a0, &a1);
    }
    return cllm_hsum256d(_mm256_add_pd(a0, a1));
}

/* 16 exps per step (cllm_exp512 is cllm_exp256 lane for lane), added to
 * the double accumulators 8 at a time in the AVX2 order: the same bits */
CLLM_AVX512 double cllm_loss_sum_exp_avx512(const float *x, float m, float *e, int64_t v)
{
    __m512 vm = _mm512_set1_ps(m);
    __m256d a0 = _mm256_setzero_pd(), a1 = a0;
    int64_t j = 0;
    for (; j + 16 <= v; j += 16) {
        __m512 p = cllm_exp512(_mm512_sub_ps(_mm512_loadu_ps(x + j), vm));
        if (e)
            _mm512_storeu_ps(e + j, p);
        cllm_loss_add_pd8(_mm512_castps512_ps256(p), &a0, &a1);
        cllm_loss_add_pd8(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(p), 1)),
                          &a0, &a1);
    }
    return sum_exp_from(x, m, e, v, j, a0, a1);
}

CLLM_AVX2 double cllm_loss_sum_exp_avx2(const float *x, float m, float *e, int64_t v)
{
    if (cllm_simd_current >= CLLM_SIMD_AVX512)
        return cllm_loss_sum_exp_avx512(x, m, e, v);
    return sum_exp_from(x, m, e, v, 0, _mm256_setzero_pd(), _mm256_setzero_pd());
}

CLLM_AVX2 void cllm_loss_scale_row_avx2(float *y, float s, int64_t v)
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
    double s = cllm_loss_sum_exp_avx2(x, m, log_sm ? NULL : y, v);
    if (!log_sm) {
        cllm_loss_scale_row_avx2(y, (float)(1.0 / s), v);
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
            cllm_loss_add_pd8(g, &a0, &a1);
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
