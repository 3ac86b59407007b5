// Backward of one layer in one direction: the forward's steps visited in the opposite order by
// every block of batch rows (the blocks of layer_fwd.cpp), per step:
//
//   dh_t = dy_t + dh_state;  zoneout: dh~ = (1 - keep) dh_t, dh_state <- keep dh_t
//   LSTM with projection: dh_raw = dh~ W_hr                   (one GEMM call)
//   pointwise (LSTM in two halves around the LN_c row sums) -> dP, the gate pre-activation
//     gradients (GRU: dA input side, dS recurrent side), dc_state <- dc_{t-1}
//     (RNN: dP = act'(y) dh~, from y alone)
//   ln: dHP = LN_hh backward of dP (dS) per row;  without ln dHP = dP (dS)
//   dh_state += dHP W_hh                                       (one GEMM call)
//
// then over all steps at once (deterministic column sums and GEMMs, no atomics):
//   db_ih = sum_rows dP;  db_hh = sum_rows dS (LSTM, RNN: dS = dP);  LN biases: the same sums
//   ln:  dln_hh_w = sum_rows dS hh;  dln_ih_w = sum_rows dP xh;  dXP = LN_ih backward of dP
//        dln_c_w = sum_rows dcn chat;  dln_c_b = sum_rows dcn
//   dX = dXP W_ih    dW_ih = dXP^T X    dW_hh = dHP^T H_prev    dW_hr = dH~^T H_raw
//   peephole: dw_ci = sum_rows dP_i c_prev, dw_cf = sum_rows dP_f c_prev, dw_co = sum dP_o c~
//
// dh_state / dc_state start as grad h_n / grad c_n and end as grad h0 / grad c0: a row that
// finished early in the forward direction picks up its grad h_n when the walk reaches its last
// step, a row that started late in the reverse direction leaves its grad h0 behind.
// The layer around the cell, derived: docs/backward.md; per element: csrc/cell_math.h.
#include <array>

#include "layer_ops.h"

namespace fusedrnn::cpu {

namespace {

// grad h_n / grad c_n as a fresh contiguous [rows, cols] buffer, zeros where autograd has none;
// the loop updates it in place into grad h0 / grad c0.
at::Tensor state_grad(const OptTensor& g, int64_t rows, int64_t cols,
                      const at::TensorOptions& opts) {
  if (!g.has_value() || !g->defined()) return at::zeros({rows, cols}, opts);
  return g->reshape({rows, cols}).clone(at::MemoryFormat::Contiguous);
}

// Column sums over rows of a [rows, cols] (row stride lda), in one pass over a:
// {sum a (if with_sum), sum a b1 (if b1), sum a b2 (if b2)}, each [cols] (undefined if not
// asked for); b1, b2 [rows, cols] with row stride ldb. Each thread owns one block of columns
// (parallel_columns) and walks the rows in order, summing blocks of kRows rows and then the
// block sums, so every column is summed in the same order whatever the number of threads.
template <typename T>
std::array<at::Tensor, 3> column_sums(const T* a, int64_t lda, bool with_sum, const T* b1,
                                      const T* b2, int64_t ldb, int64_t rows, int64_t cols,
                                      const at::TensorOptions& opts) {
  constexpr int64_t kRows = 64;
  std::array<at::Tensor, 3> out;
  const bool want[3] = {with_sum, b1 != nullptr, b2 != nullptr};
  T* o[3] = {nullptr, nullptr, nullptr};
  for (int k = 0; k < 3; ++k)
    if (want[k]) o[k] = ptr<T>(out[k] = at::zeros({cols}, opts));
  const auto& K = kernels(T{});
  auto sum_columns = [&](int64_t c0, int64_t c1) {
    const int64_t w = c1 - c0;
    std::vector<T> part(3 * w);
    T* pp[3];
    for (int k = 0; k < 3; ++k) pp[k] = want[k] ? part.data() + k * w : nullptr;
    for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
      std::fill(part.begin(), part.end(), T(0));
      K.col_accumulate(std::min(kRows, rows - r0), w, a + r0 * lda + c0, lda,
                       b1 ? b1 + r0 * ldb + c0 : nullptr, b2 ? b2 + r0 * ldb + c0 : nullptr, ldb,
                       pp[0], pp[1], pp[2]);
      for (int k = 0; k < 3; ++k)
        if (want[k])
          for (int64_t j = 0; j < w; ++j) o[k][c0 + j] += pp[k][j];
    }
  };
  if (!want[0] && !want[1] && !want[2]) return out;
  rows * cols < 65536 ? sum_columns(0, cols) : parallel_columns(cols, sum_columns);
  return out;
}

}  // namespace

template <typename T>
std::vector<at::Tensor> LayerLoop<T>::backward(const at::Tensor& y_in,
                                              const std::vector<at::Tensor>& saved,
                                              const at::Tensor& grad_y, const OptTensor& grad_hn,
                                              const OptTensor& grad_cn, int64_t mask) const {
  std::vector<at::Tensor> out(15);  // undefined (None) where not computed
  const auto widths = saved_widths();
  const auto count = static_cast<size_t>(6 - std::count(widths.begin(), widths.end(), 0));
  TORCH_CHECK(saved.size() == count, "fusedrnn cpu backend: the backward needs the ", count,
              " tensors the forward saved, got ", saved.size());
  at::Tensor slots[6];  // act, cs, ct, hh, xh, stats (undefined where the configuration has none)
  for (int k = 0, n = 0; k < 6; ++k)
    if (widths[k] > 0) {
      slots[k] = saved[n++].contiguous();
      TORCH_CHECK(slots[k].numel() == N * widths[k], "fusedrnn cpu backend: the backward needs "
                  "the forward's saved tensors (run the forward with train=True)");
    }
  TORCH_CHECK(grad_y.numel() == N * Hout, "fusedrnn cpu backend: grad_y has ", grad_y.numel(),
              " elements, expected ", N * Hout);
  const at::Tensor y = y_in.reshape({N, Hout}).contiguous();    // [N, Hout]
  const at::Tensor dy = grad_y.reshape({N, Hout}).contiguous();  // [N, Hout]
  at::Tensor dh_state = state_grad(grad_hn, B, Hout, opts);               // [B, Hout]
  at::Tensor dc_state = lstm ? state_grad(grad_cn, B, H, opts) : empty();  // [B, H]

  auto tmp = [&](Scratch slot, at::IntArrayRef shape) { return scratch(slot, shape, dtype); };
  at::Tensor dP = tmp(Scratch::kGates, {N, GH});                     // input side
  at::Tensor dS = gru ? tmp(Scratch::kGatesH, {N, GH}) : dP;         // recurrent side (GRU)
  at::Tensor dHP = ln ? tmp(Scratch::kWork1, {N, GH}) : dS;          // before LN_hh
  at::Tensor dcn = lstm ? tmp(Scratch::kWork2, {ln ? N : B, H}) : empty();
  at::Tensor pcn = lstm ? tmp(Scratch::kWork3, {ln ? N : B, H}) : empty();  // dcn xhat
  at::Tensor dht = tmp(Scratch::kWork4, {proj ? N : B, Hout});       // dh~
  at::Tensor hraw = lstm ? tmp(Scratch::kWork5, {proj ? N : B, H}) : empty();
  at::Tensor dhraw = proj ? at::empty({B, H}, opts) : empty();

  // null where the configuration has no such tensor (undefined or empty)
  const T *act = ptr<T>(slots[0]), *C = ptr<T>(slots[1]), *HH = ptr<T>(slots[3]),
          *XH = ptr<T>(slots[4]), *ST = ptr<T>(slots[5]);
  const T* CT = direct ? C : ptr<T>(slots[2]);  // c~_t (direct LSTM: c_t itself)
  const T *yp = ptr<T>(y), *dyp = ptr<T>(dy);
  T *dhs = ptr<T>(dh_state), *dcs = ptr<T>(dc_state), *dPp = ptr<T>(dP), *dSp = ptr<T>(dS),
    *dHPp = ptr<T>(dHP), *dcnp = ptr<T>(dcn), *pcnp = ptr<T>(pcn), *dhtp = ptr<T>(dht),
    *hrawp = ptr<T>(hraw), *dhrawp = ptr<T>(dhraw);

  // Blocks of rows through every step, last step first (run_row_blocks, as in the forward).
  const auto step = [&](size_t, const Step& s, int64_t b0, int64_t e) {
    T* dh_rows = dhtp + (proj ? s.off : 0) * Hout;
    T* hraw_rows = lstm ? hrawp + (proj ? s.off : 0) * H : nullptr;
    T* dcn_rows = lstm ? dcnp + (ln ? s.off : 0) * H : nullptr;
    T* pcn_rows = lstm ? pcnp + (ln ? s.off : 0) * H : nullptr;
    // pointwise rows, split over the threads when this is the single block
    step_rows(b0, e, GH * (proj ? H + 16 : 16), [&](int64_t q0, int64_t q1) {
      for (int64_t b = q0; b < q1; ++b) {
        const int64_t r = s.off + b;
        K.zone_bwd(a.keep_h.defined(), Hout, kh + r * a.keep_h_stride, dyp + r * Hout,
                   dhs + b * Hout, dh_rows + b * Hout);
      }
      if (proj) whr.mul_split_n(q1 - q0, dh_rows + q0 * Hout, Hout, T(0), dhrawp + q0 * H, H);
      for (int64_t b = q0; b < q1; ++b) {
        const int64_t r = s.off + b;
        const T* dh = proj ? dhrawp + b * H : dh_rows + b * Hout;  // dh~ (before projection)
        T* dp = dPp + r * GH;  // the row's gate gradients
        if (rnn) {  // dh_state was left zero by zone_bwd: dy + dh = dh~
          K.rnn_bwd(a.cell == Cell::RNN_RELU, H, yp + r * H, dh, dhs + b * H, dp);
        } else if (lstm) {
          const T mc = ln ? ST[r * 4 + 2] : T(0), rc = ln ? ST[r * 4 + 3] : T(1);
          T m1 = 0, m2 = 0;
          K.lstm_bwd_a(fl, H, dh, act + r * GH + (G - 1) * H, CT + r * H, mc, rc, lncw, lncb,
                       dp + (G - 1) * H, dcn_rows + b * H, pcn_rows + b * H, hraw_rows + b * H,
                       &m1, &m2);
          K.lstm_bwd_b(fl, H, dcs + b * H, kc + r * a.keep_c_stride, dcn_rows + b * H,
                       CT + r * H, mc, rc, lncw, m1, m2, act + r * GH, s.prev(b, C, c0, H), wch,
                       dp);
        } else {
          K.gru_bwd(fl, H, dh, act + r * GH, CT + r * H, s.prev(b, yp, h0, H), dhs + b * H, dp,
                    dSp + r * GH);
        }
        if (ln) K.ln_bwd(GH, dSp + r * GH, HH + r * GH, lnhh, ST[r * 4 + 1], dHPp + r * GH);
      }
    });
    whh.mul_split_n(e - b0, dHPp + (s.off + b0) * GH, GH, T(1), dhs + b0 * Hout, Hout);
  };
  run_row_blocks(steps, true, B, GH * Hout, whh.bytes() + whr.bytes(), step);

  // Column sums first: they read dP, which the LN_ih backward below overwrites. b_ih and the
  // LN_ih bias enter as one sum, b_hh and the LN_hh bias too (LSTM: all four, dS = dP); the
  // gain gradients are sums of dP xh and dS hh. Every output gets its own tensor (outputs of
  // the op must not alias each other).
  {
    const int64_t want_in = kGradBih | kGradLnIhB, want_rec = kGradBhh | kGradLnHhB;
    const bool sum_in = mask & (want_in | (gru ? 0 : want_rec));
    const T* b_xh = ln && (mask & kGradLnIhW) ? XH : nullptr;
    const T* b_hh = ln && (mask & kGradLnHhW) ? HH : nullptr;
    const auto s_in =
        column_sums<T>(dPp, GH, sum_in, b_xh, gru ? nullptr : b_hh, GH, N, GH, opts);
    const auto s_rec =  // GRU: its own sums of dS; else those of dP (dS = dP)
        gru ? column_sums<T>(dSp, GH, mask & want_rec, nullptr, b_hh, GH, N, GH, opts) : s_in;
    auto give = [&](int64_t bit, int k, const at::Tensor& sum) {  // copies once sum is given
      const bool taken = sum.is_same(out[5]) || sum.is_same(out[9]) || sum.is_same(out[6]);
      if (mask & bit) out[k] = taken ? sum.clone() : sum;
    };
    give(kGradBih, 5, s_in[0]);
    give(kGradLnIhB, 9, s_in[0]);
    give(kGradBhh, 6, s_rec[0]);
    give(kGradLnHhB, 11, s_rec[0]);
    out[8] = s_in[1];  // the gain sums: undefined unless asked for
    out[10] = s_rec[2];
  }
  if (ln && lstm) {  // pcn = dcn xhat_c row by row: the gain's terms; dcn: the bias'
    out[12] = column_sums<T>(pcnp, H, mask & kGradLnCW, nullptr, nullptr, H, N, H, opts)[0];
    out[13] = column_sums<T>(dcnp, H, mask & kGradLnCB, nullptr, nullptr, H, N, H, opts)[0];
  }
  if ((mask & kGradWch) && fl.peep) {
    at::Tensor cprev = tmp(Scratch::kWork6, {N, H});  // c_{t-1} of every row
    T* cpv = ptr<T>(cprev);
    gather_previous(steps, C, c0, H, cpv);
    // rows (w_ci, w_cf, w_co) or (w_ci, w_co): dP_i c_prev, dP_f c_prev, dP_o c~ (slot G - 1)
    std::vector<at::Tensor> rows;
    for (const int64_t k : fl.cifg ? std::vector<int64_t>{0, 2} : std::vector<int64_t>{0, 1, 3})
      rows.push_back(column_sums<T>(dPp + k * H, GH, false, k == G - 1 ? CT : cpv, nullptr, H, N,
                                    H, opts)[1]);
    out[14] = at::stack(rows);
  }
  // Input side: LN_ih backward row by row over all steps, in place (dP becomes the gradient of
  // X W_ih^T) once the column sums above have read dP.
  if (ln && (mask & (kGradX | kGradWih))) {
    const T* w = ptr<T>(a.ln_ih_w);
    at::parallel_for(0, N, grain_of(GH), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        K.ln_bwd(GH, dPp + r * GH, XH + r * GH, w, ST[r * 4], dPp + r * GH);
    });
  }
  // The GEMMs over all steps (dX, dW_ih, dW_hh, dW_hr above); dP is now dXP.
  if (mask & kGradX) {
    at::Tensor dx = pooled_output({N, a.I}, dtype);
    gemm<T>(false, false, N, a.I, GH, T(1), dPp, GH, ptr<T>(a.w_ih), a.I, T(0), ptr<T>(dx), a.I);
    out[0] = a.packed ? dx : dx.view({a.T, B, a.I});
  }
  if (mask & kGradWih) {
    out[3] = pooled_output({GH, a.I}, dtype);
    gemm<T>(true, false, GH, a.I, N, T(1), dPp, GH, ptr<T>(a.x), a.I, T(0), ptr<T>(out[3]), a.I);
  }
  if (mask & kGradWhh) {
    at::Tensor dw = out[4] = pooled_output({GH, Hout}, dtype);
    T* dwp = ptr<T>(dw);
    if (N == 0) {
      dw.zero_();
    } else if (!a.packed) {
      // Dense: the previous states of all steps but the first visited are y shifted by one
      // step, so the stacked GEMM reads y in place; the first visited step pairs with h0.
      const int64_t body = N - B;
      const T* g_body = a.reverse ? dHPp : dHPp + B * GH;
      const T* h_body = a.reverse ? yp + B * Hout : yp;
      const T* g_first = a.reverse ? dHPp + body * GH : dHPp;
      gemm<T>(true, false, GH, Hout, body, T(1), g_body, GH, h_body, Hout, T(0), dwp, Hout);
      gemm<T>(true, false, GH, Hout, B, T(1), g_first, GH, h0, Hout, T(1), dwp, Hout);
    } else {
      // Packed: h_{t-1} of every row gathered into one [N, Hout] matrix, then one GEMM.
      at::Tensor hprev = tmp(Scratch::kWork7, {N, Hout});
      gather_previous(steps, yp, h0, Hout, ptr<T>(hprev));
      gemm<T>(true, false, GH, Hout, N, T(1), dHPp, GH, ptr<T>(hprev), Hout, T(0), dwp, Hout);
    }
  }
  if ((mask & kGradWhr) && proj) {
    out[7] = at::empty({Hout, H}, opts);
    gemm<T>(true, false, Hout, H, N, T(1), dhtp, Hout, hrawp, H, T(0), ptr<T>(out[7]), H);
  }
  if (mask & kGradH0) out[1] = dh_state;
  if ((mask & kGradC0) && lstm) out[2] = dc_state;
  return out;
}

std::vector<at::Tensor> layer_bwd(FRNN_LAYER_PARAMS, const at::Tensor& y,
                                  const std::vector<at::Tensor>& saved, const at::Tensor& grad_y,
                                  const OptTensor& grad_hn, const OptTensor& grad_cn,
                                  int64_t grad_mask) {
  c10::NoGradGuard no_grad;
  // gradients of absent inputs are never produced; the optional inputs' bits are kGradBih
  // shifted by their place here (GradBit's order)
  const OptTensor* optional[] = {&b_ih,    &b_hh,    &w_hr,   &ln_ih_w, &ln_ih_b,
                                 &ln_hh_w, &ln_hh_b, &ln_c_w, &ln_c_b,  &w_ch};
  for (int k = 0; k < 10; ++k)
    if (!optional[k]->has_value()) grad_mask &= ~(kGradBih << k);
  if (cell != "lstm") grad_mask &= ~kGradC0;
  const LayerArgs a = prepare(FRNN_LAYER_ARGS);
  if (grad_mask == 0) return std::vector<at::Tensor>(15);
  return dispatch_float(a.x.scalar_type(), [&](auto t) {
    const LayerLoop<decltype(t)> loop(a, false);
    return loop.backward(y, saved, grad_y, grad_hn, grad_cn, grad_mask);
  });
}

}  // namespace fusedrnn::cpu
