// Backward of one layer in one direction: the forward's steps visited in the opposite order.
//
//   per step (rows = batch_sizes[t]), gate columns in the forward's chunk layout (common.h):
//     dh = dy_t + dh_state                        (LSTM with projection: DH_t = dy_t + dh_state
//                                                  and dh_raw = DH_t W_hr, one small GEMM)
//     fused pointwise -> dG_t (pre-activation gradients), dc_state <- dc_{t-1}
//     dh_state = dG_t W_hh                         one GEMM per step into a preallocated buffer
//                                                 (GRU: dh_state = z dh + dGh_t W_hh, beta = 1)
//   after the loop, large GEMMs over all steps at once:
//     dW_ih = dG^T X     dX = dG W_ih     dW_hh = sum_t dG_t^T h_{t-1} (stacked: one GEMM)
//     dW_hr = DH^T H_raw                  db = column sums of dG (deterministic, no atomics)
//
// dh_state / dc_state start as grad h_n / grad c_n and end as grad h0 / grad c0: a row that
// finished early in the forward direction picks up its grad h_n when the walk reaches its last
// step, a row that started late in the reverse direction leaves its grad h0 behind.
// The per-element derivations are in csrc/cell_math.h.
#include "backward.h"

namespace fusedrnn::cpu {

namespace {

template <typename T>
std::vector<at::Tensor> bwd_impl(const LayerArgs& a, const at::Tensor& y_in, const at::Tensor& ws1,
                                 const at::Tensor& ws2, const at::Tensor& grad_y,
                                 const OptTensor& grad_hn, const OptTensor& grad_cn, int64_t mask) {
  const Cell cell = a.cell;
  const int64_t G = num_gates(cell), H = a.H, Hout = a.Hout, GH = G * H, B = a.B, N = a.N;
  const auto opts = a.x.options();
  const auto& K = kernels(T{});
  auto none = [&] { return at::empty({0}, opts); };
  std::vector<at::Tensor> out(8);
  for (auto& t : out) t = none();
  if (mask == 0) return out;

  const auto steps = schedule(a.batch_sizes, a.T, B, a.reverse);
  const auto [y, dy] = output_rows(y_in, grad_y, N, Hout);  // [N, Hout] each
  at::Tensor dh_state = state_grad(grad_hn, B, Hout, opts);                   // [B, Hout]
  at::Tensor dc_state = cell == Cell::LSTM ? state_grad(grad_cn, B, H, opts) : none();  // [B, H]
  const auto dtype = a.x.scalar_type();
  // [N, G*H] pre-activation gradients: input side, and recurrent side (GRU only)
  at::Tensor dG = scratch(Scratch::kGates, {N, GH}, dtype);
  at::Tensor dGh = cell == Cell::GRU ? scratch(Scratch::kGatesH, {N, GH}, dtype) : dG;

  const T* yp = cptr<T>(y);
  const T* dyp = cptr<T>(dy);
  const T* h0 = cptr<T>(a.h0);
  // dG_t W_hh, op(W) = W_hh [G*H, Hout]
  const StepWeights<T> whh(false, GH, Hout, cptr<T>(a.w_hh), Hout, Scratch::kPackedRecurrent, a.T);
  T* dhs = ptr<T>(dh_state);
  T* dGp = ptr<T>(dG);
  T* dGhp = ptr<T>(dGh);
  const bool proj = a.w_hr.has_value();
  const ChunkLayout& L = a.layout;
  at::Tensor DH, Hraw;

  if (cell == Cell::LSTM) {
    TORCH_CHECK(ws1.numel() == N * GH && ws2.numel() == N * H,
                "fusedrnn cpu backend: LSTM backward needs the forward's saved tensors");
    const T* act = cptr<T>(ws1);
    const T* C = cptr<T>(ws2);
    const T* c0 = cptr<T>(a.c0);
    T* dcs = ptr<T>(dc_state);
    at::Tensor dhraw;
    T *DHp = nullptr, *Hrawp = nullptr, *dhrawp = nullptr;
    std::optional<StepWeights<T>> whr;
    if (proj) {
      DH = scratch(Scratch::kWork1, {N, Hout}, dtype);
      Hraw = scratch(Scratch::kWork2, {N, H}, dtype);
      dhraw = at::empty({B, H}, opts);
      // DH_t W_hr, op(W) = W_hr [Hout, H]
      whr.emplace(false, Hout, H, cptr<T>(*a.w_hr), H, Scratch::kPackedProj, a.T);
      DHp = ptr<T>(DH);
      Hrawp = ptr<T>(Hraw);
      dhrawp = ptr<T>(dhraw);
    }
    for (auto it = steps.rbegin(); it != steps.rend(); ++it) {
      const Step& s = *it;
      if (proj) {
        T* dst = DHp + s.off * Hout;
        const T* src = dyp + s.off * Hout;
        for (int64_t k = 0; k < s.rows * Hout; ++k) dst[k] = src[k] + dhs[k];
        mul_split_n(*whr, s.rows, dst, Hout, T(0), dhrawp, H);
      }
      parallel_chunks(L, s.rows, [&](int64_t k0, int64_t k1) {
        for (int64_t b = 0; b < s.rows; ++b) {
          const int64_t r = s.off + b;
          const T* cp = b < s.from_prev ? C + (s.prev_off + b) * H : c0 + b * H;
          const T* dh_a = proj ? dhrawp + b * H : dyp + r * Hout;
          const T* dh_b = proj ? nullptr : dhs + b * Hout;
          for (int64_t c = k0; c < k1; ++c) {
            const int64_t u = L.start(c), w = L.width(c), col = L.col(c);
            K.lstm_bwd(w, w, act + r * GH + col, cp + u, C + r * H + u, dh_a + u,
                       dh_b ? dh_b + u : nullptr, dcs + b * H + u, dGp + r * GH + col,
                       proj ? Hrawp + r * H + u : nullptr);
          }
        }
      });
      mul_split_n(whh, s.rows, dGp + s.off * GH, GH, T(0), dhs, Hout);
    }
  } else if (cell == Cell::GRU) {
    TORCH_CHECK(ws1.numel() == N * GH && ws2.numel() == N * H,
                "fusedrnn cpu backend: GRU backward needs the forward's saved tensors");
    const T* act = cptr<T>(ws1);
    const T* hn = cptr<T>(ws2);
    for (auto it = steps.rbegin(); it != steps.rend(); ++it) {
      const Step& s = *it;
      parallel_chunks(L, s.rows, [&](int64_t k0, int64_t k1) {
        for (int64_t b = 0; b < s.rows; ++b) {
          const int64_t r = s.off + b;
          const T* hp = b < s.from_prev ? yp + (s.prev_off + b) * H : h0 + b * H;
          for (int64_t c = k0; c < k1; ++c) {
            const int64_t u = L.start(c), w = L.width(c), col = L.col(c);
            K.gru_bwd(w, w, act + r * GH + col, hn + r * H + u, hp + u, dyp + r * H + u,
                      dhs + b * H + u, dGp + r * GH + col, dGhp + r * GH + col);
          }
        }
      });
      mul_split_n(whh, s.rows, dGhp + s.off * GH, GH, T(1), dhs, H);
    }
  } else {
    const bool relu = cell == Cell::RNN_RELU;
    for (auto it = steps.rbegin(); it != steps.rend(); ++it) {
      const Step& s = *it;
      parallel_rows(s.rows, H, 2, [&](int64_t b, int64_t j0, int64_t j1) {
        const int64_t r = s.off + b;
        K.rnn_bwd(j1 - j0, yp + r * H + j0, dyp + r * H + j0, dhs + b * H + j0, dGp + r * H + j0,
                  relu);
      });
      mul_split_n(whh, s.rows, dGp + s.off * GH, GH, T(0), dhs, H);
    }
  }

  gemm_grads<T>(a, steps, dGp, dGhp, yp, proj ? cptr<T>(DH) : nullptr,
                proj ? cptr<T>(Hraw) : nullptr, mask, a.perm.defined(), out);
  if (mask & kGradH0) out[1] = dh_state;
  if ((mask & kGradC0) && cell == Cell::LSTM) out[2] = dc_state;
  if (mask & kGradBih) out[5] = dG.sum(0);
  if (mask & kGradBhh)  // LSTM / RNN add both biases once: the same gradient, one reduction
    out[6] = (cell != Cell::GRU && (mask & kGradBih)) ? out[5].clone() : dGh.sum(0);
  if (a.perm.defined()) {  // gradient rows (and bias entries) back to PyTorch's gate order
    const at::Tensor inv = at::empty_like(a.perm).index_copy_(
        0, a.perm, at::arange(a.perm.numel(), a.perm.options()));
    for (int k : {3, 4})
      if (out[k].numel() > 0) {
        at::Tensor dst = pooled_output(out[k].sizes(), dtype);
        out[k] = at::index_select_out(dst, out[k], 0, inv);
      }
    for (int k : {5, 6})
      if (out[k].numel() > 0) out[k] = out[k].index_select(0, inv);
  }
  return out;
}

}  // namespace

std::vector<at::Tensor> plain_bwd(const LayerArgs& a, const at::Tensor& y,
                                  const std::vector<at::Tensor>& saved, const at::Tensor& grad_y,
                                  const OptTensor& grad_hn, const OptTensor& grad_cn,
                                  int64_t grad_mask) {
  TORCH_CHECK(saved.size() == 2, "fusedrnn cpu backend: the backward needs the forward's 2 "
              "saved tensors");
  return dispatch_float(a.x.scalar_type(), [&](auto t) {
    return bwd_impl<decltype(t)>(a, y, saved[0].contiguous(), saved[1].contiguous(), grad_y,
                                 grad_hn, grad_cn, grad_mask);
  });
}

}  // namespace fusedrnn::cpu
