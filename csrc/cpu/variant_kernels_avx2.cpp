// AVX2+FMA copy of the variant kernels (used only when the CPU reports both; the choice is
// made in variant_kernels_generic.cpp). Standard headers come before the target pragma so
// that only this file's own functions and the cell math inlined into them get the wider ISA.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "variant_kernels.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
#define FRNN_ISA_NAMESPACE avx2
#include "variant_kernels_impl.h"
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#else

namespace fusedrnn::cpu::avx2 {
VariantKernels<float> make_variant_kernels_f32() { return {}; }
VariantKernels<double> make_variant_kernels_f64() { return {}; }
}  // namespace fusedrnn::cpu::avx2

#endif
