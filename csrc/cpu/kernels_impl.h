// Loops of torch.nn's cells' pointwise kernels and of the small-m GEMM (kernels.h). Included
// once per ISA by kernels_{generic,avx2,avx512}.cpp with FRNN_ISA_NAMESPACE set, before
// variant_kernels_impl.h, which fills the table; nothing else includes it.
//
// Each loop walks contiguous units j with every pointer __restrict and no branches other than
// selects, so that -O3 -fno-trapping-math vectorises it, including the exp inside the
// activations (cell_math.h keeps float exp free of library calls for exactly this reason).
// Options that would otherwise be a branch per element are template parameters.

#include <type_traits>

#include "../cell_math.h"

namespace fusedrnn::cpu::FRNN_ISA_NAMESPACE {

namespace {
// Calls f(std::bool_constant<b>...) with one constant per run-time flag, in order, so that
// the flags select an instantiation.
template <typename F>
inline void with_bools(const F& f) {
  f();
}
template <typename F, typename... Bools>
inline void with_bools(const F& f, bool b, Bools... rest) {
  const auto bind = [&](auto v) { with_bools([&](auto... vs) { f(v, vs...); }, rest...); };
  if (b)
    bind(std::true_type{});
  else
    bind(std::false_type{});
}
}  // namespace

template <typename T, bool SAVE>
void lstm_fwd_loop(int64_t n, int64_t H, const T* __restrict bias, T* __restrict g,
                   const T* __restrict c_prev, T* __restrict c_out, T* __restrict h_out) {
  T* __restrict gi = g;
  T* __restrict gf = g + H;
  T* __restrict gg = g + 2 * H;
  T* __restrict go = g + 3 * H;
  const T* __restrict bi = bias;
  const T* __restrict bf = bias + H;
  const T* __restrict bg = bias + 2 * H;
  const T* __restrict bo = bias + 3 * H;
  for (int64_t j = 0; j < n; ++j) {
    T i, f, gv, o, c, tc, h;
    LSTMCell::forward<T>(gi[j] + bi[j], gf[j] + bf[j], gg[j] + bg[j], go[j] + bo[j], c_prev[j],
                         i, f, gv, o, c, tc, h);
    c_out[j] = c;
    h_out[j] = h;
    if constexpr (SAVE) {
      gi[j] = i;
      gf[j] = f;
      gg[j] = gv;
      go[j] = o;
    }
  }
}

template <typename T>
void lstm_fwd(int64_t n, int64_t H, const T* bias, T* g, const T* c_prev, T* c_out, T* h_out,
              bool save_act) {
  with_bools([&](auto save) { lstm_fwd_loop<T, save>(n, H, bias, g, c_prev, c_out, h_out); },
             save_act);
}

template <typename T>
void gru_fwd_hg(int64_t n, int64_t H, const T* __restrict bias_x, const T* __restrict bias_hn,
                const T* __restrict g, const T* __restrict hg, const T* __restrict h_prev,
                T* __restrict h_out) {
  const T* __restrict gr = g;
  const T* __restrict gz = g + H;
  const T* __restrict gn = g + 2 * H;
  const T* __restrict hr = hg;
  const T* __restrict hz = hg + H;
  const T* __restrict hn = hg + 2 * H;
  const T* __restrict br = bias_x;
  const T* __restrict bz = bias_x + H;
  const T* __restrict bn = bias_x + 2 * H;
  for (int64_t j = 0; j < n; ++j) {
    T r, z, nn, h;
    GRUCell::forward<T>(gr[j] + br[j], gz[j] + bz[j], gn[j] + bn[j], hr[j], hz[j],
                        hn[j] + bias_hn[j], h_prev[j], r, z, nn, h);
    h_out[j] = h;
  }
}

template <typename T, typename Cell>
void rnn_fwd_loop(int64_t n, const T* __restrict bias, const T* __restrict pre,
                  T* __restrict h_out) {
  for (int64_t j = 0; j < n; ++j) h_out[j] = Cell::template forward<T>(pre[j] + bias[j]);
}

template <bool RELU>
using ElmanCell = std::conditional_t<RELU, RNNReluCell, RNNTanhCell>;

template <typename T>
void rnn_fwd(int64_t n, const T* bias, const T* pre, T* h_out, bool relu) {
  with_bools([&](auto r) { rnn_fwd_loop<T, ElmanCell<r>>(n, bias, pre, h_out); }, relu);
}

template <typename T, typename Cell>
void rnn_bwd_loop(int64_t n, const T* __restrict h, const T* __restrict dy,
                  const T* __restrict dh, T* __restrict dg) {
  for (int64_t j = 0; j < n; ++j) dg[j] = Cell::template backward<T>(dy[j] + dh[j], h[j]);
}

template <typename T>
void rnn_bwd(int64_t n, const T* h, const T* dy, const T* dh, T* dg, bool relu) {
  with_bools([&](auto r) { rnn_bwd_loop<T, ElmanCell<r>>(n, h, dy, dh, dg); }, relu);
}

// B's values: stored as T, or as IEEE float16 bits widened on load (a sampling loop whose
// weights were rounded to half precision: the same sums as on the widened values).
inline float widen(uint16_t h) { return c10::detail::fp16_ieee_to_fp32_value(h); }
template <typename T>
inline T widen(T w) {
  return w;
}

// Dot products of contiguous rows, eight (float) or four rows of B at a time so that every
// load of A's row is shared, with explicit 32-byte vector accumulators: the compiler may not
// vectorise a scalar float sum itself (that would reassociate it). GCC/Clang vector extensions
// lower to AVX in the AVX2 copy and to pairs of SSE registers in the generic one. MKL's
// sgemv/sgemm take a generic path for one row on some non-Intel CPUs; this loop is several
// times faster there.
#if defined(__GNUC__)
// The generic copy passes 32-byte vectors between inlined lambdas; GCC notes an ABI change
// that does not apply to code that never crosses a call boundary.
#pragma GCC diagnostic ignored "-Wpsabi"
template <typename T>
struct Vec32;
template <>
struct Vec32<float> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct Vec32<double> {
  typedef double type __attribute__((vector_size(32)));
};

// Lane u of the result = the sum of the lanes of v[u], for eight 8-lane vectors: three levels
// of pairwise sums, each combining two vectors' neighbouring lanes.
template <typename V>
inline V sum8(const V* v) {
  auto pairs = [](V a, V b) {
    return __builtin_shufflevector(a, b, 0, 8, 2, 10, 4, 12, 6, 14) +
           __builtin_shufflevector(a, b, 1, 9, 3, 11, 5, 13, 7, 15);
  };
  auto quads = [](V a, V b) {
    return __builtin_shufflevector(a, b, 0, 1, 8, 9, 4, 5, 12, 13) +
           __builtin_shufflevector(a, b, 2, 3, 10, 11, 6, 7, 14, 15);
  };
  const V lo = quads(pairs(v[0], v[1]), pairs(v[2], v[3]));  // [v0..v3 low halves, high halves]
  const V hi = quads(pairs(v[4], v[5]), pairs(v[6], v[7]));
  return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 8, 9, 10, 11) +
         __builtin_shufflevector(lo, hi, 4, 5, 6, 7, 12, 13, 14, 15);
}

template <typename T, typename W>
inline typename Vec32<T>::type load_lanes(const W* p) {
  using V = typename Vec32<T>::type;
  V v;
  if constexpr (std::is_same_v<W, T>) {
    std::memcpy(&v, p, sizeof(V));
#if FRNN_ISA_F16C
  } else if constexpr (std::is_same_v<T, float>) {
    v = reinterpret_cast<V>(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#endif
  } else {
    for (size_t l = 0; l < sizeof(V) / sizeof(T); ++l) v[l] = T(widen(p[l]));
  }
  return v;
}

// Each C[b, j] is the dot product of A's row b with B's row j, summed in an order that depends
// on j's block and k only; the batch loop sits inside each block of B's rows, so that a block
// read once from memory serves every row of A from L1.
template <typename T, typename W>
void gemm_small_m(int64_t m, int64_t n, int64_t k, const T* __restrict A, int64_t lda,
                  const W* __restrict B, int64_t ldb, T beta, T* __restrict C, int64_t ldc) {
  using V = typename Vec32<T>::type;
  constexpr int64_t kLanes = sizeof(V) / sizeof(T);
  const int64_t kv = k / kLanes * kLanes;
  auto load = [](const T* p) { return load_lanes<T, T>(p); };
  auto wload = [](const W* p) { return load_lanes<T, W>(p); };
  auto hsum = [](V v) {
    T r = 0;
    for (int64_t l = 0; l < kLanes; ++l) r += v[l];
    return r;
  };
  // *c = the dot product of rows a and w, r its part up to kv: the tail of k in explicit fused
  // multiply-adds (whether the compiler fuses a * w + r may differ between the stored and the
  // widened weights, and the two must agree bit for bit), then beta * *c (not read if beta == 0)
  auto finish = [&](T r, const T* a, const W* w, T* c) {
    for (int64_t q = kv; q < k; ++q) r = std::fma(a[q], T(widen(w[q])), r);
    *c = beta == T(0) ? r : r + beta * *c;
  };
  int64_t j = 0;
  if constexpr (kLanes == 8) {
    // Eight rows of B at a time, one accumulator each (eight independent FMA chains), and
    // the eight lane sums done together by a shuffle tree (sum8): at k of a few hundred,
    // sequential lane sums per row cost as much as the products themselves.
    for (; j + 8 <= n; j += 8) {
      const W* __restrict w = B + j * ldb;
      for (int64_t b = 0; b < m; ++b) {
        const T* __restrict a = A + b * lda;
        V s[8] = {};
        for (int64_t q = 0; q < kv; q += kLanes) {
          const V av = load(a + q);
#pragma GCC unroll 8
          for (int u = 0; u < 8; ++u) s[u] += av * wload(w + u * ldb + q);
        }
        const V sums = sum8(s);
        T r[8];
        std::memcpy(r, &sums, sizeof(V));
        for (int64_t u = 0; u < 8; ++u) finish(r[u], a, w + u * ldb, C + b * ldc + j + u);
      }
    }
  }
  for (; j + 4 <= n; j += 4) {
    const W* __restrict w = B + j * ldb;
    for (int64_t b = 0; b < m; ++b) {
      const T* __restrict a = A + b * lda;
      // two accumulators per row: eight independent FMA chains hide the FMA latency
      V s[4] = {}, t[4] = {};
      int64_t q = 0;
      for (; q + 2 * kLanes <= kv; q += 2 * kLanes) {
        const V av = load(a + q), bv = load(a + q + kLanes);
#pragma GCC unroll 4
        for (int u = 0; u < 4; ++u) {
          s[u] += av * wload(w + u * ldb + q);
          t[u] += bv * wload(w + u * ldb + q + kLanes);
        }
      }
      for (; q < kv; q += kLanes) {
        const V av = load(a + q);
#pragma GCC unroll 4
        for (int u = 0; u < 4; ++u) s[u] += av * wload(w + u * ldb + q);
      }
      for (int64_t u = 0; u < 4; ++u)
        finish(hsum(s[u] + t[u]), a, w + u * ldb, C + b * ldc + j + u);
    }
  }
  for (; j < n; ++j) {
    const W* __restrict w = B + j * ldb;
    for (int64_t b = 0; b < m; ++b) {
      const T* __restrict a = A + b * lda;
      V s = {};
      for (int64_t q = 0; q < kv; q += kLanes) s += load(a + q) * wload(w + q);
      finish(hsum(s), a, w, C + b * ldc + j);
    }
  }
}

#else
template <typename T, typename W>
void gemm_small_m(int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const W* B,
                  int64_t ldb, T beta, T* C, int64_t ldc) {
  for (int64_t b = 0; b < m; ++b)
    for (int64_t j = 0; j < n; ++j) {
      T r = 0;
      for (int64_t q = 0; q < k; ++q) r += A[b * lda + q] * T(widen(B[j * ldb + q]));
      C[b * ldc + j] = beta == T(0) ? r : r + beta * C[b * ldc + j];
    }
}
#endif

}  // namespace fusedrnn::cpu::FRNN_ISA_NAMESPACE
