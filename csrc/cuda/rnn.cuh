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
    A pre = to_acc(in<T>(a.xg)[r * H + j]) + to_acc(in<T>(a.hg)[r * H + j]);
    if constexpr (HasBias) pre += to_acc(in<T>(a.b_hh)[j]);
    T* h_state = out<T>(a.h_state) + r * H + j;
    if constexpr (Save) out<T>(a.h_prev_save)[r * H + j] = *h_state;
    const T h = from_acc<T>(RnnCellOf<Relu>::template forward<A>(pre));
    out<T>(a.y)[r * H + j] = h;
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
    const A dh = to_acc(in<T>(a.dy)[r * H + j]) + to_acc(in<T>(a.dh_state)[r * H + j]);
    const A h = to_acc(in<T>(a.y)[r * H + j]);
    out<T>(a.dgates)[r * H + j] = from_acc<T>(RnnCellOf<Relu>::template backward<A>(dh, h));
  }
};

template <class Run>
bool rnn_forward_dispatch(DType dt, bool relu, bool has_bias, bool save, const RnnFwdArgs& a,
                          Run&& run) {
  return with_dtype(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    with_bool(relu, [&](auto rl) {
      with_bool(has_bias, [&](auto hb) {
        with_bool(save, [&](auto sv) {
          run(RnnFwdOp<T, decltype(rl)::value, decltype(hb)::value, decltype(sv)::value>{a},
              a.rows * a.hidden);
        });
      });
    });
  });
}

template <class Run>
bool rnn_backward_dispatch(DType dt, bool relu, const RnnBwdArgs& a, Run&& run) {
  return with_dtype(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    with_bool(relu, [&](auto rl) {
      run(RnnBwdOp<T, decltype(rl)::value>{a}, a.rows * a.hidden);
    });
  });
}

}  // namespace cuda
}  // namespace fusedrnn
