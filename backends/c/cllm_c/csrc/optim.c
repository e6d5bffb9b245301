/* optim: SGD, Adam/AdamW, RMSprop and Adagrad as one fused pass each over
 * the flat (P,) buffers: every element is read once and its new parameter
 * and state values written once (the reference makes a temporary per
 * operation). The expressions follow the reference's order of operations in
 * float32, with each hyperparameter rounded once to float32.
 *
 * Each loop body is written once and compiled twice, portable and AVX2;
 * without contraction the two give identical bits. Threads split the buffer
 * into fixed blocks; elements are independent, so results never depend on
 * the thread count. */
#include "cllm.h"

#include <math.h>

#define BLOCK 16384
#define BODY static inline __attribute__((always_inline))

/* --------------------------------------------------------------- SGD ---- */
typedef struct {
    float lr, momentum, one_minus_dampening, weight_decay;
    int nesterov, first_step;
} sgd_t;

BODY void sgd_block(const sgd_t *h, const float *restrict p, const float *restrict g,
                    const float *restrict buf, int64_t len, float *restrict p_out,
                    float *restrict buf_out)
{
    /* hyperparameters in locals: loop-invariant, so each case is its own
     * vectorized loop */
    const float lr = h->lr, mom = h->momentum, damp = h->one_minus_dampening;
    const float wd = h->weight_decay;
    const int nesterov = h->nesterov, first = h->first_step;
    for (int64_t i = 0; i < len; i++) {
        /* PyTorch adds the L2 term only when wd != 0 (keeps -0.0 gradients) */
        float d = wd != 0.0f ? g[i] + wd * p[i] : g[i];
        float b = buf[i];
        if (mom != 0.0f) {
            b = first ? d : mom * b + damp * d;
            d = nesterov ? d + mom * b : b;
        }
        buf_out[i] = b;
        p_out[i] = p[i] - lr * d;
    }
}

/* -------------------------------------------------------------- Adam ---- */
typedef struct {
    float beta1, beta2, eps, weight_decay, decay_factor, step_size, bc2_sqrt;
    float one_minus_beta1, one_minus_beta2;
    int decoupled, amsgrad;
} adam_t;

BODY void adam_block(const adam_t *h, const float *restrict p, const float *restrict g,
                     const float *restrict m, const float *restrict v,
                     const float *restrict vmax, int64_t len, float *restrict p_out,
                     float *restrict m_out, float *restrict v_out,
                     float *restrict vmax_out)
{
    const float b1 = h->beta1, b2 = h->beta2, c1 = h->one_minus_beta1;
    const float c2 = h->one_minus_beta2, eps = h->eps, wd = h->weight_decay;
    const float decay = h->decay_factor, step = h->step_size, bc2 = h->bc2_sqrt;
    const int decoupled = h->decoupled, amsgrad = h->amsgrad;
    for (int64_t i = 0; i < len; i++) {
        float pi = p[i], gi = g[i];
        if (decoupled)
            pi = pi * decay; /* AdamW: p *= 1 - lr wd */
        else if (wd != 0.0f)
            gi = gi + wd * pi;
        float mi = b1 * m[i] + c1 * gi;
        float vi = b2 * v[i] + c2 * gi * gi;
        float vold = vmax[i];
        float vh = amsgrad ? (vold > vi ? vold : vi) : vi;
        vmax_out[i] = amsgrad ? vh : vold;
        float denom = sqrtf(vh) / bc2 + eps;
        p_out[i] = pi - step * mi / denom;
        m_out[i] = mi;
        v_out[i] = vi;
    }
}

/* ----------------------------------------------------------- RMSprop ---- */
typedef struct {
    float lr, alpha, one_minus_alpha, eps, weight_decay, momentum;
    int centered;
} rms_t;

BODY void rms_block(const rms_t *h, const float *restrict p, const float *restrict g,
                    const float *restrict sq, const float *restrict buf,
                    const float *restrict ga, int64_t len, float *restrict p_out,
                    float *restrict sq_out, float *restrict buf_out,
                    float *restrict ga_out)
{
    const float lr = h->lr, alpha = h->alpha, c = h->one_minus_alpha, eps = h->eps;
    const float wd = h->weight_decay, mom = h->momentum;
    const int centered = h->centered;
    for (int64_t i = 0; i < len; i++) {
        float d = wd != 0.0f ? g[i] + wd * p[i] : g[i];
        float s = alpha * sq[i] + c * d * d;
        float a = centered ? alpha * ga[i] + c * d : ga[i];
        float avg = centered ? sqrtf(s - a * a) + eps : sqrtf(s) + eps;
        float b = mom > 0.0f ? mom * buf[i] + d / avg : buf[i];
        ga_out[i] = a;
        sq_out[i] = s;
        buf_out[i] = b;
        p_out[i] = mom > 0.0f ? p[i] - lr * b : p[i] - lr * d / avg;
    }
}

/* ----------------------------------------------------------- Adagrad ---- */
typedef struct {
    float clr, weight_decay, eps;
} adagrad_t;

BODY void adagrad_block(const adagrad_t *h, const float *restrict p,
                        const float *restrict g, const float *restrict sum,
                        int64_t len, float *restrict p_out, float *restrict sum_out)
{
    const float clr = h->clr, wd = h->weight_decay, eps = h->eps;
    for (int64_t i = 0; i < len; i++) {
        float d = wd != 0.0f ? g[i] + wd * p[i] : g[i];
        float t = sum[i] + d * d;
        sum_out[i] = t;
        p_out[i] = p[i] - clr * d / (sqrtf(t) + eps);
    }
}

/* --------------------------------------------------- the two builds ---- */
#define TWIN(name, params, args)                             \
    static void name##_scalar params { name##_block args; } \
    TWIN_AVX2(name, params, args)

#if CLLM_X86
#define TWIN_AVX2(name, params, args) \
    CLLM_AVX2 static void name##_avx2 params { name##_block args; }
#define PICK(name) (cllm_simd_current >= CLLM_SIMD_AVX2 ? name##_avx2 : name##_scalar)
#else
#define TWIN_AVX2(name, params, args)
#define PICK(name) name##_scalar
#endif

TWIN(sgd, (const sgd_t *h, const float *p, const float *g, const float *b, int64_t n,
           float *po, float *bo), (h, p, g, b, n, po, bo))
TWIN(adam, (const adam_t *h, const float *p, const float *g, const float *m,
            const float *v, const float *vm, int64_t n, float *po, float *mo, float *vo,
            float *vmo), (h, p, g, m, v, vm, n, po, mo, vo, vmo))
TWIN(rms, (const rms_t *h, const float *p, const float *g, const float *sq,
           const float *b, const float *ga, int64_t n, float *po, float *sqo, float *bo,
           float *gao), (h, p, g, sq, b, ga, n, po, sqo, bo, gao))
TWIN(adagrad, (const adagrad_t *h, const float *p, const float *g, const float *s,
               int64_t n, float *po, float *so), (h, p, g, s, n, po, so))

/* one job type for the four optimizers: `step` runs one block */
typedef struct {
    const void *h;
    const float *in[5];
    float *out[4];
    int64_t n;
    void (*step)(const void *job, int64_t i0, int64_t len);
    int nin;      /* inputs in use */
    int nonfinite; /* set when some input element is NaN or inf */
} optim_job;

/* Every input block is scanned for NaN and inf right after the step has read
 * it, from L2: the wrapper then need not scan the five (P,) buffers from
 * memory before the call (csrc/checks.c; 3.6 -> 3.9 ms for the kernel on
 * 1.3M parameters against 2.7 ms of scans). A non-finite input makes the
 * call return CLLM_ERR_NONFINITE: its outputs are then garbage, the inputs
 * untouched. */
static void optim_task(void *arg, int64_t q, int worker)
{
    optim_job *j = arg;
    int64_t i0 = q * BLOCK, len = j->n - i0 < BLOCK ? j->n - i0 : BLOCK;
    (void)worker;
    j->step(j, i0, len);
    for (int k = 0; k < j->nin; k++)
        if (!cllm_finite_span(j->in[k] + i0, len))
            __atomic_store_n(&j->nonfinite, 1, __ATOMIC_RELAXED);
}

static int optim_run(optim_job *j)
{
    cllm_parallel((j->n + BLOCK - 1) / BLOCK, cllm_threads_for(j->n, BLOCK * 2),
                  optim_task, j);
    return j->nonfinite ? CLLM_ERR_NONFINITE : CLLM_OK;
}

#define IN(k) (j->in[k] + i0)
#define OUT(k) (j->out[k] + i0)
static void sgd_step_block(const void *job, int64_t i0, int64_t len)
{
    const optim_job *j = job;
    PICK(sgd)(j->h, IN(0), IN(1), IN(2), len, OUT(0), OUT(1));
}
static void adam_step_block(const void *job, int64_t i0, int64_t len)
{
    const optim_job *j = job;
    PICK(adam)(j->h, IN(0), IN(1), IN(2), IN(3), IN(4), len, OUT(0), OUT(1), OUT(2), OUT(3));
}
static void rms_step_block(const void *job, int64_t i0, int64_t len)
{
    const optim_job *j = job;
    PICK(rms)(j->h, IN(0), IN(1), IN(2), IN(3), IN(4), len, OUT(0), OUT(1), OUT(2), OUT(3));
}
static void adagrad_step_block(const void *job, int64_t i0, int64_t len)
{
    const optim_job *j = job;
    PICK(adagrad)(j->h, IN(0), IN(1), IN(2), len, OUT(0), OUT(1));
}
#undef IN
#undef OUT

int cllm_sgd_step(const float *p, const float *g, const float *buf, int64_t n,
                  float lr, float momentum, float one_minus_dampening,
                  float weight_decay, int nesterov, int first_step, float *p_out,
                  float *buf_out)
{
    CLLM_CHECK(p && g && buf && p_out && buf_out && n >= 0);
    sgd_t h = {lr, momentum, one_minus_dampening, weight_decay, nesterov, first_step};
    optim_job j = {&h, {p, g, buf}, {p_out, buf_out}, n, sgd_step_block, 3, 0};
    return optim_run(&j);
}

int cllm_adam_step(const float *p, const float *g, const float *m, const float *v,
                   const float *vmax, int64_t n, float beta1, float beta2,
                   float one_minus_beta1, float one_minus_beta2,
                   float eps, float weight_decay, int decoupled, int amsgrad,
                   float decay_factor, float step_size, float bc2_sqrt,
                   float *p_out, float *m_out, float *v_out, float *vmax_out)
{
    CLLM_CHECK(p && g && m && v && vmax && p_out && m_out && v_out && vmax_out && n >= 0);
    adam_t h = {beta1, beta2, eps, weight_decay, decay_factor, step_size, bc2_sqrt,
                one_minus_beta1, one_minus_beta2, decoupled, amsgrad};
    optim_job j = {&h, {p, g, m, v, vmax}, {p_out, m_out, v_out, vmax_out}, n,
                   adam_step_block, 5, 0};
    return optim_run(&j);
}

int cllm_rmsprop_step(const float *p, const float *g, const float *sq,
                      const float *buf, const float *ga, int64_t n, float lr,
                      float alpha, float one_minus_alpha, float eps,
                      float weight_decay, float momentum,
                      int centered, float *p_out, float *sq_out, float *buf_out,
                      float *ga_out)
{
    CLLM_CHECK(p && g && sq && buf && ga && p_out && sq_out && buf_out && ga_out && n >= 0);
    rms_t h = {lr, alpha, one_minus_alpha, eps, weight_decay, momentum, centered};
    optim_job j = {&h, {p, g, sq, buf, ga}, {p_out, sq_out, buf_out, ga_out}, n,
                   rms_step_block, 5, 0};
    return optim_run(&j);
}

int cllm_adagrad_step(const float *p, const float *g, const float *sum, int64_t n,
                      float clr, float weight_decay, float eps, float *p_out,
                      float *sum_out)
{
    CLLM_CHECK(p && g && sum && p_out && sum_out && n >= 0);
    adagrad_t h = {clr, weight_decay, eps};
    optim_job j = {&h, {p, g, sum}, {p_out, sum_out}, n, adagrad_step_block, 3, 0};
    return optim_run(&j);
}

/* ------------------------------------------------------------- float64 ---- */
/* The float64 path: the loops above in double, one thread. */
int cllm_sgd_step_f64(const double *p, const double *g, const double *buf, int64_t n,
                      double lr, double momentum, double one_minus_dampening,
                      double weight_decay, int nesterov, int first_step,
                      double *p_out, double *buf_out)
{
    CLLM_CHECK(p && g && buf && p_out && buf_out && n >= 0);
    for (int64_t i = 0; i < n; i++) {
        double d = weight_decay != 0.0 ? g[i] + weight_decay * p[i] : g[i];
        if (momentum != 0.0) {
            double b = first_step ? d : momentum * buf[i] + one_minus_dampening * d;
            buf_out[i] = b;
            d = nesterov ? d + momentum * b : b;
        } else {
            buf_out[i] = buf[i];
        }
        p_out[i] = p[i] - lr * d;
    }
    return CLLM_OK;
}

int cllm_adam_step_f64(const double *p, const double *g, const double *m,
                       const double *v, const double *vmax, int64_t n, double beta1,
                       double beta2, double one_minus_beta1, double one_minus_beta2,
                       double eps, double weight_decay, int decoupled, int amsgrad,
                       double decay_factor, double step_size, double bc2_sqrt,
                       double *p_out, double *m_out, double *v_out, double *vmax_out)
{
    CLLM_CHECK(p && g && m && v && vmax && p_out && m_out && v_out && vmax_out && n >= 0);
    for (int64_t i = 0; i < n; i++) {
        double pi = p[i], gi = g[i];
        if (decoupled)
            pi = pi * decay_factor;
        else if (weight_decay != 0.0)
            gi = gi + weight_decay * pi;
        double mi = beta1 * m[i] + one_minus_beta1 * gi;
        double vi = beta2 * v[i] + one_minus_beta2 * gi * gi;
        double vh = vi;
        if (amsgrad) {
            vh = vmax[i] > vi ? vmax[i] : vi;
            vmax_out[i] = vh;
        } else {
            vmax_out[i] = vmax[i];
        }
        p_out[i] = pi - step_size * mi / (sqrt(vh) / bc2_sqrt + eps);
        m_out[i] = mi;
        v_out[i] = vi;
    }
    return CLLM_OK;
}

int cllm_rmsprop_step_f64(const double *p, const double *g, const double *sq,
                          const double *buf, const double *ga, int64_t n, double lr,
                          double alpha, double one_minus_alpha, double eps,
                          double weight_decay, double momentum, int centered,
                          double *p_out, double *sq_out, double *buf_out,
                          double *ga_out)
{
    CLLM_CHECK(p && g && sq && buf && ga && p_out && sq_out && buf_out && ga_out && n >= 0);
    for (int64_t i = 0; i < n; i++) {
        double d = weight_decay != 0.0 ? g[i] + weight_decay * p[i] : g[i];
        double s = alpha * sq[i] + one_minus_alpha * d * d, avg;
        if (centered) {
            double a = alpha * ga[i] + one_minus_alpha * d;
            ga_out[i] = a;
            avg = sqrt(s - a * a) + eps;
        } else {
            ga_out[i] = ga[i];
            avg = sqrt(s) + eps;
        }
        sq_out[i] = s;
        if (momentum > 0.0) {
            double b = momentum * buf[i] + d / avg;
            buf_out[i] = b;
            p_out[i] = p[i] - lr * b;
        } else {
            buf_out[i] = buf[i];
            p_out[i] = p[i] - lr * d / avg;
        }
    }
    return CLLM_OK;
}

int cllm_adagrad_step_f64(const double *p, const double *g, const double *sum,
                          int64_t n, double clr, double weight_decay, double eps,
                          double *p_out, double *sum_out)
{
    CLLM_CHECK(p && g && sum && p_out && sum_out && n >= 0);
    for (int64_t i = 0; i < n; i++) {
        double d = weight_decay != 0.0 ? g[i] + weight_decay * p[i] : g[i];
        double t = sum[i] + d * d;
        sum_out[i] = t;
        p_out[i] = p[i] - clr * d / (sqrt(t) + eps);
    }
    return CLLM_OK;
}
