// stack_step: one time step through a whole unidirectional stack of layers, for sampling
// loops (T = 1, no autograd). The step itself is StackStep (stack_step.h).
#include "stack_step.h"

#include "layer_ops.h"

namespace fusedrnn::cpu {

namespace {

template <typename T>
std::vector<at::Tensor> step_impl(Cell cell, const at::Tensor& x, const at::Tensor& hx,
                                  const at::Tensor& cx, const std::vector<at::Tensor>& w,
                                  int64_t L, bool has_bias, int64_t proj) {
  const int64_t B = x.size(0);
  StackStep<T> stack(cell, w, L, has_bias, proj, B, x.size(1));
  const auto opts = x.options();
  at::Tensor h_n = at::empty({L, B, stack.Hout()}, opts);  // [L, B, Hout]
  at::Tensor c_n = cell == Cell::LSTM ? at::empty({L, B, stack.H()}, opts) : at::empty({0}, opts);
  const at::Tensor xc = x.contiguous();
  const at::Tensor h_in = hx.contiguous();
  const at::Tensor c_in = cell == Cell::LSTM ? cx.contiguous() : cx;
  stack.run(cptr<T>(xc), cptr<T>(h_in), cell == Cell::LSTM ? cptr<T>(c_in) : nullptr,
            ptr<T>(h_n), cell == Cell::LSTM ? ptr<T>(c_n) : nullptr);
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
  check_flat_weights(flat_weights, num_layers * per_layer, dtype, "fusedrnn stack_step",
                     "weights");
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
  return dispatch_float(dtype, [&](auto t) {
    return step_impl<decltype(t)>(cell, x, hx, c, flat_weights, num_layers, has_bias, proj_size);
  });
}

}  // namespace fusedrnn::cpu
