// AVX2+FMA copy of the pointwise kernels, plain cells and variants (used only when the CPU
// reports AVX2, FMA and F16C and the AVX-512 copy is not taken, see kernels_generic.cpp;
// kernels_avx512.cpp compiles the same loops 16 floats wide). kernels.h says why every header
// comes before the target pragma; the cell math gets its own inline namespace
// (FRNN_ISA_NAMESPACE) for the same reason.
#include "kernels.h"

#if FRNN_TARGET_AVX2
FRNN_AVX2_BEGIN
#define FRNN_ISA_NAMESPACE avx2
#define FRNN_ISA_F16C 1  // float16 weights widen with vcvtph2ps
#include "kernels_impl.h"
FRNN_TARGET_END
#endif
