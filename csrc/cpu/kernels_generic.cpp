// Baseline-ISA copy of the pointwise kernels, and the run-time choice between the copies.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "kernels.h"

#define FRNN_ISA_NAMESPACE generic
#include "kernels_impl.h"

namespace fusedrnn::cpu {

namespace {
bool use_avx2() {
  // FUSEDRNN_CPU_ISA=generic forces the baseline copy (the tests use it to run both copies).
  const char* forced = std::getenv("FUSEDRNN_CPU_ISA");
  if (forced != nullptr && std::strcmp(forced, "generic") == 0) return false;
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
  return avx2::compiled() && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}
}  // namespace

const PointwiseKernels<float>& kernels(float) {
  static const PointwiseKernels<float> k =
      use_avx2() ? avx2::make_kernels_f32() : generic::make_kernels_f32();
  return k;
}

const PointwiseKernels<double>& kernels(double) {
  static const PointwiseKernels<double> k =
      use_avx2() ? avx2::make_kernels_f64() : generic::make_kernels_f64();
  return k;
}

const char* kernel_isa() { return use_avx2() ? "avx2+fma" : "generic"; }

}  // namespace fusedrnn::cpu
