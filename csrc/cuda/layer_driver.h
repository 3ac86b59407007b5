// One layer, one direction, of the CUDA backend: the time loop around the per-step kernels, for
// every cell (lstm, gru, rnn_tanh, rnn_relu) and every option (layer norm, zoneout, peephole,
// cifg, projection).
//
// ATen only (no CUDA headers): the GEMMs are ATen calls, the per-step kernels are reached
// through a `Launch` (layer_module.h). bindings.cpp instantiates it with the CUDA launchers
// (GEMMs go to cuBLAS on the current stream); the test-suite with the host harness
// (csrc/cuda/harness/host_driver.cpp) on CPU tensors, so this exact loop is tested here.
//
// Forward: XP = X W_ih^T for every step; xg = XP + b_ih, with layer norm LN_ih(XP) + LN_ih bias
// + b_ih (ATen, all rows at once: layer norm is per row). Per step t (`rows` active rows from
// packed row `start`):
//   hg[:rows] = h_state[:rows] W_hh^T                          (GEMM)
//   kernel: [LN_hh], gates, [peephole, cifg], c, [LN_c], h, [zoneout]; saved activations
//   (proj) hy = hraw_t W_hr^T; zone_forward: zoneout of hy, y_t and h_state[:rows]
// For half and bfloat16 storage, the recurrent state (h_state, c_state), hg, hy and everything
// the backward carries across steps (dh_state, dc_state, dP, dS, dHP, dht, dh_raw) are float, so
// the error stays at the rounding of the stored outputs instead of compounding with T. The GEMMs
// that produce them run on float operands: W_hh and W_hr are converted once per call, hraw per
// step; the weight-gradient GEMMs after the loop convert X, H_prev and Hraw once. On a GPU this
// costs the half-precision tensor-core rate of those GEMMs and doubles the W_hh bytes each step
// reads; ATen's mixed-dtype mm (half operands, float result) would avoid both but has no CPU
// kernel, and the host harness must run this same code.
// Backward, the steps in the opposite order:
//   (proj) zone_backward: dht = (1 - keep)(dy_t + dh_state), dh_state = keep (..);
//          dh_raw = dht W_hr
//   kernel: dP_t (gate pre-activations), dc_{t-1}; GRU: dS_t (recurrent side) and the direct
//          part of dh_{t-1}; row kernel: zoneout's direct part, [ln] dHP_t (before LN_hh)
//   dh_state[:rows] = dHP_t W_hh (+ the direct part, where a kernel left one)   (GEMM)
//          (without layer norm dHP = dS, and dS = dP but for GRU)
// then over all steps: dXP = dP, with layer norm LN_ih's backward of dP (ATen), dX = dXP W_ih,
// dW_ih = dXP^T X, dW_hh = dHP^T H_prev, dW_hr = dHt^T Hraw, and every bias / gain / peephole
// gradient as a deterministic column sum (column_sum, two passes, no atomics) of dP, dS (GRU's
// recurrent side; otherwise dP) or of their products with the saved normalised values.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "cuda/launchers.h"

namespace fusedrnn {
namespace cuda {

enum class CellKind { lstm, gru, rnn_tanh, rnn_relu };

inline CellKind parse_cell(const std::string& cell) {
  if (cell == "lstm") return CellKind::lstm;
  if (cell == "gru") return CellKind::gru;
  if (cell == "rnn_tanh") return CellKind::rnn_tanh;
  if (cell == "rnn_relu") return CellKind::rnn_relu;
  TORCH_CHECK(false, "fusedrnn: unknown cell '", cell, "'; expected lstm, gru, rnn_tanh, rnn_relu");
}

inline DType dtype_of(const at::Tensor& t) {
  const at::ScalarType s = t.scalar_type();
  if (s == at::kFloat) return DType::f32;
  if (s == at::kDouble) return DType::f64;
  if (s == at::kHalf) return DType::f16;
  if (s == at::kBFloat16) return DType::bf16;
  TORCH_CHECK(false, "fusedrnn cuda backend: unsupported dtype ", s,
              " (float32, float64, float16, bfloat16 are supported)");
}

// Accumulation / cell-state dtype: float for half and bfloat16.
inline at::ScalarType acc_type_of(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

inline void* ptr(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

// Rows [start, start + rows) of a per-row buffer; undefined stays undefined.
inline at::Tensor rows_of(const at::Tensor& t, int64_t start, int64_t rows) {
  return t.defined() ? t.narrow(0, start, rows) : t;
}

// The packed rows [start, start + rows) of every step, in the order the direction visits them.
struct Step {
  int64_t start, rows;
};

inline std::vector<Step> visit_order(const std::vector<int64_t>& sizes, int64_t batch,
                                     bool reverse) {
  std::vector<Step> steps;
  int64_t start = 0;
  for (size_t t = 0; t < sizes.size(); ++t) {
    TORCH_CHECK(sizes[t] >= 1 && sizes[t] <= batch && (t == 0 || sizes[t] <= sizes[t - 1]),
                "fusedrnn: batch sizes must be non-increasing and within [1, batch]");
    steps.push_back({start, sizes[t]});
    start += sizes[t];
  }
  if (reverse) std::reverse(steps.begin(), steps.end());
  return steps;
}

inline ZoneArgs zone_args(const at::Tensor& mask, double p, const Step& s) {
  return {ptr(rows_of(mask, s.start, s.rows)), p, mask.defined() || p > 0};
}

// One call of the layer op: its cell, options and operands (checked by layer_module.h), the
// tensors contiguous, in x's dtype, or undefined where absent.
struct Layer : BoolOptions {
  CellKind cell;
  bool reverse;
  double p_h, p_c, eps;
  int64_t G, H, Hout, B, N;
  std::vector<int64_t> sizes;                     // active rows of every step
  at::Tensor x, h0, c0;                           // [N, I], [B, Hout], [B, H] (LSTM)
  at::Tensor w_ih, w_hh, b_ih, b_hh, w_hr;        // [GH, I], [GH, Hout], [GH], [GH], [Hout, H]
  at::Tensor ln_ih_w, ln_ih_b, ln_hh_w, ln_hh_b;  // [GH]
  at::Tensor ln_c_w, ln_c_b;                      // [H] (LSTM)
  at::Tensor w_ch;                                // [P, H] (LSTM)
  at::Tensor mask_h, mask_c;                      // [N, Hout], [N, H] (LSTM)

  // The CellOptions of step s; of Step{} for what no step changes (the kernel, zoneout on).
  CellOptions options(const Step& s = Step{}) const {
    return {*this, ptr(ln_hh_w), ptr(ln_c_w), ptr(w_ch), zone_args(mask_h, p_h, s),
            zone_args(mask_c, p_c, s), eps};
  }
};

// Deterministic column sums of an acc [N, C] matrix (see ColSumArgs), returned in `dtype`.
template <class Launch>
at::Tensor column_sum_of(Launch& launch, const at::Tensor& src, at::ScalarType dtype) {
  const at::Tensor m = src.contiguous();
  const int64_t parts = colsum_parts(m.size(0));
  at::Tensor partial = at::empty({parts, m.size(1)}, m.options().dtype(acc_type_of(m)));
  at::Tensor out = at::empty({m.size(1)}, m.options());
  const ColSumArgs a{m.data_ptr(), partial.data_ptr(), out.data_ptr(), m.size(0), m.size(1), parts};
  if (a.n_cols > 0) launch(column_sum, dtype_of(m), a);
  return out.to(dtype);
}

// a b in a's acc dtype (b converted), returned in `dtype`: the GEMMs after a backward loop.
inline at::Tensor acc_mm(const at::Tensor& a, const at::Tensor& b, at::ScalarType dtype) {
  return at::mm(a, b.to(a.scalar_type())).to(dtype);
}

// What a time loop carries across steps, all acc: W_hh and W_hr (if given; no copy for float and
// double) and a copy of its start state, forward h0, c0 or backward dh_n, dc_n (the gradients
// reaching h_t, c_t from later steps; a missing dc_n is zero). c only for LSTM.
struct Carried {
  at::Tensor w_hh, w_hr, h, c;
};

inline Carried carried(const Layer& L, const at::Tensor& h, const at::Tensor& c) {
  const at::ScalarType A = acc_type_of(h);
  const auto acc = h.options().dtype(A);
  Carried r{L.w_hh.to(A), L.w_hr.defined() ? L.w_hr.to(A) : L.w_hr,
            h.to(acc, false, /*copy=*/true), {}};
  if (L.cell != CellKind::lstm) return r;
  r.c = c.defined() ? c.to(acc, false, /*copy=*/true) : at::zeros({h.size(0), L.H}, acc);
  return r;
}

// Returns {y [N, Hout], h_n [B, Hout], c_n [B, H] (LSTM), act acc (LSTM [N, GH + 3H], GRU
// [N, 4H]; launchers.h), hhat [N, GH] acc (ln), stats [N, 4] acc (ln), h_prev [N, Hout], hraw
// [N, H] (proj), xhat_ih [N, GH] acc (ln), rstd_ih [N, 1] acc (ln)}, absent ones undefined.
// Without `save` the per-row buffers are [B, .] scratch rows where a row kernel runs (it passes
// values between its phases through them; hraw in any case) and undefined otherwise.
template <class Launch>
std::vector<at::Tensor> layer_forward(Launch& launch, const Layer& L, bool save) {
  const at::Tensor &x = L.x, &w_ih = L.w_ih, &b_ih = L.b_ih, &b_hh = L.b_hh, &w_hr = L.w_hr;
  const int64_t GH = L.G * L.H, H = L.H, Hout = L.Hout, B = L.B, N = L.N;
  const bool lstm = L.cell == CellKind::lstm, ln = L.ln_ih_w.defined(), proj = w_hr.defined();
  const DType dt = dtype_of(x);
  const at::ScalarType A = acc_type_of(x);
  const auto acc = x.options().dtype(A);
  const int64_t R = save ? N : B;  // rows of the per-row buffers
  const bool kept = save || L.options().any();  // or a row kernel runs: it needs scratch rows
  auto per_row = [&](bool has, int64_t width, const at::TensorOptions& o) {
    return has && kept ? at::empty({R, width}, o) : at::Tensor();
  };

  at::Tensor xg, xhat_ih, rstd_ih;  // [N, GH] T, [N, GH] acc, [N, 1] acc
  if (ln) {
    const at::Tensor xp = at::mm(x, w_ih.t()).to(A);
    const at::Tensor xc = xp - xp.mean(1, /*keepdim=*/true);
    rstd_ih = ((xc * xc).mean(1, true) + L.eps).rsqrt();
    xhat_ih = xc * rstd_ih;
    at::Tensor g = xhat_ih * L.ln_ih_w.to(A);
    if (L.ln_ih_b.defined()) g = g + L.ln_ih_b;
    if (b_ih.defined()) g = g + b_ih;
    xg = g.to(x.scalar_type()).contiguous();
  } else {
    xg = b_ih.defined() ? at::addmm(b_ih, x, w_ih.t()) : at::mm(x, w_ih.t());
    // the kernels read xg as x's dtype: a retyped GEMM (autocast) would be read out of bounds
    TORCH_CHECK(xg.scalar_type() == x.scalar_type() && xg.is_contiguous(),
                "fusedrnn: the input projection came back as ", xg.scalar_type(), " for ",
                x.scalar_type(), " operands (is autocast excluded?)");
  }
  const Carried st = carried(L, L.h0, L.c0);
  at::Tensor y = at::empty({N, Hout}, x.options());
  at::Tensor hg = at::empty({B, GH}, acc);
  at::Tensor act = per_row(L.cell == CellKind::gru || lstm, lstm ? GH + 3 * H : 4 * H, acc);
  at::Tensor hhat = per_row(ln, GH, acc);
  at::Tensor stats = per_row(ln, 4, acc);
  at::Tensor h_prev = per_row(true, Hout, x.options());
  at::Tensor hraw = proj ? at::empty({R, H}, x.options()) : at::Tensor();
  at::Tensor hy = proj ? at::empty({B, Hout}, acc) : at::Tensor();

  for (const Step& s : visit_order(L.sizes, B, L.reverse)) {
    const int64_t so = save ? s.start : 0;
    at::Tensor y_t = y.narrow(0, s.start, s.rows);
    at::Tensor hg_t = hg.narrow(0, 0, s.rows);
    at::mm_out(hg_t, st.h.narrow(0, 0, s.rows), st.w_hh.t());
    auto saved = [&](const at::Tensor& t) { return ptr(rows_of(t, so, s.rows)); };
    const StepFwdArgs step{xg.narrow(0, s.start, s.rows).data_ptr(), hg_t.data_ptr(), ptr(b_hh),
                           ptr(L.ln_hh_b), st.h.data_ptr(), y_t.data_ptr(), saved(h_prev),
                           s.rows, H};
    const SavedRows<void*> saves{saved(act), saved(hhat), saved(stats)};
    if (lstm) {
      const LstmFwdArgs a{L.options(s), step, saves, ptr(L.ln_c_b), st.c.data_ptr(), saved(hraw),
                          proj, Hout};
      launch(lstm_forward_step, dt, a);
      if (proj) {
        at::Tensor hy_t = hy.narrow(0, 0, s.rows);
        at::mm_out(hy_t, hraw.narrow(0, so, s.rows).to(A), st.w_hr.t());
        launch(zone_forward, dt,
               ZoneStepArgs{hy_t.data_ptr(), a.y, a.h_state, a.zone_h, s.rows, Hout});
      }
    } else if (L.cell == CellKind::gru) {
      launch(gru_forward_step, dt, GruFwdArgs{L.options(s), step, saves});
    } else {
      launch(rnn_forward_step, dt, RnnFwdArgs{step, L.cell == CellKind::rnn_relu});
    }
  }
  at::Tensor c_n = lstm ? st.c.to(x.scalar_type()) : at::Tensor();
  return {y, st.h.to(x.scalar_type()), c_n, act, hhat, stats, h_prev, hraw, xhat_ih, rstd_ih};
}

// Returns the gradients of {x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, ln_ih_w, ln_ih_b,
// ln_hh_w, ln_hh_b, ln_c_w, ln_c_b, w_ch}, undefined for absent inputs. `fwd` is the forward's
// return value (run with save = true).
template <class Launch>
std::vector<at::Tensor> layer_backward(Launch& launch, const Layer& L,
                                       const at::Tensor& dy,    // [N, Hout]
                                       const at::Tensor& dh_n,  // [B, Hout]
                                       const at::Tensor& dc_n,  // [B, H] (LSTM) or undefined
                                       const std::vector<at::Tensor>& fwd) {
  const at::Tensor &x = L.x, &w_ih = L.w_ih, &w_hr = L.w_hr;
  const int64_t G = L.G, GH = G * L.H, H = L.H, Hout = L.Hout, B = L.B, N = L.N;
  const bool lstm = L.cell == CellKind::lstm, gru = L.cell == CellKind::gru;
  const bool ln = L.ln_ih_w.defined(), proj = w_hr.defined();
  const DType dt = dtype_of(x);
  const at::ScalarType T = x.scalar_type(), A = acc_type_of(x);
  const auto acc = x.options().dtype(A);
  const Carried st = carried(L, dh_n, dc_n);
  const at::Tensor &dh_state = st.h, &dc_state = st.c;  // [B, Hout], [B, H]
  const at::Tensor &y = fwd[0], &act = fwd[3], &hhat = fwd[4], &stats = fwd[5],
                   &h_prev = fwd[6], &hraw = fwd[7], &xhat_ih = fwd[8], &rstd_ih = fwd[9];
  // GRU's kernels and zoneout of h (the row kernel, or zone_backward with proj) leave a direct
  // part of dh_{t-1} in dh_state for the GEMM to add to (beta 1); otherwise the GEMM overwrites
  // dh_state[:rows] (beta 0, whatever is there is not read)
  const double direct = (gru || L.options().zone_h.on) ? 1 : 0;

  at::Tensor dP = at::empty({N, GH}, acc);            // gates / input side
  at::Tensor dS = gru ? at::empty({N, GH}, acc) : dP;  // recurrent side
  at::Tensor dHP = ln ? at::empty({N, GH}, acc) : dS;  // before LN_hh
  at::Tensor dcn = lstm && ln ? at::empty({N, H}, acc) : at::Tensor();
  at::Tensor pcn = lstm && ln ? at::empty({N, H}, acc) : at::Tensor();
  at::Tensor dht = proj ? at::empty({N, Hout}, acc) : at::Tensor();
  at::Tensor dhraw = proj ? at::empty({B, H}, acc) : at::Tensor();

  for (const Step& s : visit_order(L.sizes, B, !L.reverse)) {  // the forward's steps, last first
    auto rows = [&](const at::Tensor& t) { return ptr(rows_of(t, s.start, s.rows)); };
    const StepBwdArgs step{rows(dy), dh_state.data_ptr(), ln ? rows(dHP) : nullptr, s.rows, H};
    const SavedRows<const void*> saves{rows(act), rows(hhat), rows(stats)};
    if (lstm) {
      LstmBwdArgs a{L.options(s), step, saves, /*dh_raw, with proj: below*/ nullptr,
                    dc_state.data_ptr(), rows(dP), rows(dcn), rows(pcn), proj, Hout};
      if (proj) {
        launch(zone_backward, dt,
               ZoneStepArgs{a.dy, rows(dht), a.dh_state, a.zone_h, s.rows, Hout});
        at::Tensor dhraw_t = dhraw.narrow(0, 0, s.rows);
        at::mm_out(dhraw_t, dht.narrow(0, s.start, s.rows), st.w_hr);
        a.dh_raw = dhraw_t.data_ptr();
      }
      launch(lstm_backward_step, dt, a);
    } else if (gru) {
      launch(gru_backward_step, dt,
             GruBwdArgs{L.options(s), step, saves, rows(h_prev), rows(dP), rows(dS)});
    } else {
      launch(rnn_backward_step, dt,
             RnnBwdArgs{step, rows(y), rows(dP), L.cell == CellKind::rnn_relu});
    }
    dh_state.narrow(0, 0, s.rows).addmm_(dHP.narrow(0, s.start, s.rows), st.w_hh, direct);
  }

  std::vector<at::Tensor> g(15);
  at::Tensor dXP = dP;  // gradient of X W_ih^T
  if (ln) {
    // LN_ih backward, all rows at once: dxhat = dP w, dXP = rstd (dxhat - mean(dxhat)
    // - xhat mean(dxhat xhat)) (csrc/cell_math.h, LayerNorm)
    const at::Tensor dxh = dP * L.ln_ih_w.to(A);
    dXP = rstd_ih * (dxh - dxh.mean(1, true) - xhat_ih * (dxh * xhat_ih).mean(1, true));
  }
  // .to(T) of an acc result is a fresh tensor for half types and the same one otherwise
  g[0] = acc_mm(dXP, w_ih, T);        // dx [N, I]
  g[1] = dh_state.to(T);              // dh0 [B, Hout]
  if (lstm) g[2] = dc_state.to(T);    // dc0 [B, H]
  g[3] = acc_mm(dXP.t(), x, T);       // dW_ih [GH, I]
  g[4] = acc_mm(dHP.t(), h_prev, T);  // dW_hh [GH, Hout]
  // the column sums of dP and of dS (dP itself but for GRU) are the gradients of both a bias and
  // a layer-norm bias: each is summed once, and a second use gets a copy
  std::map<const void*, at::Tensor> sums;
  auto sum_of = [&](const at::Tensor& m) {
    at::Tensor& sum = sums[m.data_ptr()];
    return sum.defined() ? sum.clone() : (sum = column_sum_of(launch, m, T));
  };
  if (L.b_ih.defined()) g[5] = sum_of(dP);  // db_ih: the input side's pre-activations
  if (L.b_hh.defined()) g[6] = sum_of(dS);  // db_hh: the recurrent side's
  if (proj) g[7] = acc_mm(dht.t(), hraw, T);  // dW_hr [Hout, H]
  if (ln) {
    g[8] = column_sum_of(launch, dP * xhat_ih, T);
    if (L.ln_ih_b.defined()) g[9] = sum_of(dP);
    g[10] = column_sum_of(launch, dS * hhat, T);
    if (L.ln_hh_b.defined()) g[11] = sum_of(dS);
    if (lstm) {
      g[12] = column_sum_of(launch, pcn, T);
      if (L.ln_c_b.defined()) g[13] = column_sum_of(launch, dcn, T);
    }
  }
  if (L.w_ch.defined()) {
    // rows w_ci, w_cf, w_co (cifg: w_ci, w_co): dP_i c_{t-1}, dP_f c_{t-1}, dP_o c~_t
    const at::Tensor c_prev = act.narrow(1, GH, H), c_new = act.narrow(1, GH + 2 * H, H);
    std::vector<at::Tensor> rows{column_sum_of(launch, dP.narrow(1, 0, H) * c_prev, T)};
    if (!L.cifg) rows.push_back(column_sum_of(launch, dP.narrow(1, H, H) * c_prev, T));
    rows.push_back(column_sum_of(launch, dP.narrow(1, (G - 1) * H, H) * c_new, T));
    g[14] = at::stack(rows);
  }
  return g;
}

}  // namespace cuda
}  // namespace fusedrnn
