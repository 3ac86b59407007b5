// Python functions of the layer op, shared by the CUDA extension (bindings.cpp) and the host
// test build (harness/host_driver.cpp), so that the tests go through this glue as well. One
// layer_forward / layer_backward for every cell: with `variant` off (no layer norm, zoneout,
// peephole or cifg) they run the plain time loop (layer_driver.h), else the variant one
// (variant_driver.h).
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
#include "cuda/variant_driver.h"

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

// Variant layers only (the Python side sends them only for lstm and gru).
inline VariantConfig variant_config(const std::string& cell, bool cifg, bool ln, bool peep,
                                    bool proj, double p_h, double p_c, double eps,
                                    const at::Tensor& w_hh, int64_t B, int64_t Hout,
                                    int64_t N) {
  TORCH_CHECK(cell == "lstm" || cell == "gru", "fusedrnn: cell variants exist for lstm and gru");
  VariantConfig v{};
  v.lstm = cell == "lstm";
  TORCH_CHECK(v.lstm || !(cifg || peep || proj), "fusedrnn: cifg, peephole, proj are LSTM-only");
  v.ln = ln;
  v.peep = peep;
  v.cifg = cifg;
  v.proj = proj;
  v.p_h = p_h;
  v.p_c = p_c;
  v.eps = eps;
  v.G = v.lstm ? (cifg ? 3 : 4) : 3;
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) % v.G == 0, "fusedrnn: w_hh must be [G*H, Hout]");
  v.H = w_hh.size(0) / v.G;
  v.B = B;
  v.Hout = Hout;
  v.N = N;
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
         const OptT& w_hr, const std::vector<int64_t>& batch_sizes, bool reverse, bool variant,
         bool cifg, const OptT& ln_ih_w, const OptT& ln_ih_b, const OptT& ln_hh_w,
         const OptT& ln_hh_b, const OptT& ln_c_w, const OptT& ln_c_b, const OptT& w_ch,
         double p_h, double p_c, const OptT& mask_h, const OptT& mask_c, double eps,
         bool save) -> std::vector<at::Tensor> {
        check_operands(x, {x, h0, opt(c0), w_ih, w_hh, opt(b_ih), opt(b_hh), opt(w_hr),
                           opt(ln_ih_w), opt(ln_ih_b), opt(ln_hh_w), opt(ln_hh_b), opt(ln_c_w),
                           opt(ln_c_b), opt(w_ch), opt(mask_h), opt(mask_c)});
        const NoAutocast no_autocast(c10::autocast_dispatch_keyset);
        typename Launch::Guard guard(x.device());
        Launch launch;
        if (!variant) {
          const CellKind kind = parse_cell(cell);
          TORCH_CHECK(kind != CellKind::lstm || c0.has_value(), "fusedrnn: LSTM needs c0");
          TORCH_CHECK(b_ih.has_value() == b_hh.has_value(),
                      "fusedrnn: give both biases or none");
          return layer_forward(launch, kind, x, h0, opt(c0), w_ih, w_hh, opt(b_ih), opt(b_hh),
                               opt(w_hr), batch_sizes, reverse, save);
        }
        const VariantConfig v =
            variant_config(cell, cifg, ln_ih_w.has_value(), w_ch.has_value(), w_hr.has_value(),
                           p_h, p_c, eps, w_hh, h0.size(0), h0.size(1), x.size(0));
        TORCH_CHECK(!v.lstm || c0.has_value(), "fusedrnn: LSTM needs c0");
        TORCH_CHECK(!v.ln || (ln_hh_w.has_value() && (!v.lstm || ln_c_w.has_value())),
                    "fusedrnn: layer norm needs all its gains");
        return variant_forward(launch, v, x, h0, opt(c0), w_ih, w_hh, opt(b_ih), opt(b_hh),
                               opt(w_hr), opt(ln_ih_w), opt(ln_ih_b), opt(ln_hh_w), opt(ln_hh_b),
                               opt(ln_c_w), opt(ln_c_b), opt(w_ch), opt(mask_h), opt(mask_c),
                               batch_sizes, reverse, save);
      },
      "One layer, one direction: returns [y, h_n, c_n, saved, h_prev, hpre] (plain) or [y, h_n, "
      "c_n, act, cell, hhat, stats, h_prev, hraw, xhat_ih, rstd_ih] (variant)");
  m.def(
      "layer_backward",
      [](const std::string& cell, const at::Tensor& dy, const at::Tensor& dh_n, const OptT& dc_n,
         const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh, const OptT& w_hr,
         bool variant, bool cifg, const OptT& ln_ih_w, const OptT& ln_hh_w, const OptT& ln_c_w,
         const OptT& w_ch, double p_h, double p_c, const OptT& mask_h, const OptT& mask_c,
         const std::vector<bool>& has, const std::vector<int64_t>& batch_sizes, bool reverse,
         double eps, const std::vector<OptT>& fwd) -> std::vector<at::Tensor> {
        check_operands(x, {dy, dh_n, opt(dc_n), x, w_ih, w_hh, opt(w_hr), opt(ln_ih_w),
                           opt(ln_hh_w), opt(ln_c_w), opt(w_ch), opt(mask_h), opt(mask_c)});
        TORCH_CHECK(has.size() == 15 && fwd.size() == (variant ? 11 : 6),
                    "fusedrnn: layer_backward needs 15 presence flags and the forward's buffers");
        const NoAutocast no_autocast(c10::autocast_dispatch_keyset);
        typename Launch::Guard guard(x.device());
        Launch launch;
        if (!variant) {
          const CellKind kind = parse_cell(cell);
          const at::Tensor y = opt(fwd[0]), saved = opt(fwd[3]);      // [N, Hout], [N, S*H]
          const at::Tensor h_prev = opt(fwd[4]), hpre = opt(fwd[5]);  // [N, Hout], [N, H]
          check_operands(x, {y, h_prev, hpre});
          TORCH_CHECK(kind == CellKind::rnn_tanh || kind == CellKind::rnn_relu ||
                          (saved.defined() && saved.is_contiguous()),
                      "fusedrnn: the saved activations are missing");
          return layer_backward(launch, kind, dy, dh_n, opt(dc_n), x, w_ih, w_hh, opt(w_hr),
                                /*has_bias=*/has[5], batch_sizes, reverse, y, saved, h_prev,
                                hpre);
        }
        const VariantConfig v =
            variant_config(cell, cifg, ln_ih_w.has_value(), w_ch.has_value(), w_hr.has_value(),
                           p_h, p_c, eps, w_hh, dh_n.size(0), dh_n.size(1), x.size(0));
        std::vector<at::Tensor> buffers;
        for (const auto& t : fwd) {
          TORCH_CHECK(!t.has_value() || t->is_contiguous(), "fusedrnn: buffers not contiguous");
          buffers.push_back(opt(t));
        }
        const int64_t GH = v.G * v.H;
        TORCH_CHECK(buffers[3].defined() && buffers[3].size(0) == v.N &&
                        buffers[7].defined() && buffers[7].size(0) == v.N &&
                        (!v.lstm || (buffers[4].defined() && buffers[4].size(0) == v.N)) &&
                        (!v.ln || (buffers[5].defined() && buffers[5].numel() == v.N * GH &&
                                   buffers[9].defined() && buffers[10].defined())) &&
                        (!v.proj || (buffers[8].defined() && buffers[8].size(0) == v.N)),
                    "fusedrnn: the saved activations are missing (forward run with save=False)");
        return variant_backward(launch, v, dy, dh_n, opt(dc_n), x, w_ih, w_hh, opt(w_hr),
                                opt(ln_ih_w), opt(ln_hh_w), opt(ln_c_w), opt(w_ch), opt(mask_h),
                                opt(mask_c), has, batch_sizes, reverse, buffers);
      },
      "Gradients of layer_forward for x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr (plain), and "
      "ln_ih_w, ln_ih_b, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b, w_ch (variant; None where absent)");
}

}  // namespace cuda
}  // namespace fusedrnn
