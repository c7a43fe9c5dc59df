/* The machine's int8 dot-product peak, probed like the memory bandwidth: each thread runs
   independent chains of the same instructions the 4-bit kernel uses (vpdpbusd where the CPU
   has it, AVX2's multiply-add of bytes where not) on values held in registers, so nothing but
   the arithmetic limits it. The profiler's compute roof for the native decoder's products. */

#include "q4_common.h"

#define CHAINS 12  /* independent accumulators: more than latency x throughput on these cores */

#define ROOF(SUFFIX, TARGET, STEP)                                                              \
    static TARGET long CAT_ROOF(SUFFIX)(long rounds) {                                          \
        __m256i acc[CHAINS], w = _mm256_set1_epi8(7), x = _mm256_set1_epi8(-3);                 \
        for (int c = 0; c < CHAINS; c++) acc[c] = _mm256_set1_epi32(c);                         \
        for (long r = 0; r < rounds; r++) {                                                     \
            _Pragma("GCC unroll 12") for (int c = 0; c < CHAINS; c++) acc[c] = STEP(acc[c], w, x); \
            __asm__ volatile("" : "+x"(w), "+x"(x)); /* keep the operands unknown: no folding */ \
        }                                                                                       \
        __m256i sum = acc[0];                                                                   \
        for (int c = 1; c < CHAINS; c++) sum = _mm256_add_epi32(sum, acc[c]);                   \
        return _mm256_extract_epi32(sum, 0);                                                    \
    }
#define CAT_ROOF(s) roof_##s

#define STEP_AVX2(acc, w, x) _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1)))
#define STEP_AVX_VNNI(acc, w, x) _mm256_dpbusd_avx_epi32(acc, w, x)
#define STEP_AVX512_VNNI(acc, w, x) _mm256_dpbusd_epi32(acc, w, x)

ROOF(avx2, , STEP_AVX2)
ROOF(avx_vnni, __attribute__((target("avxvnni"))), STEP_AVX_VNNI)
ROOF(avx512_vnni, __attribute__((target("avx512f,avx512vl,avx512bw,avx512vnni"))), STEP_AVX512_VNNI)

/* Multiply-adds of int8 pairs per second on `threads` threads with path's instructions, over
   `rounds` rounds per thread (CHAINS x 32 multiply-adds each); -1 for no such path. */
double int8_peak(int path, int threads, long rounds) {
    if (path < 0 || path >= PATHS) return -1.0;
    long sink = 0;
    double t0 = 0.0, t1 = 0.0;
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    {
#pragma omp barrier
#pragma omp master
        t0 = omp_get_wtime();
        switch (path) {
            case PATH_AVX512_VNNI: sink += roof_avx512_vnni(rounds); break;
            case PATH_AVX_VNNI: sink += roof_avx_vnni(rounds); break;
            default: sink += roof_avx2(rounds);
        }
#pragma omp barrier
#pragma omp master
        t1 = omp_get_wtime();
    }
    if (sink == 42) return 0.0;  /* uses the result: the loops are not removed */
    return (double)threads * rounds * CHAINS * 32 / (t1 - t0);
}
