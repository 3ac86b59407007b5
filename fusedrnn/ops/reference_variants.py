"""The ``reference`` layer op for the cell variants: layer norm, zoneout, peephole, CIFG.

The oracle the fused variant ops (cpu, triton, cuda) are tested against. Plain PyTorch, differentiated by
autograd; the contract is that of :func:`fusedrnn.ops.reference.layer` plus keyword-only
arguments for the variants (math in ``docs/variants.md``):

- layer norm (on when ``ln_ih_w`` is given): the input and recurrent projections are each
  normalised over their full G*H features before the biases are added; LSTM also normalises
  c_t inside ``h_t = o * tanh(LN_c(c_t))`` (the carried c_t stays unnormalised).
- peephole (on when ``w_ch`` is given, LSTM): ``i += w_ci*c_{t-1}``, ``f += w_cf*c_{t-1}``,
  ``o += w_co*c_t``; ``w_ch`` rows are (i, f, o), or (i, o) with cifg.
- cifg (LSTM): ``f = 1 - i``; weights have 3 gate blocks in the order i, g, o.
- zoneout: with a mask (training), ``h_t = m*h_{t-1} + (1-m)*h~_t`` (m = 1 keeps the old
  value); without a mask but p > 0 (evaluation), ``h_t = p*h_{t-1} + (1-p)*h~_t``. The same for
  c with ``mask_c`` / ``zoneout_c``. The output y_t is the zoned-out h_t.

Packed input follows the cuDNN semantics of the plain op: step t touches only the first
``batch_sizes[t]`` rows, and masks are laid out like ``y`` ([T, B, Hout] or packed [N, Hout]).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..variants import LN_EPS
from .reference import step_slices

CELLS = ("lstm", "gru")


def _ln(x: Tensor, w: Tensor | None, b: Tensor | None) -> Tensor:
    # w None means "layer norm off" for this tensor
    if w is None:
        return x
    return F.layer_norm(x, (x.shape[-1],), w, b, LN_EPS)


def _add(x: Tensor, b: Tensor | None) -> Tensor:
    return x if b is None else x + b


def _zone(
    new: Tensor,  # [rows, K] candidate state
    old: Tensor,  # [rows, K] previous state
    mask: Tensor | None,  # [rows, K] 1 = keep old (training), or None
    p: float,
) -> Tensor:
    if mask is not None:
        return mask * old + (1 - mask) * new
    if p > 0:
        return p * old + (1 - p) * new
    return new


def lstm_variant_cell_reference(
    xg: Tensor,  # [B, G*H] input projection of this step (LN and b_ih applied)
    h: Tensor,  # [B, Hout]
    c: Tensor,  # [B, H]
    w_hh: Tensor,  # [G*H, Hout]
    b_hh: Tensor | None,  # [G*H]
    w_hr: Tensor | None,  # [Hout, H]
    ln_hh_w: Tensor | None,  # [G*H]
    ln_hh_b: Tensor | None,  # [G*H]
    ln_c_w: Tensor | None,  # [H]
    ln_c_b: Tensor | None,  # [H]
    w_ch: Tensor | None,  # [3, H] rows i, f, o; [2, H] rows i, o with cifg
    cifg: bool,
) -> tuple[Tensor, Tensor]:
    """One step before zoneout: returns the candidate (h~_t [B, Hout], c~_t [B, H])."""
    if ln_hh_w is None:
        gates = xg + F.linear(h, w_hh, b_hh)
    else:
        gates = xg + _add(_ln(F.linear(h, w_hh), ln_hh_w, ln_hh_b), b_hh)
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


def gru_variant_cell_reference(
    xg: Tensor,  # [B, 3H] input projection of this step (LN and b_ih applied)
    h: Tensor,  # [B, H]
    w_hh: Tensor,  # [3H, H]
    b_hh: Tensor | None,  # [3H]
    ln_hh_w: Tensor | None,  # [3H]
    ln_hh_b: Tensor | None,  # [3H]
) -> Tensor:
    """One step before zoneout: the candidate h~_t [B, H]. b_hn stays inside r * (.)."""
    if ln_hh_w is None:
        hg = F.linear(h, w_hh, b_hh)
    else:
        hg = _add(_ln(F.linear(h, w_hh), ln_hh_w, ln_hh_b), b_hh)
    xr, xz, xn = xg.chunk(3, dim=1)
    hr, hz, hn = hg.chunk(3, dim=1)
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h


def check_options(
    cell: str,
    w_ih: Tensor,  # [G*H, I]
    w_hh: Tensor,  # [G*H, Hout]
    cifg: bool,
    ln_ih_w: Tensor | None,
    ln_hh_w: Tensor | None,
    ln_c_w: Tensor | None,
    w_ch: Tensor | None,
    zoneout_c: float,
    mask_c: Tensor | None,
) -> int:
    """The checks every backend's variant op makes first, with the same messages; returns H."""
    if cell not in CELLS:
        raise ValueError(f"cell variants exist for {CELLS}, got {cell!r}")
    is_lstm = cell == "lstm"
    if not is_lstm and (cifg or w_ch is not None or ln_c_w is not None or mask_c is not None):
        raise ValueError("cifg, peephole, layer norm of c and zoneout of c are LSTM-only")
    if not is_lstm and zoneout_c > 0:
        raise ValueError("zoneout_c needs an LSTM; GRU has no cell state")
    ln_given = [ln_ih_w is not None, ln_hh_w is not None] + (
        [ln_c_w is not None] if is_lstm else []
    )
    if any(ln_given) and not all(ln_given):
        raise ValueError("layer norm needs ln_ih_w, ln_hh_w (and ln_c_w for LSTM) together")
    gates = (3 if cifg else 4) if is_lstm else 3
    hidden = w_hh.shape[0] // gates
    if w_hh.shape[0] != gates * hidden or w_ih.shape[0] != gates * hidden:
        raise ValueError(
            f"{cell}{' with cifg' if cifg else ''} expects {gates} gate blocks: w_ih / w_hh "
            f"of {gates}*H rows, got {tuple(w_ih.shape)} and {tuple(w_hh.shape)}"
        )
    if w_ch is not None and tuple(w_ch.shape) != ((2 if cifg else 3), hidden):
        raise ValueError(
            f"peephole weights must be [{2 if cifg else 3}, {hidden}], got {tuple(w_ch.shape)}"
        )
    return hidden


def layer(
    cell: str,  # "lstm" | "gru"
    x: Tensor,  # [T, B, I] dense, or [N, I] packed data when batch_sizes is given
    h0: Tensor,  # [B, Hout]
    c0: Tensor | None,  # [B, H], LSTM only
    w_ih: Tensor,  # [G*H, I]   (G = 4 LSTM, 3 LSTM+cifg, 3 GRU)
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
    """Run one variant layer in one direction; returns (y, h_n, c_n) as the plain op does."""
    check_options(cell, w_ih, w_hh, cifg, ln_ih_w, ln_hh_w, ln_c_w, w_ch, zoneout_c, mask_c)
    is_lstm = cell == "lstm"

    packed = batch_sizes is not None
    batch = h0.shape[0]
    seq_len = batch_sizes.numel() if packed else x.shape[0]
    flat_x = x if packed else x.reshape(-1, x.shape[-1])
    if ln_ih_w is None:
        xg = F.linear(flat_x, w_ih, b_ih)  # [N, G*H]: one GEMM for every step
    else:
        # LN is per row, so normalising every step's projection at once is exact
        xg = _add(_ln(F.linear(flat_x, w_ih), ln_ih_w, ln_ih_b), b_ih)
    flat_mh = None if mask_h is None else (mask_h if packed else mask_h.reshape(-1, h0.shape[1]))
    flat_mc = None
    if mask_c is not None:
        flat_mc = mask_c if packed else mask_c.reshape(-1, mask_c.shape[-1])

    h, c = h0, c0
    ys: list[Tensor | None] = [None] * seq_len
    for t, start, rows in step_slices(batch_sizes, seq_len, batch, reverse):
        xg_t = xg[start : start + rows]
        h_t = h[:rows]
        mh = None if flat_mh is None else flat_mh[start : start + rows]
        if is_lstm:
            c_t = c[:rows]
            h_new, c_new = lstm_variant_cell_reference(
                xg_t, h_t, c_t, w_hh, b_hh, w_hr, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b, w_ch, cifg
            )
            mc = None if flat_mc is None else flat_mc[start : start + rows]
            c_new = _zone(c_new, c_t, mc, zoneout_c)
            c = c_new if rows == batch else torch.cat([c_new, c[rows:]])
        else:
            h_new = gru_variant_cell_reference(xg_t, h_t, w_hh, b_hh, ln_hh_w, ln_hh_b)
        h_new = _zone(h_new, h_t, mh, zoneout_h)
        h = h_new if rows == batch else torch.cat([h_new, h[rows:]])
        ys[t] = h_new

    if packed:
        y = torch.cat(ys) if seq_len else x.new_empty(0, h0.shape[1])
    else:
        y = torch.stack(ys) if seq_len else x.new_empty(0, batch, h0.shape[1])
    return y, h, c
