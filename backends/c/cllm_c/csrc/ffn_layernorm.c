/* Layer norm (and the residual add before it) for the feed-forward and
 * attention blocks: forward and backward in float32, a scalar twin next to
 * the AVX2 path, rows split over threads; the float64 path at the end. */
#include "ffn_parts.h"
#include "simd_math.h"

#include <math.h>
#include <string.h>

/* ------------------------------------------------------------ layer norm ---- */
/* Row statistics in double: the mean of x - x[0] (exact shift for rows like
 * 1e4 + noise, where a float mean would lose digits), then the two-pass
 * variance. */
static void ln_stats_scalar(const float *x, int64_t c, double eps, double *mean,
                            double *rstd)
{
    double shift = x[0], s = 0.0, v = 0.0;
    for (int64_t j = 0; j < c; j++)
        s += (double)x[j] - shift;
    double m = shift + s / (double)c;
    for (int64_t j = 0; j < c; j++) {
        double d = (double)x[j] - m;
        v += d * d;
    }
    *mean = m;
    *rstd = 1.0 / sqrt(v / (double)c + eps);
}

static void ln_row_scalar(const float *x, const float *w, const float *b, double eps,
                          float *y, float *xh, float *rs, int64_t c)
{
    double mean, rstd;
    ln_stats_scalar(x, c, eps, &mean, &rstd);
    for (int64_t j = 0; j < c; j++) {
        float h = (float)(((double)x[j] - mean) * rstd);
        xh[j] = h;
        y[j] = h * w[j] + b[j];
    }
    *rs = (float)rstd;
}

/* acc: add the row's gradient to dx (the residual stream's) instead of
 * writing it; the sum is rounded once, as a separate add would round it */
static void ln_row_backward_scalar(const float *dy, const float *xh, float rstd,
                                   const float *w, float *dx, int64_t c, int acc)
{
    double sg = 0.0, sgx = 0.0;
    for (int64_t j = 0; j < c; j++) {
        double g = (double)dy[j] * (double)w[j];
        sg += g;
        sgx += g * (double)xh[j];
    }
    float mg = (float)(sg / (double)c), mgx = (float)(sgx / (double)c);
    for (int64_t j = 0; j < c; j++) {
        float v = rstd * (dy[j] * w[j] - mg - xh[j] * mgx);
        dx[j] = acc ? dx[j] + v : v;
    }
}

#if CLLM_X86
CLLM_AVX2 static void ln_row_avx2(const float *x, const float *w, const float *b,
                                  double eps, float *y, float *xh, float *rs,
                                  int64_t c)
{
    __m256d shift = _mm256_set1_pd((double)x[0]), s0 = _mm256_setzero_pd(), s1 = s0;
    int64_t j = 0, c8 = c & ~(int64_t)7;
    double tail = 0.0;
    for (; j < c8; j += 8) {
        __m256 v = _mm256_loadu_ps(x + j);
        s0 = _mm256_add_pd(s0, _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), shift));
        s1 = _mm256_add_pd(s1, _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), shift));
    }
    for (; j < c; j++)
        tail += (double)x[j] - (double)x[0];
    double mean = (double)x[0] + (cllm_hsum256d(_mm256_add_pd(s0, s1)) + tail) / (double)c;
    __m256d m = _mm256_set1_pd(mean), v0 = _mm256_setzero_pd(), v1 = v0;
    tail = 0.0;
    for (j = 0; j < c8; j += 8) {
        __m256 v = _mm256_loadu_ps(x + j);
        __m256d d0 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), m);
        __m256d d1 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), m);
        v0 = _mm256_fmadd_pd(d0, d0, v0);
        v1 = _mm256_fmadd_pd(d1, d1, v1);
    }
    for (; j < c; j++) {
        double d = (double)x[j] - mean;
        tail += d * d;
    }
    double var = (cllm_hsum256d(_mm256_add_pd(v0, v1)) + tail) / (double)c;
    double rstd = 1.0 / sqrt(var + eps);
    __m256d r = _mm256_set1_pd(rstd);
    for (j = 0; j < c8; j += 8) {
        __m256 v = _mm256_loadu_ps(x + j);
        __m128 h0 = _mm256_cvtpd_ps(_mm256_mul_pd(
            _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), m), r));
        __m128 h1 = _mm256_cvtpd_ps(_mm256_mul_pd(
            _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), m), r));
        __m256 h = _mm256_set_m128(h1, h0);
        _mm256_storeu_ps(xh + j, h);
        _mm256_storeu_ps(y + j, _mm256_fmadd_ps(h, _mm256_loadu_ps(w + j),
                                                _mm256_loadu_ps(b + j)));
    }
    for (; j < c; j++) {
        float h = (float)(((double)x[j] - mean) * rstd);
        xh[j] = h;
        y[j] = h * w[j] + b[j];
    }
    *rs = (float)rstd;
}

CLLM_AVX2 static void ln_row_backward_avx2(const float *dy, const float *xh,
                                           float rstd, const float *w, float *dx,
                                           int64_t c, int acc)
{
    __m256d a0 = _mm256_setzero_pd(), a1 = a0, b0 = a0, b1 = a0;
    int64_t j = 0, c8 = c & ~(int64_t)7;
    double sg = 0.0, sgx = 0.0;
    for (; j < c8; j += 8) {
        __m256 g = _mm256_mul_ps(_mm256_loadu_ps(dy + j), _mm256_loadu_ps(w + j));
        __m256 h = _mm256_loadu_ps(xh + j);
        __m256d g0 = _mm256_cvtps_pd(_mm256_castps256_ps128(g));
        __m256d g1 = _mm256_cvtps_pd(_mm256_extractf128_ps(g, 1));
        a0 = _mm256_add_pd(a0, g0);
        a1 = _mm256_add_pd(a1, g1);
        b0 = _mm256_fmadd_pd(g0, _mm256_cvtps_pd(_mm256_castps256_ps128(h)), b0);
        b1 = _mm256_fmadd_pd(g1, _mm256_cvtps_pd(_mm256_extractf128_ps(h, 1)), b1);
    }
    for (; j < c; j++) {
        double g = (double)(dy[j] * w[j]);
        sg += g;
        sgx += g * (double)xh[j];
    }
    sg += cllm_hsum256d(_mm256_add_pd(a0, a1));
    sgx += cllm_hsum256d(_mm256_add_pd(b0, b1));
    float mg = (float)(sg / (double)c), mgx = (float)(sgx / (double)c);
    __m256 vmg = _mm256_set1_ps(mg), vmgx = _mm256_set1_ps(mgx), vr = _mm256_set1_ps(rstd);
    for (j = 0; j < c8; j += 8) {
        __m256 g = _mm256_mul_ps(_mm256_loadu_ps(dy + j), _mm256_loadu_ps(w + j));
        __m256 t = _mm256_fnmadd_ps(_mm256_loadu_ps(xh + j), vmgx, _mm256_sub_ps(g, vmg));
        __m256 v = _mm256_mul_ps(vr, t);
        _mm256_storeu_ps(dx + j, acc ? _mm256_add_ps(_mm256_loadu_ps(dx + j), v) : v);
    }
    for (; j < c; j++) {
        float v = rstd * (dy[j] * w[j] - mg - xh[j] * mgx);
        dx[j] = acc ? dx[j] + v : v;
    }
}
#endif

#define LN_ROWS 32

typedef struct {
    const float *x, *weight, *bias, *dy, *rstd_in, *x_hat_in;
    double eps;
    float *y, *x_hat, *rstd;
    int64_t rows, c;
    int simd;
    const float *res; /* forward: add this residual into x_out first */
    float *x_out;
    int accumulate; /* backward: add dx into y instead of writing it */
} ln_job;

static void ln_forward_task(void *arg, int64_t q, int worker)
{
    const ln_job *j = arg;
    int64_t c = j->c, end = (q + 1) * LN_ROWS < j->rows ? (q + 1) * LN_ROWS : j->rows;
    (void)worker;
    for (int64_t r = q * LN_ROWS; r < end; r++) {
        const float *x = j->x + r * c;
        if (j->res) { /* the residual add, while the row is in L1 */
            float *xo = j->x_out + r * c;
            const float *add = j->res + r * c;
            for (int64_t k = 0; k < c; k++)
                xo[k] = x[k] + add[k];
            x = xo;
        }
#if CLLM_X86
        if (j->simd >= CLLM_SIMD_AVX2) {
            ln_row_avx2(x, j->weight, j->bias, j->eps, j->y + r * c, j->x_hat + r * c,
                        j->rstd + r, c);
            continue;
        }
#endif
        ln_row_scalar(x, j->weight, j->bias, j->eps, j->y + r * c, j->x_hat + r * c,
                      j->rstd + r, c);
    }
}

/* backward rows: dy, x_hat, rstd_in and weight in; dx written to y */
static void ln_backward_task(void *arg, int64_t q, int worker)
{
    const ln_job *j = arg;
    int64_t c = j->c, end = (q + 1) * LN_ROWS < j->rows ? (q + 1) * LN_ROWS : j->rows;
    (void)worker;
    for (int64_t r = q * LN_ROWS; r < end; r++) {
#if CLLM_X86
        if (j->simd >= CLLM_SIMD_AVX2) {
            ln_row_backward_avx2(j->dy + r * c, j->x_hat_in + r * c, j->rstd_in[r],
                                 j->weight, j->y + r * c, c, j->accumulate);
            continue;
        }
#endif
        ln_row_backward_scalar(j->dy + r * c, j->x_hat_in + r * c, j->rstd_in[r],
                               j->weight, j->y + r * c, c, j->accumulate);
    }
}

int cllm_layernorm_forward(const float *x, const float *weight, const float *bias,
                           float eps, float *y, float *x_hat, float *rstd,
                           int64_t rows, int64_t c)
{
    CLLM_CHECK(x && weight && bias && y && x_hat && rstd && rows >= 0 && c >= 1);
    CLLM_CHECK(eps > 0.0f);
    ln_job j = {x, weight, bias, NULL, NULL, NULL, eps, y, x_hat, rstd, rows, c,
                cllm_simd_current, NULL, NULL, 0};
    cllm_parallel((rows + LN_ROWS - 1) / LN_ROWS, cllm_threads_for(rows * c, ELEM_BLOCK),
                  ln_forward_task, &j);
    return CLLM_OK;
}

int cllm_residual_layernorm_forward(const float *x, const float *res,
                                    const float *weight, const float *bias, float eps,
                                    float *x_out, float *y, float *x_hat, float *rstd,
                                    int64_t rows, int64_t c)
{
    CLLM_CHECK(x && res && weight && bias && x_out && y && x_hat && rstd);
    CLLM_CHECK(rows >= 0 && c >= 1 && eps > 0.0f);
    ln_job j = {x, weight, bias, NULL, NULL, NULL, eps, y, x_hat, rstd, rows, c,
                cllm_simd_current, res, x_out, 0};
    cllm_parallel((rows + LN_ROWS - 1) / LN_ROWS, cllm_threads_for(rows * c, ELEM_BLOCK),
                  ln_forward_task, &j);
    return CLLM_OK;
}

static int ln_backward(const float *dy, const float *x_hat, const float *rstd,
                       const float *weight, float *dx, float *dweight, float *dbias,
                       int64_t rows, int64_t c, int accumulate)
{
    CLLM_CHECK(dy && x_hat && rstd && weight && dx && rows >= 0 && c >= 1);
    ln_job j = {NULL, weight, NULL, dy, rstd, x_hat, 0.0, dx, NULL, NULL, rows, c,
                cllm_simd_current, NULL, NULL, accumulate};
    cllm_parallel((rows + LN_ROWS - 1) / LN_ROWS, cllm_threads_for(rows * c, ELEM_BLOCK),
                  ln_backward_task, &j);
    int status = dweight ? cllm_column_reduce(dy, x_hat, dweight, rows, c) : CLLM_OK;
    if (status == CLLM_OK && dbias)
        status = cllm_column_reduce(dy, NULL, dbias, rows, c);
    return status;
}

int cllm_layernorm_backward(const float *dy, const float *x_hat, const float *rstd,
                            const float *weight, float *dx, float *dweight,
                            float *dbias, int64_t rows, int64_t c)
{
    return ln_backward(dy, x_hat, rstd, weight, dx, dweight, dbias, rows, c, 0);
}

int cllm_layernorm_backward_add(const float *dy, const float *x_hat, const float *rstd,
                                const float *weight, float *dx, float *dweight,
                                float *dbias, int64_t rows, int64_t c)
{
    return ln_backward(dy, x_hat, rstd, weight, dx, dweight, dbias, rows, c, 1);
}


/* ---------------------------------------------------------------- float64 ---- */
int cllm_layernorm_forward_f64(const double *x, const double *weight,
                               const double *bias, double eps, double *y,
                               double *x_hat, double *rstd, int64_t rows, int64_t c)
{
    CLLM_CHECK(x && weight && bias && y && x_hat && rstd && rows >= 0 && c >= 1);
    CLLM_CHECK(eps > 0.0);
    for (int64_t r = 0; r < rows; r++) {
        const double *xr = x + r * c;
        /* work on d = x - x[0]: exact for rows such as 1e4 + noise, where
         * x - mean would round the mean's large part into the result */
        double shift = xr[0], s = 0.0, var = 0.0;
        for (int64_t j = 0; j < c; j++)
            s += xr[j] - shift;
        double mean_d = s / (double)c;
        for (int64_t j = 0; j < c; j++)
            var += ((xr[j] - shift) - mean_d) * ((xr[j] - shift) - mean_d);
        double rs = 1.0 / sqrt(var / (double)c + eps);
        for (int64_t j = 0; j < c; j++) {
            double h = ((xr[j] - shift) - mean_d) * rs;
            x_hat[r * c + j] = h;
            y[r * c + j] = h * weight[j] + bias[j];
        }
        rstd[r] = rs;
    }
    return CLLM_OK;
}

int cllm_residual_layernorm_forward_f64(const double *x, const double *res,
                                        const double *weight, const double *bias,
                                        double eps, double *x_out, double *y,
                                        double *x_hat, double *rstd, int64_t rows,
                                        int64_t c)
{
    CLLM_CHECK(x && res && weight && bias && x_out && y && x_hat && rstd);
    CLLM_CHECK(rows >= 0 && c >= 1 && eps > 0.0);
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t k = 0; k < c; k++)
            x_out[r * c + k] = x[r * c + k] + res[r * c + k];
        cllm_layernorm_forward_f64(x_out + r * c, weight, bias, eps, y + r * c,
                                   x_hat + r * c, rstd + r, 1, c);
    }
    return CLLM_OK;
}

static int ln_backward_f64(const double *dy, const double *x_hat, const double *rstd,
                           const double *weight, double *dx, double *dweight,
                           double *dbias, int64_t rows, int64_t c, int acc)
{
    CLLM_CHECK(dy && x_hat && rstd && weight && dx && rows >= 0 && c >= 1);
    for (int64_t r = 0; r < rows; r++) {
        const double *g = dy + r * c, *h = x_hat + r * c;
        double sg = 0.0, sgx = 0.0;
        for (int64_t j = 0; j < c; j++) {
            sg += g[j] * weight[j];
            sgx += g[j] * weight[j] * h[j];
        }
        double mg = sg / (double)c, mgx = sgx / (double)c;
        for (int64_t j = 0; j < c; j++) {
            double v = rstd[r] * (g[j] * weight[j] - mg - h[j] * mgx);
            dx[r * c + j] = acc ? dx[r * c + j] + v : v;
        }
    }
    if (dweight)
        cllm_column_sums_f64(dy, x_hat, dweight, rows, c);
    if (dbias)
        cllm_column_sums_f64(dy, NULL, dbias, rows, c);
    return CLLM_OK;
}

int cllm_layernorm_backward_f64(const double *dy, const double *x_hat,
                                const double *rstd, const double *weight, double *dx,
                                double *dweight, double *dbias, int64_t rows,
                                int64_t c)
{
    return ln_backward_f64(dy, x_hat, rstd, weight, dx, dweight, dbias, rows, c, 0);
}

int cllm_layernorm_backward_add_f64(const double *dy, const double *x_hat,
                                    const double *rstd, const double *weight,
                                    double *dx, double *dweight, double *dbias,
                                    int64_t rows, int64_t c)
{
    return ln_backward_f64(dy, x_hat, rstd, weight, dx, dweight, dbias, rows, c, 1);
}
