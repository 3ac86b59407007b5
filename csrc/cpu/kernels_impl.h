// Loops of the pointwise kernels and of the small-m GEMM declared in kernels.h, and the kernel
// table of one ISA. Included once per ISA by kernels_{generic,avx2,avx512}.cpp with
// FRNN_ISA_NAMESPACE set; nothing else includes it.
//
// Each loop walks contiguous units j with every pointer __restrict and no branches other than
// selects, so that -O3 -fno-trapping-math vectorises it, including the exp inside the
// activations (cell_math.h keeps float exp free of library calls for exactly this reason); row
// sums use `omp simd reduction` (-fopenmp), the reassociation that lets them vectorise too
// (deterministic: the order only depends on n and the ISA). Options that would otherwise be a
// branch per element are template parameters, chosen once per call (with_bools, cell_math.h).

#include <type_traits>

#include "../cell_math.h"

namespace fusedrnn::cpu::FRNN_ISA_NAMESPACE {

// The table entry `name` over name##_loop, whose bool template parameters the run-time flags
// choose once per call: `params` declares the entry's leading flag parameters, the expressions
// that follow are the flags in the loop's order; the other argument types are those of the
// table member it fills.
#define FRNN_PARAMS(...) __VA_ARGS__
#define FRNN_FLAGGED(name, params, ...)                                                      \
  template <typename T, typename... A>                                                      \
  void name(FRNN_PARAMS params, A... a) {                                                   \
    with_bools([&](auto... f) { name##_loop<T, decltype(f)::value...>(a...); }, __VA_ARGS__); \
  }

template <typename T, bool SAVE>
void lstm_fwd_loop(int64_t n, int64_t H, const T* __restrict bias, T* __restrict g,
                   const T* __restrict c_prev, T* __restrict c_out, T* __restrict h_out) {
  T *__restrict gi = g, *__restrict gf = g + H, *__restrict gg = g + 2 * H,
    *__restrict go = g + 3 * H;
  const T *__restrict bi = bias, *__restrict bf = bias + H, *__restrict bg = bias + 2 * H,
          *__restrict bo = bias + 3 * H;
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

FRNN_FLAGGED(lstm_fwd, (bool save), save)

template <typename T>
void gru_fwd_hg(int64_t n, int64_t H, const T* __restrict bias_x, const T* __restrict bias_hn,
                const T* __restrict g, const T* __restrict hg, const T* __restrict h_prev,
                T* __restrict h_out) {
  const T *__restrict gr = g, *__restrict gz = g + H, *__restrict gn = g + 2 * H;
  const T *__restrict hr = hg, *__restrict hz = hg + H, *__restrict hn = hg + 2 * H;
  const T *__restrict br = bias_x, *__restrict bz = bias_x + H, *__restrict bn = bias_x + 2 * H;
  for (int64_t j = 0; j < n; ++j) {
    T r, z, nn, h;
    GRUCell::forward<T>(gr[j] + br[j], gz[j] + bz[j], gn[j] + bn[j], hr[j], hz[j],
                        hn[j] + bias_hn[j], h_prev[j], r, z, nn, h);
    h_out[j] = h;
  }
}

template <bool RELU>
using ElmanCell = std::conditional_t<RELU, RNNReluCell, RNNTanhCell>;

template <typename T, bool RELU>
void rnn_fwd_loop(int64_t n, const T* __restrict bias, const T* __restrict pre,
                  T* __restrict h_out) {
  for (int64_t j = 0; j < n; ++j)
    h_out[j] = ElmanCell<RELU>::template forward<T>(pre[j] + bias[j]);
}
FRNN_FLAGGED(rnn_fwd, (bool relu), relu)

template <typename T, bool RELU>
void rnn_bwd_loop(int64_t n, const T* __restrict h, const T* __restrict dy,
                  const T* __restrict dh, T* __restrict dg) {
  for (int64_t j = 0; j < n; ++j)
    dg[j] = ElmanCell<RELU>::template backward<T>(dy[j] + dh[j], h[j]);
}
FRNN_FLAGGED(rnn_bwd, (bool relu), relu)

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
// read once from memory serves every row of A from L1. With interleaved (see kernels.h) the
// eight-row blocks are read front to back, the same products in the same order.
template <typename T, typename W>
void gemm_small_m(int64_t m, int64_t n, int64_t k, const T* __restrict A, int64_t lda,
                  const W* __restrict B, int64_t ldb, T beta, T* __restrict C, int64_t ldc,
                  bool interleaved) {
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
    // lanes [q, q + 8) of the block's row u: plain rows, or the [k/8][8][8] block (k % 8 == 0)
    const auto blocks = [&](auto il) {
      for (; j + 8 <= n; j += 8) {
        const W* __restrict w = B + j * ldb;
        for (int64_t b = 0; b < m; ++b) {
          const T* __restrict a = A + b * lda;
          V s[8] = {};
          for (int64_t q = 0; q < kv; q += kLanes) {
            const V av = load(a + q);
#pragma GCC unroll 8
            for (int u = 0; u < 8; ++u)
              s[u] += av * wload(il ? w + (q + u) * 8 : w + u * ldb + q);
          }
          const V sums = sum8(s);
          T r[8];
          std::memcpy(r, &sums, sizeof(V));
          for (int64_t u = 0; u < 8; ++u) finish(r[u], a, w + u * ldb, C + b * ldc + j + u);
        }
      }
    };
    if (interleaved)
      blocks(std::true_type{});
    else
      blocks(std::false_type{});
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
                  int64_t ldb, T beta, T* C, int64_t ldc, bool interleaved) {
  const int64_t blocked = interleaved ? n / 8 * 8 : 0;  // rows in [k/8][8][8] blocks
  auto at = [&](int64_t j, int64_t q) {
    return j < blocked ? B[j / 8 * 8 * ldb + q / 8 * 64 + j % 8 * 8 + q % 8] : B[j * ldb + q];
  };
  for (int64_t b = 0; b < m; ++b)
    for (int64_t j = 0; j < n; ++j) {
      T r = 0;
      for (int64_t q = 0; q < k; ++q) r += A[b * lda + q] * T(widen(at(j, q)));
      C[b * ldc + j] = beta == T(0) ? r : r + beta * C[b * ldc + j];
    }
}
#endif

// The kernels of the time loop's options (layer norm, zoneout, peephole, cifg): one row each.

namespace {

template <typename T>
void ln_stats(int64_t n, const T* __restrict v, T eps, T* mean_out, T* rstd_out) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) s += v[j];
  const T mean = n > 0 ? s / T(n) : T(0);
  T q = 0;  // second pass: no cancellation as in E[v^2] - mean^2
#pragma omp simd reduction(+ : q)
  for (int64_t j = 0; j < n; ++j) q += (v[j] - mean) * (v[j] - mean);
  *mean_out = mean;
  *rstd_out = LayerNorm::rstd<T>(n > 0 ? q / T(n) : T(0), eps);
}

// dout and dv may be the same row (in place): element j is read before dv[j] is written.
template <typename T>
void ln_bwd(int64_t n, const T* dout, const T* __restrict xhat, const T* __restrict w, T rstd,
            T* dv) {
  T s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
  for (int64_t j = 0; j < n; ++j) {
    const T d = LayerNorm::dxhat<T>(dout[j], w[j]);
    s1 += d;
    s2 += d * xhat[j];
  }
  const T m1 = s1 / T(n), m2 = s2 / T(n);
  for (int64_t j = 0; j < n; ++j)
    dv[j] = LayerNorm::backward<T>(LayerNorm::dxhat<T>(dout[j], w[j]), xhat[j], rstd, m1, m2);
}

template <typename T, bool LN, bool ACC>
void norm_bias_loop(int64_t n, T* __restrict v, T mean, T rstd, const T* __restrict w,
                    const T* __restrict b, T* __restrict dst) {
  for (int64_t j = 0; j < n; ++j) {
    T s = v[j] + b[j];
    if constexpr (LN) {
      T xh;
      s = LayerNorm::forward<T>(v[j], mean, rstd, w[j], b[j], xh);
      v[j] = xh;
    }
    dst[j] = ACC ? dst[j] + s : s;
  }
}

FRNN_FLAGGED(norm_bias, (bool ln, bool acc), ln, acc)

template <typename T, bool PEEP, bool CIFG>
void lstm_fwd_a_loop(int64_t H, T* __restrict g, const T* __restrict w_ch,
                     const T* __restrict c_prev, T* __restrict ct) {
  // gate slots: i 0, f 1, g 2, o 3; with cifg i 0, g 1, o 2 (no f)
  constexpr int64_t kf = CIFG ? 0 : 1, kg = CIFG ? 1 : 2;
  T *__restrict gi = g, *__restrict gf = g + kf * H, *__restrict gg = g + kg * H;
  const T *__restrict wci = w_ch, *__restrict wcf = w_ch + H;
  for (int64_t j = 0; j < H; ++j) {
    T i, f, gv, c;
    LSTMVariantCell::forward_state<PEEP, CIFG, T>(gi[j], CIFG ? T(0) : gf[j], gg[j], c_prev[j],
                                                   PEEP ? wci[j] : T(0),
                                                   PEEP && !CIFG ? wcf[j] : T(0), i, f, gv, c);
    gi[j] = i;
    if constexpr (!CIFG) gf[j] = f;
    gg[j] = gv;
    ct[j] = c;
  }
}

FRNN_FLAGGED(lstm_fwd_a, (const VariantFlags& fl), fl.peep, fl.cifg)

template <typename T, bool LN, bool PEEP, bool ZC>
void lstm_fwd_b_loop(int64_t H, T* __restrict go, const T* __restrict ct, T mean, T rstd,
                     const T* __restrict ln_w, const T* __restrict ln_b,
                     const T* __restrict w_co, const T* __restrict c_prev,
                     const T* __restrict keep_c, T* __restrict h_out, T* __restrict c_out) {
  for (int64_t j = 0; j < H; ++j) {
    const T c = ct[j];
    T cn = c;
    if constexpr (LN) {
      T xh;
      cn = LayerNorm::forward<T>(c, mean, rstd, ln_w[j], ln_b[j], xh);
    }
    T o, tc, h;
    LSTMVariantCell::forward_output<PEEP, T>(go[j], c, cn, PEEP ? w_co[j] : T(0), o, tc, h);
    go[j] = o;
    h_out[j] = h;
    if constexpr (ZC)
      c_out[j] = Zoneout::forward<T>(c, c_prev[j], keep_c[j]);
    else
      c_out[j] = c;
  }
}

FRNN_FLAGGED(lstm_fwd_b, (const VariantFlags& fl), fl.ln, fl.peep, fl.zone_c)

template <typename T>
void gru_fwd_loop(int64_t H, T* __restrict g, const T* __restrict sn,
                  const T* __restrict h_prev, T* __restrict h_out) {
  T *__restrict gr = g, *__restrict gz = g + H, *__restrict gn = g + 2 * H;
  for (int64_t j = 0; j < H; ++j) {
    T r, z, n, h;
    // the recurrent r and z parts are already in gr, gz (norm_bias accumulated them)
    GRUCell::forward<T>(gr[j], gz[j], gn[j], T(0), T(0), sn[j], h_prev[j], r, z, n, h);
    gr[j] = r;
    gz[j] = z;
    gn[j] = n;
    h_out[j] = h;
  }
}

// The GRU's loops read no flag yet: one of theirs would make this wrapper FRNN_FLAGGED.
template <typename T, typename... A>
void gru_fwd(const VariantFlags&, A... a) { gru_fwd_loop<T>(a...); }

template <typename T>
void zone_fwd(int64_t n, const T* __restrict keep, const T* __restrict h_prev, T* __restrict h) {
  for (int64_t j = 0; j < n; ++j) h[j] = Zoneout::forward<T>(h[j], h_prev[j], keep[j]);
}

template <typename T, bool ZONE>
void zone_bwd_loop(int64_t n, const T* __restrict keep, const T* __restrict dy,
                   T* __restrict dstate, T* __restrict dnew) {
  for (int64_t j = 0; j < n; ++j) {
    T a = dy[j] + dstate[j], b = T(0);
    if constexpr (ZONE) Zoneout::backward<T>(a, keep[j], a, b);
    dnew[j] = a;
    dstate[j] = b;
  }
}

FRNN_FLAGGED(zone_bwd, (bool zone), zone)

template <typename T, bool LN>
void lstm_bwd_a_loop(int64_t H, const T* __restrict dh, const T* __restrict o,
                     const T* __restrict ct, T mean, T rstd, const T* __restrict ln_w,
                     const T* __restrict ln_b, T* __restrict dpo, T* __restrict dcn,
                     T* __restrict pcn, T* __restrict hraw, T* m1, T* m2) {
  T s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
  for (int64_t j = 0; j < H; ++j) {
    T xh = ct[j], cn = ct[j];
    if constexpr (LN) cn = LayerNorm::forward<T>(ct[j], mean, rstd, ln_w[j], ln_b[j], xh);
    const T tc = tanh_(cn);
    T a, b;
    LSTMVariantCell::backward_output<T>(dh[j], o[j], tc, a, b);
    dpo[j] = a;
    dcn[j] = b;
    hraw[j] = o[j] * tc;
    if constexpr (LN) {
      pcn[j] = b * xh;
      const T d = LayerNorm::dxhat<T>(b, ln_w[j]);
      s1 += d;
      s2 += d * xh;
    }
  }
  *m1 = H > 0 ? s1 / T(H) : T(0);
  *m2 = H > 0 ? s2 / T(H) : T(0);
}

FRNN_FLAGGED(lstm_bwd_a, (const VariantFlags& fl), fl.ln)

template <typename T, bool LN, bool PEEP, bool CIFG, bool ZC>
void lstm_bwd_b_loop(int64_t H, T* __restrict dc, const T* __restrict keep_c,
                     const T* __restrict dcn, const T* __restrict ct, T mean, T rstd,
                     const T* __restrict ln_w, T m1, T m2, const T* __restrict act,
                     const T* __restrict c_prev, const T* __restrict w_ch, T* __restrict dp) {
  constexpr int64_t kf = CIFG ? 0 : 1, kg = CIFG ? 1 : 2, ko = CIFG ? 2 : 3;
  const T *__restrict ai = act, *__restrict af = act + kf * H, *__restrict ag = act + kg * H;
  T *__restrict di = dp, *__restrict df = dp + kf * H, *__restrict dg = dp + kg * H;
  const T* __restrict dpo = dp + ko * H;
  const T *__restrict wci = w_ch, *__restrict wcf = w_ch + H,
          *__restrict wco = w_ch + (CIFG ? 1 : 2) * H;
  for (int64_t j = 0; j < H; ++j) {
    T dnew = dc[j], dold = T(0);
    if constexpr (ZC) Zoneout::backward<T>(dc[j], keep_c[j], dnew, dold);
    T dln = dcn[j];
    if constexpr (LN)
      dln = LayerNorm::backward<T>(LayerNorm::dxhat<T>(dcn[j], ln_w[j]),
                                   LayerNorm::normalize<T>(ct[j], mean, rstd), rstd, m1, m2);
    const T i = ai[j];
    const T f = CIFG ? T(1) - i : af[j];
    T gi, gf, gg, dcp;
    LSTMVariantCell::backward_state<PEEP, CIFG, T>(
        dnew + dln, dpo[j], i, f, ag[j], c_prev[j], PEEP ? wci[j] : T(0),
        PEEP && !CIFG ? wcf[j] : T(0), PEEP ? wco[j] : T(0), gi, gf, gg, dcp);
    di[j] = gi;
    if constexpr (!CIFG) df[j] = gf;
    dg[j] = gg;
    dc[j] = dcp + dold;
  }
}

FRNN_FLAGGED(lstm_bwd_b, (const VariantFlags& fl), fl.ln, fl.peep, fl.cifg, fl.zone_c)

template <typename T>
void gru_bwd_loop(int64_t H, const T* __restrict dh, const T* __restrict act,
                  const T* __restrict sn, const T* __restrict h_prev, T* __restrict dstate,
                  T* __restrict da, T* __restrict ds) {
  for (int64_t j = 0; j < H; ++j) {
    T xr, xz, xn, hr, hz, hn, direct;
    GRUCell::backward<T>(dh[j], act[j], act[H + j], act[2 * H + j], sn[j], h_prev[j], xr, xz, xn,
                         hr, hz, hn, direct);
    da[j] = xr;
    da[H + j] = xz;
    da[2 * H + j] = xn;
    ds[j] = hr;
    ds[H + j] = hz;
    ds[2 * H + j] = hn;
    dstate[j] += direct;
  }
}

template <typename T, typename... A>
void gru_bwd(const VariantFlags&, A... a) { gru_bwd_loop<T>(a...); }  // as gru_fwd

template <typename T, bool S0, bool S1, bool S2>
void col_accumulate_loop(int64_t rows, int64_t w, const T* a, int64_t lda, const T* b1,
                         const T* b2, int64_t ldb, T* __restrict p0, T* __restrict p1,
                         T* __restrict p2) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* __restrict ar = a + r * lda;
    const T* __restrict br1 = S1 ? b1 + r * ldb : nullptr;
    const T* __restrict br2 = S2 ? b2 + r * ldb : nullptr;
    for (int64_t j = 0; j < w; ++j) {
      if constexpr (S0) p0[j] += ar[j];
      if constexpr (S1) p1[j] += ar[j] * br1[j];
      if constexpr (S2) p2[j] += ar[j] * br2[j];
    }
  }
}

template <typename T>
void col_accumulate(int64_t rows, int64_t w, const T* a, int64_t lda, const T* b1, const T* b2,
                    int64_t ldb, T* p0, T* p1, T* p2) {
  with_bools([&](auto s0, auto s1, auto s2) {
    col_accumulate_loop<T, s0, s1, s2>(rows, w, a, lda, b1, b2, ldb, p0, p1, p2);
  }, p0 != nullptr, b1 != nullptr, b2 != nullptr);
}

}  // namespace

// In the order of PointwiseKernels' members; no two of them have the same type, so an entry
// out of place does not compile (a wrapper over flagged loops takes its argument types from the
// member it fills, and the loop's parameters then do not match).
template <typename T>
PointwiseKernels<T> make_kernels() {
  return {&lstm_fwd<T>, &gru_fwd_hg<T>, &rnn_fwd<T>, &rnn_bwd<T>, &gemm_small_m<T, T>,
          &gemm_small_m<T, uint16_t>, &ln_stats<T>, &ln_bwd<T>, &norm_bias<T>,
          &lstm_fwd_a<T>, &lstm_fwd_b<T>, &gru_fwd<T>, &zone_fwd<T>, &zone_bwd<T>,
          &lstm_bwd_a<T>, &lstm_bwd_b<T>, &col_accumulate<T>, &gru_bwd<T>};
}
template PointwiseKernels<float> make_kernels<float>();
template PointwiseKernels<double> make_kernels<double>();

}  // namespace fusedrnn::cpu::FRNN_ISA_NAMESPACE
