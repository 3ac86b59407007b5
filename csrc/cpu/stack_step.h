// One time step through a unidirectional stack of plain layers (T = 1, no autograd) on raw
// buffers: what stack_step (one step per call) and generate (one step per character, a whole
// text per call) share, so that both run exactly the same arithmetic.
//
// Per layer: two GEMMs straight into one gates buffer and one fused pointwise call, no ATen op
// in between; the folded biases are prepared once, when the stack is built.
#pragma once

#include <cmath>
#include <type_traits>
#include <vector>

#include "blas.h"
#include "common.h"

namespace fusedrnn::cpu {

template <typename T>
class StackStep {
 public:
  // w: torch.nn's flat weight list of a unidirectional stack (weights_per_layer), per layer
  // w_ih [G*H, I_l], w_hh [G*H, Hout], b_ih, b_hh [G*H], w_hr [Hout, H]. B rows; the first
  // layer reads I0 features. half: w_ih and w_hh are kept rounded to float16 (half the bytes
  // each step streams) and widened in the products, which then equal float32 products with the
  // rounded weights (callers pass it for float32 stacks without projection only: generate).
  // interleave: a caller that runs many steps (generate) has the float32 weights that the
  // small-row product reads stored in its interleaved layout (kernels.h), packed once: a block
  // is then read front to back, which streams weights beyond the L2 cache faster (a 3x512 LSTM
  // sampled on one core of the AVX-512 EPYC: 1.3-1.5x the characters per second); the sums do
  // not change.
  StackStep(Cell cell, const std::vector<at::Tensor>& w, int64_t L, bool has_bias, int64_t proj,
            int64_t B, int64_t I0, bool half = false, bool interleave = false)
      : cell_(cell), L_(L), B_(B), proj_(proj), H_(w[0].size(0) / num_gates(cell)),
        Hout_(proj > 0 ? proj : H_), GH_(num_gates(cell) * H_), half_(half) {
    const int64_t GH = GH_, per_layer = weights_per_layer(has_bias, proj);
    // Plain buffers, not tensors: a module's sampling loop builds one per step (stack_step),
    // and each ATen allocation is a dispatcher round trip.
    gates_.resize(B * GH);                                 // [B, G*H]
    hg_.resize(cell == Cell::GRU ? B * GH : 0);            // [B, 3H] (GRU)
    hraw_.resize(proj > 0 ? B * H_ : 0);                   // [B, H] (projection)
    for (int64_t l = 0, I = I0; l < L; ++l, I = Hout_) {
      const at::Tensor* wl = w.data() + l * per_layer;  // w_ih, w_hh[, b_ih, b_hh][, w_hr]
      Layer y{wl[0].contiguous(), wl[1].contiguous()};
      TORCH_CHECK(y.w_ih.dim() == 2 && y.w_ih.size(0) == GH && y.w_ih.size(1) == I &&
                      y.w_hh.dim() == 2 && y.w_hh.size(0) == GH && y.w_hh.size(1) == Hout_,
                  "fusedrnn stack_step: layer ", l, " weights have shapes ", y.w_ih.sizes(),
                  ", ", y.w_hh.sizes(), "; expected [", GH, ", ", I, "] and [", GH, ", ", Hout_,
                  "]");
      if (half) {
        y.w_ih = to_half(y.w_ih, l, "w_ih");
        y.w_hh = to_half(y.w_hh, l, "w_hh");
      }
      // the small-row product reads them (half, or few rows) and its 8-row blocks exist (float)
      const bool small = std::is_same_v<T, float> && (half || B <= kSmallM);
      if (interleave && small && I % 8 == 0) {
        y.w_ih = interleaved(y.w_ih);
        y.il_ih = true;
      }
      if (interleave && small && Hout_ % 8 == 0) {
        y.w_hh = interleaved(y.w_hh);
        y.il_hh = true;
      }
      y.bias.assign(GH, T(0));
      y.bias_hn.assign(H_, T(0));
      if (has_bias) {
        const at::Tensor b_ih = wl[2].contiguous(), b_hh = wl[3].contiguous();  // [G*H] each
        TORCH_CHECK(b_ih.numel() == GH && b_hh.numel() == GH, "fusedrnn stack_step: layer ", l,
                    " biases must have ", GH, " elements");
        const T *bi = ptr<T>(b_ih), *bh = ptr<T>(b_hh);
        const int64_t folded = cell == Cell::GRU ? 2 * H_ : GH;  // b_hn stays inside r * (.)
        for (int64_t k = 0; k < GH; ++k) y.bias[k] = bi[k] + (k < folded ? bh[k] : T(0));
        if (cell == Cell::GRU) std::copy_n(bh + 2 * H_, H_, y.bias_hn.begin());
      }
      if (proj > 0) {
        y.w_hr = wl[per_layer - 1].contiguous();  // [Hout, H]
        TORCH_CHECK(y.w_hr.dim() == 2 && y.w_hr.size(0) == Hout_ && y.w_hr.size(1) == H_,
                    "fusedrnn stack_step: layer ", l, " w_hr must be [", Hout_, ", ", H_, "]");
      }
      layers_.push_back(std::move(y));
    }
  }

  // The first layer's input products x W_ih^T of `rows` rows x [rows, I0] -> out [rows, G*H],
  // as run() computes them. Each row's result depends on that row alone as long as
  // rows, B <= kSmallM (the small-m kernel; the caller keeps to that), so a table of them per
  // input symbol can stand in for the product (run's gates0).
  void input_products(const T* x, int64_t rows, T* out) const {
    parallel_columns(GH_, [&](int64_t c0, int64_t c1) {
      product(layers_[0], true, rows, c0, c1, x, T(0), out, GH_);
    });
  }

  // x [B, I0]; h_in, h_out [L, B, Hout]; c_in, c_out [L, B, H] (LSTM only, else unused).
  // The in and out buffers must not overlap. The top layer's output is h_out + (L-1)*B*Hout.
  // gates0 [B, G*H] (optional): the first layer's input products, already computed
  // (input_products); x is then not read.
  void run(const T* x, const T* h_in, const T* c_in, T* h_out, T* c_out,
           const T* gates0 = nullptr) {
    const auto& K = kernels(T{});
    const int64_t B = B_, H = H_, Hout = Hout_, GH = GH_;
    const bool gru = cell_ == Cell::GRU, lstm = cell_ == Cell::LSTM;
    T* gp = gates_.data();
    for (int64_t l = 0; l < L_; ++l) {
      const Layer& y = layers_[l];
      const T* hprev = h_in + l * B * Hout;
      T* hout = h_out + l * B * Hout;
      T* hgp = gru ? hg_.data() : gp;  // GRU keeps the h-part apart (b_hn, r)
      const T hbeta = gru ? T(0) : T(1);
      const bool have_x = l == 0 && gates0 != nullptr;
      if (have_x) std::copy(gates0, gates0 + B * GH, gp);
      // Both products of a column block in one pass: each thread streams its own weight rows.
      parallel_columns(GH, [&](int64_t c0, int64_t c1) {
        if (!have_x) product(y, true, B, c0, c1, x, T(0), gp, GH);
        product(y, false, B, c0, c1, hprev, hbeta, hgp, GH);
      });
      const T *bias = y.bias.data(), *bias_hn = y.bias_hn.data();
      const T* cprev = lstm ? c_in + l * B * H : nullptr;
      T* cout = lstm ? c_out + l * B * H : nullptr;
      T* hdst = proj_ > 0 ? hraw_.data() : hout;  // LSTM: h before the projection
      // units [0, B*H) split over the threads; a chunk may cover the tail of one row and the
      // head of the next, so the kernels see at most a row at a time
      at::parallel_for(0, B * H, grain_of(gru ? 6 : lstm ? 8 : 3), [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0, n; i < i1; i += n) {
          const int64_t b = i / H, j0 = i - b * H, g = b * GH + j0;  // unit j0 of row b
          n = std::min(H - j0, i1 - i);
          if (gru)
            K.gru_fwd_hg(n, H, bias + j0, bias_hn + j0, gp + g, hgp + g, hprev + i, hout + i);
          else if (lstm)
            K.lstm_fwd(false, n, H, bias + j0, gp + g, cprev + i, cout + i, hdst + i);
          else
            K.rnn_fwd(cell_ == Cell::RNN_RELU, n, bias + j0, gp + g, hout + i);
        }
      });
      if (proj_ > 0)
        gemm<T>(false, true, B, Hout, H, T(1), hdst, H, ptr<T>(y.w_hr), H, T(0), hout, Hout);
      x = hout;
    }
  }

 private:
  struct Layer {
    at::Tensor w_ih, w_hh, w_hr;  // [G*H, I], [G*H, Hout], [Hout, H] (projection); half: float16
    bool il_ih = false, il_hh = false;  // w_ih, w_hh in the interleaved layout
    std::vector<T> bias;          // [G*H]: b_ih + b_hh (GRU: b_ih + (b_hr, b_hz, 0))
    std::vector<T> bias_hn;       // [H]: b_hn (GRU)
  };
  // C[:, c0:c1] = A op(W)[:, c0:c1] + beta C[:, c0:c1] for W = w_ih (input) or w_hh.
  void product(const Layer& y, bool input, int64_t rows, int64_t c0, int64_t c1, const T* A,
               T beta, T* C, int64_t ldc) const {
    const at::Tensor& W = input ? y.w_ih : y.w_hh;
    const bool il = input ? y.il_ih : y.il_hh;
    const int64_t k = W.size(1);
    if (half_) {  // any number of rows: the block of W rows is reused from L1 for each
      const auto* Wh = reinterpret_cast<const uint16_t*>(W.const_data_ptr<at::Half>()) + c0 * k;
      kernels(T{}).gemm_small_m_half(rows, c1 - c0, k, A, k, Wh, k, beta, C + c0, ldc, il);
      return;
    }
    if (il)  // c0 is a multiple of 16 (parallel_columns): its blocks are the packed ones
      return kernels(T{}).gemm_small_m(rows, c1 - c0, k, A, k, ptr<T>(W) + c0 * k, k, beta,
                                       C + c0, ldc, true);
    gemm<T>(false, true, rows, c1 - c0, k, T(1), A, k, ptr<T>(W) + c0 * k, k, beta, C + c0, ldc);
  }
  // W [n, k] with each block of eight rows stored [k/8][8][8] (the interleaved layout of
  // kernels.h), the last n % 8 rows as they are.
  static at::Tensor interleaved(const at::Tensor& W) {
    const int64_t n = W.size(0), k = W.size(1), nb = n / 8 * 8;
    at::Tensor out = W.clone();
    out.narrow(0, 0, nb).view({nb / 8, k / 8, 8, 8}).copy_(
        W.narrow(0, 0, nb).view({nb / 8, 8, k / 8, 8}).permute({0, 2, 1, 3}));
    return out;
  }
  static at::Tensor to_half(const at::Tensor& w, int64_t l, const char* name) {
    const double top = w.numel() == 0 ? 0.0 : w.abs().max().item<double>();
    TORCH_CHECK(std::isfinite(top) && top <= 65504.0, "fusedrnn: layer ", l, " ", name,
                " has values up to ", top, ", beyond float16's range (65504)");
    return w.to(at::kHalf).contiguous();
  }
  Cell cell_;
  int64_t L_, B_, proj_, H_, Hout_, GH_;
  bool half_;
  std::vector<Layer> layers_;
  std::vector<T> gates_, hg_, hraw_;
};

}  // namespace fusedrnn::cpu
