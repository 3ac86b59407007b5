// The fused pointwise kernels of the CPU backend, one table of function pointers per dtype.
// Two kinds: the kernels of torch.nn's cells handle units [j0, j1) of one batch row, pointers
// already offset to j0 (stack_step.h splits a row's units over threads; layer_fwd.cpp /
// layer_bwd.cpp pass whole rows); the kernels of the time loop's options (layer norm,
// zoneout, peephole, cifg) handle one whole row, pointers offset to the row. Gate k of a row
// sits at +k*H in PyTorch's gate order (LSTM i, f, g, o; with cifg i, g, o; GRU r, z, n).
//
// The table is compiled three times (kernels_generic.cpp for the baseline ISA, kernels_avx2.cpp
// for AVX2+FMA, kernels_avx512.cpp for AVX-512F) from kernels_impl.h and selected once at run
// time, so a wheel built here runs on any x86-64 and still gets 8- or 16-wide vector math where
// the CPU has it. This header declares only the table: no inline code, nothing that could be
// linked across the ISA copies.
#pragma once

#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "options.h"

// FRNN_TARGET_AVX2: this compiler can build AVX2+FMA(+F16C) functions into a baseline-ISA
// binary (x86 with GCC or clang); FRNN_AVX2_BEGIN (FRNN_AVX512_BEGIN for AVX-512F code) and
// FRNN_TARGET_END then bracket the code that gets the wider ISA (kernels_avx2.cpp,
// kernels_avx512.cpp, sgemm_simd.cpp). Every header is included before the bracket (the ones
// of the kernel loops here), so that only the bracketed functions, and what they inline, get it.
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define FRNN_TARGET_AVX2 1
#define FRNN_PRAGMA(x) _Pragma(#x)
#if defined(__clang__)
#define FRNN_TARGET_BEGIN(isa) \
  FRNN_PRAGMA(clang attribute push(__attribute__((target(isa))), apply_to = function))
#define FRNN_TARGET_END FRNN_PRAGMA(clang attribute pop)
#else
#define FRNN_TARGET_BEGIN(isa) FRNN_PRAGMA(GCC push_options) FRNN_PRAGMA(GCC target(isa))
#define FRNN_TARGET_END FRNN_PRAGMA(GCC pop_options)
#endif
#define FRNN_AVX2_BEGIN FRNN_TARGET_BEGIN("avx2,fma,f16c")
#define FRNN_AVX512_BEGIN FRNN_TARGET_BEGIN("avx512f,avx2,fma,f16c")
#include <immintrin.h>
#else
#define FRNN_TARGET_AVX2 0
#endif

namespace fusedrnn::cpu {

// The options of a row kernel call: each call maps them once to a loop instantiated for exactly
// that combination (kernels_impl.h), so no loop branches per element. The bool options of the
// layer op (BoolOptions, options.h: cifg) and what the given tensors switch on.
struct VariantFlags : BoolOptions {
  bool ln = false;      // layer norm of the recurrent projection and (LSTM) of c
  bool peep = false;    // peephole weights w_ch
  bool zone_c = false;  // zoneout of c (keep_c given)
};

template <typename T>
struct PointwiseKernels {
  // LSTM forward. g [4H]: pre-activations without biases, overwritten by the activations
  // i, f, g, o when save_act. c_prev, c_out [H] distinct. h_out [H] (before any projection).
  void (*lstm_fwd)(bool save_act, int64_t n, int64_t H, const T* bias, T* g, const T* c_prev,
                   T* c_out, T* h_out);
  // GRU forward with the recurrent part apart (stack_step.h): g [3H] the x-part and hg [3H]
  // h_prev W_hh^T, both without biases; bias_x [3H] = b_ih + (b_hr, b_hz, 0), bias_hn [H] = b_hn.
  void (*gru_fwd_hg)(int64_t n, int64_t H, const T* bias_x, const T* bias_hn, const T* g,
                     const T* hg, const T* h_prev, T* h_out);
  // Elman RNN forward: h_out = act(pre + bias).
  void (*rnn_fwd)(bool relu, int64_t n, const T* bias, const T* pre, T* h_out);
  // Elman RNN backward: dg = act'(h) * (dy + dh).
  void (*rnn_bwd)(bool relu, int64_t n, const T* h, const T* dy, const T* dh, T* dg);
  // Row-major C[m, n] = A[m, k] B^T + beta C with B stored [n, k], for m of a few rows
  // (sampling steps); with beta == 0 C is not read. interleaved (float, ldb == k, k % 8 == 0):
  // each block of eight rows [8, k] starting at a multiple of 8 is stored [k/8][8 rows][8]
  // (StackStep::interleaved), the last n % 8 rows as they are, so that a block is read front to
  // back; the sums are those of the plain layout, bit for bit.
  void (*gemm_small_m)(int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* B,
                       int64_t ldb, T beta, T* C, int64_t ldc, bool interleaved);
  // The same with B stored as IEEE float16 bits [n, k]: each C value is the sum gemm_small_m
  // forms from the widened B (sampling with weights rounded to half precision).
  void (*gemm_small_m_half)(int64_t m, int64_t n, int64_t k, const T* A, int64_t lda,
                            const uint16_t* B, int64_t ldb, T beta, T* C, int64_t ldc,
                            bool interleaved);

  // The row kernels. Layer-norm statistics of v[0, n): mean and 1 / sqrt(biased var + eps),
  // two passes.
  void (*ln_stats)(int64_t n, const T* v, T eps, T* mean, T* rstd);
  // Layer-norm backward of one row: dv = rstd (dout w - mean(dout w) - xhat mean(dout w xhat));
  // dv may be dout (in place).
  void (*ln_bwd)(int64_t n, const T* dout, const T* xhat, const T* w, T rstd, T* dv);

  // One row's part of the gates: s = LN(v) + b (ln; v [n] in: raw, out: its xhat; mean, rstd
  // its row statistics) or v + b; dst [n] += s (acc) or = s. The input side: v = x W_ih^T,
  // b = b_ih + LN_ih bias; the recurrent one: v = h_prev W_hh^T, b = b_hh (+ LN_hh bias).
  void (*norm_bias)(bool ln, bool acc, int64_t n, T* v, T mean, T rstd, const T* ln_w,
                    const T* b, T* dst);
  // LSTM step, first half. g [G*H] in: pre-activations without the peephole terms (input
  // and recurrent parts, see norm_bias), out: i, (f), g activations (the o slot untouched).
  // w_ch [3H] or [2H] (peep). c_prev [H]; ct [H] out: c~.
  void (*lstm_fwd_a)(const VariantFlags& f, int64_t H, T* g, const T* w_ch, const T* c_prev,
                     T* ct);
  // LSTM step, second half. go [H] in: po, out: o. ct [H] c~; mean, rstd: its statistics
  // (ln); ln_w, ln_b [H] (ln, LN_c); w_co [H] (peep); keep_c [H] (zone_c); h_out [H]: o tanh
  // (LN_c(c~)), before projection and zoneout; c_out [H]: the zoned-out state.
  void (*lstm_fwd_b)(const VariantFlags& f, int64_t H, T* go, const T* ct, T mean, T rstd,
                     const T* ln_w, const T* ln_b, const T* w_co, const T* c_prev,
                     const T* keep_c, T* h_out, T* c_out);
  // GRU step. g [3H] in: input part plus the recurrent r, z parts (norm_bias), out: r, z, n.
  // sn [H]: recurrent n part (LN_hh, b_hn applied); h_prev [H]; h_out [H]: the candidate
  // before zoneout.
  void (*gru_fwd)(const VariantFlags& f, int64_t H, T* g, const T* sn, const T* h_prev,
                  T* h_out);
  // Zoneout forward, in place: h [n] <- keep h_prev + (1 - keep) h.
  void (*zone_fwd)(int64_t n, const T* keep, const T* h_prev, T* h);
  // Zoneout backward of h: d = dy + dstate; dnew [n] = (1 - keep) d, dstate [n] <- keep d
  // (zone off: dnew = d, dstate <- 0).
  void (*zone_bwd)(bool zone, int64_t n, const T* keep, const T* dy, T* dstate, T* dnew);

  // LSTM backward, first half. dh [H] (after zoneout, projection); o [H] saved; ct [H] c~;
  // mean, rstd, ln_w, ln_b: LN_c (ln). Out: dpo [H], dcn [H] (gradient reaching LN_c's output,
  // or c~ without ln), pcn [H] (ln) = dcn xhat (the LN_c gain's gradient terms), hraw [H] =
  // o tanh(LN_c(c~)) (for dW_hr); m1, m2 (ln): the row means of dcn ln_w and dcn ln_w xhat
  // that LN_c's backward needs.
  void (*lstm_bwd_a)(const VariantFlags& f, int64_t H, const T* dh, const T* o, const T* ct,
                     T mean, T rstd, const T* ln_w, const T* ln_b, T* dpo, T* dcn, T* pcn,
                     T* hraw, T* m1, T* m2);
  // LSTM backward, second half. dc [H] in: gradient reaching c_t, out: gradient w.r.t. c_prev.
  // keep_c (zone_c); dcn, ct, LN_c stats, ln_w, m1, m2 as above; act [G*H] saved activations;
  // c_prev [H]; w_ch (peep). dp [G*H] out: pre-activation gradients (the o slot is in: dpo).
  void (*lstm_bwd_b)(const VariantFlags& f, int64_t H, T* dc, const T* keep_c, const T* dcn,
                     const T* ct, T mean, T rstd, const T* ln_w, T m1, T m2, const T* act,
                     const T* c_prev, const T* w_ch, T* dp);
  // Column sums of a block over rows [0, rows), in one pass over a: p0 [w] += a (p0 not
  // null), p1 [w] += a b1 (b1 not null), p2 [w] += a b2 (b2 not null). Rows of a have stride
  // lda, of b1 and b2 ldb.
  void (*col_accumulate)(int64_t rows, int64_t w, const T* a, int64_t lda, const T* b1,
                         const T* b2, int64_t ldb, T* p0, T* p1, T* p2);
  // GRU backward. dh [H] (after zoneout); act [3H] r, z, n; sn [H]; h_prev [H]. dstate [H]
  // += z dh (the direct part); da [3H] out: input-side, ds [3H] out: recurrent-side gradients.
  void (*gru_bwd)(const VariantFlags& f, int64_t H, const T* dh, const T* act, const T* sn,
                  const T* h_prev, T* dstate, T* da, T* ds);
};

// One copy of the table per ISA, for float and double; the wider copies exist in x86 builds
// only (FRNN_TARGET_AVX2).
namespace generic { template <typename T> PointwiseKernels<T> make_kernels(); }
namespace avx2 { template <typename T> PointwiseKernels<T> make_kernels(); }
namespace avx512 { template <typename T> PointwiseKernels<T> make_kernels(); }

// The table for this CPU: the AVX-512F copy (Intel CPUs), else the AVX2+FMA one, where both the
// build and the CPU have it (kernels_generic.cpp says why).
const PointwiseKernels<float>& kernels(float);
const PointwiseKernels<double>& kernels(double);
const char* kernel_isa();

}  // namespace fusedrnn::cpu
