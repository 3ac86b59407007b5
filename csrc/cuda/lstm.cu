// LSTM per-step kernels: launchers (the functors live in lstm.cuh). torch.nn's cell runs the
// elementwise kernels, every other configuration the row kernels (launchers.h).
#include "cuda/kernel.cuh"
#include "cuda/lstm.cuh"

namespace fusedrnn {
namespace cuda {

cudaError_t lstm_forward_step(DType dtype, const LstmFwdArgs& a, cudaStream_t stream) {
  if (!a.any()) {
    const KernelRun run{stream, a.rows * a.hidden};
    return launch_status(
        dispatch_op<LstmFwdOp>(dtype, a, run, a.b_hh != nullptr, a.h_prev != nullptr, a.proj));
  }
  const RowKernelRun run{stream, a.rows, a.hidden};
  return launch_status(dispatch_op<LstmRowFwdOp>(dtype, a, run, a.ln_hh_w != nullptr,
                                                 a.w_ch != nullptr, a.cifg));
}

cudaError_t lstm_backward_step(DType dtype, const LstmBwdArgs& a, cudaStream_t stream) {
  if (!a.any()) {
    const KernelRun run{stream, a.rows * a.hidden};
    return launch_status(dispatch_op<LstmBwdOp>(dtype, a, run, a.proj));
  }
  const RowKernelRun run{stream, a.rows, a.hidden};
  return launch_status(dispatch_op<LstmRowBwdOp>(dtype, a, run, a.ln_hh_w != nullptr,
                                                 a.w_ch != nullptr, a.cifg));
}

cudaError_t zone_forward(DType dtype, const ZoneFwdArgs& a, cudaStream_t stream) {
  return launch_status(dispatch_plain<ZoneFwdOp>(dtype, a, KernelRun{stream, a.rows * a.width}));
}

cudaError_t zone_backward(DType dtype, const ZoneBwdArgs& a, cudaStream_t stream) {
  return launch_status(dispatch_plain<ZoneBwdOp>(dtype, a, KernelRun{stream, a.rows * a.width}));
}

}  // namespace cuda
}  // namespace fusedrnn
