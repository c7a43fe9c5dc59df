/* Attention: the new positions' keys and values into the fp16 cache, and each query head's
   attention over a range of its sequence's positions, as a part that combine_parts joins with
   the other threads' parts (the log-sum-exp rule).

   Keys are cached in blocks of 8 positions, transposed: [position / 8][dimension][8]. A score
   is then one broadcast of a query value times 8 positions' keys per dimension, 8 scores in
   one vector with no sum across lanes; and the query heads that share a KV head (grouped-query
   attention) read each converted key vector once for all of them. Values stay [position][dim]. */

#include "q4_common.h"

#define KB 8  /* positions per block of transposed keys */
#define MAX_GROUP 4  /* query heads computed together (a larger group: in turns) */
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
   0.97x the step time at 90 positions (SmolLM2). */
INTERNAL void cache_kv(const Model *m, float *qkv, int tokens, const int32_t *seqs, const int32_t *positions, int layer,
                       int r0, int r1) {
    const int hd = m->head_dim, half_hd = hd / 2, qkv_n = (m->heads + 2 * m->kv_heads) * hd;
    const int h0 = (r0 > m->heads * hd ? r0 : m->heads * hd) / hd, h1 = r1 / hd;
    for (int t = 0; t < tokens; t++) {
        const int pos = positions[t];
        float *row = qkv + (size_t)t * qkv_n;
        for (int h = h0; h < h1; h++) {
            float *v = row + (size_t)h * hd;  /* this thread's rows: rotated in place */
            if (h < m->heads + m->kv_heads) {
                if (m->cos) rope(v, hd, m->cos + (size_t)pos * half_hd, m->sin + (size_t)pos * half_hd);
                uint16_t *k = m->k_cache + cache_at(m, seqs[t], layer, h - m->heads, 0) + (size_t)(pos / KB) * hd * KB + pos % KB;
                for (int c = 0; c < hd; c++) k[c * KB] = _cvtss_sh(v[c], _MM_FROUND_TO_NEAREST_INT);
            } else {
                store_half(m->v_cache + cache_at(m, seqs[t], layer, h - m->heads - m->kv_heads, pos), v, hd);
            }
        }
    }
}

/* Scores of G query heads (q: G x hd) against NB blocks of KB positions from j (a multiple of
   KB), times scale, into sc[g * stride + j - p0]: G x NB independent sums per dimension */
static inline __attribute__((always_inline)) void score_blocks(const float *q, const int G, const int NB,
                                                               const uint16_t *K, int j, int p0, int hd, __m256 vs,
                                                               float *sc, int stride) {
    __m256 acc[MAX_GROUP][4];
#pragma GCC unroll 4
    for (int g = 0; g < G; g++)
#pragma GCC unroll 4
        for (int b = 0; b < NB; b++) acc[g][b] = _mm256_setzero_ps();
    const uint16_t *kt = K + (size_t)(j / KB) * hd * KB;
    const char *ahead = (const char *)(kt + (size_t)NB * hd * KB) + AHEAD_BYTES;
    for (int c = 0; c < hd; c++) {
        if (c % 4 == 0)  /* one line of the blocks a few passes on: 64 bytes per 4 dimensions, each block */
#pragma GCC unroll 4
            for (int b = 0; b < NB; b++) _mm_prefetch(ahead + ((size_t)b * hd + c) * KB * 2, _MM_HINT_T1);
        __m256 k[4];
#pragma GCC unroll 4
        for (int b = 0; b < NB; b++) k[b] = load_half8(kt + ((size_t)b * hd + c) * KB);
#pragma GCC unroll 4
        for (int g = 0; g < G; g++) {
            const __m256 qv = _mm256_broadcast_ss(q + g * hd + c);
#pragma GCC unroll 4
            for (int b = 0; b < NB; b++) acc[g][b] = _mm256_fmadd_ps(qv, k[b], acc[g][b]);
        }
    }
#pragma GCC unroll 4
    for (int g = 0; g < G; g++)
#pragma GCC unroll 4
        for (int b = 0; b < NB; b++) _mm256_storeu_ps(sc + g * stride + (j - p0) + b * KB, _mm256_mul_ps(acc[g][b], vs));
}

/* every score of positions p0..p1 (p0 a multiple of KB; the last block's extra lanes are
   written too, never read) */
static inline __attribute__((always_inline)) void scores_g(const float *q, const int G, const int NB, const uint16_t *K,
                                                           int p0, int p1, int hd, float scale, float *sc, int stride) {
    const __m256 vs = _mm256_set1_ps(scale);
    int j = p0;
    for (; j + NB * KB <= p1; j += NB * KB) score_blocks(q, G, NB, K, j, p0, hd, vs, sc, stride);
    for (; j < p1; j += KB) score_blocks(q, G, 1, K, j, p0, hd, vs, sc, stride);
}

/* out[g] (hd floats each, `ostride` apart) = sum over positions p0..p1 of p[g][j] V[j], for G
   heads sharing each converted value vector; DV vectors (8 dimensions each) at a time: G x DV
   independent sums, enough to cover the multiply-add's latency */
static inline __attribute__((always_inline)) void values_g(const float *p, const int G, const int DV, int stride,
                                                           const uint16_t *V, int p0, int p1, int hd, float *out,
                                                           int ostride) {
    for (int c = 0; c < hd; c += 8 * DV) {
        __m256 acc[MAX_GROUP][4];
#pragma GCC unroll 4
        for (int g = 0; g < G; g++)
#pragma GCC unroll 4
            for (int i = 0; i < DV; i++) acc[g][i] = _mm256_setzero_ps();
        for (int j = p0; j < p1; j++) {
            const uint16_t *v = V + (size_t)j * hd + c;
            _mm_prefetch((const char *)(v + (size_t)AHEAD_ROWS * hd), _MM_HINT_T1);
            __m256 vv[4];
#pragma GCC unroll 4
            for (int i = 0; i < DV; i++) vv[i] = load_half8(v + 8 * i);
#pragma GCC unroll 4
            for (int g = 0; g < G; g++) {
                const __m256 w = _mm256_broadcast_ss(p + g * stride + (j - p0));
#pragma GCC unroll 4
                for (int i = 0; i < DV; i++) acc[g][i] = _mm256_fmadd_ps(w, vv[i], acc[g][i]);
            }
        }
#pragma GCC unroll 4
        for (int g = 0; g < G; g++)
#pragma GCC unroll 4
            for (int i = 0; i < DV; i++) _mm256_storeu_ps(out + (size_t)g * ostride + c + 8 * i, acc[g][i]);
    }
}

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

/* Parts of query heads q (G x hd, rotated) over positions p0..p1 of their KV head (K, V): head
   g's part at part + g * pstride: the softmax's max and sum, then at 8 its output before
   normalization. sc: room for G x (p1 - p0 + KB) floats. */
INTERNAL void attend_group(const float *q, int G, const uint16_t *K, const uint16_t *V, int p0, int p1, int hd,
                           float scale, float *sc, float *part, size_t pstride) {
    if (p1 <= p0) {  /* no positions: an empty part */
        for (int g = 0; g < G; g++) {
            part[g * pstride] = -INFINITY;
            part[g * pstride + 1] = 0.0f;
            memset(part + g * pstride + 8, 0, hd * sizeof(float));
        }
        return;
    }
    for (int g0 = 0; g0 < G; g0 += MAX_GROUP) {
        const int n = G - g0 < MAX_GROUP ? G - g0 : MAX_GROUP, stride = (p1 - p0 + KB) / KB * KB;
        const float *qg = q + (size_t)g0 * hd;
        /* groups x blocks (or vectors) of 8 to 12 independent sums (the values: 16 or 32 dimensions) */
        switch (n) {
            case 1: scores_g(qg, 1, 4, K, p0, p1, hd, scale, sc, stride); break;
            case 2: scores_g(qg, 2, 4, K, p0, p1, hd, scale, sc, stride); break;
            case 3: scores_g(qg, 3, 3, K, p0, p1, hd, scale, sc, stride); break;
            default: scores_g(qg, 4, 2, K, p0, p1, hd, scale, sc, stride);
        }
        for (int g = 0; g < n; g++) {
            float *pg = part + (size_t)(g0 + g) * pstride;
            pg[0] = exp_scores(sc + g * stride, p1 - p0, &pg[1]);
        }
        float *out = part + (size_t)g0 * pstride + 8;
        const int wide = hd % 32 == 0;
        switch (n) {
            case 1: wide ? values_g(sc, 1, 4, stride, V, p0, p1, hd, out, (int)pstride)
                         : values_g(sc, 1, 2, stride, V, p0, p1, hd, out, (int)pstride); break;
            case 2: wide ? values_g(sc, 2, 4, stride, V, p0, p1, hd, out, (int)pstride)
                         : values_g(sc, 2, 2, stride, V, p0, p1, hd, out, (int)pstride); break;
            case 3: wide ? values_g(sc, 3, 4, stride, V, p0, p1, hd, out, (int)pstride)
                         : values_g(sc, 3, 2, stride, V, p0, p1, hd, out, (int)pstride); break;
            default: values_g(sc, 4, 2, stride, V, p0, p1, hd, out, (int)pstride);
        }
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
