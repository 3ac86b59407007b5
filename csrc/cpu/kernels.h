// The fused per-step pointwise kernels of the CPU backend: one call handles units [j0, j1) of
// one batch row; pointers arrive already offset to j0, gate k of a row sits at +k*H.
//
// They are compiled three times (kernels_generic.cpp for the baseline ISA, kernels_avx2.cpp for
// AVX2+FMA, kernels_avx512.cpp for AVX-512F) from kernels_impl.h and selected once at run
// time, so a wheel built here runs on any x86-64 and still gets 8- or 16-wide vector math
// where the CPU has it. This header declares
// only a table of function pointers: no inline code, nothing that could be linked across the
// ISA copies.
#pragma once

#include <cstdint>

// FRNN_TARGET_AVX2: this compiler can build AVX2+FMA(+F16C) functions into a baseline-ISA binary (x86
// with GCC or clang); FRNN_AVX2_BEGIN / FRNN_AVX2_END then bracket the code that gets the wider
// ISA (kernels_avx2.cpp, sgemm_simd.cpp; FRNN_AVX512_BEGIN / _END for AVX-512F code).
// Every standard header is included before FRNN_AVX2_BEGIN, so that only the bracketed
// functions, and what they inline, get it.
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define FRNN_TARGET_AVX2 1
#if defined(__clang__)
#define FRNN_AVX2_BEGIN \
  _Pragma("clang attribute push(__attribute__((target(\"avx2,fma,f16c\"))), apply_to = function)")
#define FRNN_AVX2_END _Pragma("clang attribute pop")
#define FRNN_AVX512_BEGIN                                                                    \
  _Pragma("clang attribute push(__attribute__((target(\"avx512f,avx2,fma,f16c\"))), "          \
          "apply_to = function)")
#define FRNN_AVX512_END _Pragma("clang attribute pop")
#else
#define FRNN_AVX2_BEGIN _Pragma("GCC push_options") _Pragma("GCC target(\"avx2,fma,f16c\")")
#define FRNN_AVX2_END _Pragma("GCC pop_options")
#define FRNN_AVX512_BEGIN \
  _Pragma("GCC push_options") _Pragma("GCC target(\"avx512f,avx2,fma,f16c\")")
#define FRNN_AVX512_END _Pragma("GCC pop_options")
#endif
#else
#define FRNN_TARGET_AVX2 0
#endif

namespace fusedrnn::cpu {

template <typename T>
struct PointwiseKernels {
  // LSTM forward. g [4H]: pre-activations without biases, overwritten by the activations
  // i, f, g, o when save_act. c_prev, c_out [H] distinct. h_out [H] (before any projection).
  void (*lstm_fwd)(int64_t n, int64_t H, const T* bias, T* g, const T* c_prev, T* c_out,
                   T* h_out, bool save_act);
  // LSTM backward. act [4H] saved activations; c_prev, c [H]; dh = dh_a (+ dh_b if not null);
  // dc [H] in: gradient from step t+1, out: gradient w.r.t. c_prev; dg [4H] out:
  // pre-activation gradients; hraw [H] out if not null: o * tanh(c) (for dW_hr).
  void (*lstm_bwd)(int64_t n, int64_t H, const T* act, const T* c_prev, const T* c,
                   const T* dh_a, const T* dh_b, T* dc, T* dg, T* hraw);
  // GRU forward. g [3H]: x-part without biases, overwritten by r, z, n when save_act;
  // hg [3H]: h_prev W_hh^T without biases; bias_x [3H] = b_ih + (b_hr, b_hz, 0);
  // bias_hn [H] = b_hn; hn_out [H] (if not null): hn including b_hn, saved for backward.
  void (*gru_fwd)(int64_t n, int64_t H, const T* bias_x, const T* bias_hn, T* g, const T* hg,
                  const T* h_prev, T* h_out, T* hn_out, bool save_act);
  // GRU backward. act [3H] r, z, n; hn [H]; dh [H] in: gradient from step t+1 (dy added here),
  // out: the direct part z * dh of the gradient w.r.t. h_prev; dgx, dgh [3H] out.
  void (*gru_bwd)(int64_t n, int64_t H, const T* act, const T* hn, const T* h_prev,
                  const T* dy, T* dh, T* dgx, T* dgh);
  // Elman RNN forward: h_out = act(pre + bias).
  void (*rnn_fwd)(int64_t n, const T* bias, const T* pre, T* h_out, bool relu);
  // Elman RNN backward: dg = act'(h) * (dy + dh).
  void (*rnn_bwd)(int64_t n, const T* h, const T* dy, const T* dh, T* dg, bool relu);
  // Row-major C[m, n] = A[m, k] B^T + beta C with B stored [n, k], for m of a few rows
  // (sampling steps); with beta == 0 C is not read.
  void (*gemm_small_m)(int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* B,
                       int64_t ldb, T beta, T* C, int64_t ldc);
  // The same with B stored as IEEE float16 bits [n, k]: each C value is the sum gemm_small_m
  // forms from the widened B (sampling with weights rounded to half precision).
  void (*gemm_small_m_half)(int64_t m, int64_t n, int64_t k, const T* A, int64_t lda,
                            const uint16_t* B, int64_t ldb, T beta, T* C, int64_t ldc);
};

namespace generic {
PointwiseKernels<float> make_kernels_f32();
PointwiseKernels<double> make_kernels_f64();
}  // namespace generic
// The wider copies exist in x86 builds only (FRNN_TARGET_AVX2).
namespace avx2 {
PointwiseKernels<float> make_kernels_f32();
PointwiseKernels<double> make_kernels_f64();
}  // namespace avx2
namespace avx512 {
PointwiseKernels<float> make_kernels_f32();
PointwiseKernels<double> make_kernels_f64();
}  // namespace avx512

// The table for this CPU: the AVX-512F copy (Intel CPUs), else the AVX2+FMA one, where both the
// build and the CPU have it (kernels_generic.cpp says why).
const PointwiseKernels<float>& kernels(float);
const PointwiseKernels<double>& kernels(double);
const char* kernel_isa();

}  // namespace fusedrnn::cpu
