// LSTM variant row functors (layer norm LN, peephole PEEP, coupled input-forget gate CIFG as
// template bools; zoneout and the projection as uniform runtime branches). Host+device code
// run by the kernels (launched by lstm_variants.cu) and by the host harness. One call
// handles one batch row r of one step (see rowblock.cuh). Per-element math: LayerNorm, Zoneout,
// LSTMVariantCell in csrc/cell_math.h.
#pragma once

#include "cuda/rowblock.cuh"
#include "cuda/launchers.h"

namespace fusedrnn {
namespace cuda {

// keep value of element j of a zoneout (mask row or p)
template <typename T>
FRNN_HD acc_t<T> zone_keep(const ZoneArgs& z, int64_t row_offset, int64_t j) {
  using A = acc_t<T>;
  return z.mask != nullptr ? to_acc(in<T>(z.mask)[row_offset + j]) : static_cast<A>(z.p);
}

// Layer norm statistics of one row of K features: mean and 1/std, from two block sums.
template <typename A, class Blk>
FRNN_HD void ln_row_stats(const Blk& blk, int64_t K, const A* x, double eps, A& mean, A& rstd) {
  mean = blk.template sum<A>(K, [&](int64_t k) { return x[k]; }) / A(K);
  const A var = blk.template sum<A>(K, [&](int64_t k) {
    const A d = x[k] - mean;
    return d * d;
  }) / A(K);
  rstd = LayerNorm::rstd<A>(var, A(eps));
}

// LayerNorm::forward of feature e with weight w[e] and bias b[e] (no bias when b is null).
template <typename T, typename A>
FRNN_HD A ln_feature(A v, A mean, A rstd, const T* w, const T* b, int64_t e, A& xhat) {
  return LayerNorm::forward<A>(v, mean, rstd, to_acc(w[e]), b != nullptr ? to_acc(b[e]) : A(0),
                               xhat);
}

// Layer norm backward over one row of K features (LN_hh of either cell):
// dv[k] = LayerNorm::backward(dout[k] w[k], xhat[k]), whose two row means are block sums.
template <typename T, typename A, class Blk>
FRNN_HD void ln_row_backward(const Blk& blk, int64_t K, const A* dout, const T* w,
                             const A* xhat, A rstd, A* dv) {
  const A n1 = blk.template sum<A>(K, [&](int64_t k) {
    return LayerNorm::dxhat<A>(dout[k], to_acc(w[k]));
  }) / A(K);
  const A n2 = blk.template sum<A>(K, [&](int64_t k) {
    return LayerNorm::dxhat<A>(dout[k], to_acc(w[k])) * xhat[k];
  }) / A(K);
  blk.for_each(K, [&](int64_t k) {
    dv[k] = LayerNorm::backward<A>(LayerNorm::dxhat<A>(dout[k], to_acc(w[k])), xhat[k], rstd, n1,
                                   n2);
  });
}

// Forward, per row: [ln] mean / variance of the G*H recurrent features; first half per unit j
// (gates with LN_hh and biases, peephole i / f, c~); [ln] mean / variance of c~ over H; second
// half per unit (LN_c, o with peephole, h, zoneout of c and, without proj, of h).
template <typename T, bool LN, bool PEEP, bool CIFG>
struct LstmVarFwdOp {
  LstmVarFwdArgs a;

  template <class Blk>
  FRNN_HD void operator()(const Blk& blk, int64_t r) const {
    using A = acc_t<T>;
    constexpr int64_t G = CIFG ? 3 : 4;
    const int64_t H = a.hidden, Ho = a.hidden_out, GH = G * H;
    const T* xg = in<T>(a.xg) + r * GH;
    const A* hg = in<A>(a.hg) + r * GH;
    const T* b_hh = in<T>(a.b_hh);
    const T* ln_w = in<T>(a.ln_hh_w);
    const T* ln_b = in<T>(a.ln_hh_b);
    const T* w_ch = in<T>(a.w_ch);
    A* act = out<A>(a.act) + r * GH;
    A* cell = out<A>(a.cell) + r * 3 * H;  // c_{t-1} | c~ | tanh(cn)
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
      if constexpr (LN) {
        v = ln_feature(v, mean, rstd, ln_w, ln_b, e, hhat[e]);
      }
      if (b_hh != nullptr) v += to_acc(b_hh[e]);
      return v + to_acc(xg[e]);
    };
    blk.for_each(H, [&](int64_t j) {
      if constexpr (LN) {
        if (j == 0) {
          st[0] = mean;
          st[1] = rstd;
        }
      }
      const A c_prev = c_state[j];
      const A w_ci = PEEP ? to_acc(w_ch[j]) : A(0);
      const A w_cf = PEEP && !CIFG ? to_acc(w_ch[H + j]) : A(0);
      A pf = A(0);
      if constexpr (!CIFG) pf = pre(1, j);
      A i, f, g, c;
      LSTMVariantCell::forward_state<PEEP, CIFG, A>(pre(0, j), pf, pre(G - 2, j), c_prev, w_ci,
                                                   w_cf, i, f, g, c);
      act[j] = i;
      if constexpr (!CIFG) act[H + j] = f;
      act[(G - 2) * H + j] = g;
      act[(G - 1) * H + j] = pre(G - 1, j);  // o's pre-activation until the second half
      cell[j] = c_prev;
      cell[H + j] = c;
    });
    A mean_c = A(0), rstd_c = A(1);
    if constexpr (LN) ln_row_stats(blk, H, cell + H, a.eps, mean_c, rstd_c);
    const T* ln_cw = in<T>(a.ln_c_w);
    const T* ln_cb = in<T>(a.ln_c_b);
    blk.for_each(H, [&](int64_t j) {
      if constexpr (LN) {
        if (j == 0) {
          st[2] = mean_c;
          st[3] = rstd_c;
        }
      }
      const A c = cell[H + j];
      A cn = c;
      if constexpr (LN) {
        A chat;
        cn = ln_feature(c, mean_c, rstd_c, ln_cw, ln_cb, j, chat);
      }
      const A w_co = PEEP ? to_acc(w_ch[(G - 2) * H + j]) : A(0);
      A o, tanh_cn, h;
      LSTMVariantCell::forward_output<PEEP, A>(act[(G - 1) * H + j], c, cn, w_co, o, tanh_cn, h);
      act[(G - 1) * H + j] = o;
      cell[2 * H + j] = tanh_cn;
      c_state[j] = a.zone_c.on ? Zoneout::forward<A>(c, cell[j], zone_keep<T>(a.zone_c, r * H, j))
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

// Backward, per row: [ln] the two LN_c row sums of dcn w_c and dcn w_c chat; per unit j the
// output half, LN_c's backward, zoneout of c and the state half (dP, dc_{t-1}); [ln] the two
// LN_hh row sums of dP w_hh and dP w_hh hhat, then dHP per feature.
template <typename T, bool LN, bool PEEP, bool CIFG>
struct LstmVarBwdOp {
  LstmVarBwdArgs a;

  template <class Blk>
  FRNN_HD void operator()(const Blk& blk, int64_t r) const {
    using A = acc_t<T>;
    constexpr int64_t G = CIFG ? 3 : 4;
    const int64_t H = a.hidden, Ho = a.hidden_out, GH = G * H;
    const A* act = in<A>(a.act) + r * GH;
    const A* cell = in<A>(a.cell) + r * 3 * H;
    const A* st = LN ? in<A>(a.stats) + r * 4 : nullptr;
    const T* ln_cw = in<T>(a.ln_c_w);
    const T* w_ch = in<T>(a.w_ch);
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
    auto chat = [&](int64_t j) { return LayerNorm::normalize<A>(cell[H + j], mean_c, rstd_c); };
    A m1 = A(0), m2 = A(0);
    if constexpr (LN) {
      A* dcn = out<A>(a.dcn) + r * H;
      A* pcn = out<A>(a.pcn) + r * H;
      blk.for_each(H, [&](int64_t j) {
        A dpo, d;
        LSTMVariantCell::backward_output<A>(dh_new(j, dh_total(j)), act[(G - 1) * H + j],
                                            cell[2 * H + j], dpo, d);
        dcn[j] = d;
        pcn[j] = d * chat(j);
      });
      m1 = blk.template sum<A>(H, [&](int64_t j) {
        return LayerNorm::dxhat<A>(dcn[j], to_acc(ln_cw[j]));
      }) / A(H);
      m2 = blk.template sum<A>(H, [&](int64_t j) {
        return LayerNorm::dxhat<A>(dcn[j], to_acc(ln_cw[j])) * chat(j);
      }) / A(H);
    }
    blk.for_each(H, [&](int64_t j) {
      const A dh = dh_total(j);
      A dpo, dcn;
      LSTMVariantCell::backward_output<A>(dh_new(j, dh), act[(G - 1) * H + j], cell[2 * H + j],
                                          dpo, dcn);
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
      const A i = act[j];
      const A f = CIFG ? A(1) - i : act[H + j];
      const A w_ci = PEEP ? to_acc(w_ch[j]) : A(0);
      const A w_cf = PEEP && !CIFG ? to_acc(w_ch[H + j]) : A(0);
      const A w_co = PEEP ? to_acc(w_ch[(G - 2) * H + j]) : A(0);
      A dpi, dpf, dpg, dc_prev;
      LSTMVariantCell::backward_state<PEEP, CIFG, A>(dc, dpo, i, f, act[(G - 2) * H + j],
                                                     cell[j], w_ci, w_cf, w_co, dpi, dpf, dpg,
                                                     dc_prev);
      dc_state[j] = dc_prev + dold;
      dg[j] = dpi;
      if constexpr (!CIFG) dg[H + j] = dpf;
      dg[(G - 2) * H + j] = dpg;
      dg[(G - 1) * H + j] = dpo;
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

}  // namespace cuda
}  // namespace fusedrnn
