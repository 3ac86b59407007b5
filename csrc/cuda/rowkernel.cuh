// The row kernel template and its launch (device code: included only by the .cu files), the
// row-kernel counterpart of kernel.cuh (and, as there, only rowblock.cuh without nvcc: the host
// harness defines RowKernelRun).
#pragma once

#include "cuda/kernel.cuh"
#include "cuda/rowblock.cuh"

#if defined(__CUDACC__)
namespace fusedrnn {
namespace cuda {

// One block per row (stride over rows when the grid is smaller); blockDim.x accumulators of
// the op's accumulation type in dynamic shared memory. No __launch_bounds__, as kernel.cuh.
template <class Op>
__global__ void row_kernel(const Op op, int64_t rows) {
  extern __shared__ __align__(16) unsigned char smem[];
  const DeviceBlock blk{smem};
  row_loop(blockIdx.x, gridDim.x, rows, blk, op);
}

// Runs op over every row: one launch of row_kernel<Op>, one accumulator of the functor's acc
// type in shared memory per thread (the harness' RowKernelRun walks the same blocks).
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

}  // namespace cuda
}  // namespace fusedrnn
#endif
