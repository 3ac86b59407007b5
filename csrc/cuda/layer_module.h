// Python functions of the layer op, shared by the CUDA extension (bindings.cpp) and the host
// test build (harness/host_driver.cpp), so that the tests go through this glue as well: one
// layer_forward / layer_backward for every cell and option (the time loop: layer_driver.h).
//
// Each build gives bind_layer a Policy: `Guard`, constructed from the input's device before the
// Launch (the CUDA policy then picks up the current stream of that device), the member `stream`
// and static check(cudaError_t).
#pragma once

#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/utils/pybind.h>  // at::Tensor <-> torch.Tensor casters; lighter than
                                      // torch/extension.h, which the build does not need

#include <optional>
#include <string>
#include <vector>

#include "cuda/layer_driver.h"

namespace fusedrnn {
namespace cuda {

using OptT = std::optional<at::Tensor>;

// The `Launch` of layer_driver.h: launch(launcher, args...) calls one launcher of launchers.h
// as launcher(args..., stream) and hands its status to the policy's check.
template <class Policy>
struct CheckedLaunch : Policy {
  template <class Launcher, class... Args>
  void operator()(Launcher launcher, const Args&... args) const {
    Policy::check(launcher(args..., this->stream));
  }
};

// An operand as the kernels read it: contiguous, undefined where absent.
inline at::Tensor operand(const OptT& t) {
  return t.has_value() ? t->contiguous() : at::Tensor();
}

// [T, B, K] or [N, K] as contiguous [N, K] rows (x and the zoneout masks).
inline at::Tensor flat_rows(const OptT& t) {
  return t.has_value() ? t->reshape({-1, t->size(-1)}).contiguous() : at::Tensor();
}

// The active rows of every step: batch_sizes, or B of dense x [T, B, I] every step.
inline std::vector<int64_t> step_sizes(const OptT& batch_sizes, const at::Tensor& x, int64_t B) {
  if (!batch_sizes.has_value()) return std::vector<int64_t>(x.size(0), B);
  const at::Tensor b = batch_sizes->to(at::kCPU, at::kLong).contiguous();
  return {b.data_ptr<int64_t>(), b.data_ptr<int64_t>() + b.numel()};
}

// The Python side (fusedrnn/ops/cuda.py) validates shapes with torch.nn's messages; this only
// guards the raw-pointer kernels against what they cannot handle.
inline void check_operands(const at::Tensor& x, std::initializer_list<at::Tensor> ts) {
  for (const at::Tensor& t : ts) {
    if (!t.defined()) continue;
    TORCH_CHECK(t.scalar_type() == x.scalar_type(), "fusedrnn: operands must share one dtype, got ",
                t.scalar_type(), " and ", x.scalar_type());
    TORCH_CHECK(t.device() == x.device(), "fusedrnn: operands must be on one device, got ",
                t.device(), " and ", x.device());
  }
}

// The Layer of a Python call, given its cell, options and operands: with G, H and N, after
// checking the operands and the options as far as the kernels' pointers need it (a missing c0
// starts from zeros; each cell's kernels read only the options that the cell has).
inline Layer layer_of(Layer v) {
  check_operands(v.x, {v.h0, v.c0, v.w_ih, v.w_hh, v.b_ih, v.b_hh, v.w_hr, v.ln_ih_w, v.ln_ih_b,
                       v.ln_hh_w, v.ln_hh_b, v.ln_c_w, v.ln_c_b, v.w_ch, v.mask_h, v.mask_c});
  const bool lstm = v.cell == CellKind::lstm;
  TORCH_CHECK(!v.ln_ih_w.defined() || (v.ln_hh_w.defined() && (!lstm || v.ln_c_w.defined())),
              "fusedrnn: layer norm needs all its gains");
  v.G = lstm ? (v.cifg ? 3 : 4) : (v.cell == CellKind::gru ? 3 : 1);
  TORCH_CHECK(v.w_hh.dim() == 2 && v.w_hh.size(0) % v.G == 0,
              "fusedrnn: w_hh must be [G*H, Hout]");
  v.H = v.w_hh.size(0) / v.G;
  v.N = v.x.size(0);
  return v;
}

// Held by every op for its whole body: the kernels read the buffers that the op's own GEMMs
// fill as the dtype the driver allocated them in, so autocast must not retype those GEMMs
// (under autocast at::addmm on float operands would return bfloat16). Autocast belongs at the
// op's boundary (the caller casts the inputs once); inside, the op keeps its dtypes.
using NoAutocast = c10::impl::ExcludeDispatchKeyGuard;

// Defines the Python function `name`(the layer op's arguments but save, eps, extra...) ->
// op(launch, layer, extra...): every op's body, for one Launch per call on x's device with
// autocast excluded.
template <class Launch, class... Extra>
void def_op(pybind11::module& m, const char* name, const char* doc,
            std::vector<at::Tensor> (*op)(Launch&, const Layer&, Extra...)) {
  m.def(
      name,
      [op](const std::string& cell, const at::Tensor& x, const at::Tensor& h0, const OptT& c0,
           const at::Tensor& w_ih, const at::Tensor& w_hh, const OptT& b_ih, const OptT& b_hh,
           const OptT& w_hr, const OptT& batch_sizes, bool reverse,
           FRNN_BOOL_OPTIONS(FRNN_BOOL_PARAM)
           const OptT& ln_ih_w, const OptT& ln_ih_b, const OptT& ln_hh_w, const OptT& ln_hh_b,
           const OptT& ln_c_w, const OptT& ln_c_b, const OptT& w_ch, double p_h, double p_c,
           const OptT& mask_h, const OptT& mask_c, double eps, Extra... extra) {
        const NoAutocast no_autocast(c10::autocast_dispatch_keyset);
        typename Launch::Guard guard(x.device());
        const int64_t B = h0.size(0);
        const Layer layer = layer_of(
            {{FRNN_BOOL_OPTIONS(FRNN_BOOL_NAME)}, parse_cell(cell), reverse, p_h, p_c, eps, 0, 0,
             h0.size(1), B, 0, step_sizes(batch_sizes, x, B), flat_rows(x), operand(h0),
             operand(c0), operand(w_ih), operand(w_hh), operand(b_ih), operand(b_hh),
             operand(w_hr), operand(ln_ih_w), operand(ln_ih_b), operand(ln_hh_w),
             operand(ln_hh_b), operand(ln_c_w), operand(ln_c_b), operand(w_ch), flat_rows(mask_h),
             flat_rows(mask_c)});
        Launch launch;
        return op(launch, layer, extra...);
      },
      doc);
}

template <class Launch>
std::vector<at::Tensor> backward_op(Launch& launch, const Layer& L, const OptT& dy,
                                    const OptT& dh_n, const OptT& dc_n,
                                    const std::vector<OptT>& fwd) {
  TORCH_CHECK(fwd.size() == 10, "fusedrnn: layer_backward needs the forward's buffers");
  std::vector<at::Tensor> buffers;
  for (const OptT& t : fwd) buffers.push_back(operand(t));
  // a gradient that autograd did not pass is zero (a missing dc_n: see carried)
  const at::Tensor dy_ = dy ? operand(dy) : at::zeros({L.N, L.Hout}, L.x.options());
  const at::Tensor dh_n_ = dh_n ? operand(dh_n) : at::zeros({L.B, L.Hout}, L.x.options());
  const at::Tensor dc_n_ = L.cell == CellKind::lstm ? operand(dc_n) : at::Tensor();
  check_operands(L.x, {dy_, dh_n_, dc_n_, buffers[0], buffers[6], buffers[7]});  // y, h_prev, hraw
  const bool lstm = L.cell == CellKind::lstm, ln = L.ln_ih_w.defined();
  auto rows = [&](int k, bool needed) {  // a per-row buffer of every step, where needed
    return !needed || (buffers[k].defined() && buffers[k].size(0) == L.N);
  };
  TORCH_CHECK(rows(0, true) && rows(3, lstm || L.cell == CellKind::gru) && rows(4, ln) &&
                  rows(5, ln) && rows(6, true) && rows(7, L.w_hr.defined()) && rows(8, ln) &&
                  rows(9, ln),
              "fusedrnn: the saved activations are missing (forward run with save=False)");
  return layer_backward(launch, L, dy_, dh_n_, dc_n_, buffers);
}

template <class Policy>
void bind_layer(pybind11::module& m) {
  using Launch = CheckedLaunch<Policy>;
  def_op(m, "layer_forward",
         "One layer, one direction: returns [y, h_n, c_n, act, hhat, stats, h_prev, hraw, "
         "xhat_ih, rstd_ih] (None where absent; see layer_driver.h)",
         &layer_forward<Launch>);
  def_op(m, "layer_backward",
         "Gradients of layer_forward (the same arguments, then dy, dh_n, dc_n and its buffers) "
         "for x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, ln_ih_w, ln_ih_b, ln_hh_w, ln_hh_b, "
         "ln_c_w, ln_c_b, w_ch (None where absent)",
         &backward_op<Launch>);
}

}  // namespace cuda
}  // namespace fusedrnn
