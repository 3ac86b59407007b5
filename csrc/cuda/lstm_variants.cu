// LSTM variant per-step kernels: launchers (the row functors live in lstm_variants.cuh).
#include "cuda/lstm_variants.cuh"
#include "cuda/rowkernel.cuh"

namespace fusedrnn {
namespace cuda {

cudaError_t lstm_variant_forward(DType dtype, bool ln, bool peep, bool cifg,
                                 const LstmVarFwdArgs& a, cudaStream_t stream) {
  return launch_status(dispatch(
      dtype,
      [&](auto t, auto l, auto p, auto c) {
        using T = typename decltype(t)::type;
        RowKernelRun{stream}(LstmVarFwdOp<T, l, p, c>{a}, a.rows, a.hidden, sizeof(acc_t<T>));
      },
      ln, peep, cifg));
}

cudaError_t lstm_variant_backward(DType dtype, bool ln, bool peep, bool cifg,
                                  const LstmVarBwdArgs& a, cudaStream_t stream) {
  return launch_status(dispatch(
      dtype,
      [&](auto t, auto l, auto p, auto c) {
        using T = typename decltype(t)::type;
        RowKernelRun{stream}(LstmVarBwdOp<T, l, p, c>{a}, a.rows, a.hidden, sizeof(acc_t<T>));
      },
      ln, peep, cifg));
}

}  // namespace cuda
}  // namespace fusedrnn
