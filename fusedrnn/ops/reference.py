"""The ``reference`` backend: one layer's time loop in plain PyTorch.

This is the oracle every fused backend is tested against. It is differentiated by autograd,
so it has no backward of its own, and it follows PyTorch's conventions exactly (gate order,
GRU's ``b_hn`` inside the reset product, cuDNN-style packed sequences). The cell variants are
keyword-only options, all off by default (math in docs/variants.md; zoneout: :func:`_zone`).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor

from ..variants import LN_EPS
from .checks import CELLS, GATES, check_cell_and_options
from .library import LayerArgs

__all__ = ["CELLS", "GATES", "layer", "step_slices"]


def _ln(x: Tensor, w: Tensor | None, b: Tensor | None) -> Tensor:
    # w None means "layer norm off" for this tensor
    if w is None:
        return x
    return F.layer_norm(x, (x.shape[-1],), w, b, LN_EPS)


def _project(
    v: Tensor,  # [rows, K]
    w: Tensor,  # [G*H, K]
    b: Tensor | None,  # [G*H]
    ln_w: Tensor | None,  # [G*H]: layer norm of the product, before the bias
    ln_b: Tensor | None,  # [G*H]
) -> Tensor:
    if ln_w is None:
        return F.linear(v, w, b)
    v = _ln(F.linear(v, w), ln_w, ln_b)
    return v if b is None else v + b


def _zone(
    new: Tensor,  # [rows, K] candidate state
    old: Tensor,  # [rows, K] previous state
    mask: Tensor | None,  # [N, K] 1 = keep old (training), or None
    start: int,  # the step's first row in mask
    p: float,
) -> Tensor:
    """Zoneout: a given mask keeps the old value where it is 1; without one, p > 0 (evaluation)
    blends ``p * old + (1 - p) * new``."""
    if mask is not None:
        mask = mask[start : start + new.shape[0]]
        return mask * old + (1 - mask) * new
    if p > 0:
        return p * old + (1 - p) * new
    return new


def _lstm_candidate(
    gates: Tensor,  # [rows, G*H] pre-activations without the peephole terms
    c: Tensor,  # [rows, H] c_{t-1}
    w_ch: Tensor | None,  # [3, H] rows i, f, o; [2, H] rows i, o with cifg
    cifg: bool,
    ln_c_w: Tensor | None,  # [H]
    ln_c_b: Tensor | None,  # [H]
    w_hr: Tensor | None,  # [Hout, H]
) -> tuple[Tensor, Tensor]:
    """One LSTM step before zoneout: the candidate (h~_t [rows, Hout], c~_t [rows, H])."""
    if cifg:
        i, g, o = gates.chunk(3, dim=1)
        f = None
    else:
        i, f, g, o = gates.chunk(4, dim=1)
    if w_ch is not None:
        i = i + w_ch[0] * c
        if f is not None:
            f = f + w_ch[1] * c
    i = torch.sigmoid(i)
    f = 1 - i if f is None else torch.sigmoid(f)
    c_new = f * c + i * torch.tanh(g)
    if w_ch is not None:
        o = o + w_ch[-1] * c_new
    h_new = torch.sigmoid(o) * torch.tanh(_ln(c_new, ln_c_w, ln_c_b))
    if w_hr is not None:
        h_new = F.linear(h_new, w_hr)
    return h_new, c_new


def _gru_candidate(xg: Tensor, hg: Tensor, h: Tensor) -> Tensor:
    """One GRU step before zoneout: the candidate h~_t [rows, H] from the input and recurrent
    sides xg, hg [rows, 3H] and h_{t-1}; b_hn and LN_hh stay inside r * (.)."""
    xr, xz, xn = xg.chunk(3, dim=1)
    hr, hz, hn = hg.chunk(3, dim=1)
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h


def step_slices(
    batch_sizes: Tensor | None,  # [T] int64 on the CPU, non-increasing
    seq_len: int,
    batch: int,
    reverse: bool,
) -> list[tuple[int, int, int]]:
    """(t, first row in the flattened input, active rows) for every step, in
    the order the direction visits them. Dense input is packed input whose
    batch sizes are all ``batch``."""
    sizes = [batch] * seq_len if batch_sizes is None else [int(b) for b in batch_sizes.tolist()]
    offsets = list(itertools.accumulate(sizes, initial=0))
    order = range(len(sizes) - 1, -1, -1) if reverse else range(len(sizes))
    return [(t, offsets[t], sizes[t]) for t in order]


def layer(
    cell: str,  # "lstm" | "gru" | "rnn_tanh" | "rnn_relu"
    x: Tensor,  # [T, B, I] dense, or [N, I] packed data when batch_sizes is given
    h0: Tensor,  # [B, Hout]
    c0: Tensor | None,  # [B, H], LSTM only
    w_ih: Tensor,  # [G*H, I]   (G = 4 LSTM, 3 LSTM+cifg, 3 GRU, 1 RNN)
    w_hh: Tensor,  # [G*H, Hout]
    b_ih: Tensor | None,  # [G*H]
    b_hh: Tensor | None,  # [G*H]
    w_hr: Tensor | None,  # [Hout, H], LSTM with proj_size > 0 only
    batch_sizes: Tensor | None,  # [T] int64 on the CPU, non-increasing
    reverse: bool,
    *,
    cifg: bool = False,
    ln_ih_w: Tensor | None = None,  # [G*H]  layer norm on iff given
    ln_ih_b: Tensor | None = None,  # [G*H]
    ln_hh_w: Tensor | None = None,  # [G*H]
    ln_hh_b: Tensor | None = None,  # [G*H]
    ln_c_w: Tensor | None = None,  # [H]  LSTM only
    ln_c_b: Tensor | None = None,  # [H]
    w_ch: Tensor | None = None,  # [3, H] or [2, H] with cifg; peephole on iff given
    zoneout_h: float = 0.0,
    zoneout_c: float = 0.0,
    mask_h: Tensor | None = None,  # like y: [T, B, Hout] or [N, Hout]; training zoneout
    mask_c: Tensor | None = None,  # [T, B, H] or [N, H]
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Run one layer in one direction over a whole sequence -> (y, h_n, c_n): the contract of
    fusedrnn/ops/CONTRACT.md, packed semantics included (the cells but the LSTM return c0)."""
    check_cell_and_options(LayerArgs(**locals(), save=False))
    packed = batch_sizes is not None
    batch = h0.shape[0]
    seq_len = batch_sizes.numel() if packed else x.shape[0]
    flat_x = x if packed else x.reshape(-1, x.shape[-1])
    # one GEMM for every step (layer norm is per row, so normalising them all at once is exact)
    xg = _project(flat_x, w_ih, b_ih, ln_ih_w, ln_ih_b)  # [N, G*H]
    flat_mh, flat_mc = (None if m is None else m.reshape(-1, m.shape[-1]) for m in (mask_h, mask_c))

    h, c = h0, c0
    ys: list[Tensor | None] = [None] * seq_len
    for t, start, rows in step_slices(batch_sizes, seq_len, batch, reverse):
        xg_t, h_t = xg[start : start + rows], h[:rows]
        hg = _project(h_t, w_hh, b_hh, ln_hh_w, ln_hh_b)  # [rows, G*H] the recurrent side
        if cell == "lstm":
            c_t = c[:rows]
            h_new, c_new = _lstm_candidate(xg_t + hg, c_t, w_ch, cifg, ln_c_w, ln_c_b, w_hr)
            c_new = _zone(c_new, c_t, flat_mc, start, zoneout_c)
            c = c_new if rows == batch else torch.cat([c_new, c[rows:]])
        elif cell == "gru":
            h_new = _gru_candidate(xg_t, hg, h_t)
        else:
            h_new = torch.relu(xg_t + hg) if cell == "rnn_relu" else torch.tanh(xg_t + hg)
        h_new = _zone(h_new, h_t, flat_mh, start, zoneout_h)
        h = h_new if rows == batch else torch.cat([h_new, h[rows:]])
        ys[t] = h_new

    if not seq_len:  # y [0, Hout] packed, [0, B, Hout] dense
        return x.new_empty(0, *h0.shape[1 if packed else 0 :]), h, c
    return torch.cat(ys) if packed else torch.stack(ys), h, c
