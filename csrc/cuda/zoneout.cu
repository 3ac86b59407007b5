// Zoneout of the projected h: launchers (the element functors live in zoneout.cuh).
#include "cuda/kernel.cuh"
#include "cuda/zoneout.cuh"

namespace fusedrnn {
namespace cuda {

cudaError_t zone_forward(DType dtype, const ZoneFwdArgs& args, cudaStream_t stream) {
  return launch_status(zone_forward_dispatch(dtype, args, KernelRun{stream}));
}

cudaError_t zone_backward(DType dtype, const ZoneBwdArgs& args, cudaStream_t stream) {
  return launch_status(zone_backward_dispatch(dtype, args, KernelRun{stream}));
}

}  // namespace cuda
}  // namespace fusedrnn
