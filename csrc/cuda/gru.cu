// GRU per-step kernels: launchers (the functors live in gru.cuh).
#include "cuda/gru.cuh"
#include "cuda/kernel.cuh"

namespace fusedrnn {
namespace cuda {

cudaError_t gru_forward_step(DType dtype, bool has_bias, bool save, const GruFwdArgs& a,
                             cudaStream_t stream) {
  const KernelRun run{stream, a.rows * a.hidden};
  return launch_status(dispatch_op<GruFwdOp>(dtype, a, run, has_bias, save));
}

cudaError_t gru_backward_step(DType dtype, const GruBwdArgs& a, cudaStream_t stream) {
  return launch_status(dispatch(dtype, [&](auto t) {  // no flags (see dispatch_op)
    KernelRun{stream, a.rows * a.hidden}(GruBwdOp<typename decltype(t)::type>{a});
  }));
}

}  // namespace cuda
}  // namespace fusedrnn
