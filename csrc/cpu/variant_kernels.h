// Per-row pointwise kernels of the cell-variant layer ops (layer norm, zoneout, peephole, cifg;
// variant_fwd.cpp / variant_bwd.cpp). One call handles one batch row; pointers arrive offset to
// the row, gate k of a row sits at +k*H in PyTorch's gate order (LSTM i, f, g, o; with cifg
// i, g, o; GRU r, z, n). The per-element math is csrc/cell_math.h (LayerNorm, Zoneout,
// LSTMVariantCell, GRUCell).
//
// Like kernels.h: compiled once per ISA (kernels_{generic,avx2,avx512}.cpp) from
// variant_kernels_impl.h, one copy picked at run time together with the plain kernels. Every
// call maps its option flags once to a loop instantiated for exactly that combination, so no
// loop branches per element.
#pragma once

#include <cstdint>

namespace fusedrnn::cpu {

struct VariantFlags {
  bool ln = false;      // layer norm of the recurrent projection and (LSTM) of c
  bool peep = false;    // peephole weights w_ch
  bool cifg = false;    // f = 1 - i, 3 gate blocks
  bool zone_c = false;  // zoneout of c (keep_c given)
};

template <typename T>
struct VariantKernels {
  // Layer-norm statistics of v[0, n): mean and 1 / sqrt(biased var + eps), two passes.
  void (*ln_stats)(int64_t n, const T* v, T eps, T* mean, T* rstd);
  // Layer norm of one row: v [n] in: raw, out: xhat = (v - mean) rstd; out [n] = xhat w + b.
  void (*ln_apply)(int64_t n, T* v, T* out, const T* w, const T* b, T mean, T rstd);
  // Layer-norm backward of one row: dv = rstd (dout w - mean(dout w) - xhat mean(dout w xhat));
  // dv may be dout (in place).
  void (*ln_bwd)(int64_t n, const T* dout, const T* xhat, const T* w, T rstd, T* dv);

  // Recurrent part of one row: s = LN_hh(hp) + b_rec (ln; hp [n] in: h_prev W_hh^T, out: its
  // xhat; mean, rstd its row statistics) or hp + b_rec; dst [n] += s (acc) or = s.
  // b_rec = b_hh (+ LN_hh bias).
  void (*rec_part)(bool ln, bool acc, int64_t n, T* hp, T mean, T rstd, const T* ln_w,
                   const T* b_rec, T* dst);
  // LSTM step, first half. g [G*H] in: pre-activations without the peephole terms (input
  // and recurrent parts, see rec_part), out: i, (f), g activations (the o slot untouched).
  // w_ch [3H] or [2H] (peep). c_prev [H]; ct [H] out: c~.
  void (*lstm_fwd_a)(const VariantFlags& f, int64_t H, T* g, const T* w_ch, const T* c_prev,
                     T* ct);
  // LSTM step, second half. go [H] in: po, out: o. ct [H] c~; mean, rstd: its statistics
  // (ln); ln_w, ln_b [H] (ln, LN_c); w_co [H] (peep); keep_c [H] (zone_c); h_out [H]: o tanh
  // (LN_c(c~)), before projection and zoneout; c_out [H]: the zoned-out state.
  void (*lstm_fwd_b)(const VariantFlags& f, int64_t H, T* go, const T* ct, T mean, T rstd,
                     const T* ln_w, const T* ln_b, const T* w_co, const T* c_prev,
                     const T* keep_c, T* h_out, T* c_out);
  // GRU step. g [3H] in: input part plus the recurrent r, z parts (rec_part), out: r, z, n.
  // sn [H]: recurrent n part (LN_hh, b_hn applied); h_prev [H]; h_out [H]: the candidate
  // before zoneout.
  void (*gru_fwd)(int64_t H, T* g, const T* sn, const T* h_prev, T* h_out);
  // Zoneout forward, in place: h [n] <- keep h_prev + (1 - keep) h.
  void (*zone_fwd)(int64_t n, const T* keep, const T* h_prev, T* h);
  // Zoneout backward of h: d = dy + dstate; dnew [n] = (1 - keep) d, dstate [n] <- keep d
  // (zone off: dnew = d, dstate <- 0).
  void (*zone_bwd)(bool zone, int64_t n, const T* keep, const T* dy, T* dstate, T* dnew);

  // LSTM backward, first half. dh [H] (after zoneout, projection); o [H] saved; ct [H] c~;
  // mean, rstd, ln_w, ln_b: LN_c (ln). Out: dpo [H], dcn [H] (gradient reaching LN_c's output,
  // or c~ without ln), pcn [H] (ln) = dcn xhat (the LN_c gain's gradient terms), hraw [H] =
  // o tanh(LN_c(c~)) (for dW_hr); m1, m2 (ln): the row means of dcn ln_w and dcn ln_w xhat
  // that LN_c's backward needs.
  void (*lstm_bwd_a)(const VariantFlags& f, int64_t H, const T* dh, const T* o, const T* ct,
                     T mean, T rstd, const T* ln_w, const T* ln_b, T* dpo, T* dcn, T* pcn,
                     T* hraw, T* m1, T* m2);
  // LSTM backward, second half. dc [H] in: gradient reaching c_t, out: gradient w.r.t. c_prev.
  // keep_c (zone_c); dcn, ct, LN_c stats, ln_w, m1, m2 as above; act [G*H] saved activations;
  // c_prev [H]; w_ch (peep). dp [G*H] out: pre-activation gradients (the o slot is in: dpo).
  void (*lstm_bwd_b)(const VariantFlags& f, int64_t H, T* dc, const T* keep_c, const T* dcn,
                     const T* ct, T mean, T rstd, const T* ln_w, T m1, T m2, const T* act,
                     const T* c_prev, const T* w_ch, T* dp);
  // Column sums of a block over rows [0, rows), in one pass over a: p0 [w] += a (p0 not
  // null), p1 [w] += a b1 (b1 not null), p2 [w] += a b2 (b2 not null). Rows of a have stride
  // lda, of b1 and b2 ldb.
  void (*col_accumulate)(int64_t rows, int64_t w, const T* a, int64_t lda, const T* b1,
                         const T* b2, int64_t ldb, T* p0, T* p1, T* p2);
  // GRU backward. dh [H] (after zoneout); act [3H] r, z, n; sn [H]; h_prev [H]. dstate [H]
  // += z dh (the direct part); da [3H] out: input-side, ds [3H] out: recurrent-side gradients.
  void (*gru_bwd)(int64_t H, const T* dh, const T* act, const T* sn, const T* h_prev, T* dstate,
                  T* da, T* ds);
};

namespace generic {
VariantKernels<float> make_variant_kernels_f32();
VariantKernels<double> make_variant_kernels_f64();
}  // namespace generic
namespace avx2 {
VariantKernels<float> make_variant_kernels_f32();
VariantKernels<double> make_variant_kernels_f64();
}  // namespace avx2
namespace avx512 {
VariantKernels<float> make_variant_kernels_f32();
VariantKernels<double> make_variant_kernels_f64();
}  // namespace avx512

// The table for this CPU (the same ISA choice as kernels()).
const VariantKernels<float>& variant_kernels(float);
const VariantKernels<double>& variant_kernels(double);

}  // namespace fusedrnn::cpu
