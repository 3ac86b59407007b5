// The one kernel template of csrc/cuda and its launch, shared by every launcher (device code:
// included only by the .cu files). The host harness (harness/host_driver.cpp) compiles the same
// .cu files without nvcc: there this header is only common.cuh, and the harness defines
// KernelRun and launch_status as a walk over the grid before including them.
#pragma once

#include "cuda/common.cuh"

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

// Runs op(i) for every i < n: one launch of elementwise_kernel<Op> on `stream` (the harness'
// KernelRun walks the same grid on the CPU).
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

inline cudaError_t launch_status(bool dtype_known) {
  return dtype_known ? cudaPeekAtLastError() : cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace fusedrnn
#endif
