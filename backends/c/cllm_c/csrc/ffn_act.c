/* The feed-forward block's activations, relu / gelu / gelu_tanh (formulas
 * in cllm_spec/ffn.py): forward and backward, a scalar twin next to the AVX2
 * and AVX-512 paths, and cllm_act_tile, the GEMM's epilogue (gemm.h), which
 * runs the same per-element code on a tile of C while it is in L1. */
#include "ffn_parts.h"
#include "gemm.h"
#include "simd_math.h"

#include <math.h>

static const float INV_SQRT2 = 0.70710678118654752f;
static const float INV_SQRT_2PI = 0.39894228040143268f;
static const float TANH_K = 0.79788456080286536f; /* sqrt(2 / pi) */
static const float TANH_C = 0.044715f;
/* past |x| = 100 every GELU form has saturated (Phi and the sigmoid are 0
 * or 1 exactly in float32); clamping there keeps x^2, x^3 finite */
static const float SAT = 100.0f;

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


/* ---------------------------------------------------------------- float64 ---- */
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
