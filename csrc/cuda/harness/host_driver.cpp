// Test build of the CUDA backend on the CPU: the same layer drivers, glue, dispatch, launch
// shapes, grid-stride loop, row functors and element functors as fusedrnn._C_cuda, with each
// launch replaced by a walk over the grid the GPU launch would use. Elementwise kernels walk
// every (block, thread); row kernels walk their blocks, and within a block every collective
// operation (rowblock.cuh) walks the threads one after the other, with the GPU's partition of
// the work and its summation order. Built by tests/cuda_host.py with torch.utils.cpp_extension
// (CPU tensors).
#include <vector>

#include "cuda/colsum.cuh"
#include "cuda/gru.cuh"
#include "cuda/gru_variants.cuh"
#include "cuda/layer_module.h"
#include "cuda/lstm.cuh"
#include "cuda/lstm_variants.cuh"
#include "cuda/rnn.cuh"
#include "cuda/variant_module.h"
#include "cuda/zoneout.cuh"

namespace fusedrnn {
namespace cuda {

int64_t colsum_parts(int64_t n_rows) { return colsum_parts_impl(n_rows); }

namespace {

// Walk settings: max_blocks smaller than the GPU's forces the stride loops (and makes row
// blocks take several rows); `backwards` walks blocks and threads in reverse (a result that
// changes means one thread read another's output within a launch, or without a barrier in
// between: a race on the GPU); threads > 0 overrides the row kernels' block size (a power of
// two) so that small H still gives several units per thread.
uint32_t g_max_blocks = kMaxBlocks;
bool g_backwards = false;
uint32_t g_threads = 0;

struct HostRun {  // elementwise kernels
  template <class Op>
  void operator()(const Op& op, int64_t n) const {
    if (n <= 0) return;
    const LaunchShape s = launch_shape(n, g_max_blocks);
    for (uint32_t k = 0; k < s.blocks * s.threads; ++k) {
      const uint32_t flat = g_backwards ? s.blocks * s.threads - 1 - k : k;
      grid_stride_loop(flat / s.threads, s.threads, s.blocks, flat % s.threads, n, op);
    }
  }
};

struct HostBlock {  // one thread block of a row kernel
  uint32_t threads;

  uint32_t thread(uint32_t k) const { return g_backwards ? threads - 1 - k : k; }

  template <class F>
  void for_each(int64_t n, const F& f) const {
    for (uint32_t k = 0; k < threads; ++k) {
      for (int64_t i = thread(k); i < n; i += threads) f(i);
    }
  }

  void sync() const {}

  template <typename A, class F>
  A sum(int64_t n, const F& f) const {
    std::vector<A> sh(threads);
    for (uint32_t k = 0; k < threads; ++k) {
      const uint32_t t = thread(k);
      A s = A(0);
      for (int64_t i = t; i < n; i += threads) s += f(i);
      sh[t] = s;
    }
    for (uint32_t w = threads / 2; w > 0; w >>= 1) {
      for (uint32_t t = 0; t < w; ++t) sh[t] += sh[t + w];
    }
    return sh[0];
  }
};

struct HostRowRun {  // row kernels
  template <class Op>
  void operator()(const Op& op, int64_t rows, int64_t hidden, size_t) const {
    if (rows <= 0) return;
    LaunchShape s = row_launch_shape(rows, hidden, g_max_blocks);
    if (g_threads > 0) s.threads = g_threads;
    const HostBlock blk{s.threads};
    for (uint32_t k = 0; k < s.blocks; ++k) {
      row_loop(g_backwards ? s.blocks - 1 - k : k, s.blocks, rows, blk, op);
    }
  }
};

// The Launch policy of layer_driver.h / variant_driver.h (the GPU's is csrc/cuda/bindings.cpp).
struct HostLaunch {
  struct Guard {
    explicit Guard(c10::Device) {}
  };

  static void check(bool known_dtype) { TORCH_CHECK(known_dtype, "fusedrnn: unknown dtype"); }

  void lstm_forward_step(DType dt, bool has_bias, bool save, bool proj, const LstmFwdArgs& a) {
    check(lstm_forward_dispatch(dt, has_bias, save, proj, a, HostRun{}));
  }
  void lstm_backward_step(DType dt, bool add_state, const LstmBwdArgs& a) {
    check(lstm_backward_dispatch(dt, add_state, a, HostRun{}));
  }
  void gru_forward_step(DType dt, bool has_bias, bool save, const GruFwdArgs& a) {
    check(gru_forward_dispatch(dt, has_bias, save, a, HostRun{}));
  }
  void gru_backward_step(DType dt, const GruBwdArgs& a) {
    check(gru_backward_dispatch(dt, a, HostRun{}));
  }
  void rnn_forward_step(DType dt, bool relu, bool has_bias, bool save, const RnnFwdArgs& a) {
    check(rnn_forward_dispatch(dt, relu, has_bias, save, a, HostRun{}));
  }
  void rnn_backward_step(DType dt, bool relu, const RnnBwdArgs& a) {
    check(rnn_backward_dispatch(dt, relu, a, HostRun{}));
  }
  void column_sum(DType dt, const ColSumArgs& a) { check(column_sum_dispatch(dt, a, HostRun{})); }

  void lstm_variant_forward(DType dt, bool ln, bool peep, bool cifg, const LstmVarFwdArgs& a) {
    check(lstm_variant_forward_dispatch(dt, ln, peep, cifg, a, HostRowRun{}));
  }
  void lstm_variant_backward(DType dt, bool ln, bool peep, bool cifg, const LstmVarBwdArgs& a) {
    check(lstm_variant_backward_dispatch(dt, ln, peep, cifg, a, HostRowRun{}));
  }
  void gru_variant_forward(DType dt, bool ln, const GruVarFwdArgs& a) {
    check(gru_variant_forward_dispatch(dt, ln, a, HostRowRun{}));
  }
  void gru_variant_backward(DType dt, bool ln, const GruVarBwdArgs& a) {
    check(gru_variant_backward_dispatch(dt, ln, a, HostRowRun{}));
  }
  void zone_forward(DType dt, const ZoneFwdArgs& a) {
    check(zone_forward_dispatch(dt, a, HostRun{}));
  }
  void zone_backward(DType dt, const ZoneBwdArgs& a) {
    check(zone_backward_dispatch(dt, a, HostRun{}));
  }
};

}  // namespace
}  // namespace cuda
}  // namespace fusedrnn

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "CPU walk of the fusedrnn CUDA kernels' grids (tests only)";
  fusedrnn::cuda::bind_layer<fusedrnn::cuda::HostLaunch>(m);
  fusedrnn::cuda::bind_variant_layer<fusedrnn::cuda::HostLaunch>(m);
  m.def(
      "set_grid",
      [](uint32_t max_blocks, bool backwards, uint32_t threads) {
        TORCH_CHECK(max_blocks >= 1, "max_blocks must be >= 1");
        TORCH_CHECK((threads & (threads - 1)) == 0, "threads must be 0 or a power of two");
        fusedrnn::cuda::g_max_blocks = max_blocks;
        fusedrnn::cuda::g_backwards = backwards;
        fusedrnn::cuda::g_threads = threads;
      },
      pybind11::arg("max_blocks"), pybind11::arg("backwards"), pybind11::arg("threads") = 0);
  m.def("launch_shape", [](int64_t n, uint32_t max_blocks) {
    const auto s = fusedrnn::cuda::launch_shape(n, max_blocks);
    return std::make_pair(s.blocks, s.threads);
  });
  m.def("row_launch_shape", [](int64_t rows, int64_t hidden, uint32_t max_blocks) {
    const auto s = fusedrnn::cuda::row_launch_shape(rows, hidden, max_blocks);
    return std::make_pair(s.blocks, s.threads);
  });
}
