"""The triton backend's variant layer op: layer norm, zoneout, peephole, CIFG.

Same contract, validation and results as :func:`fusedrnn.ops.reference.layer` with variant options
(math in ``docs/variants.md``). Forward: the input projection of every step in one
GEMM, ``xg = LN_ih(x W_ih^T) + b_ih`` (layer norm is per row, so normalising all
steps at once is exact), then one variant step kernel per step
(:mod:`.lstm_variants`, :mod:`.gru_variants`). Backward: the backward step kernels
produce, per step, ``dG`` (gradient of ``xg``), ``dG_s`` (of the recurrent part ``s``
after its layer norm and biases; ``dG`` itself for the LSTM) and ``dS_raw`` (of
``h_prev W_hh^T``), zero in rows a packed step did not compute; then, over all steps::

    dxg = dG (packed rows)      du = LN_bwd(dxg ln_ih_w, uhat, rstd_u)  (or dxg)
    dx = du W_ih                dW_ih = du^T x            db_ih = sum dxg
    d ln_ih_w = sum dxg uhat    d ln_ih_b = sum dxg
    dW_hh = dS_raw^T h_prev     db_hh = d ln_hh_b = sum dG_s     d ln_hh_w = sum dG_s shat
    d ln_c_w = sum dl chat      d ln_c_b = sum dl         dW_hr = dh~^T m
    d w_ci = sum dG_i c_prev    d w_cf = sum dG_f c_prev  d w_co = sum dG_o c~

with ``LN_bwd(dxhat, xhat, rstd) = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat))``
per row; every sum is a deterministic column reduction (no atomics).

These are the variant branch of the one triton op (:mod:`.layer_op`). Supports float32 and
float64; the op computes half-precision inputs in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ...variants import LN_EPS
from .. import library
from ..checks import check_layer, gate_count
from ..library import GRAD_INPUTS
from . import runtime

DTYPES = (torch.float32, torch.float64)


def _plan(x, h0, batch_sizes, reverse) -> runtime.Plan:
    seq_len = batch_sizes.numel() if batch_sizes is not None else x.shape[0]
    return runtime.Plan(batch_sizes, seq_len, h0.shape[0], reverse)


def _flat(t: Tensor | None, packed: bool) -> Tensor | None:
    """[T, B, K] -> [T*B, K] contiguous (packed [N, K] stays)."""
    if t is None:
        return None
    return (t if packed else t.reshape(-1, t.shape[-1])).contiguous()


def _zone_mode(mask: Tensor | None, p: float) -> int:
    """0 off, 1 training mask, 2 evaluation expectation (as the reference's _zone)."""
    return 1 if mask is not None else (2 if p > 0 else 0)


def _contig(*ts: Tensor | None) -> list[Tensor | None]:
    return [t.contiguous() if t is not None else None for t in ts]


def _sum_bias(*ts: Tensor | None) -> Tensor | None:
    present = [t for t in ts if t is not None]
    return None if not present else sum(present[1:], present[0]).contiguous()


def forward(a: library.LayerArgs) -> list[Tensor]:
    """Buffers: LSTM ``[Hs, Cs, gates, ct, shat, chat, rstd, m, y, uhat, rstd_u]``, GRU
    ``[Hs, gates, shat, rstd, y, uhat, rstd_u]`` (see the cell launchers; ``uhat [N, GH]``
    and ``rstd_u [N, 1]`` are the input projection's layer norm; empty when unused)."""
    check_layer("triton", DTYPES, *a[: library.N_POSITIONAL - 1], **library.options_of(a))
    with runtime.device_guard(a.x.device):
        return _forward(a)


def _forward(a: library.LayerArgs) -> list[Tensor]:
    from .gru_variants import _gru_variant_fwd
    from .lstm_variants import _lstm_variant_fwd

    cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse = a[: library.N_POSITIONAL]
    ln_ih_w, ln_hh_w, ln_c_w, ln_c_b, w_ch = a.ln_ih_w, a.ln_hh_w, a.ln_c_w, a.ln_c_b, a.w_ch
    mask_h, mask_c = a.mask_h, a.mask_c
    packed = batch_sizes is not None
    plan = _plan(x, h0, batch_sizes, reverse)
    flat_x = x if packed else x.reshape(-1, x.shape[-1])
    if ln_ih_w is None:
        xg = F.linear(flat_x, w_ih, b_ih)  # [N, G*H]: one GEMM for every step
        uhat, rstd_u = x.new_empty(0), x.new_empty(0)
    else:
        u = F.linear(flat_x, w_ih)
        mean = u.mean(-1, keepdim=True)
        rstd_u = torch.rsqrt((u - mean).square().mean(-1, keepdim=True) + LN_EPS)
        uhat = (u - mean) * rstd_u
        xg = uhat * ln_ih_w
        for b in (a.ln_ih_b, b_ih):
            xg = xg + b if b is not None else xg
    xg = xg.contiguous()
    par = _params(x, a.zoneout_h, a.zoneout_c)
    w_hh, h0, ln_hh_w, ln_c_w, w_ch, w_hr = _contig(w_hh, h0, ln_hh_w, ln_c_w, w_ch, w_hr)
    bias = _sum_bias(b_hh, a.ln_hh_b)
    mh = _flat(mask_h, packed)
    zh = _zone_mode(mask_h, a.zoneout_h)
    if cell == "gru":
        out = _gru_variant_fwd(xg, h0, w_hh, bias, ln_hh_w, mh, par, zh, plan, packed)
    else:
        if ln_c_w is not None and ln_c_b is None:
            ln_c_b = torch.zeros_like(ln_c_w)
        zone = (zh, _zone_mode(mask_c, a.zoneout_c))
        out = _lstm_variant_fwd(
            xg, h0, c0.contiguous(), w_hh, bias, ln_hh_w, ln_c_w, _contig(ln_c_b)[0], w_ch, w_hr,
            mh, _flat(mask_c, packed), par, zone, a.cifg, plan, packed,
        )  # fmt: skip
    return [*out, uhat, rstd_u]


def fake_forward(a: library.LayerArgs) -> list[Tensor]:
    x, h0, batch_sizes = a.x, a.h0, a.batch_sizes
    T = batch_sizes.shape[0] if batch_sizes is not None else x.shape[0]
    N = x.shape[0] if batch_sizes is not None else T * x.shape[1]
    B, Hout = h0.shape
    GH = a.w_hh.shape[0]
    H = GH // gate_count(a.cell, a.cifg)
    ln, packed = a.ln_ih_w is not None, batch_sizes is not None

    def buf(*shape: int, on: bool = True) -> Tensor:
        return x.new_empty(*shape) if on else x.new_empty(0)

    tail = [buf(N, GH, on=ln), buf(N, 1, on=ln)]
    y = buf(x.shape[0], Hout, on=packed)
    if a.cell == "gru":
        return [buf(T + 1, B, H), buf(T, B, 4 * H), buf(T, B, GH, on=ln), buf(T, B, on=ln), y,
                *tail]  # fmt: skip
    return [buf(T + 1, B, Hout), buf(T + 1, B, H), buf(T, B, 4 * H), buf(T, B, H),
            buf(T, B, GH, on=ln), buf(T, B, H, on=ln), buf(T, B, 2, on=ln),
            buf(T, B, H, on=a.w_hr is not None), y, *tail]  # fmt: skip


def unpack(a: library.LayerArgs, buffers: list[Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(y, h_n, c_n)`` as views of the state histories."""
    hs = buffers[0]
    T = hs.shape[0] - 1
    last = 0 if a.reverse else T
    y = buffers[4 if a.cell == "gru" else 8]
    if a.batch_sizes is None:
        y = hs[:T] if a.reverse else hs[1:]
    return y, hs[last], buffers[1][last] if a.cell == "lstm" else None


def _params(x: Tensor, zoneout_h: float, zoneout_c: float) -> Tensor:
    """``[zoneout_h, zoneout_c, LN_EPS]`` on x's device, written by fills with scalar
    arguments: a tensor literal would be a host-to-device copy inside the op."""
    par = x.new_empty(3)
    par[0:1].fill_(zoneout_h)
    par[1:2].fill_(zoneout_c)
    par[2:3].fill_(LN_EPS)
    return par


def _ln_bwd(dxhat: Tensor, xhat: Tensor, rstd: Tensor) -> Tensor:
    """Layer-norm input gradient per row (see the module docstring)."""
    return rstd * (
        dxhat - dxhat.mean(-1, keepdim=True) - xhat * (dxhat * xhat).mean(-1, keepdim=True)
    )


def backward(a: library.LayerArgs, buffers, grads, needs) -> list[Tensor | None]:
    """Gradients of the library.GRAD_INPUTS; None where not needed."""
    with runtime.device_guard(a.x.device):
        return _backward(a, buffers, grads, needs)


def _backward(a: library.LayerArgs, buffers, grads, needs) -> list[Tensor | None]:
    from .gru_variants import _gru_variant_bwd
    from .lstm_variants import _lstm_variant_bwd

    cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse = a[: library.N_POSITIONAL]
    ln_ih_w, ln_hh_w, ln_c_w, ln_c_b = a.ln_ih_w, a.ln_hh_w, a.ln_c_w, a.ln_c_b
    w_ch, mask_h, mask_c, cifg = a.w_ch, a.mask_h, a.mask_c, a.cifg

    # autograd may hand over expanded or strided gradients; the kernels index densely
    grads = [g.contiguous() if g is not None and g.numel() else None for g in grads]
    packed = batch_sizes is not None
    plan = _plan(x, h0, batch_sizes, reverse)
    T, B = plan.T, plan.B
    GH, Hout = w_hh.shape
    par = _params(x, a.zoneout_h, a.zoneout_c)
    w_hh, ln_hh_w, ln_c_w, w_ch, w_hr = _contig(w_hh, ln_hh_w, ln_c_w, w_ch, w_hr)
    mh = _flat(mask_h, packed)
    zh = _zone_mode(mask_h, a.zoneout_h)
    hs, uhat, rstd_u = buffers[0], buffers[-2], buffers[-1]
    out: dict[str, Tensor | None] = {}
    if cell == "gru":
        dhs, _, _, _, dy = grads[:5]
        dgx, dgs, ds, dh0 = _gru_variant_bwd(w_hh, ln_hh_w, mh, par, zh, buffers[:5], dhs, dy, plan)
        shat = buffers[2]
    else:
        H = GH // (3 if cifg else 4)
        dhs, dcs, dy = grads[0], grads[1], grads[8]
        lncb = ln_c_b if ln_c_b is not None or ln_c_w is None else torch.zeros_like(ln_c_w)
        zone = (zh, _zone_mode(mask_c, a.zoneout_c))
        dgx, ds, dht, dl, dh0, dc0 = _lstm_variant_bwd(
            w_hh, w_hr, ln_hh_w, ln_c_w, _contig(lncb)[0], w_ch, mh, _flat(mask_c, packed), par,
            zone, cifg, buffers[:9], dhs, dcs, dy, plan,
        )  # fmt: skip
        dgs = dgx
        cs, ct, shat, chat, m = buffers[1], buffers[3], buffers[4], buffers[5], buffers[7]
        out["c0"] = dc0
        if ln_c_w is not None:
            out["ln_c_w"] = (dl * chat).sum((0, 1))
            out["ln_c_b"] = dl.sum((0, 1))
        if w_ch is not None:
            c_prev = cs[1:] if reverse else cs[:T]
            rows = [(dgx[..., :H] * c_prev).sum((0, 1))]
            if not cifg:
                rows.append((dgx[..., H : 2 * H] * c_prev).sum((0, 1)))
            rows.append((dgx[..., GH - H :] * ct).sum((0, 1)))
            out["w_ch"] = torch.stack(rows)
        if w_hr is not None:
            out["w_hr"] = dht.view(T * B, Hout).t() @ m.view(T * B, -1)
    out["h0"] = dh0

    # input side: dG of the packed rows, through LN_ih, then the input GEMMs
    dgx_flat = dgx.view(T * B, GH)
    dxg = runtime.packed_rows(dgx.view(T, B, GH), plan) if packed else dgx_flat
    flat_x = x if packed else x.reshape(-1, x.shape[-1])
    out["b_ih"] = dxg.sum(0)
    du = dxg
    if ln_ih_w is not None:
        out["ln_ih_w"] = (dxg * uhat).sum(0)
        out["ln_ih_b"] = out["b_ih"].clone()  # op outputs may not alias
        du = _ln_bwd(dxg * ln_ih_w, uhat, rstd_u)
    n = dict(zip(GRAD_INPUTS, needs, strict=True))
    if n["x"]:
        out["x"] = (du @ w_ih).view(x.shape)
    if n["w_ih"]:
        out["w_ih"] = du.t() @ flat_x

    # recurrent side
    out["b_hh"] = dgs.sum((0, 1))
    if ln_hh_w is not None:
        out["ln_hh_w"] = (dgs * shat).sum((0, 1))
        out["ln_hh_b"] = out["b_hh"].clone()
    if n["w_hh"]:
        h_prev = (hs[1:] if reverse else hs[:T]).reshape(T * B, Hout)
        out["w_hh"] = ds.view(T * B, GH).t() @ h_prev
    return [out.get(name) if need else None for name, need in zip(GRAD_INPUTS, needs, strict=True)]
