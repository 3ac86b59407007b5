// Elman RNN (tanh / relu) per-step kernels, elementwise only: the step functors, then their
// launchers. Per-element math: fusedrnn::RNNTanhCell / RNNReluCell (csrc/cell_math.h).
#include "cuda/kernel.cuh"

namespace fusedrnn {
namespace cuda {

template <bool Relu>
using RnnCellOf = typename std::conditional<Relu, RNNReluCell, RNNTanhCell>::type;

template <typename T, bool Relu, bool HasBias, bool Save>
struct RnnFwdOp {
  RnnFwdArgs a;

  FRNN_HD void operator()(int64_t idx) const {
    using A = acc_t<T>;
    const int64_t H = a.hidden;
    const int64_t r = idx / H, j = idx - r * H;
    A pre = to_acc(in<T>(a.xg)[r * H + j]) + in<A>(a.hg)[r * H + j];
    if constexpr (HasBias) pre += to_acc(in<T>(a.b_hh)[j]);
    A* h_state = out<A>(a.h_state) + r * H + j;
    if constexpr (Save) out<T>(a.h_prev)[r * H + j] = from_acc<T>(*h_state);
    const A h = RnnCellOf<Relu>::template forward<A>(pre);
    out<T>(a.y)[r * H + j] = from_acc<T>(h);
    *h_state = h;
  }
};

template <typename T, bool Relu>
struct RnnBwdOp {
  RnnBwdArgs a;

  FRNN_HD void operator()(int64_t idx) const {
    using A = acc_t<T>;
    const int64_t H = a.hidden;
    const int64_t r = idx / H, j = idx - r * H;
    const A dh = to_acc(in<T>(a.dy)[r * H + j]) + in<A>(a.dh_state)[r * H + j];
    const A h = to_acc(in<T>(a.y)[r * H + j]);
    out<A>(a.dgates)[r * H + j] = RnnCellOf<Relu>::template backward<A>(dh, h);
  }
};

cudaError_t rnn_forward_step(DType dtype, const RnnFwdArgs& a, cudaStream_t stream) {
  const KernelRun run{stream, a.rows * a.hidden};
  return launch_status(
      dispatch_op<RnnFwdOp>(dtype, a, run, a.relu, a.b_hh != nullptr, a.h_prev != nullptr));
}

cudaError_t rnn_backward_step(DType dtype, const RnnBwdArgs& a, cudaStream_t stream) {
  const KernelRun run{stream, a.rows * a.hidden};
  return launch_status(dispatch_op<RnnBwdOp>(dtype, a, run, a.relu));
}

}  // namespace cuda
}  // namespace fusedrnn
