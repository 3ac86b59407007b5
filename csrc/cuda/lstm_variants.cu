// LSTM variant per-step kernels: launchers (the row functors live in lstm_variants.cuh).
#include "cuda/lstm_variants.cuh"
#include "cuda/rowkernel.cuh"

namespace fusedrnn {
namespace cuda {

cudaError_t lstm_variant_forward(DType dtype, bool ln, bool peep, bool cifg,
                                 const LstmVarFwdArgs& a, cudaStream_t stream) {
  const RowKernelRun run{stream, a.rows, a.hidden};
  return launch_status(dispatch_op<LstmVarFwdOp>(dtype, a, run, ln, peep, cifg));
}

cudaError_t lstm_variant_backward(DType dtype, bool ln, bool peep, bool cifg,
                                  const LstmVarBwdArgs& a, cudaStream_t stream) {
  const RowKernelRun run{stream, a.rows, a.hidden};
  return launch_status(dispatch_op<LstmVarBwdOp>(dtype, a, run, ln, peep, cifg));
}

}  // namespace cuda
}  // namespace fusedrnn
