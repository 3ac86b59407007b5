// The `Launch` of layer_driver.h, one template for the extension
// (bindings.cpp) and the CPU harness (harness/host_driver.cpp): launch(launcher, args...) calls
// one launcher of launchers.h as launcher(args..., stream) and hands its status to the
// policy's check. A Policy provides `Guard` (constructed from the input's device
// before the Launch, see layer_module.h), the member `stream` and static check(cudaError_t).
#pragma once

#include "cuda/launchers.h"

namespace fusedrnn {
namespace cuda {

template <class Policy>
struct CheckedLaunch : Policy {
  template <class Launcher, class... Args>
  void operator()(Launcher launcher, const Args&... args) const {
    Policy::check(launcher(args..., this->stream));
  }
};

}  // namespace cuda
}  // namespace fusedrnn
