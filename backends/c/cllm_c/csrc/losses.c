/* The fused softmax + cross-entropy: the forward (probabilities, per-row
 * losses, their reduction), the forward that writes the logits' gradient in
 * place of the probabilities, and the backward; the float64 path at the end.
 * The row kernels it shares with the softmax (the sum of a row's exps, the
 * scaling of a row) are in losses_softmax.c.
 *
 * Rows run one per task; threads split rows. Every sum that produces one
 * value accumulates in double in a fixed order: within a row, per SIMD lane
 * then lanes combined in a fixed pattern; across rows, in row order. So
 * results do not depend on the thread count.
 *
 * Only finite inputs reach these kernels (the wrapper rejects the rest). */
#include "losses_parts.h"
#include "simd_math.h"

#include <math.h>

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
            cllm_loss_add_pd8(a, &a0, &a1);
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
    double s = cllm_loss_sum_exp_avx2(x, *m_out, p, v);
    cllm_loss_scale_row_avx2(p, (float)(1.0 / s), v);
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
    double s = cllm_loss_sum_exp_avx512(x, m, d, v);
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

/* Rows per pool task: at least CE_TASK_FLOATS logits. With a task per row,
 * a small vocabulary's rows (the default model's 261) took less time than
 * the two threads spent taking turns at the pool's shared counters: the
 * default model's forward_grad ran 1.2x faster on two threads than on one.
 * Rows are independent and each is computed whole by one task, so the
 * grouping changes no bits. */
#define CE_TASK_FLOATS 8192

typedef struct {
    cllm_chunk_fn row;
    void *job;
    int64_t n, per;
} ce_rows;

static void ce_rows_task(void *arg, int64_t q, int worker)
{
    const ce_rows *r = arg;
    int64_t end = (q + 1) * r->per < r->n ? (q + 1) * r->per : r->n;
    for (int64_t i = q * r->per; i < end; i++)
        r->row(r->job, i, worker);
}

/* row(job, i, worker) for every row i < n of v logits, on the pool */
static void ce_run(cllm_chunk_fn row, void *job, int64_t n, int64_t v)
{
    ce_rows r = {row, job, n, v >= CE_TASK_FLOATS ? 1 : CE_TASK_FLOATS / v};
    cllm_parallel((n + r.per - 1) / r.per, cllm_threads_for(n * v, ELEM_BLOCK), ce_rows_task,
                  &r);
}

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
    ce_run(ce_forward_task, &j, n, v);
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
    ce_run(ce_backward_task, &j, n, v);
    return CLLM_OK;
}

/* ------------------------------------------------------------- float64 ---- */
/* The float64 path: the scalar formulas above in double, one thread. */

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
