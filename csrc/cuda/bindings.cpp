// fusedrnn._C_cuda: the CUDA backend's layer op. Built only when torch has CUDA (setup.py).
// The kernels are plain .cu files behind launchers.h; the time loop is layer_driver.h, the
// Python functions and the Launch are layer_module.h. What is CUDA-specific is only
// this policy: the current stream of the input's device, and a launch check after every kernel.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/layer_module.h"

namespace fusedrnn {
namespace cuda {
namespace {

struct CudaPolicy {
  using Guard = c10::cuda::CUDAGuard;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();

  static void check(cudaError_t status) {
    C10_CUDA_KERNEL_LAUNCH_CHECK();  // clears and reports a launch error first
    TORCH_CHECK(status == cudaSuccess, "fusedrnn: kernel launch failed: ",
                cudaGetErrorString(status));
  }
};

}  // namespace
}  // namespace cuda
}  // namespace fusedrnn

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fusedrnn CUDA backend (per-step fused gate kernels, cuBLAS GEMMs)";
  fusedrnn::cuda::bind_layer<fusedrnn::cuda::CudaPolicy>(m);
}
