// Loops of the row kernels declared in kernels.h, and the kernel table of one ISA. Included once
// per ISA by kernels_{generic,avx2,avx512}.cpp with FRNN_ISA_NAMESPACE set, after kernels_impl.h
// (with_bools and torch.nn's cells' loops).
//
// As in kernels_impl.h every loop walks contiguous units with __restrict pointers and selects
// only, so that -O3 -fno-trapping-math vectorises it; row sums use `omp simd reduction`
// (-fopenmp), the reassociation that lets them vectorise too (deterministic: the order only
// depends on n and the ISA). Options are template bools, chosen once per call.

#include <type_traits>

#include "../cell_math.h"

namespace fusedrnn::cpu::FRNN_ISA_NAMESPACE {

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

template <typename T, typename... A>
void norm_bias(bool ln, bool acc, A... a) {
  with_bools([&](auto... f) { norm_bias_loop<T, decltype(f)::value...>(a...); }, ln, acc);
}

template <typename T, bool PEEP, bool CIFG>
void lstm_fwd_a_loop(int64_t H, T* __restrict g, const T* __restrict w_ch,
                     const T* __restrict c_prev, T* __restrict ct) {
  // gate slots: i 0, f 1, g 2, o 3; with cifg i 0, g 1, o 2 (no f)
  constexpr int64_t kf = CIFG ? 0 : 1, kg = CIFG ? 1 : 2;
  T* __restrict gi = g;
  T* __restrict gf = g + kf * H;
  T* __restrict gg = g + kg * H;
  const T* __restrict wci = w_ch;
  const T* __restrict wcf = w_ch + H;
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

template <typename T, typename... A>
void lstm_fwd_a(const VariantFlags& fl, A... a) {
  with_bools([&](auto... f) { lstm_fwd_a_loop<T, decltype(f)::value...>(a...); }, fl.peep, fl.cifg);
}

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

template <typename T, typename... A>
void lstm_fwd_b(const VariantFlags& fl, A... a) {
  with_bools([&](auto... f) { lstm_fwd_b_loop<T, decltype(f)::value...>(a...); }, fl.ln, fl.peep,
             fl.zone_c);
}

template <typename T>
void gru_fwd(int64_t H, T* __restrict g, const T* __restrict sn, const T* __restrict h_prev,
             T* __restrict h_out) {
  T* __restrict gr = g;
  T* __restrict gz = g + H;
  T* __restrict gn = g + 2 * H;
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

template <typename T>
void zone_fwd(int64_t n, const T* __restrict keep, const T* __restrict h_prev, T* __restrict h) {
  for (int64_t j = 0; j < n; ++j) h[j] = Zoneout::forward<T>(h[j], h_prev[j], keep[j]);
}

template <typename T>
void zone_bwd(bool zone, int64_t n, const T* __restrict keep, const T* __restrict dy,
              T* __restrict dstate, T* __restrict dnew) {
  if (zone) {
    for (int64_t j = 0; j < n; ++j) {
      T a, b;
      Zoneout::backward<T>(dy[j] + dstate[j], keep[j], a, b);
      dnew[j] = a;
      dstate[j] = b;
    }
  } else {
    for (int64_t j = 0; j < n; ++j) {
      dnew[j] = dy[j] + dstate[j];
      dstate[j] = T(0);
    }
  }
}

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

template <typename T, typename... A>
void lstm_bwd_a(const VariantFlags& fl, A... a) {
  with_bools([&](auto... f) { lstm_bwd_a_loop<T, decltype(f)::value...>(a...); }, fl.ln);
}

template <typename T, bool LN, bool PEEP, bool CIFG, bool ZC>
void lstm_bwd_b_loop(int64_t H, T* __restrict dc, const T* __restrict keep_c,
                     const T* __restrict dcn, const T* __restrict ct, T mean, T rstd,
                     const T* __restrict ln_w, T m1, T m2, const T* __restrict act,
                     const T* __restrict c_prev, const T* __restrict w_ch, T* __restrict dp) {
  constexpr int64_t kf = CIFG ? 0 : 1, kg = CIFG ? 1 : 2, ko = CIFG ? 2 : 3;
  const T* __restrict ai = act;
  const T* __restrict af = act + kf * H;
  const T* __restrict ag = act + kg * H;
  T* __restrict di = dp;
  T* __restrict df = dp + kf * H;
  T* __restrict dg = dp + kg * H;
  const T* __restrict dpo = dp + ko * H;
  const T* __restrict wci = w_ch;
  const T* __restrict wcf = w_ch + H;
  const T* __restrict wco = w_ch + (CIFG ? 1 : 2) * H;
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

template <typename T, typename... A>
void lstm_bwd_b(const VariantFlags& fl, A... a) {
  with_bools([&](auto... f) { lstm_bwd_b_loop<T, decltype(f)::value...>(a...); }, fl.ln, fl.peep,
             fl.cifg, fl.zone_c);
}

template <typename T>
void gru_bwd(int64_t H, const T* __restrict dh, const T* __restrict act, const T* __restrict sn,
             const T* __restrict h_prev, T* __restrict dstate, T* __restrict da,
             T* __restrict ds) {
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
