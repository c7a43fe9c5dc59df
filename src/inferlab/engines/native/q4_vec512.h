/* The 4-bit kernel's vector operations on 512-bit vectors: 16 rows, a whole tile, each.
   Included before each copy of q4_kernel4.h that uses them (which undefines them at its end). */
#define ROWS 16
#define VI __m512i
#define VF __m512
#define SET1_8 _mm512_set1_epi8
#define SET1_F _mm512_set1_ps
#define ZERO_I _mm512_setzero_si512
#define ZERO_F _mm512_setzero_ps
#define LOAD_I(p) _mm512_loadu_si512((const void *)(p))
#define AND _mm512_and_si512
#define SRLI16 _mm512_srli_epi16
#define CVT _mm512_cvtepi32_ps
#define FMADD _mm512_fmadd_ps
#define LOAD_HALF(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))
#define STORE_F _mm512_storeu_ps
