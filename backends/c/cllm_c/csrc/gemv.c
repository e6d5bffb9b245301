/* gemv: the linear layer for the few rows of decoding,
 *
 *   y(m, j) = b[j] + sum_k x(m, k) w(j, k)      x (M, K), w (N, K), y (M, N)
 *
 * with M <= CLLM_GEMV_MAX_ROWS. One generated token is one row per sequence,
 * so a decoding step is memory-bound: every weight is used M times and must
 * be read from memory once. The blocked GEMM (gemm.c) packs the whole weight
 * into panels first and runs a 12-row tile on one row, which reads and writes
 * the weight three times. Here each block of GEMV_ROWS weight rows is
 * streamed once, as stored (rows of K contiguous floats), and multiplied with
 * every x row while it is in L1.
 *
 * At one or two x rows (one or two sequences decoding), the weight is read
 * one row at a time, so in address order: a single forward stream, which the
 * hardware prefetcher follows at the memory's rate with no software prefetch.
 * A block of GEMV_ROWS rows read together is GEMV_ROWS streams K floats
 * apart, which it did not follow: on one core of an AMD EPYC that reads 29 GB/s,
 * the 30000 x 384 LM head streamed at 17-21 GB/s in blocks (with the far
 * prefetch below) and 24-27 GB/s one row at a time, and production decoding
 * rose from 189-203 to 222-290 tokens/s on one thread and from 225-245 to
 * 288-319 on two (medians of alternating runs). At three x rows the two
 * measured alike on one thread, and at four the blocks were faster (20 GB/s
 * against 11), each weight vector serving four x rows from a register.
 *
 * Up to 16 rows (a 16-token prompt, or 16 samples decoded together): on the
 * model's shapes (N x K = 30000 x 384, 1536 x 384, 384 x 1536, 512 x 128)
 * this was 2.1-2.8x faster than the GEMM at M = 16 and still 1.3-2.0x at 32
 * (one thread, medians, on a shared machine): the GEMM's packing alone
 * reads and writes the weight once before the product reads it again.
 *
 * Bits: y(m, j) is one chain of products over k in a fixed lane order
 * (lane-wise fused multiply-adds, then the lanes summed in a fixed order, then
 * the bias added), whatever M, the row block j falls in, or the thread that
 * computes it, or whether its weight row was read in a block or alone.
 * Threads claim chunks of GEMV_CHUNK output columns, a size fixed by the
 * problem, so results are bitwise identical for any thread count. The
 * scalar twin sums k in order with contraction off (-std=c99), so SIMD and
 * scalar differ in the last bits, each deterministic on its own. */
#include "cllm.h"
#include "simd_math.h"

#define GEMV_ROWS 4   /* weight rows streamed together */
#define STREAM_MAX_M 2 /* up to this many x rows, weight rows are read alone */
#define GEMV_CHUNK 64 /* output columns per parallel chunk */
/* How far ahead the block kernels (three x rows and more) prefetch the
 * weight: about 32 KB, and at least the block after next, into L2. On blocks
 * the hardware prefetcher alone kept one core at ~70% of its streaming-read
 * rate on a 46 MB LM head. An L1 prefetch of
 * the block after next (the previous rule) then reached 10-12 GB/s on the
 * 30000 x 384, 1152 x 384 and 384 x 1536 weights on one core of an AMD EPYC
 * that reads 29 GB/s, the L1's few outstanding misses being the limit; into
 * L2 and 32 KB ahead, 17-20 GB/s (on two threads 17 -> 21 GB/s), and 64 or
 * 128 KB measured the same. */
#define GEMV_AHEAD_BYTES ((int64_t)32 << 10)
#define GEMV_FAR_MIN_BYTES ((int64_t)1 << 20)

/* A second thread is worth using from this many weight elements (32 KB).
 * Pool threads spin about a millisecond after a job (threads.c), so within a
 * decoding step they are awake and a chunk hand-over costs a cache line, not
 * a wake-up: splitting even the 128x128 projections pays. Measured at 2
 * threads, batch-1 decode, against 1 << 17: small 1.21x, default 1.39x,
 * production unchanged; 1 << 12 and 1 << 14 gave the same within noise,
 * 1 << 15 less. Chunks are fixed per problem, so the bits do not depend on
 * this threshold. */
#define GEMV_GRAIN ((int64_t)1 << 13)

typedef struct {
    const float *x, *w, *b;
    float *y;
    int64_t m, k, n;
    int simd;
} gemv_job;

/* The prefetch distance of block j0 in floats, in whole weight rows, and
 * where to (*far: L2, else L1). A weight of GEMV_FAR_MIN_BYTES or more is taken to come
 * from memory: about GEMV_AHEAD_BYTES ahead into L2, and none where that
 * would reach past the last row. A smaller one, likely in L3 (the small
 * model decodes from 5 MB of weights), keeps the earlier rule, the block
 * after next into L1: the far L2 prefetch measured 10% slower there. */
static inline int64_t ahead_floats(const gemv_job *g, int64_t j0, int *far)
{
    if (g->n * g->k * (int64_t)sizeof(float) < GEMV_FAR_MIN_BYTES) {
        *far = 0;
        return 2 * GEMV_ROWS * g->k; /* past the end: never faults */
    }
    int64_t rows = GEMV_AHEAD_BYTES / ((int64_t)sizeof(float) * g->k);
    rows = rows > 2 * GEMV_ROWS ? rows : 2 * GEMV_ROWS;
    *far = 1;
    return j0 + rows + GEMV_ROWS <= g->n ? rows * g->k : 0;
}

#if CLLM_X86
static inline __attribute__((always_inline)) void prefetch(const float *at, int far)
{
    if (far)
        _mm_prefetch((const char *)at, _MM_HINT_T1);
    else
        _mm_prefetch((const char *)at, _MM_HINT_T0);
}
#endif

/* The weight rows of block j0: rows past the end repeat the last row, so
 * every kernel runs a full block; only valid columns are stored. */
static void block_rows(const gemv_job *g, int64_t j0, const float *rows[GEMV_ROWS])
{
    for (int r = 0; r < GEMV_ROWS; r++) {
        int64_t j = j0 + r < g->n ? j0 + r : g->n - 1;
        rows[r] = g->w + j * g->k;
    }
}

static void store(const gemv_job *g, int64_t m, int64_t j0, const float *dots, int nr)
{
    for (int r = 0; r < nr && j0 + r < g->n; r++)
        g->y[m * g->n + j0 + r] = g->b ? dots[r] + g->b[j0 + r] : dots[r];
}

/* ------------------------------------------------------------- scalar ---- */
static void block_scalar(const gemv_job *g, int64_t j0)
{
    const float *rows[GEMV_ROWS];
    block_rows(g, j0, rows);
    for (int64_t m = 0; m < g->m; m++) {
        const float *xm = g->x + m * g->k;
        float dots[GEMV_ROWS];
        for (int r = 0; r < GEMV_ROWS; r++) {
            float acc = 0.0f;
            for (int64_t p = 0; p < g->k; p++)
                acc = xm[p] * rows[r][p] + acc;
            dots[r] = acc;
        }
        store(g, m, j0, dots, GEMV_ROWS);
    }
}

#if CLLM_X86
/* --------------------------------------------------------------- AVX2 ---- */
/* mr x rows against nr weight rows: GEMV_ROWS, a block, or 1, a row read
 * alone (STREAM_MAX_M), with no software prefetch. MR * GEMV_ROWS
 * accumulators + GEMV_ROWS weight vectors fit the 16 ymm registers for
 * MR <= 2. */
#define AVX2_MR 2
CLLM_AVX2 static inline __attribute__((always_inline)) void
group_avx2(const gemv_job *g, const float *const *rows, int nr, int64_t m0, int mr,
           int64_t j0)
{
    int far = 0;
    int64_t k = g->k, p = 0, ahead = nr == GEMV_ROWS ? ahead_floats(g, j0, &far) : 0;
    __m256 acc[AVX2_MR][GEMV_ROWS];
    for (int i = 0; i < mr; i++)
        for (int r = 0; r < nr; r++)
            acc[i][r] = _mm256_setzero_ps();
    for (; p + 8 <= k; p += 8) {
        __m256 wv[GEMV_ROWS];
        for (int r = 0; r < nr; r++) {
            if (ahead && m0 == 0 && p % 16 == 0) /* one prefetch per 64-byte line */
                prefetch(rows[r] + p + ahead, far);
            wv[r] = _mm256_loadu_ps(rows[r] + p);
        }
        for (int i = 0; i < mr; i++) {
            __m256 xv = _mm256_loadu_ps(g->x + (m0 + i) * k + p);
            for (int r = 0; r < nr; r++)
                acc[i][r] = _mm256_fmadd_ps(xv, wv[r], acc[i][r]);
        }
    }
    if (p < k) { /* the K % 8 tail: masked loads read nothing past the row */
        __m256i mask = cllm_tail_mask(k - p);
        __m256 wv[GEMV_ROWS];
        for (int r = 0; r < nr; r++)
            wv[r] = _mm256_maskload_ps(rows[r] + p, mask);
        for (int i = 0; i < mr; i++) {
            __m256 xv = _mm256_maskload_ps(g->x + (m0 + i) * k + p, mask);
            for (int r = 0; r < nr; r++)
                acc[i][r] = _mm256_fmadd_ps(xv, wv[r], acc[i][r]);
        }
    }
    for (int i = 0; i < mr; i++) {
        float dots[GEMV_ROWS];
        for (int r = 0; r < nr; r++)
            dots[r] = cllm_hsum256(acc[i][r]);
        store(g, m0 + i, j0, dots, nr);
    }
}

CLLM_AVX2 static void block_avx2(const gemv_job *g, int64_t j0)
{
    if (g->m <= STREAM_MAX_M) {
        for (int64_t j = j0; j < j0 + GEMV_ROWS && j < g->n; j++) {
            const float *row = g->w + j * g->k;
            g->m == 2 ? group_avx2(g, &row, 1, 0, 2, j) : group_avx2(g, &row, 1, 0, 1, j);
        }
        return;
    }
    const float *rows[GEMV_ROWS];
    block_rows(g, j0, rows);
    int64_t m0 = 0;
    for (; m0 + 2 <= g->m; m0 += 2)
        group_avx2(g, rows, GEMV_ROWS, m0, 2, j0);
    if (m0 < g->m)
        group_avx2(g, rows, GEMV_ROWS, m0, 1, j0);
}

/* ------------------------------------------------------------ AVX-512 ---- */
/* mr x rows against nr weight rows, as group_avx2; 4 x rows x 4 weight rows
 * = 16 accumulators of the 32 zmm registers */
#define AVX512_MR 4
CLLM_AVX512 static inline __attribute__((always_inline)) void
group_avx512(const gemv_job *g, const float *const *rows, int nr, int64_t m0, int mr,
             int64_t j0)
{
    int far = 0;
    int64_t k = g->k, p = 0, ahead = nr == GEMV_ROWS ? ahead_floats(g, j0, &far) : 0;
    __m512 acc[AVX512_MR][GEMV_ROWS];
    for (int i = 0; i < mr; i++)
        for (int r = 0; r < nr; r++)
            acc[i][r] = _mm512_setzero_ps();
    for (; p + 16 <= k; p += 16) {
        __m512 wv[GEMV_ROWS];
        for (int r = 0; r < nr; r++) {
            if (ahead && m0 == 0) /* the first x group fetches ahead */
                prefetch(rows[r] + p + ahead, far);
            wv[r] = _mm512_loadu_ps(rows[r] + p);
        }
        for (int i = 0; i < mr; i++) {
            __m512 xv = _mm512_loadu_ps(g->x + (m0 + i) * k + p);
            for (int r = 0; r < nr; r++)
                acc[i][r] = _mm512_fmadd_ps(xv, wv[r], acc[i][r]);
        }
    }
    if (p < k) { /* the K % 16 tail: masked loads read nothing past the row */
        __mmask16 mask = (__mmask16)((1u << (k - p)) - 1u);
        __m512 wv[GEMV_ROWS];
        for (int r = 0; r < nr; r++)
            wv[r] = _mm512_maskz_loadu_ps(mask, rows[r] + p);
        for (int i = 0; i < mr; i++) {
            __m512 xv = _mm512_maskz_loadu_ps(mask, g->x + (m0 + i) * k + p);
            for (int r = 0; r < nr; r++)
                acc[i][r] = _mm512_fmadd_ps(xv, wv[r], acc[i][r]);
        }
    }
    for (int i = 0; i < mr; i++) {
        float dots[GEMV_ROWS];
        for (int r = 0; r < nr; r++)
            dots[r] = _mm512_reduce_add_ps(acc[i][r]);
        store(g, m0 + i, j0, dots, nr);
    }
}

CLLM_AVX512 static void block_avx512(const gemv_job *g, int64_t j0)
{
    if (g->m <= STREAM_MAX_M) {
        for (int64_t j = j0; j < j0 + GEMV_ROWS && j < g->n; j++) {
            const float *row = g->w + j * g->k;
            g->m == 2 ? group_avx512(g, &row, 1, 0, 2, j) : group_avx512(g, &row, 1, 0, 1, j);
        }
        return;
    }
    const float *rows[GEMV_ROWS];
    block_rows(g, j0, rows);
    int64_t m0 = 0;
    /* constant group sizes, so each call keeps its accumulators in registers */
    for (; m0 + 4 <= g->m; m0 += 4)
        group_avx512(g, rows, GEMV_ROWS, m0, 4, j0);
    switch (g->m - m0) {
    case 3: group_avx512(g, rows, GEMV_ROWS, m0, 3, j0); break;
    case 2: group_avx512(g, rows, GEMV_ROWS, m0, 2, j0); break;
    case 1: group_avx512(g, rows, GEMV_ROWS, m0, 1, j0); break;
    default: break;
    }
}
#endif

/* ------------------------------------------------------------- driver ---- */
static void gemv_task(void *arg, int64_t chunk, int worker)
{
    const gemv_job *g = arg;
    int64_t end = (chunk + 1) * GEMV_CHUNK < g->n ? (chunk + 1) * GEMV_CHUNK : g->n;
    (void)worker;
    for (int64_t j0 = chunk * GEMV_CHUNK; j0 < end; j0 += GEMV_ROWS) {
#if CLLM_X86
        if (g->simd >= CLLM_SIMD_AVX512) {
            block_avx512(g, j0);
            continue;
        }
        if (g->simd >= CLLM_SIMD_AVX2) {
            block_avx2(g, j0);
            continue;
        }
#endif
        block_scalar(g, j0);
    }
}

int cllm_gemv(const float *x, const float *w, const float *b, float *y, int64_t m,
              int64_t in_features, int64_t out_features)
{
    CLLM_CHECK(x && w && y && m >= 0 && m <= CLLM_GEMV_MAX_ROWS);
    CLLM_CHECK(in_features >= 1 && out_features >= 1);
    if (m == 0)
        return CLLM_OK;
    gemv_job g = {x, w, b, y, m, in_features, out_features, cllm_simd_current};
    int64_t chunks = (out_features + GEMV_CHUNK - 1) / GEMV_CHUNK;
    cllm_parallel(chunks, cllm_threads_for(out_features * in_features, GEMV_GRAIN),
                  gemv_task, &g);
    return CLLM_OK;
}
