// The two kernel templates of csrc/cuda (common.cuh) and their launches, included by the .cu
// files. Without nvcc (harness/host_driver.cpp) this header is only common.cuh and rowblock.cuh:
// the harness defines KernelRun, RowKernelRun and launch_status as walks over the grid.
#pragma once

#include "cuda/common.cuh"
#include "cuda/rowblock.cuh"

#if defined(__CUDACC__)
namespace fusedrnn {
namespace cuda {

// The functor is passed by value in the kernel parameters (a few pointers and sizes).
// No __launch_bounds__: with it ptxas caps the double-precision LSTM step at 48 registers and
// spills across the libdevice division call; 256 threads fit any register count up to 255.
template <class Op>
__global__ void elementwise_kernel(const Op op, int64_t n) {
  grid_stride_loop(blockIdx.x, blockDim.x, gridDim.x, threadIdx.x, n, op);
}

// One block per row (stride over rows when the grid is smaller); blockDim.x accumulators of
// the op's accumulation type in dynamic shared memory. No __launch_bounds__, as above.
template <class Op>
__global__ void row_kernel(const Op op, int64_t rows) {
  extern __shared__ __align__(16) unsigned char smem[];
  const DeviceBlock blk{smem};
  row_loop(blockIdx.x, gridDim.x, rows, blk, op);
}

// Runs op(i) for every i < n: one launch of elementwise_kernel<Op> on `stream`.
struct KernelRun {
  cudaStream_t stream;
  int64_t n;

  template <class Op>
  void operator()(const Op& op) const {
    if (n <= 0) return;
    const LaunchShape shape = launch_shape(n);
    elementwise_kernel<Op><<<shape.blocks, shape.threads, 0, stream>>>(op, n);
  }
};

// Runs op over every row: one launch of row_kernel<Op>, one accumulator of the functor's acc
// type in shared memory per thread.
struct RowKernelRun {
  cudaStream_t stream;
  int64_t rows, hidden;

  template <class Op>
  void operator()(const Op& op) const {
    if (rows <= 0) return;
    const LaunchShape shape = row_launch_shape(rows, hidden);
    const size_t smem = shape.threads * sizeof(acc_t<typename StorageOf<Op>::type>);
    row_kernel<Op><<<shape.blocks, shape.threads, smem, stream>>>(op, rows);
  }
};

inline cudaError_t launch_status(bool dtype_known) {
  return dtype_known ? cudaPeekAtLastError() : cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace fusedrnn
#endif
