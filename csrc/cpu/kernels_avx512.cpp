// AVX-512F copy of the pointwise kernels, plain cells and variants: the loops of
// kernels_avx2.cpp (which says why a copy per ISA) vectorised 16 floats wide, used where the CPU
// reports AVX-512F and is an Intel one (kernels_generic.cpp says why); the pointwise work is
// 11-15 % of an LSTM layer's forward once its products run in 512-bit FMAs (sgemm_simd.cpp).
#include "kernels.h"

#if FRNN_TARGET_AVX2
FRNN_AVX512_BEGIN
#define FRNN_ISA_NAMESPACE avx512
#define FRNN_ISA_F16C 1
#include "kernels_impl.h"
FRNN_TARGET_END
#endif
