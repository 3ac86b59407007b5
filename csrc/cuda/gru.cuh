// GRU step functors (see lstm.cuh for the structure). Per-element math:
// fusedrnn::GRUCell (csrc/cell_math.h).
#pragma once

#include "cuda/common.cuh"

namespace fusedrnn {
namespace cuda {

template <typename T, bool HasBias, bool Save>
struct GruFwdOp {
  GruFwdArgs a;

  FRNN_HD void operator()(int64_t idx) const {
    using A = acc_t<T>;
    const int64_t H = a.hidden;
    const int64_t r = idx / H, j = idx - r * H;
    const T* xg = in<T>(a.xg) + r * 3 * H + j;
    const A* hg = in<A>(a.hg) + r * 3 * H + j;
    A hpart[3];
    for (int k = 0; k < 3; ++k) {
      hpart[k] = hg[k * H];
      if constexpr (HasBias) hpart[k] += to_acc(in<T>(a.b_hh)[k * H + j]);
    }
    A* h_state = out<A>(a.h_state) + r * H + j;
    const A h_prev = *h_state;
    if constexpr (Save) out<T>(a.h_prev_save)[r * H + j] = from_acc<T>(h_prev);
    A rr, z, n, h;
    GRUCell::forward<A>(to_acc(xg[0]), to_acc(xg[H]), to_acc(xg[2 * H]), hpart[0], hpart[1],
                        hpart[2], h_prev, rr, z, n, h);
    out<T>(a.y)[r * H + j] = from_acc<T>(h);
    *h_state = h;
    if constexpr (Save) {
      store_strided(out<A>(a.save) + r * 4 * H + j, H, rr, z, n, hpart[2]);
    }
  }
};

template <typename T>
struct GruBwdOp {
  GruBwdArgs a;

  FRNN_HD void operator()(int64_t idx) const {
    using A = acc_t<T>;
    const int64_t H = a.hidden;
    const int64_t r = idx / H, j = idx - r * H;
    A* dh_state = out<A>(a.dh_state) + r * H + j;
    const A dh = to_acc(in<T>(a.dy)[r * H + j]) + *dh_state;
    const A* s = in<A>(a.save) + r * 4 * H + j;
    A dxr, dxz, dxn, dhr, dhz, dhn, direct;
    GRUCell::backward<A>(dh, s[0], s[H], s[2 * H], s[3 * H], to_acc(in<T>(a.h_prev)[r * H + j]),
                         dxr, dxz, dxn, dhr, dhz, dhn, direct);
    store_strided(out<A>(a.dxg) + r * 3 * H + j, H, dxr, dxz, dxn);
    store_strided(out<A>(a.dhg) + r * 3 * H + j, H, dhr, dhz, dhn);
    *dh_state = direct;
  }
};

}  // namespace cuda
}  // namespace fusedrnn
