/* The machine's streaming read bandwidth, read the way the decoder reads its weights: a buffer
   in 2 MiB pages (as decoder.py places the weights), each thread reading its own contiguous
   share with 256-bit loads. A plain reduction on 4 KiB pages (torch.sum, probe.py) read
   22-28 GB/s where this loop read 29-36 on the same machine in the same minutes (AMD EPYC,
   2 threads): the page walks, not the memory, set that rate, and a ceiling below what the
   decoder itself reaches is no ceiling. */

#define _GNU_SOURCE
#include <sys/mman.h>

#include "q4_common.h"

static double seconds_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* every 8 bytes their own index: no two pages alike, so no page merging (a host's or the
   kernel's) can serve the buffer from one physical page */
static void fill(int64_t *p, size_t n, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (size_t i = 0; i < n; i++) p[i] = (int64_t)i;
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

/* Bytes read per second, the best of `repeats` passes over `bytes` (rounded down to whole
   2 MiB pages) on `threads` threads; -1 when the buffer cannot be had. */
double stream_read(int threads, size_t bytes, int repeats) {
    const size_t page = 2u << 20;
    bytes -= bytes % (page * (size_t)threads);
    if (bytes == 0 || threads < 1 || repeats < 1) return -1.0;
    char *p = mmap(0, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return -1.0;
    madvise(p, bytes, MADV_HUGEPAGE);  /* a hint: 4 KiB pages where the kernel has none */
    fill((int64_t *)p, bytes / 8, threads);
    const size_t share = bytes / threads;
    double best = 0.0;
    int64_t sink = 0;
    for (int r = 0; r < repeats; r++) {
        const double t0 = seconds_now();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
        sink += read_share(p + (size_t)omp_get_thread_num() * share, share);
        const double rate = bytes / (seconds_now() - t0);
        best = rate > best ? rate : best;
    }
    munmap(p, bytes);
    return sink == 42 ? best + 1e-9 : best;  /* the sums are used */
}
