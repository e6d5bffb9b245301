/* What the feed-forward kernels share across their files: ffn.c (linear,
 * column sums, the block), ffn_act.c (activations) and ffn_layernorm.c. */
#ifndef CLLM_FFN_PARTS_H
#define CLLM_FFN_PARTS_H

#include "cllm.h"

#define ELEM_BLOCK 16384

enum { ACT_RELU = 0, ACT_GELU = 1, ACT_GELU_TANH = 2 };

/* out[j] = sum_r x[r, j] (of x[r, j] * y[r, j] when y != NULL), in double,
 * rows in order (ffn.c) */
int cllm_column_reduce(const float *x, const float *y, float *out, int64_t rows,
                       int64_t cols);

/* the float64 twin: one thread, rows in order (ffn.c) */
void cllm_column_sums_f64(const double *x, const double *y, double *out, int64_t rows,
                          int64_t cols);

#endif
