// What the backward of both time loops (layer_bwd.cpp, variant_bwd.cpp) does the same way:
// the state gradients it starts from, and the gradients that are GEMMs over all steps once the
// loop has left the pre-activation gradients behind (docs/backward.md).
#pragma once

#include <utility>
#include <vector>

#include "blas.h"
#include "layer_ops.h"
#include "scratch.h"

namespace fusedrnn::cpu {

// y and grad_y ([T, B, Hout] or [N, Hout]) as contiguous [N, Hout] matrices.
inline std::pair<at::Tensor, at::Tensor> output_rows(const at::Tensor& y, const at::Tensor& grad_y,
                                                     int64_t N, int64_t Hout) {
  TORCH_CHECK(grad_y.numel() == N * Hout, "fusedrnn cpu backend: grad_y has ", grad_y.numel(),
              " elements, expected ", N * Hout);
  return {y.reshape({N, Hout}).contiguous(), grad_y.reshape({N, Hout}).contiguous()};
}

// grad h_n / grad c_n as a fresh contiguous [rows, cols] buffer, zeros where autograd has none;
// the loop updates it in place into grad h0 / grad c0.
inline at::Tensor state_grad(const OptTensor& g, int64_t rows, int64_t cols,
                             const at::TensorOptions& opts) {
  if (!g.has_value() || !g->defined()) return at::zeros({rows, cols}, opts);
  return g->reshape({rows, cols}).clone(at::MemoryFormat::Contiguous);
}

// The GEMM gradients of a layer, into out (the order of layer_bwd), as mask asks:
//   out[0] dx = dX W_ih [N, I]     out[3] dW_ih = dX^T X [G*H, I]
//   out[4] dW_hh = dH^T H_prev [G*H, Hout], H_prev = h_{t-1} of every row (y shifted, h0)
//   out[7] dW_hr = DH^T H_raw [Hout, H] (projection)
// dX [N, G*H]: gradient of the input projection; dH [N, G*H]: of h_prev W_hh^T; y [N, Hout];
// DH [N, Hout], Hraw [N, H] (projection only). With rows_to_scratch the weight gradients go to
// scratch buffers (the caller moves their rows into outputs).
template <typename T>
void gemm_grads(const Operands& a, const std::vector<Step>& steps, const T* dX, const T* dH,
                const T* y, const T* DH, const T* Hraw, int64_t mask, bool rows_to_scratch,
                std::vector<at::Tensor>& out) {
  const int64_t GH = a.G * a.H, Hout = a.Hout, H = a.H, N = a.N, B = a.B, I = a.I;
  const auto dtype = a.x.scalar_type();
  auto weight_grad = [&](Scratch slot, int64_t rows, int64_t cols) {
    return rows_to_scratch ? scratch(slot, {rows, cols}, dtype)
                           : pooled_output({rows, cols}, dtype);
  };
  if (mask & kGradX) {
    at::Tensor dx = pooled_output({N, I}, dtype);
    gemm<T>(false, false, N, I, GH, T(1), dX, GH, cptr<T>(a.w_ih), I, T(0), ptr<T>(dx), I);
    out[0] = a.packed ? dx : dx.view({a.T, B, I});
  }
  if (mask & kGradWih) {
    out[3] = weight_grad(Scratch::kGradWih, GH, I);
    gemm<T>(true, false, GH, I, N, T(1), dX, GH, cptr<T>(a.x), I, T(0), ptr<T>(out[3]), I);
  }
  if (mask & kGradWhh) {
    at::Tensor dw = weight_grad(Scratch::kGradWhh, GH, Hout);
    T* dwp = ptr<T>(dw);
    const T* h0 = cptr<T>(a.h0);
    if (N == 0) {
      dw.zero_();
    } else if (!a.packed) {
      // Dense: the previous states of all steps but the first visited are y shifted by one
      // step, so the stacked GEMM reads y in place; the first visited step pairs with h0.
      const int64_t body = N - B;
      const T* g_body = a.reverse ? dH : dH + B * GH;
      const T* h_body = a.reverse ? y + B * Hout : y;
      const T* g_first = a.reverse ? dH + body * GH : dH;
      gemm<T>(true, false, GH, Hout, body, T(1), g_body, GH, h_body, Hout, T(0), dwp, Hout);
      gemm<T>(true, false, GH, Hout, B, T(1), g_first, GH, h0, Hout, T(1), dwp, Hout);
    } else {
      // Packed: h_{t-1} of every row gathered into one [N, Hout] matrix, then one GEMM.
      at::Tensor hprev = scratch(Scratch::kWork7, {N, Hout}, dtype);
      gather_previous(steps, y, h0, Hout, ptr<T>(hprev));
      gemm<T>(true, false, GH, Hout, N, T(1), dH, GH, cptr<T>(hprev), Hout, T(0), dwp, Hout);
    }
    out[4] = dw;
  }
  if ((mask & kGradWhr) && a.w_hr.has_value()) {
    out[7] = at::empty({Hout, H}, a.x.options());
    gemm<T>(true, false, Hout, H, N, T(1), DH, Hout, Hraw, H, T(0), ptr<T>(out[7]), H);
  }
}

}  // namespace fusedrnn::cpu
