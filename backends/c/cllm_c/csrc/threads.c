/* The thread pool every parallel kernel runs on (pthreads, no OpenMP).
 *
 * cllm_parallel(chunks, nt, fn, ctx) calls fn(ctx, i, worker) once for each
 * chunk i in [0, chunks), on at most nt threads: the caller (worker 0) and
 * pool threads 1 .. nt-1, which claim chunks from a shared counter. Which
 * thread runs a chunk never changes a result: kernels make chunks whose
 * arithmetic is fixed by the problem, and `worker` only selects scratch
 * memory.
 *
 * Why not OpenMP: this machine's two cores are shared with other processes.
 * An OpenMP region ends with a barrier that every thread of the team must
 * reach, so a team thread that is waiting for its core stalls the call for a
 * scheduler time slice (milliseconds) even when the caller could have done
 * all the work. Here the caller claims chunks too, and returns as soon as
 * every chunk is done: a pool thread that wakes late finds the counter
 * exhausted (or tagged with a newer job) and touches nothing.
 *
 * The claim counter holds (job tag << 32 | next chunk), so a late thread can
 * never claim a chunk of a job other than the one it looked at. One job runs
 * at a time; a caller that finds the pool busy (another Python thread, or a
 * kernel called from inside a chunk) runs its chunks itself. */
#include "cllm.h"

#include <pthread.h>
#include <sched.h>

#define MAX_POOL 1024
#define SPIN_BEFORE_SLEEP 20000

static struct {
    pthread_mutex_t mu;
    pthread_cond_t wake;
    int started;                 /* pool threads running (worker ids 1..started) */
    uint64_t generation;         /* read without the lock: __atomic */
    cllm_chunk_fn fn;            /* the current job, written under mu */
    void *ctx;
    int64_t chunks;
    int nt;
    uint64_t claim;              /* tag << 32 | next */
    int64_t done;
    int busy;
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, NULL, NULL,
          0, 0, 0, 0, 0};

static __thread int inside_chunk;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;

static inline void cpu_relax(void)
{
#if CLLM_X86
    _mm_pause();
#endif
}

/* claims one chunk of the job tagged `tag`; -1 when none is left */
static int64_t claim(uint32_t tag, int64_t chunks)
{
    uint64_t c = __atomic_load_n(&pool.claim, __ATOMIC_ACQUIRE);
    for (;;) {
        if ((uint32_t)(c >> 32) != tag || (int64_t)(c & 0xffffffffu) >= chunks)
            return -1;
        if (__atomic_compare_exchange_n(&pool.claim, &c, c + 1, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
            return (int64_t)(c & 0xffffffffu);
    }
}

static void run_chunks(uint32_t tag, cllm_chunk_fn fn, void *ctx, int64_t chunks,
                       int worker)
{
    int64_t i;
    inside_chunk = 1;
    while ((i = claim(tag, chunks)) >= 0) {
        fn(ctx, i, worker);
        __atomic_add_fetch(&pool.done, 1, __ATOMIC_ACQ_REL);
    }
    inside_chunk = 0;
}

static void *worker_main(void *arg)
{
    int id = (int)(intptr_t)arg;
    uint64_t seen = 0;
    pthread_mutex_lock(&pool.mu);
    seen = pool.generation;
    for (;;) {
        if (pool.generation == seen) {
            /* spin a little before sleeping: kernels come in bursts */
            pthread_mutex_unlock(&pool.mu);
            for (int s = 0; s < SPIN_BEFORE_SLEEP; s++) {
                if (__atomic_load_n(&pool.generation, __ATOMIC_ACQUIRE) != seen)
                    break;
                cpu_relax();
            }
            pthread_mutex_lock(&pool.mu);
            while (pool.generation == seen)
                pthread_cond_wait(&pool.wake, &pool.mu);
        }
        seen = pool.generation;
        cllm_chunk_fn fn = pool.fn;
        void *ctx = pool.ctx;
        int64_t chunks = pool.chunks;
        int nt = pool.nt;
        pthread_mutex_unlock(&pool.mu);
        if (id < nt)
            run_chunks((uint32_t)seen, fn, ctx, chunks, id);
        pthread_mutex_lock(&pool.mu);
    }
    return NULL;
}

static void after_fork_child(void)
{
    /* the pool threads do not exist in the child: start afresh */
    pthread_mutex_init(&pool.mu, NULL);
    pthread_cond_init(&pool.wake, NULL);
    pool.started = 0;
    pool.busy = 0;
}

static void register_fork(void) { pthread_atfork(NULL, NULL, after_fork_child); }

/* lock held; returns how many pool threads exist (may be fewer than asked) */
static int ensure_workers(int want)
{
    if (want > MAX_POOL - 1)
        want = MAX_POOL - 1;
    while (pool.started < want) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&t, &attr, worker_main, (void *)(intptr_t)(pool.started + 1));
        pthread_attr_destroy(&attr);
        if (rc != 0)
            break; /* run with what we have; the caller can do all chunks */
        pool.started++;
    }
    return pool.started;
}

void cllm_parallel(int64_t chunks, int nt, cllm_chunk_fn fn, void *ctx)
{
    if (chunks <= 0)
        return;
    if (nt > chunks)
        nt = (int)chunks;
    if (nt <= 1 || inside_chunk || chunks >= ((int64_t)1 << 32)
        || __atomic_exchange_n(&pool.busy, 1, __ATOMIC_ACQ_REL)) {
        for (int64_t i = 0; i < chunks; i++)
            fn(ctx, i, 0);
        return;
    }
    pthread_once(&fork_once, register_fork);
    pthread_mutex_lock(&pool.mu);
    ensure_workers(nt - 1);
    uint64_t gen = pool.generation + 1;
    pool.fn = fn;
    pool.ctx = ctx;
    pool.chunks = chunks;
    pool.nt = nt;
    __atomic_store_n(&pool.done, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&pool.claim, (uint64_t)(uint32_t)gen << 32, __ATOMIC_RELEASE);
    __atomic_store_n(&pool.generation, gen, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.mu);
    run_chunks((uint32_t)gen, fn, ctx, chunks, 0);
    /* what is left is running on pool threads right now: wait for it */
    for (unsigned s = 0; __atomic_load_n(&pool.done, __ATOMIC_ACQUIRE) < chunks; s++) {
        cpu_relax();
        if ((s & 1023) == 1023)
            sched_yield();
    }
    __atomic_store_n(&pool.busy, 0, __ATOMIC_RELEASE);
}
