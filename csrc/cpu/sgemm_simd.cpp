// SIMD pieces of the packed float32 GEMM (sgemm.h, which says why it exists): operand packing,
// the register-tile micro-kernels, 6x16 in AVX2 registers and 6x32 (two packed column panels) in
// AVX-512 ones, and the walk over one block's tiles that both widths share. The blocking loops
// that drive them are ISA-independent and live in sgemm.cpp.
//
// Why a second width: a core with two 512-bit FMA units (Intel Xeon from Skylake-SP on) does
// about 1.65x the float32 work in 512-bit FMAs that it does in 256-bit ones (measured on the
// project's Xeon: 215 against 130 GFLOP/s per core); oneDNN uses them. Six rows of the 16-wide
// panels give only six 512-bit accumulators, fewer than the 2 units x 4 cycles of latency
// need, so the wide tile takes two adjacent panels: twelve accumulators, as in the AVX2 tile.
//
// Every standard header is included before FRNN_AVX2_BEGIN (kernels.h), as in kernels_avx2.cpp.
#include <algorithm>
#include <cstring>
#include <utility>

#include "kernels.h"
#include "sgemm.h"

#if FRNN_TARGET_AVX2
namespace fusedrnn::cpu::sgemm_simd {

namespace {

constexpr int64_t MR = kSgemmMR, NR = kSgemmNR;

// f(i) for the rows i = 0..5 of a tile, i a compile-time constant: with the accumulators
// indexed by constants only, GCC keeps them in registers; indexed by a loop counter (even one
// it unrolls later) they stayed in memory, stored at every step of the k loop.
template <class F, size_t... I>
__attribute__((always_inline)) inline void each(const F& f, std::index_sequence<I...>) {
  (f(std::integral_constant<int64_t, I>{}), ...);
}
template <class F>
__attribute__((always_inline)) inline void each_row(const F& f) {
  each(f, std::make_index_sequence<MR>{});
}

// One tile: C[h, w] = alpha * op(A)[h rows][kb] Bp[kb][w] + beta * C (C not read when
// beta == 0), h <= 6 and w <= NC. op(A)[i, q] lies at a + q * MR + i in a packed panel (the
// PACKED instantiation of a tile function), else at a + i * lda + q; Bp is the first of the
// tile's column panels, each [kb][16].
using TileFn = void (*)(int64_t kb, const float* a, int64_t lda, const float* Bp, int64_t h,
                        int64_t w, float alpha, float beta, float* c, int64_t ldc);

// The walk over the tiles of a [rows, cols] block, in the baseline ISA: a call per tile
// (6 x 16 x kb multiply-adds or more) costs nothing measurable.
template <int64_t NC>
void walk_tiles(int64_t rows, int64_t cols, int64_t kb, float alpha, const float* A, int64_t lda,
                bool packed, const float* Bp, float beta, float* C, int64_t ldc,
                TileFn packed_tile, TileFn tile) {
  // Read in place, a last panel of fewer than 6 rows would run past A: it is packed
  // (zero-padded), once for every column panel.
  alignas(64) float edge[MR * kSgemmKC];
  const int64_t full = packed ? rows : rows / MR * MR;
  if (full < rows) pack(MR, false, rows - full, kb, A + full * lda, lda, edge);
  // B micro-panels outermost: they stay in L1 while the rows of A stream from L1/L2.
  for (int64_t j0 = 0; j0 < cols; j0 += NC) {
    for (int64_t i0 = 0; i0 < rows; i0 += MR) {
      // C often comes from memory (a step's gate block of the whole-sequence projection):
      // fetch the next tile's rows while this tile computes, or the stores stall on it.
      const int64_t ni = i0 + MR < rows ? i0 + MR : 0, nj = i0 + MR < rows ? j0 : j0 + NC;
      if (nj < cols)
        for (int64_t i = ni; i < std::min(ni + MR, rows); ++i)
          for (int64_t b = 0; b <= NC * 4; b += 64)  // the row may straddle lines: one more
            _mm_prefetch(reinterpret_cast<const char*>(C + i * ldc + nj) + std::min(b, NC * 4 - 1),
                         _MM_HINT_T0);
      const bool pk = packed || i0 >= full;
      const float* a = packed ? A + i0 * kb : pk ? edge : A + i0 * lda;
      (pk ? packed_tile : tile)(kb, a, lda, Bp + j0 * kb, std::min(MR, rows - i0),
                                std::min(NC, cols - j0), alpha, beta, C + i0 * ldc + j0, ldc);
    }
  }
}

}  // namespace

FRNN_AVX2_BEGIN

namespace {

// acc = op(A) [6 rows][kb] x Bp [kb][16]: twelve accumulators, two B vectors and one
// broadcast A value in registers (15 of 16 ymm), two FMAs per broadcast. a(q, i) is the address
// of op(A)[i, q].
template <class AAt>
inline void micro_tile(int64_t kb, const AAt& a, const float* __restrict Bp,
                       __m256 (&acc)[MR][2]) {
  each_row([&](auto i) { acc[i][0] = acc[i][1] = _mm256_setzero_ps(); });
#pragma GCC unroll 4
  for (int64_t q = 0; q < kb; ++q) {
    const __m256 b0 = _mm256_loadu_ps(Bp), b1 = _mm256_loadu_ps(Bp + 8);
    each_row([&](auto i) {
      const __m256 v = _mm256_broadcast_ss(a(q, i));
      acc[i][0] = _mm256_fmadd_ps(v, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(v, b1, acc[i][1]);
    });
    Bp += NR;
  }
}

// acc[6][16] -> C rows: C = alpha * acc + beta * C (C not read when beta == 0).
inline void store_tile(const __m256 (&acc)[MR][2], float alpha, float beta, float* C,
                       int64_t ldc) {
  const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
  each_row([&](auto i) {
    float* c = C + i * ldc;
    __m256 r0 = _mm256_mul_ps(acc[i][0], va), r1 = _mm256_mul_ps(acc[i][1], va);
    if (beta != 0.f) {
      r0 = _mm256_fmadd_ps(_mm256_loadu_ps(c), vb, r0);
      r1 = _mm256_fmadd_ps(_mm256_loadu_ps(c + 8), vb, r1);
    }
    _mm256_storeu_ps(c, r0);
    _mm256_storeu_ps(c + 8, r1);
  });
}

template <bool PACKED>
void tile_avx2(int64_t kb, const float* a, int64_t lda, const float* Bp, int64_t h, int64_t w,
               float alpha, float beta, float* C, int64_t ldc) {
  __m256 acc[MR][2];
  micro_tile(kb, [=](int64_t q, int64_t i) { return PACKED ? a + q * MR + i : a + i * lda + q; },
             Bp, acc);
  if (h == MR && w == NR) return store_tile(acc, alpha, beta, C, ldc);
  alignas(32) float tile[MR * NR];
  store_tile(acc, 1.f, 0.f, tile, NR);  // edge tile: only its valid part reaches C
  for (int64_t i = 0; i < h; ++i)
    for (int64_t j = 0; j < w; ++j)
      C[i * ldc + j] = beta == 0.f ? alpha * tile[i * NR + j]
                                   : alpha * tile[i * NR + j] + beta * C[i * ldc + j];
}

// out[q * W + j] = src[j * ld + q] for the first `valid` of W rows of src (each contiguous in
// q), 0 for the others: a panel of op(X) = X^T.
template <int64_t W>
void interleave_rows(int64_t valid, int64_t kb, const float* src, int64_t ld,
                     float* __restrict out) {
  for (int64_t j = 0; j < W; ++j) {
    const float* __restrict s = src + j * ld;
    if (j < valid)
      for (int64_t q = 0; q < kb; ++q) out[q * W + j] = s[q];
    else
      for (int64_t q = 0; q < kb; ++q) out[q * W + j] = 0.f;
  }
}

// pack (sgemm.h) for a panel width W. With by_rows each row q of X is read once, its values
// dealt to the panels (panel by panel, the rows, often 4 KiB apart, would contend for L1 sets).
template <int64_t W>
void pack_panels(bool by_rows, int64_t n, int64_t kb, const float* x, int64_t ld, float* out) {
  if (!by_rows) {
    for (int64_t c0 = 0; c0 < n; c0 += W)
      interleave_rows<W>(std::min(W, n - c0), kb, x + c0 * ld, ld, out + c0 * kb);
    return;
  }
  for (int64_t q = 0; q < kb; ++q) {
    const float* __restrict r = x + q * ld;
    // Each row starts a new page, where the hardware prefetchers stop: fetch ahead by hand.
    if (q + 16 < kb)
      for (int64_t b = 0; b < n * 4 + 64; b += 64)
        _mm_prefetch(reinterpret_cast<const char*>(r + 16 * ld) + b, _MM_HINT_T0);
    for (int64_t c0 = 0; c0 < n; c0 += W) {
      const int64_t w = std::min(W, n - c0);
      float* __restrict o = out + c0 * kb + q * W;
      if (w == W)
        std::memcpy(o, r + c0, W * 4);
      else
        for (int64_t j = 0; j < W; ++j) o[j] = j < w ? r[c0 + j] : 0.f;
    }
  }
}

}  // namespace

void pack(int64_t W, bool by_rows, int64_t n, int64_t kb, const float* x, int64_t ld, float* out) {
  (W == MR ? pack_panels<MR> : pack_panels<NR>)(by_rows, n, kb, x, ld, out);
}

FRNN_TARGET_END

FRNN_AVX512_BEGIN

namespace {

// acc = op(A) [6 rows][kb] x P adjacent panels [kb][16] (P = 2, or 1 for a last odd panel).
template <int P, class AAt>
inline void micro_tile_512(int64_t kb, const AAt& a, const float* __restrict Bp,
                           __m512 (&acc)[MR][2]) {
  each_row([&](auto i) { acc[i][0] = acc[i][1] = _mm512_setzero_ps(); });
  const float* __restrict Bq = Bp + NR * kb;  // the second panel
#pragma GCC unroll 4
  for (int64_t q = 0; q < kb; ++q) {
    const __m512 b0 = _mm512_loadu_ps(Bp + q * NR);
    const __m512 b1 = P == 2 ? _mm512_loadu_ps(Bq + q * NR) : b0;
    each_row([&](auto i) {
      const __m512 v = _mm512_set1_ps(*a(q, i));
      acc[i][0] = _mm512_fmadd_ps(v, b0, acc[i][0]);
      if (P == 2) acc[i][1] = _mm512_fmadd_ps(v, b1, acc[i][1]);
    });
  }
}

template <bool PACKED>
void tile_avx512(int64_t kb, const float* a, int64_t lda, const float* Bp, int64_t h, int64_t w,
                 float alpha, float beta, float* C, int64_t ldc) {
  __m512 acc[MR][2];
  const auto at = [=](int64_t q, int64_t i) { return PACKED ? a + q * MR + i : a + i * lda + q; };
  if (w > NR)
    micro_tile_512<2>(kb, at, Bp, acc);
  else
    micro_tile_512<1>(kb, at, Bp, acc);
  // Masked loads and stores keep an edge tile's invalid part away from C.
  const __mmask16 m0 = w >= NR ? 0xFFFF : (1u << w) - 1;
  const __mmask16 m1 = w >= 2 * NR ? 0xFFFF : w > NR ? (1u << (w - NR)) - 1 : 0;
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  each_row([&](auto i) {
    if (i >= h) return;
    float* c = C + i * ldc;
    __m512 r0 = _mm512_mul_ps(acc[i][0], va), r1 = _mm512_mul_ps(acc[i][1], va);
    if (beta != 0.f) {
      r0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m0, c), vb, r0);
      r1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m1, c + NR), vb, r1);
    }
    _mm512_mask_storeu_ps(c, m0, r0);
    _mm512_mask_storeu_ps(c + NR, m1, r1);
  });
}

}  // namespace

FRNN_TARGET_END

void macro_kernel(int64_t rows, int64_t cols, int64_t kb, float alpha, const float* A,
                  int64_t lda, bool packed, const float* Bp, float beta, float* C, int64_t ldc,
                  bool wide) {
  if (wide)
    return walk_tiles<2 * NR>(rows, cols, kb, alpha, A, lda, packed, Bp, beta, C, ldc,
                              tile_avx512<true>, tile_avx512<false>);
  walk_tiles<NR>(rows, cols, kb, alpha, A, lda, packed, Bp, beta, C, ldc, tile_avx2<true>,
                 tile_avx2<false>);
}

bool compiled() { return true; }

}  // namespace fusedrnn::cpu::sgemm_simd

#else

namespace fusedrnn::cpu::sgemm_simd {
void pack(int64_t, bool, int64_t, int64_t, const float*, int64_t, float*) {}
void macro_kernel(int64_t, int64_t, int64_t, float, const float*, int64_t, bool, const float*,
                  float, float*, int64_t, bool) {}
bool compiled() { return false; }
}  // namespace fusedrnn::cpu::sgemm_simd

#endif
