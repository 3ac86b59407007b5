// LSTM variant per-step kernels: launchers (the row functors live in lstm_variants.cuh).
#include "cuda/lstm_variants.cuh"
#include "cuda/rowkernel.cuh"

namespace fusedrnn {
namespace cuda {

cudaError_t lstm_variant_forward(DType dtype, bool ln, bool peep, bool cifg,
                                 const LstmVarFwdArgs& args, cudaStream_t stream) {
  return launch_status(
      lstm_variant_forward_dispatch(dtype, ln, peep, cifg, args, RowKernelRun{stream}));
}

cudaError_t lstm_variant_backward(DType dtype, bool ln, bool peep, bool cifg,
                                  const LstmVarBwdArgs& args, cudaStream_t stream) {
  return launch_status(
      lstm_variant_backward_dispatch(dtype, ln, peep, cifg, args, RowKernelRun{stream}));
}

}  // namespace cuda
}  // namespace fusedrnn
