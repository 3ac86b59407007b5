// Deterministic column sum for the bias gradients (see ColSumArgs in launchers.h): two passes,
// no atomics, a summation order fixed by the shape alone. The functors, then the launcher.
#include "cuda/kernel.cuh"

namespace fusedrnn {
namespace cuda {

// Pass 1, element idx = p * n_cols + c: partial[p, c] = sum of src[r, c] over row chunk p.
// Consecutive threads take consecutive columns of the same rows (coalesced loads).
template <typename T>
struct ColSumPartialOp {
  ColSumArgs a;

  FRNN_HD void operator()(int64_t idx) const {
    using A = acc_t<T>;
    const int64_t p = idx / a.n_cols, c = idx - p * a.n_cols;
    const int64_t chunk = (a.n_rows + a.parts - 1) / a.parts;
    const int64_t r0 = p * chunk;
    const int64_t r1 = r0 + chunk < a.n_rows ? r0 + chunk : a.n_rows;
    const T* src = in<T>(a.src);
    A s = A(0);
    for (int64_t r = r0; r < r1; ++r) s += to_acc(src[r * a.n_cols + c]);
    out<A>(a.partial)[idx] = s;
  }
};

// Pass 2, element c: out[c] = partial[0, c] + partial[1, c] + ... in this order.
template <typename T>
struct ColSumFinalOp {
  ColSumArgs a;

  FRNN_HD void operator()(int64_t c) const {
    using A = acc_t<T>;
    const A* partial = in<A>(a.partial);
    A s = A(0);
    for (int64_t p = 0; p < a.parts; ++p) s += partial[p * a.n_cols + c];
    out<T>(a.out)[c] = from_acc<T>(s);
  }
};

// 32 rows per partial sum: enough parallelism (parts x n_cols threads) for pass 1 while pass 2
// stays a short loop; at most 128 partials per column.
int64_t colsum_parts(int64_t n_rows) { return clamp_count((n_rows + 31) / 32, 128); }

// Two launches, in order; the second pass reads what the first wrote (same stream).
cudaError_t column_sum(DType dtype, const ColSumArgs& a, cudaStream_t stream) {
  dispatch_plain<ColSumPartialOp>(dtype, a, KernelRun{stream, a.parts * a.n_cols});
  return launch_status(dispatch_plain<ColSumFinalOp>(dtype, a, KernelRun{stream, a.n_cols}));
}

}  // namespace cuda
}  // namespace fusedrnn
