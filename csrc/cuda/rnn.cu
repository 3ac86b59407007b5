// Elman RNN per-step kernels: launchers (the functors live in rnn.cuh).
#include "cuda/kernel.cuh"
#include "cuda/rnn.cuh"

namespace fusedrnn {
namespace cuda {

cudaError_t rnn_forward_step(DType dtype, bool relu, bool has_bias, bool save,
                             const RnnFwdArgs& a, cudaStream_t stream) {
  return launch_status(dispatch(
      dtype,
      [&](auto t, auto rl, auto hb, auto sv) {
        using T = typename decltype(t)::type;
        KernelRun{stream}(RnnFwdOp<T, rl, hb, sv>{a}, a.rows * a.hidden);
      },
      relu, has_bias, save));
}

cudaError_t rnn_backward_step(DType dtype, bool relu, const RnnBwdArgs& a,
                              cudaStream_t stream) {
  return launch_status(dispatch(
      dtype,
      [&](auto t, auto rl) {
        KernelRun{stream}(RnnBwdOp<typename decltype(t)::type, rl>{a}, a.rows * a.hidden);
      },
      relu));
}

}  // namespace cuda
}  // namespace fusedrnn
