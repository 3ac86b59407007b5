// Elman RNN per-step kernels: launchers (the functors live in rnn.cuh).
#include "cuda/kernel.cuh"
#include "cuda/rnn.cuh"

namespace fusedrnn {
namespace cuda {

cudaError_t rnn_forward_step(DType dtype, bool relu, bool has_bias, bool save,
                             const RnnFwdArgs& args, cudaStream_t stream) {
  return launch_status(rnn_forward_dispatch(dtype, relu, has_bias, save, args, KernelRun{stream}));
}

cudaError_t rnn_backward_step(DType dtype, bool relu, const RnnBwdArgs& args,
                              cudaStream_t stream) {
  return launch_status(rnn_backward_dispatch(dtype, relu, args, KernelRun{stream}));
}

}  // namespace cuda
}  // namespace fusedrnn
