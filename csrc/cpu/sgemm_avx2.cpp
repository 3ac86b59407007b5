// AVX2+FMA pieces of the packed float32 GEMM (sgemm.h): operand packing and the 6x16
// register-tile micro-kernel. The blocking loops that drive them are ISA-independent and
// live in sgemm.cpp; this file holds only what must be compiled for the wider ISA.
//
// Why a GEMM of our own: on the AMD CPUs we measured, the BLAS inside libtorch_cpu reaches
// 55-65 % of the FMA peak for the shapes of a recurrent step (m = batch, n = a thread's gate
// columns, k = H), and it repacks the weights on every call, i.e. once per time step. This
// kernel reaches 75-90 % in the same setting, and the step loops pack the weights once per
// layer call (sgemm.h: PackedB).
//
// Every standard header is included before FRNN_AVX2_BEGIN (kernels.h), as in kernels_avx2.cpp.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels.h"
#include "sgemm.h"

#if FRNN_TARGET_AVX2
#include <immintrin.h>

FRNN_AVX2_BEGIN

namespace fusedrnn::cpu::sgemm_avx2 {

namespace {

constexpr int64_t MR = kSgemmMR, NR = kSgemmNR;

// acc[6][16] -> C rows: C = alpha * acc + beta * C (C not read when beta == 0).
inline void store_tile(const __m256 (&acc)[MR][2], float alpha, float beta, float* C,
                       int64_t ldc) {
  const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
  for (int64_t i = 0; i < MR; ++i) {
    float* c = C + i * ldc;
    __m256 r0 = _mm256_mul_ps(acc[i][0], va), r1 = _mm256_mul_ps(acc[i][1], va);
    if (beta != 0.f) {
      r0 = _mm256_fmadd_ps(_mm256_loadu_ps(c), vb, r0);
      r1 = _mm256_fmadd_ps(_mm256_loadu_ps(c + 8), vb, r1);
    }
    _mm256_storeu_ps(c, r0);
    _mm256_storeu_ps(c + 8, r1);
  }
}

// acc = op(A) [6 rows][kb] x Bp [kb][16]: twelve accumulators, two B vectors and one
// broadcast A value in registers (15 of 16 ymm), two FMAs per broadcast. a(q, i) is the address
// of op(A)[i, q]: in a packed panel, or where A lies (sgemm.h: when A is not packed).
template <class AAt>
inline void micro_tile(int64_t kb, const AAt& a, const float* __restrict Bp,
                       __m256 (&acc)[MR][2]) {
  for (int64_t i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
#pragma GCC unroll 4
  for (int64_t q = 0; q < kb; ++q) {
    const __m256 b0 = _mm256_loadu_ps(Bp), b1 = _mm256_loadu_ps(Bp + 8);
#pragma GCC unroll 6
    for (int64_t i = 0; i < MR; ++i) {  // fully unrolled: acc lives in registers
      const __m256 v = _mm256_broadcast_ss(a(q, i));
      acc[i][0] = _mm256_fmadd_ps(v, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(v, b1, acc[i][1]);
    }
    Bp += NR;
  }
}

}  // namespace

void pack_a(bool ta, int64_t rows, int64_t kb, const float* A, int64_t lda, float* out) {
  for (int64_t i0 = 0; i0 < rows; i0 += MR) {
    const int64_t h = std::min(MR, rows - i0);
    float* __restrict o = out + i0 * kb;
    if (ta) {  // op(A)[i, q] = A[q, i]: six contiguous values per q
      for (int64_t q = 0; q < kb; ++q) {
        const float* a = A + q * lda + i0;
        for (int64_t i = 0; i < MR; ++i) o[q * MR + i] = i < h ? a[i] : 0.f;
      }
    } else {
      for (int64_t i = 0; i < MR; ++i) {
        const float* __restrict a = A + (i0 + i) * lda;
        if (i < h)
          for (int64_t q = 0; q < kb; ++q) o[q * MR + i] = a[q];
        else
          for (int64_t q = 0; q < kb; ++q) o[q * MR + i] = 0.f;
      }
    }
  }
}

void pack_b(bool tb, int64_t kb, int64_t cols, const float* B, int64_t ldb, float* out) {
  for (int64_t j0 = 0; j0 < cols; j0 += NR) {
    const int64_t w = std::min(NR, cols - j0);
    float* __restrict o = out + j0 * kb;
    if (!tb && w == NR) {  // op(B)[q, j] = B[q, j]: sixteen contiguous values per q
      for (int64_t q = 0; q < kb; ++q) std::memcpy(o + q * NR, B + q * ldb + j0, NR * 4);
    } else if (!tb) {
      for (int64_t q = 0; q < kb; ++q)
        for (int64_t j = 0; j < NR; ++j) o[q * NR + j] = j < w ? B[q * ldb + j0 + j] : 0.f;
    } else {  // op(B)[q, j] = B[j, q]: column j is row j of B, contiguous in q
      for (int64_t j = 0; j < NR; ++j) {
        const float* __restrict b = B + (j0 + j) * ldb;
        if (j < w)
          for (int64_t q = 0; q < kb; ++q) o[q * NR + j] = b[q];
        else
          for (int64_t q = 0; q < kb; ++q) o[q * NR + j] = 0.f;
      }
    }
  }
}

void macro_kernel(int64_t rows, int64_t cols, int64_t kb, float alpha, const float* A,
                  int64_t lda, bool packed, const float* Bp, float beta, float* C,
                  int64_t ldc) {
  __m256 acc[MR][2];
  alignas(32) float tile[MR * NR];
  // Read in place, a last panel of fewer than 6 rows would run past A: it is packed
  // (zero-padded), once for every column panel.
  alignas(32) float edge[MR * kSgemmKC];
  const int64_t full = packed ? rows : rows / MR * MR;
  if (full < rows) pack_a(false, rows - full, kb, A + full * lda, lda, edge);
  // B micro-panel outermost: it stays in L1 while the rows of A stream from L1/L2.
  for (int64_t j0 = 0; j0 < cols; j0 += NR) {
    const int64_t w = std::min(NR, cols - j0);
    const float* bp = Bp + j0 * kb;
    for (int64_t i0 = 0; i0 < rows; i0 += MR) {
      const int64_t h = std::min(MR, rows - i0);
      // C often comes from memory (a step's gate block of the whole-sequence projection):
      // fetch the next tile's rows while this tile computes, or the stores stall on it.
      const int64_t ni = i0 + MR < rows ? i0 + MR : 0, nj = i0 + MR < rows ? j0 : j0 + NR;
      if (nj < cols)
        for (int64_t i = ni; i < std::min(ni + MR, rows); ++i) {
          const char* c = reinterpret_cast<const char*>(C + i * ldc + nj);
          _mm_prefetch(c, _MM_HINT_T0);
          _mm_prefetch(c + 63, _MM_HINT_T0);
        }
      if (packed || i0 >= full) {
        const float* ap = packed ? A + i0 * kb : edge;
        micro_tile(kb, [&](int64_t q, int64_t i) { return ap + q * MR + i; }, bp, acc);
      } else {
        const float* a = A + i0 * lda;
        micro_tile(kb, [&](int64_t q, int64_t i) { return a + i * lda + q; }, bp, acc);
      }
      float* c = C + i0 * ldc + j0;
      if (h == MR && w == NR) {
        store_tile(acc, alpha, beta, c, ldc);
        continue;
      }
      store_tile(acc, 1.f, 0.f, tile, NR);  // edge tile: only its valid part reaches C
      for (int64_t i = 0; i < h; ++i)
        for (int64_t j = 0; j < w; ++j)
          c[i * ldc + j] = beta == 0.f ? alpha * tile[i * NR + j]
                                       : alpha * tile[i * NR + j] + beta * c[i * ldc + j];
    }
  }
}

bool compiled() { return true; }

}  // namespace fusedrnn::cpu::sgemm_avx2

FRNN_AVX2_END

#else

namespace fusedrnn::cpu::sgemm_avx2 {
void pack_a(bool, int64_t, int64_t, const float*, int64_t, float*) {}
void pack_b(bool, int64_t, int64_t, const float*, int64_t, float*) {}
void macro_kernel(int64_t, int64_t, int64_t, float, const float*, int64_t, bool, const float*,
                  float, float*, int64_t) {}
bool compiled() { return false; }
}  // namespace fusedrnn::cpu::sgemm_avx2

#endif
