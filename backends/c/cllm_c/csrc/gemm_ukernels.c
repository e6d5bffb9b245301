/* The GEMM's micro-kernels (gemm.c runs the loops around them): each
 * updates one MR x NR tile of C, held in registers, from an A micro-panel
 * and a packed B micro-panel: AVX-512 12 x 32, AVX2+FMA 6 x 16 and the
 * scalar twin 6 x 16. */
#include "gemm_parts.h"
#include "simd_math.h"

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
 * (see aligned_work in gemm.c) */
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
#endif /* CLLM_X86 */

/* the AVX-512 kernel can be switched off to compare it with AVX2 */
static int use_avx512 = 1;
void cllm_gemm_avx512(int on) { use_avx512 = on; }

kernel_t cllm_gemm_pick_kernel(void)
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
