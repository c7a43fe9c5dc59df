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
product, as llama.cpp and ONNX Runtime's accuracy_level 4 do; the KV cache is fp16 (bf16 where
attention multiplies in bf16: q4_attention_bf16.c); everything else is fp32. One OpenMP
parallel region per forward pass: products split by rows, attention by positions, threads
meeting at a spin barrier that reads ahead; thread 0 keeps a clock per phase (phase_seconds;
spans for the profiler's timeline), the engine's counters and profiler. */

#include "q4_common.h"

/* Attention's arithmetic is the same however the work is shared: a row's positions are cut into
   chunks of CHUNK, each chunk's part (softmax max, sum, output) computed alone, and the parts
   joined in chunk order. So logits do not depend on the thread count, on how a prompt is cut
   into calls, or on the other rows of a batch (bit for bit; tests/test_native.py). */
#define CHUNK 256

static int chunks_max(const Model *m) { return (m->slots + CHUNK - 1) / CHUNK; }

/* A prompt's consecutive rows attend together, up to this many: each key and value vector read
   and converted once for all their heads (512-token prefill, SmolLM2: the attention phase
   0.92-0.95x its time with one row at a time, A/B in one process) */
#define ROWS_TOGETHER 4

/* Rows from which a forward pass gives each thread its own rows (tokens) instead of a share of
   every product's (see forward) */
#define MANY_ROWS 16

/* Few rows (a decode step): threads share out every row's chunks. Many rows (a prompt, a
   batch): each thread takes whole (row, KV head) pairs and joins their chunks itself. */
static int share_chunks(const Model *m, int tokens) { return tokens * m->kv_heads < 4 * m->threads; }

/* one part of one head's attention: max, sum, then the output at 8 */
static size_t part_floats(const Model *m) { return (size_t)m->head_dim + 8; }

/* parts per token and head in the shared buffer: a slot per chunk, or the one joined part */
static size_t part_slots(const Model *m, int tokens) { return share_chunks(m, tokens) ? (size_t)chunks_max(m) : 1; }

static int many_rows(int tokens) { return tokens >= MANY_ROWS; }

/* Scratch for `tokens` tokens, in floats (the caller allocates it): a shared part, then one
   private part per thread (see forward): the residual stream (few rows), a normed row, the rows'
   int8 form, attention's scores, rotated queries and chunks' parts for ROWS_TOGETHER rows, and
   the MLP's input product's unit for every row (many rows). */
static size_t private_floats(const Model *m, int tokens) {
    const size_t heads = ROWS_TOGETHER * (size_t)(m->heads / m->kv_heads), t = (size_t)tokens;
    return (many_rows(tokens) ? t * 2 * QK : t * m->hidden) + m->hidden + t * act_floats(m->hidden) +
           heads * (CHUNK + 32) + heads * m->head_dim + heads * chunks_max(m) * part_floats(m) + 16;
}

/* columns of the shared product output: q/k/v's, or the MLP's input product's where wider (few
   rows: many rows keep that product's outputs per unit) */
static size_t wide_rows(const Model *m, int tokens) {
    size_t qkv = (size_t)(m->heads + 2 * m->kv_heads) * m->head_dim, gu = 2 * (size_t)m->inter;
    return qkv > gu || many_rows(tokens) ? qkv : gu;
}

/* floats for the MLP's activation before its quantization: few rows only */
static size_t mlp_floats(const Model *m, int tokens) { return many_rows(tokens) ? 0 : (size_t)m->inter; }

static size_t shared_floats(const Model *m, int tokens) {
    size_t t = (size_t)tokens, parts = (size_t)m->heads * part_slots(m, tokens) * part_floats(m);
    return t * (wide_rows(m, tokens) + 2 * (size_t)m->hidden + parts + mlp_floats(m, tokens) + act_floats(m->inter) +
                act_floats(m->hidden) + (many_rows(tokens) ? (size_t)m->hidden : 0)) + 16;
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

/* y[t * ldy + r - r0] += bias[r] for rows r0..r1, every token (a product's bias, y as
   matmul4_rows writes it) */
static void add_bias(float *y, int ldy, int tokens, const float *bias, int r0, int r1) {
    if (!bias) return;
    for (int t = 0; t < tokens; t++)
        for (int r = r0; r < r1; r++) y[(size_t)t * ldy + r - r0] += bias[r];
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

/* Rows r0..r1 of a 4-bit product (plus its bias) for every row of x into y (its row stride
   w->n): with few rows, each thread's share of the weights (read ahead at the barrier before);
   with many, every row for one thread's tokens (product_tokens) */
static void product_rows(const Model *m, const Mat4 *w, const float *bias, const Act *x, int tokens, float *y, int r0,
                         int r1) {
    matmul4_rows(w, x, tokens, y + r0, w->n, r0, r1, m->path);
    add_bias(y + r0, w->n, tokens, bias, r0, r1);
}

/* rows t0.. of an Act, as an Act of their own */
static Act act_from(const Act *a, int t0) {
    const size_t nb = a->k / QK;
    return (Act){a->q + (size_t)t0 * a->k, a->d + t0 * nb, a->s + t0 * nb, a->e + t0 * nb, a->k};
}

/* Every row of a 4-bit product (plus its bias) for this thread's tokens t0..t1 of x, into
   y's rows t0..t1 (many rows: see forward) */
static void product_tokens(const Model *m, const Mat4 *w, const float *bias, const Act *x, int t0, int t1, float *y) {
    const Act own = act_from(x, t0);
    product_rows(m, w, bias, &own, t1 - t0, y + (size_t)t0 * w->n, 0, w->n);
}

/* the MLP's activation of n outputs from its input product's rows (gate/up interleaved, or up) */
static inline void activation(const Model *m, const float *in, int n, float *out) {
    if (m->act == ACT_SILU_GATED) silu_mul_interleaved(in, n, out);
    else gelu_tanh(in, n, out);
}

/* The MLP's input product with its activation, for this thread's tokens t0..t1 (many rows): one
   block of the activation at a time (64 interleaved gate/up rows, or 32 up rows), its outputs
   for the tokens in buf (room for tokens x 64 floats, in L2), at once activated and quantized
   into that block of h: no buffer of every row's outputs (6 MB a layer for 512 rows) */
static void mlp_input_tokens(const Model *m, const Layer *L, const Act *x, int t0, int t1, float *buf, Act *h) {
    const int unit = (m->act == ACT_SILU_GATED ? 2 : 1) * QK;
    const Act own = act_from(x, t0);
    float block[QK];
    for (int u = 0; u * unit < L->up.n; u++) {
        matmul4_rows(&L->up, &own, t1 - t0, buf, unit, u * unit, (u + 1) * unit, m->path);
        add_bias(buf, unit, t1 - t0, L->up_bias, u * unit, (u + 1) * unit);
        for (int t = t0; t < t1; t++) {
            activation(m, buf + (size_t)(t - t0) * unit, QK, block);
            quantize_blocks(block, h, t, u, u + 1);
        }
    }
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
    attend_rows(m->attention, qr, 1, m->heads / m->kv_heads, m->k_cache + at, m->v_cache + at, p0, &p1, m->head_dim,
                1.0f / sqrtf((float)m->head_dim), sc, part, 0, pstride);
}

/* Rows t..t+n-1 (n <= ROWS_TOGETHER; one sequence, consecutive positions) with KV head g, every
   chunk: their group's chunk parts in own ([row][head][chunk]), then each head's joined in
   chunk order into its one part in `parts` (max 0, sum 1: joining it again leaves its values
   as they are). qr and sc: this thread's room for the rows' queries and scores. */
static void attend_whole(const Model *m, int layer, const float *qkv, int t, int n, const int32_t *seqs,
                         const int32_t *positions, int g, float *qr, float *sc, float *own, float *parts,
                         size_t parts_per_token) {
    const int hd = m->head_dim, group = m->heads / m->kv_heads, qkv_n = (m->heads + 2 * m->kv_heads) * hd;
    const size_t part_n = part_floats(m), pstride = (size_t)chunks_max(m) * part_n, rstride = group * pstride;
    const size_t at = cache_at(m, seqs[t], layer, g, 0);
    for (int i = 0; i < n; i++) queries(m, qkv + (size_t)(t + i) * qkv_n, positions[t + i], g, qr + (size_t)i * group * hd);
    int p1[ROWS_TOGETHER];
    for (int c = 0, a = 0; c <= positions[t + n - 1] / CHUNK; c++) {
        const int p0 = c * CHUNK;
        while (positions[t + a] < p0) a++;  /* the first row with positions in this chunk */
        for (int i = a; i < n; i++) p1[i] = positions[t + i] + 1 < p0 + CHUNK ? positions[t + i] + 1 : p0 + CHUNK;
        attend_rows(m->attention, qr + (size_t)a * group * hd, n - a, group, m->k_cache + at, m->v_cache + at, p0, p1 + a, hd,
                    1.0f / sqrtf((float)hd), sc, own + a * rstride + c * part_n, rstride, pstride);
    }
    for (int i = 0; i < n; i++)
        for (int h = 0; h < group; h++) {
            float *part = parts + (size_t)(t + i) * parts_per_token + (size_t)(g * group + h) * part_n;
            combine_parts(own + i * rstride + h * pstride, positions[t + i] / CHUNK + 1, part_n, hd, part + 8);
            part[0] = 0.0f;
            part[1] = 1.0f;
        }
}

/* ---- the engine's own clock: wall time per kind of work, read by the profiler -------------- */

enum { PH_EMBED, PH_NORM, PH_ATTN_PROJ, PH_ATTENTION, PH_MLP_PROJ, PH_ACTIVATION, PH_RESIDUAL,
       PH_FINAL_NORM, PH_HEAD, PHASES };
static const char *const PHASE_NAMES = "embedding,norm_quantize,attention_projections,attention,"
                                       "mlp_projections,activation_quantize,residual_add,final_norm,lm_head";
static double phase_s[PHASES];  /* per process: one decoder runs in a method's process */

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

   Few rows (a decode step, a small batch): five barriers a layer: after the q/k/v product (each
   thread rotates the k heads among its rows and writes its k and v heads to the cache first),
   after attention (chunks of positions shared out, see CHUNK; then every thread joins the parts
   for itself), after the o product, after the MLP's input product (each thread applies the
   activation to its own rows, SiLU on interleaved gate/up rows or GPT-2's GELU, and quantizes
   its own blocks first), after the down product. Everything between, the residual stream, the
   norms and the quantization of each product's input, every thread computes for itself on
   private buffers: the same arithmetic, so the same values, with no wait.

   Many rows (MANY_ROWS or more: a prompt): each thread takes half the rows (its tokens) through
   every product, all of the weights' rows, and through the norms, the activation and the
   residual stream; two barriers a layer: once every row's k and v are in the cache, and after
   attention (whole (rows, KV head) units dealt in turn), whose parts each thread joins for its
   own rows. Only the cache, the queries and attention's parts pass between the threads. (Shared
   by rows of the weights, every product's outputs passed, at nine barriers a layer: on this
   project's 2-vCPU machines, in the state where two threads stream twice the bandwidth of one,
   a 512-token prefill took 312 ms against 253 this way, the same 249 in the other state; A/B
   in one process, 4 and 32 rounds.) Each value is computed by the same arithmetic either way:
   the same logits, bit for bit. */
int forward(const Model *m, const int32_t *ids, const int32_t *seqs, const int32_t *positions, int tokens, int kept,
            float *logits, float *scratch) {
    if (tokens < 1 || kept < 0 || kept > tokens) return -1;
    for (int t = 0; t < tokens; t++)
        if (positions[t] < 0 || positions[t] >= m->slots || seqs[t] < 0 || seqs[t] >= m->seqs) return -1;
    const int H = m->hidden, hd = m->head_dim, inter = m->inter, many = many_rows(tokens);
    const int gated = m->act == ACT_SILU_GATED;  /* the MLP's input product: gate and up rows, or up */
    const int qkv_n = (m->heads + 2 * m->kv_heads) * hd, gu_n = (gated ? 2 : 1) * inter, group = m->heads / m->kv_heads;
    const size_t T = (size_t)tokens;
    /* shared: product outputs, attention's parts from every thread, the MLP activation and its
       quantized form; many rows: the products' input and the residual stream */
    const size_t part_n = part_floats(m), slots = part_slots(m, tokens), parts_per_token = m->heads * slots * part_n;
    const int shared = share_chunks(m, tokens);
    float *wide = scratch, *obuf = wide + T * wide_rows(m, tokens), *dbuf = obuf + T * H, *parts = dbuf + T * H;
    float *mlp = parts + T * parts_per_token, *hbuf = mlp + T * mlp_floats(m, tokens), *xbuf = hbuf + T * act_floats(inter);
    float *shared_resid = xbuf + T * act_floats(H);
    float *private_base = scratch + shared_floats(m, tokens);
    Act hact, xact;
    act_layout(&hact, hbuf, inter, tokens);
    act_layout(&xact, xbuf, H, tokens);

    Barrier bar;
    atomic_init(&bar.count, 0);
    atomic_init(&bar.sense, 0);
#pragma omp parallel num_threads(m->threads)
    {
        int sense = 0;
        Ahead ahead;
        float *mine = private_base + (size_t)omp_get_thread_num() * private_floats(m, tokens);
        /* the residual stream: each thread's own copy of every row (few rows), or one shared,
           each thread keeping rows t0..t1 (many rows); unit: the MLP's input product's (many) */
        float *resid = many ? shared_resid : mine, *unit = mine;
        /* normed: one row on its way to x (its int8 form), kept in L1 */
        float *normed = mine + (many ? T * 2 * QK : T * H), *sc = normed + H + T * act_floats(H);
        float *qr = sc + (size_t)ROWS_TOGETHER * group * (CHUNK + 32);  /* rows' groups of heads, rotated */
        float *own = qr + (size_t)ROWS_TOGETHER * group * hd;  /* their chunk parts: [row][head][chunk] */
        const int nt = omp_get_num_threads(), id = omp_get_thread_num();
        Act ah;
        act_layout(&ah, normed + H, H, tokens);
        /* the products' input: this thread's own (few rows), or the shared one, each thread
           preparing rows t0..t1 of it (many rows) */
        Act *x = many ? &xact : &ah;
        int t0 = 0, t1 = tokens;
        if (many) my_rows(tokens, 1, &t0, &t1);
        /* this thread's rows of each product: q/k/v; o and down (hidden); the MLP's input
           product in whole blocks of 32 activations (64 interleaved gate/up rows, or 32 up rows),
           the blocks the down product's input is quantized in; the LM head */
        int qkv0, qkv1, hid0, hid1, gu0, gu1, voc0, voc1;
        qkv_rows(m, &qkv0, &qkv1);
        my_rows(H, TILE, &hid0, &hid1);
        my_rows(gu_n, (gated ? 2 : 1) * QK, &gu0, &gu1);
        my_rows(m->vocab, 4, &voc0, &voc1);
        double last = now_s();
        for (int t = t0; t < t1; t++) {
            embed_row(&m->embed, ids[t], resid + t * H);
            if (m->positions)
                for (int i = 0; i < H; i++) resid[t * H + i] += m->positions[(size_t)positions[t] * H + i];
        }
        mark(PH_EMBED, &last);

        for (int l = 0; l < m->layers; l++) {
            const Layer *L = &m->layer[l];
            for (int t = t0; t < t1; t++) {
                norm(m, resid + t * H, L->attn_norm, L->attn_norm_bias, normed);
                quantize_token(normed, x, t);
            }
            mark(PH_NORM, &last);
            if (many) {  /* its rows' k and v heads, all of them */
                product_tokens(m, &L->qkv, L->qkv_bias, x, t0, t1, wide);
                cache_kv(m, wide, t0, t1, seqs, positions, l, m->heads * hd, qkv_n);
            } else {
                product_rows(m, &L->qkv, L->qkv_bias, x, tokens, wide, qkv0, qkv1);
                cache_kv(m, wide, 0, tokens, seqs, positions, l, qkv0, qkv1);
            }
            ahead_rows4(&ahead, &L->o, hid0, hid1);  /* read while waiting here and after attention */
            barrier_wait(&bar, nt, &sense, &ahead);
            mark(PH_ATTN_PROJ, &last);
            if (shared) {
                /* every row's (KV head, chunk) units in the cache's order, cut into nt runs of
                   about equal positions: each thread reads its run as one stream (its prefetch
                   running on into its next chunk; 0.98x the step at 2048 positions against
                   units dealt in turn, A/B in one process). Each writes its group of heads'
                   parts at the chunk's slot. */
                int total = 0;
                for (int t = 0; t < tokens; t++) total += (positions[t] + 1) * m->kv_heads;
                for (int t = 0, before = 0; t < tokens; t++) {
                    const int len = positions[t] + 1, chunks = positions[t] / CHUNK + 1;
                    for (int g = 0, rotated = 0; g < m->kv_heads; g++, rotated = 0)
                        for (int c = 0; c < chunks; c++) {
                            const int n = len - c * CHUNK < CHUNK ? len - c * CHUNK : CHUNK;
                            const long middle = 2L * before + n;  /* twice the unit's middle position */
                            before += n;
                            if (middle * nt / (2L * total) != id) continue;
                            if (!rotated) queries(m, wide + (size_t)t * qkv_n, positions[t], g, qr);
                            rotated = 1;
                            attend_chunk(m, l, qr, seqs[t], len, g, c, sc,
                                         parts + t * parts_per_token + ((size_t)g * group * slots + c) * part_n, slots * part_n);
                        }
                }
            } else {
                /* whole (rows, KV head) units: a prompt's rows ROWS_TOGETHER at a time */
                for (int t = 0, unit = 0; t < tokens;) {
                    int n = 1;
                    while (n < ROWS_TOGETHER && t + n < tokens && seqs[t + n] == seqs[t] &&
                           positions[t + n] == positions[t] + n)
                        n++;
                    for (int g = 0; g < m->kv_heads; g++, unit++)
                        if (unit % nt == id)
                            attend_whole(m, l, wide, t, n, seqs, positions, g, qr, sc, own, parts, parts_per_token);
                    t += n;
                }
            }
            barrier_wait(&bar, nt, &sense, &ahead);
            for (int t = t0; t < t1; t++) {  /* every head's parts joined */
                const int n = shared ? positions[t] / CHUNK + 1 : 1;
                for (int h = 0; h < m->heads; h++)
                    combine_parts(parts + t * parts_per_token + (size_t)h * slots * part_n, n, part_n, hd, normed + h * hd);
                quantize_token(normed, x, t);
            }
            mark(PH_ATTENTION, &last);
            if (many) {
                product_tokens(m, &L->o, L->o_bias, x, t0, t1, obuf);
            } else {
                product_rows(m, &L->o, L->o_bias, x, tokens, obuf, hid0, hid1);
                ahead_rows4(&ahead, &L->up, gu0, gu1);
                barrier_wait(&bar, nt, &sense, &ahead);
            }
            mark(PH_ATTN_PROJ, &last);
            for (int t = t0; t < t1; t++) {
                float *r = resid + t * H;
                for (int i = 0; i < H; i++) r[i] += obuf[t * H + i];
                norm(m, r, L->ffn_norm, L->ffn_norm_bias, normed);
                quantize_token(normed, x, t);
            }
            mark(PH_NORM, &last);
            if (many) {  /* the activation inside the product's phase */
                mlp_input_tokens(m, L, x, t0, t1, unit, &hact);
                mark(PH_MLP_PROJ, &last);
            } else {
                product_rows(m, &L->up, L->up_bias, x, tokens, wide, gu0, gu1);
                mark(PH_MLP_PROJ, &last);
                /* this thread's activations: a0..a1, whole blocks */
                const int a0 = gated ? gu0 / 2 : gu0, a1 = gated ? gu1 / 2 : gu1;
                for (int t = 0; t < tokens; t++) {
                    activation(m, wide + t * gu_n + gu0, a1 - a0, mlp + t * inter + a0);
                    quantize_blocks(mlp + t * inter + a0, &hact, t, a0 / QK, (a1 + QK - 1) / QK);
                }
                mark(PH_ACTIVATION, &last);
            }
            if (many) {
                product_tokens(m, &L->down, L->down_bias, &hact, t0, t1, dbuf);
            } else {
                ahead_rows4(&ahead, &L->down, hid0, hid1);
                barrier_wait(&bar, nt, &sense, &ahead);
                mark(PH_MLP_PROJ, &last);
                product_rows(m, &L->down, L->down_bias, &hact, tokens, dbuf, hid0, hid1);
                if (l + 1 < m->layers)
                    ahead_rows4(&ahead, &m->layer[l + 1].qkv, qkv0, qkv1);
                else
                    ahead_rows8(&ahead, &m->head, voc0, voc1);
                barrier_wait(&bar, nt, &sense, &ahead);
            }
            mark(PH_MLP_PROJ, &last);
            for (int t = t0; t < t1; t++)
                for (int i = 0; i < H; i++) resid[t * H + i] += dbuf[t * H + i];
            mark(PH_RESIDUAL, &last);
        }
        if (many) barrier_wait(&bar, nt, &sense, 0);  /* every row's stream complete */
        /* final norm and the LM head, on the last `kept` rows */
        const int first = tokens - kept;
        for (int t = 0; t < kept; t++) {
            norm(m, resid + (first + t) * H, m->final_norm, m->final_norm_bias, normed);
            quantize_token(normed, &ah, t);
        }
        mark(PH_FINAL_NORM, &last);
        matmul8_rows(&m->head, &ah, kept, logits, m->vocab, voc0, voc1);
        barrier_wait(&bar, nt, &sense, 0);
        mark(PH_HEAD, &last);
    }
    return 0;
}
