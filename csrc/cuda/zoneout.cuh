// Zoneout of the projected h (LSTM with proj_size), elementwise: the zoned-out value needs
// y_t = hraw W_hr^T, which the caller's GEMM produces after the row kernel. Element idx =
// r * K + j; math: fusedrnn::Zoneout (csrc/cell_math.h). Structure as lstm.cuh.
#pragma once

#include "cuda/common.cuh"
#include "cuda/lstm_variants.cuh"  // zone_keep
#include "cuda/launchers.h"

namespace fusedrnn {
namespace cuda {

// keep value of element idx = r * width + j (mask row r or p)
template <typename T, class Args>
FRNN_HD acc_t<T> zone_keep_at(const Args& a, int64_t idx) {
  const int64_t j = idx % a.width;
  return zone_keep<T>(a.zone, idx - j, j);
}

// h_state[r] <- keep h_{t-1} + (1 - keep) y (or y), y <- h_state[r]; h_{t-1} is read from the
// float state, not from the rounded copy in h_prev
template <typename T>
struct ZoneFwdOp {
  ZoneFwdArgs a;

  FRNN_HD void operator()(int64_t idx) const {
    using A = acc_t<T>;
    T* y = out<T>(a.y) + idx;
    A* h_state = out<A>(a.h_state) + idx;  // rows of h_state are the step's first rows
    A h = to_acc(*y);
    if (a.zone.on) h = Zoneout::forward<A>(h, *h_state, zone_keep_at<T>(a, idx));
    *y = from_acc<T>(h);
    *h_state = h;
  }
};

// dh_t = dy_t + dh_state: dht <- (1 - keep) dh_t (reaches the projection), dh_state <- keep dh_t
template <typename T>
struct ZoneBwdOp {
  ZoneBwdArgs a;

  FRNN_HD void operator()(int64_t idx) const {
    using A = acc_t<T>;
    A* dhs = out<A>(a.dh_state) + idx;
    const A dh = to_acc(in<T>(a.dy)[idx]) + *dhs;
    A dnew = dh, dold = A(0);
    if (a.zone.on) Zoneout::backward<A>(dh, zone_keep_at<T>(a, idx), dnew, dold);
    out<A>(a.dht)[idx] = dnew;
    *dhs = dold;
  }
};

}  // namespace cuda
}  // namespace fusedrnn
