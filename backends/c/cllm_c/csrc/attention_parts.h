/* What attention's files share: the row kernels of attention_rows.c, used by
 * the forward and backward (attention.c) and by decoding (attention_decode.c). */
#ifndef CLLM_ATTENTION_PARTS_H
#define CLLM_ATTENTION_PARTS_H

#include "cllm.h"

/* The masked softmax of one row of scores, in place: s[0, tk) holds raw
 * scores; keys j >= limit or with mask[j] == 0 (mask may be NULL) are hidden
 * and get exactly 0; scores are multiplied by scale first. A row that sees no
 * key becomes zeros. */
void cllm_att_row_scalar(float *s, int64_t tk, int64_t limit, const uint8_t *mask,
                         float scale);
#if CLLM_X86
void cllm_att_row_avx2(float *s, int64_t tk, int64_t limit, const uint8_t *mask,
                       float scale);
#endif

/* The softmax gradient of one row, in place: d = a * (d - sum(a * d)), the
 * sum in four double chains (j mod 4) added in a fixed order; both levels
 * give the same bits. */
void cllm_att_grad_row_scalar(const float *a, float *d, int64_t n);
#if CLLM_X86
void cllm_att_grad_row_avx2(const float *a, float *d, int64_t n);
#endif

/* rows x cols at row stride ld, times s (one multiply per element: the same
 * bits at every SIMD level) */
void cllm_att_scale_rows(float *x, int64_t rows, int64_t cols, int64_t ld, float s,
                         int simd);

#endif
