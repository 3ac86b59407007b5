// Baseline-ISA copy of the variant kernels, and the run-time choice between the copies (the
// one kernels() made, so that both tables always come from the same ISA).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels.h"
#include "variant_kernels.h"

#define FRNN_ISA_NAMESPACE generic
#include "variant_kernels_impl.h"

namespace fusedrnn::cpu {

namespace {
bool use_avx2_copy() { return std::strcmp(kernel_isa(), "avx2+fma") == 0; }
}  // namespace

const VariantKernels<float>& variant_kernels(float) {
  static const VariantKernels<float> k =
      use_avx2_copy() ? avx2::make_variant_kernels_f32() : generic::make_variant_kernels_f32();
  return k;
}

const VariantKernels<double>& variant_kernels(double) {
  static const VariantKernels<double> k =
      use_avx2_copy() ? avx2::make_variant_kernels_f64() : generic::make_variant_kernels_f64();
  return k;
}

}  // namespace fusedrnn::cpu
