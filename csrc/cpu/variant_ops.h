// The cell variants (layer norm, zoneout, peephole, cifg; the math of
// fusedrnn/ops/reference.py::layer, per element csrc/cell_math.h): the validated, contiguous
// form of a variant layer's arguments, its time loop (variant_fwd.cpp, variant_bwd.cpp) and the
// row-block driver of that loop.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <optional>
#include <vector>

#include "common.h"
#include "layer_ops.h"
#include "kernels.h"

namespace fusedrnn::cpu {

struct VariantArgs : Operands {
  VariantFlags flags;  // ln, peep, cifg, zone_c
  bool zone_h;
  double eps;
  at::Tensor b_in;              // [G*H] b_ih + LN_ih bias (zeros when both are absent)
  at::Tensor b_rec;             // [G*H] b_hh + LN_hh bias
  at::Tensor ln_ih_w, ln_hh_w;  // [G*H] (ln)
  at::Tensor ln_c_w, ln_c_b;    // [H] (ln, LSTM; the bias zeros when absent)
  at::Tensor w_ch;              // [3H] or [2H] flat (peep)
  // Zoneout "keep" values: the mask [N, K] (row stride K) or one row [K] filled with p (row
  // stride 0), so that training and evaluation run the same loop. Undefined when off.
  at::Tensor keep_h, keep_c;
  int64_t keep_h_stride = 0, keep_c_stride = 0;
};

// Validates a variant layer's arguments (clear errors for bad input).
VariantArgs prepare_variant(FRNN_VARIANT_PARAMS);

// The variants' time loop (layer_fwd / layer_bwd with `variant`; see there).
std::vector<at::Tensor> variant_fwd(const VariantArgs& a, bool train);
std::vector<at::Tensor> variant_bwd(const VariantArgs& a, const at::Tensor& y,
                                    const std::vector<at::Tensor>& saved,
                                    const at::Tensor& grad_y, const OptTensor& grad_hn,
                                    const OptTensor& grad_cn, int64_t grad_mask);

// Runs fn(b0, b1) once per block of batch rows, one block per thread, in parallel: fn runs
// its rows through all the steps (rows are independent sequences). Block bounds balance the
// number of (row, step) pairs (packed sequences: the first rows are the longest). Below
// kMinRows rows per block, or when the whole layer is small (work_per_row_step ~ flops of one
// row in one step), one block [0, B) runs on the calling thread and splits every step over the
// threads instead: its GEMMs over column blocks (mul_split_n), its pointwise work over rows
// (step_rows). The blocks never synchronise inside the loop, so they also keep their speed
// when another process takes a core for a while; a split step waits for every thread twice.
inline std::atomic<bool>& variant_row_blocks_enabled() {
  static std::atomic<bool> on{true};  // off only in the tests of the other strategy
  return on;
}

template <typename F>
inline void run_row_blocks(const std::vector<Step>& steps, int64_t B, int64_t work_per_row_step,
                           const F& fn) {
  constexpr int64_t kMinRows = 8;
  int64_t total = 0;  // (row, step) pairs
  for (const Step& s : steps) total += s.rows;
  const int64_t P = std::min<int64_t>(at::get_num_threads(), B / kMinRows);
  if (P <= 1 || !variant_row_blocks_enabled() || at::in_parallel_region() ||
      total * work_per_row_step < (int64_t(1) << 20)) {
    fn(int64_t(0), B);
    return;
  }
  // length of row b = number of steps with more than b rows; blocks cut at equal shares of
  // the cumulative length
  std::vector<int64_t> len(B, 0);
  for (const Step& s : steps)
    for (int64_t b = 0; b < s.rows; ++b) ++len[b];
  std::vector<int64_t> bound{0};
  int64_t acc = 0;
  for (int64_t b = 0; b + 1 < B && static_cast<int64_t>(bound.size()) < P; ++b) {
    acc += len[b];
    if (acc * P >= total * static_cast<int64_t>(bound.size())) bound.push_back(b + 1);
  }
  bound.push_back(B);
  const int64_t nblk = static_cast<int64_t>(bound.size()) - 1;
  at::parallel_for(0, nblk, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) fn(bound[p], bound[p + 1]);
  });
}

// Runs fn(q0, q1) over rows [b0, e) of one step: split over the threads in the single-block
// case, inline inside a row-block thread (ATen runs nested parallel_for inline) or when the
// step is small (work_per_row ~ flops of one row's pointwise work).
template <typename F>
inline void step_rows(int64_t b0, int64_t e, int64_t work_per_row, const F& fn) {
  if (e <= b0) return;
  const int64_t grain = (e - b0) * work_per_row < (int64_t(1) << 16) ? e - b0 : 1;
  at::parallel_for(b0, e, grain, fn);
}

// The number of saved tensors the forward returns after y, h_n, c_n (see variant_fwd.cpp).
constexpr int kVariantSaved = 6;

}  // namespace fusedrnn::cpu
