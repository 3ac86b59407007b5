// Elman RNN (tanh / relu) step functors (see lstm.cuh for the structure).
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
    if constexpr (Save) out<T>(a.h_prev)[r * H + j] = from_acc<T>(*h_state);
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

}  // namespace cuda
}  // namespace fusedrnn
