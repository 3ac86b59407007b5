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

}  // namespace cuda
}  // namespace fusedrnn
