// LSTM per-step kernels: launchers (the functors live in lstm.cuh).
#include "cuda/kernel.cuh"
#include "cuda/lstm.cuh"

namespace fusedrnn {
namespace cuda {

cudaError_t lstm_forward_step(DType dtype, bool has_bias, bool save, bool proj,
                              const LstmFwdArgs& a, cudaStream_t stream) {
  return launch_status(dispatch(
      dtype,
      [&](auto t, auto hb, auto sv, auto pj) {
        using T = typename decltype(t)::type;
        KernelRun{stream}(LstmFwdOp<T, hb, sv, pj>{a}, a.rows * a.hidden);
      },
      has_bias, save, proj));
}

cudaError_t lstm_backward_step(DType dtype, bool add_state, const LstmBwdArgs& a,
                               cudaStream_t stream) {
  return launch_status(dispatch(
      dtype,
      [&](auto t, auto as) {
        using T = typename decltype(t)::type;
        KernelRun{stream}(LstmBwdOp<T, as>{a}, a.rows * a.hidden);
      },
      add_state));
}

}  // namespace cuda
}  // namespace fusedrnn
