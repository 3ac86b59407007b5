// LSTM per-step kernels: the step functors, then their launchers. The elementwise functors run
// torch.nn's cell, one call per (row, unit) element; the row ones (one call per batch row, see
// rowblock.cuh) every configuration with an option on, with layer norm LN, peephole PEEP and the
// coupled input-forget gate CIFG as template bools, zoneout and the projection as uniform
// runtime branches. Then the projection's zoneout (elementwise). Per-element math: LSTMCell,
// LSTMVariantCell, LayerNorm, Zoneout in csrc/cell_math.h.
#include "cuda/kernel.cuh"

namespace fusedrnn {
namespace cuda {

// The blocks of H columns of a saved act row (LstmFwdArgs::act) for G gate blocks, in the gate
// order of xg, hg and dP. The row kernels address the cell blocks through a pointer of their
// own: indexed from act, ptxas gives them more registers.
template <int64_t G>
struct LstmAct {
  enum : int64_t { i = 0, f = 1, g = G - 2, o = G - 1, cell = G, blocks = G + 3 };
  enum : int64_t { c_prev = 0, tanh_c = 1, c_new = 2 };  // blocks from `cell` on
};

// Forward, elementwise. Element idx = r * H + j handles unit j of row r for all four gates, so
// the loads of a warp are 32 consecutive units of one gate row (coalesced). Reads h_state[r, j]
// before writing it in the same thread, which is why h_state may be both input and output.
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
      if (j < Ho) out<T>(a.h_prev)[r * Ho + j] = from_acc<T>(*h_state);
    }
    A i, f, g, o, c, tanh_c, h;
    LSTMCell::forward<A>(pre[0], pre[1], pre[2], pre[3], c_prev, i, f, g, o, c, tanh_c, h);
    *c_state = c;
    // [rows, H]: without proj Hout == H; with proj zone_forward writes h_t after the W_hr GEMM
    out<T>(Proj ? a.hraw : a.y)[r * H + j] = from_acc<T>(h);
    if constexpr (!Proj) *h_state = h;
    if constexpr (Save) {
      store_strided(out<A>(a.act) + r * LstmAct<4>::blocks * H + j, H, i, f, g, o, c_prev, tanh_c,
                    c);
    }
  }
};

// Backward, elementwise: gate pre-activation gradients and dc_{t-1}; dh_{t-1} is the caller's
// GEMM.
template <typename T, bool Proj>
struct LstmBwdOp {
  LstmBwdArgs a;

  FRNN_HD void operator()(int64_t idx) const {
    using A = acc_t<T>;
    const int64_t H = a.hidden;
    const int64_t r = idx / H, j = idx - r * H;
    A dh;
    if constexpr (Proj) {
      dh = in<A>(a.dh_raw)[r * H + j];
    } else {
      dh = to_acc(in<T>(a.dy)[r * H + j]) + in<A>(a.dh_state)[r * H + j];
    }
    A* dc = out<A>(a.dc_state) + r * H + j;
    using L = LstmAct<4>;
    const A* s = in<A>(a.act) + r * L::blocks * H + j;
    A dgi, dgf, dgg, dgo, dc_prev;
    LSTMCell::backward<A>(dh, *dc, s[L::i * H], s[L::f * H], s[L::g * H], s[L::o * H],
                          s[(L::cell + L::c_prev) * H], s[(L::cell + L::tanh_c) * H], dgi, dgf,
                          dgg, dgo, dc_prev);
    *dc = dc_prev;
    store_strided(out<A>(a.dgates) + r * 4 * H + j, H, dgi, dgf, dgg, dgo);
  }
};

// Forward, row kernel, per row: [ln] mean / variance of the G*H recurrent features; first half per
// unit j (gates with LN_hh and biases, peephole i / f, c~); [ln] mean / variance of c~ over H;
// second half per unit (LN_c, o with peephole, h, zoneout of c and, without proj, of h).
template <typename T, bool LN, bool PEEP, bool CIFG>
struct LstmRowFwdOp {
  LstmFwdArgs a;

  template <class Blk>
  FRNN_HD void operator()(const Blk& blk, int64_t r) const {
    using A = acc_t<T>;
    constexpr int64_t G = CIFG ? 3 : 4;
    const int64_t H = a.hidden, Ho = a.hidden_out, GH = G * H;
    const T* xg = in<T>(a.xg) + r * GH;
    const A* hg = in<A>(a.hg) + r * GH;
    const T *b_hh = in<T>(a.b_hh), *ln_w = in<T>(a.ln_hh_w), *ln_b = in<T>(a.ln_hh_b);
    const T* w_ch = in<T>(a.w_ch);
    using L = LstmAct<G>;
    A* act = out<A>(a.act) + r * L::blocks * H;
    A* cell = act + L::cell * H;
    A* c_state = out<A>(a.c_state) + r * H;
    A* hhat = LN ? out<A>(a.hhat) + r * GH : nullptr;
    A* st = LN ? out<A>(a.stats) + r * 4 : nullptr;
    A* h_state = out<A>(a.h_state) + r * Ho;
    T* h_prev = out<T>(a.h_prev) + r * Ho;

    blk.for_each(Ho, [&](int64_t j) { h_prev[j] = from_acc<T>(h_state[j]); });
    A mean = A(0), rstd = A(1);
    if constexpr (LN) ln_row_stats(blk, GH, hg, a.eps, mean, rstd);
    // pre-activation of gate k, unit j without the peephole term
    auto pre = [&](int64_t k, int64_t j) -> A {
      const int64_t e = k * H + j;
      A v = to_acc(hg[e]);
      if constexpr (LN) v = ln_feature(v, mean, rstd, ln_w, ln_b, e, hhat[e]);
      if (b_hh != nullptr) v += to_acc(b_hh[e]);
      return v + to_acc(xg[e]);
    };
    blk.for_each(H, [&](int64_t j) {
      if constexpr (LN) save_stats(st, j, mean, rstd);
      const A c_prev = c_state[j];
      const A w_ci = PEEP ? to_acc(w_ch[j]) : A(0);
      const A w_cf = PEEP && !CIFG ? to_acc(w_ch[H + j]) : A(0);
      A pf = A(0);
      if constexpr (!CIFG) pf = pre(L::f, j);
      A i, f, g, c;
      LSTMVariantCell::forward_state<PEEP, CIFG, A>(pre(L::i, j), pf, pre(L::g, j), c_prev, w_ci,
                                                   w_cf, i, f, g, c);
      act[L::i * H + j] = i;
      if constexpr (!CIFG) act[L::f * H + j] = f;
      act[L::g * H + j] = g;
      act[L::o * H + j] = pre(L::o, j);  // o's pre-activation until the second half
      cell[L::c_prev * H + j] = c_prev;
      cell[L::c_new * H + j] = c;
    });
    A mean_c = A(0), rstd_c = A(1);
    if constexpr (LN) ln_row_stats(blk, H, cell + L::c_new * H, a.eps, mean_c, rstd_c);
    const T *ln_cw = in<T>(a.ln_c_w), *ln_cb = in<T>(a.ln_c_b);
    blk.for_each(H, [&](int64_t j) {
      if constexpr (LN) save_stats(st + 2, j, mean_c, rstd_c);
      const A c = cell[L::c_new * H + j];
      A cn = c;
      if constexpr (LN) {
        A chat;
        cn = ln_feature(c, mean_c, rstd_c, ln_cw, ln_cb, j, chat);
      }
      const A w_co = PEEP ? to_acc(w_ch[(G - 2) * H + j]) : A(0);
      A o, tanh_cn, h;
      LSTMVariantCell::forward_output<PEEP, A>(act[L::o * H + j], c, cn, w_co, o, tanh_cn, h);
      act[L::o * H + j] = o;
      cell[L::tanh_c * H + j] = tanh_cn;
      c_state[j] = a.zone_c.on ? Zoneout::forward<A>(c, cell[L::c_prev * H + j],
                                                     zone_keep<T>(a.zone_c, r * H, j))
                               : c;
      if (a.proj) {
        out<T>(a.hraw)[r * H + j] = from_acc<T>(h);
      } else {  // Hout == H: this thread read h_state[j] above (same partition)
        if (a.zone_h.on) {
          h = Zoneout::forward<A>(h, h_state[j], zone_keep<T>(a.zone_h, r * Ho, j));
        }
        out<T>(a.y)[r * Ho + j] = from_acc<T>(h);
        h_state[j] = h;
      }
    });
  }
};

// Backward, row kernel, per row: [ln] the two LN_c row sums of dcn w_c and dcn w_c chat; per unit j
// the output half, LN_c's backward, zoneout of c and the state half (dP, dc_{t-1}); [ln] the two
// LN_hh row sums of dP w_hh and dP w_hh hhat, then dHP per feature.
template <typename T, bool LN, bool PEEP, bool CIFG>
struct LstmRowBwdOp {
  LstmBwdArgs a;

  template <class Blk>
  FRNN_HD void operator()(const Blk& blk, int64_t r) const {
    using A = acc_t<T>;
    constexpr int64_t G = CIFG ? 3 : 4;
    const int64_t H = a.hidden, Ho = a.hidden_out, GH = G * H;
    using L = LstmAct<G>;
    const A* act = in<A>(a.act) + r * L::blocks * H;
    const A* cell = act + L::cell * H;
    const A* st = LN ? in<A>(a.stats) + r * 4 : nullptr;
    const T *ln_cw = in<T>(a.ln_c_w), *w_ch = in<T>(a.w_ch);
    A* dc_state = out<A>(a.dc_state) + r * H;
    A* dg = out<A>(a.dgates) + r * GH;
    A* dh_state = a.proj ? nullptr : out<A>(a.dh_state) + r * Ho;

    // total gradient reaching y_t (= the zoned-out h_t) without proj; dh~ W_hr with proj
    auto dh_total = [&](int64_t j) -> A {
      if (a.proj) return in<A>(a.dh_raw)[r * H + j];
      return to_acc(in<T>(a.dy)[r * Ho + j]) + dh_state[j];
    };
    auto dh_new = [&](int64_t j, A dh) -> A {  // the part reaching h~ (zoneout's backward)
      if (a.proj || !a.zone_h.on) return dh;
      A dnew, dold;
      Zoneout::backward<A>(dh, zone_keep<T>(a.zone_h, r * Ho, j), dnew, dold);
      return dnew;
    };
    const A mean_c = LN ? st[2] : A(0), rstd_c = LN ? st[3] : A(1);
    auto chat = [&](int64_t j) {
      return LayerNorm::normalize<A>(cell[L::c_new * H + j], mean_c, rstd_c);
    };
    A m1 = A(0), m2 = A(0);
    if constexpr (LN) {
      A* dcn = out<A>(a.dcn) + r * H;
      A* pcn = out<A>(a.pcn) + r * H;
      blk.for_each(H, [&](int64_t j) {
        A dpo, d;
        LSTMVariantCell::backward_output<A>(dh_new(j, dh_total(j)), act[L::o * H + j],
                                            cell[L::tanh_c * H + j], dpo, d);
        dcn[j] = d;
        pcn[j] = d * chat(j);
      });
      ln_row_means(blk, H, dcn, ln_cw, chat, m1, m2);
    }
    blk.for_each(H, [&](int64_t j) {
      const A dh = dh_total(j);
      A dpo, dcn;
      LSTMVariantCell::backward_output<A>(dh_new(j, dh), act[L::o * H + j],
                                          cell[L::tanh_c * H + j], dpo, dcn);
      A dc = dcn;
      if constexpr (LN) {
        dc = LayerNorm::backward<A>(LayerNorm::dxhat<A>(dcn, to_acc(ln_cw[j])), chat(j), rstd_c,
                                    m1, m2);
      }
      // zoneout of c: c_t = keep c_{t-1} + (1 - keep) c~
      const A dct = dc_state[j];
      A dnew = dct, dold = A(0);
      if (a.zone_c.on) Zoneout::backward<A>(dct, zone_keep<T>(a.zone_c, r * H, j), dnew, dold);
      dc += dnew;
      const A i = act[L::i * H + j];
      const A f = CIFG ? A(1) - i : act[L::f * H + j];
      const A w_ci = PEEP ? to_acc(w_ch[j]) : A(0);
      const A w_cf = PEEP && !CIFG ? to_acc(w_ch[H + j]) : A(0);
      const A w_co = PEEP ? to_acc(w_ch[(G - 2) * H + j]) : A(0);
      A dpi, dpf, dpg, dc_prev;
      LSTMVariantCell::backward_state<PEEP, CIFG, A>(dc, dpo, i, f, act[L::g * H + j],
                                                     cell[L::c_prev * H + j], w_ci, w_cf, w_co,
                                                     dpi, dpf, dpg, dc_prev);
      dc_state[j] = dc_prev + dold;
      dg[L::i * H + j] = dpi;
      if constexpr (!CIFG) dg[L::f * H + j] = dpf;
      dg[L::g * H + j] = dpg;
      dg[L::o * H + j] = dpo;
      if (!a.proj) {  // direct part of dh_{t-1}; the caller adds dHP W_hh
        A direct = A(0);
        if (a.zone_h.on) direct = zone_keep<T>(a.zone_h, r * Ho, j) * dh;
        dh_state[j] = direct;
      }
    });
    if constexpr (LN) {
      ln_row_backward<T>(blk, GH, dg, in<T>(a.ln_hh_w), in<A>(a.hhat) + r * GH, st[1],
                         out<A>(a.dhp) + r * GH);
    }
  }
};

template <typename T>
FRNN_HD acc_t<T> zone_keep_at(const ZoneStepArgs& a, int64_t idx) {
  const int64_t j = idx % a.width;
  return zone_keep<T>(a.zone, idx - j, j);
}

// The projection's zoneout (ZoneStepArgs), elementwise. h_{t-1} is read from the acc state, not
// from the rounded copy in h_prev; rows of the state are the step's first rows.
template <typename T>
struct ZoneFwdOp {
  ZoneStepArgs a;

  FRNN_HD void operator()(int64_t idx) const {
    using A = acc_t<T>;
    A* h_state = out<A>(a.state) + idx;
    A h = in<A>(a.src)[idx];
    if (a.zone.on) h = Zoneout::forward<A>(h, *h_state, zone_keep_at<T>(a, idx));
    out<T>(a.dst)[idx] = from_acc<T>(h);
    *h_state = h;
  }
};

template <typename T>
struct ZoneBwdOp {
  ZoneStepArgs a;

  FRNN_HD void operator()(int64_t idx) const {
    using A = acc_t<T>;
    A* dhs = out<A>(a.state) + idx;
    const A dh = to_acc(in<T>(a.src)[idx]) + *dhs;
    A dnew = dh, dold = A(0);
    if (a.zone.on) Zoneout::backward<A>(dh, zone_keep_at<T>(a, idx), dnew, dold);
    out<A>(a.dst)[idx] = dnew;
    *dhs = dold;
  }
};

cudaError_t lstm_forward_step(DType dt, const LstmFwdArgs& a, cudaStream_t s) {
  return launch_status(
      a.any() ? dispatch_op<LstmRowFwdOp>(dt, a, RowKernelRun{s, a.rows, a.hidden},
                                          a.ln_hh_w != nullptr, a.w_ch != nullptr, a.cifg)
              : dispatch_op<LstmFwdOp>(dt, a, KernelRun{s, a.rows * a.hidden}, a.b_hh != nullptr,
                                       a.h_prev != nullptr, a.proj));
}

cudaError_t lstm_backward_step(DType dt, const LstmBwdArgs& a, cudaStream_t s) {
  return launch_status(
      a.any() ? dispatch_op<LstmRowBwdOp>(dt, a, RowKernelRun{s, a.rows, a.hidden},
                                          a.ln_hh_w != nullptr, a.w_ch != nullptr, a.cifg)
              : dispatch_op<LstmBwdOp>(dt, a, KernelRun{s, a.rows * a.hidden}, a.proj));
}

cudaError_t zone_forward(DType dtype, const ZoneStepArgs& a, cudaStream_t stream) {
  return launch_status(dispatch_plain<ZoneFwdOp>(dtype, a, KernelRun{stream, a.rows * a.width}));
}

cudaError_t zone_backward(DType dtype, const ZoneStepArgs& a, cudaStream_t stream) {
  return launch_status(dispatch_plain<ZoneBwdOp>(dtype, a, KernelRun{stream, a.rows * a.width}));
}

}  // namespace cuda
}  // namespace fusedrnn
