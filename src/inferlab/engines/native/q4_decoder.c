/* inferlab's own decoder for Llama- and GPT-2-architecture models with block-quantized weights
(AVX2, AVX-VNNI or AVX-512 VNNI for the products, chosen at run time).

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

/* Attention's arithmetic is the same however the work is shared: a row's positions are cut into
   chunks of CHUNK, each chunk's part (softmax max, sum, output) computed alone, and the parts
   joined in chunk order. So logits do not depend on the thread count, on how a prompt is cut
   into calls, or on the other rows of a batch (bit for bit; tests/test_native.py). */
#define CHUNK 256

static int chunks_max(const Model *m) { return (m->slots + CHUNK - 1) / CHUNK; }

/* Few rows (a decode step): threads share out every row's chunks. Many rows (a prompt, a
   batch): each thread takes whole (row, KV head) pairs and joins their chunks itself. */
static int share_chunks(const Model *m, int tokens) { return tokens * m->kv_heads < 4 * m->threads; }

/* one part of one head's attention: max, sum, then the output at 8 */
static size_t part_floats(const Model *m) { return (size_t)m->head_dim + 8; }

/* parts per token and head in the shared buffer: a slot per chunk, or the one joined part */
static size_t part_slots(const Model *m, int tokens) { return share_chunks(m, tokens) ? (size_t)chunks_max(m) : 1; }

/* Scratch for `tokens` tokens, in floats (the caller allocates it): a shared part, then one
   private part per thread (see forward): the residual stream, the normed rows and their int8
   form, and attention's scores, one row's rotated queries and its chunks' parts. */
static size_t private_floats(const Model *m, int tokens) {
    const size_t group = (size_t)(m->heads / m->kv_heads);
    return (size_t)tokens * (2 * (size_t)m->hidden + act_floats(m->hidden)) + group * (CHUNK + 16) +
           group * m->head_dim + group * chunks_max(m) * part_floats(m) + 16;
}

static size_t widest_rows(const Model *m) {
    size_t qkv = (size_t)(m->heads + 2 * m->kv_heads) * m->head_dim, gu = 2 * (size_t)m->inter;
    return qkv > gu ? qkv : gu;
}

static size_t shared_floats(const Model *m, int tokens) {
    size_t t = (size_t)tokens, parts = (size_t)m->heads * part_slots(m, tokens) * part_floats(m);
    return t * (widest_rows(m) + 2 * (size_t)m->hidden + parts + (size_t)m->inter + act_floats(m->inter)) + 16;
}

size_t scratch_floats(const Model *m, int tokens) {
    return shared_floats(m, tokens) + (size_t)m->threads * private_floats(m, tokens);
}

/* ---- elementwise ---------------------------------------------------------------------- */

static void layernorm(const float *x, const float *gamma, const float *beta, int n, float eps, float *out) {
    float mean = 0.0f, var = 0.0f;
    for (int i = 0; i < n; i++) mean += x[i];
    mean /= n;
    for (int i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    const float inv = 1.0f / sqrtf(var / n + eps);
    for (int i = 0; i < n; i++) out[i] = (x[i] - mean) * inv * gamma[i] + beta[i];
}

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

/* the block's norm: RMSNorm, or LayerNorm where the model has a bias for it */
static inline void norm(const Model *m, const float *x, const float *gamma, const float *beta, float *out) {
    if (beta) layernorm(x, gamma, beta, m->hidden, m->eps, out);
    else rmsnorm(x, gamma, m->hidden, m->eps, out);
}

/* out[i] = gelu_new(u[i]) = u/2 (1 + tanh(sqrt(2/pi) (u + 0.044715 u^3))), GPT-2's activation;
   tanh(z) = 1 - 2 / (1 + exp(2z)) */
static void gelu_tanh(const float *u, int n, float *out) {
    const __m256 one = _mm256_set1_ps(1.0f), two = _mm256_set1_ps(2.0f), half = _mm256_set1_ps(0.5f);
    const __m256 c = _mm256_set1_ps(0.7978845608028654f), k = _mm256_set1_ps(0.044715f);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(u + i);
        __m256 z = _mm256_mul_ps(c, _mm256_fmadd_ps(_mm256_mul_ps(k, x), _mm256_mul_ps(x, x), x));
        __m256 t = _mm256_sub_ps(one, _mm256_div_ps(two, _mm256_add_ps(one, exp8(_mm256_mul_ps(two, z)))));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(half, x), _mm256_add_ps(one, t)));
    }
    for (; i < n; i++) out[i] = 0.5f * u[i] * (1.0f + tanhf(0.7978845608028654f * (u[i] + 0.044715f * u[i] * u[i] * u[i])));
}

/* y[t, r0..r1) += bias[r0..r1) for every token (a product's bias on this thread's rows) */
static void add_bias(float *y, int ldy, int tokens, const float *bias, int r0, int r1) {
    if (!bias) return;
    for (int t = 0; t < tokens; t++)
        for (int r = r0; r < r1; r++) y[(size_t)t * ldy + r] += bias[r];
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

/* ---- attention's units ---------------------------------------------------------------------- */

/* query row `row` (of the q/k/v product)'s heads that share KV head g, rotated to `pos`, into qr */
static void queries(const Model *m, const float *row, int pos, int g, float *qr) {
    const int hd = m->head_dim, group = m->heads / m->kv_heads;
    memcpy(qr, row + (size_t)g * group * hd, (size_t)group * hd * sizeof(float));
    if (m->cos)
        for (int i = 0; i < group; i++)
            rope(qr + (size_t)i * hd, hd, m->cos + (size_t)pos * (hd / 2), m->sin + (size_t)pos * (hd / 2));
}

/* chunk c of a row attending over `len` positions of sequence seq, KV head g: the group's parts
   at part, pstride floats apart */
static void attend_chunk(const Model *m, int layer, const float *qr, int seq, int len, int g, int c, float *sc,
                         float *part, size_t pstride) {
    const int p0 = c * CHUNK, p1 = len < p0 + CHUNK ? len : p0 + CHUNK;
    const size_t at = cache_at(m, seq, layer, g, 0);
    attend_group(qr, m->heads / m->kv_heads, m->k_cache + at, m->v_cache + at, p0, p1, m->head_dim,
                 1.0f / sqrtf((float)m->head_dim), sc, part, pstride);
}

/* ---- the engine's own clock: wall time per kind of work, read by the profiler -------------- */

enum { PH_EMBED, PH_NORM, PH_ATTN_PROJ, PH_ATTENTION, PH_MLP_PROJ, PH_ACTIVATION, PH_RESIDUAL,
       PH_FINAL_NORM, PH_HEAD, PHASES };
static const char *const PHASE_NAMES = "embedding,norm_quantize,attention_projections,attention,"
                                       "mlp_projections,activation_quantize,residual_add,final_norm,lm_head";
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
   updated in place. Logits [kept, vocab] for the last `kept` rows, none when 0 (a batch orders
   its rows position by position, so its last rows are each sequence's last position). Returns 0, or -1
   for a position beyond the cache, a sequence the cache does not hold, or a bad count.

   Five barriers a layer: after the q/k/v product (each thread rotates the k heads among its
   rows and writes its k and v heads to the cache first), after attention (chunks of positions
   shared out, see CHUNK; then every thread joins the parts for itself), after the o product,
   after the MLP's input product (each thread applies the activation to its own rows, SiLU on
   interleaved gate/up rows or GPT-2's GELU, and quantizes its own blocks first), after the
   down product. Everything between, the residual stream, the norms and the
   quantization of each product's input, every thread computes for itself on private
   buffers: the same arithmetic, so the same values, with no wait. */
int forward(const Model *m, const int32_t *ids, const int32_t *seqs, const int32_t *positions, int tokens, int kept,
            float *logits, float *scratch) {
    if (tokens < 1 || kept < 0 || kept > tokens) return -1;
    for (int t = 0; t < tokens; t++)
        if (positions[t] < 0 || positions[t] >= m->slots || seqs[t] < 0 || seqs[t] >= m->seqs) return -1;
    const int H = m->hidden, hd = m->head_dim, inter = m->inter;
    const int gated = m->act == ACT_SILU_GATED;  /* the MLP's input product: gate and up rows, or up */
    const int qkv_n = (m->heads + 2 * m->kv_heads) * hd, gu_n = (gated ? 2 : 1) * inter, group = m->heads / m->kv_heads;
    const size_t T = (size_t)tokens;
    /* shared: product outputs, attention's parts from every thread, the MLP activation and its quantized form */
    const size_t part_n = part_floats(m), slots = part_slots(m, tokens), parts_per_token = m->heads * slots * part_n;
    const int shared = share_chunks(m, tokens), cm = chunks_max(m);
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
        float *qr = sc + (size_t)group * (CHUNK + 16);  /* one query row's group of heads, rotated */
        float *own = qr + (size_t)group * hd;  /* a (row, KV head)'s chunk parts: [group][chunks] */
        const int nt = omp_get_num_threads(), id = omp_get_thread_num();
        Act ah;
        act_layout(&ah, normed + T * H, H, tokens);
        /* this thread's rows of each product: q/k/v; o and down (hidden); the MLP's input
           product in whole blocks of 32 activations (64 interleaved gate/up rows, or 32 up rows),
           the blocks the down product's input is quantized in; the LM head */
        int qkv0, qkv1, hid0, hid1, gu0, gu1, voc0, voc1;
        qkv_rows(m, &qkv0, &qkv1);
        my_rows(H, TILE, &hid0, &hid1);
        my_rows(gu_n, (gated ? 2 : 1) * QK, &gu0, &gu1);
        my_rows(m->vocab, 4, &voc0, &voc1);
        double last = now_s();
        for (int t = 0; t < tokens; t++) {
            embed_row(&m->embed, ids[t], resid + t * H);
            if (m->positions)
                for (int i = 0; i < H; i++) resid[t * H + i] += m->positions[(size_t)positions[t] * H + i];
        }
        mark(PH_EMBED, &last);

        for (int l = 0; l < m->layers; l++) {
            const Layer *L = &m->layer[l];
            for (int t = 0; t < tokens; t++) {
                norm(m, resid + t * H, L->attn_norm, L->attn_norm_bias, normed + t * H);
                quantize_token(normed, &ah, t);
            }
            mark(PH_NORM, &last);
            matmul4_rows(&L->qkv, &ah, tokens, wide, qkv_n, qkv0, qkv1, m->path);
            add_bias(wide, qkv_n, tokens, L->qkv_bias, qkv0, qkv1);
            cache_kv(m, wide, tokens, seqs, positions, l, qkv0, qkv1);
            ahead_rows4(&ahead, &L->o, hid0, hid1);  /* read while waiting here and after attention */
            barrier_wait(&bar, nt, &sense, &ahead);
            mark(PH_ATTN_PROJ, &last);
            if (shared) {
                /* every row's (chunk, KV head) units in turn, one thread each: each writes its
                   group of heads' parts at the chunk's slot */
                for (int t = 0, u0 = 0; t < tokens; t++) {
                    const int chunks = positions[t] / CHUNK + 1, units = chunks * m->kv_heads;
                    for (int u = 0; u < units; u++) {
                        if ((u0 + u) % nt != id) continue;
                        const int c = u / m->kv_heads, g = u % m->kv_heads;
                        queries(m, wide + (size_t)t * qkv_n, positions[t], g, qr);
                        attend_chunk(m, l, qr, seqs[t], positions[t] + 1, g, c, sc,
                                     parts + t * parts_per_token + ((size_t)g * group * slots + c) * part_n, slots * part_n);
                    }
                    u0 += units;
                }
            } else {
                /* whole (row, KV head) pairs: the chunks' parts in this thread's own buffer,
                   joined in chunk order into the one shared part (max 0, sum 1: joining it
                   again below leaves its values as they are) */
                for (int it = id; it < tokens * m->kv_heads; it += nt) {
                    const int t = it / m->kv_heads, g = it % m->kv_heads, chunks = positions[t] / CHUNK + 1;
                    queries(m, wide + (size_t)t * qkv_n, positions[t], g, qr);
                    for (int c = 0; c < chunks; c++)
                        attend_chunk(m, l, qr, seqs[t], positions[t] + 1, g, c, sc, own + c * part_n, cm * part_n);
                    for (int i = 0; i < group; i++) {
                        float *part = parts + t * parts_per_token + (size_t)(g * group + i) * part_n;
                        combine_parts(own + (size_t)i * cm * part_n, chunks, part_n, hd, part + 8);
                        part[0] = 0.0f;
                        part[1] = 1.0f;
                    }
                }
            }
            barrier_wait(&bar, nt, &sense, &ahead);
            for (int t = 0; t < tokens; t++) {  /* each thread joins every head's parts for itself */
                const int n = shared ? positions[t] / CHUNK + 1 : 1;
                for (int h = 0; h < m->heads; h++)
                    combine_parts(parts + t * parts_per_token + (size_t)h * slots * part_n, n, part_n, hd, normed + t * H + h * hd);
                quantize_token(normed, &ah, t);
            }
            mark(PH_ATTENTION, &last);
            matmul4_rows(&L->o, &ah, tokens, obuf, H, hid0, hid1, m->path);
            add_bias(obuf, H, tokens, L->o_bias, hid0, hid1);
            ahead_rows4(&ahead, &L->up, gu0, gu1);
            barrier_wait(&bar, nt, &sense, &ahead);
            mark(PH_ATTN_PROJ, &last);
            for (int t = 0; t < tokens; t++) {
                float *x = resid + t * H;
                for (int i = 0; i < H; i++) x[i] += obuf[t * H + i];
                norm(m, x, L->ffn_norm, L->ffn_norm_bias, normed + t * H);
                quantize_token(normed, &ah, t);
            }
            mark(PH_NORM, &last);
            matmul4_rows(&L->up, &ah, tokens, wide, gu_n, gu0, gu1, m->path);
            add_bias(wide, gu_n, tokens, L->up_bias, gu0, gu1);
            mark(PH_MLP_PROJ, &last);
            /* this thread's activations: a0..a1, whole blocks */
            const int a0 = gated ? gu0 / 2 : gu0, a1 = gated ? gu1 / 2 : gu1;
            for (int t = 0; t < tokens; t++) {
                if (gated) silu_mul_interleaved(wide + t * gu_n + gu0, a1 - a0, mlp + t * inter + a0);
                else gelu_tanh(wide + t * gu_n + a0, a1 - a0, mlp + t * inter + a0);
                quantize_blocks(mlp, &hact, t, a0 / QK, (a1 + QK - 1) / QK);
            }
            mark(PH_ACTIVATION, &last);
            ahead_rows4(&ahead, &L->down, hid0, hid1);
            barrier_wait(&bar, nt, &sense, &ahead);
            mark(PH_MLP_PROJ, &last);
            matmul4_rows(&L->down, &hact, tokens, dbuf, H, hid0, hid1, m->path);
            add_bias(dbuf, H, tokens, L->down_bias, hid0, hid1);
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
            norm(m, resid + (first + t) * H, m->final_norm, m->final_norm_bias, normed + t * H);
            quantize_token(normed, &ah, t);
        }
        mark(PH_FINAL_NORM, &last);
        matmul8_rows(&m->head, &ah, kept, logits, m->vocab, voc0, voc1);
        barrier_wait(&bar, nt, &sense, 0);
        mark(PH_HEAD, &last);
    }
    return 0;
}
