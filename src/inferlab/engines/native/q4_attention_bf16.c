/* Attention with bf16 products and fp32 sums, for CPUs with AVX-512 BF16 (Model.attention
   ATT_BF16; the others run q4_attention.c's fp32 arithmetic on an fp16 cache). One vdpbf16ps
   multiplies and adds 32 pairs of bf16 into 16 fp32 sums: 115 against 59 GMAC/s for fp32 FMAs
   on one core of the AMD Zen 4 it was written on (measured), and attention is most of a long
   prompt's arithmetic that is not the products'.

   The cache holds bf16 (8 bits of mantissa against fp16's 11; the same bytes) in layouts made
   for pairs, within each (sequence, layer, KV head)'s region:
   keys:   per block of 16 positions, [dimension / 2][16 positions][2 dimensions]: a vector of 16
           scores gets, per instruction, a pair of the query's dimensions times each position's pair;
   values: per pair of positions, [dimension][2 positions]: a vector of 16 output dimensions gets,
           per instruction, two positions' values times their two weights.
   The query and the softmax's weights are rounded to bf16 before their products. Each head's
   arithmetic is fixed by its own positions, as in q4_attention.c: the same bits for any
   grouping of rows, thread count or cut of a prompt into calls. */

#include "q4_common.h"

#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define KB 16        /* positions per block of keys: one vector of scores */
#define MAX_TURN 12  /* heads computed together (32 vector registers) */
#define AHEAD_BYTES 4096  /* software prefetch distance of the keys into L2, as q4_attention.c's */
#define AHEAD_PAIRS 12    /* and of the values, in pairs of positions */

/* a 32-bit pair of bf16 in every lane, as dot products take it */
static inline BF16_TARGET __m512bh pair_in_lanes(uint32_t pair) { return (__m512bh)_mm512_set1_epi32((int)pair); }

/* n floats (a multiple of 16) to bf16, rounded to nearest even, into dst */
static inline BF16_TARGET void to_bf16(uint16_t *dst, const float *src, int n) {
    for (int i = 0; i < n; i += 16) _mm256_storeu_si256((__m256i *)(dst + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + i)));
}

/* one position's key vector (hd floats, rotated) into the cache region K */
INTERNAL BF16_TARGET void cache_key_bf16(uint16_t *K, int pos, const float *k, int hd) {
    uint32_t pairs[128];  /* head_dim <= 256 (decoder.py checks) */
    to_bf16((uint16_t *)pairs, k, hd);
    uint32_t *at = (uint32_t *)(K + (size_t)(pos / KB) * hd * KB) + pos % KB;
    for (int c = 0; c < hd / 2; c++) at[c * KB] = pairs[c];  /* dimensions 2c and 2c + 1 */
}

/* one position's value vector into the cache region V */
INTERNAL BF16_TARGET void cache_value_bf16(uint16_t *V, int pos, const float *v, int hd) {
    uint16_t b[256];
    to_bf16(b, v, hd);
    uint16_t *at = V + (size_t)(pos / 2) * hd * 2 + pos % 2;
    for (int c = 0; c < hd; c++) at[2 * c] = b[c];
}

/* Scores of H query heads (qp: H x hd/2 pairs) against NB blocks of KB positions from j (a
   multiple of KB), times scale, into sc[h * stride + j - p0]: H x NB independent sums */
static inline __attribute__((always_inline)) BF16_TARGET void score_blocks(const uint32_t *qp, const int H, const int NB,
                                                                           const uint16_t *K, int j, int p0, int hd,
                                                                           __m512 vs, float *sc, int stride) {
    __m512 acc[MAX_TURN][4];
#pragma GCC unroll 12
    for (int h = 0; h < H; h++)
#pragma GCC unroll 4
        for (int b = 0; b < NB; b++) acc[h][b] = _mm512_setzero_ps();
    const uint16_t *kt = K + (size_t)(j / KB) * hd * KB;
    const char *ahead = (const char *)(kt + (size_t)NB * hd * KB) + AHEAD_BYTES;
    for (int c = 0; c < hd / 2; c++) {
#pragma GCC unroll 4
        for (int b = 0; b < NB; b++) _mm_prefetch(ahead + ((size_t)b * hd * KB + (size_t)c * 2 * KB) * 2, _MM_HINT_T1);
        __m512bh k[4];
#pragma GCC unroll 4
        for (int b = 0; b < NB; b++) k[b] = (__m512bh)_mm512_loadu_si512(kt + (size_t)b * hd * KB + (size_t)c * 2 * KB);
#pragma GCC unroll 12
        for (int h = 0; h < H; h++) {
            const __m512bh q = pair_in_lanes(qp[h * (hd / 2) + c]);
#pragma GCC unroll 4
            for (int b = 0; b < NB; b++) acc[h][b] = _mm512_dpbf16_ps(acc[h][b], q, k[b]);
        }
    }
#pragma GCC unroll 12
    for (int h = 0; h < H; h++)
#pragma GCC unroll 4
        for (int b = 0; b < NB; b++) _mm512_storeu_ps(sc + h * stride + (j - p0) + b * KB, _mm512_mul_ps(acc[h][b], vs));
}

/* outs[h] (hd floats each) = sum over the pairs of positions i0..i1 (pair i: positions p0 + 2i
   and p0 + 2i + 1) of the weights' pair wp[h][i] times the values' pair, plus outs[h]'s values
   when `more`; a last pair with one position (`half_last`) reads only that position's values.
   DV vectors (16 dimensions each) at a time: H x DV independent sums. */
static inline __attribute__((always_inline)) BF16_TARGET void values_h(const uint32_t *wp, const int H, const int DV,
                                                                       int wstride, const uint16_t *V, int p0, int i0,
                                                                       int i1, int half_last, int hd, float *const *outs,
                                                                       int more) {
    for (int c = 0; c < hd; c += 16 * DV) {
        __m512 acc[MAX_TURN][4];
#pragma GCC unroll 12
        for (int h = 0; h < H; h++)
#pragma GCC unroll 4
            for (int i = 0; i < DV; i++) acc[h][i] = more ? _mm512_loadu_ps(outs[h] + c + 16 * i) : _mm512_setzero_ps();
        for (int i = i0; i < i1; i++) {
            const uint16_t *v = V + (size_t)(p0 / 2 + i) * hd * 2 + (size_t)c * 2;
            _mm_prefetch((const char *)(v + (size_t)AHEAD_PAIRS * hd * 2), _MM_HINT_T1);
            /* the position past a half pair may hold anything: its lanes are read as zeros */
            const __mmask32 keep = half_last && i == i1 - 1 ? 0x55555555u : 0xFFFFFFFFu;
            __m512bh vv[4];
#pragma GCC unroll 4
            for (int d = 0; d < DV; d++) vv[d] = (__m512bh)_mm512_maskz_loadu_epi16(keep, v + 32 * d);
#pragma GCC unroll 12
            for (int h = 0; h < H; h++) {
                const __m512bh w = pair_in_lanes(wp[h * wstride + i]);
#pragma GCC unroll 4
                for (int d = 0; d < DV; d++) acc[h][d] = _mm512_dpbf16_ps(acc[h][d], w, vv[d]);
            }
        }
#pragma GCC unroll 12
        for (int h = 0; h < H; h++)
#pragma GCC unroll 4
            for (int d = 0; d < DV; d++) _mm512_storeu_ps(outs[h] + c + 16 * d, acc[h][d]);
    }
}

/* a turn of H heads (1..MAX_TURN, a constant in each copy): scoring, positions p0..p1; else the
   values of pairs i0..i1. NB blocks of keys are scored together where H alone gives too few
   independent sums; three heads (a decode step of grouped-query 3, as SmolLM2's) read one block
   at a time, one stream of keys: attention 0.87x the time of NB 4 on one thread (2048
   positions, 30 layers, a stand-alone loop of this file), the same bits (NB only groups the sums) */
#define TURN_CASE(H, NB, DV)                                                                               \
    case H:                                                                                                \
        if (scoring) {                                                                                     \
            int j = p0;                                                                                    \
            for (; j + NB * KB <= p1; j += NB * KB) score_blocks(qp, H, NB, K, j, p0, hd, vs, sc, stride); \
            for (; j < p1; j += KB) score_blocks(qp, H, 1, K, j, p0, hd, vs, sc, stride);                  \
        } else if (hd % (16 * DV) == 0) {                                                                  \
            values_h(wp, H, DV, stride, V, p0, i0, i1, half_last, hd, outs, more);                         \
        } else {                                                                                           \
            values_h(wp, H, 1, stride, V, p0, i0, i1, half_last, hd, outs, more);                          \
        }                                                                                                  \
        break;

static BF16_TARGET void turn(int scoring, const uint32_t *qp, int H, const uint16_t *K, const uint16_t *V, int p0,
                             int p1, int i0, int i1, int half_last, int hd, __m512 vs, float *sc, int stride,
                             float *const *outs, int more) {
    const uint32_t *wp = (const uint32_t *)sc;  /* the weights' pairs, where the scores were */
    switch (H) {
        TURN_CASE(1, 4, 4)
        TURN_CASE(2, 4, 4)
        TURN_CASE(3, 1, 4)
        TURN_CASE(4, 3, 4)
        TURN_CASE(5, 3, 2)
        TURN_CASE(6, 3, 2)
        TURN_CASE(7, 3, 2)
        TURN_CASE(8, 2, 2)
        TURN_CASE(9, 2, 2)
        TURN_CASE(10, 2, 2)
        TURN_CASE(11, 2, 2)
        TURN_CASE(12, 2, 2)
        default: break;
    }
}
#undef TURN_CASE

/* q4_common.h's exp8 on 16 lanes (the same bits; checked on 32 M inputs), in half the
   instructions: the softmax was a tenth of a decode step's attention */
static inline BF16_TARGET __m512 exp16(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
    __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
    __m512 i = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(t, i);
    __m512 p = _mm512_set1_ps(EXP_POLY[0]);
    for (int k = 1; k < 7; k++) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP_POLY[k]));
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(i), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

/* softmax's numerators over n scores, as bf16 pairs in place (pair i in the 32 bits at float i):
   returns the max and writes the sum (of the fp32 numerators) */
static BF16_TARGET float weights(float *sc, int n, float *sum_out) {
    __m512 vm = _mm512_set1_ps(-INFINITY);
    int j = 0;
    for (; j + 16 <= n; j += 16) vm = _mm512_max_ps(vm, _mm512_loadu_ps(sc + j));
    float mx = _mm512_reduce_max_ps(vm);
    for (; j < n; j++) mx = sc[j] > mx ? sc[j] : mx;
    const __m512 vmx = _mm512_set1_ps(mx);
    __m512 vsum = _mm512_setzero_ps();
    for (j = 0; j + 16 <= n; j += 16) {
        const __m512 x = _mm512_sub_ps(_mm512_loadu_ps(sc + j), vmx);
        const __m512 e = exp16(x);
        _mm512_storeu_ps(sc + j, e);
        vsum = _mm512_add_ps(vsum, e);
    }
    float sum = _mm512_reduce_add_ps(vsum);
    for (; j < n; j++) { sc[j] = expf(sc[j] - mx); sum += sc[j]; }
    *sum_out = sum;
    sc[n] = 0.0f;  /* an odd count's last pair: no second weight */
    for (j = 0; j < n; j += 32) {  /* 32 floats to 16 pairs, each store behind its loads */
        const __m512 lo = _mm512_loadu_ps(sc + j), hi = _mm512_loadu_ps(sc + j + 16);
        _mm512_storeu_si512(sc + j / 2, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
    return mx;
}

/* q4_attention.c's attend_rows in this arithmetic (the same arguments and parts) */
INTERNAL BF16_TARGET void attend_rows_bf16(const float *q, int n, int G, const uint16_t *K, const uint16_t *V, int p0,
                                           const int *p1, int hd, float scale, float *sc, float *part, size_t rstride,
                                           size_t pstride) {
    const int heads = n * G, stride = (p1[n - 1] - p0 + 2 * KB) / KB * KB;
    const __m512 vs = _mm512_set1_ps(scale);
    uint32_t qp[heads * hd / 2];  /* the queries as bf16 pairs */
    to_bf16((uint16_t *)qp, q, heads * hd);
    float *outs[heads];
    for (int h = 0; h < heads; h++) outs[h] = part + (size_t)(h / G) * rstride + (size_t)(h % G) * pstride + 8;
    for (int h0 = 0; h0 < heads; h0 += MAX_TURN) {
        const int H = heads - h0 < MAX_TURN ? heads - h0 : MAX_TURN;
        turn(1, qp + (size_t)h0 * hd / 2, H, K, V, p0, p1[n - 1], 0, 0, 0, hd, vs, sc + (size_t)h0 * stride, stride, 0, 0);
    }
    /* the values' first lines on their way while the softmax computes (their own prefetch runs
       AHEAD_PAIRS ahead of the pair it reads) */
    for (size_t i = 0; i < (size_t)AHEAD_PAIRS * hd * 2 * sizeof(uint16_t); i += 64)
        _mm_prefetch((const char *)(V + (size_t)p0 * hd) + i, _MM_HINT_T1);
    for (int h = 0; h < heads; h++) {
        float *ph = outs[h] - 8;
        ph[0] = weights(sc + (size_t)h * stride, p1[h / G] - p0, &ph[1]);
    }
    /* values: the whole pairs every row has, all heads together; then each row's further pairs */
    const int common = (p1[0] - p0) / 2;
    for (int h0 = 0; h0 < heads; h0 += MAX_TURN) {
        const int H = heads - h0 < MAX_TURN ? heads - h0 : MAX_TURN;
        turn(0, 0, H, K, V, p0, 0, 0, common, 0, hd, vs, sc + (size_t)h0 * stride, stride, outs + h0, 0);
    }
    for (int i = 0; i < n; i++) {
        const int len = p1[i] - p0, pairs = (len + 1) / 2;
        if (pairs > common)
            for (int h0 = i * G; h0 < (i + 1) * G; h0 += MAX_TURN) {
                const int H = (i + 1) * G - h0 < MAX_TURN ? (i + 1) * G - h0 : MAX_TURN;
                turn(0, 0, H, K, V, p0, 0, common, pairs, len % 2, hd, vs, sc + (size_t)h0 * stride, stride, outs + h0, 1);
            }
    }
}
