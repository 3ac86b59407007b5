// Elman RNN per-step kernels: launchers (the functors live in rnn.cuh).
#include "cuda/kernel.cuh"
#include "cuda/rnn.cuh"

namespace fusedrnn {
namespace cuda {

cudaError_t rnn_forward_step(DType dtype, bool relu, bool has_bias, bool save,
                             const RnnFwdArgs& a, cudaStream_t stream) {
  const KernelRun run{stream, a.rows * a.hidden};
  return launch_status(dispatch_op<RnnFwdOp>(dtype, a, run, relu, has_bias, save));
}

cudaError_t rnn_backward_step(DType dtype, bool relu, const RnnBwdArgs& a,
                              cudaStream_t stream) {
  return launch_status(dispatch_op<RnnBwdOp>(dtype, a, KernelRun{stream, a.rows * a.hidden}, relu));
}

}  // namespace cuda
}  // namespace fusedrnn
