/* The products of one (batch, head) pair of causal attention at AVX-512,
 * cut to attention's shapes (attention_blocks.c). attention.c runs a pair
 * through them when cllm_att_blocks_fit and the operands are finite;
 * otherwise through the GEMM (gemm.h), which gives the same bits.
 *
 * Operands of one pair: queries i < Tq, keys j < Tk, query i sees key
 * j <= i + shift (shift = Tk - Tq); P (Tq, Tk) is row-major, row stride Tk
 * (att or ds); x and y are (rows, HS) at row strides ldx, ldy. */
#ifndef CLLM_ATTENTION_BLOCKS_H
#define CLLM_ATTENTION_BLOCKS_H

#include "cllm.h"

/* Tq <= Tk, Tk and HS multiples of 16, each product's K one GEMM slice
 * (cllm_gemm_one_slice); 0 off x86 */
int cllm_att_blocks_fit(int64_t tq, int64_t tk, int64_t hs);

/* attention.c: 0 sends every pair through the GEMM, to compare the two;
 * returns the calls that took the blocks since the last call */
int64_t cllm_attention_blocks(int on);

#if CLLM_X86
/* s (Tq, Tk) = x y^T for the keys each query sees (scores, da; the others
 * may be left unwritten up to the next whole vector); work holds HS * Tk
 * floats */
void cllm_att_over_keys(const float *x, int64_t ldx, int64_t tq, const float *y,
                        int64_t ldy, int64_t tk, int64_t hs, int64_t shift, float *s,
                        float *work);

/* out (Tq, HS) = [scale *] P y, P zero past each row's last key (att v, ds k) */
void cllm_att_mix(const float *p, int64_t tq, int64_t tk, int64_t shift, const float *y,
                  int64_t ldy, int64_t hs, float *out, int64_t ldo, const float *scale);

/* out (Tk, HS) = [scale *] P^T y, P zero past each row's last key (att^T dout,
 * ds^T q) */
void cllm_att_mix_t(const float *p, int64_t tq, int64_t tk, int64_t shift, const float *y,
                    int64_t ldy, int64_t hs, float *out, int64_t ldo, const float *scale);
#endif

#endif
