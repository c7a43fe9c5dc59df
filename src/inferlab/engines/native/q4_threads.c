/* Threads: which rows of each product are a thread's, and where threads meet. */

#include "q4_common.h"

/* This thread's rows of n, split evenly in units of `align` rows (a 4-bit matrix's tile of 8,
   whole blocks of the MLP activation for the gate/up product; q/k/v: qkv_rows). */
INTERNAL void my_rows(int n, int align, int *r0, int *r1) {
    int nt = omp_get_num_threads(), id = omp_get_thread_num();
    int units = (n + align - 1) / align, per = (units + nt - 1) / nt;
    *r0 = id * per * align < n ? id * per * align : n;
    *r1 = (id + 1) * per * align < n ? (id + 1) * per * align : n;
}

/* Rows r0..r1 of the q/k/v product are this thread's. Its q rows split anywhere (every thread
   rotates the q heads it attends with for itself); its k and v rows are whole heads, which it
   rotates (k) and writes to the cache at their positions. */
INTERNAL void qkv_rows(const Model *m, int *r0, int *r1) {
    const int q_rows = m->heads * m->head_dim, n = (m->heads + 2 * m->kv_heads) * m->head_dim;
    const int nt = omp_get_num_threads(), id = omp_get_thread_num();
    int b[2];
    for (int i = 0; i < 2; i++) {
        int at = (int)((long)n * (id + i) / nt) / TILE * TILE;  /* whole tiles */
        if (at > q_rows) at = q_rows + (at - q_rows + m->head_dim / 2) / m->head_dim * m->head_dim;
        b[i] = at < n && id + i < nt ? at : n;
    }
    *r0 = b[0];
    *r1 = b[1];
}

/* ---- where threads meet: a barrier that reads ahead while it waits --------------------- */

static void ahead_add(Ahead *a, const void *p, size_t bytes) {
    if (bytes == 0) return;
    a->p[a->n] = (const char *)p;
    a->end[a->n++] = (const char *)p + bytes;
}
/* the rows r0..r1 of a product as its kernel reads them: from both halves of the range (whole
   tiles: a tile of 8 rows lies where its first row would, 16 bytes and a scale per row and block) */
INTERNAL void ahead_rows4(Ahead *a, const Mat4 *w, int r0, int r1) {
    const size_t nb = w->k / QK;
    const int mid = r0 + (r1 - r0) / TILE / 2 * TILE, from[2] = {r0, mid}, to[2] = {mid, r1};
    a->n = 0;
    for (int h = 0; h < 2; h++) {
        ahead_add(a, w->q + from[h] * nb * 16, (to[h] - from[h]) * nb * 16);
        ahead_add(a, w->d + from[h] * nb, (to[h] - from[h]) * nb * 2);
        ahead_add(a, w->m + from[h] * nb, (to[h] - from[h]) * nb * 2);
    }
}
INTERNAL void ahead_rows8(Ahead *a, const Mat8 *w, int r0, int r1) {
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
INTERNAL void barrier_wait(Barrier *b, int nt, int *sense, Ahead *a) {
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
