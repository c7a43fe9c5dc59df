/* inferlab's own decoder for Llama-architecture models with block-quantized weights, on AVX2.

Why it exists: the bundled model's weights lie on a Q4_1 grid (w = q * d + m per block of 32).
ONNX Runtime's 4-bit kernel takes integer zero points only, so an exact Q4_1 layer there costs
four extra graph nodes per product (a quarter of a decode step, measured); here the offsets are
part of the dot product, multiplied by the exact fp32 sum of the block's inputs.

Weights:  4-bit matrices [n, k/32] blocks of 16 bytes (byte j = element j in the low nibble,
          element j + 16 in the high one), scale d and offset m per block in fp16, as a Q4_1
          GGUF stores them; 8-bit matrices (Q8_0 rule: w = q * d, q in -127..127, d fp16) for
          the LM head and the token table.
Activations are quantized per block of 32 to int8 (scale max|x| / 127) right before each
product, as llama.cpp and ONNX Runtime's accuracy_level 4 do; the KV cache is fp16; everything
else is fp32. One OpenMP parallel region per forward pass: products split by rows, attention
by positions, threads meeting at a spin barrier that reads ahead; thread 0 keeps a clock per
phase (phase_seconds; spans for the profiler's timeline), the engine's counters and profiler. */

#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define QK 32

typedef struct {
    int32_t n, k;          /* rows (outputs), columns (inputs) */
    const uint8_t *q;      /* [n, k/32, 16] */
    const uint16_t *d;     /* [n, k/32] scale, fp16 */
    const uint16_t *m;     /* [n, k/32] offset, fp16: w = q * d + m */
} Mat4;

typedef struct {
    int32_t n, k;
    const int8_t *q;       /* [n, k/32, 32] */
    const uint16_t *d;     /* [n, k/32] scale, fp16 (as a Q8_0 GGUF stores it) */
} Mat8;

typedef struct {
    const float *attn_norm, *ffn_norm;  /* [hidden] */
    Mat4 qkv, o, gate_up, down;  /* qkv: q rows, then k, then v; gate_up: gate and up rows interleaved */
} Layer;

typedef struct {
    int32_t hidden, heads, kv_heads, head_dim, inter, layers, vocab, slots, threads;
    float eps;
    const Layer *layer;
    Mat8 embed, head;
    const float *final_norm;  /* [hidden] */
    const float *cos, *sin;   /* [slots, head_dim / 2] */
    uint16_t *k_cache, *v_cache; /* [layers, kv_heads, slots, head_dim], fp16 */
} Model;

/* Activations of `tokens` rows, quantized per block of 32 as every product needs them:
   q  [t, k] int8 in element order (8-bit products);
   qp [t, k] the same values with each pair of blocks as [b0 0..15, b1 0..15, b0 16..31, b1 16..31]
      (the 4-bit kernel unpacks the low nibbles of two blocks, then the high ones);
   d  [t, k/32] scale (max|x| / 127), s the block's exact fp32 sum, e = 8 (s - d * sum(q)): eight
      times the sum's rounding error (the factor the 4-bit kernel multiplies it by). */
typedef struct { int8_t *q, *qp; float *d, *s, *e; int k; } Act;

static size_t act_floats(int k) { return (size_t)k / 2 + 3 * ((size_t)k / QK) + 8; }

static void act_layout(Act *a, float *buf, int k, int tokens) {
    size_t nb = (size_t)tokens * (k / QK), n = (size_t)tokens * k;
    a->k = k;
    a->d = buf;
    a->s = buf + nb;
    a->e = buf + 2 * nb;
    a->q = (int8_t *)(buf + 3 * nb);
    a->qp = a->q + n;
}

/* Scratch for `tokens` tokens, in floats (the caller allocates it): a shared part, then one
   private part per thread (see forward). */
static size_t private_floats(const Model *m, int tokens) {
    return (size_t)tokens * (2 * (size_t)m->hidden + act_floats(m->hidden)) + (size_t)m->slots +
           (size_t)m->heads * m->head_dim + 16;
}

/* one thread's part of one head's attention for one token: max, sum, then the output at 8 */
static size_t part_floats(const Model *m) { return (size_t)m->head_dim + 8; }

static size_t widest_rows(const Model *m) {
    size_t qkv = (size_t)(m->heads + 2 * m->kv_heads) * m->head_dim, gu = 2 * (size_t)m->inter;
    return qkv > gu ? qkv : gu;
}

static size_t shared_floats(const Model *m, int tokens) {
    size_t t = (size_t)tokens, parts = (size_t)m->heads * m->threads * part_floats(m);
    return t * (widest_rows(m) + 2 * (size_t)m->hidden + parts + (size_t)m->inter + act_floats(m->inter)) + 16;
}

size_t scratch_floats(const Model *m, int tokens) {
    return shared_floats(m, tokens) + (size_t)m->threads * private_floats(m, tokens);
}

static inline float hmax8(__m256 v) {
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    x = _mm_max_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

static inline float hsum8(__m256 v) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

/* blocks b0..b1 of row t of x [tokens, a->k] into row t of a; b0 even, b1 even or the row's end */
static void quantize_blocks(const float *xrows, Act *a, int t, int b0, int b1) {
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

static void quantize_token(const float *xrows, Act *a, int t) { quantize_blocks(xrows, a, t, 0, a->k / QK); }

/* ---- products ----------------------------------------------------------------------- */

static inline __m256i unpack_nibbles(const uint8_t *p) {
    __m128i raw = _mm_loadu_si128((const __m128i *)p);
    __m256i both = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

static inline float half(uint16_t h) { return _cvtsh_ss(h); }

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
static void matmul4_rows(const Mat4 *w, const Act *x, int tokens, float *y, int ldy, int r0, int r1) {
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
static void matmul8_rows(const Mat8 *w, const Act *x, int tokens, float *y, int ldy, int r0, int r1) {
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

/* This thread's rows of n, split evenly in units of `align` rows (4, or whole blocks of the
   MLP activation for the gate/up product; q/k/v: qkv_rows). */
static void my_rows(int n, int align, int *r0, int *r1) {
    int nt = omp_get_num_threads(), id = omp_get_thread_num();
    int units = (n + align - 1) / align, per = (units + nt - 1) / nt;
    *r0 = id * per * align < n ? id * per * align : n;
    *r1 = (id + 1) * per * align < n ? (id + 1) * per * align : n;
}

/* ---- elementwise ---------------------------------------------------------------------- */

static void rmsnorm(const float *x, const float *gamma, int n, float eps, float *out) {
    __m256 acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(x + i), acc);
    float ss = hsum8(acc);
    for (; i < n; i++) ss += x[i] * x[i];
    const float inv = 1.0f / sqrtf(ss / n + eps);
    const __m256 vinv = _mm256_set1_ps(inv);
    for (i = 0; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_loadu_ps(gamma + i), _mm256_mul_ps(_mm256_loadu_ps(x + i), vinv)));
    for (; i < n; i++) out[i] = gamma[i] * (x[i] * inv);
}

/* exp for the SiLU and the softmax, vectorized: 2^(x log2 e) as 2^i * p(f), p a degree-6 polynomial of 2^f */
static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    __m256 t = _mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f));
    __m256 i = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 f = _mm256_sub_ps(t, i); /* in [-0.5, 0.5] */
    __m256 p = _mm256_set1_ps(1.535336188319500e-4f);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.339887440266574e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.618437357674640e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.550332471162809e-2f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.402264791363012e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.931472028550421e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(i), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* out[i] = silu(gu[2i]) * gu[2i + 1] for n values: the gate and up products' rows interleaved */
static void silu_mul_interleaved(const float *gu, int n, float *out) {
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256i evens = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        /* 16 values gate, up, gate, up...: split into 8 gates and 8 ups */
        __m256 a = _mm256_permutevar8x32_ps(_mm256_loadu_ps(gu + 2 * i), evens);      /* g0..g3 u0..u3 */
        __m256 b = _mm256_permutevar8x32_ps(_mm256_loadu_ps(gu + 2 * i + 8), evens);  /* g4..g7 u4..u7 */
        __m256 g = _mm256_permute2f128_ps(a, b, 0x20), u = _mm256_permute2f128_ps(a, b, 0x31);
        __m256 sig = _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), g))));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(g, sig), u));
    }
    for (; i < n; i++) out[i] = gu[2 * i] / (1.0f + expf(-gu[2 * i])) * gu[2 * i + 1];
}

/* rotate_half rotary (the Hugging Face Llama layout) of one head at position pos */
static inline void rope(float *v, int head_dim, const float *cos, const float *sin) {
    int half = head_dim / 2;
    for (int i = 0; i < half; i++) {
        float a = v[i], b = v[i + half];
        v[i] = a * cos[i] - b * sin[i];
        v[i + half] = b * cos[i] + a * sin[i];
    }
}


/* ---- where threads meet: a barrier that reads ahead while it waits --------------------- */

/* A thread that reaches a barrier first would idle while the memory system serves only the
   others. Instead it prefetches (into L2) the rows it will read next, so its next product
   starts on cached data: A/B, 16 rounds of 48 steps, 0.98x the step. A plain sense-reversing
   spin barrier: ~0.09 us on two threads where OpenMP's took ~0.37 (measured). */
typedef struct { _Alignas(64) atomic_int count; _Alignas(64) atomic_int sense; } Barrier;
typedef struct { const char *p[6], *end[6]; int n; } Ahead;  /* regions, read a line of each in turn */

static void ahead_add(Ahead *a, const void *p, size_t bytes) {
    if (bytes == 0) return;
    a->p[a->n] = (const char *)p;
    a->end[a->n++] = (const char *)p + bytes;
}
/* the rows r0..r1 of a product as its kernel reads them: from both halves of the range */
static void ahead_rows4(Ahead *a, const Mat4 *w, int r0, int r1) {
    const size_t nb = w->k / QK;
    const int mid = r0 + (r1 - r0) / 2, from[2] = {r0, mid}, to[2] = {mid, r1};
    a->n = 0;
    for (int h = 0; h < 2; h++) {
        ahead_add(a, w->q + from[h] * nb * 16, (to[h] - from[h]) * nb * 16);
        ahead_add(a, w->d + from[h] * nb, (to[h] - from[h]) * nb * 2);
        ahead_add(a, w->m + from[h] * nb, (to[h] - from[h]) * nb * 2);
    }
}
static void ahead_rows8(Ahead *a, const Mat8 *w, int r0, int r1) {
    const size_t nb = w->k / QK;
    const int mid = r0 + (r1 - r0) / 2, from[2] = {r0, mid}, to[2] = {mid, r1};
    a->n = 0;
    for (int h = 0; h < 2; h++) {
        ahead_add(a, w->q + from[h] * nb * QK, (to[h] - from[h]) * nb * QK);
        ahead_add(a, w->d + from[h] * nb, (to[h] - from[h]) * nb * 2);
    }
}
/* one line of each region not yet read; 0 when all are */
static inline int ahead_step(Ahead *a) {
    int any = 0;
    for (int i = 0; i < a->n; i++)
        if (a->p[i] < a->end[i]) { _mm_prefetch(a->p[i], _MM_HINT_T1); a->p[i] += 64; any = 1; }
    return any;
}
/* every thread of the team calls it with its own sense (0 before the first call); `a` may be 0 */
static void barrier_wait(Barrier *b, int nt, int *sense, Ahead *a) {
    const int s = !*sense;
    *sense = s;
    if (atomic_fetch_add_explicit(&b->count, 1, memory_order_acq_rel) == nt - 1) {
        atomic_store_explicit(&b->count, 0, memory_order_relaxed);
        atomic_store_explicit(&b->sense, s, memory_order_release);
        return;
    }
    while (atomic_load_explicit(&b->sense, memory_order_acquire) != s)
        if (!(a && ahead_step(a))) _mm_pause();
}

/* ---- the forward pass ------------------------------------------------------------------- */

static void embed_row(const Mat8 *e, int id, float *out) {
    int nb = e->k / QK;
    for (int b = 0; b < nb; b++) {
        float d = half(e->d[(size_t)id * nb + b]);
        const int8_t *q = e->q + ((size_t)id * nb + b) * QK;
        for (int j = 0; j < QK; j++) out[b * QK + j] = d * q[j];
    }
}

/* Rows r0..r1 of the q/k/v product are this thread's. Its q rows split anywhere (every thread
   rotates the q heads it attends with for itself); its k and v rows are whole heads, which it
   rotates (k) and writes to the cache at their positions. */
static void qkv_rows(const Model *m, int *r0, int *r1) {
    const int q_rows = m->heads * m->head_dim, n = (m->heads + 2 * m->kv_heads) * m->head_dim;
    const int nt = omp_get_num_threads(), id = omp_get_thread_num();
    int b[2];
    for (int i = 0; i < 2; i++) {
        int at = (int)((long)n * (id + i) / nt) / 4 * 4;  /* the kernels' stride */
        if (at > q_rows) at = q_rows + (at - q_rows + m->head_dim / 2) / m->head_dim * m->head_dim;
        b[i] = at < n && id + i < nt ? at : n;
    }
    *r0 = b[0];
    *r1 = b[1];
}

/* n floats (a multiple of 8) to fp16, rounded to nearest */
static inline void store_half(uint16_t *dst, const float *src, int n) {
    for (int i = 0; i < n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
}

static inline __m256 load_half8(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

/* The KV cache holds fp16, as llama.cpp's does by default: attention reads it back from
   memory every step (the weights' stream evicts it from the caches); half the bytes measured
   0.97x the step time at 90 positions (SmolLM2). */
static void cache_kv(const Model *m, float *qkv, int tokens, int start, int r0, int r1, uint16_t *kc, uint16_t *vc) {
    const int hd = m->head_dim, half_hd = hd / 2, qkv_n = (m->heads + 2 * m->kv_heads) * hd;
    const int h0 = (r0 > m->heads * hd ? r0 : m->heads * hd) / hd, h1 = r1 / hd;
    for (int t = 0; t < tokens; t++) {
        int pos = start + t;
        float *row = qkv + (size_t)t * qkv_n;
        for (int h = h0; h < h1; h++) {
            float *v = row + (size_t)h * hd;  /* this thread's rows: rotated in place */
            if (h < m->heads + m->kv_heads) {
                rope(v, hd, m->cos + (size_t)pos * half_hd, m->sin + (size_t)pos * half_hd);
                store_half(kc + ((size_t)(h - m->heads) * m->slots + pos) * hd, v, hd);
            } else {
                store_half(vc + ((size_t)(h - m->heads - m->kv_heads) * m->slots + pos) * hd, v, hd);
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
static void attend_part(const float *q, const uint16_t *K, const uint16_t *V, int p0, int p1, int hd, float scale,
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
static void combine_parts(const float *parts, int n, size_t stride, int hd, float *out) {
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

/* ---- the engine's own clock: wall time per kind of work, read by the profiler -------------- */

enum { PH_EMBED, PH_NORM, PH_ATTN_PROJ, PH_ATTENTION, PH_MLP_PROJ, PH_ACTIVATION, PH_RESIDUAL,
       PH_FINAL_NORM, PH_HEAD, PHASES };
static const char *const PHASE_NAMES = "embedding,rmsnorm_quantize,attention_projections,attention,"
                                       "mlp_projections,silu_mul_quantize,residual_add,final_norm,lm_head";
static double phase_s[PHASES];  /* per process: one decoder runs in a method's process */

static inline double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Called by every thread where a phase ends: thread 0 books the time since its last mark to
   `phase` (after a barrier, that includes its wait for the slowest thread). */
/* The profiler's timeline: while recording, thread 0 also keeps each span it books. */
#define MAX_SPANS (1 << 15)
static int32_t span_phase[MAX_SPANS];
static double span_start[MAX_SPANS], span_end[MAX_SPANS];
static int span_count, recording;

static inline void mark(int phase, double *last) {
    if (omp_get_thread_num() == 0) {
        double t = now_s();
        phase_s[phase] += t - *last;
        if (recording && span_count < MAX_SPANS) {
            span_phase[span_count] = phase;
            span_start[span_count] = *last;
            span_end[span_count++] = t;
        }
        *last = t;
    }
}

/* recording on (1, the spans so far dropped) or off (0) */
void record_spans(int on) {
    recording = on;
    if (on) span_count = 0;
}

/* the spans recorded, up to max: phase index, start and end in seconds of clock_seconds()'s clock */
int read_spans(int32_t *phase, double *start, double *end, int max) {
    int n = span_count < max ? span_count : max;
    for (int i = 0; i < n; i++) {
        phase[i] = span_phase[i];
        start[i] = span_start[i];
        end[i] = span_end[i];
    }
    return n;
}

double clock_seconds(void) { return now_s(); }

const char *phase_names(void) { return PHASE_NAMES; }

/* seconds per phase since the last reset, in the enum's order; then zeroed when reset != 0 */
void phase_seconds(double *out, int reset) {
    for (int i = 0; i < PHASES; i++) {
        out[i] = phase_s[i];
        if (reset) phase_s[i] = 0.0;
    }
}

/* Runs `tokens` tokens at positions start.. through the model, the cache updated in place.
   logits: [tokens, vocab] when all_logits, else [vocab] for the last token. Returns 0, or -1
   when the sequence would outgrow the cache.

   Five barriers a layer: after the q/k/v product (each thread rotates the k heads among its
   rows and writes its k and v heads to the cache first), after attention (each thread takes
   every head over its share of the positions: balanced whatever the head count; then every
   thread joins the parts for itself), after the o product, after the gate/up product (each
   thread applies SiLU to its own rows, interleaved gate/up, and quantizes its own blocks
   first), after the down product. Everything between, the residual stream, the norms and the
   quantization of each product's input, every thread computes for itself on private
   buffers: the same arithmetic, so the same values, with no wait. */
int forward(const Model *m, const int32_t *ids, int tokens, int start, int all_logits, float *logits,
            float *scratch) {
    if (start + tokens > m->slots || tokens < 1) return -1;
    const int H = m->hidden, hd = m->head_dim, inter = m->inter;
    const int qkv_n = (m->heads + 2 * m->kv_heads) * hd, gu_n = 2 * inter, group = m->heads / m->kv_heads;
    const float scale = 1.0f / sqrtf((float)hd);
    const size_t T = (size_t)tokens, layer_stride = (size_t)m->kv_heads * m->slots * hd;
    /* shared: product outputs, attention's parts from every thread, the MLP activation and its quantized form */
    const size_t part_n = part_floats(m), parts_per_token = (size_t)m->heads * m->threads * part_n;
    float *wide = scratch, *obuf = wide + T * widest_rows(m), *dbuf = obuf + T * H, *parts = dbuf + T * H;
    float *mlp = parts + T * parts_per_token, *hbuf = mlp + T * inter;
    float *private_base = scratch + shared_floats(m, tokens);
    Act hact;
    act_layout(&hact, hbuf, inter, tokens);

    Barrier bar;
    atomic_init(&bar.count, 0);
    atomic_init(&bar.sense, 0);
#pragma omp parallel num_threads(m->threads)
    {
        int sense = 0;
        Ahead ahead;
        float *mine = private_base + (size_t)omp_get_thread_num() * private_floats(m, tokens);
        float *resid = mine, *normed = resid + T * H, *sc = normed + T * H + T * act_floats(H), *qr = sc + m->slots + 8;
        const int nt = omp_get_num_threads(), id = omp_get_thread_num();
        Act ah;
        act_layout(&ah, normed + T * H, H, tokens);
        /* this thread's rows of each product: q/k/v; o and down (hidden); gate/up, in units of
           128 (64 activations, two whole blocks of the down product's input); the LM head */
        int qkv0, qkv1, hid0, hid1, gu0, gu1, voc0, voc1;
        qkv_rows(m, &qkv0, &qkv1);
        my_rows(H, 4, &hid0, &hid1);
        my_rows(gu_n, 4 * QK, &gu0, &gu1);
        my_rows(m->vocab, 4, &voc0, &voc1);
        double last = now_s();
        for (int t = 0; t < tokens; t++) embed_row(&m->embed, ids[t], resid + t * H);
        mark(PH_EMBED, &last);

        for (int l = 0; l < m->layers; l++) {
            const Layer *L = &m->layer[l];
            uint16_t *kc = m->k_cache + l * layer_stride, *vc = m->v_cache + l * layer_stride;
            for (int t = 0; t < tokens; t++) {
                rmsnorm(resid + t * H, L->attn_norm, H, m->eps, normed + t * H);
                quantize_token(normed, &ah, t);
            }
            mark(PH_NORM, &last);
            matmul4_rows(&L->qkv, &ah, tokens, wide, qkv_n, qkv0, qkv1);
            cache_kv(m, wide, tokens, start, qkv0, qkv1, kc, vc);
            ahead_rows4(&ahead, &L->o, hid0, hid1);  /* read while waiting here and after attention */
            barrier_wait(&bar, nt, &sense, &ahead);
            mark(PH_ATTN_PROJ, &last);
            /* every thread takes every head over its share of the positions */
            for (int t = 0; t < tokens; t++) {
                const int pos = start + t, len = pos + 1;
                memcpy(qr, wide + (size_t)t * qkv_n, (size_t)m->heads * hd * sizeof(float));
                for (int h = 0; h < m->heads; h++) {
                    float *q = qr + (size_t)h * hd;
                    rope(q, hd, m->cos + (size_t)pos * (hd / 2), m->sin + (size_t)pos * (hd / 2));
                    attend_part(q, kc + (size_t)(h / group) * m->slots * hd, vc + (size_t)(h / group) * m->slots * hd,
                                (int)((long)len * id / nt), (int)((long)len * (id + 1) / nt), hd, scale, sc,
                                parts + t * parts_per_token + ((size_t)h * nt + id) * part_n);
                }
            }
            barrier_wait(&bar, nt, &sense, &ahead);
            for (int t = 0; t < tokens; t++) {  /* each thread joins every head's parts for itself */
                for (int h = 0; h < m->heads; h++)
                    combine_parts(parts + t * parts_per_token + (size_t)h * nt * part_n, nt, part_n, hd, normed + t * H + h * hd);
                quantize_token(normed, &ah, t);
            }
            mark(PH_ATTENTION, &last);
            matmul4_rows(&L->o, &ah, tokens, obuf, H, hid0, hid1);
            ahead_rows4(&ahead, &L->gate_up, gu0, gu1);
            barrier_wait(&bar, nt, &sense, &ahead);
            mark(PH_ATTN_PROJ, &last);
            for (int t = 0; t < tokens; t++) {
                float *x = resid + t * H;
                for (int i = 0; i < H; i++) x[i] += obuf[t * H + i];
                rmsnorm(x, L->ffn_norm, H, m->eps, normed + t * H);
                quantize_token(normed, &ah, t);
            }
            mark(PH_NORM, &last);
            matmul4_rows(&L->gate_up, &ah, tokens, wide, gu_n, gu0, gu1);
            mark(PH_MLP_PROJ, &last);
            for (int t = 0; t < tokens; t++) {
                silu_mul_interleaved(wide + t * gu_n + gu0, (gu1 - gu0) / 2, mlp + t * inter + gu0 / 2);
                quantize_blocks(mlp, &hact, t, gu0 / 2 / QK, (gu1 / 2 + QK - 1) / QK);
            }
            mark(PH_ACTIVATION, &last);
            ahead_rows4(&ahead, &L->down, hid0, hid1);
            barrier_wait(&bar, nt, &sense, &ahead);
            mark(PH_MLP_PROJ, &last);
            matmul4_rows(&L->down, &hact, tokens, dbuf, H, hid0, hid1);
            if (l + 1 < m->layers)
                ahead_rows4(&ahead, &m->layer[l + 1].qkv, qkv0, qkv1);
            else
                ahead_rows8(&ahead, &m->head, voc0, voc1);
            barrier_wait(&bar, nt, &sense, &ahead);
            mark(PH_MLP_PROJ, &last);
            for (int t = 0; t < tokens; t++)
                for (int i = 0; i < H; i++) resid[t * H + i] += dbuf[t * H + i];
            mark(PH_RESIDUAL, &last);
        }
        /* final norm and the LM head, on every position or the last one */
        int first = all_logits ? 0 : tokens - 1, kept = tokens - first;
        for (int t = 0; t < kept; t++) {
            rmsnorm(resid + (first + t) * H, m->final_norm, H, m->eps, normed + t * H);
            quantize_token(normed, &ah, t);
        }
        mark(PH_FINAL_NORM, &last);
        matmul8_rows(&m->head, &ah, kept, logits, m->vocab, voc0, voc1);
        barrier_wait(&bar, nt, &sense, 0);
        mark(PH_HEAD, &last);
    }
    return 0;
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
