// GRU per-step kernels: launchers (the functors live in gru.cuh). torch.nn's cell runs the
// elementwise kernels, every other configuration the row kernels (launchers.h).
#include "cuda/gru.cuh"
#include "cuda/kernel.cuh"

namespace fusedrnn {
namespace cuda {

cudaError_t gru_forward_step(DType dtype, const GruFwdArgs& a, cudaStream_t stream) {
  if (!a.any()) {
    const KernelRun run{stream, a.rows * a.hidden};
    return launch_status(
        dispatch_op<GruFwdOp>(dtype, a, run, a.b_hh != nullptr, a.h_prev != nullptr));
  }
  const RowKernelRun run{stream, a.rows, a.hidden};
  return launch_status(dispatch_op<GruRowFwdOp>(dtype, a, run, a.ln_hh_w != nullptr));
}

cudaError_t gru_backward_step(DType dtype, const GruBwdArgs& a, cudaStream_t stream) {
  if (!a.any()) {
    const KernelRun run{stream, a.rows * a.hidden};
    return launch_status(dispatch_plain<GruBwdOp>(dtype, a, run));
  }
  const RowKernelRun run{stream, a.rows, a.hidden};
  return launch_status(dispatch_op<GruRowBwdOp>(dtype, a, run, a.ln_hh_w != nullptr));
}

}  // namespace cuda
}  // namespace fusedrnn
