// Shared pieces of the CUDA kernels that also compile as plain host C++.
//
// Every kernel of csrc/cuda is `elementwise_kernel<Op>`, a grid-stride loop that calls an
// element functor `Op` (one per op and template configuration) for every index, or
// `row_kernel<Op>`, which calls a row functor for every batch row (rowblock.cuh). The functors,
// the loops, the launch shapes and the dispatch from runtime options to template parameters are
// all host+device code, so csrc/cuda/harness/host_driver.cpp runs exactly this code on the CPU
// by walking the grid the launcher would use. Only the `<<<...>>>` itself is GPU-only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "cell_math.h"
#include "cuda/launchers.h"

namespace fusedrnn {
namespace cuda {

// Arithmetic type for a storage type: half and bfloat16 compute (and keep the cell state) in
// float; float and double compute in themselves.
template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

FRNN_HD float to_acc(float x) { return x; }
FRNN_HD double to_acc(double x) { return x; }
FRNN_HD float to_acc(__half x) { return __half2float(x); }
FRNN_HD float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
FRNN_HD T from_acc(acc_t<T> x) {
  return x;
}
template <>
FRNN_HD __half from_acc<__half>(float x) {
  return __float2half_rn(x);
}
template <>
FRNN_HD __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Typed views of the untyped launcher arguments (see launchers.h for the shapes).
template <typename T>
FRNN_HD const T* in(const void* p) {
  return static_cast<const T*>(p);
}
template <typename T>
FRNN_HD T* out(void* p) {
  return static_cast<T*>(p);
}

// p[0] = v0, p[stride] = v1, ...: one unit's values in consecutive blocks of a row (the gates).
template <typename A, typename... V>
FRNN_HD void store_strided(A* p, int64_t stride, V... v) {
  int64_t k = 0;
  ((p[k++ * stride] = v), ...);
}

// The loop every kernel runs. Element `i` is visited by exactly one (block, thread): thread
// `thread` of block `block` takes i = block * block_dim + thread, then strides by the whole grid.
template <class Op>
FRNN_HD void grid_stride_loop(uint32_t block, uint32_t block_dim, uint32_t grid_dim,
                              uint32_t thread, int64_t n, const Op& op) {
  const int64_t stride = static_cast<int64_t>(grid_dim) * block_dim;
  for (int64_t i = static_cast<int64_t>(block) * block_dim + thread; i < n; i += stride) {
    op(i);
  }
}

struct LaunchShape {
  uint32_t blocks;
  uint32_t threads;
};

constexpr uint32_t kThreads = 256;
// Enough blocks to fill any current GPU many times over; larger problems use the stride loop.
constexpr uint32_t kMaxBlocks = 65535;

// v limited to [1, hi] (block counts, partial counts).
inline int64_t clamp_count(int64_t v, int64_t hi) { return v < 1 ? 1 : (v > hi ? hi : v); }

inline LaunchShape launch_shape(int64_t n, uint32_t max_blocks = kMaxBlocks) {
  const int64_t blocks = clamp_count((n + kThreads - 1) / kThreads, max_blocks);
  return {static_cast<uint32_t>(blocks), kThreads};
}

// Runtime option -> template parameter (with_bools, cell_math.h). `f` receives
// std::true_type / std::false_type, or a Tag<T> for the storage type, and reads the value with
// decltype(...)::value / ::type.
template <typename T>
struct Tag {
  using type = T;
};

template <class F>
bool with_dtype(DType dt, F&& f) {
  switch (dt) {
    case DType::f32: f(Tag<float>{}); return true;
    case DType::f64: f(Tag<double>{}); return true;
    case DType::f16: f(Tag<__half>{}); return true;
    case DType::bf16: f(Tag<__nv_bfloat16>{}); return true;
  }
  return false;
}

// The whole dispatch of a launcher: run(Op<T, flag...>{a}) for the storage type of dt and one
// std::bool_constant per runtime bool, in order; false (nothing run) for an unknown dtype. Only
// for functors with at least one flag (nvcc rejects Op<T, (empty pack)...> for a one-parameter
// Op: those use dispatch_plain).
template <template <class, bool...> class Op, class Args, class Run, class... Bools>
bool dispatch_op(DType dt, const Args& a, const Run& run, Bools... bools) {
  return with_dtype(dt, [&](auto tag) {
    with_bools([&](auto... f) { run(Op<typename decltype(tag)::type, decltype(f)::value...>{a}); },
               bools...);
  });
}

// dispatch_op of a functor template without flags: run(Op<T>{a}).
template <template <class> class Op, class Args, class Run>
bool dispatch_plain(DType dt, const Args& a, const Run& run) {
  return with_dtype(dt, [&](auto tag) { run(Op<typename decltype(tag)::type>{a}); });
}

// The storage type T of a functor Op<T, flag...>.
template <class Op>
struct StorageOf;
template <template <class, bool...> class Op, class T, bool... Flags>
struct StorageOf<Op<T, Flags...>> {
  using type = T;
};

}  // namespace cuda
}  // namespace fusedrnn
