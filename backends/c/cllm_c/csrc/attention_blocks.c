/* attention_blocks: the products of one (batch, head) pair of causal
 * attention at AVX-512, in blocks cut to attention's shapes (HS and Tk
 * multiples of 16, as in training, and Tk within one K slice of the GEMM:
 * 384 by default).
 *
 * The blocked GEMM (gemm.c) runs these products in 12 x 32 tiles with both
 * operands packed. At T = 64 and HS = 32 that is a poor fit: 64 rows are
 * five tiles and a third, the causal mask can drop only whole 12 x 32
 * tiles, and packing and edge tiles took a third of the time. Here a block
 * is 8 rows by 16 or 32 columns, A is read where it is stored (its rows, or
 * the columns of a row-major P for P^T), B's rows are read where they are
 * stored, and only K (or V) is transposed, once per pair, for the two
 * products over keys.
 *
 * Every output element is the GEMM's chain of multiply-adds: sum_p
 * a(i, p) b(p, j), one fma per p, p ascending, from a +0 accumulator. A
 * block starts (ends) its chain where the first (last) of its rows needs
 * it; the terms this adds for its other rows are 0 * x for a finite x,
 * which leave +0 as +0 and any other sum as it is (the caller checks x is
 * finite, as for the GEMM's causal products, gemm.h). So the results are
 * the GEMM's bits; tests/test_c_attention_blocks.py holds them to it. */
#include "attention_blocks.h"
#include "gemm.h"
#include "simd_math.h"

#if CLLM_X86
#define RB 8 /* rows per block: 64 and 128 are whole blocks */
/* gcc would otherwise add a copy of each block's loop for a unit stride,
 * which keeps the accumulators on the stack */
#define BLOCK_FN CLLM_AVX512 __attribute__((optimize("no-version-loops-for-strides"))) static

int cllm_att_blocks_fit(int64_t tq, int64_t tk, int64_t hs)
{
    /* every product's K (HS, Tq or Tk) one GEMM slice, or the bits differ */
    return tq >= 1 && tq <= tk && tk % 16 == 0 && hs >= 16 && hs % 16 == 0
           && cllm_gemm_one_slice(tk) && cllm_gemm_one_slice(hs);
}

/* c(r, 16 NV) = [scale *] sum_{p0 <= p < p1} a(r, p) b(p, :) for r < rows,
 * a(r, p) = a[r * ar + p * as], b(p, :) = b + p * ldb. Rows past `rows`
 * repeat the last row's work and are not stored, so no read leaves A. The
 * RB rows are spelled out: with an array of accumulators gcc kept them on
 * the stack. */
#define EACH_ROW(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#define ROW_INIT(r)                                                        \
    const float *a##r = a + (r < rows ? r : rows - 1) * ar;                \
    __m512 c##r##0 = _mm512_setzero_ps(), c##r##1 = c##r##0;
#define ROW_STEP(r)                                                        \
    x = _mm512_set1_ps(a##r[p * as]);                                      \
    c##r##0 = _mm512_fmadd_ps(x, b0, c##r##0);                             \
    if (nv > 1)                                                            \
        c##r##1 = _mm512_fmadd_ps(x, b1, c##r##1);
#define ROW_STORE(r)                                                       \
    if (r < rows) {                                                        \
        _mm512_storeu_ps(c + r * ldc, scale ? _mm512_mul_ps(c##r##0, s) : c##r##0); \
        if (nv > 1)                                                        \
            _mm512_storeu_ps(c + r * ldc + 16,                             \
                             scale ? _mm512_mul_ps(c##r##1, s) : c##r##1); \
    }

CLLM_AVX512 static inline __attribute__((always_inline)) void
block(const int nv, int64_t rows, int64_t p0, int64_t p1, const float *a, const int64_t ar,
      const int64_t as, const float *b, int64_t ldb, float *c, int64_t ldc,
      const float *scale)
{
    EACH_ROW(ROW_INIT)
    for (int64_t p = p0; p < p1; p++) {
        const float *bp = b + p * ldb;
        __m512 x, b0 = _mm512_loadu_ps(bp), b1 = nv > 1 ? _mm512_loadu_ps(bp + 16) : b0;
        EACH_ROW(ROW_STEP)
    }
    __m512 s = _mm512_set1_ps(scale ? *scale : 1.0f);
    EACH_ROW(ROW_STORE)
}
#undef EACH_ROW
#undef ROW_INIT
#undef ROW_STEP
#undef ROW_STORE

/* A by rows (a(r, p) = a[r * lda + p]) and by columns (a(r, p) =
 * a[p * lda + r]), each with 32 or 16 columns of C */
BLOCK_FN void rows32(int64_t rows, int64_t p0, int64_t p1, const float *a, int64_t lda,
                     const float *b, int64_t ldb, float *c, int64_t ldc,
                     const float *scale)
{
    if (rows == RB) /* every block but a last short one: no clamping */
        block(2, RB, p0, p1, a, lda, 1, b, ldb, c, ldc, scale);
    else
        block(2, rows, p0, p1, a, lda, 1, b, ldb, c, ldc, scale);
}

BLOCK_FN void rows16(int64_t rows, int64_t p0, int64_t p1, const float *a, int64_t lda,
                     const float *b, int64_t ldb, float *c, int64_t ldc,
                     const float *scale)
{
    if (rows == RB) /* every block but a last short one: no clamping */
        block(1, RB, p0, p1, a, lda, 1, b, ldb, c, ldc, scale);
    else
        block(1, rows, p0, p1, a, lda, 1, b, ldb, c, ldc, scale);
}

BLOCK_FN void cols32(int64_t p0, int64_t p1, const float *a, int64_t lda,
                     const float *b, int64_t ldb, float *c, int64_t ldc,
                     const float *scale)
{
    block(2, RB, p0, p1, a, 1, lda, b, ldb, c, ldc, scale);
}

BLOCK_FN void cols16(int64_t p0, int64_t p1, const float *a, int64_t lda,
                     const float *b, int64_t ldb, float *c, int64_t ldc,
                     const float *scale)
{
    block(1, RB, p0, p1, a, 1, lda, b, ldb, c, ldc, scale);
}

/* the same over `cols` columns (a multiple of 16 at least as wide, which b
 * and c hold): blocks of 32 columns and, where 16 or fewer are left, 16 */
CLLM_AVX512 static void rows_wide(int64_t rows, int64_t cols, int64_t p0, int64_t p1,
                                  const float *a, int64_t lda, const float *b, int64_t ldb,
                                  float *c, int64_t ldc, const float *scale)
{
    for (int64_t j = 0; j < cols; j += 32) {
        if (cols - j > 16)
            rows32(rows, p0, p1, a, lda, b + j, ldb, c + j, ldc, scale);
        else
            rows16(rows, p0, p1, a, lda, b + j, ldb, c + j, ldc, scale);
    }
}

CLLM_AVX512 static void cols_wide(int64_t cols, int64_t p0, int64_t p1, const float *a,
                                  int64_t lda, const float *b, int64_t ldb, float *c,
                                  int64_t ldc, const float *scale)
{
    for (int64_t j = 0; j < cols; j += 32) {
        if (cols - j > 16)
            cols32(p0, p1, a, lda, b + j, ldb, c + j, ldc, scale);
        else
            cols16(p0, p1, a, lda, b + j, ldb, c + j, ldc, scale);
    }
}

/* yt (HS, Tk) = y^T, y (Tk, HS) at row stride ldy, in 16 x 16 blocks */
CLLM_AVX512 static void transpose_keys(const float *y, int64_t ldy, int64_t tk, int64_t hs,
                                       float *yt)
{
    __m512 r[16];
    for (int64_t j = 0; j < tk; j += 16)
        for (int64_t d = 0; d < hs; d += 16) {
            for (int i = 0; i < 16; i++)
                r[i] = _mm512_loadu_ps(y + (j + i) * ldy + d);
            cllm_transpose16(r);
            for (int i = 0; i < 16; i++)
                _mm512_storeu_ps(yt + (d + i) * tk + j, r[i]);
        }
}

CLLM_AVX512 void cllm_att_over_keys(const float *x, int64_t ldx, int64_t tq, const float *y,
                                    int64_t ldy, int64_t tk, int64_t hs, int64_t shift,
                                    float *s, float *work)
{
    transpose_keys(y, ldy, tk, hs, work);
    for (int64_t i = 0; i < tq; i += RB) {
        int64_t rows = tq - i < RB ? tq - i : RB;
        /* the keys the block's last row sees, in whole vectors (tk % 16 == 0) */
        int64_t need = i + rows + shift < tk ? i + rows + shift : tk;
        rows_wide(rows, need, 0, hs, x + i * ldx, ldx, work, tk, s + i * tk, tk, NULL);
    }
}

CLLM_AVX512 void cllm_att_mix(const float *p, int64_t tq, int64_t tk, int64_t shift,
                              const float *y, int64_t ldy, int64_t hs, float *out,
                              int64_t ldo, const float *scale)
{
    for (int64_t i = 0; i < tq; i += RB) {
        int64_t rows = tq - i < RB ? tq - i : RB;
        int64_t end = i + rows + shift < tk ? i + rows + shift : tk; /* p > end: 0 */
        rows_wide(rows, hs, 0, end, p + i * tk, tk, y, ldy, out + i * ldo, ldo, scale);
    }
}

CLLM_AVX512 void cllm_att_mix_t(const float *p, int64_t tq, int64_t tk, int64_t shift,
                                const float *y, int64_t ldy, int64_t hs, float *out,
                                int64_t ldo, const float *scale)
{
    for (int64_t j = 0; j < tk; j += RB) { /* tk % 16 == 0: whole blocks */
        int64_t start = j - shift > 0 ? j - shift : 0; /* p < start: 0 */
        cols_wide(hs, start, tq, p + j, tk, y, ldy, out + j * ldo, ldo, scale);
    }
}
#else
int cllm_att_blocks_fit(int64_t tq, int64_t tk, int64_t hs)
{
    (void)tq, (void)tk, (void)hs;
    return 0;
}
#endif
