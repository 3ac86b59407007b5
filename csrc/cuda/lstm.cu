// LSTM per-step kernels: launchers (the functors live in lstm.cuh).
#include "cuda/kernel.cuh"
#include "cuda/lstm.cuh"

namespace fusedrnn {
namespace cuda {

cudaError_t lstm_forward_step(DType dtype, bool has_bias, bool save, bool proj,
                              const LstmFwdArgs& args, cudaStream_t stream) {
  return launch_status(lstm_forward_dispatch(dtype, has_bias, save, proj, args, KernelRun{stream}));
}

cudaError_t lstm_backward_step(DType dtype, bool add_state, const LstmBwdArgs& args,
                               cudaStream_t stream) {
  return launch_status(lstm_backward_dispatch(dtype, add_state, args, KernelRun{stream}));
}

}  // namespace cuda
}  // namespace fusedrnn
