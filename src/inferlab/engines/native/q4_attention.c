/* Attention: the new positions' k and v into the fp16 cache, and each thread's part of every
   head over its share of the positions, joined afterwards by the log-sum-exp rule. */

#include "q4_common.h"

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
                rope(v, hd, m->cos + (size_t)pos * half_hd, m->sin + (size_t)pos * half_hd);
                store_half(m->k_cache + cache_at(m, seqs[t], layer, h - m->heads, pos), v, hd);
            } else {
                store_half(m->v_cache + cache_at(m, seqs[t], layer, h - m->heads - m->kv_heads, pos), v, hd);
            }
        }
    }
}

/* sc[j] = (q . K[j]) * scale for j < n: eight positions at a time, their eight dot products
   summed across lanes together (one transposing reduction instead of eight) */
static void scores(const float *q, const uint16_t *K, int n, int hd, float scale, float *sc) {
    const __m256 vs = _mm256_set1_ps(scale);
    int j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
        const uint16_t *k = K + (size_t)j * hd;
        for (int c = 0; c < hd; c += 8) {
            const __m256 qv = _mm256_loadu_ps(q + c);
            a0 = _mm256_fmadd_ps(qv, load_half8(k + c), a0);
            a1 = _mm256_fmadd_ps(qv, load_half8(k + hd + c), a1);
            a2 = _mm256_fmadd_ps(qv, load_half8(k + 2 * hd + c), a2);
            a3 = _mm256_fmadd_ps(qv, load_half8(k + 3 * hd + c), a3);
            a4 = _mm256_fmadd_ps(qv, load_half8(k + 4 * hd + c), a4);
            a5 = _mm256_fmadd_ps(qv, load_half8(k + 5 * hd + c), a5);
            a6 = _mm256_fmadd_ps(qv, load_half8(k + 6 * hd + c), a6);
            a7 = _mm256_fmadd_ps(qv, load_half8(k + 7 * hd + c), a7);
        }
        /* hadd pairs, then pairs of pairs: each lane half holds four positions' partial sums */
        __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
        __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a4, a5), _mm256_hadd_ps(a6, a7));
        __m256 sum = _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
        _mm256_storeu_ps(sc + j, _mm256_mul_ps(sum, vs));
    }
    for (; j < n; j++) {
        __m256 acc = _mm256_setzero_ps();
        for (int c = 0; c < hd; c += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + c), load_half8(K + (size_t)j * hd + c), acc);
        sc[j] = hsum8(acc) * scale;
    }
}

/* One thread's part of one head's attention: positions p0..p1 of its KV head (K, V). Writes
   to part the part's softmax max and sum and its output before normalization, which
   combine_parts joins across threads (the log-sum-exp rule). */
INTERNAL void attend_part(const float *q, const uint16_t *K, const uint16_t *V, int p0, int p1, int hd, float scale,
                        float *sc, float *part) {
    float *out = part + 8;
    if (p1 <= p0) {  /* fewer positions than threads */
        part[0] = -INFINITY;
        part[1] = 0.0f;
        memset(out, 0, hd * sizeof(float));
        return;
    }
    const int len = p1 - p0;
    K += (size_t)p0 * hd;
    V += (size_t)p0 * hd;
    scores(q, K, len, hd, scale, sc);
    float mx = -INFINITY;
    for (int j = 0; j < len; j++) mx = sc[j] > mx ? sc[j] : mx;
    __m256 vmx = _mm256_set1_ps(mx), vsum = _mm256_setzero_ps();
    int j = 0;
    for (; j + 8 <= len; j += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(sc + j), vmx));
        _mm256_storeu_ps(sc + j, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    float sum = hsum8(vsum);
    for (; j < len; j++) { sc[j] = expf(sc[j] - mx); sum += sc[j]; }
    /* out = sum_j sc[j] V[j], 64 values at a time in eight registers (one pass over V's rows) */
    int c = 0;
    for (; c + 64 <= hd; c += 64) {
        __m256 o0 = _mm256_setzero_ps(), o1 = o0, o2 = o0, o3 = o0, o4 = o0, o5 = o0, o6 = o0, o7 = o0;
        for (j = 0; j < len; j++) {
            const uint16_t *v = V + (size_t)j * hd + c;
            __m256 p = _mm256_broadcast_ss(sc + j);
            o0 = _mm256_fmadd_ps(p, load_half8(v), o0);
            o1 = _mm256_fmadd_ps(p, load_half8(v + 8), o1);
            o2 = _mm256_fmadd_ps(p, load_half8(v + 16), o2);
            o3 = _mm256_fmadd_ps(p, load_half8(v + 24), o3);
            o4 = _mm256_fmadd_ps(p, load_half8(v + 32), o4);
            o5 = _mm256_fmadd_ps(p, load_half8(v + 40), o5);
            o6 = _mm256_fmadd_ps(p, load_half8(v + 48), o6);
            o7 = _mm256_fmadd_ps(p, load_half8(v + 56), o7);
        }
        _mm256_storeu_ps(out + c, o0); _mm256_storeu_ps(out + c + 8, o1);
        _mm256_storeu_ps(out + c + 16, o2); _mm256_storeu_ps(out + c + 24, o3);
        _mm256_storeu_ps(out + c + 32, o4); _mm256_storeu_ps(out + c + 40, o5);
        _mm256_storeu_ps(out + c + 48, o6); _mm256_storeu_ps(out + c + 56, o7);
    }
    for (; c < hd; c += 8) {  /* a head size that is not a multiple of 64 */
        __m256 o = _mm256_setzero_ps();
        for (j = 0; j < len; j++) o = _mm256_fmadd_ps(_mm256_broadcast_ss(sc + j), load_half8(V + (size_t)j * hd + c), o);
        _mm256_storeu_ps(out + c, o);
    }
    part[0] = mx;
    part[1] = sum;
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
