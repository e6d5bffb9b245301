/* The GEMM shared by several components: ffn.c (linear), attention.c (scores
 * and weighted sums, per head) and, through linear, the model's projections.
 * It is its own file because no single spec component owns it. */
#ifndef CLLM_GEMM_H
#define CLLM_GEMM_H

#include "cllm.h"

/* 1 iff a product with inner dimension k is one K slice: each output one
 * chain of fmas from 0 (a longer K sums each slice from 0 and adds it to C,
 * so a kernel that must give the GEMM's bits has to stay within one). */
int cllm_gemm_one_slice(int64_t k);

/* Workspace (in floats) cllm_sgemm_serial needs for an (m, n, k) product. */
size_t cllm_gemm_work_floats(int64_t m, int64_t n, int64_t k);

/* Single-threaded GEMM for callers that are already inside a parallel loop
 * (one attention head per thread). Same contract and same bits as
 * cllm_sgemm; `work` holds cllm_gemm_work_floats(m, n, k) floats. */
void cllm_sgemm_serial(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                       const float *a, int64_t lda, const float *b, int64_t ldb,
                       float *c, int64_t ldc, int accumulate, const float *bias,
                       float *work);

/* Attention's products under a causal mask with offset `shift` (query i
 * sees key j <= i + shift), skipping the work the mask makes zero:
 *   CLLM_CAUSAL_COLS    C(i, j) is wanted only for j <= i + shift; the other
 *                       tiles are not written (scores before the softmax)
 *   CLLM_CAUSAL_PREFIX  A(i, p) = 0 for p > i + shift   (att @ v, ds @ k)
 *   CLLM_CAUSAL_SUFFIX  A(i, p) = 0 for p < i - shift   (att^T @ dout, ds^T @ q)
 * Otherwise as cllm_sgemm_serial with accumulate 0 and no bias. The results
 * are the bits of the full product when B is finite (a skipped 0 * x adds
 * a zero; 0 * inf would have been NaN): the caller checks. */
/* An elementwise step run on each finished tile of C while the tile is still
 * in L1 (the feed-forward block's activation, see ffn.c), which saves a
 * separate pass over an (N, F) array that does not stay in L2:
 *   forward  (x == NULL): out = act(C), out laid out as C (ldc)
 *   backward (x != NULL): C = C * act'(x), x laid out as C
 * kind is an activation of ffn.c (relu, gelu, gelu_tanh). The per-element
 * code is that of cllm_activation_forward / _backward: the same bits. */
typedef struct {
    int kind;
    const float *x;
    float *out;
} cllm_act_epilogue;

/* the epilogue on rows x cols of C at c, element (0, 0) at offset off of C */
void cllm_act_tile(const cllm_act_epilogue *e, float *c, int64_t off, int64_t ldc,
                   int64_t rows, int64_t cols);

/* cllm_sgemm, then the epilogue on C (NULL: none) */
int cllm_sgemm_act(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                   const float *a, int64_t lda, const float *b, int64_t ldb, float *c,
                   int64_t ldc, int accumulate, const float *bias,
                   const cllm_act_epilogue *ep);

enum { CLLM_CAUSAL_NONE = 0, CLLM_CAUSAL_COLS, CLLM_CAUSAL_PREFIX, CLLM_CAUSAL_SUFFIX };

void cllm_sgemm_causal(int causal, int64_t shift, int trans_a, int trans_b, int64_t m,
                       int64_t n, int64_t k, const float *a, int64_t lda, const float *b,
                       int64_t ldb, float *c, int64_t ldc, float *work);

#endif
