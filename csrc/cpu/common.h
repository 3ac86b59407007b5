// Shared pieces of the CPU layer ops: argument checks, the step schedule of a (packed or
// dense) sequence, and the row-parallel driver of the pointwise kernels.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include <algorithm>
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

// One visited step: time index, first row of its block in the flat [N, .] layout, active
// rows, and where the previous visited step's block starts (-1 at the first visited step).
// Rows [0, from_prev) of this step continue rows of the previous visited step; rows
// [from_prev, rows) start here from h0/c0 (only possible in the reverse direction of a packed
// sequence, or at the first step). Rows [finish_from, rows) are not active in the next
// visited step, so their state after this step is final (h_n, c_n).
struct Step {
  int64_t t, off, rows, prev_off, from_prev, finish_from;
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
    Step s{t, offs[t], sizes[t], -1, 0, 0};
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

// prev [N, K] = the state each row starts a visited step from: the previous visited step's row
// of hist [N, K] where the row continues, init [B, K] (h0 / c0) where it starts at this step.
// The backward's weight gradients then take every step in one GEMM or column sum.
template <typename T>
void gather_previous(const std::vector<Step>& steps, const T* hist, const T* init, int64_t K,
                     T* prev) {
  for (const Step& s : steps) {
    if (s.from_prev > 0)
      std::memcpy(prev + s.off * K, hist + s.prev_off * K, sizeof(T) * s.from_prev * K);
    if (s.rows > s.from_prev)
      std::memcpy(prev + (s.off + s.from_prev) * K, init + s.from_prev * K,
                  sizeof(T) * (s.rows - s.from_prev) * K);
  }
}

// Gate-column layout of the fused layer ops. Units are cut into chunks of kChunk units and the
// G gate columns of one chunk sit next to each other: column of (gate g, unit j in chunk c) =
// G*start(c) + g*width(c) + (j - start(c)). A thread that owns a run of chunks then owns one
// contiguous block of gate columns: its share of the recurrent GEMM is one BLAS call whose
// output it feeds straight into the pointwise kernels, with no barrier in between. The
// weights' rows (and the folded bias) are permuted once per call to match; weight gradients
// are permuted back. With H <= kChunk, or one gate, this is PyTorch's own layout; so it is
// for a single step (a cell call), where permuting the weights would cost more than the
// step: there is no later step for a thread's columns to stay in its cache for.
constexpr int64_t kChunk = 32;

struct ChunkLayout {
  int64_t H = 0, G = 0, w = 1, n = 0;  // units, gates, units per chunk, number of chunks
  ChunkLayout() = default;
  ChunkLayout(int64_t H_, int64_t G_, int64_t steps)
      : H(H_), G(G_), w(steps > 1 ? kChunk : std::max<int64_t>(H_, 1)), n((H_ + w - 1) / w) {
    n = std::max<int64_t>(n, 1);
  }
  int64_t start(int64_t c) const { return std::min(c * w, H); }
  int64_t width(int64_t c) const { return start(c + 1) - start(c); }
  int64_t col(int64_t c) const { return G * start(c); }
  bool identity() const { return G == 1 || n == 1; }
};

// Runs fn(k0, k1) over runs of chunks, one run per thread (inline when the step is small).
template <typename F>
inline void parallel_chunks(const ChunkLayout& L, int64_t rows, const F& fn) {
  const int64_t grain = rows * L.H * L.G < 8192 ? L.n : 1;
  at::parallel_for(0, L.n, grain, fn);
}

// Runs fn(row, j0, j1) over rows [0, rows) x units [0, H) split across threads; a chunk may
// cover the tail of one row and the head of the next, so fn sees at most a row at a time.
template <typename F>
inline void parallel_rows(int64_t rows, int64_t H, int64_t cost_per_unit, const F& fn) {
  const int64_t total = rows * H;
  if (total == 0) return;
  // Below ~16k cheap element-steps a second thread costs more than it saves.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(cost_per_unit, 1));
  at::parallel_for(0, total, grain, [&](int64_t begin, int64_t end) {
    int64_t idx = begin;
    while (idx < end) {
      const int64_t b = idx / H;
      const int64_t j0 = idx - b * H;
      const int64_t j1 = std::min(H, j0 + (end - idx));
      fn(b, j0, j1);
      idx += j1 - j0;
    }
  });
}

// f(float{}) or f(double{}) by the (already checked) dtype: the instantiation of an entry
// point's implementation, e.g. dispatch_float(dtype, [&](auto t) { return impl<decltype(t)>(); }).
template <typename F>
inline auto dispatch_float(at::ScalarType dtype, const F& f) {
  if (dtype == at::kFloat) return f(float{});
  return f(double{});
}

// A flat weight list (torch.nn order) holds `expected` CPU tensors of dtype; the errors start
// with `who` and call the list's entries `what`.
inline void check_flat_weights(const std::vector<at::Tensor>& w, int64_t expected,
                               at::ScalarType dtype, const char* who, const char* what) {
  TORCH_CHECK(static_cast<int64_t>(w.size()) == expected, who, ": expected ", expected, " ",
              what, ", got ", w.size());
  for (const auto& t : w)
    TORCH_CHECK(t.scalar_type() == dtype && t.device().is_cpu(), who,
                ": every weight must be a CPU tensor of dtype ", dtype);
}

template <typename T>
inline T* ptr(at::Tensor& t) {
  return t.data_ptr<T>();
}
template <typename T>
inline const T* cptr(const at::Tensor& t) {
  return t.data_ptr<T>();
}

}  // namespace fusedrnn::cpu
