// Blocking loops and threading of the packed float32 GEMM (sgemm.h).
#include "sgemm.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels.h"

namespace fusedrnn::cpu {

bool use_own_sgemm() {
  // The same run-time choice as the pointwise kernels (kernels_generic.cpp).
  static const bool available =
      sgemm_simd::compiled() && std::strcmp(kernel_isa(), "generic") != 0;
  return available && own_sgemm_enabled;
}

static bool use_avx512() {
  static const bool available = std::strcmp(kernel_isa(), "avx512f") == 0;
  return available && sgemm_avx512_enabled;
}

const char* sgemm_isa() {
  return !use_own_sgemm() ? "" : use_avx512() ? "avx512f" : "avx2+fma";
}

PackedB pack_b(bool tb, int64_t k, int64_t n, const float* B, int64_t ldb, Scratch slot) {
  PackedB p;
  p.k = k;
  p.n = n;
  p.panels = (n + kSgemmNR - 1) / kSgemmNR;
  p.buf = scratch(slot, {k * p.panels * kSgemmNR}, at::kFloat);
  at::parallel_for(0, p.panels, 8, [&](int64_t j0, int64_t j1) {
    const int64_t c0 = j0 * kSgemmNR, c1 = std::min(n, j1 * kSgemmNR);
    for (int64_t q0 = 0; q0 < k; q0 += kSgemmKC)
      sgemm_simd::pack(kSgemmNR, !tb, c1 - c0, std::min(kSgemmKC, k - q0),
                       tb ? B + c0 * ldb + q0 : B + q0 * ldb + c0, ldb, p.at(q0 / kSgemmKC, c0));
  });
  return p;
}

void sgemm_packed(bool ta, int64_t m, int64_t c0, int64_t c1, float alpha, const float* A,
                  int64_t lda, const PackedB& B, float beta, float* C, int64_t ldc) {
  TORCH_CHECK(c0 % kSgemmNR == 0 && 0 <= c0 && c0 <= c1 && c1 <= B.n,
              "fusedrnn sgemm_packed: bad column range [", c0, ", ", c1, ") of ", B.n);
  TORCH_CHECK(B.k > 0, "fusedrnn sgemm_packed: empty inner dimension (gemm() handles k == 0)");
  if (m == 0 || c0 == c1) return;
  // When A is packed: one block per thread, reused across calls (the step loops call this T
  // times per layer).
  const bool in_place = !ta && (lda * sizeof(float)) % 4096 != 0;
  thread_local std::vector<float> apack;
  const int64_t mc_max = std::min(kSgemmMC, (m + kSgemmMR - 1) / kSgemmMR * kSgemmMR);
  const bool wide = use_avx512();
  if (!in_place && apack.size() < static_cast<size_t>(mc_max * kSgemmKC))
    apack.resize(mc_max * kSgemmKC);
  for (int64_t i0 = 0; i0 < m; i0 += kSgemmMC) {
    const int64_t mc = std::min(kSgemmMC, m - i0);
    for (int64_t p = 0, q0 = 0; q0 < B.k; ++p, q0 += kSgemmKC) {
      const int64_t kb = std::min(kSgemmKC, B.k - q0);
      const float* a = ta ? A + q0 * lda + i0 : A + i0 * lda + q0;
      if (!in_place) sgemm_simd::pack(kSgemmMR, ta, mc, kb, a, lda, apack.data());
      // later K blocks add onto the earlier ones: beta only applies to the first
      sgemm_simd::macro_kernel(mc, c1 - c0, kb, alpha, in_place ? a : apack.data(), lda,
                               !in_place, B.at(p, c0), p == 0 ? beta : 1.f,
                               C + i0 * ldc + c0, ldc, wide);
    }
  }
}

void sgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* A,
           int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (m == 0 || n == 0) return;
  const PackedB packed = pack_b(tb, k, n, B, ldb, Scratch::kPackedGemm);
  const int64_t P = at::in_parallel_region() ? 1 : at::get_num_threads();
  // Row blocks of at most kSgemmMC rows, as many per thread and as equal as the 6-row
  // panels allow.
  const int64_t want = P * ((m + P * kSgemmMC - 1) / (P * kSgemmMC));
  const int64_t mc = ((m + want - 1) / want + kSgemmMR - 1) / kSgemmMR * kSgemmMR;
  const int64_t blocks = (m + mc - 1) / mc;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t i0 = b * mc, rows = std::min(mc, m - i0);
      sgemm_packed(ta, rows, 0, n, alpha, ta ? A + i0 : A + i0 * lda, lda, packed, beta,
                   C + i0 * ldc, ldc);
    }
  });
}

}  // namespace fusedrnn::cpu
