/* attention: scaled dot-product attention forward and backward, head
 * split/merge for multi-head attention, and the KV cache write; decoding
 * over a cache is in attention_decode.c, the row kernels in attention_rows.c.
 *
 * One (batch, head) pair per task: its score matrix and weighted sums are
 * GEMMs (gemm.c, single-threaded inside the task) or the blocks of
 * attention_blocks.c, and its masked softmax a row kernel with a scalar
 * twin. Pairs are independent, so the bits never depend on the thread
 * count. Masked entries get probability exactly 0 and a query that sees no
 * key gets a zero row (the spec's deviation from PyTorch's NaN). */
#include "attention_blocks.h"
#include "attention_parts.h"
#include "gemm.h"
#include "simd_math.h"

#include <math.h>
#include <string.h>

/* ----------------------------------------------------------- forward ---- */
static int check_dims(int64_t b, int64_t nh, int64_t tq, int64_t tk, int64_t hs,
                      int64_t kv_rows)
{
    return b >= 1 && nh >= 1 && tq >= 1 && tk >= 1 && hs >= 1 && kv_rows >= tk;
}

/* where pair p = (batch p / NH, head p % NH) of an operand starts */
static inline int64_t pair_at(cllm_layout l, int64_t p, int64_t nh)
{
    return (p / nh) * l.batch + (p % nh) * l.head;
}

/* (B, NH, rows, HS) stored contiguously */
static cllm_layout heads_layout(int64_t nh, int64_t rows, int64_t hs)
{
    cllm_layout l = {nh * rows * hs, rows * hs, hs};
    return l;
}

/* Operand layouts. The GEMMs read and write through leading dimensions, so
 * a layout changes which floats are read, never the arithmetic: the results
 * are the same bits in every layout. */
enum { L_Q, L_K, L_V, L_OUT, L_DQ, L_DK, L_DV, L_COUNT };

typedef struct {
    const float *q, *k, *v, *att_in, *dout;
    const uint8_t *mask;
    int64_t nh, tq, tk, hs;
    int causal, simd;
    int blocks; /* finite pairs go through attention_blocks.c */
    float scale;
    float *out, *att, *dq, *dk, *dv, *work;
    size_t per, gemm_floats;
    void (*grad_row)(const float *, float *, int64_t);
    cllm_layout lay[L_COUNT]; /* L_OUT is out (forward) or dout (backward) */
} att_job;

/* the masked softmax of each of a pair's rows of scores, in place */
static void softmax_rows(const att_job *j, float *ap, const uint8_t *mp)
{
    int64_t tq = j->tq, tk = j->tk;
    for (int64_t i = 0; i < tq; i++) {
        /* bottom-right causal alignment: query i sees j <= i + Tk - Tq */
        int64_t limit = j->causal ? i + (tk - tq) + 1 : tk;
#if CLLM_X86
        if (j->simd >= CLLM_SIMD_AVX2) {
            cllm_att_row_avx2(ap + i * tk, tk, limit, mp, j->scale);
            continue;
        }
#endif
        cllm_att_row_scalar(ap + i * tk, tk, limit, mp, j->scale);
    }
}

static void att_forward_task(void *arg, int64_t p, int worker)
{
    const att_job *j = arg;
    int64_t tq = j->tq, tk = j->tk, hs = j->hs, nh = j->nh;
    const cllm_layout *l = j->lay;
    float *w = j->work + j->per * (size_t)worker;
    const float *qp = j->q + pair_at(l[L_Q], p, nh);
    const float *kp = j->k + pair_at(l[L_K], p, nh), *vp = j->v + pair_at(l[L_V], p, nh);
    const uint8_t *mp = j->mask ? j->mask + (p / j->nh) * tk : NULL;
    float *ap = j->att + p * tq * tk, *op = j->out + pair_at(l[L_OUT], p, nh);
    int64_t shift = tk - tq;
#if CLLM_X86
    if (j->blocks) { /* checked after: see cllm_attention_blocks */
        cllm_att_over_keys(qp, l[L_Q].row, tq, kp, l[L_K].row, tk, hs, shift, ap, w);
        softmax_rows(j, ap, mp);
        cllm_att_mix(ap, tq, tk, shift, vp, l[L_V].row, hs, op, l[L_OUT].row, NULL);
        if (cllm_finite_rows(op + (tq - 1) * l[L_OUT].row, 1, hs, l[L_OUT].row))
            return;
    }
#endif
    /* out = att v: past a row's last visible key att is 0, and 0 * v adds
     * nothing unless v holds an inf or NaN */
    int skip = j->causal && cllm_finite_rows(vp, tk, hs, l[L_V].row);
    /* scores (Tq, Tk) = q (Tq, HS) k^T (HS, Tk); under a causal mask the
     * hidden ones are not computed (the softmax never reads them) */
    cllm_sgemm_causal(j->causal ? CLLM_CAUSAL_COLS : CLLM_CAUSAL_NONE, shift, 0, 1, tq, tk,
                      hs, qp, l[L_Q].row, kp, l[L_K].row, ap, tk, w);
    softmax_rows(j, ap, mp);
    /* out (Tq, HS) = att (Tq, Tk) v (Tk, HS) */
    cllm_sgemm_causal(skip ? CLLM_CAUSAL_PREFIX : CLLM_CAUSAL_NONE, shift, 0, 0, tq, hs, tk,
                      ap, tk, vp, l[L_V].row, op, l[L_OUT].row, w);
}

/* A pair's products go through attention_blocks.c where they fit (causal,
 * no padding mask, AVX-512); cllm_attention_blocks(0) sends them all
 * through the GEMM, so the two can be compared. It returns how many forward
 * or backward calls ran with the blocks since it was last called, so a test
 * can tell that they were used at all.
 *
 * The blocks skip what the causal mask zeroes, which gives the whole
 * products' bits only when the operands those zeros would multiply are
 * finite (0 * inf is NaN). The GEMM path checks its operands first, row by
 * row; the blocks run unchecked and then read a few output rows, each a sum
 * over every row of an operand: the forward's last query row (it sees every
 * key: att v over all of v), the backward's first rows of dv (att^T dout
 * over all of dout) and dk (ds^T q over all of q, and ds over dout and v)
 * and last row of dq (ds k over all of k, its ds row over all of v). A
 * non-finite operand makes such a row non-finite: x * inf and 0 * NaN are
 * not finite, nor is any float sum with such a term. So finite rows prove
 * finite operands, and any other pair starts again on the GEMM path, which
 * then decides as it always did (an overflow with finite operands, or a
 * non-finite att, gets the blocks' bits from the GEMM's skipping products).
 * Those checks read 5 x Tk rows of a pair, one row stride apart; these read
 * 4 rows. */
static int use_blocks = 1;
static int64_t block_calls;

int64_t cllm_attention_blocks(int on)
{
    use_blocks = on;
    return __atomic_exchange_n(&block_calls, 0, __ATOMIC_RELAXED);
}

static int blocks_for(const att_job *j)
{
    int on = use_blocks && j->causal && !j->mask && j->simd >= CLLM_SIMD_AVX512
             && cllm_att_blocks_fit(j->tq, j->tk, j->hs);
    if (on)
        __atomic_add_fetch(&block_calls, 1, __ATOMIC_RELAXED);
    return on;
}

/* per-worker floats: a GEMM's workspace, and the blocks' transposed keys */
static size_t pair_floats(const att_job *j, int64_t m, int64_t nk)
{
    size_t gemm = cllm_gemm_work_floats(m, nk, nk);
    size_t keys = (size_t)(j->hs * j->tk);
    return gemm > keys ? gemm : keys;
}

static int run_forward(att_job *j, int64_t b)
{
    int64_t tq = j->tq, tk = j->tk, hs = j->hs, pairs = b * j->nh;
    int nt = cllm_threads_for(pairs * tq * tk * hs, (int64_t)1 << 16);
    j->simd = cllm_simd_current;
    j->blocks = blocks_for(j);
    j->per = pair_floats(j, tq, tk > hs ? tk : hs);
    j->work = cllm_alloc(j->per * (size_t)nt * sizeof(float));
    if (!j->work)
        return CLLM_ERR_NOMEM;
    cllm_parallel(pairs, nt, att_forward_task, j);
    cllm_free(j->work);
    return CLLM_OK;
}

int cllm_attention_forward(const float *q, const float *k, const float *v,
                           const uint8_t *mask, int64_t b, int64_t nh, int64_t tq,
                           int64_t tk, int64_t hs, int64_t kv_rows, int causal,
                           float scale, float *out, float *att)
{
    CLLM_CHECK(q && k && v && out && att && check_dims(b, nh, tq, tk, hs, kv_rows));
    CLLM_CHECK(!causal || tq <= tk);
    att_job j = {0};
    j.q = q, j.k = k, j.v = v, j.mask = mask, j.out = out, j.att = att;
    j.nh = nh, j.tq = tq, j.tk = tk, j.hs = hs, j.causal = causal, j.scale = scale;
    j.lay[L_Q] = heads_layout(nh, tq, hs);
    j.lay[L_K] = j.lay[L_V] = heads_layout(nh, kv_rows, hs);
    j.lay[L_OUT] = heads_layout(nh, tq, hs);
    return run_forward(&j, b);
}

/* every layout's strides can hold an (rows, HS) block per pair */
static int layouts_ok(const cllm_layout *lay, int n, int64_t hs)
{
    for (int i = 0; i < n; i++)
        if (lay[i].row < hs || lay[i].head < 0 || lay[i].batch < 0)
            return 0;
    return 1;
}

int cllm_attention_forward_ex(const float *q, const float *k, const float *v,
                              const cllm_layout *lay, int64_t b, int64_t nh,
                              int64_t tq, int64_t tk, int64_t hs, float scale,
                              float *out, float *att)
{
    CLLM_CHECK(q && k && v && lay && out && att && check_dims(b, nh, tq, tk, hs, tk));
    CLLM_CHECK(tq <= tk && layouts_ok(lay, 4, hs));
    att_job j = {0};
    j.q = q, j.k = k, j.v = v, j.out = out, j.att = att;
    j.nh = nh, j.tq = tq, j.tk = tk, j.hs = hs, j.causal = 1, j.scale = scale;
    for (int i = L_Q; i <= L_OUT; i++)
        j.lay[i] = lay[i];
    return run_forward(&j, b);
}

/* ---------------------------------------------------------- backward ---- */
/* ds = softmax'(da) row by row, in place over da; with `skip` (causal,
 * finite operands) the keys past each query's last are 0 without work */
static void softmax_grad_rows(const att_job *j, const float *ap, float *ds, int skip)
{
    int64_t tq = j->tq, tk = j->tk, shift = tk - tq;
    for (int64_t i = 0; i < tq; i++) {
        int64_t seen = skip && i + shift + 1 < tk ? i + shift + 1 : tk;
        j->grad_row(ap + i * tk, ds + i * tk, seen);
        memset(ds + i * tk + seen, 0, (size_t)(tk - seen) * sizeof(float));
    }
}

static void att_backward_task(void *arg, int64_t p, int worker)
{
    const att_job *j = arg;
    int64_t tq = j->tq, tk = j->tk, hs = j->hs, nh = j->nh;
    const cllm_layout *l = j->lay;
    int64_t ldo = l[L_OUT].row, ldq = l[L_Q].row, ldk = l[L_K].row, ldv = l[L_V].row;
    int64_t lddq = l[L_DQ].row, lddk = l[L_DK].row, lddv = l[L_DV].row;
    float *w = j->work + j->per * (size_t)worker;
    float *ds = w + j->gemm_floats;
    const float *g = j->dout + pair_at(l[L_OUT], p, nh), *qp = j->q + pair_at(l[L_Q], p, nh);
    const float *kp = j->k + pair_at(l[L_K], p, nh), *vp = j->v + pair_at(l[L_V], p, nh);
    const float *ap = j->att_in + p * tq * tk;
    float *dqp = j->dq + pair_at(l[L_DQ], p, nh), *dkp = j->dk + pair_at(l[L_DK], p, nh);
    float *dvp = j->dv + pair_at(l[L_DV], p, nh);
    int64_t shift = tk - tq;
#if CLLM_X86
    if (j->blocks) { /* checked after: see cllm_attention_blocks */
        cllm_att_mix_t(ap, tq, tk, shift, g, ldo, hs, dvp, lddv, NULL);
        cllm_att_over_keys(g, ldo, tq, vp, ldv, tk, hs, shift, ds, w);
        softmax_grad_rows(j, ap, ds, 1);
        cllm_att_mix(ds, tq, tk, shift, kp, ldk, hs, dqp, lddq, &j->scale);
        cllm_att_mix_t(ds, tq, tk, shift, qp, ldq, hs, dkp, lddk, &j->scale);
        if (cllm_finite_rows(dvp, 1, hs, lddv) && cllm_finite_rows(dkp, 1, hs, lddk)
            && cllm_finite_rows(dqp + (tq - 1) * lddq, 1, hs, lddq))
            return;
    }
#endif
    /* Under a causal mask att and ds are 0 past each query's last key: the
     * products skip those zeros (the same bits, see cllm_sgemm_causal) when
     * every operand they would have multiplied is finite */
    int skip = j->causal && cllm_finite_rows(g, tq, hs, ldo)
               && cllm_finite_rows(qp, tq, hs, ldq) && cllm_finite_rows(kp, tk, hs, ldk)
               && cllm_finite_rows(vp, tk, hs, ldv);
    int cols = skip ? CLLM_CAUSAL_COLS : CLLM_CAUSAL_NONE;
    int prefix = skip ? CLLM_CAUSAL_PREFIX : CLLM_CAUSAL_NONE;
    int suffix = skip ? CLLM_CAUSAL_SUFFIX : CLLM_CAUSAL_NONE;
    /* dv (Tk, HS) = att^T (Tk, Tq) dout (Tq, HS) */
    cllm_sgemm_causal(suffix, shift, 1, 0, tk, hs, tq, ap, tk, g, ldo, dvp, lddv, w);
    /* da (Tq, Tk) = dout (Tq, HS) v^T (HS, Tk) */
    cllm_sgemm_causal(cols, shift, 0, 1, tq, tk, hs, g, ldo, vp, ldv, ds, tk, w);
    softmax_grad_rows(j, ap, ds, skip);
    /* dq (Tq, HS) = ds (Tq, Tk) k (Tk, HS), then * scale */
    cllm_sgemm_causal(prefix, shift, 0, 0, tq, hs, tk, ds, tk, kp, ldk, dqp, lddq, w);
    cllm_att_scale_rows(dqp, tq, hs, lddq, j->scale, j->simd);
    /* dk (Tk, HS) = ds^T (Tk, Tq) q (Tq, HS), then * scale */
    cllm_sgemm_causal(suffix, shift, 1, 0, tk, hs, tq, ds, tk, qp, ldq, dkp, lddk, w);
    cllm_att_scale_rows(dkp, tk, hs, lddk, j->scale, j->simd);
}

static int run_backward(att_job *j, int64_t b)
{
    int64_t tq = j->tq, tk = j->tk, hs = j->hs, pairs = b * j->nh;
    int nt = cllm_threads_for(pairs * tq * tk * hs, (int64_t)1 << 16);
    int64_t big = tq > tk ? tq : tk;
    j->simd = cllm_simd_current;
    j->grad_row = cllm_att_grad_row_scalar;
#if CLLM_X86
    if (j->simd >= CLLM_SIMD_AVX2)
        j->grad_row = cllm_att_grad_row_avx2;
#endif
    j->blocks = blocks_for(j);
    j->gemm_floats = pair_floats(j, big, big > hs ? big : hs);
    j->per = j->gemm_floats + (size_t)(tq * tk) + 16;
    j->work = cllm_alloc(j->per * (size_t)nt * sizeof(float));
    if (!j->work)
        return CLLM_ERR_NOMEM;
    cllm_parallel(pairs, nt, att_backward_task, j);
    cllm_free(j->work);
    return CLLM_OK;
}

int cllm_attention_backward(const float *dout, const float *q, const float *k,
                            const float *v, const float *att, int64_t b, int64_t nh,
                            int64_t tq, int64_t tk, int64_t hs, int64_t kv_rows,
                            float scale, float *dq, float *dk, float *dv)
{
    CLLM_CHECK(dout && q && k && v && att && dq && dk && dv);
    CLLM_CHECK(check_dims(b, nh, tq, tk, hs, kv_rows));
    att_job j = {0};
    j.q = q, j.k = k, j.v = v, j.att_in = att, j.dout = dout;
    j.dq = dq, j.dk = dk, j.dv = dv;
    j.nh = nh, j.tq = tq, j.tk = tk, j.hs = hs, j.scale = scale;
    j.lay[L_Q] = j.lay[L_OUT] = j.lay[L_DQ] = heads_layout(nh, tq, hs);
    j.lay[L_K] = j.lay[L_V] = heads_layout(nh, kv_rows, hs);
    j.lay[L_DK] = j.lay[L_DV] = heads_layout(nh, tk, hs);
    return run_backward(&j, b);
}

int cllm_attention_backward_ex(const float *dout, const float *q, const float *k,
                               const float *v, const float *att,
                               const cllm_layout *lay, int64_t b, int64_t nh,
                               int64_t tq, int64_t tk, int64_t hs, float scale,
                               float *dq, float *dk, float *dv)
{
    CLLM_CHECK(dout && q && k && v && att && lay && dq && dk && dv);
    CLLM_CHECK(check_dims(b, nh, tq, tk, hs, tk) && layouts_ok(lay, L_COUNT, hs));
    att_job j = {0};
    j.q = q, j.k = k, j.v = v, j.att_in = att, j.dout = dout;
    j.dq = dq, j.dk = dk, j.dv = dv;
    j.nh = nh, j.tq = tq, j.tk = tk, j.hs = hs, j.scale = scale;
    j.causal = 1; /* as the forward_ex it follows */
    /* lay: dout, q, k, v, dq, dk, dv */
    j.lay[L_OUT] = lay[0], j.lay[L_Q] = lay[1], j.lay[L_K] = lay[2], j.lay[L_V] = lay[3];
    j.lay[L_DQ] = lay[4], j.lay[L_DK] = lay[5], j.lay[L_DV] = lay[6];
    return run_backward(&j, b);
}

/* ----------------------------------------------- head layout and cache ---- */
#define HEAD_ROWS 64

typedef struct {
    const float *src;
    float *dst;
    int64_t ld, offset, b, t, nh, hs;
    int to_heads;
} heads_job;

static void heads_task(void *arg, int64_t q, int worker)
{
    const heads_job *j = arg;
    int64_t end = (q + 1) * HEAD_ROWS < j->b * j->t ? (q + 1) * HEAD_ROWS : j->b * j->t;
    size_t bytes = (size_t)j->hs * sizeof(float);
    (void)worker;
    for (int64_t r = q * HEAD_ROWS; r < end; r++) {
        int64_t bi = r / j->t, ti = r % j->t;
        for (int64_t h = 0; h < j->nh; h++) {
            int64_t token = r * j->ld + j->offset + h * j->hs;
            int64_t head = ((bi * j->nh + h) * j->t + ti) * j->hs;
            if (j->to_heads)
                memcpy(j->dst + head, j->src + token, bytes);
            else
                memcpy(j->dst + token, j->src + head, bytes);
        }
    }
}

static int heads_run(heads_job *j)
{
    CLLM_CHECK(j->src && j->dst && j->b >= 1 && j->t >= 1 && j->nh >= 1 && j->hs >= 1);
    CLLM_CHECK(j->offset >= 0 && j->offset + j->nh * j->hs <= j->ld);
    int64_t rows = j->b * j->t;
    cllm_parallel((rows + HEAD_ROWS - 1) / HEAD_ROWS,
                  cllm_threads_for(rows * j->nh * j->hs, 1 << 16), heads_task, j);
    return CLLM_OK;
}

int cllm_tokens_to_heads(const float *x, int64_t ld, int64_t offset, int64_t b,
                         int64_t t, int64_t nh, int64_t hs, float *heads)
{
    heads_job j = {x, heads, ld, offset, b, t, nh, hs, 1};
    return heads_run(&j);
}

int cllm_heads_to_tokens(const float *heads, int64_t b, int64_t t, int64_t nh,
                         int64_t hs, float *x, int64_t ld, int64_t offset)
{
    heads_job j = {heads, x, ld, offset, b, t, nh, hs, 0};
    return heads_run(&j);
}

int cllm_kv_cache_write(const float *src, int64_t b, int64_t nh, int64_t tn,
                        int64_t hs, float *dst, int64_t t_max, int64_t start)
{
    CLLM_CHECK(src && dst && b >= 1 && nh >= 1 && tn >= 1 && hs >= 1);
    CLLM_CHECK(start >= 0 && start + tn <= t_max);
    for (int64_t p = 0; p < b * nh; p++)
        memcpy(dst + (p * t_max + start) * hs, src + p * tn * hs,
               (size_t)(tn * hs) * sizeof(float));
    return CLLM_OK;
}

/* ------------------------------------------------------------- float64 ---- */
/* The float64 path: the same per-pair steps on cllm_dgemm, one thread. */
static int check_f64(const void *a, const void *b, const void *c, const void *d,
                     const void *e)
{
    return a && b && c && d && e;
}

int cllm_attention_forward_f64(const double *q, const double *k, const double *v,
                               const uint8_t *mask, int64_t b, int64_t nh,
                               int64_t tq, int64_t tk, int64_t hs, int64_t kv_rows,
                               int causal, double scale, double *out, double *att)
{
    CLLM_CHECK(check_f64(q, k, v, out, att) && check_dims(b, nh, tq, tk, hs, kv_rows));
    CLLM_CHECK(!causal || tq <= tk);
    for (int64_t p = 0; p < b * nh; p++) {
        const uint8_t *mp = mask ? mask + (p / nh) * tk : NULL;
        double *ap = att + p * tq * tk;
        cllm_dgemm(0, 1, tq, tk, hs, q + p * tq * hs, hs, k + p * kv_rows * hs, hs, ap,
                   tk, 0, NULL);
        for (int64_t i = 0; i < tq; i++) {
            double *s = ap + i * tk, m = -INFINITY, sum = 0.0;
            int64_t limit = causal ? i + (tk - tq) + 1 : tk;
            for (int64_t j = 0; j < tk; j++) {
                s[j] = j < limit && (!mp || mp[j]) ? s[j] * scale : -INFINITY;
                m = s[j] > m ? s[j] : m;
            }
            for (int64_t j = 0; j < tk; j++) {
                s[j] = m == -INFINITY || s[j] == -INFINITY ? 0.0 : exp(s[j] - m);
                sum += s[j];
            }
            for (int64_t j = 0; sum > 0.0 && j < tk; j++)
                s[j] /= sum;
        }
        cllm_dgemm(0, 0, tq, hs, tk, ap, tk, v + p * kv_rows * hs, hs, out + p * tq * hs,
                   hs, 0, NULL);
    }
    return CLLM_OK;
}

int cllm_attention_backward_f64(const double *dout, const double *q,
                                const double *k, const double *v, const double *att,
                                int64_t b, int64_t nh, int64_t tq, int64_t tk,
                                int64_t hs, int64_t kv_rows, double scale,
                                double *dq, double *dk, double *dv)
{
    CLLM_CHECK(check_f64(dout, q, k, v, att) && check_f64(dq, dk, dv, dq, dq));
    CLLM_CHECK(check_dims(b, nh, tq, tk, hs, kv_rows));
    double *ds = cllm_alloc((size_t)(tq * tk) * sizeof(double));
    if (!ds)
        return CLLM_ERR_NOMEM;
    for (int64_t p = 0; p < b * nh; p++) {
        const double *g = dout + p * tq * hs, *ap = att + p * tq * tk;
        const double *kp = k + p * kv_rows * hs, *vp = v + p * kv_rows * hs;
        double *dqp = dq + p * tq * hs, *dkp = dk + p * tk * hs;
        cllm_dgemm(1, 0, tk, hs, tq, ap, tk, g, hs, dv + p * tk * hs, hs, 0, NULL);
        cllm_dgemm(0, 1, tq, tk, hs, g, hs, vp, hs, ds, tk, 0, NULL);
        for (int64_t i = 0; i < tq; i++) {
            double s = 0.0;
            for (int64_t j = 0; j < tk; j++)
                s += ap[i * tk + j] * ds[i * tk + j];
            for (int64_t j = 0; j < tk; j++)
                ds[i * tk + j] = ap[i * tk + j] * (ds[i * tk + j] - s);
        }
        cllm_dgemm(0, 0, tq, hs, tk, ds, tk, kp, hs, dqp, hs, 0, NULL);
        cllm_dgemm(1, 0, tk, hs, tq, ds, tk, q + p * tq * hs, hs, dkp, hs, 0, NULL);
        for (int64_t i = 0; i < tq * hs; i++)
            dqp[i] *= scale;
        for (int64_t i = 0; i < tk * hs; i++)
            dkp[i] *= scale;
    }
    cllm_free(ds);
    return CLLM_OK;
}

int cllm_tokens_to_heads_f64(const double *x, int64_t ld, int64_t offset, int64_t b,
                             int64_t t, int64_t nh, int64_t hs, double *heads)
{
    CLLM_CHECK(x && heads && b >= 1 && t >= 1 && nh >= 1 && hs >= 1);
    CLLM_CHECK(offset >= 0 && offset + nh * hs <= ld);
    for (int64_t r = 0; r < b * t; r++)
        for (int64_t h = 0; h < nh; h++)
            memcpy(heads + (((r / t) * nh + h) * t + r % t) * hs, x + r * ld + offset + h * hs,
                   (size_t)hs * sizeof(double));
    return CLLM_OK;
}

int cllm_heads_to_tokens_f64(const double *heads, int64_t b, int64_t t, int64_t nh,
                             int64_t hs, double *x, int64_t ld, int64_t offset)
{
    CLLM_CHECK(x && heads && b >= 1 && t >= 1 && nh >= 1 && hs >= 1);
    CLLM_CHECK(offset >= 0 && offset + nh * hs <= ld);
    for (int64_t r = 0; r < b * t; r++)
        for (int64_t h = 0; h < nh; h++)
            memcpy(x + r * ld + offset + h * hs, heads + (((r / t) * nh + h) * t + r % t) * hs,
                   (size_t)hs * sizeof(double));
    return CLLM_OK;
}

int cllm_kv_cache_write_f64(const double *src, int64_t b, int64_t nh, int64_t tn,
                            int64_t hs, double *dst, int64_t t_max, int64_t start)
{
    CLLM_CHECK(src && dst && b >= 1 && nh >= 1 && tn >= 1 && hs >= 1);
    CLLM_CHECK(start >= 0 && start + tn <= t_max);
    for (int64_t p = 0; p < b * nh; p++)
        memcpy(dst + (p * t_max + start) * hs, src + p * tn * hs,
               (size_t)(tn * hs) * sizeof(double));
    return CLLM_OK;
}
