// Elman RNN (tanh / relu) step functors and dispatch (see lstm.cuh for the structure).
// Per-element math: fusedrnn::RNNTanhCell / RNNReluCell (csrc/cell_math.h).
#pragma once

#include "cuda/common.cuh"

namespace fusedrnn {
namespace cuda {

template <bool Relu>
using RnnCellOf = typename std::conditional<Relu, RNNReluCell, RNNTanhCell>::type;

template <typename T, bool Relu, bool HasBias, bool Save>
struct RnnFwdOp {
  RnnFwdArgs a;

  FRNN_HD void operator()(int64_t idx) const {
    using A = acc_t<T>;
    const int64_t H = a.hidden;
    const int64_t r = idx / H, j = idx - r * H;
    A pre = to_acc(in<T>(a.xg)[r * H + j]) + in<A>(a.hg)[r * H + j];
    if constexpr (HasBias) pre += to_acc(in<T>(a.b_hh)[j]);
    A* h_state = out<A>(a.h_state) + r * H + j;
    if constexpr (Save) out<T>(a.h_prev_save)[r * H + j] = from_acc<T>(*h_state);
    const A h = RnnCellOf<Relu>::template forward<A>(pre);
    out<T>(a.y)[r * H + j] = from_acc<T>(h);
    *h_state = h;
  }
};

template <typename T, bool Relu>
struct RnnBwdOp {
  RnnBwdArgs a;

  FRNN_HD void operator()(int64_t idx) const {
    using A = acc_t<T>;
    const int64_t H = a.hidden;
    const int64_t r = idx / H, j = idx - r * H;
    const A dh = to_acc(in<T>(a.dy)[r * H + j]) + in<A>(a.dh_state)[r * H + j];
    const A h = to_acc(in<T>(a.y)[r * H + j]);
    out<A>(a.dgates)[r * H + j] = RnnCellOf<Relu>::template backward<A>(dh, h);
  }
};

template <class Run>
bool rnn_forward_dispatch(DType dt, bool relu, bool has_bias, bool save, const RnnFwdArgs& a,
                          Run&& run) {
  return dispatch(
      dt,
      [&](auto t, auto rl, auto hb, auto sv) {
        using Op = RnnFwdOp<typename decltype(t)::type, decltype(rl)::value, decltype(hb)::value,
                            decltype(sv)::value>;
        run(Op{a}, a.rows * a.hidden);
      },
      relu, has_bias, save);
}

template <class Run>
bool rnn_backward_dispatch(DType dt, bool relu, const RnnBwdArgs& a, Run&& run) {
  return dispatch(
      dt,
      [&](auto t, auto rl) {
        run(RnnBwdOp<typename decltype(t)::type, decltype(rl)::value>{a}, a.rows * a.hidden);
      },
      relu);
}

}  // namespace cuda
}  // namespace fusedrnn
