/* What gemm.c shares with the files that hold its micro-kernels
 * (gemm_ukernels.c) and its packing (gemm_pack.c): the largest tile, the
 * micro-kernel's contract and the description of one product. Internal to
 * the GEMM: other components include gemm.h. */
#ifndef CLLM_GEMM_PARTS_H
#define CLLM_GEMM_PARTS_H

#include "gemm.h"

#define MR_MAX 16 /* rows of the tallest micro-kernel tile */
#define NR_MAX 32 /* columns of the widest */

enum { INIT_ZERO = 0, INIT_LOAD = 1, INIT_BIAS = 2 };
/* or'ed into init for the AVX-512 kernel: store C with non-temporal stores
 * (a 64-byte aligned tile whose values are final; see stream_ok in gemm.c) */
#define INIT_STREAM 4

/* a(i, p) is a[i * ar + p * as]: (1, MR) for a packed micro-panel, (lda, 1)
 * for rows of A read where they are stored (see direct_a in gemm.c) */
typedef void (*ukernel_fn)(int64_t kc, const float *a, int64_t ar, int64_t as,
                           const float *b, float *c, int64_t ldc, int init,
                           const float *bias);

typedef struct {
    int mr, nr;
    ukernel_fn run;
} kernel_t;

/* One product: the arguments of cllm_sgemm and what the driver (gemm.c)
 * decided about them. */
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

/* the micro-kernel of the current SIMD level (gemm_ukernels.c) */
kernel_t cllm_gemm_pick_kernel(void);

/* A rows [i0, i0 + mc) x cols [p0, p0 + kc) of op(A) into MR-tall
 * micro-panels at dst (gemm_pack.c) */
void cllm_gemm_pack_a(const gemm_t *g, int mr, int64_t i0, int64_t mc, int64_t p0,
                      int64_t kc, float *dst);

/* `panels` NR-wide micro-panels of op(B) from column j0 on, K slice
 * [p0, p0 + kc), panel q at dst + q * kc * nr (gemm_pack.c) */
void cllm_gemm_pack_b(const gemm_t *g, int nr, int64_t j0, int64_t panels, int64_t p0,
                      int64_t kc, float *dst);

#endif
