// fusedrnn._C_cuda: the CUDA backend's layer op. Built only when torch has CUDA (setup.py).
// The kernels are plain .cu files behind launchers.h; the time loop is layer_driver.h; the
// Python functions are layer_module.h. What is CUDA-specific is only this Launch policy:
// the current stream of the input's device, and a launch check after every kernel.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/launchers.h"
#include "cuda/layer_module.h"
#include "cuda/variant_launchers.h"
#include "cuda/variant_module.h"

namespace fusedrnn {
namespace cuda {
namespace {

struct CudaLaunch {
  using Guard = c10::cuda::CUDAGuard;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();

  static void check(cudaError_t status) {
    C10_CUDA_KERNEL_LAUNCH_CHECK();  // clears and reports a launch error first
    TORCH_CHECK(status == cudaSuccess, "fusedrnn: kernel launch failed: ",
                cudaGetErrorString(status));
  }

  void lstm_forward_step(DType dt, bool has_bias, bool save, bool proj, const LstmFwdArgs& a) {
    check(cuda::lstm_forward_step(dt, has_bias, save, proj, a, stream));
  }
  void lstm_backward_step(DType dt, bool add_state, const LstmBwdArgs& a) {
    check(cuda::lstm_backward_step(dt, add_state, a, stream));
  }
  void gru_forward_step(DType dt, bool has_bias, bool save, const GruFwdArgs& a) {
    check(cuda::gru_forward_step(dt, has_bias, save, a, stream));
  }
  void gru_backward_step(DType dt, const GruBwdArgs& a) {
    check(cuda::gru_backward_step(dt, a, stream));
  }
  void rnn_forward_step(DType dt, bool relu, bool has_bias, bool save, const RnnFwdArgs& a) {
    check(cuda::rnn_forward_step(dt, relu, has_bias, save, a, stream));
  }
  void rnn_backward_step(DType dt, bool relu, const RnnBwdArgs& a) {
    check(cuda::rnn_backward_step(dt, relu, a, stream));
  }
  void column_sum(DType dt, const ColSumArgs& a) { check(cuda::column_sum(dt, a, stream)); }

  // cell variants (variant_driver.h)
  void lstm_variant_forward(DType dt, bool ln, bool peep, bool cifg, const LstmVarFwdArgs& a) {
    check(cuda::lstm_variant_forward(dt, ln, peep, cifg, a, stream));
  }
  void lstm_variant_backward(DType dt, bool ln, bool peep, bool cifg, const LstmVarBwdArgs& a) {
    check(cuda::lstm_variant_backward(dt, ln, peep, cifg, a, stream));
  }
  void gru_variant_forward(DType dt, bool ln, const GruVarFwdArgs& a) {
    check(cuda::gru_variant_forward(dt, ln, a, stream));
  }
  void gru_variant_backward(DType dt, bool ln, const GruVarBwdArgs& a) {
    check(cuda::gru_variant_backward(dt, ln, a, stream));
  }
  void zone_forward(DType dt, const ZoneFwdArgs& a) { check(cuda::zone_forward(dt, a, stream)); }
  void zone_backward(DType dt, const ZoneBwdArgs& a) {
    check(cuda::zone_backward(dt, a, stream));
  }
};

}  // namespace
}  // namespace cuda
}  // namespace fusedrnn

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fusedrnn CUDA backend (per-step fused gate kernels, cuBLAS GEMMs)";
  fusedrnn::cuda::bind_layer<fusedrnn::cuda::CudaLaunch>(m);
  fusedrnn::cuda::bind_variant_layer<fusedrnn::cuda::CudaLaunch>(m);
}
