/* The 4-bit product's kernel, compiled once per instruction path. The file that includes it
   defines SUFFIX (the path's name in function names), TARGET (its target attribute), RN (the
   tokens a call carries), and, from q4_vec256.h or q4_vec512.h, ROWS (rows per vector: 8 for
   256-bit vectors, which take a tile of 16 rows as two halves, or 16), the vector types VI and
   VF and their operations, and DOT2(acc, lo, hi, xp): acc plus the dot products, per 32-bit
   lane, of lo's four bytes with the four at xp and of hi's with the four at xp + 4 (exact in
   int32 on every path). This file undefines all of them at its end.

   A call computes the rows of one or two vectors' worth of rows for up to RN tokens: per block
   of 32 inputs, eight broadcasts of four activation bytes per token meet the unpacked nibbles
   of every row at once; the integer sums are scaled once per block: sum(w x) over a block is
   d * (dx * sum(q xq) + e) + m * s (Act: e = 8 (s - dx sum(xq)), s the exact sum of x). */

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define PARTS (TILE / ROWS)  /* vectors per tile */

/* where unit j (ROWS rows) starts in the tile layout: its bytes (vector 0 of block 0), and its
   scales' index */
static inline size_t CAT(unit_bytes_, SUFFIX)(int nb, int j) {
    return (size_t)(j / PARTS) * nb * (TILE * QK / 2) + (size_t)(j % PARTS) * ROWS * 4;
}
static inline size_t CAT(unit_scales_, SUFFIX)(int nb, int j) {
    return (size_t)(j / PARTS) * nb * TILE + (size_t)(j % PARTS) * ROWS;
}

static inline __attribute__((always_inline)) TARGET void CAT(units4_, SUFFIX)(
    const Mat4 *w, const Act *x, int j0, int ja, int jb, const int two, int t0, const int rn, float *y, int ldy) {
    const int nb = w->k / QK, k = w->k;
    const VI low = SET1_8(0x0F);
    const uint8_t *q[2] = {w->q + CAT(unit_bytes_, SUFFIX)(nb, ja), w->q + CAT(unit_bytes_, SUFFIX)(nb, jb)};
    const size_t sc[2] = {CAT(unit_scales_, SUFFIX)(nb, ja), CAT(unit_scales_, SUFFIX)(nb, jb)};
    const int row[2] = {(ja - j0) * ROWS, (jb - j0) * ROWS};  /* y's columns: from unit j0's first row */
    VF acc[2][RN];
#pragma GCC unroll 8
    for (int r = 0; r < 2; r++)
#pragma GCC unroll 8
        for (int t = 0; t < rn; t++) acc[r][t] = ZERO_F();
    for (int b = 0; b < nb; b++) {
        VI dots[2][RN];
#pragma GCC unroll 8
        for (int r = 0; r < 2; r++)
#pragma GCC unroll 8
            for (int t = 0; t < rn; t++) dots[r][t] = ZERO_I();
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++) {
            VI lo[2], hi[2];
#pragma GCC unroll 2
            for (int r = 0; r <= two; r++) {
                const VI raw = LOAD_I(q[r] + (size_t)b * (TILE * QK / 2) + v * (TILE * 4));
                lo[r] = AND(raw, low);
                hi[r] = AND(SRLI16(raw, 4), low);
            }
#pragma GCC unroll 8
            for (int t = 0; t < rn; t++) {
                const int8_t *xp = x->q + (size_t)(t0 + t) * k + b * QK + 8 * v;
#pragma GCC unroll 2
                for (int r = 0; r <= two; r++) dots[r][t] = DOT2(dots[r][t], lo[r], hi[r], xp);
            }
        }
#pragma GCC unroll 2
        for (int r = 0; r <= two; r++) {
            const size_t at = sc[r] + (size_t)b * TILE;
            const VF d = LOAD_HALF(w->d + at), m = LOAD_HALF(w->m + at);
#pragma GCC unroll 8
            for (int t = 0; t < rn; t++) {
                const size_t i = (size_t)(t0 + t) * nb + b;
                const VF scaled = FMADD(CVT(dots[r][t]), SET1_F(x->d[i]), SET1_F(x->e[i]));
                acc[r][t] = FMADD(d, scaled, FMADD(m, SET1_F(x->s[i]), acc[r][t]));
            }
        }
    }
#pragma GCC unroll 2
    for (int r = 0; r <= two; r++)
#pragma GCC unroll 8
        for (int t = 0; t < rn; t++) STORE_F(y + (size_t)(t0 + t) * ldy + row[r], acc[r][t]);
}

#define CALL(two, rn) do { if (two) CAT(units4_, SUFFIX)(w, x, first, ja, jb, 1, t, rn, y, ldy); \
                            else CAT(units4_, SUFFIX)(w, x, first, ja, ja, 0, t, rn, y, ldy); } while (0)
/* the last tokens, fewer than RN: the count a constant in each copy */
#define REST(two, n) switch (n) { case 1: CALL(two, 1); break; case 2: CALL(two, 2); break; \
                                  case 3: CALL(two, 3); break; default: break; }
#if RN != 4
#error "REST covers the counts below 4"
#endif

/* rows r0..r1 (multiples of 16) of W x[t] for every token into y[t * ldy + r - r0]: units of ROWS rows in pairs,
   one from each half of the range (two streams through memory keep more loads in flight than
   one: plain streaming, 2 threads, measured 22.6 -> 32.5 GB/s), the odd unit out alone; rows
   outside, tokens inside, so a pair's weights stay in L1 while every token passes. (One unit
   for 8 tokens a call, unpacking each weight for more tokens, measured no faster: 146-158
   against 154-162 GMAC/s on one thread.) */
static TARGET void CAT(matmul4_, SUFFIX)(const Mat4 *w, const Act *x, int tokens, float *y, int ldy, int r0, int r1) {
    const int first = r0 / ROWS, n = (r1 - r0) / ROWS, half = n / 2;
    for (int i = 0; i <= half; i++) {
        const int two = i < half, ja = two ? first + i : first + n - 1, jb = first + half + i;
        if (!two && n % 2 == 0) break;
        int t = 0;
        for (; t + RN <= tokens; t += RN) CALL(two, RN);
        REST(two, tokens - t);
    }
}

#undef CALL
#undef REST
#undef PARTS
#undef CAT
#undef CAT_
#undef SUFFIX
#undef TARGET
#undef RN
#undef DOT2
#undef ROWS
#undef VI
#undef VF
#undef SET1_8
#undef SET1_F
#undef ZERO_I
#undef ZERO_F
#undef LOAD_I
#undef AND
#undef SRLI16
#undef CVT
#undef FMADD
#undef LOAD_HALF
#undef STORE_F
