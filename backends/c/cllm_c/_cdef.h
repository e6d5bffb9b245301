/* The C API of the cllm_c extension: the cffi cdef and the prototypes the C
 * sources are compiled against (csrc/cllm.h includes this file), so the two can
 * never disagree. Plain declarations only: cffi parses no preprocessor logic.
 *
 * Conventions: every entry returns a status (CLLM_OK or a CLLM_ERR_*), never
 * exits or prints; arrays are C-contiguous float32 (double for the _f64
 * twins) unless named otherwise; sizes are int64_t and C checks them again
 * (negative sizes, NULL arrays, ids out of range give a status). Outputs never
 * alias inputs unless the comment says so. The Python wrappers validate
 * everything with the spec's checks before any of these is called, except
 * that the float32 optimizer steps scan their own inputs for NaN and inf.
 */

enum {
    CLLM_OK = 0,
    CLLM_ERR_ARG = 1,
    CLLM_ERR_ID_RANGE = 2,
    CLLM_ERR_NOMEM = 3,
    CLLM_ERR_TIMEOUT = 4,
    CLLM_ERR_CLOSED = 5,
    CLLM_ERR_REFCOUNT = 6,
    CLLM_ERR_EMPTY = 7,
    CLLM_ERR_SYSTEM = 8,
    CLLM_ERR_NONFINITE = 9
};

enum {
    CLLM_SIMD_SCALAR = 0,
    CLLM_SIMD_AVX2 = 1,
    CLLM_SIMD_AVX512 = 2
};

/* cpu.c: runtime configuration */
const char *cllm_strerror(int status);
int cllm_init(void);
int cllm_simd_detected(void);
int cllm_simd_level(void);
int cllm_set_simd_level(int level);
int cllm_num_threads(void);
int cllm_set_num_threads(int n);
/* 64-byte aligned memory on transparent huge pages, for large outputs */
void *cllm_big_alloc(size_t bytes);
void cllm_big_free(void *p);
/* [p, p + bytes) collapsed onto transparent huge pages where the kernel can: 1 */
int cllm_huge_pages(const void *p, size_t bytes);

/* gemm.c: C(M,N) = [C or 0 or bias] + op(A)(M,K) op(B)(K,N); op(X) = X^T when trans */
int cllm_sgemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
               const float *a, int64_t lda, const float *b, int64_t ldb,
               float *c, int64_t ldc, int accumulate, const float *bias);
/* tuning knobs for benchmarks: the AVX-512 kernel on/off, and the block sizes
 * (KC in [16, 4096], MC a multiple of 48, NC a multiple of 32 in [32, 65536]) */
void cllm_gemm_avx512(int on);
int cllm_gemm_set_blocking(int64_t kc, int64_t mc, int64_t nc);
/* attention.c: 0 sends every attention pair through the GEMM instead of the
 * AVX-512 blocks of attention_blocks.c (the same bits), to compare them;
 * returns the calls that took the blocks since the last call */
int64_t cllm_attention_blocks(int on);

/* ffn.c: linear_forward runs rows <= CLLM_GEMV_MAX_ROWS on cllm_gemv, more on
 * the GEMM */
int cllm_linear_forward(const float *x, const float *w, const float *b, float *y,
                        int64_t n, int64_t in_features, int64_t out_features);
int cllm_linear_backward(const float *dy, const float *x, const float *w,
                         float *dx, float *dw, float *db,
                         int64_t n, int64_t in_features, int64_t out_features);
/* linear_backward with the activation's backward fused into dx (the
 * feed-forward block's projection): dx = (dy w) * act'(act_x), act_x (N, IN);
 * the bits of linear_backward followed by activation_backward */
int cllm_linear_backward_act(const float *dy, const float *x, const float *w,
                             float *dx, float *dw, float *db, int64_t n,
                             int64_t in_features, int64_t out_features, int kind,
                             const float *act_x);
int cllm_activation_forward(int kind, const float *x, float *y, int64_t n);
int cllm_activation_backward(int kind, const float *x, const float *dy, float *dx,
                             int64_t n);
int cllm_layernorm_forward(const float *x, const float *weight, const float *bias,
                           float eps, float *y, float *x_hat, float *rstd,
                           int64_t rows, int64_t c);
int cllm_layernorm_backward(const float *dy, const float *x_hat, const float *rstd,
                            const float *weight, float *dx, float *dweight,
                            float *dbias, int64_t rows, int64_t c);
int cllm_column_sum(const float *x, float *out, int64_t rows, int64_t cols);
/* the feed-forward block: h (N, F) = x w_fc^T + b_fc, a = act(h),
 * y (N, C) = a w_proj^T + b_proj; exactly the three kernels above */
int cllm_ffn_forward(const float *x, const float *w_fc, const float *b_fc,
                     const float *w_proj, const float *b_proj, int kind, float *h,
                     float *a, float *y, int64_t n, int64_t c, int64_t f);
/* gemv.c: y (M, OUT) = x (M, IN) w^T + b (b may be NULL) for M <= MAX_ROWS,
 * streaming w once as stored; y(m, :) does not depend on M or threads */
enum { CLLM_GEMV_MAX_ROWS = 16 };
int cllm_gemv(const float *x, const float *w, const float *b, float *y, int64_t m,
              int64_t in_features, int64_t out_features);
/* the residual add fused into the norm: x_out = x + res (x_out may be x), then
 * y, x_hat, rstd of layernorm(x_out); and the backward that adds the norm's
 * input gradient into dx (the residual stream's gradient) instead of writing it */
int cllm_residual_layernorm_forward(const float *x, const float *res,
                                    const float *weight, const float *bias, float eps,
                                    float *x_out, float *y, float *x_hat, float *rstd,
                                    int64_t rows, int64_t c);
int cllm_layernorm_backward_add(const float *dy, const float *x_hat, const float *rstd,
                                const float *weight, float *dx, float *dweight,
                                float *dbias, int64_t rows, int64_t c);

/* losses_softmax.c (log_softmax selects log-softmax over softmax) */
int cllm_softmax_forward(const float *x, float *y, int64_t rows, int64_t v,
                         int log_softmax);
int cllm_softmax_backward(const float *dy, const float *y, float *dx, int64_t rows,
                          int64_t v, int log_softmax);
/* losses.c, the cross-entropy. reduction: 0 mean, 1 sum, 2 none. Writes probs
 * (N, V), weight (N,), the per-row losses (N,) and, for mean/sum, the reduced
 * loss to *loss. probs may be logits (in place). */
int cllm_cross_entropy_forward(const float *logits, const int64_t *targets,
                               int64_t n, int64_t v, int64_t ignore_index,
                               double label_smoothing, int reduction, float *probs,
                               float *weight, float *per_row, float *loss);
/* the forward, writing d loss / d logits (as the backward would with one
 * dloss of 1) in place of the probabilities, each row while it is in the
 * cache: a training step's backward then has no pass over (N, V) to make.
 * dlogits may be logits (in place). */
int cllm_cross_entropy_forward_grad(const float *logits, const int64_t *targets,
                                    int64_t n, int64_t v, int64_t ignore_index,
                                    double label_smoothing, int reduction,
                                    float *dlogits, float *weight, float *per_row,
                                    float *loss);
/* dloss has n entries (reduction none) or 1; dlogits may be probs (in place) */
int cllm_cross_entropy_backward(const float *probs, const int64_t *targets,
                                const float *weight, const float *dloss,
                                int dloss_per_row, int64_t n, int64_t v,
                                double label_smoothing, float *dlogits);
/* losses_regression.c. kind: 0 mse, 1 l1, 2 huber. Writes diff (n,),
 * per-element losses when per_item != NULL, and the mean or sum to *loss when
 * loss != NULL. */
int cllm_regression_forward(int kind, const float *pred, const float *target,
                            int64_t n, float delta, int reduction, float *diff,
                            float *per_item, float *loss);
int cllm_regression_backward(int kind, const float *diff, const float *dloss,
                             int dloss_per_item, int64_t n, float delta,
                             int reduction, float *dpred);

/* checks.c: *out = 1 iff none of x's n elements is NaN or +-inf (exact) */
int cllm_all_finite(const float *x, int64_t n, int *out);

/* gradients.c: g is a flat (n,) buffer */
typedef struct {
    double amax;      /* max |g|, NaN if any NaN */
    double min, max;  /* NaN if any NaN */
    double sum;       /* in double, blocks in order */
    int64_t nonfinite;
} cllm_grad_summary;
int cllm_grad_summarize(const float *g, int64_t n, cllm_grad_summary *out);
/* sum_i (g_i 2^-k)^2 in double */
int cllm_grad_sumsq_scaled(const float *g, int64_t n, int k, double *out);
/* out = a + b; out = g * f; out = clip(g, -c, c) (NaN stays NaN) */
int cllm_vec_add(const float *a, const float *b, float *out, int64_t n);
int cllm_vec_scale(const float *g, float f, float *out, int64_t n);
int cllm_vec_clip(const float *g, float c, float *out, int64_t n);
/* the fixed pairwise tree of the spec over k buffers */
int cllm_tree_reduce(const float *const *bufs, int k, int64_t n, float *out);

/* optim.c: one fused pass per step; new arrays out, inputs untouched. The
 * 1 - beta style constants come from the caller, rounded once from double,
 * as the reference rounds them. The float32 steps return CLLM_ERR_NONFINITE
 * when an input element (parameter, gradient or state) is NaN or inf; the
 * outputs are then meaningless (the caller drops them). */
int cllm_sgd_step(const float *p, const float *g, const float *buf, int64_t n,
                  float lr, float momentum, float one_minus_dampening,
                  float weight_decay, int nesterov, int first_step, float *p_out,
                  float *buf_out);
int cllm_adam_step(const float *p, const float *g, const float *m, const float *v,
                   const float *vmax, int64_t n, float beta1, float beta2,
                   float one_minus_beta1, float one_minus_beta2,
                   float eps, float weight_decay, int decoupled, int amsgrad,
                   float decay_factor, float step_size, float bc2_sqrt,
                   float *p_out, float *m_out, float *v_out, float *vmax_out);
int cllm_rmsprop_step(const float *p, const float *g, const float *sq,
                      const float *buf, const float *ga, int64_t n, float lr,
                      float alpha, float one_minus_alpha, float eps,
                      float weight_decay, float momentum,
                      int centered, float *p_out, float *sq_out, float *buf_out,
                      float *ga_out);
int cllm_adagrad_step(const float *p, const float *g, const float *sum, int64_t n,
                      float clr, float weight_decay, float eps, float *p_out,
                      float *sum_out);

/* attention.c: q (B, NH, Tq, HS); k, v (B, NH, Tk, HS) stored with kv_rows
 * rows per head (kv_rows >= Tk: a KV cache's T_max); mask (B, Tk) of 0/1 or
 * NULL; att (B, NH, Tq, Tk); out (B, NH, Tq, HS). */
int cllm_attention_forward(const float *q, const float *k, const float *v,
                           const uint8_t *mask, int64_t b, int64_t nh, int64_t tq,
                           int64_t tk, int64_t hs, int64_t kv_rows, int causal,
                           float scale, float *out, float *att);
int cllm_attention_backward(const float *dout, const float *q, const float *k,
                            const float *v, const float *att, int64_t b, int64_t nh,
                            int64_t tq, int64_t tk, int64_t hs, int64_t kv_rows,
                            float scale, float *dq, float *dk, float *dv);
/* The same over operands at any strides: layout = floats between batches,
 * heads and rows of one (B, NH, rows, HS) operand; q, k and v may be the
 * column blocks of one (B, T, 3C) QKV output ({T*3C, HS, 3C}), out, dout the
 * merged (B, T, C) ({T*C, HS, C}), dq, dk, dv those of a (B, T, 3C) gradient.
 * lay holds q, k, v, out (forward) or dout, q, k, v, dq, dk, dv (backward);
 * att is (B, NH, Tq, Tk) contiguous. Causal only, no mask: the model's case. */
typedef struct {
    int64_t batch, head, row;
} cllm_layout;
int cllm_attention_forward_ex(const float *q, const float *k, const float *v,
                              const cllm_layout *lay, int64_t b, int64_t nh,
                              int64_t tq, int64_t tk, int64_t hs, float scale,
                              float *out, float *att);
int cllm_attention_backward_ex(const float *dout, const float *q, const float *k,
                               const float *v, const float *att,
                               const cllm_layout *lay, int64_t b, int64_t nh,
                               int64_t tq, int64_t tk, int64_t hs, float scale,
                               float *dq, float *dk, float *dv);
/* x (B, T, ld) columns [offset, offset + NH*HS) <-> heads (B, NH, T, HS) */
int cllm_tokens_to_heads(const float *x, int64_t ld, int64_t offset, int64_t b,
                         int64_t t, int64_t nh, int64_t hs, float *heads);
int cllm_heads_to_tokens(const float *heads, int64_t b, int64_t t, int64_t nh,
                         int64_t hs, float *x, int64_t ld, int64_t offset);
/* decoding: qkv (B, T, 3C) of T new tokens; their keys and values go to rows
 * [start, start + T) of the caches (B, NH, T_max, HS), and each query attends
 * causally over rows [0, start + i] in place; out (B, T, C), att (B, NH, T,
 * start + T). */
int cllm_attention_decode(const float *qkv, int64_t b, int64_t t, int64_t nh,
                          int64_t hs, float *k_cache, float *v_cache, int64_t t_max,
                          int64_t start, float scale, float *out, float *att);
/* multi-head attention of T new tokens x (B, T, C) over a nonempty cache:
 * qkv (B, T, 3C) = x w_qkv^T + b_qkv, cllm_attention_decode into merged
 * (B, T, C) and att, y (B, T, C) = merged w_proj^T + b_proj */
int cllm_mha_decode(const float *x, const float *w_qkv, const float *b_qkv,
                    const float *w_proj, const float *b_proj, int64_t b, int64_t t,
                    int64_t nh, int64_t hs, float *k_cache, float *v_cache,
                    int64_t t_max, int64_t start, float scale, float *qkv,
                    float *merged, float *att, float *y);
/* writes src (B, NH, Tn, HS) into dst (B, NH, T_max, HS) at rows [start, start + Tn) */
int cllm_kv_cache_write(const float *src, int64_t b, int64_t nh, int64_t tn,
                        int64_t hs, float *dst, int64_t t_max, int64_t start);

/* embedding.c: ids (B, T) int64; wte (V, C); wpe (T_max, C); x (B, T, C).
 * The backward adds into dwte, dwpe (zeroed by the caller). */
int cllm_embedding_forward(const int64_t *ids, const float *wte, const float *wpe,
                           int64_t b, int64_t t, int64_t c, int64_t v,
                           int64_t t_max, int64_t pos_offset, float *x);
int cllm_embedding_backward(const float *dx, const int64_t *ids, int64_t b,
                            int64_t t, int64_t c, int64_t v, int64_t t_max,
                            int64_t pos_offset, float *dwte, float *dwpe);

/* decode.c: one decoding step of the whole model (float32) over KV caches
 * holding start >= 0 positions: embedding, every block, LN_f and the LM head
 * of each sequence's last position into logits (B, V), bit for bit the model
 * kernels' composition when start >= 1. offsets[5 + 12 L] locate the tensors in params (in
 * floats): wte, wpe, ln_f.weight, ln_f.bias, head, then per block ln_1.weight,
 * ln_1.bias, qkv.weight, qkv.bias, proj.weight, proj.bias, ln_2.weight,
 * ln_2.bias, fc.weight, fc.bias, mlp.proj.weight, mlp.proj.bias. work holds
 * cllm_model_decode_work(...) floats (-1 for sizes out of range). */
int64_t cllm_model_decode_work(int64_t b, int64_t t, int64_t nh, int64_t c, int64_t f,
                               int64_t t_max);
int cllm_model_decode(const float *params, const int64_t *offsets, const int64_t *ids,
                      int64_t b, int64_t t, int64_t n_layer, int64_t nh, int64_t c,
                      int64_t f, int64_t v, int64_t block_size, int act_kind,
                      float eps, float scale, float *const *k_caches,
                      float *const *v_caches, int64_t t_max, int64_t start,
                      float *work, float *logits);

/* batching.c: a bounded MPMC FIFO of 64-bit tokens and a pool of refcounted
 * slots, both monitors on pthreads. timeout < 0 waits forever, 0 never waits.
 * Blocking calls return CLLM_ERR_TIMEOUT or CLLM_ERR_CLOSED as the spec's
 * queue and pool raise QueueTimeoutError and QueueClosedError. */
typedef struct cllm_queue cllm_queue;
int cllm_queue_new(int64_t capacity, cllm_queue **out);
void cllm_queue_free(cllm_queue *q);
/* put sets *queued to 1 (under the lock) once the token is in the ring. A
 * call that raises in Python after C acted is undone: unget returns a taken
 * token to the head (growing the ring if a producer refilled it), cancel
 * removes a queued token (CLLM_ERR_EMPTY if a consumer took it already). */
int cllm_queue_put(cllm_queue *q, uint64_t token, double timeout, int *queued);
int cllm_queue_get(cllm_queue *q, double timeout, uint64_t *token);
int cllm_queue_unget(cllm_queue *q, uint64_t token);
int cllm_queue_cancel(cllm_queue *q, uint64_t token);
int cllm_queue_close(cllm_queue *q);
int64_t cllm_queue_len(cllm_queue *q);
int cllm_queue_closed(cllm_queue *q);

typedef struct cllm_pool cllm_pool;
typedef struct {
    int64_t allocations, releases, hits, misses;
} cllm_pool_stats;
int cllm_pool_new(int64_t size, cllm_pool **out);
void cllm_pool_free(cllm_pool *p);
/* waited_before: the caller already waited in an earlier call of this acquire
 * (so it is not a hit). try_acquire = timeout 0 with miss counting. */
int cllm_pool_acquire(cllm_pool *p, double timeout, int waited_before,
                      int64_t *slot, uint64_t *generation);
int cllm_pool_try_acquire(cllm_pool *p, int64_t *slot, uint64_t *generation);
/* unacquire undoes an acquire whose handle never reached the caller: the slot
 * returns to the head of the free list and the counters are restored. */
int cllm_pool_unacquire(cllm_pool *p, int64_t slot, uint64_t generation);
int cllm_pool_retain(cllm_pool *p, int64_t slot, uint64_t generation);
int cllm_pool_release(cllm_pool *p, int64_t slot, uint64_t generation);
int cllm_pool_refcount(cllm_pool *p, int64_t slot, uint64_t generation,
                       int64_t *count);
int cllm_pool_close(cllm_pool *p);
int64_t cllm_pool_available(cllm_pool *p);
int cllm_pool_closed(cllm_pool *p);
int cllm_pool_get_stats(cllm_pool *p, cllm_pool_stats *out);

/* float64: scalar twins of the kernels above, same arguments with double
 * arrays and hyperparameters (the spec's float64 dtype). */
int cllm_dgemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
               const double *a, int64_t lda, const double *b, int64_t ldb,
               double *c, int64_t ldc, int accumulate, const double *bias);
int cllm_linear_forward_f64(const double *x, const double *w, const double *b,
                            double *y, int64_t n, int64_t in_features,
                            int64_t out_features);
int cllm_linear_backward_f64(const double *dy, const double *x, const double *w,
                             double *dx, double *dw, double *db, int64_t n,
                             int64_t in_features, int64_t out_features);
int cllm_activation_forward_f64(int kind, const double *x, double *y, int64_t n);
int cllm_activation_backward_f64(int kind, const double *x, const double *dy,
                                 double *dx, int64_t n);
int cllm_layernorm_forward_f64(const double *x, const double *weight,
                               const double *bias, double eps, double *y,
                               double *x_hat, double *rstd, int64_t rows, int64_t c);
int cllm_layernorm_backward_f64(const double *dy, const double *x_hat,
                                const double *rstd, const double *weight, double *dx,
                                double *dweight, double *dbias, int64_t rows,
                                int64_t c);
int cllm_residual_layernorm_forward_f64(const double *x, const double *res,
                                        const double *weight, const double *bias,
                                        double eps, double *x_out, double *y,
                                        double *x_hat, double *rstd, int64_t rows,
                                        int64_t c);
int cllm_layernorm_backward_add_f64(const double *dy, const double *x_hat,
                                    const double *rstd, const double *weight,
                                    double *dx, double *dweight, double *dbias,
                                    int64_t rows, int64_t c);
int cllm_softmax_forward_f64(const double *x, double *y, int64_t rows, int64_t v,
                             int log_softmax);
int cllm_softmax_backward_f64(const double *dy, const double *y, double *dx,
                              int64_t rows, int64_t v, int log_softmax);
int cllm_cross_entropy_forward_f64(const double *logits, const int64_t *targets,
                                   int64_t n, int64_t v, int64_t ignore_index,
                                   double label_smoothing, int reduction,
                                   double *probs, double *weight, double *per_row,
                                   double *loss);
int cllm_cross_entropy_backward_f64(const double *probs, const int64_t *targets,
                                    const double *weight, const double *dloss,
                                    int dloss_per_row, int64_t n, int64_t v,
                                    double label_smoothing, double *dlogits);
int cllm_regression_forward_f64(int kind, const double *pred, const double *target,
                                int64_t n, double delta, int reduction, double *diff,
                                double *per_item, double *loss);
int cllm_regression_backward_f64(int kind, const double *diff, const double *dloss,
                                 int dloss_per_item, int64_t n, double delta,
                                 int reduction, double *dpred);
int cllm_all_finite_f64(const double *x, int64_t n, int *out);
int cllm_grad_summarize_f64(const double *g, int64_t n, cllm_grad_summary *out);
int cllm_grad_sumsq_scaled_f64(const double *g, int64_t n, int k, double *out);
int cllm_vec_add_f64(const double *a, const double *b, double *out, int64_t n);
int cllm_vec_scale_f64(const double *g, double f, double *out, int64_t n);
int cllm_vec_clip_f64(const double *g, double c, double *out, int64_t n);
int cllm_tree_reduce_f64(const double *const *bufs, int k, int64_t n, double *out);
int cllm_sgd_step_f64(const double *p, const double *g, const double *buf, int64_t n,
                      double lr, double momentum, double one_minus_dampening,
                      double weight_decay, int nesterov, int first_step,
                      double *p_out, double *buf_out);
int cllm_adam_step_f64(const double *p, const double *g, const double *m,
                       const double *v, const double *vmax, int64_t n, double beta1,
                       double beta2, double one_minus_beta1, double one_minus_beta2,
                       double eps, double weight_decay, int decoupled, int amsgrad,
                       double decay_factor, double step_size, double bc2_sqrt,
                       double *p_out, double *m_out, double *v_out,
                       double *vmax_out);
int cllm_rmsprop_step_f64(const double *p, const double *g, const double *sq,
                          const double *buf, const double *ga, int64_t n, double lr,
                          double alpha, double one_minus_alpha, double eps,
                          double weight_decay, double momentum, int centered,
                          double *p_out, double *sq_out, double *buf_out,
                          double *ga_out);
int cllm_adagrad_step_f64(const double *p, const double *g, const double *sum,
                          int64_t n, double clr, double weight_decay, double eps,
                          double *p_out, double *sum_out);
int cllm_attention_forward_f64(const double *q, const double *k, const double *v,
                               const uint8_t *mask, int64_t b, int64_t nh,
                               int64_t tq, int64_t tk, int64_t hs, int64_t kv_rows,
                               int causal, double scale, double *out, double *att);
int cllm_attention_backward_f64(const double *dout, const double *q,
                                const double *k, const double *v, const double *att,
                                int64_t b, int64_t nh, int64_t tq, int64_t tk,
                                int64_t hs, int64_t kv_rows, double scale,
                                double *dq, double *dk, double *dv);
int cllm_tokens_to_heads_f64(const double *x, int64_t ld, int64_t offset, int64_t b,
                             int64_t t, int64_t nh, int64_t hs, double *heads);
int cllm_heads_to_tokens_f64(const double *heads, int64_t b, int64_t t, int64_t nh,
                             int64_t hs, double *x, int64_t ld, int64_t offset);
int cllm_kv_cache_write_f64(const double *src, int64_t b, int64_t nh, int64_t tn,
                            int64_t hs, double *dst, int64_t t_max, int64_t start);
int cllm_embedding_forward_f64(const int64_t *ids, const double *wte,
                               const double *wpe, int64_t b, int64_t t, int64_t c,
                               int64_t v, int64_t t_max, int64_t pos_offset,
                               double *x);
int cllm_embedding_backward_f64(const double *dx, const int64_t *ids, int64_t b,
                                int64_t t, int64_t c, int64_t v, int64_t t_max,
                                int64_t pos_offset, double *dwte, double *dwpe);
