/* ffn: linear (on the GEMM of gemm.c, or on gemv.c for a few rows), the
 * column sums the bias gradients need, and the block's forward in one call;
 * its activations are in ffn_act.c, layer norm in ffn_layernorm.c. The
 * backward is composed from these kernels in the Python wrapper.
 *
 * Every kernel has a scalar twin next to its AVX2 path. Reductions that
 * produce one value from many rows (bias and layer-norm parameter
 * gradients, layer-norm statistics) accumulate in double in a fixed order
 * (row 0, 1, 2, ...), so they are accurate and identical for any thread
 * count; threads split columns or rows, never a reduction. */
#include "ffn_parts.h"
#include "gemm.h"
#include "simd_math.h"

#include <math.h>
#include <string.h>

#define COL_CHUNK 64

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
 * One thread reads the matrix row by row, in address order, adding each row
 * into runs of up to COL_RUN double sums that stay in L1. With more threads,
 * the columns are cut into chunks of COL_CHUNK that the threads claim, each
 * summed in registers (column_chunk_avx512). A chunk reads 256 bytes of each
 * row, the row's stride apart: alone, on one thread, chunks were slower than
 * a run ((3072, 384 to 1152): 0.15-0.23 against 0.10-0.13 ns per element),
 * but on two threads they beat the one-thread run that narrower matrices
 * used to take: (3072, 128 / 384 / 512 / 1152) 1.6 / 1.2 / 1.4 / 1.4x faster
 * (each matrix in the cache, alternating builds in one process). */
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

int cllm_column_reduce(const float *x, const float *y, float *out, int64_t rows,
                       int64_t cols)
{
    CLLM_CHECK(x && out && rows >= 0 && cols >= 0);
    int nt = cllm_threads_for(rows * cols, ELEM_BLOCK * 4);
    column_job j = {x, y, out, rows, cols, nt > 1 ? COL_CHUNK : COL_RUN, cllm_simd_current};
    cllm_parallel((cols + j.chunk - 1) / j.chunk, nt, column_task, &j);
    return CLLM_OK;
}

int cllm_column_sum(const float *x, float *out, int64_t rows, int64_t cols)
{
    return cllm_column_reduce(x, NULL, out, rows, cols);
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


/* ------------------------------------------------------------- float64 ---- */
/* The float64 path: the scalar formulas above in double, one thread except
 * for the GEMM. Column sums go row by row in order. */
void cllm_column_sums_f64(const double *x, const double *y, double *out, int64_t rows,
                          int64_t cols)
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
        cllm_column_sums_f64(dy, NULL, db, n, out_features);
    return status;
}
