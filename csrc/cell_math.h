// Per-element forward and backward math of every recurrent cell of fusedrnn.
//
// One header shared by the CPU backend (csrc/cpu) and the CUDA kernels (csrc/cuda), so that the
// math the CUDA kernels run is the math the CPU backend runs and the test-suite checks. No torch
// includes, C++17, usable from host C++ and from CUDA device code.
//
// Conventions (PyTorch's gate order and equations; the layer op: fusedrnn/ops/CONTRACT.md):
//   * "pre-activation" = x-part + h-part + biases of one gate for one (row, unit) element.
//   * Every function works on one element; the caller owns the memory layout and the loops.
//   * T is the arithmetic type (float or double; on the device also float for half storage).
//   * Outputs are returned through references so the same code serves loops that store to
//     different buffers (saved activations, state, outputs).
//
// The variants (layer norm, peephole, coupled input-forget gate, zoneout) are structs below the
// plain cells with the same naming (forward / backward); the plain LSTM cell is the variant
// LSTM cell with every flag off, so each equation is written once.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__CUDACC__)
#define FRNN_HD __host__ __device__ __forceinline__
#else
#define FRNN_HD inline
#endif

// The CPU backend compiles this header once per ISA (baseline, AVX2+FMA, AVX-512F; selected
// at run time); FRNN_ISA_NAMESPACE keeps the copies of these inline functions
// apart at link time. Users write fusedrnn::LSTMCell etc. regardless.
#ifndef FRNN_ISA_NAMESPACE
#define FRNN_ISA_NAMESPACE generic
#endif

namespace fusedrnn {
inline namespace FRNN_ISA_NAMESPACE {

// Calls f(std::bool_constant<b>...) with one constant per run-time flag, in order, so that the
// flags select a template instantiation once per call: both backends' loops over elements (the
// CPU kernels, kernels_impl.h; the CUDA functors, common.cuh) take their options so. Host only.
template <typename F>
inline void with_bools(const F& f) {
  f();
}
template <typename F, typename... Bools>
inline void with_bools(const F& f, bool b, Bools... rest) {
  const auto bind = [&](auto v) { with_bools([&](auto... vs) { f(v, vs...); }, rest...); };
  if (b)
    bind(std::true_type{});
  else
    bind(std::false_type{});
}

// ---------------------------------------------------------------------------------------------
// Activation helpers
// ---------------------------------------------------------------------------------------------
namespace detail {

#if !defined(__CUDA_ARCH__)
// exp for float on the host, written with plain arithmetic and integer bit operations only, so
// that compilers vectorise loops calling it (a call into libm's expf blocks vectorisation, and
// the gate math of a step is dominated by exp without it). Cephes' expf: range reduction
// x = n ln2 + r with |r| <= ln2/2, degree-6 polynomial for e^r, 2^n assembled in the exponent
// bits. Max relative error ~2 ulp on [-87, 88]. Past the ends the result is what IEEE exp
// gives there: +inf above, 0 below, so sigmoid(-inf) is exactly 0 and 0 * inf still makes the
// NaN it makes in torch. A NaN fails every comparison and stays NaN (a diverging model must
// show it); the exponent is assembled from a NaN-free copy of n so the int conversion stays
// defined.
FRNN_HD float exp_host_f32(float a) {
  float x = a > 88.3762626647949f ? 88.3762626647949f : a;
  x = x < -88.3762626647949f ? -88.3762626647949f : x;
  // round(x / ln2) with the 1.5 * 2^23 trick (vectorises on any ISA, unlike floor/round)
  const float shifter = 12582912.0f;
  float n = (x * 1.44269504088896341f + shifter) - shifter;
  float r = x - n * 0.693359375f;  // ln2 split in two for an exact first product
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const float n_finite = n == n ? n : 0.0f;
  const int32_t bits = (static_cast<int32_t>(n_finite) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  const float e = p * scale;
  return a > 88.7228391116729996f ? HUGE_VALF : (a < -103.972077083991796f ? 0.0f : e);
}
#endif

template <typename T>
FRNN_HD T exp_(T x) {
#if defined(__CUDA_ARCH__)
  return ::exp(x);
#else
  return std::exp(x);
#endif
}

template <>
FRNN_HD float exp_<float>(float x) {
#if defined(__CUDA_ARCH__)
  return __expf(x);
#else
  return exp_host_f32(x);
#endif
}

}  // namespace detail

// sigmoid(x) = 1 / (1 + e^-x). For x -> -inf, e^-x saturates to a large finite value and the
// result to ~0; for x -> +inf to exactly 1. Derivative: s (1 - s).
template <typename T>
FRNN_HD T sigmoid(T x) {
  return T(1) / (T(1) + detail::exp_<T>(-x));
}

// tanh. double: the library function. float on the device: tanhf. float on the host: a
// rational minimax approximation x P(x^2) / Q(x^2) (degree 13 / 6, the one Eigen uses) on
// x clamped to +-7.9053 where tanh rounds to 1 in float; |x| < 4e-4 returns x. Max error
// ~2.7e-7 relative (~4 ulp), measured against double tanh over [-30, 30]. No exp, one division
// and no cancellation near 0, so it vectorises and costs about half of 1 - 2 / (e^2x + 1).
// Derivative: 1 - tanh^2.
template <typename T>
FRNN_HD T tanh_(T x) {
#if defined(__CUDA_ARCH__)
  return ::tanh(x);
#else
  return std::tanh(x);
#endif
}

template <>
FRNN_HD float tanh_<float>(float a) {
#if defined(__CUDA_ARCH__)
  return ::tanhf(a);
#else
  // NaN fails both comparisons and flows through to the result
  float x = a > 7.90531110763549805f ? 7.90531110763549805f : a;
  x = x < -7.90531110763549805f ? -7.90531110763549805f : x;
  const float x2 = x * x;
  float p = -2.76076847742355e-16f;
  p = p * x2 + 2.00018790482477e-13f;
  p = p * x2 - 8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  p = p * x;
  float q = 1.19825839466702e-06f;
  q = q * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  const float ax = a < 0.0f ? -a : a;
  return ax < 0.0004f ? a : p / q;
#endif
}

// relu(NaN) = NaN, as torch.relu: the comparison is written so that NaN keeps its value.
template <typename T>
FRNN_HD T relu_(T x) {
  return x < T(0) ? T(0) : x;
}

// ---------------------------------------------------------------------------------------------
// LSTM
// ---------------------------------------------------------------------------------------------
// Forward:   i = s(gi)  f = s(gf)  g = tanh(gg)  o = s(go)
//            c = f c_prev + i g      tc = tanh(c)      h = o tc   (before any projection)
//
// Backward: given dh (total gradient reaching h, before the projection: dh = dy W_hr when
// proj_size > 0) and dc_next (gradient reaching c from step t+1 through c_{t+1} = f' c + ...):
//   dc      = dc_next + dh * o * (1 - tc^2)          (h = o tanh(c))
//   d go    = dh * tc * o (1 - o)                    (dh/do = tc, ds = s (1 - s))
//   d gi    = dc * g * i (1 - i)                     (dc/di = g)
//   d gf    = dc * c_prev * f (1 - f)                (dc/df = c_prev)
//   d gg    = dc * i * (1 - g^2)                     (dc/dg = i)
//   dc_prev = dc * f
// The gradient w.r.t. h_prev is not elementwise (d gates W_hh); the caller does that GEMM.
// LSTMCell (defined after LSTMVariantCell below) runs these equations: it is the variant cell
// with every flag off, so the LSTM is written once.

struct GRUCell {
  template <typename T>
  FRNN_HD static void forward(T xr, T xz, T xn, T hr, T hz, T hn, T h_prev,
                              T& r, T& z, T& n, T& h) {
    r = sigmoid(xr + hr);
    z = sigmoid(xz + hz);
    n = tanh_(xn + r * hn);
    h = (T(1) - z) * n + z * h_prev;
  }

  template <typename T>
  FRNN_HD static void backward(T dh,                             // incoming gradient
                               T r, T z, T n, T hn, T h_prev,    // saved
                               T& dxr, T& dxz, T& dxn,           // input-side pre-act grads
                               T& dhr, T& dhz, T& dhn,           // recurrent-side grads
                               T& dh_prev_direct) {
    const T dn = dh * (T(1) - z);
    const T dz = dh * (h_prev - n);
    dxn = dn * (T(1) - n * n);
    dhn = dxn * r;
    dxr = dxn * hn * r * (T(1) - r);
    dxz = dz * z * (T(1) - z);
    dhr = dxr;
    dhz = dxz;
    dh_prev_direct = dh * z;
  }
};

// ---------------------------------------------------------------------------------------------
// Elman RNN, tanh and relu
// ---------------------------------------------------------------------------------------------
// Forward: h = act(pre), pre = x W_ih^T + b_ih + h_prev W_hh^T + b_hh.
// Backward from the output alone (no pre-activation needs saving):
//   tanh: d pre = dh (1 - h^2)
//   relu: d pre = dh [h > 0]   (relu'(0) = 0, as autograd's threshold_backward)
struct RNNTanhCell {
  template <typename T>
  FRNN_HD static T forward(T pre) { return tanh_(pre); }
  template <typename T>
  FRNN_HD static T backward(T dh, T h) { return dh * (T(1) - h * h); }
};

struct RNNReluCell {
  template <typename T>
  FRNN_HD static T forward(T pre) { return relu_(pre); }
  template <typename T>
  FRNN_HD static T backward(T dh, T h) { return h <= T(0) ? T(0) : dh; }  // NaN h passes dh
};

// =============================================================================================
// Cell variants (docs/variants.md): layer norm, zoneout, peephole, coupled input-forget gate.
// =============================================================================================
// Same conventions as above: one element per call, row reductions (the mean / variance of a
// layer-norm row and the two row sums of its backward) are done by the caller, which passes
// them in. Options are template bools so that a loop instantiated for one combination has no
// branch per element.

// ---------------------------------------------------------------------------------------------
// Layer normalisation of one row v[0..K) (biased variance, eps inside the square root):
//   mean = sum_j v_j / K     var = sum_j (v_j - mean)^2 / K     rstd = 1 / sqrt(var + eps)
//   xhat_j = (v_j - mean) rstd          out_j = xhat_j w_j + b_j
// Backward, given dout_j (gradient reaching out_j):
//   dw_j += dout_j xhat_j,  db_j += dout_j      (summed over rows by the caller)
//   dxhat_j = dout_j w_j
//   dv_j = rstd (dxhat_j - mean_k(dxhat_k) - xhat_j mean_k(dxhat_k xhat_k))
// The last line: xhat_j = (v_j - mean) rstd with d mean / d v_k = 1/K and
//   d rstd / d v_k = -rstd^3 (v_k - mean) / K = -rstd^2 xhat_k / K, so
//   dv_k = sum_j dxhat_j d xhat_j / d v_k
//        = rstd dxhat_k - rstd/K sum_j dxhat_j - rstd xhat_k / K sum_j dxhat_j xhat_j.
// The caller computes the two row means (mean_dxhat, mean_dxhat_xhat) in a first pass.
struct LayerNorm {
  template <typename T>
  FRNN_HD static T rstd(T var, T eps) {
#if defined(__CUDA_ARCH__)
    return T(1) / ::sqrt(var + eps);
#else
    return T(1) / std::sqrt(var + eps);
#endif
  }

  template <typename T>
  FRNN_HD static T normalize(T v, T mean, T rstd) { return (v - mean) * rstd; }

  template <typename T>
  FRNN_HD static T forward(T v, T mean, T rstd, T w, T b, T& xhat) {
    xhat = (v - mean) * rstd;
    return xhat * w + b;
  }

  // dxhat_j = dout_j w_j: the first-pass term whose row sums the backward needs
  template <typename T>
  FRNN_HD static T dxhat(T dout, T w) { return dout * w; }

  template <typename T>
  FRNN_HD static T backward(T dxhat, T xhat, T rstd, T mean_dxhat, T mean_dxhat_xhat) {
    return rstd * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat);
  }
};

// ---------------------------------------------------------------------------------------------
// Zoneout of one state element. keep = the mask value m (training: 1 keeps the old value) or
// the probability p (evaluation: the expectation), the formula is the same:
//   state = keep old + (1 - keep) new
// Backward: d new = (1 - keep) d state,  d old (direct part) = keep d state. The mask is not
// differentiated.
struct Zoneout {
  template <typename T>
  FRNN_HD static T forward(T new_value, T old_value, T keep) {
    return keep * old_value + (T(1) - keep) * new_value;
  }

  template <typename T>
  FRNN_HD static void backward(T dstate, T keep, T& dnew, T& dold) {
    dnew = (T(1) - keep) * dstate;
    dold = keep * dstate;
  }
};

// ---------------------------------------------------------------------------------------------
// LSTM with peephole (PEEP) and / or coupled input-forget gate (CIFG); layer norm of c and
// zoneout are applied by the caller between the two halves (LayerNorm / Zoneout above).
// pi, pf, pg, po are the gate pre-activations without the peephole terms (x part, h part and
// biases, after LN_ih / LN_hh when layer norm is on); cifg has no pf (f = 1 - i).
//
// Forward, first half (per element, needs c_prev only):
//   i = s(pi + [w_ci c_prev])    f = s(pf + [w_cf c_prev])  or  1 - i (CIFG)
//   g = tanh(pg)                 c = f c_prev + i g          (c~_t, before zoneout)
// Forward, second half (after the caller's row statistics of c for LN_c):
//   o = s(po + [w_co c])         cn = LN_c(c) or c           h = o tanh(cn)
//
// Backward, first half: given dh (gradient reaching h, after zoneout and projection):
//   dpo = dh tanh(cn) o (1 - o)           dcn = dh o (1 - tanh(cn)^2)
// The caller turns dcn into dc_ln (through LN_c's backward, or dc_ln = dcn without LN) and
// adds the zoneout part (1 - keep_c) dc_t. Backward, second half, with dc = that sum:
//   dc     += [w_co dpo]                  (o sees the new c through the peephole)
//   dpi     = dc (g - c_prev) i (1 - i)  (CIFG: c = c_prev + i (g - c_prev))
//           = dc g i (1 - i)             (otherwise)
//   dpf     = dc c_prev f (1 - f)         dpg = dc i (1 - g^2)
//   dc_prev = dc f + [w_ci dpi + w_cf dpf]  (the caller adds the zoneout part keep_c dc_t)
// Peephole weight gradients (summed over rows by the caller): dw_ci += dpi c_prev,
// dw_cf += dpf c_prev, dw_co += dpo c.
struct LSTMVariantCell {
  template <bool PEEP, bool CIFG, typename T>
  FRNN_HD static void forward_state(T pi, T pf, T pg, T c_prev, T w_ci, T w_cf,
                                    T& i, T& f, T& g, T& c) {
    if constexpr (PEEP) pi += w_ci * c_prev;
    i = sigmoid(pi);
    if constexpr (CIFG) {
      f = T(1) - i;
    } else {
      if constexpr (PEEP) pf += w_cf * c_prev;
      f = sigmoid(pf);
    }
    g = tanh_(pg);
    c = f * c_prev + i * g;
  }

  template <bool PEEP, typename T>
  FRNN_HD static void forward_output(T po, T c, T cn, T w_co, T& o, T& tanh_cn, T& h) {
    if constexpr (PEEP) po += w_co * c;
    o = sigmoid(po);
    tanh_cn = tanh_(cn);
    h = o * tanh_cn;
  }

  template <typename T>
  FRNN_HD static void backward_output(T dh, T o, T tanh_cn, T& dpo, T& dcn) {
    dpo = dh * tanh_cn * o * (T(1) - o);
    dcn = dh * o * (T(1) - tanh_cn * tanh_cn);
  }

  template <bool PEEP, bool CIFG, typename T>
  FRNN_HD static void backward_state(T dc, T dpo, T i, T f, T g, T c_prev,
                                     T w_ci, T w_cf, T w_co,
                                     T& dpi, T& dpf, T& dpg, T& dc_prev) {
    if constexpr (PEEP) dc += w_co * dpo;
    if constexpr (CIFG) {
      dpi = dc * (g - c_prev) * i * (T(1) - i);
      dpf = T(0);
    } else {
      dpi = dc * g * i * (T(1) - i);
      dpf = dc * c_prev * f * (T(1) - f);
    }
    dpg = dc * i * (T(1) - g * g);
    dc_prev = dc * f;
    if constexpr (PEEP) {
      dc_prev += w_ci * dpi;
      if constexpr (!CIFG) dc_prev += w_cf * dpf;
    }
  }
};

// torch.nn's LSTM cell (the equations under "LSTM" above): LSTMVariantCell with every flag off.
struct LSTMCell {
  template <typename T>
  FRNN_HD static void forward(T gi, T gf, T gg, T go, T c_prev,  // pre-activations, state
                              T& i, T& f, T& g, T& o, T& c, T& tanh_c, T& h) {
    LSTMVariantCell::forward_state<false, false>(gi, gf, gg, c_prev, T(0), T(0), i, f, g, c);
    LSTMVariantCell::forward_output<false>(go, c, c, T(0), o, tanh_c, h);
  }

  template <typename T>
  FRNN_HD static void backward(T dh, T dc_next,                  // incoming gradients
                               T i, T f, T g, T o,               // saved activations
                               T c_prev, T tanh_c,               // saved state
                               T& dgi, T& dgf, T& dgg, T& dgo,   // pre-activation gradients
                               T& dc_prev) {
    T dc;  // dh o (1 - tanh(c)^2), the part of dc that reaches c through h
    LSTMVariantCell::backward_output(dh, o, tanh_c, dgo, dc);
    LSTMVariantCell::backward_state<false, false>(dc_next + dc, dgo, i, f, g, c_prev, T(0),
                                                  T(0), T(0), dgi, dgf, dgg, dc_prev);
  }
};

// GRU variants need no struct of their own: with layer norm the recurrent part
// (hr, hz, hn) = LN_hh(h_prev W_hh^T) + b_hh and the input part LN_ih(x W_ih^T) + b_ih enter
// GRUCell::forward / backward unchanged (b_hn, and LN, stay inside r * hn), and zoneout wraps
// the cell's h with Zoneout (backward: GRUCell::backward gets (1 - keep) dh_t, the direct
// gradient to h_prev gains keep dh_t).

}  // inline namespace FRNN_ISA_NAMESPACE
}  // namespace fusedrnn
