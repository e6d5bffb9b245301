/* Decoding over a KV cache (cllm_mha_decode, cllm_attention_decode): each
 * new query attends over its (batch, head) pair's cached keys and values in
 * place, one pair per task, with the masked softmax rows of
 * attention_rows.c. */
#include "attention_parts.h"
#include "simd_math.h"

#include <math.h>
#include <string.h>

/* ------------------------------------------------- decoding over a cache ---- */
/* One decoding step of multi-head attention straight from the fused QKV
 * projection: the new tokens' keys and values are written into the cache
 * rows [start, start + T) and each query attends over the cache in place,
 * so nothing of the cache is copied or packed; the output lands in token
 * layout (B, T, C), ready for the output projection. One (batch, head) pair
 * per task, as above: the bits do not depend on the thread count. */
typedef struct {
    const float *qkv;
    float *kc, *vc, *out, *att;
    int64_t nh, t, hs, t_max, start;
    float scale;
    int simd;
} decode_job;

static inline __attribute__((always_inline)) float dot_plain(const float *a,
                                                             const float *b, int64_t n)
{
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++)
        s = a[i] * b[i] + s;
    return s;
}

static inline __attribute__((always_inline)) void axpy_plain(float a, const float *x,
                                                             float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = a * x[i] + y[i];
}

#if CLLM_X86
CLLM_AVX2 static inline float dot_avx2(const float *a, const float *b, int64_t n)
{
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    return cllm_hsum256(acc) + dot_plain(a + i, b + i, n - i);
}

CLLM_AVX2 static inline void axpy_avx2(float a, const float *x, float *y, int64_t n)
{
    __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i),
                                                _mm256_loadu_ps(y + i)));
    axpy_plain(a, x + i, y + i, n - i);
}

/* the pair's queries, with every loop compiled for AVX2 */
CLLM_AVX2 static void decode_pair_avx2(const decode_job *j, const float *kp,
                                       const float *vp, int64_t bi, int64_t h)
{
    int64_t c = j->nh * j->hs, tk = j->start + j->t;
    for (int64_t i = 0; i < j->t; i++) {
        const float *q = j->qkv + (bi * j->t + i) * 3 * c + h * j->hs;
        float *s = j->att + ((bi * j->nh + h) * j->t + i) * tk;
        float *o = j->out + (bi * j->t + i) * c + h * j->hs;
        int64_t limit = j->start + i + 1; /* causal: the cache and itself */
        for (int64_t k = 0; k < limit; k++)
            s[k] = dot_avx2(q, kp + k * j->hs, j->hs);
        cllm_att_row_avx2(s, tk, limit, NULL, j->scale);
        memset(o, 0, (size_t)j->hs * sizeof(float));
        for (int64_t k = 0; k < limit; k++)
            axpy_avx2(s[k], vp + k * j->hs, o, j->hs);
    }
}
#endif

static void decode_pair_scalar(const decode_job *j, const float *kp, const float *vp,
                               int64_t bi, int64_t h)
{
    int64_t c = j->nh * j->hs, tk = j->start + j->t;
    for (int64_t i = 0; i < j->t; i++) {
        const float *q = j->qkv + (bi * j->t + i) * 3 * c + h * j->hs;
        float *s = j->att + ((bi * j->nh + h) * j->t + i) * tk;
        float *o = j->out + (bi * j->t + i) * c + h * j->hs;
        int64_t limit = j->start + i + 1;
        for (int64_t k = 0; k < limit; k++)
            s[k] = dot_plain(q, kp + k * j->hs, j->hs);
        cllm_att_row_scalar(s, tk, limit, NULL, j->scale);
        memset(o, 0, (size_t)j->hs * sizeof(float));
        for (int64_t k = 0; k < limit; k++)
            axpy_plain(s[k], vp + k * j->hs, o, j->hs);
    }
}

static void decode_task(void *arg, int64_t p, int worker)
{
    const decode_job *j = arg;
    int64_t bi = p / j->nh, h = p % j->nh, c = j->nh * j->hs;
    float *kp = j->kc + p * j->t_max * j->hs, *vp = j->vc + p * j->t_max * j->hs;
    size_t bytes = (size_t)j->hs * sizeof(float);
    (void)worker;
    for (int64_t i = 0; i < j->t; i++) { /* append this head's new rows */
        const float *row = j->qkv + (bi * j->t + i) * 3 * c + h * j->hs;
        memcpy(kp + (j->start + i) * j->hs, row + c, bytes);
        memcpy(vp + (j->start + i) * j->hs, row + 2 * c, bytes);
    }
#if CLLM_X86
    if (j->simd >= CLLM_SIMD_AVX2) {
        decode_pair_avx2(j, kp, vp, bi, h);
        return;
    }
#endif
    decode_pair_scalar(j, kp, vp, bi, h);
}

int cllm_attention_decode(const float *qkv, int64_t b, int64_t t, int64_t nh,
                          int64_t hs, float *k_cache, float *v_cache, int64_t t_max,
                          int64_t start, float scale, float *out, float *att)
{
    CLLM_CHECK(qkv && k_cache && v_cache && out && att);
    CLLM_CHECK(b >= 1 && t >= 1 && nh >= 1 && hs >= 1 && start >= 0);
    CLLM_CHECK(start + t <= t_max);
    decode_job j = {qkv, k_cache, v_cache, out, att, nh, t, hs, t_max, start, scale,
                    cllm_simd_current};
    int64_t pairs = b * nh;
    cllm_parallel(pairs, cllm_threads_for(pairs * t * (start + t) * hs, (int64_t)1 << 16),
                  decode_task, &j);
    return CLLM_OK;
}

int cllm_mha_decode(const float *x, const float *w_qkv, const float *b_qkv,
                    const float *w_proj, const float *b_proj, int64_t b, int64_t t,
                    int64_t nh, int64_t hs, float *k_cache, float *v_cache,
                    int64_t t_max, int64_t start, float scale, float *qkv,
                    float *merged, float *att, float *y)
{
    CLLM_CHECK(nh >= 1 && hs >= 1 && b >= 1 && t >= 1);
    int64_t c = nh * hs;
    int status = cllm_linear_forward(x, w_qkv, b_qkv, qkv, b * t, c, 3 * c);
    if (status == CLLM_OK)
        status = cllm_attention_decode(qkv, b, t, nh, hs, k_cache, v_cache, t_max,
                                       start, scale, merged, att);
    if (status == CLLM_OK)
        status = cllm_linear_forward(merged, w_proj, b_proj, y, b * t, c, c);
    return status;
}
