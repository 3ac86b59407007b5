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
enum class Isa { generic, avx2, avx512 };

Isa isa() {
  // FUSEDRNN_CPU_ISA=generic or =avx2 caps the choice (the tests use it to run every copy).
  static const Isa chosen = [] {
    const char* forced = std::getenv("FUSEDRNN_CPU_ISA");
    const bool generic_only = forced != nullptr && std::strcmp(forced, "generic") == 0;
    const bool avx2_only = forced != nullptr && std::strcmp(forced, "avx2") == 0;
#if FRNN_TARGET_AVX2
    if (generic_only || !__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") ||
        !__builtin_cpu_supports("f16c"))
      return Isa::generic;
    return !avx2_only && __builtin_cpu_supports("avx512f") ? Isa::avx512 : Isa::avx2;
#else
    (void)generic_only, (void)avx2_only;
    return Isa::generic;
#endif
  }();
  return chosen;
}

// The table of one dtype and kernel family, chosen once (one instantiation, and so one static,
// per Table type).
template <class Table>
const Table& choose(Table (*avx512_table)(), Table (*avx2_table)(), Table (*generic_table)()) {
  static const Table k = isa() == Isa::avx512 ? avx512_table()
                         : isa() == Isa::avx2 ? avx2_table()
                                              : generic_table();
  return k;
}
}  // namespace

// Builds for other CPUs have the baseline copy only.
#if FRNN_TARGET_AVX2
#define FRNN_COPIES(make) avx512::make, avx2::make, generic::make
#else
#define FRNN_COPIES(make) nullptr, nullptr, generic::make
#endif

const PointwiseKernels<float>& kernels(float) { return choose(FRNN_COPIES(make_kernels_f32)); }

const PointwiseKernels<double>& kernels(double) { return choose(FRNN_COPIES(make_kernels_f64)); }

const VariantKernels<float>& variant_kernels(float) {
  return choose(FRNN_COPIES(make_variant_kernels_f32));
}

const VariantKernels<double>& variant_kernels(double) {
  return choose(FRNN_COPIES(make_variant_kernels_f64));
}

const char* kernel_isa() {
  return isa() == Isa::avx512 ? "avx512f" : isa() == Isa::avx2 ? "avx2+fma" : "generic";
}

}  // namespace fusedrnn::cpu
