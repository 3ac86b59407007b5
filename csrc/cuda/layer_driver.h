// One layer, one direction, of the CUDA backend: the time loop around the per-step kernels.
//
// ATen only (no CUDA headers): the GEMMs are ATen calls, the per-step element kernels are reached
// through a `Launch` policy. bindings.cpp instantiates it with the CUDA launchers (GEMMs go to
// cuBLAS on the current stream); the test-suite instantiates it with the host harness
// (csrc/cuda/harness/host_driver.cpp) on CPU tensors, so this exact loop is tested here.
//
// A Launch (launch.h) runs one launcher of launchers.h, launch(launcher, args...) calling
// launcher(args..., stream), and checks for errors itself. The parts both drivers share are here.
//
// Forward, per step t with `rows` active rows starting at packed row `start`:
//   hg[:rows] = h_state[:rows] W_hh^T                  (GEMM)
//   kernel: gates, c_state/h_state/y update, saved activations
//   (proj) h_state[:rows] = hpre_t W_hr^T; y_t = h_state[:rows]   (GEMM + copy)
// For half and bfloat16 storage, the recurrent state (h_state, c_state), hg and everything the
// backward carries across steps (dh_state, dc_state, dG, dHG) are float, so the error stays at
// the rounding of the stored outputs instead of compounding with T. The GEMMs that produce them
// run on float operands: W_hh (and W_hr) are converted once per call, Hpre per step with proj;
// the weight-gradient GEMMs after the loop convert X, H_prev and Hpre once. On a GPU this costs
// the half-precision tensor-core rate of those GEMMs and doubles the W_hh bytes each step reads;
// ATen's mixed-dtype mm (half operands, float result) would avoid both but has no CPU kernel,
// and the host harness must run this same code.
// Backward, walking the steps in the opposite order (G_t = gate pre-activations):
//   (proj) dh_t = dy_t + dh_state[:rows]; dhpre = dh_t W_hr
//   kernel: dG_t (and for GRU the recurrent-side dHG_t and the direct term dh_t * z)
//   dh_state[:rows] = dHG_t W_hh (+ direct term for GRU)   (GEMM)
// then dX = dG W_ih, dW_ih = dG^T X, dW_hh = dHG^T H_prev, dW_hr = dH^T Hpre (GEMMs over all
// steps at once) and the bias gradients as deterministic column sums of dG and dHG.
#pragma once

#include <ATen/ATen.h>

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

inline int64_t num_gates(CellKind c) {
  return c == CellKind::lstm ? 4 : (c == CellKind::gru ? 3 : 1);
}

// Columns of the per-row saved activations, in units of H (see launchers.h).
inline int64_t saved_width(CellKind c) {
  return c == CellKind::lstm ? 6 : (c == CellKind::gru ? 4 : 0);
}

inline DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return DType::f32;
    case at::kDouble:
      return DType::f64;
    case at::kHalf:
      return DType::f16;
    case at::kBFloat16:
      return DType::bf16;
    default:
      TORCH_CHECK(false, "fusedrnn cuda backend: unsupported dtype ", t.scalar_type(),
                  " (float32, float64, float16, bfloat16 are supported)");
  }
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

// The (t, start, rows) of every step in the order the direction visits them.
struct Step {
  int64_t t, start, rows;
};

inline std::vector<Step> visit_order(const std::vector<int64_t>& sizes, int64_t batch,
                                     bool reverse) {
  const int64_t n = static_cast<int64_t>(sizes.size());
  std::vector<int64_t> offsets(n, 0);
  for (int64_t t = 0; t < n; ++t) {
    TORCH_CHECK(sizes[t] >= 1 && sizes[t] <= batch && (t == 0 || sizes[t] <= sizes[t - 1]),
                "fusedrnn: batch sizes must be non-increasing and within [1, batch]");
    if (t > 0) offsets[t] = offsets[t - 1] + sizes[t - 1];
  }
  std::vector<Step> steps;
  for (int64_t k = 0; k < n; ++k) {
    const int64_t t = reverse ? n - 1 - k : k;
    steps.push_back({t, offsets[t], sizes[t]});
  }
  return steps;
}

// Deterministic column sums of an acc [N, C] matrix (see ColSumArgs), returned in `dtype`.
template <class Launch>
at::Tensor column_sum_of(Launch& launch, const at::Tensor& src, at::ScalarType dtype) {
  const at::Tensor m = src.contiguous();
  ColSumArgs a{};
  a.n_rows = m.size(0);
  a.n_cols = m.size(1);
  a.parts = colsum_parts(a.n_rows);
  at::Tensor partial = at::empty({a.parts, a.n_cols}, m.options().dtype(acc_type_of(m)));
  at::Tensor out = at::empty({a.n_cols}, m.options());
  a.src = m.data_ptr();
  a.partial = partial.data_ptr();
  a.out = out.data_ptr();
  if (a.n_cols > 0) launch(column_sum, dtype_of(m), a);
  return out.to(dtype);
}

// x W_ih^T + b_ih, every step at once (the variants' layer norm builds its own).
inline at::Tensor input_side(const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& b_ih) {
  at::Tensor xg = b_ih.defined() ? at::addmm(b_ih, x, w_ih.t()) : at::mm(x, w_ih.t());
  // the kernels read xg as x's dtype: a retyped GEMM (autocast) would be read out of bounds
  TORCH_CHECK(xg.scalar_type() == x.scalar_type() && xg.is_contiguous(),
              "fusedrnn: the input projection came back as ", xg.scalar_type(), " for ",
              x.scalar_type(), " operands (is autocast excluded?)");
  return xg;
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

inline Carried carried(const at::Tensor& w_hh, const at::Tensor& w_hr, const at::Tensor& h,
                       const at::Tensor& c, bool lstm, int64_t H) {
  const at::ScalarType A = acc_type_of(h);
  const auto acc = h.options().dtype(A);
  Carried r{w_hh.to(A), w_hr.defined() ? w_hr.to(A) : w_hr, h.to(acc, false, /*copy=*/true), {}};
  if (lstm) r.c = c.defined() ? c.to(acc, false, /*copy=*/true) : at::zeros({h.size(0), H}, acc);
  return r;
}

// Starts forward step s: its recurrent GEMM hg[:rows] = h[:rows] W_hh^T, then `a` with the fields
// that every forward kernel's arguments share (st: the forward's Carried, y_t: the step's y rows).
template <class Args>
Args begin_step(const Step& s, const Carried& st, const at::Tensor& hg, const at::Tensor& xg,
                const at::Tensor& b_hh, const at::Tensor& y_t, int64_t H, Args a) {
  at::Tensor hg_t = hg.narrow(0, 0, s.rows);
  at::mm_out(hg_t, st.h.narrow(0, 0, s.rows), st.w_hh.t());
  a.xg = xg.narrow(0, s.start, s.rows).data_ptr();
  a.hg = hg_t.data_ptr();
  a.b_hh = ptr(b_hh);
  a.h_state = st.h.data_ptr();
  a.y = y_t.data_ptr();
  a.rows = s.rows;
  a.hidden = H;
  return a;
}

// Returns {y [N, Hout], h_n [B, Hout], c_n [B, H] or undefined, saved [N, S*H] acc or undefined,
// h_prev [N, Hout] or undefined, hpre [N, H] or undefined}; the last three only when `save`.
// All tensor arguments contiguous, same dtype and device (checked by the caller).
template <class Launch>
std::vector<at::Tensor> layer_forward(Launch& launch, CellKind cell,
                                      const at::Tensor& x,       // [N, I]
                                      const at::Tensor& h0,      // [B, Hout]
                                      const at::Tensor& c0,      // [B, H] (LSTM)
                                      const at::Tensor& w_ih,    // [G*H, I]
                                      const at::Tensor& w_hh,    // [G*H, Hout]
                                      const at::Tensor& b_ih,    // [G*H] or undefined
                                      const at::Tensor& b_hh,    // [G*H] or undefined
                                      const at::Tensor& w_hr,    // [Hout, H] or undefined
                                      const std::vector<int64_t>& sizes,  // [T] rows per step
                                      bool reverse, bool save) {
  const int64_t G = num_gates(cell), H = w_hh.size(0) / G, Hout = h0.size(1), B = h0.size(0);
  const int64_t N = x.size(0);
  const bool has_bias = b_hh.defined(), proj = w_hr.defined();
  const DType dt = dtype_of(x);
  const at::ScalarType A = acc_type_of(x);
  const auto acc = x.options().dtype(A);

  const at::Tensor xg = input_side(x, w_ih, b_ih);
  const Carried st = carried(w_hh, w_hr, h0, c0, cell == CellKind::lstm, H);
  at::Tensor y = at::empty({N, Hout}, x.options());
  at::Tensor hpre = proj ? at::empty({N, H}, x.options()) : at::Tensor();  // o * tanh(c_t)
  at::Tensor hg = at::empty({B, G * H}, acc);
  const int64_t S = saved_width(cell);
  at::Tensor saved = save && S > 0 ? at::empty({N, S * H}, acc) : at::Tensor();
  at::Tensor h_prev = save ? at::empty({N, Hout}, x.options()) : at::Tensor();

  for (const Step& s : visit_order(sizes, B, reverse)) {
    at::Tensor y_t = y.narrow(0, s.start, s.rows);
    auto step_args = [&](auto a) {  // starts the step, with the fields the three cells share
      a = begin_step(s, st, hg, xg, b_hh, y_t, H, a);
      a.h_prev_save = ptr(rows_of(h_prev, s.start, s.rows));
      return a;
    };
    if (cell == CellKind::lstm) {
      LstmFwdArgs a = step_args(LstmFwdArgs{});
      a.c_state = st.c.data_ptr();
      if (proj) a.y = hpre.narrow(0, s.start, s.rows).data_ptr();
      a.save = ptr(rows_of(saved, s.start, s.rows));
      a.hidden_out = Hout;
      launch(lstm_forward_step, dt, has_bias, save, proj, a);
      if (proj) {
        at::Tensor h_rows = st.h.narrow(0, 0, s.rows);
        at::mm_out(h_rows, hpre.narrow(0, s.start, s.rows).to(A), st.w_hr.t());
        y_t.copy_(h_rows);
      }
    } else if (cell == CellKind::gru) {
      GruFwdArgs a = step_args(GruFwdArgs{});
      a.save = ptr(rows_of(saved, s.start, s.rows));
      launch(gru_forward_step, dt, has_bias, save, a);
    } else {
      const bool relu = cell == CellKind::rnn_relu;
      launch(rnn_forward_step, dt, relu, has_bias, save, step_args(RnnFwdArgs{}));
    }
  }
  at::Tensor c_n = cell == CellKind::lstm ? st.c.to(x.scalar_type()) : at::Tensor();
  return {y, st.h.to(x.scalar_type()), c_n, saved, h_prev, hpre};
}

// Returns {dx [N, I], dh0 [B, Hout], dc0 [B, H] or undefined, dw_ih, dw_hh, db_ih, db_hh (or
// undefined without bias), dw_hr (or undefined)}. `y`, `saved`, `h_prev`, `hpre` are the
// forward's outputs (forward run with save = true).
template <class Launch>
std::vector<at::Tensor> layer_backward(Launch& launch, CellKind cell,
                                       const at::Tensor& dy,      // [N, Hout]
                                       const at::Tensor& dh_n,    // [B, Hout]
                                       const at::Tensor& dc_n,    // [B, H] (LSTM) or undefined
                                       const at::Tensor& x,       // [N, I]
                                       const at::Tensor& w_ih,    // [G*H, I]
                                       const at::Tensor& w_hh,    // [G*H, Hout]
                                       const at::Tensor& w_hr,    // [Hout, H] or undefined
                                       bool has_bias,
                                       const std::vector<int64_t>& sizes, bool reverse,
                                       const at::Tensor& y,       // [N, Hout]
                                       const at::Tensor& saved,   // [N, S*H] acc (LSTM, GRU)
                                       const at::Tensor& h_prev,  // [N, Hout]
                                       const at::Tensor& hpre) {  // [N, H] (proj)
  const int64_t G = num_gates(cell), H = w_hh.size(0) / G, Hout = dh_n.size(1);
  const int64_t B = dh_n.size(0), N = x.size(0);
  const bool proj = w_hr.defined();
  const DType dt = dtype_of(x);
  const at::ScalarType T = x.scalar_type(), A = acc_type_of(x);
  const auto acc = x.options().dtype(A);
  const Carried st = carried(w_hh, w_hr, dh_n, dc_n, cell == CellKind::lstm, H);
  const at::Tensor &dh_state = st.h, &dc_state = st.c;  // [B, Hout], [B, H]
  at::Tensor dxg = at::empty({N, G * H}, acc);                                 // dG
  at::Tensor dhg = cell == CellKind::gru ? at::empty({N, G * H}, acc) : dxg;  // dHG
  at::Tensor dh_all = proj ? at::empty({N, Hout}, acc) : at::Tensor();
  at::Tensor dhpre = proj ? at::empty({B, H}, acc) : at::Tensor();

  for (const Step& s : visit_order(sizes, B, !reverse)) {  // the forward's steps, last first
    at::Tensor dh_rows = dh_state.narrow(0, 0, s.rows);
    at::Tensor dy_t = dy.narrow(0, s.start, s.rows);
    at::Tensor dxg_t = dxg.narrow(0, s.start, s.rows);
    if (cell == CellKind::lstm) {
      LstmBwdArgs a{};
      if (proj) {
        at::Tensor dh_t = dh_all.narrow(0, s.start, s.rows);
        at::add_out(dh_t, dy_t, dh_rows);
        at::Tensor dhpre_t = dhpre.narrow(0, 0, s.rows);
        at::mm_out(dhpre_t, dh_t, st.w_hr);
        a.dh = dhpre_t.data_ptr();
      } else {
        a.dh = dy_t.data_ptr();
        a.dh_state = dh_state.data_ptr();
      }
      a.dc_state = dc_state.data_ptr();
      a.save = saved.narrow(0, s.start, s.rows).data_ptr();
      a.dgates = dxg_t.data_ptr();
      a.rows = s.rows;
      a.hidden = H;
      launch(lstm_backward_step, dt, /*add_state=*/!proj, a);
      at::mm_out(dh_rows, dxg_t, st.w_hh);
    } else if (cell == CellKind::gru) {
      GruBwdArgs a{};
      at::Tensor dhg_t = dhg.narrow(0, s.start, s.rows);
      a.dy = dy_t.data_ptr();
      a.dh_state = dh_state.data_ptr();
      a.save = saved.narrow(0, s.start, s.rows).data_ptr();
      a.h_prev = h_prev.narrow(0, s.start, s.rows).data_ptr();
      a.dxg = dxg_t.data_ptr();
      a.dhg = dhg_t.data_ptr();
      a.rows = s.rows;
      a.hidden = H;
      launch(gru_backward_step, dt, a);
      dh_rows.addmm_(dhg_t, st.w_hh);  // the kernel left the direct term dh_t * z there
    } else {
      RnnBwdArgs a{};
      a.dy = dy_t.data_ptr();
      a.dh_state = dh_state.data_ptr();
      a.y = y.narrow(0, s.start, s.rows).data_ptr();
      a.dgates = dxg_t.data_ptr();
      a.rows = s.rows;
      a.hidden = H;
      launch(rnn_backward_step, dt, cell == CellKind::rnn_relu, a);
      at::mm_out(dh_rows, dxg_t, st.w_hh);
    }
  }

  // .to(T) of an acc result is a fresh tensor for half types and the same one otherwise
  at::Tensor dx = acc_mm(dxg, w_ih, T);           // [N, I]
  at::Tensor dw_ih = acc_mm(dxg.t(), x, T);       // [G*H, I]
  at::Tensor dw_hh = acc_mm(dhg.t(), h_prev, T);  // [G*H, Hout]
  at::Tensor db_ih, db_hh;
  if (has_bias) {
    db_ih = column_sum_of(launch, dxg, T);  // [G*H]
    db_hh = cell == CellKind::gru ? column_sum_of(launch, dhg, T) : db_ih.clone();
  }
  at::Tensor dw_hr = proj ? acc_mm(dh_all.t(), hpre, T) : at::Tensor();  // [Hout, H]
  at::Tensor dc0 = cell == CellKind::lstm ? dc_state.to(T) : at::Tensor();
  return {dx, dh_state.to(T), dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr};
}

}  // namespace cuda
}  // namespace fusedrnn
