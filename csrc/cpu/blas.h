// Row-major GEMM on raw pointers for the CPU backend.
//
// The per-step recurrent GEMM is small (e.g. [64, 256] x [256, 1024]) and runs T times per
// layer, so dispatcher overhead and temporaries matter. float32 products with many rows go to
// the packed kernel of sgemm.h where the CPU has AVX2+FMA, and the step loops multiply against
// weights packed once per layer call (StepWeights below). Everything else goes to the BLAS
// inside libtorch_cpu: when it exports the Fortran symbols sgemm_/dgemm_ (MKL and OpenBLAS
// builds do) we call them directly; they are declared weak so that a torch build without them
// still loads this extension and falls back to ATen's mm on tensors wrapping the memory.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <type_traits>

#include "kernels.h"
#include "sgemm.h"

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc)
    __attribute__((weak));
}

namespace fusedrnn::cpu {

// Products with at most this many rows in C and B stored transposed (a sampling step's
// x W^T) go to gemm_small_m of the kernel table instead of the BLAS.
constexpr int64_t kSmallM = 4;

// C[m, n] = alpha * op(A) op(B) + beta * C, all row-major.
//   op(A) = A [m, k] (leading dimension lda)  or, with ta, A^T where A is stored [k, m]
//   op(B) = B [k, n] (leading dimension ldb)  or, with tb, B^T where B is stored [n, k]
// With beta == 0 C is not read (may hold garbage).
template <typename T>
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t lda,
          const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {  // BLAS would scale C by beta; do it here to skip the empty product
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
    return;
  }
  if (m <= kSmallM && !ta && tb && alpha == T(1))
    return kernels(T{}).gemm_small_m(m, n, k, A, lda, B, ldb, beta, C, ldc, false);
  // float32: below kSgemmMinM rows packing op(B) on every call costs more than the kernel saves
  // (the step loops pack their weights once: StepWeights). A product with k == 1 (the weight
  // gradients of a single step at batch 1, an outer product) goes to the BLAS: its cost is
  // writing C, and the micro-kernel's per-tile work made it 2.5x slower there (512 x 512: 51
  // against 20 us, one thread); from k == 2 on the packed kernel is as fast or faster.
  if constexpr (std::is_same_v<T, float>)
    if (m >= kSgemmMinM && k > 1 && use_own_sgemm())
      return sgemm(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
  const auto fortran_gemm = [] {  // null when libtorch_cpu does not export it (weak)
    if constexpr (std::is_same_v<T, float>)
      return sgemm_;
    else
      return dgemm_;
  }();
  if (fortran_gemm != nullptr) {
    // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
    const char opa = ta ? 'T' : 'N', opb = tb ? 'T' : 'N';
    const int M = static_cast<int>(n), N = static_cast<int>(m), K = static_cast<int>(k);
    const int LDA = static_cast<int>(ldb), LDB = static_cast<int>(lda), LDC = static_cast<int>(ldc);
    return fortran_gemm(&opb, &opa, &M, &N, &K, &alpha, B, &LDA, A, &LDB, &beta, C, &LDC);
  }
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  const auto view = [&](const T* p, bool t, int64_t rows, int64_t cols, int64_t ld) {
    return at::from_blob(const_cast<T*>(p), {rows, cols}, {t ? 1 : ld, t ? ld : 1}, opts);
  };
  auto a = view(A, ta, m, k, lda), b = view(B, tb, k, n, ldb), c = view(C, false, m, n, ldc);
  if (beta == T(0)) {
    at::mm_out(c, a, b);
    if (alpha != T(1)) c.mul_(alpha);
  } else {
    c.addmm_(a, b, beta, alpha);
  }
}

// Runs fn(c0, c1) over [0, n) cut into one contiguous block of columns per thread (multiples of
// 16); BLAS calls inside fn run single-threaded (BLAS runs sequentially in a parallel region).
// For the per-step recurrent GEMMs (m = batch, a few dozen rows) the BLAS's own threading
// splits the work badly on two cores; column blocks give each thread an equal share and its
// own slice of the weights.
template <typename F>
void parallel_columns(int64_t n, const F& fn) {
  const int64_t P = at::get_num_threads();
  if (P <= 1 || n < 128 || at::in_parallel_region()) {
    fn(int64_t(0), n);
    return;
  }
  const int64_t per = ((n + P - 1) / P + 15) / 16 * 16;
  at::parallel_for(0, P, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t c0 = p * per, c1 = std::min(n, c0 + per);
      if (c0 < c1) fn(c0, c1);
    }
  });
}

// The recurrent weights of a step loop, op(W) [k, n], multiplied once per step by the
// previous states: packed once per layer call when gemm() would use the packed float32 kernel
// and more than one step reads them. A single step (a cell call) reads each weight once, so
// packing would double its memory traffic: it multiplies the weights where they are.
// W: a contiguous [rows, cols] tensor (undefined: no weights, k = n = 0); op(W) = W^T with tw
// (the forward's h W^T), else W (the backward's dG W).
template <typename T>
class StepWeights {
 public:
  StepWeights(bool tw, const at::Tensor& W, Scratch slot, int64_t steps)
      : tw_(tw), W_(W.defined() ? W.data_ptr<T>() : nullptr), ldw_(W.defined() ? W.size(1) : 0) {
    const int64_t rows = W.defined() ? W.size(0) : 0;
    k_ = tw ? ldw_ : rows;
    n_ = tw ? rows : ldw_;
    if constexpr (std::is_same_v<T, float>)
      if (use_own_sgemm() && k_ > 0 && n_ > 0 && steps > 1)
        packed_ = pack_b(tw, k_, n_, W_, ldw_, slot);
  }
  // C[m, n] = A[m, k] op(W) + beta * C, split over the threads in column blocks
  // (parallel_columns: multiples of 16, as the packed kernel needs).
  void mul_split_n(int64_t m, const T* A, int64_t lda, T beta, T* C, int64_t ldc) const {
    if (m == 0) return;
    parallel_columns(n_, [&](int64_t c0, int64_t c1) {
      if constexpr (std::is_same_v<T, float>)
        if (packed_ && m > kSmallM)
          return sgemm_packed(false, m, c0, c1, 1.f, A, lda, *packed_, beta, C, ldc);
      const T* Wc = tw_ ? W_ + c0 * ldw_ : W_ + c0;
      gemm<T>(false, tw_, m, c1 - c0, k_, T(1), A, lda, Wc, ldw_, beta, C + c0, ldc);
    });
  }
  int64_t bytes() const { return k_ * n_ * int64_t(sizeof(T)); }  // of op(W)

 private:
  bool tw_;
  const T* W_;
  int64_t ldw_, k_, n_;
  std::optional<PackedB> packed_;
};

}  // namespace fusedrnn::cpu
