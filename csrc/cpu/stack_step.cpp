// One time step through a whole unidirectional stack of layers, for sampling loops (T = 1, no
// autograd): per layer two GEMMs straight into one gates buffer and one fused pointwise call,
// no ATen ops in between, so that the cost is the arithmetic plus reading the weights.
#include "blas.h"
#include "common.h"
#include "layer_ops.h"

namespace fusedrnn::cpu {

namespace {

template <typename T>
std::vector<at::Tensor> step_impl(Cell cell, const at::Tensor& x_in, const at::Tensor& hx,
                                  const at::Tensor& cx, const std::vector<at::Tensor>& w,
                                  int64_t L, bool has_bias, int64_t proj) {
  const int64_t G = num_gates(cell);
  const int64_t B = x_in.size(0), Hout = hx.size(2);
  const int64_t per_layer = 2 + (has_bias ? 2 : 0) + (proj > 0 ? 1 : 0);
  const auto opts = x_in.options();
  const auto& K = kernels(T{});
  const int64_t H = w[0].size(0) / G, GH = G * H;
  at::Tensor h_n = at::empty({L, B, Hout}, opts);  // [L, B, Hout]
  at::Tensor c_n = cell == Cell::LSTM ? at::empty({L, B, H}, opts) : at::empty({0}, opts);
  at::Tensor gates = at::empty({B, GH}, opts);           // [B, G*H]
  at::Tensor hg = at::empty({cell == Cell::GRU ? B : 0, GH}, opts);  // [B, 3H] (GRU)
  at::Tensor hraw = at::empty({proj > 0 ? B : 0, H}, opts);        // [B, H] (projection)
  std::vector<T> bias(GH), bias_hn(H);
  at::Tensor x = x_in.contiguous();
  const at::Tensor h_in = hx.contiguous();
  const at::Tensor c_in = cell == Cell::LSTM ? cx.contiguous() : cx;
  T* gp = ptr<T>(gates);
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor w_ih = w[l * per_layer].contiguous();      // [G*H, I_l]
    const at::Tensor w_hh = w[l * per_layer + 1].contiguous();  // [G*H, Hout]
    const int64_t I = x.size(1);
    TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) == GH && w_ih.size(1) == I &&
                    w_hh.dim() == 2 && w_hh.size(0) == GH && w_hh.size(1) == Hout,
                "fusedrnn stack_step: layer ", l, " weights have shapes ", w_ih.sizes(), ", ",
                w_hh.sizes(), "; expected [", GH, ", ", I, "] and [", GH, ", ", Hout, "]");
    std::fill(bias.begin(), bias.end(), T(0));
    std::fill(bias_hn.begin(), bias_hn.end(), T(0));
    if (has_bias) {
      const at::Tensor b_ih = w[l * per_layer + 2].contiguous();  // [G*H]
      const at::Tensor b_hh = w[l * per_layer + 3].contiguous();  // [G*H]
      TORCH_CHECK(b_ih.numel() == GH && b_hh.numel() == GH, "fusedrnn stack_step: layer ", l,
                  " biases must have ", GH, " elements");
      const T* bi = cptr<T>(b_ih);
      const T* bh = cptr<T>(b_hh);
      const int64_t folded = cell == Cell::GRU ? 2 * H : GH;  // b_hn stays inside r * (.)
      for (int64_t k = 0; k < GH; ++k) bias[k] = bi[k] + (k < folded ? bh[k] : T(0));
      if (cell == Cell::GRU)
        for (int64_t k = 0; k < H; ++k) bias_hn[k] = bh[2 * H + k];
    }
    const T* hprev = cptr<T>(h_in) + l * B * Hout;
    T* hout = ptr<T>(h_n) + l * B * Hout;
    const T* xp = cptr<T>(x);
    const T* wi = cptr<T>(w_ih);
    const T* wh = cptr<T>(w_hh);
    T* hgp = cell == Cell::GRU ? ptr<T>(hg) : gp;  // GRU keeps the h-part apart (b_hn, r)
    const T hbeta = cell == Cell::GRU ? T(0) : T(1);
    // Both products of a column block in one pass: each thread streams its own weight rows.
    parallel_columns(GH, [&](int64_t c0, int64_t c1) {
      gemm<T>(false, true, B, c1 - c0, I, T(1), xp, I, wi + c0 * I, I, T(0), gp + c0, GH);
      gemm<T>(false, true, B, c1 - c0, Hout, T(1), hprev, Hout, wh + c0 * Hout, Hout, hbeta,
              hgp + c0, GH);
    });
    if (cell == Cell::GRU) {
      parallel_rows(B, H, 6, [&](int64_t b, int64_t j0, int64_t j1) {
        K.gru_fwd(j1 - j0, H, bias.data() + j0, bias_hn.data() + j0, gp + b * GH + j0,
                  hgp + b * GH + j0, hprev + b * H + j0, hout + b * H + j0, nullptr, false);
      });
    } else {
      if (cell == Cell::LSTM) {
        const T* cprev = cptr<T>(c_in) + l * B * H;
        T* cout = ptr<T>(c_n) + l * B * H;
        T* hdst = proj > 0 ? ptr<T>(hraw) : hout;
        parallel_rows(B, H, 8, [&](int64_t b, int64_t j0, int64_t j1) {
          K.lstm_fwd(j1 - j0, H, bias.data() + j0, gp + b * GH + j0, cprev + b * H + j0,
                     cout + b * H + j0, hdst + b * H + j0, false);
        });
        if (proj > 0) {
          const at::Tensor w_hr = w[l * per_layer + per_layer - 1].contiguous();  // [Hout, H]
          TORCH_CHECK(w_hr.dim() == 2 && w_hr.size(0) == Hout && w_hr.size(1) == H,
                      "fusedrnn stack_step: layer ", l, " w_hr must be [", Hout, ", ", H, "]");
          gemm<T>(false, true, B, Hout, H, T(1), hdst, H, cptr<T>(w_hr), H, T(0), hout, Hout);
        }
      } else {
        const bool relu = cell == Cell::RNN_RELU;
        parallel_rows(B, H, 3, [&](int64_t b, int64_t j0, int64_t j1) {
          K.rnn_fwd(j1 - j0, bias.data() + j0, gp + b * GH + j0, hout + b * H + j0, relu);
        });
      }
    }
    x = h_n[l];
  }
  return {h_n[L - 1].clone(), h_n, c_n};
}

}  // namespace

std::vector<at::Tensor> stack_step(const std::string& cell_name, const at::Tensor& x,
                                   const at::Tensor& hx, const std::optional<at::Tensor>& cx,
                                   const std::vector<at::Tensor>& flat_weights,
                                   int64_t num_layers, bool has_bias, int64_t proj_size) {
  const Cell cell = parse_cell(cell_name);
  c10::NoGradGuard no_grad;
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble,
              "fusedrnn stack_step supports float32 and float64, got ", dtype);
  TORCH_CHECK(x.device().is_cpu() && hx.device().is_cpu(), "fusedrnn stack_step: CPU tensors only");
  TORCH_CHECK(num_layers >= 1, "fusedrnn stack_step: num_layers must be >= 1");
  TORCH_CHECK(proj_size == 0 || cell == Cell::LSTM, "fusedrnn stack_step: proj_size is LSTM only");
  const int64_t per_layer = 2 + (has_bias ? 2 : 0) + (proj_size > 0 ? 1 : 0);
  TORCH_CHECK(static_cast<int64_t>(flat_weights.size()) == num_layers * per_layer,
              "fusedrnn stack_step: expected ", num_layers * per_layer, " weights, got ",
              flat_weights.size());
  for (const auto& t : flat_weights)
    TORCH_CHECK(t.scalar_type() == dtype && t.device().is_cpu(),
                "fusedrnn stack_step: every weight must be a CPU tensor of dtype ", dtype);
  TORCH_CHECK(x.dim() == 2, "fusedrnn stack_step: x must be [B, I], got ", x.sizes());
  TORCH_CHECK(hx.dim() == 3 && hx.size(0) == num_layers && hx.size(1) == x.size(0) &&
                  hx.scalar_type() == dtype,
              "fusedrnn stack_step: hx must be [L, B, Hout] of x's dtype, got ", hx.sizes());
  const int64_t G = num_gates(cell);
  const int64_t H = flat_weights[0].size(0) / G;
  TORCH_CHECK(hx.size(2) == (proj_size > 0 ? proj_size : H),
              "fusedrnn stack_step: hx has ", hx.size(2), " features, expected ",
              proj_size > 0 ? proj_size : H);
  at::Tensor c;
  if (cell == Cell::LSTM) {
    TORCH_CHECK(cx.has_value() && cx->dim() == 3 && cx->size(0) == num_layers &&
                    cx->size(1) == x.size(0) && cx->size(2) == H && cx->scalar_type() == dtype,
                "fusedrnn stack_step: LSTM needs cx [L, B, H]");
    c = *cx;
  }
  if (dtype == at::kFloat)
    return step_impl<float>(cell, x, hx, c, flat_weights, num_layers, has_bias, proj_size);
  return step_impl<double>(cell, x, hx, c, flat_weights, num_layers, has_bias, proj_size);
}

}  // namespace fusedrnn::cpu
