/* ffn: linear (on the GEMM of gemm.c, or on gemv.c for a few rows), relu /
 * gelu / gelu_tanh, layer norm, and the column sums the bias gradients need.
 * The feed-forward block itself is composed from these in the Python wrapper.
 *
 * Every kernel has a scalar twin next to its AVX2 path. Reductions that
 * produce one value from many rows (bias and layer-norm parameter
 * gradients, layer-norm statistics) accumulate in double in a fixed order
 * (row 0, 1, 2, ...), so they are accurate and identical for any thread
 * count; threads split columns or rows, never a reduction. */
#include "gemm.h"
#include "simd_math.h"

#include <math.h>
#include <string.h>

#define ELEM_BLOCK 16384
#define COL_CHUNK 64

enum { ACT_RELU = 0, ACT_GELU = 1, ACT_GELU_TANH = 2 };

static const float INV_SQRT2 = 0.70710678118654752f;
static const float INV_SQRT_2PI = 0.39894228040143268f;
static const float TANH_K = 0.79788456080286536f; /* sqrt(2 / pi) */
static const float TANH_C = 0.044715f;
/* past |x| = 100 every GELU form has saturated (Phi and the sigmoid are 0
 * or 1 exactly in float32); clamping there keeps x^2, x^3 finite */
static const float SAT = 100.0f;

/* --------------------------------------------------------------- linear ---- */
int cllm_linear_forward(const float *x, const float *w, const float *b, float *y,
                        int64_t n, int64_t in_features, int64_t out_features)
{
    CLLM_CHECK(x && w && y && n >= 0 && in_features >= 1 && out_features >= 1);
    /* a few rows (decoding) are memory-bound: stream w once, unpacked */
    if (n <= CLLM_GEMV_MAX_ROWS)
        return cllm_gemv(x, w, b, y, n, in_features, out_features);
    /* y (N, OUT) = x (N, IN) w^T (IN, OUT) + b */
    return cllm_sgemm(0, 1, n, out_features, in_features, x, in_features, w,
                      in_features, y, out_features, 0, b);
}

static int linear_backward(const float *dy, const float *x, const float *w, float *dx,
                           float *dw, float *db, int64_t n, int64_t in_features,
                           int64_t out_features, const cllm_act_epilogue *ep)
{
    int status;
    CLLM_CHECK(dy && x && w && n >= 0 && in_features >= 1 && out_features >= 1);
    if (dx) { /* dx (N, IN) = dy (N, OUT) w (OUT, IN) */
        status = cllm_sgemm_act(0, 0, n, in_features, out_features, dy, out_features,
                                w, in_features, dx, in_features, 0, NULL, ep);
        if (status != CLLM_OK)
            return status;
    }
    if (dw) { /* dw (OUT, IN) = dy^T (OUT, N) x (N, IN) */
        status = cllm_sgemm(1, 0, out_features, in_features, n, dy, out_features,
                            x, in_features, dw, in_features, 0, NULL);
        if (status != CLLM_OK)
            return status;
    }
    return db ? cllm_column_sum(dy, db, n, out_features) : CLLM_OK;
}

int cllm_linear_backward(const float *dy, const float *x, const float *w,
                         float *dx, float *dw, float *db,
                         int64_t n, int64_t in_features, int64_t out_features)
{
    return linear_backward(dy, x, w, dx, dw, db, n, in_features, out_features, NULL);
}

int cllm_linear_backward_act(const float *dy, const float *x, const float *w,
                             float *dx, float *dw, float *db, int64_t n,
                             int64_t in_features, int64_t out_features, int kind,
                             const float *act_x)
{
    CLLM_CHECK(dx && act_x && kind >= ACT_RELU && kind <= ACT_GELU_TANH);
    cllm_act_epilogue ep = {kind, act_x, NULL};
    return linear_backward(dy, x, w, dx, dw, db, n, in_features, out_features, &ep);
}

/* ------------------------------------------------------- column sums ---- */
/* out[j] = sum_r x[r, j] (and of x * y when y != NULL), in double, rows in
 * order. A column's sum is that one chain whatever loop runs it, so the bits
 * do not depend on how the columns are cut into chunks or which thread takes
 * one.
 *
 * Up to COL_RUN columns, one thread reads the matrix row by row, in address
 * order, adding each row into COL_RUN double sums that stay in L1. Wider
 * matrices (a vocabulary's bias) are cut into chunks of COL_CHUNK columns
 * that threads claim. Chunks of 64 columns read 256 bytes of each row, the
 * row's stride apart, and waited on those loads: on the default model the
 * bias and layer-norm sums were 3.0-3.4% of a one-thread step's samples and
 * are 1.5% as runs (2.9 -> 1.3% of the samples of both threads on two). Per
 * element, alone: (3072, 512) 0.58 -> 0.22 ns on one thread; on two, the
 * chunks took 0.33-0.45 ns on (3072, 384 to 1152) against the one-thread
 * run's 0.20-0.23, and (3072, 128) 0.11 against 0.16. */
#define COL_RUN 2048

static inline __attribute__((always_inline)) void
column_chunk(const float *x, const float *y, float *out, int64_t rows,
             int64_t cols, int64_t c0, int64_t width)
{
    double acc[COL_RUN];
    memset(acc, 0, (size_t)width * sizeof(double));
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * cols + c0;
        if (y) {
            const float *yr = y + r * cols + c0;
            for (int64_t j = 0; j < width; j++)
                acc[j] += (double)xr[j] * (double)yr[j];
        } else {
            for (int64_t j = 0; j < width; j++)
                acc[j] += (double)xr[j];
        }
    }
    for (int64_t j = 0; j < width; j++)
        out[c0 + j] = (float)acc[j];
}

static void column_chunk_scalar(const float *x, const float *y, float *out,
                                int64_t rows, int64_t cols, int64_t c0,
                                int64_t width)
{
    column_chunk(x, y, out, rows, cols, c0, width);
}

#if CLLM_X86
/* the same loop compiled for AVX2: the double lanes hold whole columns */
CLLM_AVX2 static void column_chunk_avx2(const float *x, const float *y, float *out,
                                        int64_t rows, int64_t cols, int64_t c0,
                                        int64_t width)
{
    column_chunk(x, y, out, rows, cols, c0, width);
}

/* the loop compiled for AVX-512, for the runs of one thread */
CLLM_AVX512 static void column_chunk_avx512_run(const float *x, const float *y, float *out,
                                                int64_t rows, int64_t cols, int64_t c0,
                                                int64_t width)
{
    column_chunk(x, y, out, rows, cols, c0, width);
}

/* 64 columns in eight zmm accumulators of doubles (the generic loop keeps
 * them in memory: measured 0.15-0.4 ns per element on the model's bias
 * gradients and 1.3 on a (4096, 30000) one, this 0.1-0.36 and 0.84). Same
 * sums, same order, so the same bits. */
static inline __mmask16 lanes16(int64_t n) /* the first n lanes (n may be <= 0) */
{
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? 0 : (__mmask16)((1u << n) - 1u);
}

/* the products x * y in double, as the scalar twin forms them (exact) */
#define Z_HALVES(v, lo, hi)                                                    \
    lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));                           \
    hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)))
#define Z_COLS(lo, hi, r)                                                      \
    do {                                                                       \
        __mmask16 m = lanes16(width - (r));                                    \
        __m512d xl, xh, yl, yh;                                                \
        __m512 v = _mm512_maskz_loadu_ps(m, xr + (r));                         \
        Z_HALVES(v, xl, xh);                                                   \
        if (yr) {                                                              \
            v = _mm512_maskz_loadu_ps(m, yr + (r));                            \
            Z_HALVES(v, yl, yh);                                               \
            xl = _mm512_mul_pd(xl, yl);                                        \
            xh = _mm512_mul_pd(xh, yh);                                        \
        }                                                                      \
        lo = _mm512_add_pd(lo, xl);                                            \
        hi = _mm512_add_pd(hi, xh);                                            \
    } while (0)

CLLM_AVX512 static void column_chunk_avx512(const float *x, const float *y, float *out,
                                            int64_t rows, int64_t cols, int64_t c0,
                                            int64_t width)
{
    __m512d a0 = _mm512_setzero_pd(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0;
    __m512d a6 = a0, a7 = a0;
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * cols + c0, *yr = y ? y + r * cols + c0 : NULL;
        Z_COLS(a0, a1, 0);
        Z_COLS(a2, a3, 16);
        Z_COLS(a4, a5, 32);
        Z_COLS(a6, a7, 48);
    }
    double acc[COL_CHUNK];
    _mm512_storeu_pd(acc, a0), _mm512_storeu_pd(acc + 8, a1);
    _mm512_storeu_pd(acc + 16, a2), _mm512_storeu_pd(acc + 24, a3);
    _mm512_storeu_pd(acc + 32, a4), _mm512_storeu_pd(acc + 40, a5);
    _mm512_storeu_pd(acc + 48, a6), _mm512_storeu_pd(acc + 56, a7);
    for (int64_t j = 0; j < width; j++)
        out[c0 + j] = (float)acc[j];
}
#undef Z_COLS
#undef Z_HALVES
#endif

typedef struct {
    const float *x, *y;
    float *out;
    int64_t rows, cols, chunk;
    int simd;
} column_job;

static void column_task(void *arg, int64_t q, int worker)
{
    const column_job *j = arg;
    int64_t c0 = q * j->chunk;
    int64_t width = j->cols - c0 < j->chunk ? j->cols - c0 : j->chunk;
    (void)worker;
#if CLLM_X86
    if (j->simd >= CLLM_SIMD_AVX512 && j->chunk == COL_CHUNK) {
        column_chunk_avx512(j->x, j->y, j->out, j->rows, j->cols, c0, width);
        return;
    }
    if (j->simd >= CLLM_SIMD_AVX512) {
        column_chunk_avx512_run(j->x, j->y, j->out, j->rows, j->cols, c0, width);
        return;
    }
    if (j->simd >= CLLM_SIMD_AVX2) {
        column_chunk_avx2(j->x, j->y, j->out, j->rows, j->cols, c0, width);
        return;
    }
#endif
    column_chunk_scalar(j->x, j->y, j->out, j->rows, j->cols, c0, width);
}

static int column_reduce(const float *x, const float *y, float *out, int64_t rows,
                         int64_t cols)
{
    CLLM_CHECK(x && out && rows >= 0 && cols >= 0);
    /* up to COL_RUN columns: one run, on this thread */
    int nt = cols <= COL_RUN ? 1 : cllm_threads_for(rows * cols, ELEM_BLOCK * 4);
    column_job j = {x, y, out, rows, cols, nt > 1 ? COL_CHUNK : COL_RUN, cllm_simd_current};
    cllm_parallel((cols + j.chunk - 1) / j.chunk, nt, column_task, &j);
    return CLLM_OK;
}

int cllm_column_sum(const float *x, float *out, int64_t rows, int64_t cols)
{
    return column_reduce(x, NULL, out, rows, cols);
}

/* ----------------------------------------------------------- activations ---- */
static float phi_cdf(float x) { return 0.5f * erfcf(-x * INV_SQRT2); }

static float clamp_sat(float x) /* keeps NaN */
{
    return x > SAT ? SAT : (x < -SAT ? -SAT : x);
}

/* 0.5 (1 + tanh u) = 1 / (1 + exp(-2u)): no cancellation in the left tail */
static float tanh_gate(float xc, float *e_out)
{
    float u = TANH_K * (xc + TANH_C * xc * xc * xc);
    float e = expf(-2.0f * u);
    if (e_out)
        *e_out = e;
    return 1.0f / (1.0f + e);
}

static void act_forward_scalar(int kind, const float *x, float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        float v = x[i], g;
        if (kind == ACT_RELU) {
            y[i] = v > 0.0f || v != v ? v : 0.0f;
            continue;
        }
        g = kind == ACT_GELU ? phi_cdf(v) : tanh_gate(clamp_sat(v), NULL);
        y[i] = g == 0.0f ? 0.0f : v * g; /* gelu(-inf) = 0, not -inf * 0 */
    }
}

static void act_backward_scalar(int kind, const float *x, const float *dy,
                                float *dx, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        float v = x[i], d;
        if (kind == ACT_RELU) {
            dx[i] = v <= 0.0f ? 0.0f : dy[i]; /* NaN passes dy, as PyTorch */
            continue;
        }
        float xc = clamp_sat(v);
        if (kind == ACT_GELU) {
            d = phi_cdf(v) + xc * expf(-0.5f * xc * xc) * INV_SQRT_2PI;
        } else {
            float e, s = tanh_gate(xc, &e);
            /* s (1 - s) = s^2 e; written so, it keeps its precision near s = 1 */
            float ss = s == 0.0f ? 0.0f : s * s * e;
            d = s + 2.0f * xc * ss * TANH_K * (1.0f + 3.0f * TANH_C * xc * xc);
        }
        dx[i] = dy[i] * d;
    }
}

#if CLLM_X86
CLLM_AVX2 static inline __m256 clamp_sat256(__m256 x)
{
    /* max/min return their second operand for NaN: NaN stays NaN */
    return _mm256_min_ps(_mm256_set1_ps(SAT), _mm256_max_ps(_mm256_set1_ps(-SAT), x));
}

CLLM_AVX2 static inline __m256 phi_cdf256(__m256 x)
{
    const __m256 sign = _mm256_set1_ps(-0.0f), half = _mm256_set1_ps(0.5f);
    __m256 z = _mm256_mul_ps(_mm256_andnot_ps(sign, x), _mm256_set1_ps(INV_SQRT2));
    __m256 h = _mm256_mul_ps(half, cllm_erfc_pos256(z));
    __m256 neg = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ);
    return _mm256_blendv_ps(_mm256_sub_ps(_mm256_set1_ps(1.0f), h), h, neg);
}

CLLM_AVX2 static inline __m256 tanh_gate256(__m256 xc, __m256 *e_out)
{
    __m256 x2 = _mm256_mul_ps(xc, xc);
    __m256 u = _mm256_mul_ps(_mm256_set1_ps(TANH_K),
                             _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(TANH_C), x2),
                                             xc, xc));
    __m256 e = cllm_exp256(_mm256_mul_ps(_mm256_set1_ps(-2.0f), u));
    *e_out = e;
    return _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

CLLM_AVX2 static inline __m256 act_forward8(int kind, __m256 v)
{
    const __m256 zero = _mm256_setzero_ps();
    __m256 g, e;
    if (kind == ACT_RELU)
        return _mm256_max_ps(zero, v); /* NaN is returned as is */
    g = kind == ACT_GELU ? phi_cdf256(v) : tanh_gate256(clamp_sat256(v), &e);
    return _mm256_blendv_ps(_mm256_mul_ps(v, g), zero,
                            _mm256_cmp_ps(g, zero, _CMP_EQ_OQ));
}

CLLM_AVX2 static inline __m256 act_backward8(int kind, __m256 v, __m256 g)
{
    const __m256 zero = _mm256_setzero_ps();
    if (kind == ACT_RELU)
        return _mm256_andnot_ps(_mm256_cmp_ps(v, zero, _CMP_LE_OQ), g);
    __m256 xc = clamp_sat256(v), d;
    if (kind == ACT_GELU) {
        __m256 pdf = cllm_exp256(_mm256_mul_ps(_mm256_set1_ps(-0.5f), _mm256_mul_ps(xc, xc)));
        d = _mm256_fmadd_ps(_mm256_mul_ps(xc, pdf), _mm256_set1_ps(INV_SQRT_2PI),
                            phi_cdf256(v));
    } else {
        __m256 e, s = tanh_gate256(xc, &e);
        __m256 ss = _mm256_mul_ps(_mm256_mul_ps(s, s), e);
        ss = _mm256_blendv_ps(ss, zero, _mm256_cmp_ps(s, zero, _CMP_EQ_OQ));
        __m256 poly = _mm256_fmadd_ps(_mm256_set1_ps(3.0f * TANH_C), _mm256_mul_ps(xc, xc),
                                      _mm256_set1_ps(1.0f));
        __m256 t = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(2.0f * TANH_K), xc),
                                 _mm256_mul_ps(ss, poly));
        d = _mm256_add_ps(s, t);
    }
    return _mm256_mul_ps(g, d);
}

CLLM_AVX2 static void act_forward_avx2(int kind, const float *x, float *y, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, act_forward8(kind, _mm256_loadu_ps(x + i)));
    if (i < n) {
        __m256i m = cllm_tail_mask(n - i);
        _mm256_maskstore_ps(y + i, m, act_forward8(kind, _mm256_maskload_ps(x + i, m)));
    }
}

CLLM_AVX2 static void act_backward_avx2(int kind, const float *x, const float *dy,
                                        float *dx, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dx + i, act_backward8(kind, _mm256_loadu_ps(x + i),
                                               _mm256_loadu_ps(dy + i)));
    if (i < n) {
        __m256i m = cllm_tail_mask(n - i);
        __m256 r = act_backward8(kind, _mm256_maskload_ps(x + i, m),
                                 _mm256_maskload_ps(dy + i, m));
        _mm256_maskstore_ps(dx + i, m, r);
    }
}

/* The 16-lane twins of act_forward8 / act_backward8 for the two GELUs: lane
 * for lane the same operations (masks for blendv), so the bits of the AVX2
 * path at twice the elements per instruction; erfc and exp are the whole
 * cost (1M elements, forward + backward: 4.0 -> 2.5 ms, 3.2 -> 2.4 tanh). */
CLLM_AVX512 static inline __m512 clamp_sat512(__m512 x)
{
    return _mm512_min_ps(_mm512_set1_ps(SAT), _mm512_max_ps(_mm512_set1_ps(-SAT), x));
}

CLLM_AVX512 static inline __m512 phi_cdf512(__m512 x)
{
    const __m512 half = _mm512_set1_ps(0.5f);
    __m512 z = _mm512_mul_ps(_mm512_abs_ps(x), _mm512_set1_ps(INV_SQRT2));
    __m512 h = _mm512_mul_ps(half, cllm_erfc_pos512(z));
    __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
    return _mm512_mask_blend_ps(neg, _mm512_sub_ps(_mm512_set1_ps(1.0f), h), h);
}

CLLM_AVX512 static inline __m512 tanh_gate512(__m512 xc, __m512 *e_out)
{
    __m512 x2 = _mm512_mul_ps(xc, xc);
    __m512 u = _mm512_mul_ps(_mm512_set1_ps(TANH_K),
                             _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(TANH_C), x2),
                                             xc, xc));
    __m512 e = cllm_exp512(_mm512_mul_ps(_mm512_set1_ps(-2.0f), u));
    *e_out = e;
    return _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

CLLM_AVX512 static inline __m512 act_forward16(int kind, __m512 v)
{
    const __m512 zero = _mm512_setzero_ps();
    __m512 e, g = kind == ACT_GELU ? phi_cdf512(v) : tanh_gate512(clamp_sat512(v), &e);
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(g, zero, _CMP_EQ_OQ),
                                _mm512_mul_ps(v, g), zero);
}

CLLM_AVX512 static inline __m512 act_backward16(int kind, __m512 v, __m512 g)
{
    const __m512 zero = _mm512_setzero_ps();
    __m512 xc = clamp_sat512(v), d;
    if (kind == ACT_GELU) {
        __m512 pdf = cllm_exp512(_mm512_mul_ps(_mm512_set1_ps(-0.5f), _mm512_mul_ps(xc, xc)));
        d = _mm512_fmadd_ps(_mm512_mul_ps(xc, pdf), _mm512_set1_ps(INV_SQRT_2PI),
                            phi_cdf512(v));
    } else {
        __m512 e, s = tanh_gate512(xc, &e);
        __m512 ss = _mm512_mul_ps(_mm512_mul_ps(s, s), e);
        ss = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(s, zero, _CMP_EQ_OQ), ss, zero);
        __m512 poly = _mm512_fmadd_ps(_mm512_set1_ps(3.0f * TANH_C), _mm512_mul_ps(xc, xc),
                                      _mm512_set1_ps(1.0f));
        __m512 t = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(2.0f * TANH_K), xc),
                                 _mm512_mul_ps(ss, poly));
        d = _mm512_add_ps(s, t);
    }
    return _mm512_mul_ps(g, d);
}

/* dy == NULL: the forward into out; else the backward */
CLLM_AVX512 static void act_avx512(int kind, const float *x, const float *dy, float *out,
                                   int64_t n)
{
    int64_t i = 0;
    /* two independent vectors per step: each is a long chain of dependent
     * operations (div, two polynomials); measured on 512K elements, forward
     * 0.76 -> 0.68 ns per element (gelu_tanh 0.63 -> 0.48), backward the
     * same (1.08, 0.69: there the ports are already busy) */
    for (; i + 32 <= n; i += 32) {
        __m512 v0 = _mm512_loadu_ps(x + i), v1 = _mm512_loadu_ps(x + i + 16), r0, r1;
        if (dy) {
            r0 = act_backward16(kind, v0, _mm512_loadu_ps(dy + i));
            r1 = act_backward16(kind, v1, _mm512_loadu_ps(dy + i + 16));
        } else {
            r0 = act_forward16(kind, v0);
            r1 = act_forward16(kind, v1);
        }
        _mm512_storeu_ps(out + i, r0);
        _mm512_storeu_ps(out + i + 16, r1);
    }
    for (; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1u);
        __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        __m512 r = dy ? act_backward16(kind, v, _mm512_maskz_loadu_ps(m, dy + i))
                      : act_forward16(kind, v);
        _mm512_mask_storeu_ps(out + i, m, r);
    }
}
#endif

typedef struct {
    int kind, simd;
    const float *x, *dy;
    float *out;
    int64_t n;
} act_job;

/* x, dy, out: len elements (dy == NULL: the forward); the code path is a
 * function of (kind, simd) alone, so a span's bits do not depend on where
 * it starts or how long it is */
static void act_span(int kind, int simd, const float *x, const float *dy, float *out,
                     int64_t len)
{
#if CLLM_X86
    /* ReLU is a memory-bound select: 16 lanes measured no faster */
    if (simd >= CLLM_SIMD_AVX512 && kind != ACT_RELU) {
        act_avx512(kind, x, dy, out, len);
        return;
    }
    if (simd >= CLLM_SIMD_AVX2) {
        if (dy)
            act_backward_avx2(kind, x, dy, out, len);
        else
            act_forward_avx2(kind, x, out, len);
        return;
    }
#else
    (void)simd;
#endif
    if (dy)
        act_backward_scalar(kind, x, dy, out, len);
    else
        act_forward_scalar(kind, x, out, len);
}

static void act_task(void *arg, int64_t q, int worker)
{
    const act_job *j = arg;
    int64_t i0 = q * ELEM_BLOCK, len = j->n - i0 < ELEM_BLOCK ? j->n - i0 : ELEM_BLOCK;
    (void)worker;
    act_span(j->kind, j->simd, j->x + i0, j->dy ? j->dy + i0 : NULL, j->out + i0, len);
}

void cllm_act_tile(const cllm_act_epilogue *e, float *c, int64_t off, int64_t ldc,
                   int64_t rows, int64_t cols)
{
    int simd = cllm_simd_current;
    for (int64_t r = 0; r < rows; r++, c += ldc, off += ldc) {
        if (e->x) /* backward, in place: each element is loaded before it is stored */
            act_span(e->kind, simd, e->x + off, c, c, cols);
        else
            act_span(e->kind, simd, c, NULL, e->out + off, cols);
    }
}

static int act_run(int kind, const float *x, const float *dy, float *out, int64_t n)
{
    act_job j = {kind, cllm_simd_current, x, dy, out, n};
    int64_t blocks = (n + ELEM_BLOCK - 1) / ELEM_BLOCK;
    cllm_parallel(blocks, cllm_threads_for(n, ELEM_BLOCK), act_task, &j);
    return CLLM_OK;
}

int cllm_activation_forward(int kind, const float *x, float *y, int64_t n)
{
    CLLM_CHECK(x && y && n >= 0 && kind >= ACT_RELU && kind <= ACT_GELU_TANH);
    return act_run(kind, x, NULL, y, n);
}

int cllm_activation_backward(int kind, const float *x, const float *dy, float *dx,
                             int64_t n)
{
    CLLM_CHECK(x && dy && dx && n >= 0 && kind >= ACT_RELU && kind <= ACT_GELU_TANH);
    return act_run(kind, x, dy, dx, n);
}

/* ------------------------------------------------------- ffn block ---- */
/* The feed-forward block in one call: the same kernels the wrapper would
 * call one by one, so the bits are theirs; on the GEMM the activation runs
 * on each tile of h as the tile is finished (cllm_act_tile), not as a pass of
 * its own over h. A decoding step is a few microseconds of arithmetic per
 * kernel, as much as a call from Python. */
int cllm_ffn_forward(const float *x, const float *w_fc, const float *b_fc,
                     const float *w_proj, const float *b_proj, int kind, float *h,
                     float *a, float *y, int64_t n, int64_t c, int64_t f)
{
    CLLM_CHECK(x && w_fc && w_proj && h && a && y && n >= 0 && c >= 1 && f >= 1);
    CLLM_CHECK(n <= INT64_MAX / f && kind >= ACT_RELU && kind <= ACT_GELU_TANH);
    int status;
    if (n <= CLLM_GEMV_MAX_ROWS) {
        status = cllm_linear_forward(x, w_fc, b_fc, h, n, c, f);
        if (status == CLLM_OK)
            status = cllm_activation_forward(kind, h, a, n * f);
    } else {
        cllm_act_epilogue ep = {kind, NULL, a};
        status = cllm_sgemm_act(0, 1, n, f, c, x, c, w_fc, c, h, f, 0, b_fc, &ep);
    }
    if (status == CLLM_OK)
        status = cllm_linear_forward(a, w_proj, b_proj, y, n, f, c);
    return status;
}

/* ------------------------------------------------------------ layer norm ---- */
/* Row statistics in double: the mean of x - x[0] (exact shift for rows like
 * 1e4 + noise, where a float mean would lose digits), then the two-pass
 * variance. */
static void ln_stats_scalar(const float *x, int64_t c, double eps, double *mean,
                            double *rstd)
{
    double shift = x[0], s = 0.0, v = 0.0;
    for (int64_t j = 0; j < c; j++)
        s += (double)x[j] - shift;
    double m = shift + s / (double)c;
    for (int64_t j = 0; j < c; j++) {
        double d = (double)x[j] - m;
        v += d * d;
    }
    *mean = m;
    *rstd = 1.0 / sqrt(v / (double)c + eps);
}

static void ln_row_scalar(const float *x, const float *w, const float *b, double eps,
                          float *y, float *xh, float *rs, int64_t c)
{
    double mean, rstd;
    ln_stats_scalar(x, c, eps, &mean, &rstd);
    for (int64_t j = 0; j < c; j++) {
        float h = (float)(((double)x[j] - mean) * rstd);
        xh[j] = h;
        y[j] = h * w[j] + b[j];
    }
    *rs = (float)rstd;
}

/* acc: add the row's gradient to dx (the residual stream's) instead of
 * writing it; the sum is rounded once, as a separate add would round it */
static void ln_row_backward_scalar(const float *dy, const float *xh, float rstd,
                                   const float *w, float *dx, int64_t c, int acc)
{
    double sg = 0.0, sgx = 0.0;
    for (int64_t j = 0; j < c; j++) {
        double g = (double)dy[j] * (double)w[j];
        sg += g;
        sgx += g * (double)xh[j];
    }
    float mg = (float)(sg / (double)c), mgx = (float)(sgx / (double)c);
    for (int64_t j = 0; j < c; j++) {
        float v = rstd * (dy[j] * w[j] - mg - xh[j] * mgx);
        dx[j] = acc ? dx[j] + v : v;
    }
}

#if CLLM_X86
CLLM_AVX2 static void ln_row_avx2(const float *x, const float *w, const float *b,
                                  double eps, float *y, float *xh, float *rs,
                                  int64_t c)
{
    __m256d shift = _mm256_set1_pd((double)x[0]), s0 = _mm256_setzero_pd(), s1 = s0;
    int64_t j = 0, c8 = c & ~(int64_t)7;
    double tail = 0.0;
    for (; j < c8; j += 8) {
        __m256 v = _mm256_loadu_ps(x + j);
        s0 = _mm256_add_pd(s0, _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), shift));
        s1 = _mm256_add_pd(s1, _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), shift));
    }
    for (; j < c; j++)
        tail += (double)x[j] - (double)x[0];
    double mean = (double)x[0] + (cllm_hsum256d(_mm256_add_pd(s0, s1)) + tail) / (double)c;
    __m256d m = _mm256_set1_pd(mean), v0 = _mm256_setzero_pd(), v1 = v0;
    tail = 0.0;
    for (j = 0; j < c8; j += 8) {
        __m256 v = _mm256_loadu_ps(x + j);
        __m256d d0 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), m);
        __m256d d1 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), m);
        v0 = _mm256_fmadd_pd(d0, d0, v0);
        v1 = _mm256_fmadd_pd(d1, d1, v1);
    }
    for (; j < c; j++) {
        double d = (double)x[j] - mean;
        tail += d * d;
    }
    double var = (cllm_hsum256d(_mm256_add_pd(v0, v1)) + tail) / (double)c;
    double rstd = 1.0 / sqrt(var + eps);
    __m256d r = _mm256_set1_pd(rstd);
    for (j = 0; j < c8; j += 8) {
        __m256 v = _mm256_loadu_ps(x + j);
        __m128 h0 = _mm256_cvtpd_ps(_mm256_mul_pd(
            _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), m), r));
        __m128 h1 = _mm256_cvtpd_ps(_mm256_mul_pd(
            _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), m), r));
        __m256 h = _mm256_set_m128(h1, h0);
        _mm256_storeu_ps(xh + j, h);
        _mm256_storeu_ps(y + j, _mm256_fmadd_ps(h, _mm256_loadu_ps(w + j),
                                                _mm256_loadu_ps(b + j)));
    }
    for (; j < c; j++) {
        float h = (float)(((double)x[j] - mean) * rstd);
        xh[j] = h;
        y[j] = h * w[j] + b[j];
    }
    *rs = (float)rstd;
}

CLLM_AVX2 static void ln_row_backward_avx2(const float *dy, const float *xh,
                                           float rstd, const float *w, float *dx,
                                           int64_t c, int acc)
{
    __m256d a0 = _mm256_setzero_pd(), a1 = a0, b0 = a0, b1 = a0;
    int64_t j = 0, c8 = c & ~(int64_t)7;
    double sg = 0.0, sgx = 0.0;
    for (; j < c8; j += 8) {
        __m256 g = _mm256_mul_ps(_mm256_loadu_ps(dy + j), _mm256_loadu_ps(w + j));
        __m256 h = _mm256_loadu_ps(xh + j);
        __m256d g0 = _mm256_cvtps_pd(_mm256_castps256_ps128(g));
        __m256d g1 = _mm256_cvtps_pd(_mm256_extractf128_ps(g, 1));
        a0 = _mm256_add_pd(a0, g0);
        a1 = _mm256_add_pd(a1, g1);
        b0 = _mm256_fmadd_pd(g0, _mm256_cvtps_pd(_mm256_castps256_ps128(h)), b0);
        b1 = _mm256_fmadd_pd(g1, _mm256_cvtps_pd(_mm256_extractf128_ps(h, 1)), b1);
    }
    for (; j < c; j++) {
        double g = (double)(dy[j] * w[j]);
        sg += g;
        sgx += g * (double)xh[j];
    }
    sg += cllm_hsum256d(_mm256_add_pd(a0, a1));
    sgx += cllm_hsum256d(_mm256_add_pd(b0, b1));
    float mg = (float)(sg / (double)c), mgx = (float)(sgx / (double)c);
    __m256 vmg = _mm256_set1_ps(mg), vmgx = _mm256_set1_ps(mgx), vr = _mm256_set1_ps(rstd);
    for (j = 0; j < c8; j += 8) {
        __m256 g = _mm256_mul_ps(_mm256_loadu_ps(dy + j), _mm256_loadu_ps(w + j));
        __m256 t = _mm256_fnmadd_ps(_mm256_loadu_ps(xh + j), vmgx, _mm256_sub_ps(g, vmg));
        __m256 v = _mm256_mul_ps(vr, t);
        _mm256_storeu_ps(dx + j, acc ? _mm256_add_ps(_mm256_loadu_ps(dx + j), v) : v);
    }
    for (; j < c; j++) {
        float v = rstd * (dy[j] * w[j] - mg - xh[j] * mgx);
        dx[j] = acc ? dx[j] + v : v;
    }
}
#endif

#define LN_ROWS 32

typedef struct {
    const float *x, *weight, *bias, *dy, *rstd_in, *x_hat_in;
    double eps;
    float *y, *x_hat, *rstd;
    int64_t rows, c;
    int simd;
    const float *res; /* forward: add this residual into x_out first */
    float *x_out;
    int accumulate; /* backward: add dx into y instead of writing it */
} ln_job;

static void ln_forward_task(void *arg, int64_t q, int worker)
{
    const ln_job *j = arg;
    int64_t c = j->c, end = (q + 1) * LN_ROWS < j->rows ? (q + 1) * LN_ROWS : j->rows;
    (void)worker;
    for (int64_t r = q * LN_ROWS; r < end; r++) {
        const float *x = j->x + r * c;
        if (j->res) { /* the residual add, while the row is in L1 */
            float *xo = j->x_out + r * c;
            const float *add = j->res + r * c;
            for (int64_t k = 0; k < c; k++)
                xo[k] = x[k] + add[k];
            x = xo;
        }
#if CLLM_X86
        if (j->simd >= CLLM_SIMD_AVX2) {
            ln_row_avx2(x, j->weight, j->bias, j->eps, j->y + r * c, j->x_hat + r * c,
                        j->rstd + r, c);
            continue;
        }
#endif
        ln_row_scalar(x, j->weight, j->bias, j->eps, j->y + r * c, j->x_hat + r * c,
                      j->rstd + r, c);
    }
}

/* backward rows: dy, x_hat, rstd_in and weight in; dx written to y */
static void ln_backward_task(void *arg, int64_t q, int worker)
{
    const ln_job *j = arg;
    int64_t c = j->c, end = (q + 1) * LN_ROWS < j->rows ? (q + 1) * LN_ROWS : j->rows;
    (void)worker;
    for (int64_t r = q * LN_ROWS; r < end; r++) {
#if CLLM_X86
        if (j->simd >= CLLM_SIMD_AVX2) {
            ln_row_backward_avx2(j->dy + r * c, j->x_hat_in + r * c, j->rstd_in[r],
                                 j->weight, j->y + r * c, c, j->accumulate);
            continue;
        }
#endif
        ln_row_backward_scalar(j->dy + r * c, j->x_hat_in + r * c, j->rstd_in[r],
                               j->weight, j->y + r * c, c, j->accumulate);
    }
}

int cllm_layernorm_forward(const float *x, const float *weight, const float *bias,
                           float eps, float *y, float *x_hat, float *rstd,
                           int64_t rows, int64_t c)
{
    CLLM_CHECK(x && weight && bias && y && x_hat && rstd && rows >= 0 && c >= 1);
    CLLM_CHECK(eps > 0.0f);
    ln_job j = {x, weight, bias, NULL, NULL, NULL, eps, y, x_hat, rstd, rows, c,
                cllm_simd_current, NULL, NULL, 0};
    cllm_parallel((rows + LN_ROWS - 1) / LN_ROWS, cllm_threads_for(rows * c, ELEM_BLOCK),
                  ln_forward_task, &j);
    return CLLM_OK;
}

int cllm_residual_layernorm_forward(const float *x, const float *res,
                                    const float *weight, const float *bias, float eps,
                                    float *x_out, float *y, float *x_hat, float *rstd,
                                    int64_t rows, int64_t c)
{
    CLLM_CHECK(x && res && weight && bias && x_out && y && x_hat && rstd);
    CLLM_CHECK(rows >= 0 && c >= 1 && eps > 0.0f);
    ln_job j = {x, weight, bias, NULL, NULL, NULL, eps, y, x_hat, rstd, rows, c,
                cllm_simd_current, res, x_out, 0};
    cllm_parallel((rows + LN_ROWS - 1) / LN_ROWS, cllm_threads_for(rows * c, ELEM_BLOCK),
                  ln_forward_task, &j);
    return CLLM_OK;
}

static int ln_backward(const float *dy, const float *x_hat, const float *rstd,
                       const float *weight, float *dx, float *dweight, float *dbias,
                       int64_t rows, int64_t c, int accumulate)
{
    CLLM_CHECK(dy && x_hat && rstd && weight && dx && rows >= 0 && c >= 1);
    ln_job j = {NULL, weight, NULL, dy, rstd, x_hat, 0.0, dx, NULL, NULL, rows, c,
                cllm_simd_current, NULL, NULL, accumulate};
    cllm_parallel((rows + LN_ROWS - 1) / LN_ROWS, cllm_threads_for(rows * c, ELEM_BLOCK),
                  ln_backward_task, &j);
    int status = dweight ? column_reduce(dy, x_hat, dweight, rows, c) : CLLM_OK;
    if (status == CLLM_OK && dbias)
        status = column_reduce(dy, NULL, dbias, rows, c);
    return status;
}

int cllm_layernorm_backward(const float *dy, const float *x_hat, const float *rstd,
                            const float *weight, float *dx, float *dweight,
                            float *dbias, int64_t rows, int64_t c)
{
    return ln_backward(dy, x_hat, rstd, weight, dx, dweight, dbias, rows, c, 0);
}

int cllm_layernorm_backward_add(const float *dy, const float *x_hat, const float *rstd,
                                const float *weight, float *dx, float *dweight,
                                float *dbias, int64_t rows, int64_t c)
{
    return ln_backward(dy, x_hat, rstd, weight, dx, dweight, dbias, rows, c, 1);
}

/* ------------------------------------------------------------- float64 ---- */
/* The float64 path: the scalar formulas above in double, one thread except
 * for the GEMM. Column sums go row by row in order. */
static void column_sums_f64(const double *x, const double *y, double *out,
                            int64_t rows, int64_t cols)
{
    memset(out, 0, (size_t)cols * sizeof(double));
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < cols; j++)
            out[j] += y ? x[r * cols + j] * y[r * cols + j] : x[r * cols + j];
}

int cllm_linear_forward_f64(const double *x, const double *w, const double *b,
                            double *y, int64_t n, int64_t in_features,
                            int64_t out_features)
{
    CLLM_CHECK(x && w && y && n >= 0 && in_features >= 1 && out_features >= 1);
    return cllm_dgemm(0, 1, n, out_features, in_features, x, in_features, w,
                      in_features, y, out_features, 0, b);
}

int cllm_linear_backward_f64(const double *dy, const double *x, const double *w,
                             double *dx, double *dw, double *db, int64_t n,
                             int64_t in_features, int64_t out_features)
{
    int status = CLLM_OK;
    CLLM_CHECK(dy && x && w && n >= 0 && in_features >= 1 && out_features >= 1);
    if (dx)
        status = cllm_dgemm(0, 0, n, in_features, out_features, dy, out_features, w,
                            in_features, dx, in_features, 0, NULL);
    if (status == CLLM_OK && dw)
        status = cllm_dgemm(1, 0, out_features, in_features, n, dy, out_features, x,
                            in_features, dw, in_features, 0, NULL);
    if (status == CLLM_OK && db)
        column_sums_f64(dy, NULL, db, n, out_features);
    return status;
}

static double clamp_sat_f64(double x) { return x > SAT ? SAT : (x < -SAT ? -SAT : x); }

int cllm_activation_forward_f64(int kind, const double *x, double *y, int64_t n)
{
    CLLM_CHECK(x && y && n >= 0 && kind >= ACT_RELU && kind <= ACT_GELU_TANH);
    for (int64_t i = 0; i < n; i++) {
        double v = x[i], g;
        if (kind == ACT_RELU) {
            y[i] = v > 0.0 || v != v ? v : 0.0;
            continue;
        }
        if (kind == ACT_GELU) {
            g = 0.5 * erfc(-v * 0.70710678118654752440);
        } else {
            double xc = clamp_sat_f64(v);
            g = 1.0 / (1.0 + exp(-2.0 * 0.79788456080286535588 * (xc + 0.044715 * xc * xc * xc)));
        }
        y[i] = g == 0.0 ? 0.0 : v * g;
    }
    return CLLM_OK;
}

int cllm_activation_backward_f64(int kind, const double *x, const double *dy,
                                 double *dx, int64_t n)
{
    CLLM_CHECK(x && dy && dx && n >= 0 && kind >= ACT_RELU && kind <= ACT_GELU_TANH);
    const double k = 0.79788456080286535588, cub = 0.044715;
    for (int64_t i = 0; i < n; i++) {
        double v = x[i], xc = clamp_sat_f64(v), d;
        if (kind == ACT_RELU) {
            dx[i] = v <= 0.0 ? 0.0 : dy[i];
            continue;
        }
        if (kind == ACT_GELU) {
            d = 0.5 * erfc(-v * 0.70710678118654752440)
                + xc * exp(-0.5 * xc * xc) * 0.39894228040143267794;
        } else {
            double e = exp(-2.0 * k * (xc + cub * xc * xc * xc));
            double s = 1.0 / (1.0 + e), ss = s == 0.0 ? 0.0 : s * s * e;
            d = s + 2.0 * xc * ss * k * (1.0 + 3.0 * cub * xc * xc);
        }
        dx[i] = dy[i] * d;
    }
    return CLLM_OK;
}

int cllm_layernorm_forward_f64(const double *x, const double *weight,
                               const double *bias, double eps, double *y,
                               double *x_hat, double *rstd, int64_t rows, int64_t c)
{
    CLLM_CHECK(x && weight && bias && y && x_hat && rstd && rows >= 0 && c >= 1);
    CLLM_CHECK(eps > 0.0);
    for (int64_t r = 0; r < rows; r++) {
        const double *xr = x + r * c;
        /* work on d = x - x[0]: exact for rows such as 1e4 + noise, where
         * x - mean would round the mean's large part into the result */
        double shift = xr[0], s = 0.0, var = 0.0;
        for (int64_t j = 0; j < c; j++)
            s += xr[j] - shift;
        double mean_d = s / (double)c;
        for (int64_t j = 0; j < c; j++)
            var += ((xr[j] - shift) - mean_d) * ((xr[j] - shift) - mean_d);
        double rs = 1.0 / sqrt(var / (double)c + eps);
        for (int64_t j = 0; j < c; j++) {
            double h = ((xr[j] - shift) - mean_d) * rs;
            x_hat[r * c + j] = h;
            y[r * c + j] = h * weight[j] + bias[j];
        }
        rstd[r] = rs;
    }
    return CLLM_OK;
}

int cllm_residual_layernorm_forward_f64(const double *x, const double *res,
                                        const double *weight, const double *bias,
                                        double eps, double *x_out, double *y,
                                        double *x_hat, double *rstd, int64_t rows,
                                        int64_t c)
{
    CLLM_CHECK(x && res && weight && bias && x_out && y && x_hat && rstd);
    CLLM_CHECK(rows >= 0 && c >= 1 && eps > 0.0);
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t k = 0; k < c; k++)
            x_out[r * c + k] = x[r * c + k] + res[r * c + k];
        cllm_layernorm_forward_f64(x_out + r * c, weight, bias, eps, y + r * c,
                                   x_hat + r * c, rstd + r, 1, c);
    }
    return CLLM_OK;
}

static int ln_backward_f64(const double *dy, const double *x_hat, const double *rstd,
                           const double *weight, double *dx, double *dweight,
                           double *dbias, int64_t rows, int64_t c, int acc)
{
    CLLM_CHECK(dy && x_hat && rstd && weight && dx && rows >= 0 && c >= 1);
    for (int64_t r = 0; r < rows; r++) {
        const double *g = dy + r * c, *h = x_hat + r * c;
        double sg = 0.0, sgx = 0.0;
        for (int64_t j = 0; j < c; j++) {
            sg += g[j] * weight[j];
            sgx += g[j] * weight[j] * h[j];
        }
        double mg = sg / (double)c, mgx = sgx / (double)c;
        for (int64_t j = 0; j < c; j++) {
            double v = rstd[r] * (g[j] * weight[j] - mg - h[j] * mgx);
            dx[r * c + j] = acc ? dx[r * c + j] + v : v;
        }
    }
    if (dweight)
        column_sums_f64(dy, x_hat, dweight, rows, c);
    if (dbias)
        column_sums_f64(dy, NULL, dbias, rows, c);
    return CLLM_OK;
}

int cllm_layernorm_backward_f64(const double *dy, const double *x_hat,
                                const double *rstd, const double *weight, double *dx,
                                double *dweight, double *dbias, int64_t rows,
                                int64_t c)
{
    return ln_backward_f64(dy, x_hat, rstd, weight, dx, dweight, dbias, rows, c, 0);
}

int cllm_layernorm_backward_add_f64(const double *dy, const double *x_hat,
                                    const double *rstd, const double *weight,
                                    double *dx, double *dweight, double *dbias,
                                    int64_t rows, int64_t c)
{
    return ln_backward_f64(dy, x_hat, rstd, weight, dx, dweight, dbias, rows, c, 1);
}
