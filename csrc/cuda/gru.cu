// GRU per-step kernels: launchers (the functors live in gru.cuh).
#include "cuda/gru.cuh"
#include "cuda/kernel.cuh"

namespace fusedrnn {
namespace cuda {

cudaError_t gru_forward_step(DType dtype, bool has_bias, bool save, const GruFwdArgs& a,
                             cudaStream_t stream) {
  return launch_status(dispatch(
      dtype,
      [&](auto t, auto hb, auto sv) {
        KernelRun{stream}(GruFwdOp<typename decltype(t)::type, hb, sv>{a}, a.rows * a.hidden);
      },
      has_bias, save));
}

cudaError_t gru_backward_step(DType dtype, const GruBwdArgs& a, cudaStream_t stream) {
  return launch_status(dispatch(dtype, [&](auto t) {
    KernelRun{stream}(GruBwdOp<typename decltype(t)::type>{a}, a.rows * a.hidden);
  }));
}

}  // namespace cuda
}  // namespace fusedrnn
