/* Attention: the new positions' keys and values into the fp16 cache, and each query head's
   attention over a range of its sequence's positions, as a part that combine_parts joins with
   the other threads' parts (the log-sum-exp rule).

   Keys are cached in blocks of 8 positions, transposed: [position / 8][dimension][8]. A score
   is then one broadcast of a query value times 8 positions' keys per dimension, 8 scores in
   one vector with no sum across lanes; and the query heads that share a KV head (grouped-query
   attention) read each converted key vector once for all of them. Values stay [position][dim]. */

#include "q4_common.h"

#define KB 8  /* positions per block of transposed keys */
/* Attention streams the cache from memory in a decode step: software prefetches, into L2, this
   far ahead of the reads (keys: bytes past the next pass; values: rows). Into L2 rather than L1:
   0.87-0.88x the step at 2048 positions, 0.93x at 512 (A/B in one process, 10 rounds; farther
   ahead, 12 KiB and 96 rows, was no better) */
#define AHEAD_BYTES 4096
#define AHEAD_ROWS 24

static inline __m256 load_half8(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

/* n floats (a multiple of 8) to fp16, rounded to nearest */
static inline void store_half(uint16_t *dst, const float *src, int n) {
    for (int i = 0; i < n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
}

/* The KV cache holds fp16, as llama.cpp's does by default: attention reads it back from
   memory every step (the weights' stream evicts it from the caches); half the bytes measured
   0.97x the step time at 90 positions (SmolLM2). Rows t0..t1, the heads among rows r0..r1. */
INTERNAL void cache_kv(const Model *m, float *qkv, int t0, int t1, const int32_t *seqs, const int32_t *positions,
                       int layer, int r0, int r1) {
    const int hd = m->head_dim, half_hd = hd / 2, qkv_n = (m->heads + 2 * m->kv_heads) * hd;
    const int h0 = (r0 > m->heads * hd ? r0 : m->heads * hd) / hd, h1 = r1 / hd;
    for (int t = t0; t < t1; t++) {
        const int pos = positions[t];
        float *row = qkv + (size_t)t * qkv_n;
        for (int h = h0; h < h1; h++) {
            float *v = row + (size_t)h * hd;  /* this thread's rows: rotated in place */
            if (h < m->heads + m->kv_heads) {
                if (m->cos) rope(v, hd, m->cos + (size_t)pos * half_hd, m->sin + (size_t)pos * half_hd);
                uint16_t *K = m->k_cache + cache_at(m, seqs[t], layer, h - m->heads, 0);
                if (m->attention == ATT_BF16) {
                    cache_key_bf16(K, pos, v, hd);
                } else {
                    uint16_t *k = K + (size_t)(pos / KB) * hd * KB + pos % KB;
                    for (int c = 0; c < hd; c++) k[c * KB] = _cvtss_sh(v[c], _MM_FROUND_TO_NEAREST_INT);
                }
            } else {
                uint16_t *V = m->v_cache + cache_at(m, seqs[t], layer, h - m->heads - m->kv_heads, 0);
                if (m->attention == ATT_BF16) cache_value_bf16(V, pos, v, hd);
                else store_half(V + (size_t)pos * hd, v, hd);
            }
        }
    }
}

/* Query heads computed together, each converted key or value vector serving all of them: as
   many as the vector registers hold accumulators for (32 with AVX-512's, 16 without); more
   heads go in turns. How heads are grouped never changes a head's own arithmetic. */
#if defined(__AVX512VL__)
#define MAX_TURN 12
#else
#define MAX_TURN 4
#endif

/* Scores of H query heads (q: H x hd) against NB blocks of KB positions from j (a multiple of
   KB), times scale, into sc[h * stride + j - p0]: H x NB independent sums per dimension */
static inline __attribute__((always_inline)) void score_blocks(const float *q, const int H, const int NB,
                                                               const uint16_t *K, int j, int p0, int hd, __m256 vs,
                                                               float *sc, int stride) {
    __m256 acc[MAX_TURN][4];
#pragma GCC unroll 12
    for (int h = 0; h < H; h++)
#pragma GCC unroll 4
        for (int b = 0; b < NB; b++) acc[h][b] = _mm256_setzero_ps();
    const uint16_t *kt = K + (size_t)(j / KB) * hd * KB;
    const char *ahead = (const char *)(kt + (size_t)NB * hd * KB) + AHEAD_BYTES;
    for (int c = 0; c < hd; c++) {
        if (c % 4 == 0)  /* one line of the blocks a few passes on: 64 bytes per 4 dimensions, each block */
#pragma GCC unroll 4
            for (int b = 0; b < NB; b++) _mm_prefetch(ahead + ((size_t)b * hd + c) * KB * 2, _MM_HINT_T1);
        __m256 k[4];
#pragma GCC unroll 4
        for (int b = 0; b < NB; b++) k[b] = load_half8(kt + ((size_t)b * hd + c) * KB);
#pragma GCC unroll 12
        for (int h = 0; h < H; h++) {
            const __m256 qv = _mm256_broadcast_ss(q + h * hd + c);
#pragma GCC unroll 4
            for (int b = 0; b < NB; b++) acc[h][b] = _mm256_fmadd_ps(qv, k[b], acc[h][b]);
        }
    }
#pragma GCC unroll 12
    for (int h = 0; h < H; h++)
#pragma GCC unroll 4
        for (int b = 0; b < NB; b++) _mm256_storeu_ps(sc + h * stride + (j - p0) + b * KB, _mm256_mul_ps(acc[h][b], vs));
}

/* every score of positions p0..p1 (p0 a multiple of KB; the last block's extra lanes are
   written too, never read) */
static inline __attribute__((always_inline)) void scores_h(const float *q, const int H, const int NB, const uint16_t *K,
                                                           int p0, int p1, int hd, float scale, float *sc, int stride) {
    const __m256 vs = _mm256_set1_ps(scale);
    int j = p0;
    for (; j + NB * KB <= p1; j += NB * KB) score_blocks(q, H, NB, K, j, p0, hd, vs, sc, stride);
    for (; j < p1; j += KB) score_blocks(q, H, 1, K, j, p0, hd, vs, sc, stride);
}

/* outs[h] (hd floats each) = sum over positions j0..j1 of p[h][j - p0] V[j], plus outs[h]'s
   values when `more` (the sum continued: the same operations as one pass), for H heads sharing
   each converted value vector; DV vectors (8 dimensions each) at a time: H x DV independent
   sums, enough to cover the multiply-add's latency */
static inline __attribute__((always_inline)) void values_h(const float *p, const int H, const int DV, int stride,
                                                           const uint16_t *V, int j0, int j1, int p0, int hd,
                                                           float *const *outs, int more) {
    for (int c = 0; c < hd; c += 8 * DV) {
        __m256 acc[MAX_TURN][4];
#pragma GCC unroll 12
        for (int h = 0; h < H; h++)
#pragma GCC unroll 4
            for (int i = 0; i < DV; i++) acc[h][i] = more ? _mm256_loadu_ps(outs[h] + c + 8 * i) : _mm256_setzero_ps();
        for (int j = j0; j < j1; j++) {
            const uint16_t *v = V + (size_t)j * hd + c;
            _mm_prefetch((const char *)(v + (size_t)AHEAD_ROWS * hd), _MM_HINT_T1);
            __m256 vv[4];
#pragma GCC unroll 4
            for (int i = 0; i < DV; i++) vv[i] = load_half8(v + 8 * i);
#pragma GCC unroll 12
            for (int h = 0; h < H; h++) {
                const __m256 w = _mm256_broadcast_ss(p + h * stride + (j - p0));
#pragma GCC unroll 4
                for (int i = 0; i < DV; i++) acc[h][i] = _mm256_fmadd_ps(w, vv[i], acc[h][i]);
            }
        }
#pragma GCC unroll 12
        for (int h = 0; h < H; h++)
#pragma GCC unroll 4
            for (int i = 0; i < DV; i++) _mm256_storeu_ps(outs[h] + c + 8 * i, acc[h][i]);
    }
}

/* a turn of H heads (1..MAX_TURN, a constant in each copy): blocks or value vectors per pass as
   many as leave registers for H x of them (hd: a multiple of 16) */
#define TURN_CASE(H, NB, DVW, DVN)                                                            \
    case H:                                                                                   \
        if (scoring) scores_h(q, H, NB, K, p0, j1, hd, scale, sc, stride);                    \
        else if (hd % (8 * DVW) == 0) values_h(sc, H, DVW, stride, V, j0, j1, p0, hd, outs, more); \
        else values_h(sc, H, DVN, stride, V, j0, j1, p0, hd, outs, more);                    \
        break;

/* scoring: scores of positions p0..j1; else: values of j0..j1 */
static void turn(int scoring, const float *q, int H, const uint16_t *K, const uint16_t *V, int p0, int j0, int j1,
                 int hd, float scale, float *sc, int stride, float *const *outs, int more) {
    switch (H) {
        TURN_CASE(1, 4, 4, 2)
        TURN_CASE(2, 4, 4, 2)
        TURN_CASE(3, 3, 4, 2)
        TURN_CASE(4, 2, 2, 2)
#if MAX_TURN > 4
        TURN_CASE(5, 3, 2, 2)
        TURN_CASE(6, 3, 2, 2)
        TURN_CASE(7, 3, 2, 2)
        TURN_CASE(8, 2, 2, 2)
        TURN_CASE(9, 2, 2, 2)
        TURN_CASE(10, 2, 2, 2)
        TURN_CASE(11, 2, 2, 2)
        TURN_CASE(12, 2, 2, 2)
#endif
        default: break;
    }
}
#undef TURN_CASE

/* softmax's numerators in place over n scores: returns the max and writes the sum */
static float exp_scores(float *sc, int n, float *sum_out) {
    __m256 vm = _mm256_set1_ps(-INFINITY);
    int j = 0;
    for (; j + 8 <= n; j += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(sc + j));
    float mx = hmax8(vm);
    for (; j < n; j++) mx = sc[j] > mx ? sc[j] : mx;
    __m256 vmx = _mm256_set1_ps(mx), vsum = _mm256_setzero_ps();
    j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(sc + j), vmx));
        _mm256_storeu_ps(sc + j, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    float sum = hsum8(vsum);
    for (; j < n; j++) { sc[j] = expf(sc[j] - mx); sum += sc[j]; }
    *sum_out = sum;
    return mx;
}

/* Parts of the G query heads of n consecutive rows of one sequence (q: n x G x hd, rotated),
   row i over positions p0..p1[i] (p1 ascending, each above p0) of their KV head (K, V): head g
   of row i's part at part + i * rstride + g * pstride: the softmax's max and sum, then at 8
   its output before normalization. Each head's arithmetic is that of the head alone (its
   scores, their softmax over its own positions, its values summed in position order), whatever
   n, so a prompt's rows get the bits they would get one by one; the rows share each converted
   key and value vector. sc: room for n x G x (CHUNK + 32) floats. arith (ATT_*): bf16 runs
   q4_attention_bf16.c's arithmetic instead, on its cache. */
INTERNAL void attend_rows(int arith, const float *q, int n, int G, const uint16_t *K, const uint16_t *V, int p0,
                          const int *p1, int hd, float scale, float *sc, float *part, size_t rstride, size_t pstride) {
    if (arith == ATT_BF16) {
        attend_rows_bf16(q, n, G, K, V, p0, p1, hd, scale, sc, part, rstride, pstride);
        return;
    }
    const int heads = n * G, stride = (p1[n - 1] - p0 + KB) / KB * KB;
    float *outs[heads];
    for (int h = 0; h < heads; h++) outs[h] = part + (size_t)(h / G) * rstride + (size_t)(h % G) * pstride + 8;
    for (int h0 = 0; h0 < heads; h0 += MAX_TURN) {
        const int H = heads - h0 < MAX_TURN ? heads - h0 : MAX_TURN;
        turn(1, q + (size_t)h0 * hd, H, K, V, p0, p0, p1[n - 1], hd, scale, sc + (size_t)h0 * stride, stride, 0, 0);
    }
    for (int h = 0; h < heads; h++) {
        float *ph = outs[h] - 8;
        ph[0] = exp_scores(sc + (size_t)h * stride, p1[h / G] - p0, &ph[1]);
    }
    /* values: the positions every row has, all heads together; then each row's further ones */
    for (int h0 = 0; h0 < heads; h0 += MAX_TURN) {
        const int H = heads - h0 < MAX_TURN ? heads - h0 : MAX_TURN;
        turn(0, 0, H, K, V, p0, p0, p1[0], hd, scale, sc + (size_t)h0 * stride, stride, outs + h0, 0);
    }
    for (int i = 1; i < n; i++)
        if (p1[i] > p1[0])
            for (int h0 = i * G; h0 < (i + 1) * G; h0 += MAX_TURN) {
                const int H = (i + 1) * G - h0 < MAX_TURN ? (i + 1) * G - h0 : MAX_TURN;
                turn(0, 0, H, K, V, p0, p1[0], p1[i], hd, scale, sc + (size_t)h0 * stride, stride, outs + h0, 1);
            }
}

/* one head's output from its n parts (stride floats apart): each part's sum and output
   rescaled by exp(its max - the largest max) */
INTERNAL void combine_parts(const float *parts, int n, size_t stride, int hd, float *out) {
    float mx = -INFINITY, total = 0.0f;
    for (int i = 0; i < n; i++) mx = parts[i * stride] > mx ? parts[i * stride] : mx;
    for (int c = 0; c < hd; c += 8) _mm256_storeu_ps(out + c, _mm256_setzero_ps());
    for (int i = 0; i < n; i++) {
        const float *p = parts + i * stride;
        if (p[1] == 0.0f) continue;  /* a thread with no positions */
        const float w = expf(p[0] - mx);
        const __m256 vw = _mm256_set1_ps(w);
        total += w * p[1];
        for (int c = 0; c < hd; c += 8)
            _mm256_storeu_ps(out + c, _mm256_fmadd_ps(vw, _mm256_loadu_ps(p + 8 + c), _mm256_loadu_ps(out + c)));
    }
    const __m256 inv = _mm256_set1_ps(1.0f / total);
    for (int c = 0; c < hd; c += 8) _mm256_storeu_ps(out + c, _mm256_mul_ps(_mm256_loadu_ps(out + c), inv));
}
