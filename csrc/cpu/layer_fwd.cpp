// Forward of one layer in one direction over a whole (dense or packed) sequence.
//
//   xg = X W_ih^T                        one GEMM for every step           [N, G*H]
//   per visited step t (rows = batch_sizes[t]), one parallel region in which every thread
//   owns a run of unit chunks (see ChunkLayout) and
//     gates_t[:, its columns] += h_prev W_hh[its rows]^T    one single-threaded GEMM call
//                                        accumulating into xg's block (beta = 1), so the
//                                        input projection needs no separate add pass
//     runs the fused pointwise (biases, gates, state update) on exactly those columns while
//     they are in its cache, writing y_t directly
//     (LSTM with projection: h_raw into a [B, H] buffer, then y_t = h_raw W_hr^T)
//
// h_prev is read in place from the previous step's rows of y (plus h0 rows for sequences that
// start at this step), so no state copies are made. With train=true the activations overwrite
// xg (they are what the backward needs) and every c_t is kept; otherwise nothing is saved.
#include "layer_ops.h"

#include "blas.h"
#include "common.h"
#include "scratch.h"

namespace fusedrnn::cpu {

namespace {

template <typename T>
std::vector<at::Tensor> fwd_impl(const LayerArgs& a, bool train) {
  const Cell cell = a.cell;
  const int64_t G = num_gates(cell), H = a.H, Hout = a.Hout, GH = G * H, B = a.B, N = a.N;
  const auto steps = schedule(a.batch_sizes, a.T, B, a.reverse);
  const auto opts = a.x.options();
  const auto& K = kernels(T{});

  // [N, G*H]; kept (returned as ws1) only when training
  const auto dtype = a.x.scalar_type();
  at::Tensor xg = output_or_scratch(train, Scratch::kGates, {N, GH}, dtype);
  gemm<T>(false, true, N, GH, a.I, T(1), cptr<T>(a.x), a.I, cptr<T>(a.w_ih), a.I, T(0), ptr<T>(xg),
          GH);

  at::Tensor y = pooled_output({N, Hout}, dtype);     // [N, Hout]
  at::Tensor h_n = a.h0.clone();                       // [B, Hout]
  at::Tensor c_n = cell == Cell::LSTM ? a.c0.clone() : at::empty({0}, opts);  // [B, H]
  at::Tensor ws1 = at::empty({0}, opts), ws2 = at::empty({0}, opts);

  // h_prev W_hh^T, op(W) = W_hh^T [Hout, G*H]
  const StepWeights<T> whh(true, Hout, GH, cptr<T>(a.w_hh), Hout, Scratch::kPackedRecurrent, a.T);
  const T* h0 = cptr<T>(a.h0);
  T* yp = ptr<T>(y);
  T* xgp = ptr<T>(xg);

  const ChunkLayout& L = a.layout;
  // Recurrent GEMM of one step into dst rows [0, rows), gate columns [c0, c1) only (row stride
  // GH): rows continuing from the previous step read its y block, rows starting here read h0.
  // Called inside the per-step parallel region, so each call runs on one thread.
  auto recurrent = [&](const Step& s, T* dst, T beta, int64_t c0, int64_t c1) {
    if (s.from_prev > 0) whh.mul(s.from_prev, c0, c1, yp + s.prev_off * Hout, Hout, beta, dst, GH);
    if (s.rows > s.from_prev)
      whh.mul(s.rows - s.from_prev, c0, c1, h0 + s.from_prev * Hout, Hout, beta,
              dst + s.from_prev * GH, GH);
  };
  auto finish_h = [&](const Step& s) {
    if (s.finish_from < s.rows)
      std::memcpy(ptr<T>(h_n) + s.finish_from * Hout, yp + (s.off + s.finish_from) * Hout,
                  sizeof(T) * (s.rows - s.finish_from) * Hout);
  };

  if (cell == Cell::LSTM) {
    const T* bias = cptr<T>(a.bias);
    const T* c0 = cptr<T>(a.c0);
    const bool proj = a.w_hr.has_value();
    at::Tensor cs = train ? pooled_output({N, H}, dtype) : at::empty({2, B, H}, opts);
    at::Tensor hraw = proj ? at::empty({B, H}, opts) : at::empty({0}, opts);
    T* csp = ptr<T>(cs);
    T* hrawp = proj ? ptr<T>(hraw) : nullptr;
    // h_raw W_hr^T, op(W) = W_hr^T [H, Hout]
    const StepWeights<T> whr(true, proj ? H : 0, Hout, proj ? cptr<T>(*a.w_hr) : nullptr, H,
                             Scratch::kPackedProj, a.T);
    for (size_t k = 0; k < steps.size(); ++k) {
      const Step& s = steps[k];
      T* gates = xgp + s.off * GH;
      // c_t goes to the saved [N, H] block when training, else to a ping-pong [2, B, H] buffer.
      T* c_out = train ? csp + s.off * H : csp + (k % 2) * B * H;
      const T* c_in = !train ? csp + ((k + 1) % 2) * B * H
                       : s.prev_off >= 0 ? csp + s.prev_off * H
                                         : nullptr;
      parallel_chunks(L, s.rows, [&](int64_t k0, int64_t k1) {
        recurrent(s, gates, T(1), L.col(k0), L.col(k1));
        for (int64_t b = 0; b < s.rows; ++b) {
          const T* cp = (b < s.from_prev ? c_in : c0) + b * H;
          T* ho = proj ? hrawp + b * H : yp + (s.off + b) * Hout;
          for (int64_t c = k0; c < k1; ++c) {
            const int64_t u = L.start(c), w = L.width(c);
            K.lstm_fwd(w, w, bias + L.col(c), gates + b * GH + L.col(c), cp + u,
                       c_out + b * H + u, ho + u, train);
          }
        }
      });
      if (proj) mul_split_n(whr, s.rows, hrawp, H, T(0), yp + s.off * Hout, Hout);
      finish_h(s);
      if (s.finish_from < s.rows)
        std::memcpy(ptr<T>(c_n) + s.finish_from * H, c_out + s.finish_from * H,
                    sizeof(T) * (s.rows - s.finish_from) * H);
    }
    if (train) {
      ws1 = xg;
      ws2 = cs;
    }
  } else if (cell == Cell::GRU) {
    const T* bias_x = cptr<T>(a.bias);
    const T* bias_hn = cptr<T>(a.bias_hn);
    at::Tensor hg = at::empty({B, GH}, opts);          // [B, 3H] h_prev W_hh^T of one step
    at::Tensor hn = train ? pooled_output({N, H}, dtype) : at::empty({0}, opts);  // [N, H] saved
    T* hgp = ptr<T>(hg);
    T* hnp = train ? ptr<T>(hn) : nullptr;
    for (const Step& s : steps) {
      parallel_chunks(L, s.rows, [&](int64_t k0, int64_t k1) {
        recurrent(s, hgp, T(0), L.col(k0), L.col(k1));
        for (int64_t b = 0; b < s.rows; ++b) {
          const T* hp = b < s.from_prev ? yp + (s.prev_off + b) * H : h0 + b * H;
          const int64_t r = s.off + b;
          for (int64_t c = k0; c < k1; ++c) {
            const int64_t u = L.start(c), w = L.width(c), col = L.col(c);
            K.gru_fwd(w, w, bias_x + col, bias_hn + u, xgp + r * GH + col, hgp + b * GH + col,
                      hp + u, yp + r * H + u, train ? hnp + r * H + u : nullptr, train);
          }
        }
      });
      finish_h(s);
    }
    if (train) {
      ws1 = xg;
      ws2 = hn;
    }
  } else {
    const bool relu = cell == Cell::RNN_RELU;
    const T* bias = cptr<T>(a.bias);
    for (const Step& s : steps) {
      T* gates = xgp + s.off * GH;
      parallel_chunks(L, s.rows, [&](int64_t k0, int64_t k1) {
        recurrent(s, gates, T(1), L.col(k0), L.col(k1));
        const int64_t u0 = L.start(k0), u1 = L.start(k1);
        for (int64_t b = 0; b < s.rows; ++b)
          K.rnn_fwd(u1 - u0, bias + u0, gates + b * GH + u0, yp + (s.off + b) * H + u0, relu);
      });
      finish_h(s);
    }
  }

  if (!a.packed) y = y.view({a.T, B, Hout});
  return {y, h_n, c_n, ws1, ws2};
}

}  // namespace

std::vector<at::Tensor> plain_fwd(const LayerArgs& a, bool train) {
  return dispatch_float(a.x.scalar_type(), [&](auto t) { return fwd_impl<decltype(t)>(a, train); });
}

}  // namespace fusedrnn::cpu
