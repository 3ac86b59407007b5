// Elman RNN per-step kernels: launchers (the functors live in rnn.cuh).
#include "cuda/kernel.cuh"
#include "cuda/rnn.cuh"

namespace fusedrnn {
namespace cuda {

cudaError_t rnn_forward_step(DType dtype, const RnnFwdArgs& a, cudaStream_t stream) {
  const KernelRun run{stream, a.rows * a.hidden};
  return launch_status(
      dispatch_op<RnnFwdOp>(dtype, a, run, a.relu, a.b_hh != nullptr, a.h_prev != nullptr));
}

cudaError_t rnn_backward_step(DType dtype, const RnnBwdArgs& a, cudaStream_t stream) {
  const KernelRun run{stream, a.rows * a.hidden};
  return launch_status(dispatch_op<RnnBwdOp>(dtype, a, run, a.relu));
}

}  // namespace cuda
}  // namespace fusedrnn
