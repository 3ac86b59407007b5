// The two kernel templates of csrc/cuda (common.cuh) and their launches, included by the .cu
// files. Without nvcc the harness (harness/host_driver.cpp) defines launch_status and
// launch_grid, a walk over the grid the launch would use.
#pragma once

#include <type_traits>

#include "cuda/common.cuh"
#include "cuda/rowblock.cuh"

namespace fusedrnn {
namespace cuda {

#if defined(__CUDACC__)
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

// One launch on `stream` of elementwise_kernel<Op> over n elements (std::false_type), or of
// row_kernel<Op> over n rows of `hidden` units with one accumulator of the functor's acc type
// in shared memory per thread (std::true_type).
template <class Op>
void launch_grid(std::false_type, const Op& op, int64_t n, int64_t, cudaStream_t stream) {
  const LaunchShape shape = launch_shape(n);
  elementwise_kernel<Op><<<shape.blocks, shape.threads, 0, stream>>>(op, n);
}

template <class Op>
void launch_grid(std::true_type, const Op& op, int64_t rows, int64_t hidden,
                 cudaStream_t stream) {
  const LaunchShape shape = row_launch_shape(rows, hidden);
  const size_t smem = shape.threads * sizeof(acc_t<typename StorageOf<Op>::type>);
  row_kernel<Op><<<shape.blocks, shape.threads, smem, stream>>>(op, rows);
}

inline cudaError_t launch_status(bool dtype_known) {
  return dtype_known ? cudaPeekAtLastError() : cudaErrorInvalidValue;
}
#endif

// What the launchers launch: KernelRun{stream, n} runs op(i) for every i < n,
// RowKernelRun{stream, rows, hidden} runs op over every row; a size of 0 launches nothing.
template <bool Row>
struct Run {
  cudaStream_t stream;
  int64_t n, hidden = 0;

  template <class Op>
  void operator()(const Op& op) const {
    if (n > 0) launch_grid(std::bool_constant<Row>{}, op, n, hidden, stream);
  }
};
using KernelRun = Run<false>;
using RowKernelRun = Run<true>;

}  // namespace cuda
}  // namespace fusedrnn
