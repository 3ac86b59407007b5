// AVX2+FMA copy of the pointwise kernels, plain cells and variants (used only when the CPU
// reports AVX2, FMA and F16C and the AVX-512 copy is not taken, see kernels_generic.cpp;
// kernels_avx512.cpp compiles the same loops 16 floats wide). Every header is included before
// the target pragma (kernels.h includes those of the loops) so that only this file's own
// functions, and the cell math inlined into them, get the wider ISA; the cell math lives in its
// own inline namespace (FRNN_ISA_NAMESPACE) for the same reason.
#include "kernels.h"

#if FRNN_TARGET_AVX2
FRNN_AVX2_BEGIN
#define FRNN_ISA_NAMESPACE avx2
#define FRNN_ISA_F16C 1  // float16 weights widen with vcvtph2ps
#include "kernels_impl.h"
#include "variant_kernels_impl.h"
FRNN_TARGET_END
#endif
