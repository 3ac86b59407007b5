// Forward of one layer in one direction over a whole (dense or packed) sequence, every cell
// and option (layer norm, zoneout, peephole, cifg); the math of fusedrnn/ops/reference.py::layer.
//
//   XP = X W_ih^T                           one GEMM for every step               [N, G*H]
//   xg = LN_ih(XP) + b_ih + LN_ih bias       row by row, all N rows at once (LN is per row)
//   per step, for the batch rows of a block (run_row_blocks, common.h):
//     HP = h_prev W_hh^T                     one GEMM call
//     per row: LN_hh statistics of HP, first pointwise half (gates, c~), LN_c statistics of
//              c~, second half (o, h~, zoneout of c)       (GRU: one pointwise pass)
//     LSTM with projection: y rows = h~ W_hr^T, one GEMM call
//     zoneout of h on the y rows
// torch.nn's LSTM and the RNN (direct_gates, layer_ops.h) take a shorter way: the GEMM adds HP
// into xg in place and one fused kernel per row (kernels.h) adds both biases and runs the cell.
// The blocks are one per thread when the batch is large enough and the weights small (the
// threads never wait for each other inside the loop); otherwise one block whose GEMMs are
// split over column blocks of the weights and whose rows are split over the threads.
//
// h_prev is read in place from the previous step's rows of y (plus h0 rows for sequences that
// start at this step). With train=true the activations overwrite xg and everything the
// backward needs is kept (see layer_ops.h); otherwise only [B, .] scratch rows are used.
#include "layer_ops.h"

namespace fusedrnn::cpu {

template <typename T>
std::vector<at::Tensor> LayerLoop<T>::forward(bool train) const {
  const T eps = static_cast<T>(a.eps);
  // The biases enter folded: b_in = b_ih + LN_ih bias on the input side, b_rec = b_hh + LN_hh
  // bias on the recurrent one (GRU: b_hn and the LN bias stay inside r * (.)); direct: all in
  // b_in, which the fused kernel adds.
  auto fold = [&](const at::Tensor& u, const at::Tensor& v) {
    if (u.defined() && v.defined()) return at::add(u, v);
    return u.defined() ? u : v.defined() ? v : at::zeros({GH}, opts);
  };
  const at::Tensor b_in = direct ? fold(a.b_ih, a.b_hh) : fold(a.b_ih, a.ln_ih_b);
  const at::Tensor b_rec = direct ? empty() : fold(a.b_hh, a.ln_hh_b);

  // [N, cols] kept for the backward (an op output) when keep, else `rows` rows of scratch
  auto buffer = [&](bool keep, Scratch slot, int64_t rows, int64_t cols) {
    return keep ? pooled_output({N, cols}, dtype) : scratch(slot, {rows, cols}, dtype);
  };
  // Input side for all steps: xg [N, G*H] (becomes the activations; the RNN's backward reads
  // y instead), xh [N, G*H] (ln)
  at::Tensor xg = buffer(train && !rnn, Scratch::kGates, N, GH);
  at::Tensor xh = ln ? buffer(train, Scratch::kWork1, N, GH) : empty();
  // rstd_ih, rstd_hh, mean_c, rstd_c; zeroed because it is an op output and the GRU (no cell
  // state) leaves the last two columns unwritten
  at::Tensor stats = ln ? at::zeros({train ? N : B, 4}, opts) : empty();
  T* stp = ptr<T>(stats);
  {
    T* dst = ln ? ptr<T>(xh) : ptr<T>(xg);
    gemm<T>(false, true, N, GH, a.I, T(1), ptr<T>(a.x), a.I, ptr<T>(a.w_ih), a.I, T(0), dst,
            GH);
    if (ln) {
      const T *w = ptr<T>(a.ln_ih_w), *b = ptr<T>(b_in);
      T* xgp = ptr<T>(xg);
      at::parallel_for(0, N, grain_of(GH), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          T mean, rstd;
          K.ln_stats(GH, dst + r * GH, eps, &mean, &rstd);
          K.norm_bias(true, false, GH, dst + r * GH, mean, rstd, w, b, xgp + r * GH);
          if (train) stp[r * 4] = rstd;
        }
      });
    } else if (!direct) {
      xg.add_(b_in);
    }
  }

  at::Tensor y = pooled_output({N, Hout}, dtype);  // [N, Hout]
  at::Tensor h_n = a.h0.clone();              // [B, Hout]
  at::Tensor c_n = lstm ? a.c0.clone() : empty();
  // hp: h_prev W_hh^T, normalised in place (ln: the saved hh when training); direct: none,
  // the product goes straight into the gates
  at::Tensor hh = direct ? empty() : buffer(ln && train, Scratch::kWork2, B, GH);
  // LSTM: c_t states (all kept when training, else a [2B, H] ping-pong), c~_t (not direct:
  // there c~_t = c_t); GRU: nothing, and the recurrent n part in ct
  at::Tensor cs = lstm ? buffer(train, Scratch::kWork3, 2 * B, H) : empty();
  at::Tensor ct = direct ? empty() : buffer(train, Scratch::kWork4, B, H);
  at::Tensor hraw = proj ? at::empty({B, H}, opts) : empty();

  const T* wco = fl.peep ? wch + (fl.cifg ? 1 : 2) * H : nullptr;
  const T *b_inp = ptr<T>(b_in), *b_recp = ptr<T>(b_rec);
  // null where the configuration has no such buffer (empty)
  T *yp = ptr<T>(y), *xgp = ptr<T>(xg), *hhp = ptr<T>(hh), *csp = ptr<T>(cs), *ctp = ptr<T>(ct),
    *hrawp = ptr<T>(hraw);

  // Rows are independent sequences, so blocks of rows run on different threads without meeting
  // once in the loop (run_row_blocks); a single block splits each step's GEMMs over the columns
  // instead (mul_split_n, inline when called from a block thread).
  const T beta = direct ? T(1) : T(0);
  const auto step = [&](size_t k, const Step& s, int64_t b0, int64_t e) {
    // rows of this step in the buffers that are [N, .] when training, [B, .] scratch else
    const int64_t so = train ? s.off : 0;
    T* act = xgp + s.off * GH;
    T* hp = direct ? act : hhp + (ln && train ? s.off : 0) * GH;
    T* ctr = direct ? nullptr : ctp + so * H;
    T* st = ln ? stp + so * 4 : nullptr;
    T* c_out = lstm ? csp + (train ? s.off : (k % 2) * B) * H : nullptr;
    const T* c_pong = lstm && !train ? csp + ((k + 1) % 2) * B * H : nullptr;
    // HP: continuing rows read the previous step's y, rows starting here read h0
    const int64_t m = std::min(e, s.from_prev), n0 = std::max(b0, s.from_prev);
    if (b0 < m)
      whh.mul_split_n(m - b0, yp + (s.prev_off + b0) * Hout, Hout, beta, hp + b0 * GH, GH);
    if (n0 < e) whh.mul_split_n(e - n0, h0 + n0 * Hout, Hout, beta, hp + n0 * GH, GH);
    // pointwise rows, split over the threads when this is the single block
    step_rows(b0, e, GH * (proj ? H + 16 : 16), [&](int64_t q0, int64_t q1) {
      for (int64_t b = q0; b < q1; ++b) {
        const int64_t r = s.off + b;
        T *g = act + b * GH, *hq = hp + b * GH;  // the row's gates and h_prev W_hh^T
        T* ho = proj ? hrawp + b * H : yp + r * Hout;  // h~ (the projection's input), or y
        T* cr = direct ? nullptr : ctr + b * H;       // c~_t (GRU: the recurrent n part)
        T mean = 0, rstd = 1;
        if (ln) {
          K.ln_stats(GH, hq, eps, &mean, &rstd);
          st[b * 4 + 1] = rstd;
        }
        const T* cp = !lstm ? nullptr  // c_{t-1}
                      : train ? s.prev(b, csp, c0, H)
                              : (b < s.from_prev ? c_pong : c0) + b * H;
        if (rnn) {
          K.rnn_fwd(a.cell == Cell::RNN_RELU, H, b_inp, g, ho);
        } else if (lstm && direct) {
          K.lstm_fwd(train, H, H, b_inp, g, cp, c_out + b * H, ho);
        } else if (lstm) {
          K.norm_bias(ln, true, GH, hq, mean, rstd, lnhh, b_recp, g);
          K.lstm_fwd_a(fl, H, g, wch, cp, cr);
          T mc = 0, rc = 1;
          if (ln) {
            K.ln_stats(H, cr, eps, &mc, &rc);
            st[b * 4 + 2] = mc;
            st[b * 4 + 3] = rc;
          }
          K.lstm_fwd_b(fl, H, g + (G - 1) * H, cr, mc, rc, lncw, lncb, wco, cp,
                       kc + r * a.keep_c_stride, ho, c_out + b * H);
        } else {
          K.norm_bias(ln, true, 2 * H, hq, mean, rstd, lnhh, b_recp, g);
          K.norm_bias(ln, false, H, hq + 2 * H, mean, rstd, ln ? lnhh + 2 * H : nullptr,
                     b_recp + 2 * H, cr);
          K.gru_fwd(fl, H, g, cr, s.prev(b, yp, h0, Hout), ho);
        }
      }
      if (proj)
        whr.mul_split_n(q1 - q0, hrawp + q0 * H, H, T(0), yp + (s.off + q0) * Hout, Hout);
      for (int64_t b = q0; b < q1 && a.keep_h.defined(); ++b)
        K.zone_fwd(Hout, kh + (s.off + b) * a.keep_h_stride, s.prev(b, yp, h0, Hout),
                   yp + (s.off + b) * Hout);
    });
    // rows that are not active in the next step are final
    const int64_t f0 = std::max(b0, s.finish_from);
    if (f0 < e) {
      std::memcpy(ptr<T>(h_n) + f0 * Hout, yp + (s.off + f0) * Hout, sizeof(T) * (e - f0) * Hout);
      if (lstm) std::memcpy(ptr<T>(c_n) + f0 * H, c_out + f0 * H, sizeof(T) * (e - f0) * H);
    }
  };
  run_row_blocks(steps, false, B, GH * Hout, whh.bytes() + whr.bytes(), step);

  if (!a.packed) y = y.view({a.T, B, Hout});
  // what the backward reads, in the order of saved_widths
  std::vector<at::Tensor> out{y, h_n, c_n};
  const auto widths = saved_widths();
  const at::Tensor kept[] = {xg, cs, ct, hh, xh, stats};
  for (int k = 0; k < 6; ++k)
    if (widths[k] > 0) out.push_back(train ? kept[k] : empty());
  return out;
}

std::vector<at::Tensor> layer_fwd(FRNN_LAYER_PARAMS, bool train) {
  c10::NoGradGuard no_grad;
  const LayerArgs a = prepare(FRNN_LAYER_ARGS);
  return dispatch_float(a.x.scalar_type(), [&](auto t) {
    return LayerLoop<decltype(t)>(a, true).forward(train);
  });
}

}  // namespace fusedrnn::cpu
