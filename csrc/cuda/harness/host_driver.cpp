// Test build of the CUDA backend on the CPU: the same launchers (the .cu files, compiled here
// as plain C++), layer driver, glue, dispatch, launch shapes, grid-stride loop, row functors
// and element functors as fusedrnn._C_cuda, with each launch replaced by a walk over the grid
// the GPU launch would use. Elementwise kernels walk every (block, thread); row kernels walk
// their blocks, and within a block every collective operation (rowblock.cuh) walks the threads
// one after the other, with the GPU's partition of the work and its summation order. Built by
// tests/cuda_host.py with torch.utils.cpp_extension (CPU tensors).
#include <type_traits>
#include <vector>

#include "cuda/common.cuh"
#include "cuda/layer_module.h"
#include "cuda/rowblock.cuh"

namespace fusedrnn {
namespace cuda {

// Walk settings: max_blocks smaller than the GPU's forces the stride loops (and makes row
// blocks take several rows); `backwards` walks blocks and threads in reverse (a result that
// changes means one thread read another's output within a launch, or without a barrier in
// between: a race on the GPU); threads > 0 overrides the row kernels' block size (a power of
// two) so that small H still gives several units per thread.
uint32_t g_max_blocks = kMaxBlocks;
bool g_backwards = false;
uint32_t g_threads = 0;

// What kernel.cuh provides to the .cu files under nvcc: launch_status (here only an unknown
// dtype fails) and launch_grid, here the walks that stand in for the launches.
inline cudaError_t launch_status(bool dtype_known) {
  return dtype_known ? cudaSuccess : cudaErrorInvalidValue;
}

// f(0), ..., f(count - 1), in reverse order when g_backwards
template <class F>
void walk(uint32_t count, const F& f) {
  for (uint32_t k = 0; k < count; ++k) f(g_backwards ? count - 1 - k : k);
}

template <class Op>  // elementwise kernels: every (block, thread)
void launch_grid(std::false_type, const Op& op, int64_t n, int64_t, cudaStream_t) {
  const LaunchShape s = launch_shape(n, g_max_blocks);
  walk(s.blocks * s.threads, [&](uint32_t flat) {
    grid_stride_loop(flat / s.threads, s.threads, s.blocks, flat % s.threads, n, op);
  });
}

struct HostBlock {  // one thread block of a row kernel
  uint32_t threads;

  template <class F>
  void for_each(int64_t n, const F& f) const {
    walk(threads, [&](uint32_t t) {
      for (int64_t i = t; i < n; i += threads) f(i);
    });
  }

  template <typename A, class F>
  A sum(int64_t n, const F& f) const {  // each thread's partial sum (as for_each), then the tree
    std::vector<A> sh(threads, A(0));
    for_each(n, [&](int64_t i) { sh[i % threads] += f(i); });
    for (uint32_t w = threads / 2; w > 0; w >>= 1) {
      for (uint32_t t = 0; t < w; ++t) sh[t] += sh[t + w];
    }
    return sh[0];
  }
};

template <class Op>  // row kernels
void launch_grid(std::true_type, const Op& op, int64_t rows, int64_t hidden, cudaStream_t) {
  LaunchShape s = row_launch_shape(rows, hidden, g_max_blocks);
  if (g_threads > 0) s.threads = g_threads;
  const HostBlock blk{s.threads};
  walk(s.blocks, [&](uint32_t block) { row_loop(block, s.blocks, rows, blk, op); });
}

// The Launch policy (layer_module.h); the GPU's is in csrc/cuda/bindings.cpp.
struct HostPolicy {
  struct Guard {
    explicit Guard(c10::Device) {}
  };

  cudaStream_t stream = nullptr;

  static void check(cudaError_t status) {
    TORCH_CHECK(status == cudaSuccess, "fusedrnn: unknown dtype");
  }
};

}  // namespace cuda
}  // namespace fusedrnn

// The launchers of launchers.h, exactly as the extension's.
#include "cuda/colsum.cu"
#include "cuda/gru.cu"
#include "cuda/lstm.cu"
#include "cuda/rnn.cu"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "CPU walk of the fusedrnn CUDA kernels' grids (tests only)";
  fusedrnn::cuda::bind_layer<fusedrnn::cuda::HostPolicy>(m);
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
