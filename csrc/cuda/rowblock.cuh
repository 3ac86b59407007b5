// Row kernels: one thread block owns one batch row (layer norm needs whole-row statistics).
//
// A row functor is written against a "block" object with two collective operations:
//   blk.for_each(n, f)  every thread runs f(i) for its strided share i = tid, tid + threads, ..
//   blk.sum<A>(n, f)    sum of f(i) over [0, n), the same value in every thread; a barrier
//                       before and after, so it may read what for_each wrote in other threads
// DeviceBlock implements them on the GPU (shared-memory tree, __syncthreads), the host harness's
// HostBlock on the CPU (harness/host_driver.cpp), with results that differ only by rounding
// (cell_math.h's host exp / tanh are not the device's; compilers contract to FMA differently).
//
// Data pass between the phases of a row only through memory; a for_each that reads another
// thread's output of an earlier for_each must have a sum in between.
#pragma once

#include "cuda/common.cuh"

namespace fusedrnn {
namespace cuda {

// Threads per row block: a power of two (the tree reduction halves it) in [32, 256], about one
// unit of H per thread.
constexpr uint32_t kRowMinThreads = 32;
constexpr uint32_t kRowMaxThreads = 256;

inline uint32_t row_threads(int64_t hidden) {
  uint32_t t = kRowMinThreads;
  while (t < kRowMaxThreads && static_cast<int64_t>(t) < hidden) t <<= 1;
  return t;
}

inline LaunchShape row_launch_shape(int64_t rows, int64_t hidden,
                                    uint32_t max_blocks = kMaxBlocks) {
  return {static_cast<uint32_t>(clamp_count(rows, max_blocks)), row_threads(hidden)};
}

// Every block walks rows block, block + grid, ... (a grid smaller than rows still covers all).
template <class Op, class Blk>
FRNN_HD void row_loop(uint32_t block, uint32_t grid_dim, int64_t rows, const Blk& blk,
                      const Op& op) {
  for (int64_t r = block; r < rows; r += grid_dim) op(blk, r);
}

#if defined(__CUDACC__)
struct DeviceBlock {
  unsigned char* smem;  // blockDim.x accumulators

  template <class F>
  FRNN_HD void for_each(int64_t n, const F& f) const {
#if defined(__CUDA_ARCH__)
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) f(i);
#endif
  }

  template <typename A, class F>
  FRNN_HD A sum(int64_t n, const F& f) const {
#if defined(__CUDA_ARCH__)
    __syncthreads();  // earlier phases' writes visible; sh free from the previous sum
    A s = A(0);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += f(i);
    A* sh = reinterpret_cast<A*>(smem);
    sh[threadIdx.x] = s;
    __syncthreads();
    for (uint32_t w = blockDim.x / 2; w > 0; w >>= 1) {
      if (threadIdx.x < w) sh[threadIdx.x] += sh[threadIdx.x + w];
      __syncthreads();
    }
    return sh[0];
#else
    return A(0);
#endif
  }
};
#endif

// Layer norm and zoneout pieces of both cells' row functors.

// keep value of element j of a zoneout (mask row or p; also the LSTM's projection zoneout)
template <typename T>
FRNN_HD acc_t<T> zone_keep(const ZoneArgs& z, int64_t row_offset, int64_t j) {
  using A = acc_t<T>;
  return z.mask != nullptr ? to_acc(in<T>(z.mask)[row_offset + j]) : static_cast<A>(z.p);
}

// Layer norm statistics of one row of K features: mean and 1/std, from two block sums.
template <typename A, class Blk>
FRNN_HD void ln_row_stats(const Blk& blk, int64_t K, const A* x, double eps, A& mean, A& rstd) {
  mean = blk.template sum<A>(K, [&](int64_t k) { return x[k]; }) / A(K);
  const A var = blk.template sum<A>(K, [&](int64_t k) {
    const A d = x[k] - mean;
    return d * d;
  }) / A(K);
  rstd = LayerNorm::rstd<A>(var, A(eps));
}

// The row's statistics at st[0], st[1], saved by the thread of unit 0.
template <typename A>
FRNN_HD void save_stats(A* st, int64_t j, A mean, A rstd) {
  if (j == 0) {
    st[0] = mean;
    st[1] = rstd;
  }
}

// LayerNorm::forward of feature e with weight w[e] and bias b[e] (no bias when b is null).
template <typename T, typename A>
FRNN_HD A ln_feature(A v, A mean, A rstd, const T* w, const T* b, int64_t e, A& xhat) {
  return LayerNorm::forward<A>(v, mean, rstd, to_acc(w[e]), b != nullptr ? to_acc(b[e]) : A(0),
                               xhat);
}

// The two row means of layer norm's backward over K features, block sums: n1 = mean(dxhat),
// n2 = mean(dxhat xhat(k)), dxhat = LayerNorm::dxhat(dout[k], w[k]).
template <typename T, typename A, class Blk, class Xhat>
FRNN_HD void ln_row_means(const Blk& blk, int64_t K, const A* dout, const T* w, const Xhat& xhat,
                          A& n1, A& n2) {
  auto dxhat = [&](int64_t k) { return LayerNorm::dxhat<A>(dout[k], to_acc(w[k])); };
  n1 = blk.template sum<A>(K, dxhat) / A(K);
  n2 = blk.template sum<A>(K, [&](int64_t k) { return dxhat(k) * xhat(k); }) / A(K);
}

// Layer norm backward over one row of K features (LN_hh of either cell):
// dv[k] = LayerNorm::backward(dout[k] w[k], xhat[k]).
template <typename T, typename A, class Blk>
FRNN_HD void ln_row_backward(const Blk& blk, int64_t K, const A* dout, const T* w,
                             const A* xhat, A rstd, A* dv) {
  A n1, n2;
  ln_row_means(blk, K, dout, w, [&](int64_t k) { return xhat[k]; }, n1, n2);
  blk.for_each(K, [&](int64_t k) {
    dv[k] = LayerNorm::backward<A>(LayerNorm::dxhat<A>(dout[k], to_acc(w[k])), xhat[k], rstd, n1,
                                   n2);
  });
}

}  // namespace cuda
}  // namespace fusedrnn
