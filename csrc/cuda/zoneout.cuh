// Zoneout of the projected h (LSTM with proj_size), elementwise: the zoned-out value needs
// y_t = hraw W_hr^T, which the caller's GEMM produces after the row kernel. Element idx =
// r * K + j; math: fusedrnn::Zoneout (csrc/cell_math.h). Structure as lstm.cuh.
#pragma once

#include "cuda/common.cuh"
#include "cuda/lstm_variants.cuh"  // zone_keep
#include "cuda/variant_launchers.h"

namespace fusedrnn {
namespace cuda {

// y <- keep h_{t-1} + (1 - keep) y (or y unchanged), h_state[r] <- y
template <typename T>
struct ZoneFwdOp {
  ZoneFwdArgs a;

  FRNN_HD void operator()(int64_t idx) const {
    using A = acc_t<T>;
    const int64_t j = idx % a.width;
    T* y = out<T>(a.y) + idx;
    if (a.zone.on) {
      *y = from_acc<T>(Zoneout::forward<A>(to_acc(*y), to_acc(in<T>(a.h_prev)[idx]),
                                           zone_keep<T>(a.zone, idx - j, j)));
    }
    out<T>(a.h_state)[idx] = *y;  // rows of h_state are the step's first rows
  }
};

// dh_t = dy_t + dh_state: dht <- (1 - keep) dh_t (reaches the projection), dh_state <- keep dh_t
template <typename T>
struct ZoneBwdOp {
  ZoneBwdArgs a;

  FRNN_HD void operator()(int64_t idx) const {
    using A = acc_t<T>;
    const int64_t j = idx % a.width;
    T* dhs = out<T>(a.dh_state) + idx;
    const A dh = to_acc(in<T>(a.dy)[idx]) + to_acc(*dhs);
    A dnew = dh, dold = A(0);
    if (a.zone.on) Zoneout::backward<A>(dh, zone_keep<T>(a.zone, idx - j, j), dnew, dold);
    out<T>(a.dht)[idx] = from_acc<T>(dnew);
    *dhs = from_acc<T>(dold);
  }
};

template <class Run>
bool zone_forward_dispatch(DType dt, const ZoneFwdArgs& a, Run&& run) {
  return with_dtype(dt, [&](auto tag) {
    run(ZoneFwdOp<typename decltype(tag)::type>{a}, a.rows * a.width);
  });
}

template <class Run>
bool zone_backward_dispatch(DType dt, const ZoneBwdArgs& a, Run&& run) {
  return with_dtype(dt, [&](auto tag) {
    run(ZoneBwdOp<typename decltype(tag)::type>{a}, a.rows * a.width);
  });
}

}  // namespace cuda
}  // namespace fusedrnn
