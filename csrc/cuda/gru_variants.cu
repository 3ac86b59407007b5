// GRU variant per-step kernels: launchers (the row functors live in gru_variants.cuh).
#include "cuda/gru_variants.cuh"
#include "cuda/rowkernel.cuh"

namespace fusedrnn {
namespace cuda {

cudaError_t gru_variant_forward(DType dtype, bool ln, const GruVarFwdArgs& a,
                                cudaStream_t stream) {
  const RowKernelRun run{stream, a.rows, a.hidden};
  return launch_status(dispatch_op<GruVarFwdOp>(dtype, a, run, ln));
}

cudaError_t gru_variant_backward(DType dtype, bool ln, const GruVarBwdArgs& a,
                                 cudaStream_t stream) {
  const RowKernelRun run{stream, a.rows, a.hidden};
  return launch_status(dispatch_op<GruVarBwdOp>(dtype, a, run, ln));
}

}  // namespace cuda
}  // namespace fusedrnn
