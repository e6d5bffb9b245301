/* Packed, cache-blocked GEMM with register-tiled micro-kernels (no BLAS).
 *
 *   C(m, n) = init + sum_k op(A)(m, k) op(B)(k, n)
 *   init    = C (accumulate), bias[n] (bias != NULL) or 0
 *
 * The classic loop nest: for each NC-wide column panel of B and each KC-deep
 * slice of K, B is packed into NR-wide micro-panels, MC x KC blocks of A
 * into MR-tall micro-panels (or, for a narrow product, read where they are
 * stored: see direct_a), and the micro-kernel updates an MR x NR tile of
 * C held in registers. Tails are zero-padded in the packed buffers and
 * written back through a small temporary tile, so any size is correct.
 * Kernels (gemm_ukernels.c): AVX-512 12 x 32, AVX2+FMA 6 x 16, and the
 * scalar twin 6 x 16. The AVX-512 path packs (gemm_pack.c) with 16 x 16
 * register transposes and masked edge loads; the others with scalar loops.
 * A large C that is written once goes out with non-temporal stores
 * (stream_ok). This file holds the loops: blocking, the macro kernel, the
 * threaded driver and the float64 path.
 *
 * Bits do not depend on the thread count: each K slice is one chain of
 * multiply-adds over its k in order, starting from 0 (or the bias, for the
 * first slice) and added to C at the end, and the slices are fixed by K
 * alone (kc_for). Threads only decide which tiles they compute (cllm_sgemm
 * splits C into blocks of whole tiles, see par_gemm). The scalar kernel uses
 * a * b + c with contraction off (-std=c99), the SIMD kernels fused
 * multiply-adds, so the paths can differ in the last bits; each is
 * deterministic on its own. AVX-512 pays on Zen 4 although it adds no FLOP
 * per cycle there: its 32 registers hold a tile twice as large, which halves
 * the loads per FMA (measured +2-5% on the model's shapes, one thread).
 *
 * cllm_dgemm is the float64 path: plain loops, rows split over threads.
 */
#include "gemm_parts.h"
#include "simd_math.h"

#include <string.h>

/* An MR x KC micro-panel of A (18 KiB with the AVX-512 kernel) is reused
 * from L1 across a group of B micro-panels that stays in L2 (see macro);
 * K = 384 stays one slice (KC 192-1024 measured no faster on the model's
 * shapes); MC x KC of A stays in L2, the B block KC x NC in L3. Tunable at
 * run time for benchmarks (cllm_gemm_set_blocking); the bits depend on KC
 * only through kc_for. */
#define ALIGN_FLOATS 16 /* 64 bytes */

static int64_t KC_MAX = 384;
static int64_t MC_MAX = 240; /* a multiple of every MR */
static int64_t NC_MAX = 3072;

int cllm_gemm_set_blocking(int64_t kc, int64_t mc, int64_t nc)
{
    /* NC a whole number of the widest micro-panel: a block of columns that
     * ended inside a panel would let its last tile write past the block,
     * over columns another thread owns */
    if (kc < 16 || kc > 4096 || mc < 48 || mc > 4800 || mc % 48 || nc < 32 || nc > 65536
        || nc % NR_MAX)
        return CLLM_ERR_ARG;
    KC_MAX = kc;
    MC_MAX = mc;
    NC_MAX = nc;
    return CLLM_OK;
}

/* ------------------------------------------------------- macro kernel ---- */
/* Causal products (attention's, see gemm.h): the part of a tile's work the
 * mask makes zero. COLS: a tile whose first column no row of it sees is not
 * computed at all (C keeps whatever it held). PREFIX / SUFFIX: the zero
 * entries of A end (start) each row, so the tile's K range is cut to the
 * last (first) k one of its rows uses. Dropped products are 0 * x: for a
 * finite x they add a zero, which leaves a nonzero sum as it is and a +0
 * accumulator +0, so the bits are those of the whole product (the caller
 * checks x is finite). Returns 0 when the tile is left alone; otherwise
 * moves the K slice [p0, p0 + kc) and the panels to the part to compute. */
static int causal_span(const gemm_t *g, int64_t i, int64_t rows, int64_t j, int64_t *p0,
                       int64_t *kc, const float **a, int64_t as, const float **bp,
                       int64_t nr, int init)
{
    int64_t lo = *p0, hi = *p0 + *kc;
    if (g->causal == CLLM_CAUSAL_COLS)
        return j <= i + rows - 1 + g->shift;
    if (g->causal == CLLM_CAUSAL_PREFIX && i + rows + g->shift < hi)
        hi = i + rows + g->shift;
    if (g->causal == CLLM_CAUSAL_SUFFIX && i - g->shift > lo)
        lo = i - g->shift;
    if (hi <= lo) /* nothing of this slice: C still gets its init (0) */
        return init != INIT_LOAD ? (*kc = 0, 1) : 0;
    *a += (lo - *p0) * as;
    *bp += (lo - *p0) * nr;
    *p0 = lo;
    *kc = hi - lo;
    return 1;
}

/* The lines the epilogue will read (x) or write (out) for a tile, fetched
 * while the micro-kernel computes it: on demand they would stall the
 * epilogue on every row. */
static void ep_prefetch(const cllm_act_epilogue *e, int64_t off, int64_t ldc,
                        int64_t rows, int64_t cols)
{
    for (int64_t r = 0; r < rows; r++, off += ldc)
        for (int64_t q = 0; q < cols; q += 16) {
            if (e->x)
                __builtin_prefetch(e->x + off + q, 0, 3);
            else
                __builtin_prefetch(e->out + off + q, 1, 3);
        }
}

/* One MR x NR tile of C from an A micro-panel a(i, p) = a[i * ar + p * as]
 * and a packed B micro-panel, K slice [p0, p0 + kc) (the first, p0 = 0,
 * gives C its init). */
static void tile(const kernel_t *kr, const gemm_t *g, int64_t i, int64_t j,
                 int64_t p0, int64_t kc, const float *a, int64_t ar, int64_t as,
                 const float *bp)
{
    int init = (p0 > 0 || g->accumulate) ? INIT_LOAD
               : g->bias ? INIT_BIAS : INIT_ZERO;
    int64_t rows = g->m - i < kr->mr ? g->m - i : kr->mr;
    int64_t cols = g->n - j < kr->nr ? g->n - j : kr->nr;
    /* the epilogue once C holds its final sum (no causal product has one) */
    int last = g->ep && p0 + kc == g->k;
    if (g->causal && !causal_span(g, i, rows, j, &p0, &kc, &a, as, &bp, kr->nr, init))
        return;
    float *c = g->c + i * g->ldc + j;
    if (last)
        ep_prefetch(g->ep, i * g->ldc + j, g->ldc, rows, cols);
    if (rows == kr->mr && cols == kr->nr) {
        kr->run(kc, a, ar, as, bp, c, g->ldc,
                init == INIT_LOAD ? init : init | g->stream, g->bias ? g->bias + j : NULL);
        if (last)
            cllm_act_tile(g->ep, c, i * g->ldc + j, g->ldc, rows, cols);
        return;
    }
    float tmp[MR_MAX * NR_MAX], btmp[NR_MAX];
    memset(tmp, 0, sizeof(tmp));
    memset(btmp, 0, sizeof(btmp));
    if (init == INIT_LOAD)
        for (int64_t r = 0; r < rows; r++)
            memcpy(tmp + r * kr->nr, c + r * g->ldc, (size_t)cols * sizeof(float));
    if (init == INIT_BIAS)
        memcpy(btmp, g->bias + j, (size_t)cols * sizeof(float));
    kr->run(kc, a, ar, as, bp, tmp, kr->nr, init, btmp);
    for (int64_t r = 0; r < rows; r++)
        memcpy(c + r * g->ldc, tmp + r * kr->nr, (size_t)cols * sizeof(float));
    if (last)
        cllm_act_tile(g->ep, c, i * g->ldc + j, g->ldc, rows, cols);
}

/* Packed B panels swept per A micro-panel: a group this large stays in L2
 * while each A micro-panel (12 x KC, 18 KiB) is reused from L1 across it.
 * The other order (a B panel of 48 KiB, all of L1, against every A panel)
 * measured 3-8% slower on the model's shapes. */
#define GROUP_BYTES ((int64_t)768 << 10)

/* Rows [i0, i0 + mc) of C against the packed B panels [0, panels) from
 * column jc, K slice [p0, p0 + kc). A comes packed at ap (as cllm_gemm_pack_a left
 * it) or, when g->direct, from where it is stored; a direct micro-panel
 * with fewer than MR rows is packed into `edge` (MR_MAX * kc floats) so the
 * kernel never reads past the last row. */
static void macro(const kernel_t *kr, const gemm_t *g, int64_t i0, int64_t mc,
                  int64_t jc, int64_t panels, int64_t p0, int64_t kc,
                  const float *ap, const float *bp, float *edge)
{
    int64_t group = (GROUP_BYTES / (int64_t)sizeof(float)) / (kc * kr->nr);
    if (group < 1)
        group = 1;
    for (int64_t qg = 0; qg < panels; qg += group) {
        int64_t qe = panels - qg < group ? panels : qg + group;
        for (int64_t ip = 0; ip < mc; ip += kr->mr) {
            int64_t rows = g->m - (i0 + ip), ar = 1, as = kr->mr;
            const float *a;
            if (!g->direct) {
                a = ap + ip * kc;
            } else if (rows >= kr->mr) { /* in place */
                a = g->a + (i0 + ip) * g->lda + p0;
                ar = g->lda;
                as = 1;
            } else { /* the last, short panel: packed once, for every group */
                if (qg == 0)
                    cllm_gemm_pack_a(g, kr->mr, i0 + ip, rows, p0, kc, edge);
                a = edge;
            }
            for (int64_t q = qg; q < qe; q++)
                tile(kr, g, i0 + ip, jc + q * kr->nr, p0, kc, a, ar, as,
                     bp + q * kc * kr->nr);
        }
    }
}

/* 1 iff a product with inner dimension k runs as one K slice (one chain of
 * fmas per output from 0; a longer K adds per-slice sums to C) */
int cllm_gemm_one_slice(int64_t k) { return k <= KC_MAX; }

static int64_t kc_for(int64_t k)
{
    int64_t blocks = (k + KC_MAX - 1) / KC_MAX;
    return (k + blocks - 1) / blocks;
}



/* Non-temporal stores for C when the AVX-512 kernel writes every tile once
 * (one K slice, no accumulate) and C is too large to stay in a core's L2
 * for whoever reads it next: the stores then skip reading each line of C
 * from memory first, which measured +8-12% on the model's 4096 x 1152+
 * products. Rows must be 64-byte aligned. The caller ends with
 * stream_fence. */
#define STREAM_MIN_BYTES ((int64_t)4 << 20)

static int stream_ok(const gemm_t *g, const kernel_t *kr)
{
    /* an epilogue reads the tile back: it must stay in the cache */
    return kr->mr == 12 && !g->accumulate && !g->ep && g->k <= kc_for(g->k)
           && g->m * g->n * (int64_t)sizeof(float) >= STREAM_MIN_BYTES
           && (uintptr_t)g->c % 64 == 0 && g->ldc % 16 == 0;
}

/* orders the streamed stores before whatever reads C next */
static void stream_fence(const gemm_t *g)
{
#if CLLM_X86
    if (g->stream)
        _mm_sfence();
#else
    (void)g;
#endif
}

/* The AVX-512 kernel can read a row-major A (not transposed) where it is
 * stored: 12 rows, each a sequential stream, stay in L1 while the group of
 * B panels is swept (see macro). That saves the packing (a 16 x 16
 * transpose per block), which costs most where each A micro-panel meets few
 * B panels; but the kernel may run slower on unpacked rows. How far it pays
 * depends on the core. On the Intel Xeon, in place against packed: N = 128
 * and 256 +6-17% on the model's products, N >= 384 -2-6%. On the AMD EPYC
 * (Zen 4): N = 384 +4-6% (every production dX, the fc2 and attention
 * projection forwards), N = 512 +0-4%, N = 1152 and 1536 within 1%, N = 4096
 * and 30000 the same. Either way the multiply-adds are the same, in the same
 * order: so are the bits. A transposed A stays packed: reading it in place
 * strides by lda per k, which maps the panel onto a few L1 sets (measured
 * 40% slower). */
static int64_t direct_max_n(void)
{
#if CLLM_X86
    if (__builtin_cpu_is("intel"))
        return 256;
#endif
    return 2048;
}

static int direct_a(const gemm_t *g, const kernel_t *kr)
{
    return kr->mr == 12 && !g->trans_a && g->n <= direct_max_n();
}

size_t cllm_gemm_work_floats(int64_t m, int64_t n, int64_t k)
{
    /* packed tails are padded to whole micro-panels: one more of each */
    int64_t kc = kc_for(k < 1 ? 1 : k);
    int64_t mc = (m < MC_MAX ? m : MC_MAX) + MR_MAX;
    int64_t nc = (n < NC_MAX ? n : NC_MAX) + NR_MAX;
    return (size_t)((mc + nc) * kc) + 2 * ALIGN_FLOATS;
}

/* The AVX-512 kernel loads B with aligned loads: the packed B starts on a
 * 64-byte boundary of the caller's workspace (cllm_gemm_work_floats counts
 * the slack), and every micro-panel holds a multiple of 16 floats. */
static float *aligned_work(float *p)
{
    uintptr_t mis = (uintptr_t)p % (ALIGN_FLOATS * sizeof(float));
    return mis ? p + (ALIGN_FLOATS * sizeof(float) - mis) / sizeof(float) : p;
}

/* The k = 0 case: C is just its init value. */
static void fill_init(const gemm_t *g)
{
    if (!g->accumulate)
        for (int64_t i = 0; i < g->m; i++)
            for (int64_t j = 0; j < g->n; j++)
                g->c[i * g->ldc + j] = g->bias ? g->bias[j] : 0.0f;
    if (g->ep)
        cllm_act_tile(g->ep, g->c, 0, g->ldc, g->m, g->n);
}

static void serial(gemm_t g, float *work)
{
    kernel_t kr = cllm_gemm_pick_kernel();
    int64_t m = g.m, n = g.n, k = g.k;
    if (m <= 0 || n <= 0)
        return;
    g.stream = stream_ok(&g, &kr) ? INIT_STREAM : 0;
    g.direct = direct_a(&g, &kr);
    if (k <= 0) {
        fill_init(&g);
        return;
    }
    int64_t kcb = kc_for(k);
    int64_t mcb = (m < MC_MAX ? m : MC_MAX) + MR_MAX;
    float *ap = aligned_work(work);
    float *bp = aligned_work(ap + mcb * kcb);
    for (int64_t jc = 0; jc < n; jc += NC_MAX) {
        int64_t nc = n - jc < NC_MAX ? n - jc : NC_MAX;
        int64_t panels = (nc + kr.nr - 1) / kr.nr;
        for (int64_t pc = 0; pc < k; pc += kcb) {
            int64_t kc = k - pc < kcb ? k - pc : kcb;
            cllm_gemm_pack_b(&g, kr.nr, jc, panels, pc, kc, bp);
            for (int64_t ic = 0; ic < m; ic += MC_MAX) {
                int64_t mc = m - ic < MC_MAX ? m - ic : MC_MAX;
                if (!g.direct)
                    cllm_gemm_pack_a(&g, kr.mr, ic, mc, pc, kc, ap);
                macro(&kr, &g, ic, mc, jc, panels, pc, kc, ap, bp, ap);
            }
        }
    }
    stream_fence(&g);
}

void cllm_sgemm_serial(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                       const float *a, int64_t lda, const float *b, int64_t ldb,
                       float *c, int64_t ldc, int accumulate, const float *bias,
                       float *work)
{
    gemm_t g = {trans_a, trans_b, m, n, k, a, b, lda, ldb, c, ldc, accumulate, bias,
                0, 0, 0, 0, NULL};
    serial(g, work);
}

void cllm_sgemm_causal(int causal, int64_t shift, int trans_a, int trans_b, int64_t m,
                       int64_t n, int64_t k, const float *a, int64_t lda, const float *b,
                       int64_t ldb, float *c, int64_t ldc, float *work)
{
    gemm_t g = {trans_a, trans_b, m, n, k, a, b, lda, ldb, c, ldc, 0, NULL,
                0, 0, causal, shift, NULL};
    serial(g, work);
}

/* ------------------------------------------------------ threaded GEMM ---- */
static int check_args(int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                      const float *b, int64_t ldb, float *c, int64_t ldc,
                      int trans_a, int trans_b)
{
    if (m < 0 || n < 0 || k < 0 || !c || ldc < n)
        return CLLM_ERR_ARG;
    if (m == 0 || n == 0)
        return CLLM_OK;
    if (k > 0 && (!a || !b))
        return CLLM_ERR_ARG;
    if (k > 0 && lda < (trans_a ? m : k))
        return CLLM_ERR_ARG;
    if (k > 0 && ldb < (trans_b ? k : n))
        return CLLM_ERR_ARG;
    return CLLM_OK;
}

/* The threaded GEMM splits C into blocks of whole tiles: along M (rows) when
 * M > N, else along N. The operand every block needs in full (B for a row
 * split, A for a column split) is packed once, in parallel, into a shared
 * buffer; each block then packs only its own slice of the other operand, so
 * nothing is packed twice. Blocks are claimed dynamically. */
typedef struct {
    gemm_t g;
    kernel_t kr;
    int split_rows;
    int64_t kcb, span, units, pad; /* pad: M or N rounded up to whole panels */
    float *shared, *work;
    size_t per;
} par_gemm;

/* slice p0 of the shared operand starts at p0 * pad floats */
static float *shared_slice(const par_gemm *j, int64_t p0) { return j->shared + p0 * j->pad; }

/* B panels per prepacking chunk: rows of B are read in runs this wide */
#define PREPACK_PANELS 8

static void prepack_task(void *arg, int64_t chunk, int worker)
{
    const par_gemm *j = arg;
    int64_t slice = chunk / j->units, u = chunk % j->units;
    int64_t p0 = slice * j->kcb, kc = j->g.k - p0 < j->kcb ? j->g.k - p0 : j->kcb;
    (void)worker;
    if (j->split_rows) { /* B panels [u * PREPACK_PANELS, ...), all rows of C */
        int64_t q0 = u * PREPACK_PANELS, panels = j->pad / j->kr.nr - q0;
        cllm_gemm_pack_b(&j->g, j->kr.nr, q0 * j->kr.nr, panels < PREPACK_PANELS ? panels : PREPACK_PANELS,
               p0, kc, shared_slice(j, p0) + q0 * kc * j->kr.nr);
    } else { /* A rows [u * MC_MAX, ...) as MR-tall panels */
        int64_t i0 = u * MC_MAX, mc = j->g.m - i0 < MC_MAX ? j->g.m - i0 : MC_MAX;
        cllm_gemm_pack_a(&j->g, j->kr.mr, i0, mc, p0, kc, shared_slice(j, p0) + i0 * kc);
    }
}

static void block_task(void *arg, int64_t t, int worker)
{
    const par_gemm *j = arg;
    const gemm_t *g = &j->g;
    const kernel_t *kr = &j->kr;
    int64_t lo = t * j->span, hi = lo + j->span;
    float *own = j->work + j->per * (size_t)worker;
    if (hi > (j->split_rows ? g->m : g->n))
        hi = j->split_rows ? g->m : g->n;
    for (int64_t p0 = 0; p0 < g->k; p0 += j->kcb) {
        int64_t kc = g->k - p0 < j->kcb ? g->k - p0 : j->kcb;
        const float *shared = shared_slice(j, p0);
        if (j->split_rows) { /* rows [lo, hi) against every packed B panel */
            int64_t panels = j->pad / kr->nr;
            for (int64_t ic = lo; ic < hi; ic += MC_MAX) {
                int64_t mc = hi - ic < MC_MAX ? hi - ic : MC_MAX;
                if (!g->direct)
                    cllm_gemm_pack_a(g, kr->mr, ic, mc, p0, kc, own);
                macro(kr, g, ic, mc, 0, panels, p0, kc, own, shared, own);
            }
        } else { /* columns [lo, hi) against the packed A */
            /* after the packed B (NC_MAX columns at most): room for MR_MAX rows */
            float *edge = own + (NC_MAX + NR_MAX) * kc;
            for (int64_t jc = lo; jc < hi; jc += NC_MAX) {
                int64_t nc = hi - jc < NC_MAX ? hi - jc : NC_MAX;
                int64_t panels = (nc + kr->nr - 1) / kr->nr;
                cllm_gemm_pack_b(g, kr->nr, jc, panels, p0, kc, own);
                for (int64_t ic = 0; ic < g->m; ic += MC_MAX) {
                    int64_t mc = g->m - ic < MC_MAX ? g->m - ic : MC_MAX;
                    macro(kr, g, ic, mc, jc, panels, p0, kc,
                          g->direct ? NULL : shared + ic * kc, own, edge);
                }
            }
        }
    }
    stream_fence(g);
}

/* Packing buffers from 128 KiB (glibc's mmap threshold) up come from the
 * recycling mapper of cpu.c: malloc would map and fault them in afresh on
 * every call. */
#define SCRATCH_BIG ((size_t)128 << 10)

static float *scratch(size_t floats)
{
    size_t bytes = floats * sizeof(float);
    return bytes >= SCRATCH_BIG ? cllm_big_alloc(bytes) : cllm_alloc(bytes);
}

static void scratch_free(float *p, size_t floats)
{
    if (floats * sizeof(float) >= SCRATCH_BIG)
        cllm_big_free(p);
    else
        cllm_free(p);
}

int cllm_sgemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
               const float *a, int64_t lda, const float *b, int64_t ldb,
               float *c, int64_t ldc, int accumulate, const float *bias)
{
    return cllm_sgemm_act(trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc, accumulate,
                          bias, NULL);
}

int cllm_sgemm_act(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                   const float *a, int64_t lda, const float *b, int64_t ldb, float *c,
                   int64_t ldc, int accumulate, const float *bias,
                   const cllm_act_epilogue *ep)
{
    int status = check_args(m, n, k, a, lda, b, ldb, c, ldc, trans_a, trans_b);
    if (status != CLLM_OK || m == 0 || n == 0)
        return status;
    gemm_t g = {trans_a, trans_b, m, n, k, a, b, lda, ldb, c, ldc, accumulate, bias,
                0, 0, 0, 0, ep};
    int nt = cllm_threads_for(m * n * (k > 0 ? k : 1), (int64_t)1 << 21);
    if (nt == 1 || k == 0) {
        size_t floats = cllm_gemm_work_floats(m, n, k);
        float *w = scratch(floats);
        if (!w)
            return CLLM_ERR_NOMEM;
        serial(g, w);
        scratch_free(w, floats);
        return CLLM_OK;
    }
    par_gemm j = {g, cllm_gemm_pick_kernel(), m > n, kc_for(k), 0, 0, 0, NULL, NULL, 0};
    j.g.stream = stream_ok(&j.g, &j.kr) ? INIT_STREAM : 0;
    j.g.direct = direct_a(&j.g, &j.kr);
    /* a column split shares the packed A: nothing to share when A is direct */
    int prepack = j.split_rows || !j.g.direct;
    /* Many small blocks balance the two threads (a thread that starts late
     * or loses its core just takes fewer): packing is not repeated per block,
     * so granularity costs little. Row blocks are one MC block of A; column
     * blocks a few NR panels, at least 8 blocks per thread when N allows. */
    if (j.split_rows) {
        /* A transposed is a weight gradient, dY^T X: K is the tokens, so the
         * shared B spans many K slices and leaves L2 between blocks; each
         * block re-reads it, and taller blocks (two per thread, not four)
         * use each slice for twice the rows. The block count is a multiple
         * of the threads, enough for blocks of at most MC rows. */
        int64_t per_thread = trans_a ? 2 : 4, count = per_thread * nt;
        int64_t least = (m + MC_MAX - 1) / MC_MAX;
        if (count < least)
            count = (least + nt - 1) / nt * nt;
        int64_t rows = (m + count - 1) / count;
        j.span = (rows + j.kr.mr - 1) / j.kr.mr * j.kr.mr; /* <= MC_MAX */
    } else {
        int64_t panels = (n + j.kr.nr - 1) / j.kr.nr, per = panels / (8 * nt);
        j.span = (per > 1 ? per : 1) * j.kr.nr;
    }
    int64_t blocks = ((j.split_rows ? m : n) + j.span - 1) / j.span;
    /* the shared operand: all of B (row split) or all of A (column split) */
    j.pad = j.split_rows ? (n + j.kr.nr - 1) / j.kr.nr * j.kr.nr
                         : (m + j.kr.mr - 1) / j.kr.mr * j.kr.mr;
    j.units = j.split_rows ? (j.pad / j.kr.nr + PREPACK_PANELS - 1) / PREPACK_PANELS
                           : (m + MC_MAX - 1) / MC_MAX;
    size_t shared = prepack ? (size_t)(j.pad * k) : ALIGN_FLOATS;
    j.per = (size_t)(((j.split_rows ? MC_MAX : NC_MAX) + NR_MAX + MR_MAX) * j.kcb);
    /* each worker's packed B starts on a 64-byte boundary (aligned loads),
     * whatever NC cllm_gemm_set_blocking chose */
    j.per = (j.per + ALIGN_FLOATS - 1) / ALIGN_FLOATS * ALIGN_FLOATS;
    j.shared = scratch(shared);
    j.work = scratch(j.per * (size_t)nt);
    if (!j.shared || !j.work) {
        if (j.shared)
            scratch_free(j.shared, shared);
        if (j.work)
            scratch_free(j.work, j.per * (size_t)nt);
        return CLLM_ERR_NOMEM;
    }
    int64_t slices = (k + j.kcb - 1) / j.kcb;
    if (prepack)
        cllm_parallel(slices * j.units, nt, prepack_task, &j);
    cllm_parallel(blocks, nt, block_task, &j);
    scratch_free(j.shared, shared);
    scratch_free(j.work, j.per * (size_t)nt);
    return CLLM_OK;
}

/* ------------------------------------------------------------- float64 ---- */
typedef struct {
    int ta, tb, accumulate;
    int64_t m, n, k, lda, ldb, ldc;
    const double *a, *b, *bias;
    double *c;
} dgemm_job;

#define DGEMM_ROWS 8

/* rows [8q, 8q + 8) of C: each element one sum over k in order */
static void dgemm_rows(void *arg, int64_t q, int worker)
{
    const dgemm_job *j = arg;
    int64_t end = (q + 1) * DGEMM_ROWS < j->m ? (q + 1) * DGEMM_ROWS : j->m;
    (void)worker;
    for (int64_t i = q * DGEMM_ROWS; i < end; i++) {
        double *ci = j->c + i * j->ldc;
        for (int64_t col = 0; col < j->n; col++) {
            double s = j->bias ? j->bias[col] : 0.0;
            for (int64_t p = 0; p < j->k; p++) {
                double av = j->ta ? j->a[p * j->lda + i] : j->a[i * j->lda + p];
                double bv = j->tb ? j->b[col * j->ldb + p] : j->b[p * j->ldb + col];
                s += av * bv;
            }
            ci[col] = j->accumulate ? ci[col] + s : s;
        }
    }
}

int cllm_dgemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
               const double *a, int64_t lda, const double *b, int64_t ldb,
               double *c, int64_t ldc, int accumulate, const double *bias)
{
    CLLM_CHECK(m >= 0 && n >= 0 && k >= 0 && c && ldc >= n);
    if (m == 0 || n == 0)
        return CLLM_OK;
    CLLM_CHECK(k == 0 || (a && b && lda >= (trans_a ? m : k) && ldb >= (trans_b ? k : n)));
    dgemm_job j = {trans_a, trans_b, accumulate, m, n, k, lda, ldb, ldc, a, b, bias, c};
    cllm_parallel((m + DGEMM_ROWS - 1) / DGEMM_ROWS,
                  cllm_threads_for(m * n * (k + 1), (int64_t)1 << 18), dgemm_rows, &j);
    return CLLM_OK;
}
