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

#include "q4_common.h"

/* Scratch for `tokens` tokens, in floats (the caller allocates it): a shared part, then one
   private part per thread (see forward). */
static size_t private_floats(const Model *m, int tokens) {
    const size_t group = (size_t)(m->heads / m->kv_heads);
    return (size_t)tokens * (2 * (size_t)m->hidden + act_floats(m->hidden)) + group * ((size_t)m->slots + 16) +
           group * m->head_dim + 16;
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

/* ---- the forward pass ------------------------------------------------------------------- */

static void embed_row(const Mat8 *e, int id, float *out) {
    int nb = e->k / QK;
    for (int b = 0; b < nb; b++) {
        float d = half(e->d[(size_t)id * nb + b]);
        const int8_t *q = e->q + ((size_t)id * nb + b) * QK;
        for (int j = 0; j < QK; j++) out[b * QK + j] = d * q[j];
    }
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

/* Runs `tokens` rows through the model: row t is token ids[t] of sequence seqs[t] at position
   positions[t] (a prompt: one sequence, consecutive positions; a batch's step: one row per
   sequence), each row attending to its own sequence's cache up to its position, the cache
   updated in place. Logits [kept, vocab] for the last `kept` rows (a batch orders its rows
   position by position, so its last rows are each sequence's last position). Returns 0, or -1
   for a position beyond the cache, a sequence the cache does not hold, or a bad count.

   Five barriers a layer: after the q/k/v product (each thread rotates the k heads among its
   rows and writes its k and v heads to the cache first), after attention (each thread takes
   every head over its share of the positions: balanced whatever the head count; then every
   thread joins the parts for itself), after the o product, after the gate/up product (each
   thread applies SiLU to its own rows, interleaved gate/up, and quantizes its own blocks
   first), after the down product. Everything between, the residual stream, the norms and the
   quantization of each product's input, every thread computes for itself on private
   buffers: the same arithmetic, so the same values, with no wait. */
int forward(const Model *m, const int32_t *ids, const int32_t *seqs, const int32_t *positions, int tokens, int kept,
            float *logits, float *scratch) {
    if (tokens < 1 || kept < 1 || kept > tokens) return -1;
    for (int t = 0; t < tokens; t++)
        if (positions[t] < 0 || positions[t] >= m->slots || seqs[t] < 0 || seqs[t] >= m->seqs) return -1;
    const int H = m->hidden, hd = m->head_dim, inter = m->inter;
    const int qkv_n = (m->heads + 2 * m->kv_heads) * hd, gu_n = 2 * inter, group = m->heads / m->kv_heads;
    const float scale = 1.0f / sqrtf((float)hd);
    const size_t T = (size_t)tokens;
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
        float *resid = mine, *normed = resid + T * H, *sc = normed + T * H + T * act_floats(H);
        float *qr = sc + (size_t)group * (m->slots + 16);  /* one query row's group of heads, rotated */
        const int nt = omp_get_num_threads(), id = omp_get_thread_num();
        Act ah;
        act_layout(&ah, normed + T * H, H, tokens);
        /* this thread's rows of each product: q/k/v; o and down (hidden); gate/up, in units of
           128 (64 activations, two whole blocks of the down product's input); the LM head */
        int qkv0, qkv1, hid0, hid1, gu0, gu1, voc0, voc1;
        qkv_rows(m, &qkv0, &qkv1);
        my_rows(H, TILE, &hid0, &hid1);
        my_rows(gu_n, 2 * QK, &gu0, &gu1);
        my_rows(m->vocab, 4, &voc0, &voc1);
        double last = now_s();
        for (int t = 0; t < tokens; t++) embed_row(&m->embed, ids[t], resid + t * H);
        mark(PH_EMBED, &last);

        for (int l = 0; l < m->layers; l++) {
            const Layer *L = &m->layer[l];
            for (int t = 0; t < tokens; t++) {
                rmsnorm(resid + t * H, L->attn_norm, H, m->eps, normed + t * H);
                quantize_token(normed, &ah, t);
            }
            mark(PH_NORM, &last);
            matmul4_rows(&L->qkv, &ah, tokens, wide, qkv_n, qkv0, qkv1, m->path);
            cache_kv(m, wide, tokens, seqs, positions, l, qkv0, qkv1);
            ahead_rows4(&ahead, &L->o, hid0, hid1);  /* read while waiting here and after attention */
            barrier_wait(&bar, nt, &sense, &ahead);
            mark(PH_ATTN_PROJ, &last);
            /* A query row and KV head: its group of query heads over positions p0..p1 into slot
               `slot` of their parts (the other slots empty when the whole range is one thread's) */
#define ATTEND(t, g, p0, p1, slot, alone)                                                                   \
    do {                                                                                                    \
        const int pos_ = positions[t];                                                                      \
        for (int i = 0; i < group; i++) {                                                                   \
            memcpy(qr + (size_t)i * hd, wide + (size_t)(t) * qkv_n + (size_t)((g) * group + i) * hd, hd * sizeof(float)); \
            rope(qr + (size_t)i * hd, hd, m->cos + (size_t)pos_ * (hd / 2), m->sin + (size_t)pos_ * (hd / 2)); \
        }                                                                                                   \
        const size_t at_ = cache_at(m, seqs[t], l, (g), 0);                                                 \
        float *part_ = parts + (size_t)(t) * parts_per_token + (size_t)(g) * group * nt * part_n;          \
        attend_group(qr, group, m->k_cache + at_, m->v_cache + at_, (p0), (p1), hd, scale, sc,             \
                     part_ + (size_t)(slot) * part_n, (size_t)nt * part_n);                                 \
        for (int e_ = 0; (alone) && e_ < nt; e_++)                                                          \
            if (e_ != (slot))                                                                               \
                for (int i = 0; i < group; i++) {                                                           \
                    part_[((size_t)i * nt + e_) * part_n] = -INFINITY;                                      \
                    part_[((size_t)i * nt + e_) * part_n + 1] = 0.0f;                                       \
                }                                                                                           \
    } while (0)
            if (tokens * m->kv_heads >= 4 * nt) {
                /* many rows: each thread takes whole (row, KV head) pairs, every position */
                for (int it = id; it < tokens * m->kv_heads; it += nt)
                    ATTEND(it / m->kv_heads, it % m->kv_heads, 0, positions[it / m->kv_heads] + 1, 0, 1);
            } else {
                /* a few rows (a decode step): every thread takes every head over its share of the
                   positions, in whole blocks of 8 (the keys' layout) */
                for (int t = 0; t < tokens; t++) {
                    const int len = positions[t] + 1, blocks = (len + 7) / 8;
                    const int p0 = blocks * id / nt * 8, p1 = id + 1 == nt ? len : blocks * (id + 1) / nt * 8;
                    for (int g = 0; g < m->kv_heads; g++) ATTEND(t, g, p0, p1, id, 0);
                }
            }
#undef ATTEND
            barrier_wait(&bar, nt, &sense, &ahead);
            for (int t = 0; t < tokens; t++) {  /* each thread joins every head's parts for itself */
                for (int h = 0; h < m->heads; h++)
                    combine_parts(parts + t * parts_per_token + (size_t)h * nt * part_n, nt, part_n, hd, normed + t * H + h * hd);
                quantize_token(normed, &ah, t);
            }
            mark(PH_ATTENTION, &last);
            matmul4_rows(&L->o, &ah, tokens, obuf, H, hid0, hid1, m->path);
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
            matmul4_rows(&L->gate_up, &ah, tokens, wide, gu_n, gu0, gu1, m->path);
            mark(PH_MLP_PROJ, &last);
            for (int t = 0; t < tokens; t++) {
                silu_mul_interleaved(wide + t * gu_n + gu0, (gu1 - gu0) / 2, mlp + t * inter + gu0 / 2);
                quantize_blocks(mlp, &hact, t, gu0 / 2 / QK, (gu1 / 2 + QK - 1) / QK);
            }
            mark(PH_ACTIVATION, &last);
            ahead_rows4(&ahead, &L->down, hid0, hid1);
            barrier_wait(&bar, nt, &sense, &ahead);
            mark(PH_MLP_PROJ, &last);
            matmul4_rows(&L->down, &hact, tokens, dbuf, H, hid0, hid1, m->path);
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
        /* final norm and the LM head, on the last `kept` rows */
        const int first = tokens - kept;
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
