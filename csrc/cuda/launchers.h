// Host-side entry points of the CUDA kernels: one launcher per kernel family, raw pointers only.
//
// Included by the torch binding (bindings.cpp), by the kernels (*.cu) and by the host test
// harness. No torch, no device code: plain C++17 plus the CUDA runtime's types.
//
// Shapes: B = batch, H = hidden size, Hout = output size (proj_size if > 0 else H), rows = active
// rows of this step (rows <= B; rows beyond it are never touched), T = storage type of `dtype`,
// acc = float for T in {float, half, bfloat16}, double for double. All buffers are contiguous and
// row-major. "State" buffers hold all B rows; per-step buffers start at the step's first row.
// The recurrent state (h, c), the recurrent product h W_hh^T and everything the backward carries
// from step to step (dh, dc, the gate gradients that feed dh_{t-1}) are acc: rounding them to a
// half type every step would compound over the sequence. Outputs (y, saved h_{t-1}) are T.
//
// Every launcher only launches: the caller allocates. It returns cudaErrorInvalidValue for an
// unknown dtype, else cudaPeekAtLastError() (the launch status, not cleared, so that the caller's
// own launch check sees it too). Sizes of zero launch nothing.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace fusedrnn {
namespace cuda {

enum class DType : int32_t { f32 = 0, f64 = 1, f16 = 2, bf16 = 3 };

// LSTM forward step; gates ordered i, f, g, o.
struct LstmFwdArgs {
  const void* xg;     // [rows, 4H] T    x_t W_ih^T + b_ih
  const void* hg;     // [rows, 4H] acc  h_{t-1} W_hh^T (no bias)
  const void* b_hh;   // [4H] T          read when has_bias
  void* h_state;      // [B, Hout] acc   h_{t-1} in; h_t out unless proj (then the caller's GEMM)
  void* c_state;      // [B, H] acc      c_{t-1} in, c_t out
  void* y;            // [rows, Hout] T  h_t; with proj [rows, H] o*tanh(c_t), before W_hr
  void* save;         // [rows, 6H] acc  i f g o c_{t-1} tanh(c_t), written when save
  void* h_prev_save;  // [rows, Hout] T  copy of h_{t-1}, written when save
  int64_t rows;
  int64_t hidden;      // H
  int64_t hidden_out;  // Hout (== H unless proj)
};

// LSTM backward step. Without proj, dh = dy_t + dh_state (add_state; dh is then dy_t, T); with
// proj the caller passes dh = (dy_t + dh_state) W_hr, already summed (acc), and add_state = false.
struct LstmBwdArgs {
  const void* dh;        // [rows, H] T with add_state, else acc
  const void* dh_state;  // [B, H] acc    gradient reaching h_t from step t+1, read when add_state
  void* dc_state;        // [B, H] acc    dc_t in, dc_{t-1} out
  const void* save;      // [rows, 6H] acc (see LstmFwdArgs)
  void* dgates;          // [rows, 4H] acc gradient of the gate pre-activations
  int64_t rows;
  int64_t hidden;
};

// GRU forward step; gates ordered r, z, n; b_hn stays inside the reset product.
struct GruFwdArgs {
  const void* xg;     // [rows, 3H] T    x_t W_ih^T + b_ih
  const void* hg;     // [rows, 3H] acc  h_{t-1} W_hh^T (no bias)
  const void* b_hh;   // [3H] T          read when has_bias
  void* h_state;      // [B, H] acc      h_{t-1} in, h_t out
  void* y;            // [rows, H] T     h_t
  void* save;         // [rows, 4H] acc  r z n hn (hn = h_{t-1} W_hn^T + b_hn), when save
  void* h_prev_save;  // [rows, H] T     copy of h_{t-1}, when save
  int64_t rows;
  int64_t hidden;
};

// GRU backward step. Afterwards the caller adds dhg W_hh into dh_state[:rows].
struct GruBwdArgs {
  const void* dy;      // [rows, H] T
  void* dh_state;      // [B, H] acc     dh from step t+1 in; direct part dh_t * z out
  const void* save;    // [rows, 4H] acc (see GruFwdArgs)
  const void* h_prev;  // [rows, H] T    saved h_{t-1}
  void* dxg;           // [rows, 3H] acc gradient of x_t W_ih^T + b_ih
  void* dhg;           // [rows, 3H] acc gradient of h_{t-1} W_hh^T + b_hh
  int64_t rows;
  int64_t hidden;
};

// Elman RNN (tanh or relu) forward step.
struct RnnFwdArgs {
  const void* xg;     // [rows, H] T  x_t W_ih^T + b_ih
  const void* hg;     // [rows, H] acc h_{t-1} W_hh^T (no bias)
  const void* b_hh;   // [H] T        read when has_bias
  void* h_state;      // [B, H] acc   h_{t-1} in, h_t out
  void* y;            // [rows, H] T  h_t (the backward reads it back: no other saving)
  void* h_prev_save;  // [rows, H] T  copy of h_{t-1}, when save
  int64_t rows;
  int64_t hidden;
};

// Elman RNN backward step. Afterwards the caller writes dgates W_hh into dh_state[:rows].
struct RnnBwdArgs {
  const void* dy;        // [rows, H] T
  const void* dh_state;  // [B, H] acc   gradient reaching h_t from step t+1
  const void* y;         // [rows, H] T    h_t of this step
  void* dgates;          // [rows, H] acc  gradient of the pre-activation
  int64_t rows;
  int64_t hidden;
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

cudaError_t lstm_forward_step(DType dtype, bool has_bias, bool save, bool proj,
                              const LstmFwdArgs& args, cudaStream_t stream);
cudaError_t lstm_backward_step(DType dtype, bool add_state, const LstmBwdArgs& args,
                               cudaStream_t stream);
cudaError_t gru_forward_step(DType dtype, bool has_bias, bool save, const GruFwdArgs& args,
                             cudaStream_t stream);
cudaError_t gru_backward_step(DType dtype, const GruBwdArgs& args, cudaStream_t stream);
cudaError_t rnn_forward_step(DType dtype, bool relu, bool has_bias, bool save,
                             const RnnFwdArgs& args, cudaStream_t stream);
cudaError_t rnn_backward_step(DType dtype, bool relu, const RnnBwdArgs& args,
                              cudaStream_t stream);
cudaError_t column_sum(DType dtype, const ColSumArgs& args, cudaStream_t stream);

// Cell variants (layer norm, zoneout, peephole, cifg; the math of fusedrnn/ops/reference.py).
// In addition to the shapes above, G = gate blocks (LSTM 4, LSTM with cifg 3, GRU 3),
// GH = G * H, P = peephole rows (3, or 2 with cifg). The per-step kernels are row kernels: one
// thread block owns one batch row, because layer norm needs the mean and variance of whole rows
// (G*H recurrent features, H cell features). Their block reductions run in a fixed order (a
// strided per-thread sum, then a shared-memory tree): results are the same bits run to run.
//
// Zoneout: `zone` off means none; on, keep = mask[row, j] when `mask` is given (training,
// 1 keeps the old value), else keep = p (evaluation). Masks are stored in T, rows of this step.
// As above, the recurrent state, h W_hh^T and the gradients carried from step to step
// (dh_state, dc_state, dP, dS, dHP, dht, dh_raw) are acc.

struct ZoneArgs {
  const void* mask;  // [rows, K] T or null
  double p;
  bool on;
};

// LSTM variant forward step (gates i, f, g, o; cifg: i, g, o).
struct LstmVarFwdArgs {
  const void* xg;       // [rows, GH] T   LN_ih(x W_ih^T) + LN_ih bias + b_ih (input side)
  const void* hg;       // [rows, GH] acc h_{t-1} W_hh^T
  const void* b_hh;     // [GH] T or null
  const void* ln_hh_w;  // [GH] T (ln)
  const void* ln_hh_b;  // [GH] T or null
  const void* ln_c_w;   // [H] T (ln)
  const void* ln_c_b;   // [H] T or null
  const void* w_ch;     // [P, H] T (peephole): rows w_ci, w_cf, w_co (cifg: w_ci, w_co)
  ZoneArgs zone_h;      // mask [rows, Hout]; applied here only without projection
  ZoneArgs zone_c;      // mask [rows, H]
  void* h_state;        // [B, Hout] acc h_{t-1} in; h_t out unless proj
  void* c_state;        // [B, H] acc    c_{t-1} in, c_t (after zoneout) out
  void* y;              // [rows, Hout] T  h_t (without proj)
  void* hraw;           // [rows, H] T   o * tanh(cn), before W_hr (proj)
  void* h_prev;         // [rows, Hout] T  copy of h_{t-1}
  void* act;            // [rows, GH] acc  i, f, g, o (cifg: i, g, o) after the activations
  void* cell;           // [rows, 3H] acc  c_{t-1} | c~_t | tanh(cn_t)
  void* hhat;           // [rows, GH] acc  LN_hh's normalised input (ln)
  void* stats;          // [rows, 4] acc   mean_hh, rstd_hh, mean_c, rstd_c (ln)
  double eps;
  bool proj;
  int64_t rows;
  int64_t hidden;      // H
  int64_t hidden_out;  // Hout
};

// LSTM variant backward step. Without proj the kernel reads dh_t = dy_t + dh_state, applies
// zoneout's backward and leaves the direct part keep * dh_t in dh_state (0 without zoneout);
// the caller then adds dHP W_hh. With proj the caller did that (zone_backward) and passes
// dh_raw = dh~ W_hr.
struct LstmVarBwdArgs {
  const void* dy;       // [rows, Hout] T (without proj)
  void* dh_state;       // [B, Hout] acc (without proj)
  const void* dh_raw;   // [rows, H] acc (proj)
  ZoneArgs zone_h;      // (without proj)
  ZoneArgs zone_c;
  void* dc_state;       // [B, H] acc   dc_t in, dc_{t-1} out
  const void* act;      // [rows, GH] acc  (see LstmVarFwdArgs)
  const void* cell;     // [rows, 3H] acc
  const void* hhat;     // [rows, GH] acc (ln)
  const void* stats;    // [rows, 4] acc (ln)
  const void* ln_hh_w;  // [GH] T (ln)
  const void* ln_c_w;   // [H] T (ln)
  const void* w_ch;     // [P, H] T (peephole)
  void* dgates;         // [rows, GH] acc dP: gradient of the gate pre-activations
  void* dhp;            // [rows, GH] acc dHP = LN_hh backward of dP (ln)
  void* dcn;            // [rows, H] acc  gradient reaching LN_c's output (ln)
  void* pcn;            // [rows, H] acc  dcn * chat (ln; the LN_c gain gradient's terms)
  bool proj;
  int64_t rows;
  int64_t hidden;
  int64_t hidden_out;
};

// GRU variant forward step (gates r, z, n; b_hn and LN_hh stay inside r * (.)).
struct GruVarFwdArgs {
  const void* xg;       // [rows, 3H] T  input side (LN_ih, biases applied)
  const void* hg;       // [rows, 3H] acc h_{t-1} W_hh^T
  const void* b_hh;     // [3H] T or null
  const void* ln_hh_w;  // [3H] T (ln)
  const void* ln_hh_b;  // [3H] T or null
  ZoneArgs zone_h;      // mask [rows, H]
  void* h_state;        // [B, H] acc   h_{t-1} in, h_t out
  void* y;              // [rows, H] T  h_t
  void* h_prev;         // [rows, H] T  copy of h_{t-1}
  void* act;            // [rows, 4H] acc  r, z, n, hn (recurrent n part with LN and b_hn)
  void* hhat;           // [rows, 3H] acc (ln)
  void* stats;          // [rows, 4] acc  mean_hh, rstd_hh (ln)
  double eps;
  int64_t rows;
  int64_t hidden;
};

// GRU variant backward step; afterwards the caller adds dHP W_hh into dh_state[:rows].
struct GruVarBwdArgs {
  const void* dy;       // [rows, H] T
  void* dh_state;       // [B, H] acc dh from t+1 in; direct part (z (1-keep) + keep) dh_t out
  ZoneArgs zone_h;
  const void* act;      // [rows, 4H] acc
  const void* h_prev;   // [rows, H] T
  const void* hhat;     // [rows, 3H] acc (ln)
  const void* stats;    // [rows, 4] acc (ln)
  const void* ln_hh_w;  // [3H] T (ln)
  void* dxg;            // [rows, 3H] acc gradient of the input side
  void* dhg;            // [rows, 3H] acc dS: gradient of the recurrent side (after LN_hh)
  void* dhp;            // [rows, 3H] acc dHP = LN_hh backward of dS (ln)
  int64_t rows;
  int64_t hidden;
};

// With a projection, zoneout of h acts on the projected y_t = hraw W_hr^T (elementwise):
// forward y <- keep h_{t-1} + (1 - keep) y and h_state[:rows] <- y; backward dh_t = dy_t +
// dh_state, dht <- (1 - keep) dh_t, dh_state <- keep dh_t.
struct ZoneFwdArgs {
  void* y;             // [rows, K] T
  void* h_state;       // [B, K] acc
  ZoneArgs zone;
  int64_t rows;
  int64_t width;  // K
};

struct ZoneBwdArgs {
  const void* dy;  // [rows, K] T
  void* dh_state;  // [B, K] acc
  void* dht;       // [rows, K] acc
  ZoneArgs zone;
  int64_t rows;
  int64_t width;
};

cudaError_t lstm_variant_forward(DType dtype, bool ln, bool peep, bool cifg,
                                 const LstmVarFwdArgs& args, cudaStream_t stream);
cudaError_t lstm_variant_backward(DType dtype, bool ln, bool peep, bool cifg,
                                  const LstmVarBwdArgs& args, cudaStream_t stream);
cudaError_t gru_variant_forward(DType dtype, bool ln, const GruVarFwdArgs& args,
                                cudaStream_t stream);
cudaError_t gru_variant_backward(DType dtype, bool ln, const GruVarBwdArgs& args,
                                 cudaStream_t stream);
cudaError_t zone_forward(DType dtype, const ZoneFwdArgs& args, cudaStream_t stream);
cudaError_t zone_backward(DType dtype, const ZoneBwdArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace fusedrnn
