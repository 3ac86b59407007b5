// Host-side entry points of the CUDA kernels: one launcher per cell and direction, raw pointers
// only.
//
// Included by the torch binding (bindings.cpp), by the kernels (*.cu) and by the host test
// harness. No torch, no device code: plain C++17 plus the CUDA runtime's types.
//
// Shapes: B = batch, H = hidden size, Hout = output size (proj_size if > 0 else H), rows = active
// rows of this step (rows <= B; rows beyond it are never touched), G = gate blocks (LSTM 4, LSTM
// with cifg 3, GRU 3), GH = G * H, P = peephole rows (3, or 2 with cifg), T = storage type of
// `dtype`, acc = float for T in {float, half, bfloat16}, double for double. All buffers are
// contiguous and row-major. "State" buffers hold all B rows; per-step buffers start at the
// step's first row. The recurrent state (h, c), the recurrent product h W_hh^T and everything the
// backward carries from step to step (dh_state, dc_state, the gate gradients that feed dh_{t-1})
// are acc (why: layer_driver.h); outputs (y, saved h_{t-1}, hraw) are T.
//
// The LSTM and GRU launchers run torch.nn's cell (every CellOptions option off) as an
// elementwise kernel, one thread per (row, unit), and any other configuration as a row kernel:
// one thread block owns one batch row, because layer norm needs the mean and variance of whole
// rows (G*H recurrent features, H cell features); at small batch that would leave most of a GPU
// idle. The row kernels' block reductions run in a fixed order (a strided per-thread sum, then a
// shared-memory tree): results are the same bits run to run. Both kernels save act and h_prev in
// one layout (the row kernels also layer norm's hhat and stats); the elementwise ones only when
// h_prev is given (else no backward follows), the row kernels always (scratch rows then: they
// pass values between their phases through act).
//
// Every launcher only launches: the caller allocates. It returns cudaErrorInvalidValue for an
// unknown dtype, else cudaPeekAtLastError() (the launch status, not cleared, so that the caller's
// own launch check sees it too). Sizes of zero launch nothing.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "options.h"

namespace fusedrnn {
namespace cuda {

enum class DType : int32_t { f32 = 0, f64 = 1, f16 = 2, bf16 = 3 };

// Zoneout: `on` false means none; on, keep = mask[row, j] when `mask` is given (training, 1
// keeps the old value), else keep = p (evaluation). Masks are stored in T, rows of this step.
struct ZoneArgs {
  const void* mask;  // [rows, K] T or null
  double p;
  bool on;
};

// The cell options of a step (the math of fusedrnn/ops/reference.py): the layer op's bool options
// (options.h) and the given tensors; null / off everywhere is torch.nn's cell. The GRU has no
// ln_c, peephole, cifg or zoneout of c. The layer-norm biases are the forward's alone
// (StepFwdArgs, LstmFwdArgs).
struct CellOptions : BoolOptions {
  const void* ln_hh_w;  // [GH] T (ln)
  const void* ln_c_w;   // [H] T (ln, LSTM)
  const void* w_ch;     // [P, H] T (peephole): rows w_ci, w_cf, w_co (cifg: w_ci, w_co)
  ZoneArgs zone_h;      // mask [rows, Hout]; in the LSTM's kernels only without projection
  ZoneArgs zone_c;      // mask [rows, H]
  double eps;           // layer norm's

  // an option on: the launchers run the row kernel
  bool any() const { return ln_hh_w || w_ch || BoolOptions::any() || zone_h.on || zone_c.on; }
};

// The fields of every cell's forward step (K = Hout for the LSTM, H otherwise).
struct StepFwdArgs {
  const void* xg;       // [rows, GH] T   x W_ih^T + b_ih (ln: LN_ih(x W_ih^T) + LN_ih bias + b_ih)
  const void* hg;       // [rows, GH] acc h_{t-1} W_hh^T (no bias)
  const void* b_hh;     // [GH] T or null
  const void* ln_hh_b;  // [GH] T or null (ln)
  void* h_state;        // [B, K] acc     h_{t-1} in; h_t out (LSTM with proj: zone_forward)
  void* y;              // [rows, K] T    h_t (LSTM: without proj)
  void* h_prev;         // [rows, K] T    copy of h_{t-1}, or null (see above)
  int64_t rows;
  int64_t hidden;  // H
};

// The fields of every cell's backward step. Afterwards the caller writes dHP W_hh (dHP = dP
// without layer norm) into dh_state[:rows], added to the direct part of dh_{t-1} where a kernel
// leaves one there (see each cell).
struct StepBwdArgs {
  const void* dy;  // [rows, K] T   (LSTM: without proj)
  void* dh_state;  // [B, K] acc    gradient reaching h_t from step t+1 (LSTM: without proj)
  void* dhp;       // [rows, GH] acc dHP = LN_hh backward of the recurrent side's dP / dS (ln)
  int64_t rows;
  int64_t hidden;  // H
};

// The rows that the LSTM's and GRU's forward steps save for their backward, all acc: act (see
// each cell), hhat [rows, GH] (LN_hh's normalised input; ln) and stats [rows, 4] (mean_hh,
// rstd_hh, mean_c, rstd_c; the GRU's c pair is 0, 1; ln). P: void* forward, const void* backward.
template <class P>
struct SavedRows {
  P act, hhat, stats;
};

// LSTM forward step (gates i, f, g, o; cifg: i, g, o). act [rows, GH + 3H]: the gates after
// their activations | c_{t-1} | tanh(cn_t) | c~_t, one block, so that the elementwise kernels
// address them through one pointer (a second buffer costs them registers).
struct LstmFwdArgs : CellOptions, StepFwdArgs, SavedRows<void*> {
  const void* ln_c_b;  // [H] T or null (ln)
  void* c_state;       // [B, H] acc     c_{t-1} in, c_t (after zoneout) out
  void* hraw;          // [rows, H] T    o * tanh(cn), before W_hr (proj)
  bool proj;
  int64_t hidden_out;  // Hout
};

// LSTM backward step. Without proj the kernel reads dh_t = dy_t + dh_state and applies zoneout's
// backward; the row kernel leaves the direct part keep * dh_t in dh_state (0 without zoneout),
// the elementwise one leaves dh_state as it was. With proj the caller did that (zone_backward)
// and passes dh_raw = dh~ W_hr.
struct LstmBwdArgs : CellOptions, StepBwdArgs, SavedRows<const void*> {
  const void* dh_raw;  // [rows, H] acc (proj)
  void* dc_state;      // [B, H] acc   dc_t in, dc_{t-1} out
  void* dgates;        // [rows, GH] acc dP: gradient of the gate pre-activations
  void* dcn;           // [rows, H] acc  gradient reaching LN_c's output (ln)
  void* pcn;           // [rows, H] acc  dcn * chat (ln; the LN_c gain gradient's terms)
  bool proj;
  int64_t hidden_out;
};

// GRU forward step (gates r, z, n; b_hn and LN_hh stay inside r * (.)). act [rows, 4H]: r, z, n,
// hn (the recurrent n part with LN and b_hn).
struct GruFwdArgs : CellOptions, StepFwdArgs, SavedRows<void*> {};

// GRU backward step: leaves the direct part (z (1-keep) + keep) dh_t in dh_state.
struct GruBwdArgs : CellOptions, StepBwdArgs, SavedRows<const void*> {
  const void* h_prev;  // [rows, H] T
  void* dxg;           // [rows, 3H] acc gradient of the input side
  void* dhg;           // [rows, 3H] acc dS: gradient of the recurrent side (after LN_hh)
};

// Elman RNN (tanh or relu) forward step; elementwise only. The backward reads y back: no other
// saving.
struct RnnFwdArgs : StepFwdArgs {
  bool relu;
};

// Elman RNN backward step: leaves dh_state as it was.
struct RnnBwdArgs : StepBwdArgs {
  const void* y;  // [rows, H] T    h_t of this step
  void* dgates;   // [rows, H] acc  gradient of the pre-activation
  bool relu;
};

// The LSTM's projection, elementwise: y_t = hraw W_hr^T comes from the caller's GEMM, and
// zoneout of h (when on) acts on it. Forward (zone_forward) y <- keep h_{t-1} + (1 - keep) hy
// (or hy) and h_state[:rows] <- the same in acc; backward (zone_backward) dh_t = dy_t +
// dh_state, dht <- (1 - keep) dh_t, dh_state <- keep dh_t (0 without zoneout).
struct ZoneStepArgs {
  const void* src;  // [rows, K] forward: hy = hraw W_hr^T, acc; backward: dy, T
  void* dst;        // [rows, K] forward: y, T; backward: dht, acc
  void* state;      // [B, K] acc forward: h_state; backward: dh_state
  ZoneArgs zone;
  int64_t rows;
  int64_t width;  // K
};

// Deterministic column sum (bias gradients): out[c] = sum_r src[r, c]. Pass 1 sums fixed row
// chunks into partial[p, c] (in acc), pass 2 adds the partials in order. The chunking depends
// only on n_rows, so the result is bitwise reproducible run to run, with no atomics.
struct ColSumArgs {
  const void* src;  // [n_rows, n_cols] T
  void* partial;    // [parts, n_cols] acc, workspace
  void* out;        // [n_cols] T
  int64_t n_rows;
  int64_t n_cols;
  int64_t parts;  // colsum_parts(n_rows)
};

int64_t colsum_parts(int64_t n_rows);

cudaError_t lstm_forward_step(DType dtype, const LstmFwdArgs& args, cudaStream_t stream);
cudaError_t lstm_backward_step(DType dtype, const LstmBwdArgs& args, cudaStream_t stream);
cudaError_t gru_forward_step(DType dtype, const GruFwdArgs& args, cudaStream_t stream);
cudaError_t gru_backward_step(DType dtype, const GruBwdArgs& args, cudaStream_t stream);
cudaError_t rnn_forward_step(DType dtype, const RnnFwdArgs& args, cudaStream_t stream);
cudaError_t rnn_backward_step(DType dtype, const RnnBwdArgs& args, cudaStream_t stream);
cudaError_t zone_forward(DType dtype, const ZoneStepArgs& args, cudaStream_t stream);
cudaError_t zone_backward(DType dtype, const ZoneStepArgs& args, cudaStream_t stream);
cudaError_t column_sum(DType dtype, const ColSumArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace fusedrnn
