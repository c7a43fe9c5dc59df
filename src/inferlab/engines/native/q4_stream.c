/* The machine's streaming read bandwidth, read the way the decoder reads its weights: a buffer
   in 2 MiB pages (as decoder.py places the weights), each thread reading its own contiguous
   share with 256-bit loads. A plain reduction on 4 KiB pages (torch.sum, probe.py) read
   22-28 GB/s where this loop read 29-36 on the same machine in the same minutes (AMD EPYC,
   2 threads): the page walks, not the memory, set that rate, and a ceiling below what the
   decoder itself reaches is no ceiling. */

#define _GNU_SOURCE
#include <pthread.h>
#include <sys/mman.h>

#include "q4_common.h"

#define MAX_THREADS 256

/* every 8 bytes hold their own address: no two pages alike, so no page merging (a host's or
   the kernel's) can serve the buffer from one physical page */
static void fill(int64_t *p, size_t n) {
    for (size_t i = 0; i < n; i++) p[i] = (int64_t)(uintptr_t)(p + i);
}

static int64_t read_share(const char *p, size_t bytes) {
    __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
    for (size_t i = 0; i + 128 <= bytes; i += 128) {
        a = _mm256_add_epi64(a, _mm256_load_si256((const __m256i *)(p + i)));
        b = _mm256_add_epi64(b, _mm256_load_si256((const __m256i *)(p + i + 32)));
        c = _mm256_add_epi64(c, _mm256_load_si256((const __m256i *)(p + i + 64)));
        d = _mm256_add_epi64(d, _mm256_load_si256((const __m256i *)(p + i + 96)));
    }
    __m256i s = _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d));
    return _mm256_extract_epi64(s, 0) + _mm256_extract_epi64(s, 1) + _mm256_extract_epi64(s, 2) +
           _mm256_extract_epi64(s, 3);
}

/* one thread's share of a pass: written (the first pass: its pages placed by the thread that
   reads them) or read, with the pass's start and end on this thread's clock */
typedef struct {
    char *p;
    size_t bytes;
    int write;
    double start, end;
    int64_t sink;
} Share;

static void *pass_share(void *arg) {
    Share *s = arg;
    s->start = now_s();
    if (s->write) fill((int64_t *)s->p, s->bytes / 8);
    else s->sink += read_share(s->p, s->bytes);
    s->end = now_s();
    return 0;
}

/* one pass of every share on its own thread (share 0 on this one); 0, or -1 when a thread
   cannot be made */
static int pass(Share *share, int threads) {
    pthread_t id[MAX_THREADS];
    int made = 1;
    for (; made < threads; made++)
        if (pthread_create(&id[made], 0, pass_share, &share[made]) != 0) break;
    pass_share(&share[0]);
    for (int t = 1; t < made; t++) pthread_join(id[t], 0);
    return made == threads ? 0 : -1;
}

/* Bytes read per second, the best of `repeats` passes over `bytes` (rounded down to whole
   2 MiB pages) on `threads` threads, a pass timed from its first thread's start to its last
   thread's end; -1 when the buffer or a thread cannot be had. Plain threads, made and joined
   for each pass, not OpenMP's: its pool spins on for about 10 ms after a parallel region
   (measured: 8-10 ms of CPU in the 50 ms after a reading), and a sweep takes a reading just
   before each timed run. */
double stream_read(int threads, size_t bytes, int repeats) {
    const size_t page = 2u << 20;
    if (threads < 1 || threads > MAX_THREADS || repeats < 1) return -1.0;
    bytes -= bytes % (page * (size_t)threads);
    if (bytes == 0) return -1.0;
    char *p = mmap(0, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return -1.0;
    madvise(p, bytes, MADV_HUGEPAGE);  /* a hint: 4 KiB pages where the kernel has none */
    Share share[MAX_THREADS];
    for (int t = 0; t < threads; t++) share[t] = (Share){p + (size_t)t * (bytes / threads), bytes / threads, 1, 0, 0, 0};
    double best = pass(share, threads) == 0 ? 0.0 : -1.0;
    for (int r = 0; r < repeats && best >= 0.0; r++) {
        for (int t = 0; t < threads; t++) share[t].write = 0;
        if (pass(share, threads) != 0) {
            best = -1.0;
            break;
        }
        double start = share[0].start, end = share[0].end;
        for (int t = 1; t < threads; t++) {
            start = share[t].start < start ? share[t].start : start;
            end = share[t].end > end ? share[t].end : end;
        }
        best = bytes / (end - start) > best ? bytes / (end - start) : best;
    }
    munmap(p, bytes);
    int64_t sink = 0;
    for (int t = 0; t < threads; t++) sink += share[t].sink;
    return sink == 42 ? best + 1e-9 : best;  /* the sums are used */
}
