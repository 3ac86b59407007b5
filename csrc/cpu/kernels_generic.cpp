// Baseline-ISA copy of the pointwise kernels, plain cells and variants, and the run-time choice
// between the copies (both tables always come from the same ISA).
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include <c10/util/Half.h>

#include "kernels.h"
#include "variant_kernels.h"

#define FRNN_ISA_NAMESPACE generic
#include "kernels_impl.h"
#include "variant_kernels_impl.h"

namespace fusedrnn::cpu {

namespace {
bool use_avx2() {
  // FUSEDRNN_CPU_ISA=generic forces the baseline copy (the tests use it to run both copies).
  const char* forced = std::getenv("FUSEDRNN_CPU_ISA");
  if (forced != nullptr && std::strcmp(forced, "generic") == 0) return false;
#if FRNN_TARGET_AVX2
  return avx2::compiled() && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

// The table of one dtype and kernel family, chosen once (one instantiation, and so one static,
// per Table type).
template <class Table>
const Table& choose(Table (*avx2_table)(), Table (*generic_table)()) {
  static const Table k = use_avx2() ? avx2_table() : generic_table();
  return k;
}
}  // namespace

const PointwiseKernels<float>& kernels(float) {
  return choose(avx2::make_kernels_f32, generic::make_kernels_f32);
}

const PointwiseKernels<double>& kernels(double) {
  return choose(avx2::make_kernels_f64, generic::make_kernels_f64);
}

const VariantKernels<float>& variant_kernels(float) {
  return choose(avx2::make_variant_kernels_f32, generic::make_variant_kernels_f32);
}

const VariantKernels<double>& variant_kernels(double) {
  return choose(avx2::make_variant_kernels_f64, generic::make_variant_kernels_f64);
}

const char* kernel_isa() { return use_avx2() ? "avx2+fma" : "generic"; }

}  // namespace fusedrnn::cpu
