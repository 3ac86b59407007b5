// LSTM step functors (one call = one (row, unit) element); the launchers in lstm.cu pick their
// template parameters from the runtime options (common.cuh: dispatch). Host+device code: the
// kernels and the host harness both run exactly this. The per-element math is
// fusedrnn::LSTMCell (csrc/cell_math.h).
#pragma once

#include "cuda/common.cuh"

namespace fusedrnn {
namespace cuda {

// Forward. Element idx = r * H + j handles unit j of row r for all four gates, so the loads of a
// warp are 32 consecutive units of one gate row (coalesced). Reads h_state[r, j] before writing
// it in the same thread, which is why h_state may be both input and output.
template <typename T, bool HasBias, bool Save, bool Proj>
struct LstmFwdOp {
  LstmFwdArgs a;

  FRNN_HD void operator()(int64_t idx) const {
    using A = acc_t<T>;
    const int64_t H = a.hidden, Ho = a.hidden_out;
    const int64_t r = idx / H, j = idx - r * H;
    const T* xg = in<T>(a.xg) + r * 4 * H + j;
    const A* hg = in<A>(a.hg) + r * 4 * H + j;
    A pre[4];
    for (int k = 0; k < 4; ++k) {
      pre[k] = to_acc(xg[k * H]) + hg[k * H];
      if constexpr (HasBias) pre[k] += to_acc(in<T>(a.b_hh)[k * H + j]);
    }
    A* c_state = out<A>(a.c_state) + r * H + j;
    const A c_prev = *c_state;
    A* h_state = out<A>(a.h_state) + r * Ho + j;
    if constexpr (Save) {
      if (j < Ho) out<T>(a.h_prev_save)[r * Ho + j] = from_acc<T>(*h_state);
    }
    A i, f, g, o, c, tanh_c, h;
    LSTMCell::forward<A>(pre[0], pre[1], pre[2], pre[3], c_prev, i, f, g, o, c, tanh_c, h);
    *c_state = c;
    const T h_out = from_acc<T>(h);
    out<T>(a.y)[r * H + j] = h_out;  // y is [rows, H]: without proj Hout == H
    if constexpr (!Proj) *h_state = h;  // with proj: the caller's W_hr GEMM writes h_t
    if constexpr (Save) {
      store_strided(out<A>(a.save) + r * 6 * H + j, H, i, f, g, o, c_prev, tanh_c);
    }
  }
};

// Backward: gate pre-activation gradients and dc_{t-1}; dh_{t-1} is the caller's GEMM.
template <typename T, bool AddState>
struct LstmBwdOp {
  LstmBwdArgs a;

  FRNN_HD void operator()(int64_t idx) const {
    using A = acc_t<T>;
    const int64_t H = a.hidden;
    const int64_t r = idx / H, j = idx - r * H;
    A dh;
    if constexpr (AddState) {
      dh = to_acc(in<T>(a.dh)[r * H + j]) + in<A>(a.dh_state)[r * H + j];
    } else {
      dh = in<A>(a.dh)[r * H + j];
    }
    A* dc = out<A>(a.dc_state) + r * H + j;
    const A* s = in<A>(a.save) + r * 6 * H + j;
    A dgi, dgf, dgg, dgo, dc_prev;
    LSTMCell::backward<A>(dh, *dc, s[0], s[H], s[2 * H], s[3 * H], s[4 * H], s[5 * H], dgi, dgf,
                          dgg, dgo, dc_prev);
    *dc = dc_prev;
    store_strided(out<A>(a.dgates) + r * 4 * H + j, H, dgi, dgf, dgg, dgo);
  }
};

}  // namespace cuda
}  // namespace fusedrnn
