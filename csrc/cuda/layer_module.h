// Python functions of a layer module, shared by the CUDA extension (bindings.cpp) and the host
// test build (harness/host_driver.cpp), so that the tests go through this glue as well.
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

inline at::Tensor opt(const std::optional<at::Tensor>& t) {
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

// Held by every op for its whole body: the kernels read the buffers that the op's own GEMMs
// fill as the dtype the driver allocated them in, so autocast must not retype those GEMMs
// (under autocast at::addmm on float operands would return bfloat16). Autocast belongs at the
// op's boundary (the caller casts the inputs once); inside, the op keeps its dtypes.
using NoAutocast = c10::impl::ExcludeDispatchKeyGuard;

template <class Launch>
void bind_layer(pybind11::module& m) {
  namespace py = pybind11;
  m.def(
      "layer_forward",
      [](const std::string& cell, const at::Tensor& x, const at::Tensor& h0,
         const std::optional<at::Tensor>& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
         const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
         const std::optional<at::Tensor>& w_hr, const std::vector<int64_t>& batch_sizes,
         bool reverse, bool save) {
        const CellKind kind = parse_cell(cell);
        check_operands(x, {x, h0, opt(c0), w_ih, w_hh, opt(b_ih), opt(b_hh), opt(w_hr)});
        TORCH_CHECK(kind != CellKind::lstm || c0.has_value(), "fusedrnn: LSTM needs c0");
        TORCH_CHECK(b_ih.has_value() == b_hh.has_value(), "fusedrnn: give both biases or none");
        const NoAutocast no_autocast(c10::autocast_dispatch_keyset);
        typename Launch::Guard guard(x.device());
        Launch launch;
        return layer_forward(launch, kind, x, h0, opt(c0), w_ih, w_hh, opt(b_ih), opt(b_hh),
                             opt(w_hr), batch_sizes, reverse, save);
      },
      "One layer, one direction: returns [y, h_n, c_n, saved, h_prev, hpre]",
      py::arg("cell"), py::arg("x"), py::arg("h0"), py::arg("c0"), py::arg("w_ih"),
      py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"), py::arg("w_hr"),
      py::arg("batch_sizes"), py::arg("reverse"), py::arg("save"));
  m.def(
      "layer_backward",
      [](const std::string& cell, const at::Tensor& dy, const at::Tensor& dh_n,
         const std::optional<at::Tensor>& dc_n, const at::Tensor& x, const at::Tensor& w_ih,
         const at::Tensor& w_hh, const std::optional<at::Tensor>& w_hr, bool has_bias,
         const std::vector<int64_t>& batch_sizes, bool reverse, const at::Tensor& y,
         const std::optional<at::Tensor>& saved, const at::Tensor& h_prev,
         const std::optional<at::Tensor>& hpre) {
        const CellKind kind = parse_cell(cell);
        check_operands(x, {dy, dh_n, opt(dc_n), x, w_ih, w_hh, opt(w_hr), y, h_prev, opt(hpre)});
        TORCH_CHECK(kind == CellKind::rnn_tanh || kind == CellKind::rnn_relu ||
                        (saved.has_value() && saved->is_contiguous()),
                    "fusedrnn: the saved activations are missing");
        const NoAutocast no_autocast(c10::autocast_dispatch_keyset);
        typename Launch::Guard guard(x.device());
        Launch launch;
        return layer_backward(launch, kind, dy, dh_n, opt(dc_n), x, w_ih, w_hh, opt(w_hr),
                              has_bias, batch_sizes, reverse, y, opt(saved), h_prev, opt(hpre));
      },
      "Gradients of layer_forward: returns [dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr]",
      py::arg("cell"), py::arg("dy"), py::arg("dh_n"), py::arg("dc_n"), py::arg("x"),
      py::arg("w_ih"), py::arg("w_hh"), py::arg("w_hr"), py::arg("has_bias"),
      py::arg("batch_sizes"), py::arg("reverse"), py::arg("y"), py::arg("saved"),
      py::arg("h_prev"), py::arg("hpre"));
}

}  // namespace cuda
}  // namespace fusedrnn
