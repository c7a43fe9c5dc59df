/* The 4-bit kernel's vector operations on 256-bit vectors: 8 rows each, two per tile. Included
   before each copy of q4_kernel4.h that uses them (which undefines them at its end). */
#define ROWS 8
#define VI __m256i
#define VF __m256
#define SET1_8 _mm256_set1_epi8
#define SET1_F _mm256_set1_ps
#define ZERO_I _mm256_setzero_si256
#define ZERO_F _mm256_setzero_ps
#define LOAD_I(p) _mm256_loadu_si256((const __m256i *)(p))
#define AND _mm256_and_si256
#define SRLI16 _mm256_srli_epi16
#define CVT _mm256_cvtepi32_ps
#define FMADD _mm256_fmadd_ps
#define LOAD_HALF(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
#define STORE_F _mm256_storeu_ps
