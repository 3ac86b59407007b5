// GRU variant per-step kernels: launchers (the row functors live in gru_variants.cuh).
#include "cuda/gru_variants.cuh"
#include "cuda/rowkernel.cuh"

namespace fusedrnn {
namespace cuda {

cudaError_t gru_variant_forward(DType dtype, bool ln, const GruVarFwdArgs& a,
                                cudaStream_t stream) {
  return launch_status(dispatch(
      dtype,
      [&](auto t, auto l) {
        using T = typename decltype(t)::type;
        RowKernelRun{stream}(GruVarFwdOp<T, l>{a}, a.rows, a.hidden, sizeof(acc_t<T>));
      },
      ln));
}

cudaError_t gru_variant_backward(DType dtype, bool ln, const GruVarBwdArgs& a,
                                 cudaStream_t stream) {
  return launch_status(dispatch(
      dtype,
      [&](auto t, auto l) {
        using T = typename decltype(t)::type;
        RowKernelRun{stream}(GruVarBwdOp<T, l>{a}, a.rows, a.hidden, sizeof(acc_t<T>));
      },
      ln));
}

}  // namespace cuda
}  // namespace fusedrnn
