// Row kernels: one thread block owns one batch row (layer norm needs whole-row statistics).
//
// A row functor is written against a "block" object with two collective operations:
//   blk.for_each(n, f)  every thread runs f(i) for its strided share i = tid, tid + threads, ..
//   blk.sum<A>(n, f)    sum of f(i) over [0, n), the same value in every thread; a barrier
//                       before and after, so it may read what for_each wrote in other threads
// DeviceBlock implements them on the GPU (shared-memory tree, __syncthreads); the host harness
// (csrc/cuda/harness/host_driver.cpp) implements them by walking the threads one after
// the other with the same partition and the same summation order, so the CPU runs this exact
// code; its results differ from a GPU's only by rounding (cell_math.h's host exp / tanh are
// not the device's, and compilers contract to FMA differently).
//
// Data pass between the phases of a row only through memory; a for_each that reads another
// thread's output of an earlier for_each must have a sum (or blk.sync()) in between.
#pragma once

#include "cuda/common.cuh"

namespace fusedrnn {
namespace cuda {

// Threads per row block: a power of two (the tree reduction halves it) in [32, 256], about one
// unit of H per thread.
constexpr uint32_t kRowMinThreads = 32;
constexpr uint32_t kRowMaxThreads = 256;

inline uint32_t row_threads(int64_t hidden) {
  uint32_t t = kRowMinThreads;
  while (t < kRowMaxThreads && static_cast<int64_t>(t) < hidden) t <<= 1;
  return t;
}

inline LaunchShape row_launch_shape(int64_t rows, int64_t hidden,
                                    uint32_t max_blocks = kMaxBlocks) {
  return {static_cast<uint32_t>(clamp_count(rows, max_blocks)), row_threads(hidden)};
}

// Every block walks rows block, block + grid, ... (a grid smaller than rows still covers all).
template <class Op, class Blk>
FRNN_HD void row_loop(uint32_t block, uint32_t grid_dim, int64_t rows, const Blk& blk,
                      const Op& op) {
  for (int64_t r = block; r < rows; r += grid_dim) op(blk, r);
}

#if defined(__CUDACC__)
struct DeviceBlock {
  unsigned char* smem;  // blockDim.x accumulators

  template <class F>
  FRNN_HD void for_each(int64_t n, const F& f) const {
#if defined(__CUDA_ARCH__)
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) f(i);
#endif
  }

  FRNN_HD void sync() const {
#if defined(__CUDA_ARCH__)
    __syncthreads();
#endif
  }

  template <typename A, class F>
  FRNN_HD A sum(int64_t n, const F& f) const {
#if defined(__CUDA_ARCH__)
    __syncthreads();  // earlier phases' writes visible; sh free from the previous sum
    A s = A(0);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += f(i);
    A* sh = reinterpret_cast<A*>(smem);
    sh[threadIdx.x] = s;
    __syncthreads();
    for (uint32_t w = blockDim.x / 2; w > 0; w >>= 1) {
      if (threadIdx.x < w) sh[threadIdx.x] += sh[threadIdx.x + w];
      __syncthreads();
    }
    return sh[0];
#else
    return A(0);
#endif
  }
};
#endif

}  // namespace cuda
}  // namespace fusedrnn
