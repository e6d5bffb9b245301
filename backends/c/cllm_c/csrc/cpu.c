/* Runtime configuration: CPU feature detection, the SIMD level in use, the
 * thread count (threads.c runs the kernels on it), status strings and
 * aligned allocation.
 *
 * CLLM_C_SCALAR=1 forces the scalar kernels; CLLM_NUM_THREADS=n sets the
 * thread count (default: every core this process may run on). Both are read
 * by cllm_init(), which the Python package calls once at import. */
#define _GNU_SOURCE 1 /* sched_getaffinity */
#include "cllm.h"

#include <sched.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

int cllm_simd_current = CLLM_SIMD_SCALAR;
static int detected = -1;
static int n_threads = 1;

const char *cllm_strerror(int status)
{
    switch (status) {
    case CLLM_OK: return "ok";
    case CLLM_ERR_ARG: return "invalid argument (size, pointer or option)";
    case CLLM_ERR_ID_RANGE: return "id out of range";
    case CLLM_ERR_NOMEM: return "out of memory";
    case CLLM_ERR_TIMEOUT: return "timed out";
    case CLLM_ERR_CLOSED: return "closed";
    case CLLM_ERR_REFCOUNT: return "reference count error";
    case CLLM_ERR_EMPTY: return "empty";
    case CLLM_ERR_SYSTEM: return "system call failed";
    case CLLM_ERR_NONFINITE: return "non-finite input (NaN or inf)";
    default: return "unknown status";
    }
}

static int detect(void)
{
#if CLLM_X86
    __builtin_cpu_init();
    /* libgcc checks the OS saves the wider registers (XCR0) too */
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")
        && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return CLLM_SIMD_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return CLLM_SIMD_AVX2;
#endif
    return CLLM_SIMD_SCALAR;
}

int cllm_simd_detected(void)
{
    if (detected < 0)
        detected = detect();
    return detected;
}

int cllm_simd_level(void) { return cllm_simd_current; }

/* Clamp to what the CPU has; returns the level now in use. */
int cllm_set_simd_level(int level)
{
    int best = cllm_simd_detected();
    if (level < CLLM_SIMD_SCALAR)
        level = CLLM_SIMD_SCALAR;
    cllm_simd_current = level < best ? level : best;
    return cllm_simd_current;
}

/* the cores this process may run on (its affinity mask), not all online ones */
static int default_threads(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
        return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (int)n;
}

int cllm_num_threads(void) { return n_threads; }

int cllm_set_num_threads(int n)
{
    if (n < 1 || n > 1024)
        return CLLM_ERR_ARG;
    n_threads = n;
    return CLLM_OK;
}

static int parse_threads(const char *text, int *out)
{
    char *end = NULL;
    long v;
    errno = 0;
    v = strtol(text, &end, 10);
    if (errno || end == text || *end != '\0' || v < 1 || v > 1024)
        return CLLM_ERR_ARG;
    *out = (int)v;
    return CLLM_OK;
}

int cllm_init(void)
{
    const char *scalar = getenv("CLLM_C_SCALAR");
    const char *threads = getenv("CLLM_NUM_THREADS");
    int n = default_threads();
    int force_scalar = scalar && *scalar && strcmp(scalar, "0") != 0;
    cllm_set_simd_level(force_scalar ? CLLM_SIMD_SCALAR : CLLM_SIMD_AVX512);
    if (threads && *threads && parse_threads(threads, &n) != CLLM_OK)
        return CLLM_ERR_ARG;
    n_threads = n;
    return CLLM_OK;
}

int cllm_threads_for(int64_t work, int64_t grain)
{
    int64_t useful = grain > 0 ? work / grain : work;
    if (useful < 1)
        useful = 1;
    return useful < n_threads ? (int)useful : n_threads;
}

void *cllm_alloc(size_t bytes)
{
    void *p = NULL;
    if (bytes == 0)
        bytes = 64;
    if (posix_memalign(&p, 64, bytes) != 0)
        return NULL;
    return p;
}

void cllm_free(void *p) { free(p); }

/* Large arrays the Python side returns (optimizer states, probabilities,
 * logits, gradients) come from here rather than from malloc. glibc maps a
 * block that large afresh on every allocation and unmaps it on free, so each
 * call of a memory-bound kernel paid for faulting in and zeroing its outputs
 * (about 25 ms per 134 MB buffer here, as much as the AdamW arithmetic).
 * Freed mappings are kept in a small cache and handed out again for the same
 * size: in a training loop the previous step's buffers are exactly what the
 * next step needs. Only memory no array refers to any more is reused. New
 * mappings ask for transparent huge pages. The mapping length sits in a
 * 64-byte header before the data, so the data stays 64-byte aligned. */
#define BIG_HEADER 64
#define HUGE_PAGE ((size_t)2 << 20)
/* slots: a production-sized step (6 layers, V = 30000) frees ~60 big
 * buffers; with 32 slots the rest were unmapped and mapped again every step
 * (223 huge-page faults, 374 ms of a 5.4 s step in the kernel's page
 * clearing). The byte cap, not the slots, bounds the memory kept. */
#define BIG_CACHE 128
#define BIG_CACHE_BYTES ((size_t)2 << 30) /* at most 2 GiB kept for reuse */

static struct {
    pthread_mutex_t mu;
    char *base[BIG_CACHE];
    size_t len[BIG_CACHE];
    size_t bytes;
    int next; /* the slot evicted next when the cache is full (round robin) */
} big = {PTHREAD_MUTEX_INITIALIZER, {0}, {0}, 0, 0};

static char *big_map(size_t len)
{
    char *raw = mmap(NULL, len + HUGE_PAGE, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED)
        return NULL;
    /* keep the 2 MiB-aligned part: huge pages need aligned ranges */
    size_t head = (HUGE_PAGE - (uintptr_t)raw % HUGE_PAGE) % HUGE_PAGE;
    if (head)
        munmap(raw, head);
    if (HUGE_PAGE - head)
        munmap(raw + head + len, HUGE_PAGE - head);
#ifdef MADV_HUGEPAGE
    madvise(raw + head, len, MADV_HUGEPAGE); /* advice only: failure is harmless */
#endif
    return raw + head;
}

void *cllm_big_alloc(size_t bytes)
{
    size_t len = (bytes + BIG_HEADER + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE;
    char *base = NULL;
    pthread_mutex_lock(&big.mu);
    for (int i = 0; i < BIG_CACHE && !base; i++)
        if (big.base[i] && big.len[i] == len) {
            base = big.base[i];
            big.base[i] = NULL;
            big.bytes -= len;
        }
    pthread_mutex_unlock(&big.mu);
    if (!base && !(base = big_map(len)))
        return NULL;
    memcpy(base, &len, sizeof(len));
    return base + BIG_HEADER;
}

void cllm_big_free(void *p)
{
    if (!p)
        return;
    char *base = (char *)p - BIG_HEADER, *evicted[BIG_CACHE];
    size_t len, evicted_len[BIG_CACHE];
    int n_evicted = 0, slot = -1;
    memcpy(&len, base, sizeof(len));
    pthread_mutex_lock(&big.mu);
    if (len <= BIG_CACHE_BYTES) {
        /* make room: evict in round-robin order until a slot and the bytes fit */
        for (int tries = 0; tries < BIG_CACHE; tries++) {
            for (int i = 0; i < BIG_CACHE && slot < 0; i++)
                if (!big.base[i])
                    slot = i;
            if (slot >= 0 && big.bytes + len <= BIG_CACHE_BYTES)
                break;
            int v = big.next;
            big.next = (big.next + 1) % BIG_CACHE;
            if (big.base[v]) {
                evicted[n_evicted] = big.base[v];
                evicted_len[n_evicted++] = big.len[v];
                big.bytes -= big.len[v];
                big.base[v] = NULL;
            }
            slot = -1;
        }
        if (slot >= 0 && big.bytes + len <= BIG_CACHE_BYTES) {
            big.base[slot] = base;
            big.len[slot] = len;
            big.bytes += len;
            base = NULL;
        }
    }
    pthread_mutex_unlock(&big.mu);
    for (int i = 0; i < n_evicted; i++)
        munmap(evicted[i], evicted_len[i]);
    if (base)
        munmap(base, len);
}

/* Asks for [p, p + bytes) on transparent huge pages, now: the weights a
 * decoding step streams. A token of the production model reads 89 MB of
 * them; on 4 KiB pages that is ~22,000 TLB misses a token, and batch-1
 * decoding measured 148-161 tokens/s where the same weights on 2 MiB pages
 * gave 228-261 (one thread). Whether an array got huge pages when its pages
 * were first touched depends on what memory was free then, so this collapses
 * its 2 MiB-aligned interior in place (MADV_COLLAPSE, Linux 6.1; a no-op
 * where it is backed so already). Advice only: the contents never change,
 * and where the kernel cannot or will not (older kernels, THP off, a file
 * mapping) it returns 0 and nothing changes. 1 if the collapse succeeded. */
#if defined(__linux__) && !defined(MADV_COLLAPSE)
#define MADV_COLLAPSE 25 /* the kernel's value; C libraries older than it lack the name */
#endif

int cllm_huge_pages(const void *p, size_t bytes)
{
    uintptr_t start = ((uintptr_t)p + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE;
    uintptr_t end = ((uintptr_t)p + bytes) / HUGE_PAGE * HUGE_PAGE;
    if (!p || end <= start)
        return 0;
    int ok = 0;
#ifdef MADV_HUGEPAGE
    madvise((void *)start, end - start, MADV_HUGEPAGE);
#endif
#ifdef MADV_COLLAPSE
    ok = madvise((void *)start, end - start, MADV_COLLAPSE) == 0;
#endif
    return ok;
}
