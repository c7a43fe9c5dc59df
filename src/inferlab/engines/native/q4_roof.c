/* The machine's int8 dot-product peak, probed like the memory bandwidth: each thread runs
   independent chains of the instructions the 4-bit kernel's copy for a path uses (vpdpbusd on
   512-bit vectors for AVX-512 VNNI, on 256-bit for AVX-VNNI; AVX2's multiply-add of bytes in
   pairs of blocks, as DOT2 does) on values held in registers, so nothing but the arithmetic
   limits it: the compute roof of the native decoder's products (and of any int8 kernel). */

#include "q4_common.h"

#define CHAINS 8  /* independent sums: more than latency x throughput of these instructions */

/* x's value is hidden from the compiler every round, so no product can be computed once for
   all rounds; each chain's own bytes w[c] keep the chains from sharing a product */
#define HIDE(v) __asm__ volatile("" : "+v"(v))

static long roof_avx2(long rounds) {
    __m256i acc[CHAINS], w[CHAINS], x = _mm256_set1_epi8(-3);
    const __m256i ones = _mm256_set1_epi16(1);
    for (int c = 0; c < CHAINS; c++) acc[c] = _mm256_setzero_si256(), w[c] = _mm256_set1_epi8((char)(c + 1));
    for (long r = 0; r < rounds; r++) {
        HIDE(x);
#pragma GCC unroll 8
        for (int c = 0; c < CHAINS; c++)  /* 64 multiply-adds, as DOT2 */
            acc[c] = _mm256_add_epi32(acc[c], _mm256_madd_epi16(_mm256_add_epi16(
                _mm256_maddubs_epi16(w[c], x), _mm256_maddubs_epi16(w[c], _mm256_xor_si256(x, w[c]))), ones));
    }
    __m256i s = acc[0];
    for (int c = 1; c < CHAINS; c++) s = _mm256_add_epi32(s, acc[c]);
    return _mm256_extract_epi32(s, 0);
}

__attribute__((target("avxvnni"))) static long roof_avx_vnni(long rounds) {
    __m256i acc[CHAINS], w = _mm256_set1_epi8(7), x = _mm256_set1_epi8(-3);
    for (int c = 0; c < CHAINS; c++) acc[c] = _mm256_set1_epi32(c);
    for (long r = 0; r < rounds; r++) {
        HIDE(x);
#pragma GCC unroll 8
        for (int c = 0; c < CHAINS; c++) acc[c] = _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(acc[c], w, x), w, x);
    }
    __m256i s = acc[0];
    for (int c = 1; c < CHAINS; c++) s = _mm256_add_epi32(s, acc[c]);
    return _mm256_extract_epi32(s, 0);
}

__attribute__((target("avx512f,avx512vnni"))) static long roof_avx512_vnni(long rounds) {
    __m512i acc[CHAINS], w = _mm512_set1_epi8(7), x = _mm512_set1_epi8(-3);
    for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_set1_epi32(c);
    for (long r = 0; r < rounds; r++) {
        HIDE(x);
#pragma GCC unroll 8
        for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(acc[c], w, x), w, x);
    }
    __m512i s = acc[0];
    for (int c = 1; c < CHAINS; c++) s = _mm512_add_epi32(s, acc[c]);
    return _mm512_reduce_add_epi32(s);
}

/* Multiply-adds of int8 pairs per second on `threads` threads with the path's instructions
   (PATH_*), `rounds` rounds per thread; -1 for no such path. Each round is 64 multiply-adds per
   chain on 256-bit vectors and 128 on 512-bit ones. */
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
    const double per_round = CHAINS * (path == PATH_AVX512_VNNI ? 128.0 : 64.0);
    return sink == 42 ? 0.0 : (double)threads * rounds * per_round / (t1 - t0);  /* the sums are used */
}
