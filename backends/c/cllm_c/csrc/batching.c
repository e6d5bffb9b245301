/* batching: BatchQueue and BatchPool as pthread monitors.
 *
 * The queue holds 64-bit tokens (the Python wrapper maps them to objects);
 * the pool hands out slot numbers with a per-slot generation and refcount
 * (the wrapper owns the batch arrays). One mutex guards each structure; every
 * wait re-checks its predicate in a loop against a CLOCK_MONOTONIC deadline
 * (wakeups can be spurious or stolen), and close broadcasts, so nothing stays
 * blocked on a structure that is shut. Python calls these with the GIL
 * released, so other Python threads run while one waits. */
#include "cllm.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

/* ----------------------------------------------------------- waiting ---- */
typedef struct {
    int forever;
    struct timespec at;
} deadline_t;

static deadline_t deadline_in(double seconds)
{
    deadline_t d = {seconds < 0.0, {0, 0}};
    if (d.forever)
        return d;
    clock_gettime(CLOCK_MONOTONIC, &d.at);
    if (seconds > 1e9)
        seconds = 1e9; /* ~31 years: far enough, and no time_t overflow */
    double whole = floor(seconds);
    d.at.tv_sec += (time_t)whole;
    d.at.tv_nsec += (long)((seconds - whole) * 1e9);
    if (d.at.tv_nsec >= 1000000000L) {
        d.at.tv_sec += 1;
        d.at.tv_nsec -= 1000000000L;
    }
    return d;
}

/* one wait; returns 0 or ETIMEDOUT (any other error counts as a timeout) */
static int wait_until(pthread_cond_t *cond, pthread_mutex_t *mu, const deadline_t *d)
{
    if (d->forever)
        return pthread_cond_wait(cond, mu) == 0 ? 0 : ETIMEDOUT;
    int rc = pthread_cond_timedwait(cond, mu, &d->at);
    return rc == 0 ? 0 : ETIMEDOUT;
}

static int init_cond(pthread_cond_t *c)
{
    pthread_condattr_t attr;
    if (pthread_condattr_init(&attr) != 0)
        return -1;
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(c, &attr);
    pthread_condattr_destroy(&attr);
    return rc;
}

/* ------------------------------------------------------------- queue ---- */
/* The ring has `slots` >= capacity entries: an unget (a get that raised
 * after it took its token) may return a token to a queue that a producer has
 * refilled meanwhile, and must not lose it. */
struct cllm_queue {
    pthread_mutex_t mu;
    pthread_cond_t not_empty, not_full;
    uint64_t *ring;
    int64_t capacity, slots, head, count;
    int closed;
};

int cllm_queue_new(int64_t capacity, cllm_queue **out)
{
    CLLM_CHECK(out && capacity >= 1 && capacity <= ((int64_t)1 << 40));
    cllm_queue *q = calloc(1, sizeof(*q));
    if (!q)
        return CLLM_ERR_NOMEM;
    q->ring = malloc((size_t)capacity * sizeof(uint64_t));
    if (!q->ring) {
        free(q);
        return CLLM_ERR_NOMEM;
    }
    if (pthread_mutex_init(&q->mu, NULL) || init_cond(&q->not_empty)
        || init_cond(&q->not_full)) {
        free(q->ring);
        free(q);
        return CLLM_ERR_SYSTEM;
    }
    q->capacity = capacity;
    q->slots = capacity;
    *out = q;
    return CLLM_OK;
}

void cllm_queue_free(cllm_queue *q)
{
    if (!q)
        return;
    pthread_cond_destroy(&q->not_empty);
    pthread_cond_destroy(&q->not_full);
    pthread_mutex_destroy(&q->mu);
    free(q->ring);
    free(q);
}

int cllm_queue_put(cllm_queue *q, uint64_t token, double timeout, int *queued)
{
    CLLM_CHECK(q && queued && !isnan(timeout));
    deadline_t d = deadline_in(timeout);
    int status = CLLM_OK;
    pthread_mutex_lock(&q->mu);
    while (!q->closed && q->count >= q->capacity) {
        if (timeout == 0.0 || wait_until(&q->not_full, &q->mu, &d) == ETIMEDOUT) {
            /* the predicate wins a race with the deadline */
            if (!q->closed && q->count >= q->capacity)
                status = CLLM_ERR_TIMEOUT;
            break;
        }
    }
    if (status == CLLM_OK && q->closed)
        status = CLLM_ERR_CLOSED;
    if (status == CLLM_OK) {
        q->ring[(q->head + q->count) % q->slots] = token;
        q->count++;
        *queued = 1; /* under the lock: the caller's undo knows what happened */
        pthread_cond_signal(&q->not_empty);
    }
    pthread_mutex_unlock(&q->mu);
    return status;
}

int cllm_queue_get(cllm_queue *q, double timeout, uint64_t *token)
{
    CLLM_CHECK(q && token && !isnan(timeout));
    deadline_t d = deadline_in(timeout);
    int status = CLLM_OK;
    pthread_mutex_lock(&q->mu);
    while (!q->closed && q->count == 0) {
        if (timeout == 0.0 || wait_until(&q->not_empty, &q->mu, &d) == ETIMEDOUT) {
            if (!q->closed && q->count == 0)
                status = CLLM_ERR_TIMEOUT;
            break;
        }
    }
    if (status == CLLM_OK && q->count == 0)
        status = CLLM_ERR_CLOSED; /* closed and drained */
    if (status == CLLM_OK) {
        *token = q->ring[q->head];
        q->head = (q->head + 1) % q->slots;
        q->count--;
        pthread_cond_signal(&q->not_full);
    }
    pthread_mutex_unlock(&q->mu);
    return status;
}

/* lock held: make room for one more token, keeping the order */
static int grow(cllm_queue *q)
{
    if (q->count < q->slots)
        return CLLM_OK;
    if (q->slots > ((int64_t)1 << 41))
        return CLLM_ERR_NOMEM;
    uint64_t *ring = malloc((size_t)(2 * q->slots) * sizeof(uint64_t));
    if (!ring)
        return CLLM_ERR_NOMEM;
    for (int64_t i = 0; i < q->count; i++)
        ring[i] = q->ring[(q->head + i) % q->slots];
    free(q->ring);
    q->ring = ring;
    q->head = 0;
    q->slots *= 2;
    return CLLM_OK;
}

int cllm_queue_unget(cllm_queue *q, uint64_t token)
{
    CLLM_CHECK(q);
    pthread_mutex_lock(&q->mu);
    int status = grow(q);
    if (status == CLLM_OK) {
        q->head = (q->head + q->slots - 1) % q->slots;
        q->ring[q->head] = token;
        q->count++;
        pthread_cond_signal(&q->not_empty);
    }
    pthread_mutex_unlock(&q->mu);
    return status;
}

int cllm_queue_cancel(cllm_queue *q, uint64_t token)
{
    CLLM_CHECK(q);
    int status = CLLM_ERR_EMPTY;
    pthread_mutex_lock(&q->mu);
    /* newest first: the token of a put that is being undone is near the tail */
    for (int64_t i = q->count - 1; i >= 0; i--) {
        if (q->ring[(q->head + i) % q->slots] != token)
            continue;
        for (int64_t j = i; j + 1 < q->count; j++)
            q->ring[(q->head + j) % q->slots] = q->ring[(q->head + j + 1) % q->slots];
        q->count--;
        pthread_cond_signal(&q->not_full);
        status = CLLM_OK;
        break;
    }
    pthread_mutex_unlock(&q->mu);
    return status;
}

int cllm_queue_close(cllm_queue *q)
{
    CLLM_CHECK(q);
    pthread_mutex_lock(&q->mu);
    q->closed = 1;
    pthread_cond_broadcast(&q->not_empty);
    pthread_cond_broadcast(&q->not_full);
    pthread_mutex_unlock(&q->mu);
    return CLLM_OK;
}

int64_t cllm_queue_len(cllm_queue *q)
{
    pthread_mutex_lock(&q->mu);
    int64_t n = q->count;
    pthread_mutex_unlock(&q->mu);
    return n;
}

int cllm_queue_closed(cllm_queue *q)
{
    pthread_mutex_lock(&q->mu);
    int c = q->closed;
    pthread_mutex_unlock(&q->mu);
    return c;
}

/* -------------------------------------------------------------- pool ---- */
struct cllm_pool {
    pthread_mutex_t mu;
    pthread_cond_t slot_freed;
    int64_t size, *free_ring, free_head, free_count, *refcount;
    uint64_t *generation;
    unsigned char *lent_as_hit; /* so an undone acquire takes its hit back */
    cllm_pool_stats stats;
    int closed;
};

int cllm_pool_new(int64_t size, cllm_pool **out)
{
    CLLM_CHECK(out && size >= 1 && size <= ((int64_t)1 << 32));
    cllm_pool *p = calloc(1, sizeof(*p));
    if (!p)
        return CLLM_ERR_NOMEM;
    p->free_ring = malloc((size_t)size * sizeof(int64_t));
    p->refcount = calloc((size_t)size, sizeof(int64_t));
    p->generation = calloc((size_t)size, sizeof(uint64_t));
    p->lent_as_hit = calloc((size_t)size, 1);
    if (!p->free_ring || !p->refcount || !p->generation || !p->lent_as_hit) {
        cllm_pool_free(p);
        return CLLM_ERR_NOMEM;
    }
    if (pthread_mutex_init(&p->mu, NULL) || init_cond(&p->slot_freed)) {
        free(p->free_ring);
        free(p->refcount);
        free(p->generation);
        free(p->lent_as_hit);
        free(p);
        return CLLM_ERR_SYSTEM;
    }
    for (int64_t i = 0; i < size; i++)
        p->free_ring[i] = i;
    p->size = size;
    p->free_count = size;
    *out = p;
    return CLLM_OK;
}

void cllm_pool_free(cllm_pool *p)
{
    if (!p)
        return;
    if (p->size) {
        pthread_cond_destroy(&p->slot_freed);
        pthread_mutex_destroy(&p->mu);
    }
    free(p->free_ring);
    free(p->refcount);
    free(p->generation);
    free(p->lent_as_hit);
    free(p);
}

/* lock held, a slot free: lend the oldest free slot with refcount 1 */
static void lend(cllm_pool *p, int hit, int64_t *slot, uint64_t *generation)
{
    int64_t s = p->free_ring[p->free_head];
    p->free_head = (p->free_head + 1) % p->size;
    p->free_count--;
    p->refcount[s] = 1;
    p->lent_as_hit[s] = (unsigned char)hit;
    p->stats.hits += hit;
    p->stats.allocations++;
    *slot = s;
    *generation = p->generation[s];
}

int cllm_pool_acquire(cllm_pool *p, double timeout, int waited_before,
                      int64_t *slot, uint64_t *generation)
{
    CLLM_CHECK(p && slot && generation && !isnan(timeout));
    deadline_t d = deadline_in(timeout);
    int status = CLLM_OK, waited = waited_before;
    pthread_mutex_lock(&p->mu);
    while (!p->closed && p->free_count == 0) {
        waited = 1;
        if (timeout == 0.0 || wait_until(&p->slot_freed, &p->mu, &d) == ETIMEDOUT) {
            if (!p->closed && p->free_count == 0)
                status = CLLM_ERR_TIMEOUT;
            break;
        }
    }
    if (status == CLLM_OK && p->closed)
        status = CLLM_ERR_CLOSED;
    if (status == CLLM_OK) {
        lend(p, !waited, slot, generation);
    }
    pthread_mutex_unlock(&p->mu);
    return status;
}

int cllm_pool_try_acquire(cllm_pool *p, int64_t *slot, uint64_t *generation)
{
    CLLM_CHECK(p && slot && generation);
    int status = CLLM_OK;
    pthread_mutex_lock(&p->mu);
    if (p->closed) {
        status = CLLM_ERR_CLOSED;
    } else if (p->free_count == 0) {
        p->stats.misses++;
        status = CLLM_ERR_EMPTY;
    } else {
        lend(p, 1, slot, generation);
    }
    pthread_mutex_unlock(&p->mu);
    return status;
}

/* lock held: is (slot, generation) a loan that is still outstanding? */
static int live(const cllm_pool *p, int64_t slot, uint64_t generation)
{
    return slot >= 0 && slot < p->size && p->generation[slot] == generation
           && p->refcount[slot] > 0;
}

int cllm_pool_unacquire(cllm_pool *p, int64_t slot, uint64_t generation)
{
    CLLM_CHECK(p);
    pthread_mutex_lock(&p->mu);
    /* only a loan nobody else has seen: refcount 1, the generation it was lent at */
    int ok = live(p, slot, generation) && p->refcount[slot] == 1;
    if (ok) {
        p->refcount[slot] = 0;
        p->free_head = (p->free_head + p->size - 1) % p->size;
        p->free_ring[p->free_head] = slot;
        p->free_count++;
        p->stats.allocations--;
        p->stats.hits -= p->lent_as_hit[slot];
        pthread_cond_signal(&p->slot_freed);
    }
    pthread_mutex_unlock(&p->mu);
    return ok ? CLLM_OK : CLLM_ERR_REFCOUNT;
}

int cllm_pool_retain(cllm_pool *p, int64_t slot, uint64_t generation)
{
    CLLM_CHECK(p);
    pthread_mutex_lock(&p->mu);
    int ok = live(p, slot, generation);
    if (ok)
        p->refcount[slot]++;
    pthread_mutex_unlock(&p->mu);
    return ok ? CLLM_OK : CLLM_ERR_REFCOUNT;
}

int cllm_pool_release(cllm_pool *p, int64_t slot, uint64_t generation)
{
    CLLM_CHECK(p);
    pthread_mutex_lock(&p->mu);
    int ok = live(p, slot, generation);
    if (ok && --p->refcount[slot] == 0) {
        p->generation[slot]++; /* every handle of this loan is now stale */
        p->free_ring[(p->free_head + p->free_count) % p->size] = slot;
        p->free_count++;
        p->stats.releases++;
        pthread_cond_signal(&p->slot_freed);
    }
    pthread_mutex_unlock(&p->mu);
    return ok ? CLLM_OK : CLLM_ERR_REFCOUNT;
}

int cllm_pool_refcount(cllm_pool *p, int64_t slot, uint64_t generation,
                       int64_t *count)
{
    CLLM_CHECK(p && count);
    CLLM_CHECK(slot >= 0 && slot < p->size);
    pthread_mutex_lock(&p->mu);
    *count = p->generation[slot] == generation ? p->refcount[slot] : 0;
    pthread_mutex_unlock(&p->mu);
    return CLLM_OK;
}

int cllm_pool_close(cllm_pool *p)
{
    CLLM_CHECK(p);
    pthread_mutex_lock(&p->mu);
    p->closed = 1;
    pthread_cond_broadcast(&p->slot_freed);
    pthread_mutex_unlock(&p->mu);
    return CLLM_OK;
}

int64_t cllm_pool_available(cllm_pool *p)
{
    pthread_mutex_lock(&p->mu);
    int64_t n = p->free_count;
    pthread_mutex_unlock(&p->mu);
    return n;
}

int cllm_pool_closed(cllm_pool *p)
{
    pthread_mutex_lock(&p->mu);
    int c = p->closed;
    pthread_mutex_unlock(&p->mu);
    return c;
}

int cllm_pool_get_stats(cllm_pool *p, cllm_pool_stats *out)
{
    CLLM_CHECK(p && out);
    pthread_mutex_lock(&p->mu);
    *out = p->stats;
    pthread_mutex_unlock(&p->mu);
    return CLLM_OK;
}
