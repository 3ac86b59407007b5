// Test build of the CUDA backend on the CPU: the same layer driver, glue, dispatch, launch
// shapes, grid-stride loop and element functors as fusedrnn._C_cuda, with the kernel launch
// replaced by a walk over every (block, thread) of the grid the GPU launch would use.
// Built by tests/test_cuda_backend.py with torch.utils.cpp_extension (CPU tensors).
#include "cuda/colsum.cuh"
#include "cuda/gru.cuh"
#include "cuda/layer_module.h"
#include "cuda/lstm.cuh"
#include "cuda/rnn.cuh"

namespace fusedrnn {
namespace cuda {

int64_t colsum_parts(int64_t n_rows) { return colsum_parts_impl(n_rows); }

namespace {

// Grid settings of the walk: max_blocks smaller than the GPU's forces the stride loop;
// walking (block, thread) backwards would change results if any element read another
// element's output within one launch (a race on the GPU).
uint32_t g_max_blocks = kMaxBlocks;
bool g_backwards = false;

struct HostRun {
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
};

}  // namespace
}  // namespace cuda
}  // namespace fusedrnn

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "CPU walk of the fusedrnn CUDA kernels' grids (tests only)";
  fusedrnn::cuda::bind_layer<fusedrnn::cuda::HostLaunch>(m);
  m.def(
      "set_grid",
      [](uint32_t max_blocks, bool backwards) {
        TORCH_CHECK(max_blocks >= 1, "max_blocks must be >= 1");
        fusedrnn::cuda::g_max_blocks = max_blocks;
        fusedrnn::cuda::g_backwards = backwards;
      },
      pybind11::arg("max_blocks"), pybind11::arg("backwards"));
  m.def("launch_shape", [](int64_t n, uint32_t max_blocks) {
    const auto s = fusedrnn::cuda::launch_shape(n, max_blocks);
    return std::make_pair(s.blocks, s.threads);
  });
}
