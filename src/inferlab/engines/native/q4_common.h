/* What the decoder's C files share: the model's layout as the Python side fills it
   (decoder.py's ctypes structures mirror these), the quantized activations, small vector
   helpers, and the functions one file calls in another. All files build into one library
   (library.py compiles every .c file here). */

#ifndef Q4_COMMON_H
#define Q4_COMMON_H

#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define QK 32

/* which copy of the 4-bit kernel runs: the instruction sets it may use (the Python side
   chooses from the CPU's flags; library.PATHS lists them in this order) */
enum { PATH_AVX2, PATH_AVX_VNNI, PATH_AVX512_VNNI, PATHS };

#define TILE 16  /* rows of a 4-bit matrix stored together: one 16-lane vector of outputs */

/* A 4-bit matrix in tiles of 16 rows (n is a multiple of 16). Per tile and block of 32 inputs,
   256 bytes: four vectors of 64 bytes, vector v's 32-bit lane r holding row r's inputs
   8v..8v+3 in the low nibbles and 8v+4..8v+7 in the high ones, so that one broadcast of four
   activation bytes meets 16 rows (8 in each half of a 256-bit path) in one dot-product
   instruction. */
typedef struct {
    int32_t n, k;          /* rows (outputs), columns (inputs) */
    const uint8_t *q;      /* [n/16, k/32, 4, 16, 4] */
    const uint16_t *d;     /* [n/16, k/32, 16] scale, fp16 */
    const uint16_t *m;     /* [n/16, k/32, 16] offset, fp16: w = q * d + m */
} Mat4;

typedef struct {
    int32_t n, k;
    const int8_t *q;       /* [n, k/32, 32] */
    const uint16_t *d;     /* [n, k/32] scale, fp16 (as a Q8_0 GGUF stores it) */
} Mat8;

typedef struct {
    const float *attn_norm, *ffn_norm;            /* [hidden] */
    const float *attn_norm_bias, *ffn_norm_bias;  /* [hidden]: LayerNorm (GPT-2); 0: RMSNorm (Llama) */
    /* qkv: q rows, then k, then v; up: the MLP's input product: with a gated activation its
       gate and up rows interleaved, else the rows of its one input product */
    Mat4 qkv, o, up, down;
    const float *qkv_bias, *o_bias, *up_bias, *down_bias;  /* each product's bias, or 0 */
} Layer;

enum { ACT_SILU_GATED, ACT_GELU_TANH };  /* silu(gate) * up (Llama), or gelu_new(up) (GPT-2) */

/* attention's arithmetic and its cache: fp32 on an fp16 cache (q4_attention.c), or bf16
   products with fp32 sums on a bf16 cache (q4_attention_bf16.c, AVX-512 BF16) */
enum { ATT_FP32, ATT_BF16 };

typedef struct {
    int32_t hidden, heads, kv_heads, head_dim, inter, layers, vocab, slots, threads;
    int32_t seqs;             /* sequences the cache holds (a batch), `slots` positions each */
    int32_t path;             /* PATH_*: the 4-bit kernel's instruction sets */
    int32_t act;              /* ACT_*: the MLP's activation */
    int32_t attention;        /* ATT_*: attention's arithmetic */
    float eps;
    const Layer *layer;
    Mat8 embed, head;
    const float *final_norm, *final_norm_bias;  /* [hidden]; the bias 0 for RMSNorm */
    const float *cos, *sin;   /* [slots, head_dim / 2] rotary tables, or 0 (learned positions) */
    const float *positions;   /* [slots, hidden] learned position embeddings (GPT-2), or 0 */
    uint16_t *k_cache, *v_cache; /* [seqs, layers, kv_heads, slots, head_dim], fp16 or bf16 (ATT_*) */
} Model;

/* Activations of `tokens` rows, quantized per block of 32 as every product needs them:
   q  [t, k] int8 in element order;
   d  [t, k/32] scale (max|x| / 127), s the block's exact fp32 sum, e = 8 (s - d * sum(q)): eight
      times the sum's rounding error (the factor the 4-bit kernel multiplies it by). */
typedef struct { int8_t *q; float *d, *s, *e; int k; } Act;

/* floats of room per token (k int8 values, three floats per block) */
static inline size_t act_floats(int k) { return (size_t)k / 4 + 3 * ((size_t)k / QK); }

static inline void act_layout(Act *a, float *buf, int k, int tokens) {
    size_t nb = (size_t)tokens * (k / QK);
    a->k = k;
    a->d = buf;
    a->s = buf + nb;
    a->e = buf + 2 * nb;
    a->q = (int8_t *)(buf + 3 * nb);
}

/* seconds on the monotonic clock (the same clock in every thread) */
static inline double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
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

static inline float half(uint16_t h) { return _cvtsh_ss(h); }

/* exp(x) = 2^(x log2 e) as 2^i * p(f), i the nearest integer, p a degree-6 polynomial of 2^f on
   [-0.5, 0.5] (coefficients highest power first), for the SiLU and the softmax: exp8 here, exp16
   in q4_attention_bf16.c, the same operations lane by lane, so the same bits */
static const float EXP_POLY[7] = {1.535336188319500e-4f, 1.339887440266574e-3f, 9.618437357674640e-3f,
                                  5.550332471162809e-2f, 2.402264791363012e-1f, 6.931472028550421e-1f, 1.0f};
static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    __m256 t = _mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f));
    __m256 i = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 f = _mm256_sub_ps(t, i); /* in [-0.5, 0.5] */
    __m256 p = _mm256_set1_ps(EXP_POLY[0]);
    for (int k = 1; k < 7; k++) p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(EXP_POLY[k]));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(i), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* where a position's value vector of one KV head lies in the cache, in elements (position 0:
   where that head's keys begin, whose layout q4_attention.c describes) */
static inline size_t cache_at(const Model *m, int seq, int layer, int kv_head, int pos) {
    return ((((size_t)seq * m->layers + layer) * m->kv_heads + kv_head) * m->slots + pos) * m->head_dim;
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

/* internal to the library: not exported from it */
#define INTERNAL __attribute__((visibility("hidden")))

/* q4_products.c */
INTERNAL void quantize_blocks(const float *x, Act *a, int t, int b0, int b1);
INTERNAL void quantize_token(const float *x, Act *a, int t);
INTERNAL void matmul4_rows(const Mat4 *w, const Act *x, int tokens, float *y, int ldy, int r0, int r1, int path);
INTERNAL void matmul8_rows(const Mat8 *w, const Act *x, int tokens, float *y, int ldy, int r0, int r1);

/* q4_attention.c */
INTERNAL void cache_kv(const Model *m, float *qkv, int t0, int t1, const int32_t *seqs, const int32_t *positions,
                       int layer, int r0, int r1);
INTERNAL void attend_rows(int arith, const float *q, int n, int G, const uint16_t *K, const uint16_t *V, int p0, const int *p1,
                          int hd, float scale, float *sc, float *part, size_t rstride, size_t pstride);

/* q4_attention_bf16.c */
INTERNAL void cache_key_bf16(uint16_t *K, int pos, const float *k, int hd);
INTERNAL void cache_value_bf16(uint16_t *V, int pos, const float *v, int hd);
INTERNAL void attend_rows_bf16(const float *q, int n, int G, const uint16_t *K, const uint16_t *V, int p0, const int *p1,
                               int hd, float scale, float *sc, float *part, size_t rstride, size_t pstride);
INTERNAL void combine_parts(const float *parts, int n, size_t stride, int hd, float *out);

/* q4_threads.c */
/* A thread that reaches a barrier first would idle while the memory system serves only the
   others. Instead it prefetches (into L2) the rows it will read next, so its next product
   starts on cached data: A/B, 16 rounds of 48 steps, 0.98x the step. A plain sense-reversing
   spin barrier: ~0.09 us on two threads where OpenMP's took ~0.37 (measured). */
typedef struct { _Alignas(64) atomic_int count; _Alignas(64) atomic_int sense; } Barrier;
typedef struct { const char *p[6], *end[6]; int n; } Ahead;  /* regions, read a line of each in turn */
INTERNAL void my_rows(int n, int align, int *r0, int *r1);
INTERNAL void qkv_rows(const Model *m, int *r0, int *r1);
INTERNAL void ahead_rows4(Ahead *a, const Mat4 *w, int r0, int r1);
INTERNAL void ahead_rows8(Ahead *a, const Mat8 *w, int r0, int r1);
INTERNAL void barrier_wait(Barrier *b, int nt, int *sense, Ahead *a);

#endif
