/* Shared declarations of the C backend: the public API (../_cdef.h), the
 * status codes, the SIMD dispatch state and the small helpers every
 * component file uses. Every .c file includes this header first, so the
 * feature-test macro below is seen before any system header. */
#ifndef CLLM_H
#define CLLM_H

#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE 1 /* MAP_ANONYMOUS, madvise */

#include <stddef.h>
#include <stdint.h>

#include "../_cdef.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define CLLM_X86 1
#include <immintrin.h>
/* Per-function targets: the module is compiled for baseline x86-64 and these
 * functions are only called after cpu.c has checked the CPU supports them. */
#define CLLM_AVX2 __attribute__((target("avx2,fma")))
#define CLLM_AVX512 __attribute__((target("avx512f,avx512dq,avx2,fma")))
#else
#define CLLM_X86 0
#endif

/* The SIMD level kernels dispatch on (cpu.c); read once per call. */
extern int cllm_simd_current;

/* Threads a kernel should use for `work` units when one unit is worth
 * `grain` units of parallel work; 1 for small problems. Results never depend
 * on it: every parallel reduction in this backend splits work into blocks of
 * a size fixed by the problem, not by the thread count. */
int cllm_threads_for(int64_t work, int64_t grain);

/* threads.c: run fn(ctx, chunk, worker) for every chunk in [0, chunks) on at
 * most nt threads; worker < nt numbers the thread (for scratch memory). */
typedef void (*cllm_chunk_fn)(void *ctx, int64_t chunk, int worker);
void cllm_parallel(int64_t chunks, int nt, cllm_chunk_fn fn, void *ctx);

/* Chunks are claimed dynamically: the two cores this runs on are shared, and
 * a thread that loses its core must not stall the others. Which thread
 * computes a chunk never changes its bits. */

/* size checks shared by every entry */
#define CLLM_CHECK(cond)             \
    do {                             \
        if (!(cond))                 \
            return CLLM_ERR_ARG;     \
    } while (0)

/* checks.c: 1 iff none of x[0, len) is NaN or +-inf (one block, this thread) */
int cllm_finite_span(const float *x, int64_t len);
/* checks.c: the same for rows x cols floats at row stride ld */
int cllm_finite_rows(const float *x, int64_t rows, int64_t cols, int64_t ld);

void *cllm_alloc(size_t bytes);
void cllm_free(void *p);

#endif
