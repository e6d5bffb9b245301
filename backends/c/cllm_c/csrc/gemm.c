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
 * Kernels: AVX-512 12 x 32, AVX2+FMA 6 x 16, and the scalar twin 6 x 16.
 * The AVX-512 path packs with 16 x 16 register transposes and masked edge
 * loads (see "AVX-512 packing"); the others with scalar loops. A large C
 * that is written once goes out with non-temporal stores (stream_ok).
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
#include "gemm.h"
#include "simd_math.h"

#include <string.h>

/* An MR x KC micro-panel of A (18 KiB with the AVX-512 kernel) is reused
 * from L1 across a group of B micro-panels that stays in L2 (see macro);
 * K = 384 stays one slice (KC 192-1024 measured no faster on the model's
 * shapes); MC x KC of A stays in L2, the B block KC x NC in L3. Tunable at
 * run time for benchmarks (cllm_gemm_set_blocking); the bits depend on KC
 * only through kc_for. */
#define MR_MAX 16
#define NR_MAX 32
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

enum { INIT_ZERO = 0, INIT_LOAD = 1, INIT_BIAS = 2 };
/* or'ed into init for the AVX-512 kernel: store C with non-temporal stores
 * (a 64-byte aligned tile whose values are final; see stream_ok) */
#define INIT_STREAM 4

/* a(i, p) is a[i * ar + p * as]: (1, MR) for a packed micro-panel, (lda, 1)
 * for rows of A read where they are stored (see direct_a) */
typedef void (*ukernel_fn)(int64_t kc, const float *a, int64_t ar, int64_t as,
                           const float *b, float *c, int64_t ldc, int init,
                           const float *bias);

typedef struct {
    int mr, nr;
    ukernel_fn run;
} kernel_t;

/* ------------------------------------------------------- scalar kernel ---- */
#define S_MR 6
#define S_NR 16
static void ukernel_scalar(int64_t kc, const float *a, int64_t ar, int64_t as,
                           const float *b, float *c, int64_t ldc, int init,
                           const float *bias)
{
    float acc[S_MR][S_NR];
    for (int i = 0; i < S_MR; i++)
        for (int j = 0; j < S_NR; j++)
            acc[i][j] = init == INIT_BIAS ? bias[j] : 0.0f;
    for (int64_t p = 0; p < kc; p++) {
        const float *ap = a + p * as, *bp = b + p * S_NR;
        for (int i = 0; i < S_MR; i++)
            for (int j = 0; j < S_NR; j++)
                acc[i][j] = ap[i * ar] * bp[j] + acc[i][j];
    }
    for (int i = 0; i < S_MR; i++)
        for (int j = 0; j < S_NR; j++)
            c[i * ldc + j] = init == INIT_LOAD ? c[i * ldc + j] + acc[i][j] : acc[i][j];
}

#if CLLM_X86
/* ---------------------------------------------------- AVX2 + FMA 6 x 16 ---- */
CLLM_AVX2 static void ukernel_avx2(int64_t kc, const float *a, int64_t ar,
                                   int64_t as, const float *b, float *c,
                                   int64_t ldc, int init, const float *bias)
{
    __m256 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
    __m256 z0 = _mm256_setzero_ps(), z1 = z0;
    if (init == INIT_BIAS) {
        z0 = _mm256_loadu_ps(bias);
        z1 = _mm256_loadu_ps(bias + 8);
    }
    if (init == INIT_LOAD) /* C is added at the end: fetch it meanwhile */
        for (int i = 0; i < 6; i++) {
            _mm_prefetch((const char *)(c + i * ldc), _MM_HINT_T0);
            _mm_prefetch((const char *)(c + i * ldc + 15), _MM_HINT_T0);
        }
    c00 = c10 = c20 = c30 = c40 = c50 = z0;
    c01 = c11 = c21 = c31 = c41 = c51 = z1;
    for (int64_t p = 0; p < kc; p++) {
        __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8), av;
        av = _mm256_broadcast_ss(a + 0 * ar);
        c00 = _mm256_fmadd_ps(av, b0, c00); c01 = _mm256_fmadd_ps(av, b1, c01);
        av = _mm256_broadcast_ss(a + 1 * ar);
        c10 = _mm256_fmadd_ps(av, b0, c10); c11 = _mm256_fmadd_ps(av, b1, c11);
        av = _mm256_broadcast_ss(a + 2 * ar);
        c20 = _mm256_fmadd_ps(av, b0, c20); c21 = _mm256_fmadd_ps(av, b1, c21);
        av = _mm256_broadcast_ss(a + 3 * ar);
        c30 = _mm256_fmadd_ps(av, b0, c30); c31 = _mm256_fmadd_ps(av, b1, c31);
        av = _mm256_broadcast_ss(a + 4 * ar);
        c40 = _mm256_fmadd_ps(av, b0, c40); c41 = _mm256_fmadd_ps(av, b1, c41);
        av = _mm256_broadcast_ss(a + 5 * ar);
        c50 = _mm256_fmadd_ps(av, b0, c50); c51 = _mm256_fmadd_ps(av, b1, c51);
        a += as;
        b += 16;
    }
    if (init == INIT_LOAD) {
#define ADD_C(r, lo, hi)                                                    \
    lo = _mm256_add_ps(_mm256_loadu_ps(c + r * ldc), lo);                   \
    hi = _mm256_add_ps(_mm256_loadu_ps(c + r * ldc + 8), hi)
        ADD_C(0, c00, c01); ADD_C(1, c10, c11); ADD_C(2, c20, c21);
        ADD_C(3, c30, c31); ADD_C(4, c40, c41); ADD_C(5, c50, c51);
#undef ADD_C
    }
    _mm256_storeu_ps(c + 0 * ldc, c00); _mm256_storeu_ps(c + 0 * ldc + 8, c01);
    _mm256_storeu_ps(c + 1 * ldc, c10); _mm256_storeu_ps(c + 1 * ldc + 8, c11);
    _mm256_storeu_ps(c + 2 * ldc, c20); _mm256_storeu_ps(c + 2 * ldc + 8, c21);
    _mm256_storeu_ps(c + 3 * ldc, c30); _mm256_storeu_ps(c + 3 * ldc + 8, c31);
    _mm256_storeu_ps(c + 4 * ldc, c40); _mm256_storeu_ps(c + 4 * ldc + 8, c41);
    _mm256_storeu_ps(c + 5 * ldc, c50); _mm256_storeu_ps(c + 5 * ldc + 8, c51);
}

/* ------------------------------------------------ AVX-512 12 x 32 ---- */
/* 24 zmm accumulators: per k, 2 loads of B and 12 broadcasts of A feed 24
 * FMAs (768 FLOP) in 12 cycles on two FMA ports; the 14 loads fit the load
 * ports with room to spare. With both panels in L1 the kernel measured
 * 84-87% of the register-only FMA peak of benchmarks/fma_peak.c (208-216 of
 * 249 GFLOP/s; 8 x 32 and 14 x 32 tiles the same), the packed B panel 64-byte
 * aligned (a misaligned panel splits every load across two cache lines), so
 * the packed buffers are aligned. The next A panel (streamed from L2) is
 * prefetched a few k ahead. */
#define Z_ROW(r) __m512 c##r##0, c##r##1
#define Z_INIT(r) c##r##0 = z0; c##r##1 = z1
#define Z_FMA(r, u)                                                          \
    av = _mm512_set1_ps(Z_A(r, u));                                          \
    c##r##0 = _mm512_fmadd_ps(av, b0, c##r##0);                              \
    c##r##1 = _mm512_fmadd_ps(av, b1, c##r##1)
#define Z_STORE(r)                                                           \
    if (init == INIT_LOAD) {                                                 \
        c##r##0 = _mm512_add_ps(_mm512_loadu_ps(c + r * ldc), c##r##0);      \
        c##r##1 = _mm512_add_ps(_mm512_loadu_ps(c + r * ldc + 16), c##r##1); \
    }                                                                        \
    if (stream) {                                                            \
        _mm512_stream_ps(c + r * ldc, c##r##0);                              \
        _mm512_stream_ps(c + r * ldc + 16, c##r##1);                         \
    } else {                                                                 \
        _mm512_storeu_ps(c + r * ldc, c##r##0);                              \
        _mm512_storeu_ps(c + r * ldc + 16, c##r##1);                         \
    }
/* k step p + u of the micro-panel at (a, b): B panels are 64-byte aligned
 * (see aligned_work) */
#define Z_STEP_AT(u)                                                         \
    do {                                                                     \
        __m512 b0 = _mm512_load_ps(b + (u) * 32), av;                        \
        __m512 b1 = _mm512_load_ps(b + (u) * 32 + 16);                       \
        Z_FMA(0, u); Z_FMA(1, u); Z_FMA(2, u); Z_FMA(3, u);                  \
        Z_FMA(4, u); Z_FMA(5, u); Z_FMA(6, u); Z_FMA(7, u);                  \
        Z_FMA(8, u); Z_FMA(9, u); Z_FMA(10, u); Z_FMA(11, u);                \
    } while (0)
#define Z_NEXT(steps)                                                        \
    do {                                                                     \
        a += (steps) * as; a3 += (steps) * as; a6 += (steps) * as;          \
        a9 += (steps) * as;                                                  \
        b += (steps) * 32;                                                   \
    } while (0)
#define Z_A(r, u)                                                            \
    ((r) < 3 ? a[(r) * ar + (u) * as] : (r) < 6 ? a3[((r) - 3) * ar + (u) * as] \
     : (r) < 9 ? a6[((r) - 6) * ar + (u) * as] : a9[((r) - 9) * ar + (u) * as])

#define Z_HINT_W _MM_HINT_ET0 /* prefetchw: C lines are written */
#ifndef Z_PREFETCH_K
#define Z_PREFETCH_K 8
#endif /* k steps of A prefetched ahead: 384 bytes of a packed panel */

/* The body, inlined with ar and as as constants where the caller knows them
 * (a packed panel: 1, 12; rows in place: lda, 1): every A address is then a
 * base register plus a constant, and the k loop runs four steps per pass,
 * with a quarter of the pointer and counter updates of one step per pass.
 * Measured against that loop: +2-6% on the model's products (gemm.py), +3%
 * with both panels in L1. Same multiply-adds in the same order: same bits. */
__attribute__((target("avx512f,avx512dq,avx2,fma,prfchw"), always_inline)) static inline void
ukernel_avx512_body(int64_t kc, const float *a, const int64_t ar, const int64_t as,
                    const float *b, float *c, int64_t ldc, int init, const float *bias)
{
    /* four row bases, each row one scaled index away: 12 rows of an
     * unpacked A cost no more address arithmetic than a packed panel */
    const float *a3 = a + 3 * ar, *a6 = a + 6 * ar, *a9 = a + 9 * ar;
    Z_ROW(0); Z_ROW(1); Z_ROW(2); Z_ROW(3); Z_ROW(4); Z_ROW(5);
    Z_ROW(6); Z_ROW(7); Z_ROW(8); Z_ROW(9); Z_ROW(10); Z_ROW(11);
    int stream = init & INIT_STREAM;
    init &= ~INIT_STREAM;
    __m512 z0 = _mm512_setzero_ps(), z1 = z0;
    if (init == INIT_BIAS) {
        z0 = _mm512_loadu_ps(bias);
        z1 = _mm512_loadu_ps(bias + 16);
    }
    Z_INIT(0); Z_INIT(1); Z_INIT(2); Z_INIT(3); Z_INIT(4); Z_INIT(5);
    Z_INIT(6); Z_INIT(7); Z_INIT(8); Z_INIT(9); Z_INIT(10); Z_INIT(11);
    int64_t p = 0;
    /* C is read (accumulate) or written at the end: fetch it meanwhile, one
     * row per k step, so the stores do not wait for their lines and the
     * prefetches do not take every fill buffer at once. Streamed stores
     * need no line. */
    if (!stream) {
        int64_t head = kc < 12 ? kc : 12;
        for (; p < head; p++) {
            _mm_prefetch((const char *)(a + as * Z_PREFETCH_K), _MM_HINT_T0);
            Z_STEP_AT(0);
            Z_NEXT(1);
            _mm_prefetch((const char *)(c + p * ldc), Z_HINT_W);
            _mm_prefetch((const char *)(c + p * ldc + 31), Z_HINT_W);
        }
    }
    for (; p + 4 <= kc; p += 4) {
        /* the A panel streams from L2: a line ahead per pass (48 floats of
         * a packed panel, 4 per row in place) */
        _mm_prefetch((const char *)(a + as * Z_PREFETCH_K), _MM_HINT_T0);
        if (as != 1) { /* packed: three lines per pass */
            _mm_prefetch((const char *)(a + as * Z_PREFETCH_K + 16), _MM_HINT_T0);
            _mm_prefetch((const char *)(a + as * Z_PREFETCH_K + 32), _MM_HINT_T0);
        }
        Z_STEP_AT(0); Z_STEP_AT(1); Z_STEP_AT(2); Z_STEP_AT(3);
        Z_NEXT(4);
    }
    for (; p < kc; p++) {
        Z_STEP_AT(0);
        Z_NEXT(1);
    }
    for (; p < 12 && !stream; p++) { /* short K: the rest of C */
        _mm_prefetch((const char *)(c + p * ldc), Z_HINT_W);
        _mm_prefetch((const char *)(c + p * ldc + 31), Z_HINT_W);
    }
    Z_STORE(0); Z_STORE(1); Z_STORE(2); Z_STORE(3); Z_STORE(4); Z_STORE(5);
    Z_STORE(6); Z_STORE(7); Z_STORE(8); Z_STORE(9); Z_STORE(10); Z_STORE(11);
}

__attribute__((target("avx512f,avx512dq,avx2,fma,prfchw"))) static void
ukernel_avx512(int64_t kc, const float *a, int64_t ar, int64_t as,
               const float *b, float *c, int64_t ldc, int init, const float *bias)
{
    if (ar == 1 && as == 12) /* a packed micro-panel */
        ukernel_avx512_body(kc, a, 1, 12, b, c, ldc, init, bias);
    else if (as == 1) /* rows where they are stored */
        ukernel_avx512_body(kc, a, ar, 1, b, c, ldc, init, bias);
    else /* any other layout (no caller today): correct, not tuned */
        ukernel_avx512_body(kc, a, ar, as, b, c, ldc, init, bias);
}
#undef Z_ROW
#undef Z_INIT
#undef Z_FMA
#undef Z_STORE
#undef Z_STEP_AT
#undef Z_NEXT
#undef Z_HINT_W
#undef Z_A
#undef Z_PREFETCH_K

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

/* the AVX-512 kernel can be switched off to compare it with AVX2 */
static int use_avx512 = 1;
void cllm_gemm_avx512(int on) { use_avx512 = on; }

static kernel_t pick_kernel(void)
{
    kernel_t k = {S_MR, S_NR, ukernel_scalar};
#if CLLM_X86
    if (cllm_simd_current >= CLLM_SIMD_AVX512 && use_avx512) {
        k.mr = 12;
        k.nr = 32;
        k.run = ukernel_avx512;
    } else if (cllm_simd_current >= CLLM_SIMD_AVX2) {
        k.mr = 6;
        k.nr = 16;
        k.run = ukernel_avx2;
    }
#endif
    return k;
}

/* ------------------------------------------------------------- packing ---- */
typedef struct {
    int trans_a, trans_b;
    int64_t m, n, k;
    const float *a, *b;
    int64_t lda, ldb;
    float *c;
    int64_t ldc;
    int accumulate;
    const float *bias;
    int stream; /* INIT_STREAM for the tiles that write C once (stream_ok) */
    int direct; /* A is read where it is stored, unpacked (direct_a) */
    int causal; /* CLLM_CAUSAL_*: the work a causal mask makes zero is skipped */
    int64_t shift;
    const cllm_act_epilogue *ep; /* run on each tile after its last K slice */
} gemm_t;

/* A rows [i0, i0 + mc) x cols [p0, p0 + kc) into MR-tall micro-panels. */
static void pack_a(const gemm_t *g, int mr, int64_t i0, int64_t mc, int64_t p0,
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
static void pack_b(const gemm_t *g, int nr, int64_t j0, int64_t panels, int64_t p0,
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
 * column jc, K slice [p0, p0 + kc). A comes packed at ap (as pack_a left
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
                    pack_a(g, kr->mr, i0 + ip, rows, p0, kc, edge);
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
 * transpose per block) but the kernel runs 2-3% slower on unpacked rows, so
 * it pays only when each A micro-panel meets few B panels: N <= 256
 * measured +6-17% on the model's products (N = 128, 256), N >= 384 -2-6%.
 * The multiply-adds are the same, in the same order: so are the bits. A
 * transposed A stays packed: reading it in place strides by lda per k,
 * which maps the panel onto a few L1 sets (measured 40% slower). */
#define DIRECT_MAX_N 256

static int direct_a(const gemm_t *g, const kernel_t *kr)
{
    return kr->mr == 12 && !g->trans_a && g->n <= DIRECT_MAX_N;
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
    kernel_t kr = pick_kernel();
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
            pack_b(&g, kr.nr, jc, panels, pc, kc, bp);
            for (int64_t ic = 0; ic < m; ic += MC_MAX) {
                int64_t mc = m - ic < MC_MAX ? m - ic : MC_MAX;
                if (!g.direct)
                    pack_a(&g, kr.mr, ic, mc, pc, kc, ap);
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
        pack_b(&j->g, j->kr.nr, q0 * j->kr.nr, panels < PREPACK_PANELS ? panels : PREPACK_PANELS,
               p0, kc, shared_slice(j, p0) + q0 * kc * j->kr.nr);
    } else { /* A rows [u * MC_MAX, ...) as MR-tall panels */
        int64_t i0 = u * MC_MAX, mc = j->g.m - i0 < MC_MAX ? j->g.m - i0 : MC_MAX;
        pack_a(&j->g, j->kr.mr, i0, mc, p0, kc, shared_slice(j, p0) + i0 * kc);
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
                    pack_a(g, kr->mr, ic, mc, p0, kc, own);
                macro(kr, g, ic, mc, 0, panels, p0, kc, own, shared, own);
            }
        } else { /* columns [lo, hi) against the packed A */
            /* after the packed B (NC_MAX columns at most): room for MR_MAX rows */
            float *edge = own + (NC_MAX + NR_MAX) * kc;
            for (int64_t jc = lo; jc < hi; jc += NC_MAX) {
                int64_t nc = hi - jc < NC_MAX ? hi - jc : NC_MAX;
                int64_t panels = (nc + kr->nr - 1) / kr->nr;
                pack_b(g, kr->nr, jc, panels, p0, kc, own);
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
    par_gemm j = {g, pick_kernel(), m > n, kc_for(k), 0, 0, 0, NULL, NULL, 0};
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
