/* gradients: norms, statistics, clipping, accumulation and the tree
 * reduction over flat (P,) buffers.
 *
 * Reductions split the buffer into fixed blocks of BLOCK elements; each
 * block is reduced in order, then the block results are combined in block
 * order, so the result never depends on the thread count. The elementwise
 * kernels are written once and compiled twice (portable and AVX2): without
 * contraction the two give the same bits. */
#include "cllm.h"

#include <math.h>
#include <string.h>

#define BLOCK 16384
#define TREE_BLOCK 2048

#define BODY static inline __attribute__((always_inline))

/* one block of the summary; NaN is tracked apart so min/max can ignore it */
BODY void summary_block(const float *g, int64_t len, cllm_grad_summary *s, int *nan)
{
    float amax = 0.0f, mn = INFINITY, mx = -INFINITY;
    double sum = 0.0;
    int64_t bad = 0;
    int has_nan = 0;
    for (int64_t i = 0; i < len; i++) {
        float x = g[i], a = fabsf(x);
        has_nan |= x != x;
        bad += !(a <= 3.40282347e38f);
        amax = a > amax ? a : amax;
        mn = x < mn ? x : mn;
        mx = x > mx ? x : mx;
        sum += x;
    }
    s->amax = amax;
    s->min = mn;
    s->max = mx;
    s->sum = sum;
    s->nonfinite = bad;
    *nan = has_nan;
}

static void summary_scalar(const float *g, int64_t len, cllm_grad_summary *s, int *nan)
{
    summary_block(g, len, s, nan);
}

/* Eight interleaved sums (element i into lane i % 8), combined pairwise in a
 * fixed order: one chain of dependent double adds ran at an add's latency
 * per element (2.6 ms of a small-model step for 1.3M gradients); eight
 * independent lanes vectorize. The order is fixed by the block alone, so
 * the bits still do not depend on the thread count or the build. (Each
 * x * x is exact: a float squared fits a double's mantissa.) */
BODY double sumsq_block(const float *g, int64_t len, double scale)
{
    double acc[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
    int64_t i = 0;
    for (; i + 8 <= len; i += 8)
        for (int r = 0; r < 8; r++) {
            double x = (double)g[i + r] * scale;
            acc[r] += x * x;
        }
    for (int r = 0; i + r < len; r++) {
        double x = (double)g[i + r] * scale;
        acc[r] += x * x;
    }
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* 2^-k as two factors, each applied exactly: one factor would overflow (or
 * go denormal) for |k| near 1074, the exponent of double denormals */
static void split_scale(int k, double *s1, double *s2)
{
    *s1 = ldexp(1.0, -(k / 2));
    *s2 = ldexp(1.0, -(k - k / 2));
}

static double sumsq_scalar(const float *g, int64_t len, double scale)
{
    return sumsq_block(g, len, scale);
}

BODY void add_block(const float *a, const float *b, float *out, int64_t len)
{
    for (int64_t i = 0; i < len; i++)
        out[i] = a[i] + b[i];
}

BODY void scale_block(const float *g, float f, float *out, int64_t len)
{
    for (int64_t i = 0; i < len; i++)
        out[i] = g[i] * f;
}

BODY void clip_block(const float *g, float c, float *out, int64_t len)
{
    for (int64_t i = 0; i < len; i++) {
        float x = g[i];
        out[i] = x < -c ? -c : (x > c ? c : x);
    }
}

static void add_scalar(const float *a, const float *b, float *o, int64_t n) { add_block(a, b, o, n); }
static void scale_scalar(const float *g, float f, float *o, int64_t n) { scale_block(g, f, o, n); }
static void clip_scalar(const float *g, float c, float *o, int64_t n) { clip_block(g, c, o, n); }

#if CLLM_X86
CLLM_AVX2 static void summary_avx2(const float *g, int64_t len, cllm_grad_summary *s, int *nan)
{
    summary_block(g, len, s, nan);
}
CLLM_AVX2 static double sumsq_avx2(const float *g, int64_t len, double scale)
{
    return sumsq_block(g, len, scale);
}
CLLM_AVX2 static void add_avx2(const float *a, const float *b, float *o, int64_t n) { add_block(a, b, o, n); }
CLLM_AVX2 static void scale_avx2(const float *g, float f, float *o, int64_t n) { scale_block(g, f, o, n); }
CLLM_AVX2 static void clip_avx2(const float *g, float c, float *o, int64_t n) { clip_block(g, c, o, n); }
#define PICK(name) (cllm_simd_current >= CLLM_SIMD_AVX2 ? name##_avx2 : name##_scalar)
#else
#define PICK(name) name##_scalar
#endif

typedef struct {
    const float *a, *b;
    const float *const *bufs;
    float f, *out;
    int64_t n;
    int k;
    double scale, *partial;
    cllm_grad_summary *summary;
    int *nan;
    char *work;
    size_t per;
    void (*map2)(const float *, const float *, float *, int64_t);
    void (*map1)(const float *, float, float *, int64_t);
    void (*summarize)(const float *, int64_t, cllm_grad_summary *, int *);
    double (*sumsq)(const float *, int64_t, double);
} grad_job;

static int64_t block_len(const grad_job *j, int64_t q, int64_t block)
{
    return j->n - q * block < block ? j->n - q * block : block;
}

static void summary_task(void *arg, int64_t q, int worker)
{
    const grad_job *j = arg;
    (void)worker;
    j->summarize(j->a + q * BLOCK, block_len(j, q, BLOCK), j->summary + q, j->nan + q);
}

static void sumsq_task(void *arg, int64_t q, int worker)
{
    const grad_job *j = arg;
    (void)worker;
    j->partial[q] = j->sumsq(j->a + q * BLOCK, block_len(j, q, BLOCK), j->scale);
}

static void map_task(void *arg, int64_t q, int worker)
{
    const grad_job *j = arg;
    int64_t i0 = q * BLOCK, len = block_len(j, q, BLOCK);
    (void)worker;
    if (j->map2)
        j->map2(j->a + i0, j->b + i0, j->out + i0, len);
    else
        j->map1(j->a + i0, j->f, j->out + i0, len);
}

static int blocks_of(int64_t n, int64_t block) { return (int)((n + block - 1) / block); }

int cllm_grad_summarize(const float *g, int64_t n, cllm_grad_summary *out)
{
    CLLM_CHECK(g && out && n >= 1);
    int64_t blocks = blocks_of(n, BLOCK);
    grad_job j = {0};
    j.a = g;
    j.n = n;
    j.summary = cllm_alloc((size_t)blocks * sizeof(cllm_grad_summary));
    j.nan = cllm_alloc((size_t)blocks * sizeof(int));
    if (!j.summary || !j.nan) {
        cllm_free(j.summary);
        cllm_free(j.nan);
        return CLLM_ERR_NOMEM;
    }
    j.summarize = PICK(summary);
    cllm_parallel(blocks, cllm_threads_for(n, BLOCK * 4), summary_task, &j);
    cllm_grad_summary s = {0.0, INFINITY, -INFINITY, 0.0, 0};
    int any_nan = 0;
    for (int64_t q = 0; q < blocks; q++) {
        const cllm_grad_summary *b = j.summary + q;
        any_nan |= j.nan[q];
        s.amax = b->amax > s.amax ? b->amax : s.amax;
        s.min = b->min < s.min ? b->min : s.min;
        s.max = b->max > s.max ? b->max : s.max;
        s.sum += b->sum;
        s.nonfinite += b->nonfinite;
    }
    if (any_nan)
        s.amax = s.min = s.max = s.sum = NAN;
    *out = s;
    cllm_free(j.summary);
    cllm_free(j.nan);
    return CLLM_OK;
}

int cllm_grad_sumsq_scaled(const float *g, int64_t n, int k, double *out)
{
    CLLM_CHECK(g && out && n >= 1 && k > -1100 && k < 1100);
    int64_t blocks = blocks_of(n, BLOCK);
    grad_job j = {0};
    j.a = g;
    j.n = n;
    j.scale = ldexp(1.0, -k); /* a power of two: exact (|k| <= 150 for float32) */
    j.sumsq = PICK(sumsq);
    j.partial = cllm_alloc((size_t)blocks * sizeof(double));
    if (!j.partial)
        return CLLM_ERR_NOMEM;
    cllm_parallel(blocks, cllm_threads_for(n, BLOCK * 4), sumsq_task, &j);
    double s = 0.0;
    for (int64_t q = 0; q < blocks; q++)
        s += j.partial[q];
    *out = s;
    cllm_free(j.partial);
    return CLLM_OK;
}

static int map_run(grad_job *j)
{
    cllm_parallel(blocks_of(j->n, BLOCK), cllm_threads_for(j->n, BLOCK * 4), map_task, j);
    return CLLM_OK;
}

int cllm_vec_add(const float *a, const float *b, float *out, int64_t n)
{
    CLLM_CHECK(a && b && out && n >= 0);
    grad_job j = {0};
    j.a = a;
    j.b = b;
    j.out = out;
    j.n = n;
    j.map2 = PICK(add);
    return map_run(&j);
}

int cllm_vec_scale(const float *g, float f, float *out, int64_t n)
{
    CLLM_CHECK(g && out && n >= 0);
    grad_job j = {0};
    j.a = g;
    j.f = f;
    j.out = out;
    j.n = n;
    j.map1 = PICK(scale);
    return map_run(&j);
}

int cllm_vec_clip(const float *g, float c, float *out, int64_t n)
{
    CLLM_CHECK(g && out && n >= 0 && c > 0.0f);
    grad_job j = {0};
    j.a = g;
    j.f = c;
    j.out = out;
    j.n = n;
    j.map1 = PICK(clip);
    return map_run(&j);
}

/* Level by level on one block: pairs (0,1), (2,3) ... into slots 0, 1, ...
 * of the scratch, an odd last operand carried up unchanged. Slot j of a
 * level is written only after the pair that read it (index j/2 < j) did. */
static void tree_task(void *arg, int64_t q, int worker)
{
    const grad_job *j = arg;
    int64_t i0 = q * TREE_BLOCK, len = block_len(j, q, TREE_BLOCK);
    float *scratch = (float *)(j->work + j->per * (size_t)worker);
    const float **ptrs = (const float **)(scratch + (j->k / 2 + 1) * TREE_BLOCK);
    for (int b = 0; b < j->k; b++)
        ptrs[b] = j->bufs[b] + i0;
    int count = j->k;
    while (count > 1) {
        int pairs = count / 2;
        for (int p = 0; p < pairs; p++) {
            float *dst = count == 2 ? j->out + i0 : scratch + (int64_t)p * TREE_BLOCK;
            j->map2(ptrs[2 * p], ptrs[2 * p + 1], dst, len);
            ptrs[p] = dst;
        }
        if (count % 2)
            ptrs[pairs] = ptrs[count - 1];
        count = pairs + count % 2;
    }
    if (j->k == 1)
        memcpy(j->out + i0, ptrs[0], (size_t)len * sizeof(float));
}

int cllm_tree_reduce(const float *const *bufs, int k, int64_t n, float *out)
{
    CLLM_CHECK(bufs && out && k >= 1 && n >= 0);
    for (int b = 0; b < k; b++)
        CLLM_CHECK(bufs[b] != NULL);
    int nt = cllm_threads_for(n * k, BLOCK * 4);
    grad_job j = {0};
    j.bufs = bufs;
    j.k = k;
    j.n = n;
    j.out = out;
    j.map2 = PICK(add);
    j.per = (size_t)((k / 2 + 1) * TREE_BLOCK) * sizeof(float) + (size_t)k * sizeof(float *);
    j.work = cllm_alloc(j.per * (size_t)nt);
    if (!j.work)
        return CLLM_ERR_NOMEM;
    cllm_parallel(blocks_of(n, TREE_BLOCK), nt, tree_task, &j);
    cllm_free(j.work);
    return CLLM_OK;
}

/* ------------------------------------------------------------- float64 ---- */
/* The float64 path: the same reductions in double, one thread. */
int cllm_grad_summarize_f64(const double *g, int64_t n, cllm_grad_summary *out)
{
    CLLM_CHECK(g && out && n >= 1);
    cllm_grad_summary s = {0.0, INFINITY, -INFINITY, 0.0, 0};
    int nan = 0;
    for (int64_t i = 0; i < n; i++) {
        double x = g[i], a = fabs(x);
        nan |= x != x;
        s.nonfinite += !(a <= 1.7976931348623157e308);
        s.amax = a > s.amax ? a : s.amax;
        s.min = x < s.min ? x : s.min;
        s.max = x > s.max ? x : s.max;
        s.sum += x;
    }
    if (nan)
        s.amax = s.min = s.max = s.sum = NAN;
    *out = s;
    return CLLM_OK;
}

int cllm_grad_sumsq_scaled_f64(const double *g, int64_t n, int k, double *out)
{
    CLLM_CHECK(g && out && n >= 1 && k > -1100 && k < 1100);
    double s1, s2, s = 0.0;
    split_scale(k, &s1, &s2);
    for (int64_t i = 0; i < n; i++) {
        double x = g[i] * s1 * s2;
        s += x * x;
    }
    *out = s;
    return CLLM_OK;
}

int cllm_vec_add_f64(const double *a, const double *b, double *out, int64_t n)
{
    CLLM_CHECK(a && b && out && n >= 0);
    for (int64_t i = 0; i < n; i++)
        out[i] = a[i] + b[i];
    return CLLM_OK;
}

int cllm_vec_scale_f64(const double *g, double f, double *out, int64_t n)
{
    CLLM_CHECK(g && out && n >= 0);
    for (int64_t i = 0; i < n; i++)
        out[i] = g[i] * f;
    return CLLM_OK;
}

int cllm_vec_clip_f64(const double *g, double c, double *out, int64_t n)
{
    CLLM_CHECK(g && out && n >= 0 && c > 0.0);
    for (int64_t i = 0; i < n; i++)
        out[i] = g[i] < -c ? -c : (g[i] > c ? c : g[i]);
    return CLLM_OK;
}

/* the same tree as cllm_tree_reduce, element by element */
int cllm_tree_reduce_f64(const double *const *bufs, int k, int64_t n, double *out)
{
    CLLM_CHECK(bufs && out && k >= 1 && n >= 0);
    for (int b = 0; b < k; b++)
        CLLM_CHECK(bufs[b] != NULL);
    double *level = cllm_alloc((size_t)k * sizeof(double));
    if (!level)
        return CLLM_ERR_NOMEM;
    for (int64_t i = 0; i < n; i++) {
        int count = k;
        for (int b = 0; b < k; b++)
            level[b] = bufs[b][i];
        while (count > 1) {
            int pairs = count / 2;
            for (int p = 0; p < pairs; p++)
                level[p] = level[2 * p] + level[2 * p + 1];
            if (count % 2)
                level[pairs] = level[count - 1];
            count = pairs + count % 2;
        }
        out[i] = level[0];
    }
    cllm_free(level);
    return CLLM_OK;
}
