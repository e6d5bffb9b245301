/* Packing for the GEMM (gemm.c): blocks of A into MR-tall micro-panels and
 * of B into NR-wide ones, in the layouts the micro-kernels read
 * (gemm_ukernels.c), with zero-padded tails. */
#include "gemm_parts.h"
#include "simd_math.h"

#include <string.h>

#if CLLM_X86
/* ------------------------------------------------ AVX-512 packing ---- */
/* The packed layouts the 12 x 32 kernel reads: A as 12-float columns
 * (a[p * 12 + i]), B as 32-float rows (b[p * 32 + j]). Operands stored the
 * other way round are transposed 16 x 16 in registers. Edges use masked
 * loads, which touch no byte outside the lanes they keep, and write zeros. */
static inline __mmask16 lanes(int64_t n) /* the first n (0..16) lanes */
{
    return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1u);
}

#ifndef PACK_AHEAD
#define PACK_AHEAD 128 /* floats */
#endif

/* 16 rows of `rows` (<= 16), k in [p, p + w) of [0, kc): the missing rows
 * are zero */
CLLM_AVX512 static inline void load16(__m512 r[16], const float *s, int64_t ld,
                                      int64_t rows, int64_t p, int64_t w, int64_t kc)
{
    __mmask16 m = lanes(w);
    for (int64_t i = 0; i < 16; i++) {
        if (i >= rows) {
            r[i] = _mm512_setzero_ps();
            continue;
        }
        /* 16 row streams at once: fetch each a few lines ahead */
        if (p + PACK_AHEAD < kc)
            _mm_prefetch((const char *)(s + i * ld + p + PACK_AHEAD), _MM_HINT_T0);
        r[i] = _mm512_maskz_loadu_ps(m, s + i * ld + p);
    }
}

/* A stored (K, M), rows [0, mc) of op(A) from s: each k is one contiguous
 * run of mc floats, read once, in order, and dealt out to the micro-panels
 * (a micro-panel at a time would read 48 bytes per row of A, one page apart
 * when M is large, which defeats the hardware prefetcher and the TLB) */
CLLM_AVX512 static void pack_a12_t(const float *s, int64_t lda, int64_t mc, int64_t kc,
                                   float *d)
{
    /* Four k at a time, a panel's 4 x 12 floats are 48 contiguous ones: three
     * whole zmm stores (on cache lines when kc % 4 == 0) put together by
     * two-source permutes, instead of four 48-byte masked stores of which
     * half split a cache line. This pack took 13% of a dW product's samples;
     * the change made those products 3-6% faster on one thread. */
    const __m512i i0 = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 16, 17, 18, 19);
    const __m512i i1 = _mm512_setr_epi32(4, 5, 6, 7, 8, 9, 10, 11, 16, 17, 18, 19, 20, 21, 22, 23);
    const __m512i i2 = _mm512_setr_epi32(8, 9, 10, 11, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27);
    int64_t p = 0;
    for (; p + 4 <= kc; p += 4) {
        const float *r = s + p * lda;
        for (int64_t ip = 0; ip < mc; ip += 12) {
            __mmask16 m = lanes(mc - ip);
            __m512 v0 = _mm512_maskz_loadu_ps(m, r + ip);
            __m512 v1 = _mm512_maskz_loadu_ps(m, r + lda + ip);
            __m512 v2 = _mm512_maskz_loadu_ps(m, r + 2 * lda + ip);
            __m512 v3 = _mm512_maskz_loadu_ps(m, r + 3 * lda + ip);
            float *o = d + ip * kc + p * 12;
            _mm512_storeu_ps(o, _mm512_permutex2var_ps(v0, i0, v1));
            _mm512_storeu_ps(o + 16, _mm512_permutex2var_ps(v1, i1, v2));
            _mm512_storeu_ps(o + 32, _mm512_permutex2var_ps(v2, i2, v3));
        }
    }
    for (; p < kc; p++)
        for (int64_t ip = 0; ip < mc; ip += 12) {
            __m512 v = _mm512_maskz_loadu_ps(lanes(mc - ip), s + p * lda + ip);
            _mm512_mask_storeu_ps(d + ip * kc + p * 12, 0x0FFF, v);
        }
}

/* one A micro-panel, A stored (M, K): `rows` (<= 12) rows from s, k in [0, kc) */
CLLM_AVX512 static void pack_a12(const float *s, int64_t lda, int64_t rows, int64_t kc,
                                 float *d)
{
    for (int64_t p = 0; p < kc; p += 16) {
        int64_t w = kc - p < 16 ? kc - p : 16;
        __m512 r[16];
        load16(r, s, lda, rows, p, w, kc);
        cllm_transpose16(r);
        for (int64_t t = 0; t < w; t++)
            _mm512_mask_storeu_ps(d + (p + t) * 12, 0x0FFF, r[t]);
    }
}

/* B stored (K, N), columns [0, nc) of op(B) from s into ceil(nc / 32)
 * micro-panels: each k is one contiguous run, as in pack_a12_t */
CLLM_AVX512 static void pack_b32_n(const float *s, int64_t ldb, int64_t nc, int64_t kc,
                                   float *d)
{
    for (int64_t p = 0; p < kc; p++)
        for (int64_t jp = 0; jp < nc; jp += 32) {
            const float *r = s + p * ldb + jp;
            float *o = d + jp * kc + p * 32;
            int64_t cols = nc - jp;
            _mm512_store_ps(o, _mm512_maskz_loadu_ps(lanes(cols), r));
            _mm512_store_ps(o + 16, _mm512_maskz_loadu_ps(lanes(cols > 16 ? cols - 16 : 0),
                                                          r + 16));
        }
}

/* one B micro-panel, B stored (N, K): `cols` (<= 32) columns from s */
CLLM_AVX512 static void pack_b32(const float *s, int64_t ldb, int64_t cols, int64_t kc,
                                 float *d)
{
    for (int64_t h = 0; h < 32; h += 16) {
        int64_t rows = cols - h < 0 ? 0 : cols - h;
        for (int64_t p = 0; p < kc; p += 16) {
            int64_t w = kc - p < 16 ? kc - p : 16;
            __m512 r[16];
            load16(r, s + h * ldb, ldb, rows, p, w, kc);
            cllm_transpose16(r);
            for (int64_t t = 0; t < w; t++)
                _mm512_store_ps(d + (p + t) * 32 + h, r[t]);
        }
    }
}
#endif

/* A rows [i0, i0 + mc) x cols [p0, p0 + kc) into MR-tall micro-panels. */
void cllm_gemm_pack_a(const gemm_t *g, int mr, int64_t i0, int64_t mc, int64_t p0,
                      int64_t kc, float *dst)
{
#if CLLM_X86
    if (mr == 12 && g->trans_a) { /* the AVX-512 kernel's layout */
        pack_a12_t(g->a + p0 * g->lda + i0, g->lda, mc, kc, dst);
        return;
    }
#endif
    for (int64_t ip = 0; ip < mc; ip += mr) {
        int64_t rows = mc - ip < mr ? mc - ip : mr;
        float *d = dst + ip * kc;
#if CLLM_X86
        if (mr == 12) {
            pack_a12(g->a + (i0 + ip) * g->lda + p0, g->lda, rows, kc, d);
            continue;
        }
#endif
        if (g->trans_a && rows == mr) { /* whole panel: row copies */
            for (int64_t p = 0; p < kc; p++)
                memcpy(d + p * mr, g->a + (p0 + p) * g->lda + i0 + ip,
                       (size_t)mr * sizeof(float));
        } else if (g->trans_a) {
            for (int64_t p = 0; p < kc; p++) {
                const float *s = g->a + (p0 + p) * g->lda + i0 + ip;
                int64_t i = 0;
                for (; i < rows; i++)
                    d[p * mr + i] = s[i];
                for (; i < mr; i++)
                    d[p * mr + i] = 0.0f;
            }
        } else {
            /* k outer, rows inner: the stores are sequential and each of the
             * MR source rows is read as its own sequential stream */
            const float *src[MR_MAX];
            for (int64_t i = 0; i < mr; i++)
                src[i] = g->a + (i0 + ip + (i < rows ? i : 0)) * g->lda + p0;
            for (int64_t p = 0; p < kc; p++) {
                float *dp = d + p * mr;
                for (int64_t i = 0; i < mr; i++)
                    dp[i] = i < rows ? src[i][p] : 0.0f;
            }
        }
    }
}

/* One NR-wide micro-panel of B: rows [p0, p0 + kc), cols [j0, j0 + nr). */
static void pack_b_panel(const gemm_t *g, int nr, int64_t j0, int64_t p0,
                         int64_t kc, float *d)
{
    int64_t cols = g->n - j0 < nr ? g->n - j0 : nr;
#if CLLM_X86
    if (nr == 32) { /* the AVX-512 kernel's layout */
        if (g->trans_b)
            pack_b32(g->b + j0 * g->ldb + p0, g->ldb, cols, kc, d);
        else
            pack_b32_n(g->b + p0 * g->ldb + j0, g->ldb, cols, kc, d);
        return;
    }
#endif
    if (g->trans_b) {
        /* k outer, columns inner: sequential stores, one read stream per
         * source row of the stored (N, K) matrix */
        const float *src[NR_MAX];
        for (int64_t j = 0; j < nr; j++)
            src[j] = g->b + (j0 + (j < cols ? j : 0)) * g->ldb + p0;
        for (int64_t p = 0; p < kc; p++) {
            float *dp = d + p * nr;
            for (int64_t j = 0; j < nr; j++)
                dp[j] = j < cols ? src[j][p] : 0.0f;
        }
    } else if (cols == nr) { /* whole panel: row copies */
        for (int64_t p = 0; p < kc; p++)
            memcpy(d + p * nr, g->b + (p0 + p) * g->ldb + j0, (size_t)nr * sizeof(float));
    } else {
        for (int64_t p = 0; p < kc; p++) {
            const float *s = g->b + (p0 + p) * g->ldb + j0;
            int64_t j = 0;
            for (; j < cols; j++)
                d[p * nr + j] = s[j];
            for (; j < nr; j++)
                d[p * nr + j] = 0.0f;
        }
    }
}

/* `panels` micro-panels of B from column j0 on, panel q at dst + q * kc * nr */
void cllm_gemm_pack_b(const gemm_t *g, int nr, int64_t j0, int64_t panels, int64_t p0,
                      int64_t kc, float *dst)
{
#if CLLM_X86
    if (nr == 32 && !g->trans_b) { /* all panels in one pass over the rows */
        int64_t nc = g->n - j0 < panels * nr ? g->n - j0 : panels * nr;
        pack_b32_n(g->b + p0 * g->ldb + j0, g->ldb, nc, kc, dst);
        return;
    }
#endif
    for (int64_t q = 0; q < panels; q++)
        pack_b_panel(g, nr, j0 + q * nr, p0, kc, dst + q * kc * nr);
}
