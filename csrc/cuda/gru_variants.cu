// GRU variant per-step kernels: launchers (the row functors live in gru_variants.cuh).
#include "cuda/gru_variants.cuh"
#include "cuda/rowkernel.cuh"

namespace fusedrnn {
namespace cuda {

cudaError_t gru_variant_forward(DType dtype, bool ln, const GruVarFwdArgs& args,
                                cudaStream_t stream) {
  return launch_status(gru_variant_forward_dispatch(dtype, ln, args, RowKernelRun{stream}));
}

cudaError_t gru_variant_backward(DType dtype, bool ln, const GruVarBwdArgs& args,
                                 cudaStream_t stream) {
  return launch_status(gru_variant_backward_dispatch(dtype, ln, args, RowKernelRun{stream}));
}

}  // namespace cuda
}  // namespace fusedrnn
