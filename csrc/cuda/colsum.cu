// Bias-gradient reduction kernels: launchers (the functors live in colsum.cuh).
#include "cuda/colsum.cuh"
#include "cuda/kernel.cuh"

namespace fusedrnn {
namespace cuda {

int64_t colsum_parts(int64_t n_rows) { return colsum_parts_impl(n_rows); }

cudaError_t column_sum(DType dtype, const ColSumArgs& args, cudaStream_t stream) {
  return launch_status(column_sum_dispatch(dtype, args, KernelRun{stream}));
}

}  // namespace cuda
}  // namespace fusedrnn
