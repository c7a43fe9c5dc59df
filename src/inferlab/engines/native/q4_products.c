/* The products: activations quantized to int8 per block of 32, and each thread's rows of a
   4-bit (Q4_1 rule) or 8-bit (Q8_0 rule) matrix times them. */

#include "q4_common.h"

/* blocks b0..b1 of row t of x [tokens, a->k] into row t of a; b0 even, b1 even or the row's end */
INTERNAL void quantize_blocks(const float *xrows, Act *a, int t, int b0, int b1) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const int nb = a->k / QK;
    const float *x = xrows + (size_t)t * a->k;
    int8_t *q = a->q + (size_t)t * a->k, *qp = a->qp + (size_t)t * a->k;
    float *d = a->d + (size_t)t * nb, *s = a->s + (size_t)t * nb, *e = a->e + (size_t)t * nb;
    for (int b = b0; b < b1; b++) {
        const float *xb = x + b * QK;
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
    int b = b0;
    for (; b + 1 < b1; b += 2) {
        __m256i v0 = _mm256_loadu_si256((const __m256i *)(q + b * QK));
        __m256i v1 = _mm256_loadu_si256((const __m256i *)(q + (b + 1) * QK));
        _mm256_storeu_si256((__m256i *)(qp + b * QK), _mm256_permute2x128_si256(v0, v1, 0x20));
        _mm256_storeu_si256((__m256i *)(qp + b * QK + 32), _mm256_permute2x128_si256(v0, v1, 0x31));
    }
    if (b < b1) memcpy(qp + b * QK, q + b * QK, QK);  /* a last unpaired block: element order */
}

INTERNAL void quantize_token(const float *xrows, Act *a, int t) { quantize_blocks(xrows, a, t, 0, a->k / QK); }

static inline __m256i unpack_nibbles(const uint8_t *p) {
    __m128i raw = _mm_loadu_si128((const __m128i *)p);
    __m256i both = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

/* one pair of blocks: the int8 dot products of both, lanes 0-3 the first block's, 4-7 the second's */
static inline __m256 pair_dots(const uint8_t *wq, const int8_t *xq) {
    const __m256i low = _mm256_set1_epi8(0x0F);
    __m256i raw = _mm256_loadu_si256((const __m256i *)wq);
    __m256i lo = _mm256_and_si256(raw, low), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
    /* each int16 sum is at most 4 * 15 * 127: no saturation */
    __m256i sum16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)xq)),
                                     _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(xq + 32))));
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(sum16, _mm256_set1_epi16(1)));
}

/* One group of up to eight blocks of one row: returns their scales times x's (the four pairs'
   two each) and adds their offsets' part m * s + 8 d * e to off (x's e is stored times 8). */
static inline __m256 group_terms(__m128i d8, __m128i m8, __m256 xd8, __m256 s8, __m256 e8, __m256 *off) {
    __m256 d = _mm256_cvtph_ps(d8);
    *off = _mm256_fmadd_ps(_mm256_cvtph_ps(m8), s8, _mm256_fmadd_ps(d, e8, *off));
    return _mm256_mul_ps(d, xd8);
}

/* One token's product with rows ra and rb of a 4-bit matrix, into ya and yb.
   Four pairs of blocks at a time: one vector holds their eight block scales and one their
   offsets' part; the last one to three pairs through masked loads, which read zeros past the
   row's end. */
static inline void rows4_token(const Mat4 *w, const Act *x, int t, int ra, int rb, float *ya, float *yb) {
    const int nb = w->k / QK, pairs = nb / 2;
    /* a pair's two scales, in-lane, from a vector holding one half of the eight in both lanes */
    const __m256i even = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1), odd = _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3);
    const uint8_t *qa = w->q + (size_t)ra * nb * 16, *qb = w->q + (size_t)rb * nb * 16;
    const uint16_t *da = w->d + (size_t)ra * nb, *db = w->d + (size_t)rb * nb;
    const uint16_t *ma = w->m + (size_t)ra * nb, *mb = w->m + (size_t)rb * nb;
    const int8_t *xq = x->qp + (size_t)t * w->k;
    const float *xd = x->d + (size_t)t * nb, *xs = x->s + (size_t)t * nb, *xe = x->e + (size_t)t * nb;
    __m256 acca = _mm256_setzero_ps(), accb = acca, offa = acca, offb = acca;
    int p = 0;
    for (; p + 4 <= pairs; p += 4) {
        const __m256 xd8 = _mm256_loadu_ps(xd + 2 * p), s8 = _mm256_loadu_ps(xs + 2 * p), e8 = _mm256_loadu_ps(xe + 2 * p);
#define LOAD8(h) _mm_loadu_si128((const __m128i *)((h) + 2 * p))
        __m256 sa = group_terms(LOAD8(da), LOAD8(ma), xd8, s8, e8, &offa);
        __m256 sb = group_terms(LOAD8(db), LOAD8(mb), xd8, s8, e8, &offb);
#undef LOAD8
        __m256 la = _mm256_permute2f128_ps(sa, sa, 0x00), ha = _mm256_permute2f128_ps(sa, sa, 0x11);
        __m256 lb = _mm256_permute2f128_ps(sb, sb, 0x00), hb = _mm256_permute2f128_ps(sb, sb, 0x11);
        const int8_t *xp = xq + p * 64;
        const uint8_t *pa = qa + p * 32, *pb = qb + p * 32;
        acca = _mm256_fmadd_ps(pair_dots(pa, xp), _mm256_permutevar_ps(la, even), acca);
        accb = _mm256_fmadd_ps(pair_dots(pb, xp), _mm256_permutevar_ps(lb, even), accb);
        acca = _mm256_fmadd_ps(pair_dots(pa + 32, xp + 64), _mm256_permutevar_ps(la, odd), acca);
        accb = _mm256_fmadd_ps(pair_dots(pb + 32, xp + 64), _mm256_permutevar_ps(lb, odd), accb);
        acca = _mm256_fmadd_ps(pair_dots(pa + 64, xp + 128), _mm256_permutevar_ps(ha, even), acca);
        accb = _mm256_fmadd_ps(pair_dots(pb + 64, xp + 128), _mm256_permutevar_ps(hb, even), accb);
        acca = _mm256_fmadd_ps(pair_dots(pa + 96, xp + 192), _mm256_permutevar_ps(ha, odd), acca);
        accb = _mm256_fmadd_ps(pair_dots(pb + 96, xp + 192), _mm256_permutevar_ps(hb, odd), accb);
    }
    if (p < pairs) {
        const int left = pairs - p;
        const __m128i pair_mask = _mm_cmpgt_epi32(_mm_set1_epi32(left), _mm_setr_epi32(0, 1, 2, 3));
        const __m256i block_mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(2 * left), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        const __m256 xd8 = _mm256_maskload_ps(xd + 2 * p, block_mask), s8 = _mm256_maskload_ps(xs + 2 * p, block_mask);
        const __m256 e8 = _mm256_maskload_ps(xe + 2 * p, block_mask);
#define LOAD8(h) _mm_maskload_epi32((const int *)((h) + 2 * p), pair_mask)
        __m256 sa = group_terms(LOAD8(da), LOAD8(ma), xd8, s8, e8, &offa);
        __m256 sb = group_terms(LOAD8(db), LOAD8(mb), xd8, s8, e8, &offb);
#undef LOAD8
        for (int j = 0; j < left; j++) {
            const __m256i spread = _mm256_add_epi32(even, _mm256_set1_epi32(2 * j));  /* lanes 2j and 2j + 1 */
            acca = _mm256_fmadd_ps(pair_dots(qa + (p + j) * 32, xq + (p + j) * 64), _mm256_permutevar8x32_ps(sa, spread), acca);
            accb = _mm256_fmadd_ps(pair_dots(qb + (p + j) * 32, xq + (p + j) * 64), _mm256_permutevar8x32_ps(sb, spread), accb);
        }
    }
    float a = 0.0f, b = 0.0f;
    if (nb % 2) {  /* a last unpaired block, in element order */
        const int blk = nb - 1;
        const __m256i ones = _mm256_set1_epi16(1), xv = _mm256_loadu_si256((const __m256i *)(xq + blk * QK));
        a = half(ma[blk]) * xs[blk] + half(da[blk]) * xe[blk] +
            half(da[blk]) * xd[blk] * hsum8(_mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(unpack_nibbles(qa + blk * 16), xv), ones)));
        b = half(mb[blk]) * xs[blk] + half(db[blk]) * xe[blk] +
            half(db[blk]) * xd[blk] * hsum8(_mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(unpack_nibbles(qb + blk * 16), xv), ones)));
    }
    *ya = hsum8(_mm256_add_ps(acca, offa)) + a;
    *yb = hsum8(_mm256_add_ps(accb, offb)) + b;
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

/* y[t, rows r0..r1) = W x[t] for a 4-bit matrix; ldy is y's row stride.
   Per block, w = q * d + m = (q - 8) * d + (m + 8 d), and with x = dx * xq + (rounding):
   sum(w x) = d * dx * sum(q xq) - 8 d (dx * sum(xq)) + (m + 8 d) * sum(x)
            = d * dx * sum(q xq) + m * s + 8 d * e      (s = sum(x), e = s - dx * sum(xq)).
   The offsets' part thus multiplies the exact sum of x, and the int8 rounding of x is not
   multiplied by q's mean. Two blocks at a time: one 32-byte load holds both blocks' nibbles.
   The kernel's vector arithmetic costs nearly as much time as its memory reads (in L2, ~3.5
   cycles per pair of blocks and row on an AMD EPYC), and the two overlap only in part: every
   operation taken out of the loop shows in the decode step.
   Two rows at a time, one from each half of the thread's range: two streams through memory
   keep more loads in flight than one (measured, plain streaming, 2 threads: 22.6 -> 32.5 GB/s).
   Rows outside, tokens inside: a prompt's tokens reuse each row while it is in L1. */
INTERNAL void matmul4_rows(const Mat4 *w, const Act *x, int tokens, float *y, int ldy, int r0, int r1) {
    for (int i = 0; i < row_pairs(r0, r1); i++) {
        int ra, rb;
        row_pair(i, r0, r1, &ra, &rb);
        for (int t = 0; t < tokens; t++) rows4_token(w, x, t, ra, rb, &y[(size_t)t * ldy + ra], &y[(size_t)t * ldy + rb]);
    }
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

void product4(const Mat4 *w, const float *x, int tokens, float *y, float *scratch) {
    Act a;
    act_layout(&a, scratch, w->k, tokens);
    for (int t = 0; t < tokens; t++) quantize_token(x, &a, t);
    matmul4_rows(w, &a, tokens, y, w->n, 0, w->n);
}

void product8(const Mat8 *w, const float *x, int tokens, float *y, float *scratch) {
    Act a;
    act_layout(&a, scratch, w->k, tokens);
    for (int t = 0; t < tokens; t++) quantize_token(x, &a, t);
    matmul8_rows(w, &a, tokens, y, w->n, 0, w->n);
}
