"""The triton backend's variant layer op: layer norm, zoneout, peephole, CIFG.

Same contract, validation and results as :func:`fusedrnn.ops.reference.layer` with variant options
(math in ``docs/variants.md``). Forward: the input projection of every step in one
GEMM, ``xg = LN_ih(x W_ih^T) + b_ih`` (layer norm is per row, so normalising all
steps at once is exact), then the variant step kernel's launch (:mod:`.variant_step`:
one cooperative launch, or a launch per phase of each step). Backward: the backward step kernel produces, per step, ``dG``
(gradient of ``xg``), ``dG_s`` (of the recurrent part ``s`` after its layer norm and
biases; ``dG`` itself for the LSTM) and ``dS_raw`` (of ``h_prev W_hh^T``), zero in rows a
packed step did not compute; then the GEMMs and deterministic column sums over all steps of
docs/backward.md, whose ``dP``, ``dS``, ``dHP`` and ``dXP`` are ``dG``, ``dG_s``, ``dS_raw`` and
``du`` (the gradient of the rows ``dxg`` of ``dG`` before LN_ih) here.

These are the variant branch of the one triton op (:mod:`.layer_op`, which checks the arguments,
enters the device guard and runs the GEMMs and bias sums of x, w_ih, b_ih, w_hh, b_hh, w_hr).
Supports float32 and float64; the op computes half-precision inputs in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ...variants import LN_EPS
from .. import library
from ..checks import gate_count, layer_dims
from . import runtime
from .cellmath import option_bits
from .variant_step import variant_buffers, variant_bwd, variant_fwd

DTYPES = (torch.float32, torch.float64)


def _kernel_inputs(a: library.LayerArgs, plan: runtime.Plan) -> tuple:
    """What both directions' kernels read besides the states, in the launchers' order:
    ``w_hh, ln_hh_w, ln_c_w, ln_c_b`` (zeros when only the gain is given), ``w_ch, w_hr``
    contiguous, the zoneout masks as rows, their modes (0 off, 1 training mask, 2 evaluation
    expectation, as the reference's _zone) and ``par``: ``[zoneout_h, zoneout_c, LN_EPS]`` on
    x's device, written by fills with scalar arguments (a tensor literal would be a
    host-to-device copy inside the op); then the bool options' bits (``OPTIONS``)."""
    ln_c_b = a.ln_c_b
    if a.ln_c_w is not None and ln_c_b is None:
        ln_c_b = torch.zeros_like(a.ln_c_w)
    weights = runtime.contiguous(a.w_hh, a.ln_hh_w, a.ln_c_w, ln_c_b, a.w_ch, a.w_hr)
    masks = runtime.contiguous(*(m if m is None else runtime.flat_rows(m, plan)
                                 for m in (a.mask_h, a.mask_c)))  # fmt: skip
    zone = tuple(1 if m is not None else 2 if p > 0 else 0
                 for m, p in ((a.mask_h, a.zoneout_h), (a.mask_c, a.zoneout_c)))  # fmt: skip
    par = a.x.new_full((3,), LN_EPS)
    par[0:1].fill_(a.zoneout_h)
    par[1:2].fill_(a.zoneout_c)
    return *weights, *masks, zone, par, option_bits(library.options_of(a))


def forward(a: library.LayerArgs, plan: runtime.Plan) -> list[Tensor]:
    """Buffers ``[Hs, Cs, gates, ct, shat, chat, rstd, m, y, uhat, rstd_u]`` (the first nine
    :func:`.variant_step.variant_buffers`; ``uhat [N, GH]`` and ``rstd_u [N, 1]`` are the
    input projection's layer norm; empty when unused)."""
    cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = a[: library.N_POSITIONAL - 2]
    flat_x = runtime.flat_rows(x, plan)
    if a.ln_ih_w is None:
        xg = F.linear(flat_x, w_ih, b_ih)  # [N, G*H]: one GEMM for every step
        uhat, rstd_u = x.new_empty(0), x.new_empty(0)
    else:
        u = F.linear(flat_x, w_ih)
        mean = u.mean(-1, keepdim=True)
        rstd_u = torch.rsqrt((u - mean).square().mean(-1, keepdim=True) + LN_EPS)
        uhat = (u - mean) * rstd_u
        xg = uhat * a.ln_ih_w
        for b in (a.ln_ih_b, b_ih):
            xg = xg + b if b is not None else xg
    bias = a.ln_hh_b if b_hh is None else b_hh if a.ln_hh_b is None else b_hh + a.ln_hh_b
    out = variant_fwd(cell, *runtime.contiguous(xg, h0, c0, bias), *_kernel_inputs(a, plan), plan)
    return [*out, uhat, rstd_u]


def fake_forward(a: library.LayerArgs) -> list[Tensor]:
    """:func:`forward`'s buffers."""
    (T, N, B, Hout, H), x, GH, ln = layer_dims(a), a.x, a.w_hh.shape[0], a.ln_ih_w is not None
    out = variant_buffers(x, a.cell, T, B, H, Hout, GH, a.ln_hh_w is not None,
                          a.w_hr is not None, a.batch_sizes is not None)  # fmt: skip
    return [*out, runtime.buffer(x, N, GH, on=ln), runtime.buffer(x, N, 1, on=ln)]


def _ln_bwd(dxhat: Tensor, xhat: Tensor, rstd: Tensor) -> Tensor:
    """Layer-norm input gradient per row (docs/backward.md)."""
    return rstd * (
        dxhat - dxhat.mean(-1, keepdim=True) - xhat * (dxhat * xhat).mean(-1, keepdim=True)
    )


def backward(a: library.LayerArgs, plan: runtime.Plan, buffers, dhs, dcs, dy) -> tuple:
    """The variant op's part of :func:`.layer_op.backward`, from the dense gradients of ``Hs``,
    ``Cs`` and the packed ``y``: ``(out, dxg, du, dG_s, dS_raw, dHt)``, ``out`` the gradients
    of h0, c0 and the variant parameters by name, ``dxg`` the packed rows of ``dG``, ``du``
    their gradient before LN_ih (see the module docstring)."""
    inputs = _kernel_inputs(a, plan)
    w_hh, ln_hh_w, ln_c_w, _, w_ch = inputs[:5]
    _, cs, _, ct, shat, chat, _, _, _, uhat, rstd_u = buffers  # the rest only the kernels read
    dgx, dgs, ds, dht, dl, dh0, dc0 = variant_bwd(a.cell, *inputs, buffers[:9], dhs, dcs, dy,
                                                  plan)  # fmt: skip
    out: dict[str, Tensor | None] = {"h0": dh0, "c0": dc0}
    # the LSTM's own parameters
    if ln_c_w is not None:
        out["ln_c_w"] = (dl * chat).sum((0, 1))
        out["ln_c_b"] = dl.sum((0, 1))
    if w_ch is not None:
        GH = w_hh.shape[0]
        H, c_prev = GH // gate_count(a.cell, a.cifg), runtime.prev_states(cs, plan)
        # w_ci and w_cf (none with CIFG) act on c_prev, w_co on c~
        peep = [(0, c_prev), (H, c_prev)][: 1 if a.cifg else 2] + [(GH - H, ct)]
        out["w_ch"] = torch.stack([(dgx[..., q : q + H] * c).sum((0, 1)) for q, c in peep])
    # the layer norms: LN_ih's gain, then back through it; LN_hh's gain (their biases' gradients
    # are those of b_ih and b_hh, which layer_op sums once for both)
    dxg = du = runtime.input_grad_rows(dgx, plan)
    if a.ln_ih_w is not None:
        out["ln_ih_w"] = (dxg * uhat).sum(0)
        du = _ln_bwd(dxg * a.ln_ih_w, uhat, rstd_u)
    if ln_hh_w is not None:
        out["ln_hh_w"] = (dgs * shat).sum((0, 1))
    return out, dxg, du, dgs, ds, dht
