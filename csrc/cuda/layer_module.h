// Python functions of the layer op, shared by the CUDA extension (bindings.cpp) and the host
// test build (harness/host_driver.cpp), so that the tests go through this glue as well: one
// layer_forward / layer_backward for every cell and option (the time loop: layer_driver.h).
//
// A Launch type (see layer_driver.h) also provides `Guard`, constructed from the input's device
// before the Launch itself (the CUDA Launch picks up the current stream of that device).
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

inline at::Tensor opt(const OptT& t) {
  return t.has_value() ? *t : at::Tensor();
}

// The Python side (fusedrnn/ops/cuda.py) validates shapes with torch.nn's messages; this only
// guards the raw-pointer kernels against what they cannot handle.
inline void check_operands(const at::Tensor& x, std::initializer_list<at::Tensor> ts) {
  TORCH_CHECK(x.dim() == 2, "fusedrnn: x must be [N, I]");
  for (const at::Tensor& t : ts) {
    if (!t.defined()) continue;
    TORCH_CHECK(t.is_contiguous(), "fusedrnn: operands must be contiguous");
    TORCH_CHECK(t.scalar_type() == x.scalar_type(), "fusedrnn: operands must share one dtype, got ",
                t.scalar_type(), " and ", x.scalar_type());
    TORCH_CHECK(t.device() == x.device(), "fusedrnn: operands must be on one device, got ",
                t.device(), " and ", x.device());
  }
}

// The Layer of a Python call (the backward passes no layer-norm biases); checks the options
// against the cell as far as the kernels' pointers need it.
inline Layer layer_of(const std::string& cell, bool cifg, const at::Tensor& w_hh,
                      const at::Tensor& h, int64_t N, bool proj, const OptT& ln_ih_w,
                      const OptT& ln_ih_b, const OptT& ln_hh_w, const OptT& ln_hh_b,
                      const OptT& ln_c_w, const OptT& ln_c_b, const OptT& w_ch, double p_h,
                      double p_c, const OptT& mask_h, const OptT& mask_c, double eps) {
  Layer v{parse_cell(cell), cifg, p_h, p_c, eps, 0, 0, h.size(1), h.size(0), N,
          opt(ln_ih_w), opt(ln_ih_b), opt(ln_hh_w), opt(ln_hh_b), opt(ln_c_w), opt(ln_c_b),
          opt(w_ch), opt(mask_h), opt(mask_c)};
  const bool lstm = v.cell == CellKind::lstm;
  TORCH_CHECK(lstm || v.cell == CellKind::gru || !v.options().any(),
              "fusedrnn: cell variants exist for lstm and gru");
  TORCH_CHECK(lstm || !(cifg || w_ch.has_value() || proj),
              "fusedrnn: cifg, peephole, proj are LSTM-only");
  TORCH_CHECK(!ln_ih_w.has_value() || (ln_hh_w.has_value() && (!lstm || ln_c_w.has_value())),
              "fusedrnn: layer norm needs all its gains");
  v.G = lstm ? (cifg ? 3 : 4) : (v.cell == CellKind::gru ? 3 : 1);
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) % v.G == 0, "fusedrnn: w_hh must be [G*H, Hout]");
  v.H = w_hh.size(0) / v.G;
  return v;
}

// Held by every op for its whole body: the kernels read the buffers that the op's own GEMMs
// fill as the dtype the driver allocated them in, so autocast must not retype those GEMMs
// (under autocast at::addmm on float operands would return bfloat16). Autocast belongs at the
// op's boundary (the caller casts the inputs once); inside, the op keeps its dtypes.
using NoAutocast = c10::impl::ExcludeDispatchKeyGuard;

template <class Launch>
void bind_layer(pybind11::module& m) {
  m.def(
      "layer_forward",
      [](const std::string& cell, const at::Tensor& x, const at::Tensor& h0, const OptT& c0,
         const at::Tensor& w_ih, const at::Tensor& w_hh, const OptT& b_ih, const OptT& b_hh,
         const OptT& w_hr, const std::vector<int64_t>& batch_sizes, bool reverse, bool cifg,
         const OptT& ln_ih_w, const OptT& ln_ih_b, const OptT& ln_hh_w, const OptT& ln_hh_b,
         const OptT& ln_c_w, const OptT& ln_c_b, const OptT& w_ch, double p_h, double p_c,
         const OptT& mask_h, const OptT& mask_c, double eps,
         bool save) -> std::vector<at::Tensor> {
        check_operands(x, {x, h0, opt(c0), w_ih, w_hh, opt(b_ih), opt(b_hh), opt(w_hr),
                           opt(ln_ih_w), opt(ln_ih_b), opt(ln_hh_w), opt(ln_hh_b), opt(ln_c_w),
                           opt(ln_c_b), opt(w_ch), opt(mask_h), opt(mask_c)});
        const NoAutocast no_autocast(c10::autocast_dispatch_keyset);
        typename Launch::Guard guard(x.device());
        Launch launch;
        const Layer v = layer_of(cell, cifg, w_hh, h0, x.size(0), w_hr.has_value(), ln_ih_w,
                                 ln_ih_b, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b, w_ch, p_h, p_c,
                                 mask_h, mask_c, eps);
        TORCH_CHECK(v.cell != CellKind::lstm || c0.has_value(), "fusedrnn: LSTM needs c0");
        return layer_forward(launch, v, x, h0, opt(c0), w_ih, w_hh, opt(b_ih), opt(b_hh),
                             opt(w_hr), batch_sizes, reverse, save);
      },
      "One layer, one direction: returns [y, h_n, c_n, act, hhat, stats, h_prev, hraw, xhat_ih, "
      "rstd_ih] (None where absent; see layer_driver.h)");
  m.def(
      "layer_backward",
      [](const std::string& cell, const at::Tensor& dy, const at::Tensor& dh_n, const OptT& dc_n,
         const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh, const OptT& w_hr,
         bool cifg, const OptT& ln_ih_w, const OptT& ln_hh_w, const OptT& ln_c_w,
         const OptT& w_ch, double p_h, double p_c, const OptT& mask_h, const OptT& mask_c,
         const std::vector<bool>& has, const std::vector<int64_t>& batch_sizes, bool reverse,
         double eps, const std::vector<OptT>& fwd) -> std::vector<at::Tensor> {
        check_operands(x, {dy, dh_n, opt(dc_n), x, w_ih, w_hh, opt(w_hr), opt(ln_ih_w),
                           opt(ln_hh_w), opt(ln_c_w), opt(w_ch), opt(mask_h), opt(mask_c)});
        TORCH_CHECK(has.size() == 15 && fwd.size() == 10,
                    "fusedrnn: layer_backward needs 15 presence flags and the forward's buffers");
        const NoAutocast no_autocast(c10::autocast_dispatch_keyset);
        typename Launch::Guard guard(x.device());
        Launch launch;
        const Layer v = layer_of(cell, cifg, w_hh, dh_n, x.size(0), w_hr.has_value(), ln_ih_w,
                                 {}, ln_hh_w, {}, ln_c_w, {}, w_ch, p_h, p_c, mask_h, mask_c, eps);
        std::vector<at::Tensor> buffers;
        for (const auto& t : fwd) {
          TORCH_CHECK(!t.has_value() || t->is_contiguous(), "fusedrnn: buffers not contiguous");
          buffers.push_back(opt(t));
        }
        check_operands(x, {buffers[0], buffers[6], buffers[7]});  // y, h_prev, hraw
        const bool lstm = v.cell == CellKind::lstm, ln = ln_ih_w.has_value();
        auto rows = [&](int k, bool needed) {  // a per-row buffer of every step, where needed
          return !needed || (buffers[k].defined() && buffers[k].size(0) == v.N);
        };
        TORCH_CHECK(rows(0, true) && rows(3, lstm || v.cell == CellKind::gru) && rows(4, ln) &&
                        rows(5, ln) && rows(6, true) && rows(7, w_hr.has_value()) &&
                        rows(8, ln) && rows(9, ln),
                    "fusedrnn: the saved activations are missing (forward run with save=False)");
        return layer_backward(launch, v, dy, dh_n, opt(dc_n), x, w_ih, w_hh, opt(w_hr), has,
                              batch_sizes, reverse, buffers);
      },
      "Gradients of layer_forward for x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, ln_ih_w, "
      "ln_ih_b, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b, w_ch (None where absent)");
}

}  // namespace cuda
}  // namespace fusedrnn
