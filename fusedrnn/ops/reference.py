"""The ``reference`` backend: one layer's time loop in plain PyTorch.

This is the oracle every fused backend is tested against. It is differentiated
by autograd, so it has no backward of its own, and it follows PyTorch's
conventions exactly (gate order, GRU's ``b_hn`` inside the reset product,
cuDNN-style packed sequences).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


def lstm_cell_reference(
    xg: Tensor,  # [B, 4H] input projection of this step, b_ih included
    h: Tensor,  # [B, Hout]
    c: Tensor,  # [B, H]
    w_hh: Tensor,  # [4H, Hout]
    b_hh: Tensor | None,  # [4H]
    w_hr: Tensor | None,  # [Hout, H]
) -> tuple[Tensor, Tensor]:
    gates = xg + F.linear(h, w_hh, b_hh)
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    if w_hr is not None:
        h = F.linear(h, w_hr)
    return h, c


def gru_cell_reference(
    xg: Tensor,  # [B, 3H] input projection of this step, b_ih included
    h: Tensor,  # [B, H]
    w_hh: Tensor,  # [3H, H]
    b_hh: Tensor | None,  # [3H]
) -> Tensor:
    xr, xz, xn = xg.chunk(3, dim=1)
    hr, hz, hn = F.linear(h, w_hh, b_hh).chunk(3, dim=1)
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h


def rnn_cell_reference(
    xg: Tensor,  # [B, H] input projection of this step, b_ih included
    h: Tensor,  # [B, H]
    w_hh: Tensor,  # [H, H]
    b_hh: Tensor | None,  # [H]
    relu: bool,
) -> Tensor:
    pre = xg + F.linear(h, w_hh, b_hh)
    return torch.relu(pre) if relu else torch.tanh(pre)


def step_slices(
    batch_sizes: Tensor | None,  # [T] int64 on the CPU, non-increasing
    seq_len: int,
    batch: int,
    reverse: bool,
) -> list[tuple[int, int, int]]:
    """(t, first row in the flattened input, active rows) for every step, in
    the order the direction visits them. Dense input is packed input whose
    batch sizes are all ``batch``."""
    if batch_sizes is None:
        sizes = [batch] * seq_len
    else:
        sizes = [int(b) for b in batch_sizes.tolist()]
    offsets = [0] * len(sizes)
    for t in range(1, len(sizes)):
        offsets[t] = offsets[t - 1] + sizes[t - 1]
    order = range(len(sizes) - 1, -1, -1) if reverse else range(len(sizes))
    return [(t, offsets[t], sizes[t]) for t in order]


def layer(
    cell: str,  # "lstm" | "gru" | "rnn_tanh" | "rnn_relu"
    x: Tensor,  # [T, B, I] dense, or [N, I] packed data when batch_sizes is given
    h0: Tensor,  # [B, Hout]
    c0: Tensor | None,  # [B, H], LSTM only
    w_ih: Tensor,  # [G*H, I]
    w_hh: Tensor,  # [G*H, Hout]
    b_ih: Tensor | None,  # [G*H]
    b_hh: Tensor | None,  # [G*H]
    w_hr: Tensor | None,  # [Hout, H], LSTM with proj_size > 0 only
    batch_sizes: Tensor | None,  # [T] int64 on the CPU, non-increasing
    reverse: bool,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Run one layer in one direction over a whole sequence.

    Returns ``y`` ([T, B, Hout], or [N, Hout] for packed input), ``h_n``
    ([B, Hout]) and ``c_n`` ([B, H] for LSTM, else None).

    Packed input is processed as cuDNN does: step ``t`` computes only the first
    ``batch_sizes[t]`` rows. Rows that have ended keep their last state (forward
    direction); rows that have not started yet still hold ``h0`` (reverse).
    """
    if cell not in CELLS:
        raise ValueError(f"unknown cell {cell!r}; expected one of {CELLS}")
    packed = batch_sizes is not None
    batch = h0.shape[0]
    seq_len = batch_sizes.numel() if packed else x.shape[0]
    flat_x = x if packed else x.reshape(-1, x.shape[-1])
    xg = F.linear(flat_x, w_ih, b_ih)  # [N, G*H]: one GEMM for every step

    h, c = h0, c0
    ys: list[Tensor | None] = [None] * seq_len
    for t, start, rows in step_slices(batch_sizes, seq_len, batch, reverse):
        xg_t = xg[start : start + rows]
        h_t = h[:rows]
        if cell == "lstm":
            h_new, c_new = lstm_cell_reference(xg_t, h_t, c[:rows], w_hh, b_hh, w_hr)
            c = c_new if rows == batch else torch.cat([c_new, c[rows:]])
        elif cell == "gru":
            h_new = gru_cell_reference(xg_t, h_t, w_hh, b_hh)
        else:
            h_new = rnn_cell_reference(xg_t, h_t, w_hh, b_hh, cell == "rnn_relu")
        h = h_new if rows == batch else torch.cat([h_new, h[rows:]])
        ys[t] = h_new

    if packed:
        y = torch.cat(ys) if seq_len else x.new_empty(0, h0.shape[1])
    else:
        y = torch.stack(ys) if seq_len else x.new_empty(0, batch, h0.shape[1])
    return y, h, c
