// GRU per-step kernels: launchers (the functors live in gru.cuh).
#include "cuda/gru.cuh"
#include "cuda/kernel.cuh"

namespace fusedrnn {
namespace cuda {

cudaError_t gru_forward_step(DType dtype, bool has_bias, bool save, const GruFwdArgs& args,
                             cudaStream_t stream) {
  return launch_status(gru_forward_dispatch(dtype, has_bias, save, args, KernelRun{stream}));
}

cudaError_t gru_backward_step(DType dtype, const GruBwdArgs& args, cudaStream_t stream) {
  return launch_status(gru_backward_dispatch(dtype, args, KernelRun{stream}));
}

}  // namespace cuda
}  // namespace fusedrnn
