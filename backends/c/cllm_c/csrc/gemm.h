/* The GEMM shared by several components: ffn.c (linear), attention.c (scores
 * and weighted sums, per head) and, through linear, the model's projections.
 * It is its own file because no single spec component owns it. */
#ifndef CLLM_GEMM_H
#define CLLM_GEMM_H

#include "cllm.h"

/* Workspace (in floats) cllm_sgemm_serial needs for an (m, n, k) product. */
size_t cllm_gemm_work_floats(int64_t m, int64_t n, int64_t k);

/* Single-threaded GEMM for callers that are already inside a parallel loop
 * (one attention head per thread). Same contract and same bits as
 * cllm_sgemm; `work` holds cllm_gemm_work_floats(m, n, k) floats. */
void cllm_sgemm_serial(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                       const float *a, int64_t lda, const float *b, int64_t ldb,
                       float *c, int64_t ldc, int accumulate, const float *bias,
                       float *work);

#endif
