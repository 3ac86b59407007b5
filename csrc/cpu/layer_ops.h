// Entry points of the CPU backend (bound to Python in bindings.cpp) and the validated,
// contiguous form of one layer's arguments that the forward and backward share.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "common.h"

namespace fusedrnn::cpu {

// What every layer's arguments have, validated and contiguous (prepare.cpp).
struct Operands {
  Cell cell;
  bool packed, reverse;
  int64_t T, B, N, I, H, Hout, G;
  at::Tensor x;                           // [N, I] (dense input flattened time-major)
  at::Tensor h0;                          // [B, Hout]
  at::Tensor c0;                          // [B, H] (LSTM), else undefined
  at::Tensor w_ih;                        // [G*H, I]
  at::Tensor w_hh;                        // [G*H, Hout]
  std::optional<at::Tensor> w_hr;         // [Hout, H]
  std::optional<at::Tensor> batch_sizes;  // [T] int64
};

// The plain cells' form (layer_fwd.cpp, layer_bwd.cpp).
struct LayerArgs : Operands {
  ChunkLayout layout;  // gate-column order of w_ih, w_hh, bias and of every [*, G*H] buffer
  at::Tensor perm;     // [G*H] int64: layout column -> PyTorch row (undefined if identity)
  // w_ih, w_hh: rows in layout order
  // [G*H] layout order: b_ih + b_hh (LSTM, RNN); b_ih + (b_hr, b_hz, 0) (GRU)
  at::Tensor bias;
  at::Tensor bias_hn;  // [H]: b_hn (GRU), else undefined
};

// The parameters of the layer entry points, in the order of fusedrnn/ops/library.py::LAYER_ARGS
// (the Python side passes them positionally), written once: FRNN_LAYER_PARAMS declares the
// plain cell's, FRNN_VARIANT_PARAMS adds the options; the _ARGS macros pass them on.
#define FRNN_LAYER_PARAMS                                                                  \
  const std::string& cell, const at::Tensor& x, const at::Tensor& h0, const OptTensor& c0,    \
      const at::Tensor& w_ih, const at::Tensor& w_hh, const OptTensor& b_ih,                  \
      const OptTensor& b_hh, const OptTensor& w_hr, const OptTensor& batch_sizes, bool reverse
#define FRNN_LAYER_ARGS cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse

#define FRNN_VARIANT_PARAMS                                                                 \
  FRNN_LAYER_PARAMS, bool cifg, const OptTensor& ln_ih_w, const OptTensor& ln_ih_b,           \
      const OptTensor& ln_hh_w, const OptTensor& ln_hh_b, const OptTensor& ln_c_w,            \
      const OptTensor& ln_c_b, const OptTensor& w_ch, double zoneout_h, double zoneout_c,     \
      const OptTensor& mask_h, const OptTensor& mask_c, double eps
#define FRNN_VARIANT_ARGS                                                                   \
  FRNN_LAYER_ARGS, cifg, ln_ih_w, ln_ih_b, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b, w_ch, zoneout_h,  \
      zoneout_c, mask_h, mask_c, eps

// Validates a plain layer's arguments (clear errors for bad input); parses the cell name.
LayerArgs prepare(FRNN_LAYER_PARAMS);

// Forward of one layer in one direction. `variant` (some option on, fusedrnn/ops/library.py::
// is_variant) picks the time loop: the plain cells' (layer_fwd.cpp) or the variants'
// (variant_fwd.cpp). -> {y [T, B, Hout] or [N, Hout], h_n [B, Hout], c_n [B, H] or [0], then
// what the backward reads, [0] unless train}:
//   plain: ws1, ws2: LSTM activations [N, 4H] and cells [N, H]; GRU activations [N, 3H] and
//     hn [N, H]; RNN nothing (y suffices);
//   variant: act [N, G*H] activations, cs [N, H] the states c_t (LSTM), ct [N, H] c~_t (LSTM)
//     or the recurrent n part (GRU), hh / xh [N, G*H] the normalised recurrent / input
//     projections (ln), stats [N, 4] (rstd_ih, rstd_hh, mean_c, rstd_c) (ln).
std::vector<at::Tensor> layer_fwd(FRNN_VARIANT_PARAMS, bool variant, bool train);

// Gradient mask bits, in the order of the backward's outputs (library.py::GRAD_INPUTS).
enum GradBit : int64_t {
  kGradX = 1, kGradH0 = 2, kGradC0 = 4, kGradWih = 8, kGradWhh = 16, kGradBih = 32,
  kGradBhh = 64, kGradWhr = 128, kGradLnIhW = 256, kGradLnIhB = 512, kGradLnHhW = 1024,
  kGradLnHhB = 2048, kGradLnCW = 4096, kGradLnCB = 8192, kGradWch = 16384
};

// Backward of layer_fwd; `saved` is what it returned after c_n. -> {dx, dh0, dc0, dw_ih, dw_hh,
// db_ih, db_hh, dw_hr, dln_ih_w, dln_ih_b, dln_hh_w, dln_hh_b, dln_c_w, dln_c_b, dw_ch}
// (plain cells: the first 8); a gradient not asked for (or of an absent input) is [0].
std::vector<at::Tensor> layer_bwd(FRNN_VARIANT_PARAMS, bool variant, const at::Tensor& y,
                                  const std::vector<at::Tensor>& saved, const at::Tensor& grad_y,
                                  const OptTensor& grad_hn, const OptTensor& grad_cn,
                                  int64_t grad_mask);

// The two time loops behind them (grad_mask without the bits of absent inputs).
std::vector<at::Tensor> plain_fwd(const LayerArgs& a, bool train);
std::vector<at::Tensor> plain_bwd(const LayerArgs& a, const at::Tensor& y,
                                  const std::vector<at::Tensor>& saved, const at::Tensor& grad_y,
                                  const OptTensor& grad_hn, const OptTensor& grad_cn,
                                  int64_t grad_mask);

// One time step of a unidirectional stack of layers, no autograd, minimal overhead.
// x [B, I] or one step [1, B, I] ([B, 1, I] when batch_first); hx [L, B, Hout] and cx [L, B, H]
// (LSTM), absent: zeros; a cell (x [B, I], one layer) may pass states [B, .], and gets them back
// so -> {y [B, Hout] (in x's layout), h_n [L, B, Hout], c_n [L, B, H]}.
// Tensors that do not fit raise, or with `fallback` return {} (a caller with a general path).
std::vector<at::Tensor> stack_step(const std::string& cell, const at::Tensor& x,
                                   const OptTensor& hx, const OptTensor& cx,
                                   const std::vector<at::Tensor>& flat_weights,
                                   int64_t num_layers, bool has_bias, int64_t proj_size,
                                   bool batch_first, bool fallback);

// The sampling loop of a character model, `length` characters in one call (generate.cpp):
// embedding [V, E] (absent: one-hot inputs), the stack's flat weights (torch.nn order, no
// projection), 7 variant weights per layer (empty: plain cells), decoder [V, H] and [V].
// h [L, B, H], c [L, B, H] (LSTM) and logits [B, V] float32 (the last step's) are read and
// updated in place; the state ends at the last character's input. -> ids [B, length] int64.
// on_ids (if set, and every > 0) receives each run of `every` new ids [B, n] as it is chosen.
// half_weights (float32, plain cells): the layers' w_ih and w_hh are used rounded to float16.
using IdsCallback = std::function<void(const at::Tensor&)>;
at::Tensor generate(const std::string& cell, const std::optional<at::Tensor>& embed,
                    const std::vector<at::Tensor>& flat_weights, int64_t num_layers,
                    bool has_bias, const std::vector<std::optional<at::Tensor>>& variant_weights,
                    bool cifg, double zoneout_h, double zoneout_c, double eps,
                    const at::Tensor& dec_w, const std::optional<at::Tensor>& dec_b, at::Tensor h,
                    const std::optional<at::Tensor>& c, at::Tensor logits, int64_t length,
                    double temperature, int64_t top_k, bool argmax,
                    std::optional<at::Generator> generator, const IdsCallback& on_ids,
                    int64_t every, bool half_weights);

}  // namespace fusedrnn::cpu
