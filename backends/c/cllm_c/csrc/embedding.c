/* embedding: token + position lookup, and the scatter-add backward.
 *
 * Ids are checked against [0, V) here again (the wrapper checks them first):
 * C never reads outside a table. The backward gives every thread a range of
 * channels and walks the tokens in order, so each dwte[v, c] receives its
 * contributions in token order whatever the thread count (and without
 * atomics). */
#include "cllm.h"

#include <string.h>

#define COL_CHUNK 64

static int ids_ok(const int64_t *ids, int64_t count, int64_t v)
{
    for (int64_t i = 0; i < count; i++)
        if (ids[i] < 0 || ids[i] >= v)
            return 0;
    return 1;
}

static inline __attribute__((always_inline)) void
embed_row(const float *te, const float *pe, float *x, int64_t c)
{
    for (int64_t j = 0; j < c; j++)
        x[j] = te[j] + pe[j];
}

static void embed_row_scalar(const float *te, const float *pe, float *x, int64_t c)
{
    embed_row(te, pe, x, c);
}

#if CLLM_X86
CLLM_AVX2 static void embed_row_avx2(const float *te, const float *pe, float *x, int64_t c)
{
    embed_row(te, pe, x, c);
}
#endif

typedef struct {
    const int64_t *ids;
    const float *wte, *wpe, *dx;
    float *x, *dwte, *dwpe;
    int64_t b, t, c, pos_offset;
    void (*row)(const float *, const float *, float *, int64_t);
    void (*add)(float *, const float *, int64_t);
} embed_job;

#define EMBED_ROWS 64

static void embed_forward_task(void *arg, int64_t q, int worker)
{
    const embed_job *j = arg;
    int64_t c = j->c, n = j->b * j->t;
    int64_t end = (q + 1) * EMBED_ROWS < n ? (q + 1) * EMBED_ROWS : n;
    (void)worker;
    for (int64_t i = q * EMBED_ROWS; i < end; i++)
        j->row(j->wte + j->ids[i] * c, j->wpe + (j->pos_offset + i % j->t) * c,
               j->x + i * c, c);
}

int cllm_embedding_forward(const int64_t *ids, const float *wte, const float *wpe,
                           int64_t b, int64_t t, int64_t c, int64_t v,
                           int64_t t_max, int64_t pos_offset, float *x)
{
    CLLM_CHECK(ids && wte && wpe && x && b >= 0 && t >= 0 && c >= 1 && v >= 1);
    CLLM_CHECK(pos_offset >= 0 && pos_offset + t <= t_max);
    if (!ids_ok(ids, b * t, v))
        return CLLM_ERR_ID_RANGE;
    embed_job j = {ids, wte, wpe, NULL, x, NULL, NULL, b, t, c, pos_offset,
                   embed_row_scalar, NULL};
#if CLLM_X86
    if (cllm_simd_current >= CLLM_SIMD_AVX2)
        j.row = embed_row_avx2;
#endif
    cllm_parallel((b * t + EMBED_ROWS - 1) / EMBED_ROWS,
                  cllm_threads_for(b * t * c, 16384), embed_forward_task, &j);
    return CLLM_OK;
}

static inline __attribute__((always_inline)) void
add_cols(float *dst, const float *src, int64_t width)
{
    for (int64_t j = 0; j < width; j++)
        dst[j] += src[j];
}

static void add_cols_scalar(float *d, const float *s, int64_t w) { add_cols(d, s, w); }
#if CLLM_X86
CLLM_AVX2 static void add_cols_avx2(float *d, const float *s, int64_t w) { add_cols(d, s, w); }
#endif

/* one chunk of channels, every token in order */
static void embed_backward_task(void *arg, int64_t q, int worker)
{
    const embed_job *j = arg;
    int64_t c = j->c, c0 = q * COL_CHUNK, w = c - c0 < COL_CHUNK ? c - c0 : COL_CHUNK;
    (void)worker;
    for (int64_t i = 0; i < j->b * j->t; i++) {
        const float *g = j->dx + i * c + c0;
        j->add(j->dwte + j->ids[i] * c + c0, g, w);
        j->add(j->dwpe + (j->pos_offset + i % j->t) * c + c0, g, w);
    }
}

int cllm_embedding_backward(const float *dx, const int64_t *ids, int64_t b,
                            int64_t t, int64_t c, int64_t v, int64_t t_max,
                            int64_t pos_offset, float *dwte, float *dwpe)
{
    CLLM_CHECK(dx && ids && dwte && dwpe && b >= 0 && t >= 0 && c >= 1 && v >= 1);
    CLLM_CHECK(pos_offset >= 0 && pos_offset + t <= t_max);
    if (!ids_ok(ids, b * t, v))
        return CLLM_ERR_ID_RANGE;
    embed_job j = {ids, NULL, NULL, dx, NULL, dwte, dwpe, b, t, c, pos_offset, NULL,
                   add_cols_scalar};
#if CLLM_X86
    if (cllm_simd_current >= CLLM_SIMD_AVX2)
        j.add = add_cols_avx2;
#endif
    cllm_parallel((c + COL_CHUNK - 1) / COL_CHUNK, cllm_threads_for(b * t * c, 16384),
                  embed_backward_task, &j);
    return CLLM_OK;
}

/* ------------------------------------------------------------- float64 ---- */
/* The float64 path: the same lookups and token-ordered sums, one thread. */
int cllm_embedding_forward_f64(const int64_t *ids, const double *wte,
                               const double *wpe, int64_t b, int64_t t, int64_t c,
                               int64_t v, int64_t t_max, int64_t pos_offset,
                               double *x)
{
    CLLM_CHECK(ids && wte && wpe && x && b >= 0 && t >= 0 && c >= 1 && v >= 1);
    CLLM_CHECK(pos_offset >= 0 && pos_offset + t <= t_max);
    if (!ids_ok(ids, b * t, v))
        return CLLM_ERR_ID_RANGE;
    for (int64_t i = 0; i < b * t; i++)
        for (int64_t j = 0; j < c; j++)
            x[i * c + j] = wte[ids[i] * c + j] + wpe[(pos_offset + i % t) * c + j];
    return CLLM_OK;
}

int cllm_embedding_backward_f64(const double *dx, const int64_t *ids, int64_t b,
                                int64_t t, int64_t c, int64_t v, int64_t t_max,
                                int64_t pos_offset, double *dwte, double *dwpe)
{
    CLLM_CHECK(dx && ids && dwte && dwpe && b >= 0 && t >= 0 && c >= 1 && v >= 1);
    CLLM_CHECK(pos_offset >= 0 && pos_offset + t <= t_max);
    if (!ids_ok(ids, b * t, v))
        return CLLM_ERR_ID_RANGE;
    for (int64_t i = 0; i < b * t; i++)
        for (int64_t j = 0; j < c; j++) {
            dwte[ids[i] * c + j] += dx[i * c + j];
            dwpe[(pos_offset + i % t) * c + j] += dx[i * c + j];
        }
    return CLLM_OK;
}
