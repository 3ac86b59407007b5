// Shared pieces of the CPU layer ops: argument checks, the step schedule of a (packed or
// dense) sequence, and the parallel drivers of the time loops and pointwise kernels.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "kernels.h"

namespace fusedrnn::cpu {

using OptTensor = std::optional<at::Tensor>;

enum class Cell { LSTM, GRU, RNN_TANH, RNN_RELU };

inline Cell parse_cell(const std::string& name) {
  if (name == "lstm") return Cell::LSTM;
  if (name == "gru") return Cell::GRU;
  if (name == "rnn_tanh") return Cell::RNN_TANH;
  if (name == "rnn_relu") return Cell::RNN_RELU;
  TORCH_CHECK(false, "fusedrnn cpu: unknown cell '", name,
              "'; expected lstm, gru, rnn_tanh or rnn_relu");
}

inline int64_t num_gates(Cell c) { return c == Cell::LSTM ? 4 : c == Cell::GRU ? 3 : 1; }

// One visited step: first row of its block in the flat [N, .] layout, active rows, and where
// the previous visited step's block starts (-1 at the first visited step).
// Rows [0, from_prev) of this step continue rows of the previous visited step; rows
// [from_prev, rows) start here from h0/c0 (only possible in the reverse direction of a packed
// sequence, or at the first step). Rows [finish_from, rows) are not active in the next
// visited step, so their state after this step is final (h_n, c_n).
struct Step {
  int64_t off, rows, prev_off, from_prev, finish_from;
  // Row b's state before this step: row prev_off + b of hist [N, K] where the row continues,
  // row b of init [B, K] (h0 / c0) where it starts here.
  template <typename T>
  const T* prev(int64_t b, const T* hist, const T* init, int64_t K) const {
    return b < from_prev ? hist + (prev_off + b) * K : init + b * K;
  }
};

inline std::vector<Step> schedule(const std::optional<at::Tensor>& batch_sizes, int64_t T,
                                  int64_t B, bool reverse) {
  std::vector<int64_t> sizes(T, B);
  if (batch_sizes.has_value()) {
    const auto bs = batch_sizes->contiguous();
    const int64_t* p = bs.data_ptr<int64_t>();
    for (int64_t t = 0; t < T; ++t) {
      sizes[t] = p[t];
      TORCH_CHECK(p[t] >= 0 && p[t] <= B && (t == 0 || p[t] <= p[t - 1]),
                  "fusedrnn cpu: batch_sizes must be non-increasing and at most the batch size");
    }
  }
  std::vector<int64_t> offs(T, 0);
  for (int64_t t = 1; t < T; ++t) offs[t] = offs[t - 1] + sizes[t - 1];
  std::vector<Step> steps;
  steps.reserve(T);
  for (int64_t k = 0; k < T; ++k) {
    const int64_t t = reverse ? T - 1 - k : k;
    Step s{offs[t], sizes[t], -1, 0, 0};
    if (k > 0) {
      const int64_t tp = reverse ? t + 1 : t - 1;
      s.prev_off = offs[tp];
      s.from_prev = std::min(sizes[tp], sizes[t]);
    }
    const int64_t next_rows = k + 1 < T ? sizes[reverse ? t - 1 : t + 1] : 0;
    s.finish_from = std::min(next_rows, s.rows);
    steps.push_back(s);
  }
  return steps;
}

// prev [N, K] = the state each row starts a visited step from (Step::prev), so that the
// backward's weight gradients take every step in one GEMM or column sum.
template <typename T>
void gather_previous(const std::vector<Step>& steps, const T* hist, const T* init, int64_t K,
                     T* prev) {
  for (const Step& s : steps)
    for (int64_t b = 0; b < s.rows; ++b)
      std::memcpy(prev + (s.off + b) * K, s.prev(b, hist, init, K), sizeof(T) * K);
}

// Runs fn(k, steps[k], b0, e) for every block [b0, b1) of batch rows through all the steps, in
// order or (backward) last first, where the block has active rows [b0, e), e = min(b1, rows);
// one block per thread, in parallel (rows are independent sequences). Block bounds balance the
// number of (row, step) pairs (packed sequences: the first rows are the longest). Below
// kMinRows rows per block, or when the whole layer is small (work_per_row_step ~ flops of one
// row in one step), or when the recurrent weights that every block multiplies at every step
// are larger than kRowBlockWeightBytes, one block [0, B) runs on the calling thread and splits
// every step over the threads instead: its GEMMs over column blocks (mul_split_n), its
// pointwise work over rows (step_rows). The blocks never synchronise inside the loop, so they
// also keep their speed when another process takes a core for a while (a split step waits for
// every thread twice, and with a core taken away a step can take several times as long).
// Measured on a quiet 2-core Xeon (AVX-512, L2 2 MiB per core), B = 64, T = 64: row blocks
// and split steps are within 3 % of each other at H = 256 (LSTM 1 MiB of W_hh, GRU 0.75 MiB);
// at H = 512 (4 and 3 MiB) the blocks' forward is 4-10 % slower: two threads that each stream
// all of W_hh every step move more memory than two that each read their own half
// (bench/results/cpu-intel-xeon-avx512-2t/loop-strategies).
constexpr int64_t kRowBlockWeightBytes = int64_t(1) << 20;

inline std::atomic<bool> row_blocks_enabled{true};  // off only in the tests of the other strategy

template <typename F>
inline void run_row_blocks(const std::vector<Step>& steps, bool backward, int64_t B,
                           int64_t work_per_row_step, int64_t weight_bytes, const F& fn) {
  constexpr int64_t kMinRows = 8;
  const auto walk = [&](int64_t b0, int64_t b1) {
    for (size_t i = 0, n = steps.size(); i < n; ++i) {
      const size_t k = backward ? n - 1 - i : i;
      const int64_t e = std::min(b1, steps[k].rows);
      if (e > b0) fn(k, steps[k], b0, e);
    }
  };
  int64_t total = 0;  // (row, step) pairs
  for (const Step& s : steps) total += s.rows;
  const int64_t P = std::min<int64_t>(at::get_num_threads(), B / kMinRows);
  if (P <= 1 || !row_blocks_enabled || at::in_parallel_region() ||
      weight_bytes > kRowBlockWeightBytes || total * work_per_row_step < (int64_t(1) << 20)) {
    walk(int64_t(0), B);
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
    for (int64_t p = p0; p < p1; ++p) walk(bound[p], bound[p + 1]);
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

// The grain of a parallel_for whose units cost about `cost` cheap element-steps each: below
// ~16k of them a second thread costs more than it saves.
inline int64_t grain_of(int64_t cost) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(cost, 1));
}

// f(float{}) or f(double{}) by the (already checked) dtype: the instantiation of an entry
// point's implementation, e.g. dispatch_float(dtype, [&](auto t) { return impl<decltype(t)>(); }).
template <typename F>
inline auto dispatch_float(at::ScalarType dtype, const F& f) {
  if (dtype == at::kFloat) return f(float{});
  return f(double{});
}

// Entries per layer of torch.nn's flat weight list of a unidirectional stack: w_ih, w_hh, then
// b_ih, b_hh when has_bias, then w_hr when proj > 0.
inline int64_t weights_per_layer(bool has_bias, int64_t proj) {
  return 2 + (has_bias ? 2 : 0) + (proj > 0 ? 1 : 0);
}

// Why the flat weight list of L such layers is not CPU tensors of dtype, or "" when it is; the
// message calls the list's entries `what`.
inline std::string flat_weights_mismatch(const std::vector<at::Tensor>& w, int64_t L,
                                         bool has_bias, int64_t proj, at::ScalarType dtype,
                                         const char* what) {
  const int64_t expected = L * weights_per_layer(has_bias, proj);
  if (static_cast<int64_t>(w.size()) != expected)
    return c10::str("expected ", expected, " ", what, ", got ", w.size());
  for (const auto& t : w)
    if (t.scalar_type() != dtype || !t.device().is_cpu())
      return c10::str("every weight must be a CPU tensor of dtype ", dtype);
  return "";
}

// t's data as T* (const T* where it is only read); null when t is undefined or empty
template <typename T>
inline T* ptr(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

}  // namespace fusedrnn::cpu
