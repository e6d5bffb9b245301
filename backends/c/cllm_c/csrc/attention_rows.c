/* Attention's row kernels, each with a scalar twin: the masked softmax of a
 * row of scores, the softmax gradient of a row, and the scale of rows by a
 * constant (attention.c's forward and backward, attention_decode.c). */
#include "attention_parts.h"
#include "simd_math.h"

#include <math.h>
#include <string.h>

/* ------------------------------------------------------- masked softmax ---- */
/* s[0, tk) holds raw scores; keys j >= limit or with mask[j] == 0 are hidden */
void cllm_att_row_scalar(float *s, int64_t tk, int64_t limit, const uint8_t *mask,
                         float scale)
{
    float m = -INFINITY;
    for (int64_t j = 0; j < tk; j++) {
        int vis = j < limit && (!mask || mask[j]);
        s[j] = vis ? s[j] * scale : -INFINITY;
        m = s[j] > m ? s[j] : m;
    }
    if (m == -INFINITY) { /* no visible key */
        memset(s, 0, (size_t)tk * sizeof(float));
        return;
    }
    double sum = 0.0;
    for (int64_t j = 0; j < tk; j++) {
        s[j] = s[j] == -INFINITY ? 0.0f : expf(s[j] - m);
        sum += s[j];
    }
    float inv = (float)(1.0 / sum);
    for (int64_t j = 0; j < tk; j++)
        s[j] *= inv;
}

#if CLLM_X86
/* adds the 8 floats of e to the double sums of lanes 0-3 (a0) and 4-7 (a1) */
CLLM_AVX2 static inline void add_pd8(__m256 e, __m256d *a0, __m256d *a1)
{
    *a0 = _mm256_add_pd(*a0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
    *a1 = _mm256_add_pd(*a1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
}

/* s[j] = exp(s[j] - m) for j in [0, end), 16 at a time while 16 fit: the
 * 8-lane loop's arithmetic lane for lane (cllm_exp512 is cllm_exp256 on
 * twice the lanes) and its sums in its order, so the same bits. Returns
 * where it stopped. */
CLLM_AVX512 static int64_t att_exp_avx512(float *s, int64_t end, float m, __m256d *a0,
                                          __m256d *a1)
{
    __m512 vm = _mm512_set1_ps(m);
    int64_t j = 0;
    for (; j + 16 <= end; j += 16) {
        __m512 e = cllm_exp512(_mm512_sub_ps(_mm512_loadu_ps(s + j), vm));
        _mm512_storeu_ps(s + j, e);
        add_pd8(_mm512_castps512_ps256(e), a0, a1);
        add_pd8(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1)), a0, a1);
    }
    return j;
}

/* The vector loops stop at `vend`, the first whole vector past the last
 * visible key: the keys after it (a causal row's second half, on average)
 * are hidden, and their exp would be an exact 0 whose double adds change
 * no sum, so they are written 0 at once. Same bits as running the loops to
 * the end of the row. */
CLLM_AVX2 void cllm_att_row_avx2(float *s, int64_t tk, int64_t limit,
                                 const uint8_t *mask, float scale)
{
    float m = -INFINITY;
    int64_t tk8 = tk - tk % 8, vend = tk8;
    if (mask) { /* rare: padding masks go through the scalar hiding pass */
        for (int64_t j = 0; j < tk; j++)
            if (j >= limit || !mask[j])
                s[j] = -INFINITY;
            else
                s[j] *= scale;
    } else {
        int64_t j = 0, lim8 = (limit + 7) / 8 * 8;
        __m256 vs = _mm256_set1_ps(scale);
        vend = lim8 < tk8 ? lim8 : tk8;
        for (; j + 8 <= limit; j += 8)
            _mm256_storeu_ps(s + j, _mm256_mul_ps(_mm256_loadu_ps(s + j), vs));
        for (; j < limit; j++)
            s[j] *= scale;
        for (j = limit; j < tk; j++)
            s[j] = j < vend || j >= tk8 ? -INFINITY : 0.0f;
    }
    __m256 m8 = _mm256_set1_ps(-INFINITY);
    int64_t j = 0;
    for (; j < vend; j += 8)
        m8 = _mm256_max_ps(m8, _mm256_loadu_ps(s + j));
    m = cllm_hmax256(m8);
    for (j = tk8; j < tk; j++)
        m = s[j] > m ? s[j] : m;
    if (m == -INFINITY) {
        memset(s, 0, (size_t)tk * sizeof(float));
        return;
    }
    __m256 vm = _mm256_set1_ps(m);
    __m256d a0 = _mm256_setzero_pd(), a1 = a0;
    double tail = 0.0;
    j = cllm_simd_current >= CLLM_SIMD_AVX512 ? att_exp_avx512(s, vend, m, &a0, &a1) : 0;
    for (; j < vend; j += 8) {
        __m256 e = cllm_exp256(_mm256_sub_ps(_mm256_loadu_ps(s + j), vm));
        _mm256_storeu_ps(s + j, e);
        add_pd8(e, &a0, &a1);
    }
    for (j = tk8; j < tk; j++) {
        s[j] = s[j] == -INFINITY ? 0.0f : expf(s[j] - m);
        tail += s[j];
    }
    float inv = (float)(1.0 / (cllm_hsum256d(_mm256_add_pd(a0, a1)) + tail));
    __m256 vi = _mm256_set1_ps(inv);
    for (j = 0; j < vend; j += 8)
        _mm256_storeu_ps(s + j, _mm256_mul_ps(_mm256_loadu_ps(s + j), vi));
    for (j = tk8; j < tk; j++)
        s[j] *= inv;
}
#endif

/* ds = att * (da - sum_j att * da), in place over da. The sum is in double
 * as four running sums (j mod 4), added as (s0 + s1) + (s2 + s3): a quarter
 * of the dependent additions of one running sum, which made this loop a
 * tenth of the attention backward's time. Without contraction (C99 mode)
 * the scalar and AVX2 builds of it give the same bits. */
static inline __attribute__((always_inline)) void
softmax_grad_row(const float *att, float *da, int64_t tk)
{
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    int64_t j = 0;
    for (; j + 4 <= tk; j += 4) {
        s0 += (double)att[j] * (double)da[j];
        s1 += (double)att[j + 1] * (double)da[j + 1];
        s2 += (double)att[j + 2] * (double)da[j + 2];
        s3 += (double)att[j + 3] * (double)da[j + 3];
    }
    for (; j < tk; j++)
        s0 += (double)att[j] * (double)da[j];
    float sf = (float)((s0 + s1) + (s2 + s3));
    for (int64_t j = 0; j < tk; j++)
        da[j] = att[j] * (da[j] - sf);
}

void cllm_att_grad_row_scalar(const float *a, float *d, int64_t n)
{
    softmax_grad_row(a, d, n);
}

#if CLLM_X86
/* The four sums (j mod 4) as the lanes of one double vector: lane i adds
 * att[j + i] * da[j + i] in the scalar twin's order, and a float product is
 * exact in double, so the same bits. */
CLLM_AVX2 void cllm_att_grad_row_avx2(const float *a, float *d, int64_t n)
{
    __m256d acc = _mm256_setzero_pd();
    int64_t j = 0;
    for (; j + 4 <= n; j += 4)
        acc = _mm256_add_pd(acc, _mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(a + j)),
                                               _mm256_cvtps_pd(_mm_loadu_ps(d + j))));
    double s[4];
    _mm256_storeu_pd(s, acc);
    for (; j < n; j++)
        s[0] += (double)a[j] * (double)d[j];
    __m256 sf = _mm256_set1_ps((float)((s[0] + s[1]) + (s[2] + s[3])));
    for (j = 0; j + 8 <= n; j += 8)
        _mm256_storeu_ps(d + j, _mm256_mul_ps(_mm256_loadu_ps(a + j),
                                              _mm256_sub_ps(_mm256_loadu_ps(d + j), sf)));
    float sc = _mm256_cvtss_f32(sf);
    for (; j < n; j++)
        d[j] = a[j] * (d[j] - sc);
}
#endif

/* rows x cols at row stride ld, times s: one multiply per element, so every
 * SIMD level gives the same bits */
static void scale_rows_scalar(float *x, int64_t rows, int64_t cols, int64_t ld, float s)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < cols; i++)
            x[r * ld + i] *= s;
}

#if CLLM_X86
CLLM_AVX512 static void scale_rows_avx512(float *x, int64_t rows, int64_t cols, int64_t ld,
                                          float s)
{
    __m512 vs = _mm512_set1_ps(s);
    int64_t whole = cols - cols % 16;
    __mmask16 tail = (__mmask16)((1u << (cols % 16)) - 1u);
    for (int64_t r = 0; r < rows; r++) {
        float *row = x + r * ld;
        for (int64_t i = 0; i < whole; i += 16)
            _mm512_storeu_ps(row + i, _mm512_mul_ps(_mm512_loadu_ps(row + i), vs));
        if (tail)
            _mm512_mask_storeu_ps(row + whole, tail,
                                  _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, row + whole), vs));
    }
}
#endif

void cllm_att_scale_rows(float *x, int64_t rows, int64_t cols, int64_t ld, float s,
                         int simd)
{
#if CLLM_X86
    if (simd >= CLLM_SIMD_AVX512) {
        scale_rows_avx512(x, rows, cols, ld, s);
        return;
    }
#endif
    (void)simd;
    scale_rows_scalar(x, rows, cols, ld, s);
}
