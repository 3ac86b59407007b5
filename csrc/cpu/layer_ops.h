// Entry points of the CPU backend (bound to Python in bindings.cpp) and the validated,
// contiguous form of one layer's arguments that the forward and backward share.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <vector>

#include "common.h"

namespace fusedrnn::cpu {

struct LayerArgs {
  bool packed, reverse;
  int64_t T, B, N, I, H, Hout;
  at::Tensor x;        // [N, I] contiguous (dense input flattened time-major)
  at::Tensor h0;       // [B, Hout]
  at::Tensor c0;       // [B, H] (LSTM), else undefined
  ChunkLayout layout;  // gate-column order of w_ih, w_hh, bias and of every [*, G*H] buffer
  at::Tensor perm;     // [G*H] int64: layout column -> PyTorch row (undefined if identity)
  at::Tensor w_ih;     // [G*H, I]    rows in layout order
  at::Tensor w_hh;     // [G*H, Hout] rows in layout order
  std::optional<at::Tensor> w_hr;  // [Hout, H]
  // [G*H] layout order: b_ih + b_hh (LSTM, RNN); b_ih + (b_hr, b_hz, 0) (GRU)
  at::Tensor bias;
  at::Tensor bias_hn;  // [H]: b_hn (GRU), else undefined
  std::optional<at::Tensor> batch_sizes;  // [T] int64
};

LayerArgs prepare(Cell cell, const at::Tensor& x, const at::Tensor& h0,
                  const std::optional<at::Tensor>& c0, const at::Tensor& w_ih,
                  const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                  const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& w_hr,
                  const std::optional<at::Tensor>& batch_sizes, bool reverse);

// -> {y [T, B, Hout] or [N, Hout], h_n [B, Hout], c_n [B, H] or [0], ws1, ws2}
// ws1/ws2 (empty unless train): LSTM activations [N, 4H] and cells [N, H];
// GRU activations [N, 3H] and hn [N, H]; RNN nothing (y suffices).
std::vector<at::Tensor> layer_fwd(const std::string& cell, const at::Tensor& x,
                                  const at::Tensor& h0, const std::optional<at::Tensor>& c0,
                                  const at::Tensor& w_ih, const at::Tensor& w_hh,
                                  const std::optional<at::Tensor>& b_ih,
                                  const std::optional<at::Tensor>& b_hh,
                                  const std::optional<at::Tensor>& w_hr,
                                  const std::optional<at::Tensor>& batch_sizes, bool reverse,
                                  bool train);

// Gradient mask bits (which of the 8 gradients to produce).
enum GradBit : int64_t {
  kGradX = 1, kGradH0 = 2, kGradC0 = 4, kGradWih = 8, kGradWhh = 16, kGradBih = 32,
  kGradBhh = 64, kGradWhr = 128
};

// -> {dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr}; a gradient not asked for (or whose
// input is absent) is an empty [0] tensor.
std::vector<at::Tensor> layer_bwd(const std::string& cell, const at::Tensor& x,
                                  const at::Tensor& h0, const std::optional<at::Tensor>& c0,
                                  const at::Tensor& w_ih, const at::Tensor& w_hh,
                                  const std::optional<at::Tensor>& b_ih,
                                  const std::optional<at::Tensor>& b_hh,
                                  const std::optional<at::Tensor>& w_hr,
                                  const std::optional<at::Tensor>& batch_sizes, bool reverse,
                                  const at::Tensor& y, const at::Tensor& ws1,
                                  const at::Tensor& ws2, const at::Tensor& grad_y,
                                  const std::optional<at::Tensor>& grad_hn,
                                  const std::optional<at::Tensor>& grad_cn, int64_t grad_mask);

// One time step of a unidirectional stack of layers, no autograd, minimal overhead.
// x [B, I], hx [L, B, Hout], cx [L, B, H] (LSTM) -> {y [B, Hout], h_n [L, B, Hout], c_n}.
std::vector<at::Tensor> stack_step(const std::string& cell, const at::Tensor& x,
                                   const at::Tensor& hx, const std::optional<at::Tensor>& cx,
                                   const std::vector<at::Tensor>& flat_weights,
                                   int64_t num_layers, bool has_bias, int64_t proj_size);

}  // namespace fusedrnn::cpu
