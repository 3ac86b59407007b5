// Zoneout of the projected h: launchers (the element functors live in zoneout.cuh).
#include "cuda/kernel.cuh"
#include "cuda/zoneout.cuh"

namespace fusedrnn {
namespace cuda {

cudaError_t zone_forward(DType dtype, const ZoneFwdArgs& a, cudaStream_t stream) {
  return launch_status(dispatch(dtype, [&](auto t) {  // no flags (see dispatch_op)
    KernelRun{stream, a.rows * a.width}(ZoneFwdOp<typename decltype(t)::type>{a});
  }));
}

cudaError_t zone_backward(DType dtype, const ZoneBwdArgs& a, cudaStream_t stream) {
  return launch_status(dispatch(dtype, [&](auto t) {
    KernelRun{stream, a.rows * a.width}(ZoneBwdOp<typename decltype(t)::type>{a});
  }));
}

}  // namespace cuda
}  // namespace fusedrnn
