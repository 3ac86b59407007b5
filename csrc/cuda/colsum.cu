// Bias-gradient reduction kernels: launchers (the functors live in colsum.cuh).
#include "cuda/colsum.cuh"
#include "cuda/kernel.cuh"

namespace fusedrnn {
namespace cuda {

int64_t colsum_parts(int64_t n_rows) { return colsum_parts_impl(n_rows); }

// Two launches, in order; the second pass reads what the first wrote (same stream).
cudaError_t column_sum(DType dtype, const ColSumArgs& a, cudaStream_t stream) {
  return launch_status(dispatch(dtype, [&](auto t) {
    using T = typename decltype(t)::type;
    KernelRun{stream, a.parts * a.n_cols}(ColSumPartialOp<T>{a});
    KernelRun{stream, a.n_cols}(ColSumFinalOp<T>{a});
  }));
}

}  // namespace cuda
}  // namespace fusedrnn
