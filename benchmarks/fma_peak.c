/* Single-core float32 FMA peak of this CPU, measured: the bound the GEMM's
 * GFLOP/s are a fraction of (benchmarks/RESULTS.md).
 *
 *   gcc -O2 -mavx512f -mfma benchmarks/fma_peak.c -o /tmp/fma_peak && /tmp/fma_peak
 *
 * ACC independent chains of zmm FMAs (each 16 lanes x 2 FLOP) hide the FMA
 * latency (4 cycles) on both FMA ports: 2 ports x 4 cycles needs >= 8 chains;
 * 16 leaves margin. Nothing is loaded in the loop, so the figure is the
 * arithmetic peak at whatever clock the core runs AVX-512 code. The best of
 * several runs is reported (the machine is shared; a run can only lose time
 * to other processes, never gain it). */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

#define ACC 16 /* chains in run() */
#define ITERS 1000000L
#define RUNS 200

typedef __m512 vec;
#define LANES 16
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define ADD _mm512_add_ps
#define STORE _mm512_storeu_ps

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* x = x * a + b stays finite (a < 1). The chains are written as named
 * register variables, unrolled by hand: an array of accumulators lets the
 * compiler spill them to the stack, and the stores then set the pace. */
#define CHAIN(i) vec x##i = SET1((float)i)
#define STEP(i) x##i = FMA(x##i, a, b)
static float run(float a_in, float b_in)
{
    vec a = SET1(a_in), b = SET1(b_in);
    CHAIN(0); CHAIN(1); CHAIN(2); CHAIN(3); CHAIN(4); CHAIN(5); CHAIN(6); CHAIN(7);
    CHAIN(8); CHAIN(9); CHAIN(10); CHAIN(11); CHAIN(12); CHAIN(13); CHAIN(14); CHAIN(15);
    for (long it = 0; it < ITERS; it++) {
        STEP(0); STEP(1); STEP(2); STEP(3); STEP(4); STEP(5); STEP(6); STEP(7);
        STEP(8); STEP(9); STEP(10); STEP(11); STEP(12); STEP(13); STEP(14); STEP(15);
    }
    vec s = ADD(ADD(ADD(ADD(x0, x1), ADD(x2, x3)), ADD(ADD(x4, x5), ADD(x6, x7))),
                ADD(ADD(ADD(x8, x9), ADD(x10, x11)), ADD(ADD(x12, x13), ADD(x14, x15))));
    float out[LANES];
    STORE(out, s);
    return out[0];
}

int main(void)
{
    double best = 0.0;
    float sink = 0.0f;
    for (int r = 0; r < RUNS; r++) {
        double t0 = now();
        sink += run(0.999f, 0.001f);
        double gflops = 2.0 * LANES * ACC * (double)ITERS / (now() - t0) / 1e9;
        if (gflops > best)
            best = gflops;
    }
    printf("fp32 FMA peak, one core, %d-bit: %.1f GFLOP/s (best of %d; sink %g)\n",
           LANES * 32, best, RUNS, (double)sink);
    return 0;
}
