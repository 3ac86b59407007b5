// Packed float32 GEMM for the CPU backend (BLIS-style blocking around a 6x16 AVX2 register
// tile, or 6x32 AVX-512 where the pointwise kernels are AVX-512: kernels_generic.cpp), used
// instead of the BLAS for float32 when the CPU has AVX2+FMA. On the AMD CPUs we measured, the
// BLAS inside libtorch_cpu reaches 55-65 % of the FMA peak for the shapes of a recurrent step
// (m = batch, n = a thread's gate columns, k = H) and repacks the weights on every call, i.e.
// once per time step; this kernel reaches 75-90 % there, and the step loops pack their recurrent
// weights once per layer call (PackedB, blas.h: StepWeights).
//
//   op(B) is packed into K blocks of kSgemmKC rows, each a run of [kb, 16] column panels
//   (zero-padded), so that one micro-panel (16 columns x kb) stays in L1 while a block of
//   op(A) (kSgemmMC rows x kb) stays in L2.
//
// op(A) = A is read where it lies, six rows at a time (only a last panel of fewer rows is
// packed), unless its row stride is a multiple of 4 KiB: the six rows would then share one L1
// set with the B panel and evict each other. Its rows here are a step's states or gate
// gradients, or a block of the sequence, all of which fit L2, and packing them (a scalar
// transpose) cost about a tenth of a char-LM layer's forward+backward. op(A) = A^T is packed:
// read in place it would touch a new row (and page) of A per product term for every column
// panel. Only the packing and the micro-kernels are ISA specific (sgemm_simd.cpp).
#pragma once

#include <ATen/ATen.h>

#include <atomic>
#include <cstdint>

#include "scratch.h"

namespace fusedrnn::cpu {

constexpr int64_t kSgemmMR = 6, kSgemmNR = 16, kSgemmKC = 256, kSgemmMC = 144;
// gemm() takes the packed kernel from this many rows of C on, for k > 1 (see blas.h).
constexpr int64_t kSgemmMinM = 128;

namespace sgemm_simd {
bool compiled();
// out [ceil(n/W) panels][kb][W] <- X [kb, n] (zero-padded panels), W = kSgemmMR for op(A)
// (X = op(A)^T) or kSgemmNR for op(B) (X = op(B)). X[q, c] lies at x + q * ld + c with
// by_rows, else at x + c * ld + q.
void pack(int64_t W, bool by_rows, int64_t n, int64_t kb, const float* x, int64_t ld, float* out);
// C[rows, cols] = alpha * A Bp + beta * C (C not read when beta == 0), Bp packed; A [rows, kb]
// packed (pack) or, with packed false, a row-major block with leading dimension lda; wide: the
// AVX-512 tile
void macro_kernel(int64_t rows, int64_t cols, int64_t kb, float alpha, const float* A,
                  int64_t lda, bool packed, const float* Bp, float beta, float* C, int64_t ldc,
                  bool wide);
}  // namespace sgemm_simd

// Switches that only the test build turns off (bindings.cpp): float32 GEMMs use the packed
// kernel where available, which takes its AVX-512 tile where the pointwise kernels are the
// AVX-512F copy (kernel_isa(), chosen in kernels_generic.cpp).
inline std::atomic<bool> own_sgemm_enabled{true}, sgemm_avx512_enabled{true};
// The packed kernel is compiled, the CPU has AVX2+FMA (FUSEDRNN_CPU_ISA=generic turns it off
// with the other SIMD kernels) and the switch is on.
bool use_own_sgemm();
// "avx512f", "avx2+fma", or "" when float32 GEMMs go to the BLAS.
const char* sgemm_isa();

// op(B) [k, n] in the packed layout; op(B) = B [k, n] (ldb), or B^T with tb, B stored [n, k].
struct PackedB {
  int64_t k = 0, n = 0, panels = 0;
  at::Tensor buf;  // [ceil(k/KC) blocks][panels][kb][16] float32
  // First value of K block p in the panel that starts at column c (a multiple of 16).
  float* at(int64_t p, int64_t c) const {
    const int64_t kb = std::min(kSgemmKC, k - p * kSgemmKC);
    return buf.data_ptr<float>() + p * kSgemmKC * panels * kSgemmNR + c * kb;
  }
};

// Packs op(B) into the calling thread's scratch slot; the panels are shared out over the
// threads unless called in a parallel region.
PackedB pack_b(bool tb, int64_t k, int64_t n, const float* B, int64_t ldb, Scratch slot);

// C[:, c0:c1] = alpha * op(A)[m, k] op(B)[:, c0:c1] + beta * C[:, c0:c1] on the calling
// thread; C points at column 0, c0 is a multiple of 16; op(A) = A [m, k], or A^T with ta.
void sgemm_packed(bool ta, int64_t m, int64_t c0, int64_t c1, float alpha, const float* A,
                  int64_t lda, const PackedB& B, float beta, float* C, int64_t ldc);

// Row-major C[m, n] = alpha * op(A) op(B) + beta * C (the contract of blas.h gemm); blocks of
// rows are shared out over the threads unless called in a parallel region.
void sgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* A,
           int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

}  // namespace fusedrnn::cpu
