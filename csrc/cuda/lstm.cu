// LSTM per-step kernels: launchers (the functors live in lstm.cuh).
#include "cuda/kernel.cuh"
#include "cuda/lstm.cuh"

namespace fusedrnn {
namespace cuda {

cudaError_t lstm_forward_step(DType dtype, bool has_bias, bool save, bool proj,
                              const LstmFwdArgs& a, cudaStream_t stream) {
  const KernelRun run{stream, a.rows * a.hidden};
  return launch_status(dispatch_op<LstmFwdOp>(dtype, a, run, has_bias, save, proj));
}

cudaError_t lstm_backward_step(DType dtype, bool add_state, const LstmBwdArgs& a,
                               cudaStream_t stream) {
  const KernelRun run{stream, a.rows * a.hidden};
  return launch_status(dispatch_op<LstmBwdOp>(dtype, a, run, add_state));
}

}  // namespace cuda
}  // namespace fusedrnn
