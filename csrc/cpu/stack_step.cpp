// stack_step: one time step through a whole unidirectional stack of layers, for sampling
// loops (T = 1, no autograd). The step itself is StackStep (stack_step.h).
#include "stack_step.h"

#include "layer_ops.h"

namespace fusedrnn::cpu {

std::vector<at::Tensor> stack_step(const std::string& cell_name, const at::Tensor& x,
                                   const OptTensor& hx, const OptTensor& cx,
                                   const std::vector<at::Tensor>& w, int64_t L, bool has_bias,
                                   int64_t proj, bool batch_first, bool fallback) {
  const Cell cell = parse_cell(cell_name);
  c10::NoGradGuard no_grad;
  // Tensors that do not fit raise, or with fallback answer {}. The modules' one-step shortcut
  // asks this of every sampling call, so it is a few integer comparisons here instead of a
  // dozen Python attribute reads.
  const auto mismatch = [&](const auto&... why) {
    TORCH_CHECK(fallback, "fusedrnn stack_step: ", why...);
    return std::vector<at::Tensor>{};
  };
  const auto dtype = x.scalar_type();
  if (dtype != at::kFloat && dtype != at::kDouble)
    return mismatch("supports float32 and float64, got ", dtype);
  if (!x.device().is_cpu()) return mismatch("CPU tensors only");
  if (L < 1) return mismatch("num_layers must be >= 1");
  if (proj != 0 && cell != Cell::LSTM) return mismatch("proj_size is LSTM only");
  if (auto why = flat_weights_mismatch(w, L, has_bias, proj, dtype, "weights"); !why.empty())
    return mismatch(why);
  const bool seq = x.dim() == 3, lstm = cell == Cell::LSTM;
  if (x.dim() != 2 && !(seq && x.size(batch_first ? 1 : 0) == 1))
    return mismatch("x must be [B, I] or one step of [T, B, I] (batch_first: [B, T, I]), got ",
                    x.sizes());
  const int64_t B = x.size(seq && !batch_first ? 1 : 0), I = x.size(-1);
  if (w[0].dim() != 2 || w[0].size(1) != I)
    return mismatch("x has ", I, " features, the first layer's w_ih is ", w[0].sizes());
  const int64_t H = w[0].size(0) / num_gates(cell), Hout = proj > 0 ? proj : H;
  // [L, B, size]; a cell's call (x [B, I], one layer) may also pass [B, size]
  const auto fits = [&](const OptTensor& s, int64_t size) {
    const bool cell_state = s->dim() == 2 && x.dim() == 2 && L == 1;
    const int64_t b = cell_state ? 0 : 1;
    return (cell_state || (s->dim() == 3 && s->size(0) == L)) && s->size(b) == B &&
           s->size(b + 1) == size && s->scalar_type() == dtype && s->device().is_cpu();
  };
  if (hx && !fits(hx, Hout))
    return mismatch("hx must be [", L, ", ", B, ", ", Hout, "] of x's dtype, got ", hx->sizes(),
                    " ", hx->scalar_type());
  if (lstm && hx.has_value() != cx.has_value())
    return mismatch("an LSTM takes both hx and cx or neither");
  if (lstm && cx && !fits(cx, H))
    return mismatch("cx must be [", L, ", ", B, ", ", H, "] of x's dtype, got ", cx->sizes(), " ",
                    cx->scalar_type());
  const auto opts = x.options();
  // [L, B, Hout] and [L, B, H], or [B, .] like a cell's states
  const bool cell_h = hx && hx->dim() == 2, cell_c = lstm && cx && cx->dim() == 2;
  at::Tensor h_n = cell_h ? at::empty({B, Hout}, opts) : at::empty({L, B, Hout}, opts);
  at::Tensor c_n = cell_c ? at::empty({B, H}, opts) : at::empty({lstm ? L : 0, B, H}, opts);
  // y owns its memory, as torch.nn's output does; shaped here rather than by ATen view ops
  at::Tensor y = !seq ? at::empty({B, Hout}, opts)
                 : batch_first ? at::empty({B, 1, Hout}, opts) : at::empty({1, B, Hout}, opts);
  const at::Tensor xc = x.contiguous();
  const at::Tensor h_in = hx ? hx->contiguous() : at::zeros_like(h_n);
  const at::Tensor c_in = !lstm ? c_n : cx ? cx->contiguous() : at::zeros_like(c_n);
  dispatch_float(x.scalar_type(), [&](auto t) {
    using T = decltype(t);
    StackStep<T> stack(cell, w, L, has_bias, proj, B, I);
    T* top = ptr<T>(h_n) + (L - 1) * B * Hout;
    stack.run(ptr<T>(xc), ptr<T>(h_in), lstm ? ptr<T>(c_in) : nullptr, ptr<T>(h_n),
              lstm ? ptr<T>(c_n) : nullptr);
    std::copy(top, top + B * Hout, ptr<T>(y));
  });
  return {y, h_n, c_n};
}

}  // namespace fusedrnn::cpu
