/* What the loss kernels share across their files: losses.c (softmax family,
 * cross-entropy) and losses_regression.c (MSE, L1, Huber). */
#ifndef CLLM_LOSSES_PARTS_H
#define CLLM_LOSSES_PARTS_H

#include "cllm.h"

#define ELEM_BLOCK 16384 /* elements per block of a reduction over elements */

enum { RED_MEAN = 0, RED_SUM = 1, RED_NONE = 2 };

#endif
