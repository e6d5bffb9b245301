/* What the loss kernels share across their files: losses_softmax.c (softmax
 * family, and the row kernels below), losses.c (cross-entropy) and
 * losses_regression.c (MSE, L1, Huber). Only the softmax family sees
 * non-finite inputs: the wrapper rejects them for the cross-entropy and the
 * regression losses. */
#ifndef CLLM_LOSSES_PARTS_H
#define CLLM_LOSSES_PARTS_H

#include "cllm.h"

#define ELEM_BLOCK 16384 /* elements per block of a reduction over elements */

enum { RED_MEAN = 0, RED_SUM = 1, RED_NONE = 2 };

#if CLLM_X86
/* adds the 8 floats of v to the double sums of lanes 0-3 (a0) and 4-7 (a1);
 * inline, as it runs once per vector of the rows' hot loops */
CLLM_AVX2 static inline void cllm_loss_add_pd8(__m256 v, __m256d *a0, __m256d *a1)
{
    *a0 = _mm256_add_pd(*a0, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    *a1 = _mm256_add_pd(*a1, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
}

/* The sum of exp(x - m) over a row of v, in double, per lane then the lanes
 * in a fixed order; stores each exp(x - m) into e when e != NULL (e may be
 * x: each vector is read before its exps are written). The AVX2 entry runs
 * the AVX-512 loop when that level is in use; both give the same bits
 * (losses_softmax.c). */
double cllm_loss_sum_exp_avx2(const float *x, float m, float *e, int64_t v);
double cllm_loss_sum_exp_avx512(const float *x, float m, float *e, int64_t v);

/* y[0, v) *= s (losses_softmax.c) */
void cllm_loss_scale_row_avx2(float *y, float s, int64_t v);
#endif

#endif
