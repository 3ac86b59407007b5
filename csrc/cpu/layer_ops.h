// Entry points of the CPU backend (bound to Python in bindings.cpp) and the validated,
// contiguous form of one layer's arguments that the forward and backward share.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "blas.h"
#include "common.h"
#include "options.h"

namespace fusedrnn::cpu {

// The parameters of the layer entry points, in the order of fusedrnn/ops/library.py::LAYER_ARGS
// (the Python side passes them positionally; the bool options from options.h), written once;
// FRNN_LAYER_ARGS passes them on.
#define FRNN_LAYER_PARAMS                                                                   \
  const std::string& cell, const at::Tensor& x, const at::Tensor& h0, const OptTensor& c0,     \
      const at::Tensor& w_ih, const at::Tensor& w_hh, const OptTensor& b_ih,                   \
      const OptTensor& b_hh, const OptTensor& w_hr, const OptTensor& batch_sizes, bool reverse, \
      FRNN_BOOL_OPTIONS(FRNN_BOOL_PARAM) const OptTensor& ln_ih_w, const OptTensor& ln_ih_b,   \
      const OptTensor& ln_hh_w, const OptTensor& ln_hh_b, const OptTensor& ln_c_w,             \
      const OptTensor& ln_c_b, const OptTensor& w_ch, double zoneout_h, double zoneout_c,     \
      const OptTensor& mask_h, const OptTensor& mask_c, double eps
#define FRNN_LAYER_ARGS                                                                      \
  cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse,                        \
      FRNN_BOOL_OPTIONS(FRNN_BOOL_NAME) ln_ih_w, ln_ih_b, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b,    \
      w_ch, zoneout_h, zoneout_c, mask_h, mask_c, eps

// A layer's arguments, validated and contiguous (layer_ops.cpp::prepare), absent ones undefined.
// The options (layer norm, zoneout, peephole, cifg; the math of fusedrnn/ops/reference.py::layer,
// per element csrc/cell_math.h) are all off for torch.nn's cells.
struct LayerArgs {
  Cell cell;
  bool packed, reverse;
  int64_t T, B, N, I, H, Hout, G;
  at::Tensor x;                           // [N, I] (dense input flattened time-major)
  at::Tensor h0;                          // [B, Hout]
  at::Tensor c0;                          // [B, H] (LSTM), else undefined
  at::Tensor w_ih;                        // [G*H, I]
  at::Tensor w_hh;                        // [G*H, Hout]
  at::Tensor w_hr;                        // [Hout, H] (projection), else undefined
  std::optional<at::Tensor> batch_sizes;  // [T] int64
  VariantFlags flags;                     // ln, peep, zone_c and the bool options
  double eps = 0;
  at::Tensor b_ih, b_hh;                          // [G*H]
  at::Tensor ln_ih_w, ln_ih_b, ln_hh_w, ln_hh_b;  // [G*H] (ln)
  at::Tensor ln_c_w, ln_c_b;                      // [H] (ln, LSTM; the bias zeros when absent)
  at::Tensor w_ch;                                // [3H] or [2H] flat (peep)
  // Zoneout "keep" values: the mask [N, K] (row stride K) or one row [K] filled with p (row
  // stride 0), so that training and evaluation run the same loop. Undefined when off.
  at::Tensor keep_h, keep_c;
  int64_t keep_h_stride = 0, keep_c_stride = 0;
};

// torch.nn's LSTM (zoneout of h aside) and the Elman RNN: no option needs the recurrent
// product h_prev W_hh^T apart from the input side, so it accumulates straight into the gates
// and the fused kernels of kernels.h add b_ih + b_hh; nothing but the activations, c_t (LSTM)
// and y are kept for the backward.
inline bool direct_gates(const LayerArgs& a) {
  const VariantFlags& f = a.flags;
  return a.cell != Cell::GRU && !f.ln && !f.peep && !f.zone_c && !f.any();
}

LayerArgs prepare(FRNN_LAYER_PARAMS);

// Forward of one layer in one direction (layer_fwd.cpp). -> {y [T, B, Hout] or [N, Hout],
// h_n [B, Hout], c_n [B, H] or [0], then the saved_widths of the configuration, each [0] unless
// train}.
std::vector<at::Tensor> layer_fwd(FRNN_LAYER_PARAMS, bool train);

// What the forward (layer_fwd.cpp) and the backward (layer_bwd.cpp) of a layer both start
// from: its cell and dimensions, the step schedule, the per-row inputs of the step loop (null
// where the configuration has none: prepare leaves those tensors undefined), and W_hh and W_hr
// packed once for all steps and row blocks (forward: h_prev W_hh^T, h_raw W_hr^T; backward:
// dHP_t W_hh, dH~_t W_hr).
template <typename T>
struct LayerLoop {
  LayerLoop(const LayerArgs& args, bool forward)
      : a(args), whh(forward, a.w_hh, Scratch::kPackedRecurrent, a.T),
        whr(forward, a.w_hr, Scratch::kPackedProj, a.T) {}
  std::vector<at::Tensor> forward(bool train) const;
  std::vector<at::Tensor> backward(const at::Tensor& y_in, const std::vector<at::Tensor>& saved,
                                   const at::Tensor& grad_y, const OptTensor& grad_hn,
                                   const OptTensor& grad_cn, int64_t mask) const;
  at::Tensor empty() const { return at::empty({0}, opts); }
  // What the backward reads, in this order, as the width of each [N, width] tensor, 0 where the
  // configuration has none: act [N, G*H] activations (not RNN: its backward reads y), cs [N, H]
  // c_t (LSTM), ct [N, H] c~_t (LSTM, not direct_gates) or the recurrent n part (GRU), hh / xh
  // [N, G*H] the normalised recurrent / input projections (ln), stats [N, 4] (rstd_ih, rstd_hh,
  // mean_c, rstd_c) (ln). fusedrnn/ops/cpu.py::fake_forward follows the same rule.
  std::array<int64_t, 6> saved_widths() const {
    return {rnn ? 0 : GH, lstm ? H : 0, direct ? 0 : H, ln ? GH : 0, ln ? GH : 0, ln ? 4 : 0};
  }

  const LayerArgs& a;
  const bool lstm = a.cell == Cell::LSTM, gru = a.cell == Cell::GRU, rnn = !lstm && !gru;
  const bool ln = a.flags.ln, proj = a.w_hr.defined(), direct = direct_gates(a);
  const int64_t G = a.G, H = a.H, Hout = a.Hout, GH = G * H, B = a.B, N = a.N;
  const std::vector<Step> steps = schedule(a.batch_sizes, a.T, B, a.reverse);
  const at::TensorOptions opts = a.x.options();
  const at::ScalarType dtype = a.x.scalar_type();
  const PointwiseKernels<T>& K = kernels(T{});
  const VariantFlags& fl = a.flags;
  const T *h0 = ptr<T>(a.h0), *c0 = ptr<T>(a.c0), *lnhh = ptr<T>(a.ln_hh_w),
          *lncw = ptr<T>(a.ln_c_w), *lncb = ptr<T>(a.ln_c_b), *wch = ptr<T>(a.w_ch),
          *kh = ptr<T>(a.keep_h), *kc = ptr<T>(a.keep_c);
  const StepWeights<T> whh, whr;
};

// Gradient mask bits, in the order of the backward's outputs (library.py::GRAD_INPUTS).
enum GradBit : int64_t {
  kGradX = 1, kGradH0 = 2, kGradC0 = 4, kGradWih = 8, kGradWhh = 16, kGradBih = 32,
  kGradBhh = 64, kGradWhr = 128, kGradLnIhW = 256, kGradLnIhB = 512, kGradLnHhW = 1024,
  kGradLnHhB = 2048, kGradLnCW = 4096, kGradLnCB = 8192, kGradWch = 16384
};

// Backward of layer_fwd (layer_bwd.cpp); `saved` is what it returned after c_n. -> {dx, dh0,
// dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr, dln_ih_w, dln_ih_b, dln_hh_w, dln_hh_b, dln_c_w,
// dln_c_b, dw_ch}; a gradient not asked for (or of an absent input) is undefined (None).
std::vector<at::Tensor> layer_bwd(FRNN_LAYER_PARAMS, const at::Tensor& y,
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
// Its parameters are written once here, for its declaration and its definition.
using IdsCallback = std::function<void(const at::Tensor&)>;
#define FRNN_GENERATE_PARAMS                                                                    \
  const std::string& cell, const OptTensor& embed, const std::vector<at::Tensor>& flat_weights, \
      int64_t num_layers, bool has_bias, const std::vector<OptTensor>& variant_weights,         \
      FRNN_BOOL_OPTIONS(FRNN_BOOL_PARAM) double zoneout_h, double zoneout_c, double eps,       \
      const at::Tensor& dec_w, const OptTensor& dec_b, at::Tensor h, const OptTensor& c,       \
      at::Tensor logits, int64_t length, double temperature, int64_t top_k, bool argmax,        \
      std::optional<at::Generator> generator, const IdsCallback& on_ids, int64_t every,         \
      bool half_weights
at::Tensor generate(FRNN_GENERATE_PARAMS);

}  // namespace fusedrnn::cpu
