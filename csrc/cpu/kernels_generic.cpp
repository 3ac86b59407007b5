// Baseline-ISA copy of the pointwise kernels, plain cells and variants, and the run-time choice
// between the copies.
#include <cstdlib>
#include <string>

#include "kernels.h"

#define FRNN_ISA_NAMESPACE generic
#include "kernels_impl.h"

namespace fusedrnn::cpu {

namespace {
enum class Isa { generic, avx2, avx512 };

// The AVX-512 copies are taken on Intel CPUs with AVX-512F, whose two 512-bit FMA units do
// 1.65-1.9x the work of 256-bit FMAs (measured). AMD's Zen 4 runs a 512-bit FMA as two 256-bit
// halves, so the wide copies have no peak to gain there, and its 32 KiB L1 would be filled by
// the wide GEMM tile's two weight panels alone: the AVX2 copies stay, as measured there.
// FUSEDRNN_CPU_ISA=generic or =avx2 caps the choice (the tests use it to run every copy);
// =avx512 takes the AVX-512 copies on any CPU that has AVX-512F (to measure them).
Isa isa() {
  static const Isa chosen = [] {
    const char* env = std::getenv("FUSEDRNN_CPU_ISA");
    const std::string forced = env != nullptr ? env : "";
#if FRNN_TARGET_AVX2
    if (forced == "generic" || !__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") ||
        !__builtin_cpu_supports("f16c"))
      return Isa::generic;
    const bool wide = forced == "avx512" || (forced != "avx2" && __builtin_cpu_is("intel"));
    return wide && __builtin_cpu_supports("avx512f") ? Isa::avx512 : Isa::avx2;
#else
    (void)forced;
    return Isa::generic;
#endif
  }();
  return chosen;
}

// The table of one dtype, chosen once (one static per T); builds for other CPUs have the
// baseline copy only.
template <typename T>
const PointwiseKernels<T>& choose() {
  static const PointwiseKernels<T> k = [] {
#if FRNN_TARGET_AVX2
    if (isa() == Isa::avx512) return avx512::make_kernels<T>();
    if (isa() == Isa::avx2) return avx2::make_kernels<T>();
#endif
    return generic::make_kernels<T>();
  }();
  return k;
}
}  // namespace

const PointwiseKernels<float>& kernels(float) { return choose<float>(); }
const PointwiseKernels<double>& kernels(double) { return choose<double>(); }

const char* kernel_isa() {
  return isa() == Isa::avx512 ? "avx512f" : isa() == Isa::avx2 ? "avx2+fma" : "generic";
}

}  // namespace fusedrnn::cpu
