// One variant layer (layer norm, zoneout, peephole, cifg), one direction, of the CUDA backend:
// the time loop around the per-step row kernels. ATen only, instantiated and tested as
// layer_driver.h, whose Launch and shared loop parts it uses with the variant launchers.
//
// Forward: XP = X W_ih^T for every step; xg = LN_ih(XP) + LN_ih bias + b_ih (ATen, all rows at
// once: layer norm is per row). Per step t (rows active rows from packed row start):
//   hg[:rows] = h_state[:rows] W_hh^T                          (GEMM)
//   row kernel: LN_hh, gates, peephole, cifg, c, LN_c, h, zoneout; saved activations
//   (proj) y_t = hraw_t W_hr^T; zone_forward: zoneout of y_t, h_state[:rows] = y_t
// Backward, the steps in the opposite order:
//   (proj) zone_backward: dht = (1 - keep)(dy_t + dh_state), dh_state = keep (..);
//          dh_raw = dht W_hr
//   row kernel: dP_t (gate pre-activations), dc_{t-1}, direct part of dh_{t-1}, dHP_t
//   dh_state[:rows] += dHP_t W_hh                              (GEMM)
// then over all steps: dXP = LN_ih backward of dP (ATen), dX = dXP W_ih, dW_ih = dXP^T X,
// dW_hh = dHP^T H_prev, dW_hr = dHt^T Hraw, and every bias / gain / peephole gradient as a
// deterministic column sum (column_sum, two passes, no atomics) of dP, dS (GRU's recurrent
// side; LSTM: dP) or of their products with the saved normalised values.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "cuda/layer_driver.h"

namespace fusedrnn {
namespace cuda {

struct VariantConfig {
  bool lstm, ln, peep, cifg, proj;
  double p_h, p_c, eps;
  int64_t G, H, Hout, B, N;
};

inline ZoneArgs zone_args(const at::Tensor& mask, int64_t start, int64_t rows, double p) {
  ZoneArgs z{};
  z.mask = mask.defined() ? mask.narrow(0, start, rows).data_ptr() : nullptr;
  z.p = p;
  z.on = mask.defined() || p > 0;
  return z;
}

// Returns {y [N, Hout], h_n [B, Hout], c_n [B, H] (LSTM), act [N, GH] acc, cell [N, 3H] acc
// (LSTM), hhat [N, GH] acc (ln), stats [N, 4] acc (ln), h_prev [N, Hout], hraw [N, H] (proj),
// xhat_ih [N, GH] acc (ln), rstd_ih [N, 1] acc (ln)}; the per-row buffers are [N, .] when
// `save`, else [B, .] scratch. Absent ones are undefined. Operands contiguous, one dtype.
template <class Launch>
std::vector<at::Tensor> variant_forward(
    Launch& launch, const VariantConfig& v,
    const at::Tensor& x,        // [N, I]
    const at::Tensor& h0,       // [B, Hout]
    const at::Tensor& c0,       // [B, H] (LSTM)
    const at::Tensor& w_ih,     // [GH, I]
    const at::Tensor& w_hh,     // [GH, Hout]
    const at::Tensor& b_ih,     // [GH] or undefined
    const at::Tensor& b_hh,     // [GH] or undefined
    const at::Tensor& w_hr,     // [Hout, H] (proj)
    const at::Tensor& ln_ih_w,  // [GH] (ln)
    const at::Tensor& ln_ih_b,  // [GH] or undefined
    const at::Tensor& ln_hh_w,  // [GH] (ln)
    const at::Tensor& ln_hh_b,  // [GH] or undefined
    const at::Tensor& ln_c_w,   // [H] (ln, LSTM)
    const at::Tensor& ln_c_b,   // [H] or undefined
    const at::Tensor& w_ch,     // [P, H] (peep)
    const at::Tensor& mask_h,   // [N, Hout] or undefined
    const at::Tensor& mask_c,   // [N, H] or undefined
    const std::vector<int64_t>& sizes, bool reverse, bool save) {
  const int64_t GH = v.G * v.H, H = v.H, Hout = v.Hout, B = v.B, N = v.N;
  const DType dt = dtype_of(x);
  const at::ScalarType A = acc_type_of(x);
  const auto acc = x.options().dtype(A);
  const int64_t R = save ? N : B;  // rows of the per-row buffers
  // float operands for the per-step GEMM whose result is carried (see layer_driver.h)
  const at::Tensor w_hh_acc = w_hh.to(A);  // [GH, Hout]

  at::Tensor xg, xhat_ih, rstd_ih;  // [N, GH] T, [N, GH] acc, [N, 1] acc
  if (v.ln) {
    const at::Tensor xp = at::mm(x, w_ih.t()).to(acc_type_of(x));
    const at::Tensor xc = xp - xp.mean(1, /*keepdim=*/true);
    rstd_ih = ((xc * xc).mean(1, true) + v.eps).rsqrt();
    xhat_ih = xc * rstd_ih;
    at::Tensor g = xhat_ih * ln_ih_w.to(acc_type_of(x));
    if (ln_ih_b.defined()) g = g + ln_ih_b;
    if (b_ih.defined()) g = g + b_ih;
    xg = g.to(x.scalar_type()).contiguous();
  } else {
    xg = input_side(x, w_ih, b_ih);
  }
  // no W_hr in acc: the projection GEMM below runs in x's dtype
  const Carried st = carried(w_hh_acc, at::Tensor(), h0, c0, v.lstm, H);
  at::Tensor y = at::empty({N, Hout}, x.options());
  at::Tensor hg = at::empty({B, GH}, acc);
  at::Tensor act = at::empty({R, v.lstm ? GH : 4 * H}, acc);
  at::Tensor cell = v.lstm ? at::empty({R, 3 * H}, acc) : at::Tensor();
  at::Tensor hhat = v.ln ? at::empty({R, GH}, acc) : at::Tensor();
  at::Tensor stats = v.ln ? at::empty({R, 4}, acc) : at::Tensor();
  at::Tensor h_prev = at::empty({R, Hout}, x.options());
  at::Tensor hraw = v.proj ? at::empty({R, H}, x.options()) : at::Tensor();

  for (const Step& s : visit_order(sizes, B, reverse)) {
    const int64_t so = save ? s.start : 0;
    at::Tensor y_t = y.narrow(0, s.start, s.rows);
    auto step_args = [&](auto a) {  // starts the step, with the fields both cells share
      a = begin_step(s, st, hg, xg, b_hh, y_t, H, a);
      a.ln_hh_w = ptr(ln_hh_w);
      a.ln_hh_b = ptr(ln_hh_b);
      a.zone_h = zone_args(mask_h, s.start, s.rows, v.p_h);
      a.h_prev = h_prev.narrow(0, so, s.rows).data_ptr();
      a.act = act.narrow(0, so, s.rows).data_ptr();
      a.hhat = ptr(rows_of(hhat, so, s.rows));
      a.stats = ptr(rows_of(stats, so, s.rows));
      a.eps = v.eps;
      return a;
    };
    if (v.lstm) {
      LstmVarFwdArgs a = step_args(LstmVarFwdArgs{});
      a.ln_c_w = ptr(ln_c_w);
      a.ln_c_b = ptr(ln_c_b);
      a.w_ch = ptr(w_ch);
      a.zone_c = zone_args(mask_c, s.start, s.rows, v.p_c);
      a.c_state = st.c.data_ptr();
      a.hraw = ptr(rows_of(hraw, so, s.rows));
      a.cell = cell.narrow(0, so, s.rows).data_ptr();
      a.proj = v.proj;
      a.hidden_out = Hout;
      launch(lstm_variant_forward, dt, v.ln, v.peep, v.cifg, a);
      if (v.proj) {
        at::mm_out(y_t, hraw.narrow(0, so, s.rows), w_hr.t());  // zone_forward: h_state
        ZoneFwdArgs z{};
        z.y = y_t.data_ptr();
        z.h_state = st.h.data_ptr();
        z.zone = zone_args(mask_h, s.start, s.rows, v.p_h);
        z.rows = s.rows;
        z.width = Hout;
        launch(zone_forward, dt, z);
      }
    } else {
      launch(gru_variant_forward, dt, v.ln, step_args(GruVarFwdArgs{}));
    }
  }
  at::Tensor c_n = v.lstm ? st.c.to(x.scalar_type()) : at::Tensor();
  return {y, st.h.to(x.scalar_type()), c_n, act, cell, hhat, stats, h_prev, hraw, xhat_ih,
          rstd_ih};
}

// Returns the gradients of {x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, ln_ih_w, ln_ih_b,
// ln_hh_w, ln_hh_b, ln_c_w, ln_c_b, w_ch}, undefined for absent inputs. `fwd` is the forward's
// return value (run with save = true); has[k] says whether input k is present.
template <class Launch>
std::vector<at::Tensor> variant_backward(
    Launch& launch, const VariantConfig& v,
    const at::Tensor& dy,       // [N, Hout]
    const at::Tensor& dh_n,     // [B, Hout]
    const at::Tensor& dc_n,     // [B, H] (LSTM) or undefined
    const at::Tensor& x,        // [N, I]
    const at::Tensor& w_ih,     // [GH, I]
    const at::Tensor& w_hh,     // [GH, Hout]
    const at::Tensor& w_hr,     // [Hout, H] (proj)
    const at::Tensor& ln_ih_w,  // [GH] (ln)
    const at::Tensor& ln_hh_w,  // [GH] (ln)
    const at::Tensor& ln_c_w,   // [H] (ln, LSTM)
    const at::Tensor& w_ch,     // [P, H] (peep)
    const at::Tensor& mask_h,   // [N, Hout] or undefined
    const at::Tensor& mask_c,   // [N, H] or undefined
    const std::vector<bool>& has, const std::vector<int64_t>& sizes, bool reverse,
    const std::vector<at::Tensor>& fwd) {
  const int64_t G = v.G, GH = G * v.H, H = v.H, Hout = v.Hout, B = v.B, N = v.N;
  const DType dt = dtype_of(x);
  const at::ScalarType T = x.scalar_type(), A = acc_type_of(x);
  const auto acc = x.options().dtype(A);
  const Carried st = carried(w_hh, w_hr, dh_n, dc_n, v.lstm, H);
  const at::Tensor &dh_state = st.h, &dc_state = st.c;  // [B, Hout], [B, H]
  const at::Tensor &act = fwd[3], &cell = fwd[4], &hhat = fwd[5], &stats = fwd[6],
                   &h_prev = fwd[7], &hraw = fwd[8], &xhat_ih = fwd[9], &rstd_ih = fwd[10];

  at::Tensor dP = at::empty({N, GH}, acc);                  // gates / input side
  at::Tensor dS = v.lstm ? dP : at::empty({N, GH}, acc);    // recurrent side
  at::Tensor dHP = v.ln ? at::empty({N, GH}, acc) : dS;     // before LN_hh
  at::Tensor dcn = v.lstm && v.ln ? at::empty({N, H}, acc) : at::Tensor();
  at::Tensor pcn = v.lstm && v.ln ? at::empty({N, H}, acc) : at::Tensor();
  at::Tensor dht = v.proj ? at::empty({N, Hout}, acc) : at::Tensor();
  at::Tensor dhraw = v.proj ? at::empty({B, H}, acc) : at::Tensor();

  for (const Step& s : visit_order(sizes, B, !reverse)) {  // the forward's steps, last first
    at::Tensor dh_rows = dh_state.narrow(0, 0, s.rows);
    auto step_args = [&](auto a) {  // the fields both cells' arguments share
      a.act = act.narrow(0, s.start, s.rows).data_ptr();
      a.hhat = ptr(rows_of(hhat, s.start, s.rows));
      a.stats = ptr(rows_of(stats, s.start, s.rows));
      a.ln_hh_w = ptr(ln_hh_w);
      a.dhp = ptr(rows_of(v.ln ? dHP : at::Tensor(), s.start, s.rows));
      a.rows = s.rows;
      a.hidden = H;
      return a;
    };
    auto with_dy = [&](auto& a) {  // dh_t = dy_t + dh_state, zoneout of h in the row kernel
      a.dy = dy.narrow(0, s.start, s.rows).data_ptr();
      a.dh_state = dh_state.data_ptr();
      a.zone_h = zone_args(mask_h, s.start, s.rows, v.p_h);
    };
    if (v.lstm) {
      LstmVarBwdArgs a = step_args(LstmVarBwdArgs{});
      if (v.proj) {
        ZoneBwdArgs z{};
        z.dy = dy.narrow(0, s.start, s.rows).data_ptr();
        z.dh_state = dh_state.data_ptr();
        z.dht = dht.narrow(0, s.start, s.rows).data_ptr();
        z.zone = zone_args(mask_h, s.start, s.rows, v.p_h);
        z.rows = s.rows;
        z.width = Hout;
        launch(zone_backward, dt, z);
        at::Tensor dhraw_t = dhraw.narrow(0, 0, s.rows);
        at::mm_out(dhraw_t, dht.narrow(0, s.start, s.rows), st.w_hr);
        a.dh_raw = dhraw_t.data_ptr();
      } else {
        with_dy(a);
      }
      a.zone_c = zone_args(mask_c, s.start, s.rows, v.p_c);
      a.dc_state = dc_state.data_ptr();
      a.cell = cell.narrow(0, s.start, s.rows).data_ptr();
      a.ln_c_w = ptr(ln_c_w);
      a.w_ch = ptr(w_ch);
      a.dgates = dP.narrow(0, s.start, s.rows).data_ptr();
      a.dcn = ptr(rows_of(dcn, s.start, s.rows));
      a.pcn = ptr(rows_of(pcn, s.start, s.rows));
      a.proj = v.proj;
      a.hidden_out = Hout;
      launch(lstm_variant_backward, dt, v.ln, v.peep, v.cifg, a);
    } else {
      GruVarBwdArgs a = step_args(GruVarBwdArgs{});
      with_dy(a);
      a.h_prev = h_prev.narrow(0, s.start, s.rows).data_ptr();
      a.dxg = dP.narrow(0, s.start, s.rows).data_ptr();
      a.dhg = dS.narrow(0, s.start, s.rows).data_ptr();
      launch(gru_variant_backward, dt, v.ln, a);
    }
    dh_rows.addmm_(dHP.narrow(0, s.start, s.rows), st.w_hh);  // + the kernel's direct part
  }

  std::vector<at::Tensor> g(15);
  at::Tensor dXP = dP;  // gradient of X W_ih^T
  if (v.ln) {
    // LN_ih backward, all rows at once: dxhat = dP w, dXP = rstd (dxhat - mean(dxhat)
    // - xhat mean(dxhat xhat)) (csrc/cell_math.h, LayerNorm)
    const at::Tensor dxh = dP * ln_ih_w.to(A);
    dXP = rstd_ih * (dxh - dxh.mean(1, true) - xhat_ih * (dxh * xhat_ih).mean(1, true));
  }
  g[0] = acc_mm(dXP, w_ih, T);        // dx [N, I]
  g[1] = dh_state.to(T);              // dh0 [B, Hout]
  if (v.lstm) g[2] = dc_state.to(T);  // dc0 [B, H]
  g[3] = acc_mm(dXP.t(), x, T);       // dW_ih [GH, I]
  g[4] = acc_mm(dHP.t(), h_prev, T);  // dW_hh [GH, Hout]
  if (has[5]) g[5] = column_sum_of(launch, dP, T);  // db_ih: the input side's pre-activations
  if (has[6]) g[6] = column_sum_of(launch, dS, T);  // db_hh: the recurrent side's
  if (v.proj) g[7] = acc_mm(dht.t(), hraw, T);  // dW_hr [Hout, H]
  if (v.ln) {
    g[8] = column_sum_of(launch, dP * xhat_ih, T);
    if (has[9]) g[9] = column_sum_of(launch, dP, T);
    g[10] = column_sum_of(launch, dS * hhat, T);
    if (has[11]) g[11] = column_sum_of(launch, dS, T);
    if (v.lstm) {
      g[12] = column_sum_of(launch, pcn, T);
      if (has[13]) g[13] = column_sum_of(launch, dcn, T);
    }
  }
  if (v.peep) {
    // rows w_ci, w_cf, w_co (cifg: w_ci, w_co): dP_i c_{t-1}, dP_f c_{t-1}, dP_o c~_t
    const at::Tensor& dPa = dP;
    const at::Tensor c_prev = cell.narrow(1, 0, H), c_new = cell.narrow(1, H, H);
    std::vector<at::Tensor> rows{column_sum_of(launch, dPa.narrow(1, 0, H) * c_prev, T)};
    if (!v.cifg) rows.push_back(column_sum_of(launch, dPa.narrow(1, H, H) * c_prev, T));
    rows.push_back(column_sum_of(launch, dPa.narrow(1, (G - 1) * H, H) * c_new, T));
    g[14] = at::stack(rows);
  }
  return g;
}

}  // namespace cuda
}  // namespace fusedrnn
