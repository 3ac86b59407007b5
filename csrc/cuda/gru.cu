// GRU per-step kernels: the step functors, elementwise (torch.nn's cell) and row (layer norm LN
// as a template bool, zoneout of h as a uniform runtime branch), then their launchers;
// structure as lstm.cu. Per-element math: GRUCell (unchanged by the options: LN_hh and b_hn
// stay inside r * (.)), LayerNorm, Zoneout in csrc/cell_math.h.
#include "cuda/kernel.cuh"

namespace fusedrnn {
namespace cuda {

// Forward and backward, elementwise: one call per (row, unit) element.
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
    if constexpr (Save) out<T>(a.h_prev)[r * H + j] = from_acc<T>(h_prev);
    A rr, z, n, h;
    GRUCell::forward<A>(to_acc(xg[0]), to_acc(xg[H]), to_acc(xg[2 * H]), hpart[0], hpart[1],
                        hpart[2], h_prev, rr, z, n, h);
    out<T>(a.y)[r * H + j] = from_acc<T>(h);
    *h_state = h;
    if constexpr (Save) {
      store_strided(out<A>(a.act) + r * 4 * H + j, H, rr, z, n, hpart[2]);
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
    const A* s = in<A>(a.act) + r * 4 * H + j;
    A dxr, dxz, dxn, dhr, dhz, dhn, direct;
    GRUCell::backward<A>(dh, s[0], s[H], s[2 * H], s[3 * H], to_acc(in<T>(a.h_prev)[r * H + j]),
                         dxr, dxz, dxn, dhr, dhz, dhn, direct);
    store_strided(out<A>(a.dxg) + r * 3 * H + j, H, dxr, dxz, dxn);
    store_strided(out<A>(a.dhg) + r * 3 * H + j, H, dhr, dhz, dhn);
    *dh_state = direct;
  }
};

// Forward, row kernel, per row: [ln] mean / variance of the 3H recurrent features; per unit the
// recurrent parts (LN_hh, b_hh), the GRU cell, zoneout of h.
template <typename T, bool LN>
struct GruRowFwdOp {
  GruFwdArgs a;

  template <class Blk>
  FRNN_HD void operator()(const Blk& blk, int64_t r) const {
    using A = acc_t<T>;
    const int64_t H = a.hidden, GH = 3 * H;
    const T* xg = in<T>(a.xg) + r * GH;
    const A* hg = in<A>(a.hg) + r * GH;
    const T *b_hh = in<T>(a.b_hh), *ln_w = in<T>(a.ln_hh_w), *ln_b = in<T>(a.ln_hh_b);
    A* act = out<A>(a.act) + r * 4 * H;
    A* hhat = LN ? out<A>(a.hhat) + r * GH : nullptr;
    A* h_state = out<A>(a.h_state) + r * H;
    A mean = A(0), rstd = A(1);
    if constexpr (LN) ln_row_stats(blk, GH, hg, a.eps, mean, rstd);
    auto rec = [&](int64_t e) -> A {  // recurrent part of feature e
      A v = to_acc(hg[e]);
      if constexpr (LN) v = ln_feature(v, mean, rstd, ln_w, ln_b, e, hhat[e]);
      return b_hh != nullptr ? v + to_acc(b_hh[e]) : v;
    };
    blk.for_each(H, [&](int64_t j) {
      if constexpr (LN) {
        save_stats(out<A>(a.stats) + r * 4, j, mean, rstd);
        // the LSTM's cell-norm slots: identity statistics, so that every element of the
        // returned buffer is defined
        save_stats(out<A>(a.stats) + r * 4 + 2, j, A(0), A(1));
      }
      const A hp = h_state[j];
      out<T>(a.h_prev)[r * H + j] = from_acc<T>(hp);
      const A hn = rec(2 * H + j);
      A rr, z, n, h;
      GRUCell::forward<A>(to_acc(xg[j]), to_acc(xg[H + j]), to_acc(xg[2 * H + j]), rec(j),
                          rec(H + j), hn, hp, rr, z, n, h);
      if (a.zone_h.on) h = Zoneout::forward<A>(h, hp, zone_keep<T>(a.zone_h, r * H, j));
      out<T>(a.y)[r * H + j] = from_acc<T>(h);
      h_state[j] = h;
      store_strided(act + j, H, rr, z, n, hn);
    });
  }
};

// Backward, row kernel, per row: per unit zoneout's backward and the GRU cell's (dA input side, dS
// recurrent side, the direct part of dh_{t-1}); [ln] the two LN_hh row sums, then dHP.
template <typename T, bool LN>
struct GruRowBwdOp {
  GruBwdArgs a;

  template <class Blk>
  FRNN_HD void operator()(const Blk& blk, int64_t r) const {
    using A = acc_t<T>;
    const int64_t H = a.hidden, GH = 3 * H;
    const A* act = in<A>(a.act) + r * 4 * H;
    A* dh_state = out<A>(a.dh_state) + r * H;
    A* dx = out<A>(a.dxg) + r * GH;
    A* ds = out<A>(a.dhg) + r * GH;
    blk.for_each(H, [&](int64_t j) {
      const A dh = to_acc(in<T>(a.dy)[r * H + j]) + dh_state[j];
      A dnew = dh, dold = A(0);
      if (a.zone_h.on) Zoneout::backward<A>(dh, zone_keep<T>(a.zone_h, r * H, j), dnew, dold);
      A dxr, dxz, dxn, dhr, dhz, dhn, direct;
      GRUCell::backward<A>(dnew, act[j], act[H + j], act[2 * H + j], act[3 * H + j],
                           to_acc(in<T>(a.h_prev)[r * H + j]), dxr, dxz, dxn, dhr, dhz, dhn,
                           direct);
      dh_state[j] = direct + dold;
      store_strided(dx + j, H, dxr, dxz, dxn);
      store_strided(ds + j, H, dhr, dhz, dhn);
    });
    if constexpr (LN) {
      ln_row_backward<T>(blk, GH, ds, in<T>(a.ln_hh_w), in<A>(a.hhat) + r * GH,
                         in<A>(a.stats)[r * 4 + 1], out<A>(a.dhp) + r * GH);
    }
  }
};

cudaError_t gru_forward_step(DType dt, const GruFwdArgs& a, cudaStream_t s) {
  return launch_status(
      a.any() ? dispatch_op<GruRowFwdOp>(dt, a, RowKernelRun{s, a.rows, a.hidden},
                                         a.ln_hh_w != nullptr)
              : dispatch_op<GruFwdOp>(dt, a, KernelRun{s, a.rows * a.hidden}, a.b_hh != nullptr,
                                      a.h_prev != nullptr));
}

cudaError_t gru_backward_step(DType dt, const GruBwdArgs& a, cudaStream_t s) {
  return launch_status(
      a.any() ? dispatch_op<GruRowBwdOp>(dt, a, RowKernelRun{s, a.rows, a.hidden},
                                         a.ln_hh_w != nullptr)
              : dispatch_plain<GruBwdOp>(dt, a, KernelRun{s, a.rows * a.hidden}));
}

}  // namespace cuda
}  // namespace fusedrnn
