/* The products: activations quantized to int8 per block of 32, and each thread's rows of a
   4-bit (Q4_1 rule) or 8-bit (Q8_0 rule) matrix times them. */

#include "q4_common.h"

/* blocks b0..b1 of row t into a, their values from x (block b0's first) */
INTERNAL void quantize_blocks(const float *x, Act *a, int t, int b0, int b1) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const int nb = a->k / QK;
    int8_t *q = a->q + (size_t)t * a->k;
    float *d = a->d + (size_t)t * nb, *s = a->s + (size_t)t * nb, *e = a->e + (size_t)t * nb;
    for (int b = b0; b < b1; b++) {
        const float *xb = x + (b - b0) * QK;
        __m256 v0 = _mm256_loadu_ps(xb), v1 = _mm256_loadu_ps(xb + 8);
        __m256 v2 = _mm256_loadu_ps(xb + 16), v3 = _mm256_loadu_ps(xb + 24);
        __m256 amax = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                                    _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
        float mx = hmax8(amax);
        float scale = mx / 127.0f, inv = mx > 0.0f ? 127.0f / mx : 0.0f;
        __m256 iv = _mm256_set1_ps(inv);
        /* round to nearest (cvtps uses the MXCSR default, round-to-nearest-even) */
        __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, iv)), i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, iv));
        __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, iv)), i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, iv));
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
        /* packs interleave the 128-bit lanes: restore element order */
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(q + b * QK), p);
        __m256i s32 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), p), _mm256_set1_epi16(1));
        d[b] = scale;
        s[b] = hsum8(_mm256_add_ps(_mm256_add_ps(v0, v1), _mm256_add_ps(v2, v3)));
        e[b] = 8.0f * (s[b] - scale * hsum8(_mm256_cvtepi32_ps(s32)));  /* times 8, as the 4-bit kernel uses it */
    }
}

INTERNAL void quantize_token(const float *x, Act *a, int t) { quantize_blocks(x, a, t, 0, a->k / QK); }

/* ---- the 4-bit product, one copy per instruction path ------------------------------------

   Per block, w = q * d + m = (q - 8) * d + (m + 8 d), and with x = dx * xq + (rounding):
   sum(w x) = d * dx * sum(q xq) - 8 d (dx * sum(xq)) + (m + 8 d) * sum(x)
            = d * (dx * sum(q xq) + e) + m * s      (s = sum(x), e = 8 (s - dx * sum(xq))).
   The offsets' part thus multiplies the exact sum of x, and the int8 rounding of x is not
   multiplied by q's mean. The integer sums are exact on every path, and the float arithmetic
   after them is the same: the paths give the same bits. */

/* four activation bytes as one int32, and in every 32-bit lane */
static inline int32_t four(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}
static inline __m256i four_bytes(const int8_t *p) { return _mm256_set1_epi32(four(p)); }

/* AVX2: no byte dot product; maddubs gives pairs in int16 (each at most 2 * 15 * 127, and the
   two added at most 4 * 15 * 127: no saturation), madd with ones the 32-bit lanes */
#include "q4_vec256.h"
#define SUFFIX avx2
#define TARGET
#define RN 4
#define DOT2(acc, lo, hi, xp) _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_add_epi16( \
    _mm256_maddubs_epi16(lo, four_bytes(xp)), _mm256_maddubs_epi16(hi, four_bytes(xp + 4))), _mm256_set1_epi16(1)))
#include "q4_kernel4.h"

/* AVX-VNNI (Intel since Alder Lake and Sapphire Rapids, AMD since Zen 5): vpdpbusd in VEX form */
#include "q4_vec256.h"
#define SUFFIX avx_vnni
#define TARGET __attribute__((target("avxvnni")))
#define RN 4
#define DOT2(acc, lo, hi, xp) _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(acc, lo, four_bytes(xp)), hi, four_bytes(xp + 4))
#include "q4_kernel4.h"

/* AVX-512 VNNI: 512-bit vectors, a whole tile each. On AMD Zen 4 a 512-bit vpdpbusd runs at
   nearly the rate of a 256-bit one (measured, one core: 234 against 128 GMAC/s), so the wide
   form nearly doubles the products' arithmetic rate. */
#include "q4_vec512.h"
#define SUFFIX avx512_vnni
#define TARGET __attribute__((target("avx512f,avx512vl,avx512bw,avx512vnni")))
#define RN 4
#define DOT2(acc, lo, hi, xp) _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(acc, lo, _mm512_set1_epi32(four(xp))), hi, \
                                                  _mm512_set1_epi32(four(xp + 4)))
#include "q4_kernel4.h"

/* rows r0..r1 of W x[t] for a 4-bit matrix (r0 and r1 multiples of 16) into y[t * ldy + r - r0];
   path: which instruction sets (PATH_*) the kernel may use */
INTERNAL void matmul4_rows(const Mat4 *w, const Act *x, int tokens, float *y, int ldy, int r0, int r1, int path) {
    switch (path) {
        case PATH_AVX512_VNNI: matmul4_avx512_vnni(w, x, tokens, y, ldy, r0, r1); break;
        case PATH_AVX_VNNI: matmul4_avx_vnni(w, x, tokens, y, ldy, r0, r1); break;
        default: matmul4_avx2(w, x, tokens, y, ldy, r0, r1);
    }
}

/* Row pair i of the range r0..r1: row ra from its first half, rb from its second. The odd row
   out, when there is one, is the last pair, the last row with itself (computed twice, stored
   alike). */
static inline int row_pairs(int r0, int r1) { return (r1 - r0 + 1) / 2; }

static inline void row_pair(int i, int r0, int r1, int *ra, int *rb) {
    const int half_rows = (r1 - r0) / 2;
    *ra = i < half_rows ? r0 + i : r1 - 1;
    *rb = i < half_rows ? r0 + half_rows + i : *ra;
}

static inline __m256 dot8_block(const int8_t *w, const int8_t *x, float scale, __m256 acc) {
    __m256i wv = _mm256_loadu_si256((const __m256i *)w), xv = _mm256_loadu_si256((const __m256i *)x);
    __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv)),
                                  _mm256_set1_epi16(1));
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(scale), acc);
}

/* 8-bit signed weights: maddubs wants an unsigned left operand, so |w| and x with w's sign.
   Rows outside, tokens inside, as in matmul4_rows. */
INTERNAL void matmul8_rows(const Mat8 *w, const Act *x, int tokens, float *y, int ldy, int r0, int r1) {
    const int nb = w->k / QK;
    /* two rows at a time, one from each half of the range: two streams, as in matmul4_rows */
    for (int i = 0; i < row_pairs(r0, r1); i++) {
        int ra, rb;
        row_pair(i, r0, r1, &ra, &rb);
        const int8_t *qa = w->q + (size_t)ra * nb * QK, *qb = w->q + (size_t)rb * nb * QK;
        const uint16_t *da = w->d + (size_t)ra * nb, *db = w->d + (size_t)rb * nb;
        for (int t = 0; t < tokens; t++) {
            const int8_t *xq = x->q + (size_t)t * w->k;
            const float *xd = x->d + (size_t)t * nb;
            __m256 acca = _mm256_setzero_ps(), accb = _mm256_setzero_ps();
            for (int b = 0; b < nb; b++) {
                acca = dot8_block(qa + b * QK, xq + b * QK, half(da[b]) * xd[b], acca);
                accb = dot8_block(qb + b * QK, xq + b * QK, half(db[b]) * xd[b], accb);
            }
            y[(size_t)t * ldy + ra] = hsum8(acca);
            y[(size_t)t * ldy + rb] = hsum8(accb);
        }
    }
}

/* ---- single products, for tests: y[t] = W x[t], x quantized as the forward pass does ---------- */

void product4(const Mat4 *w, const float *x, int tokens, float *y, float *scratch, int path) {
    Act a;
    act_layout(&a, scratch, w->k, tokens);
    for (int t = 0; t < tokens; t++) quantize_token(x + (size_t)t * w->k, &a, t);
    matmul4_rows(w, &a, tokens, y, w->n, 0, w->n, path);
}

void product8(const Mat8 *w, const float *x, int tokens, float *y, float *scratch) {
    Act a;
    act_layout(&a, scratch, w->k, tokens);
    for (int t = 0; t < tokens; t++) quantize_token(x + (size_t)t * w->k, &a, t);
    matmul8_rows(w, &a, tokens, y, w->n, 0, w->n);
}
