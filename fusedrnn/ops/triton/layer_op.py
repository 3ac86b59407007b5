"""The triton backend's layer op: input GEMM, the cell's step kernels, weight GEMMs.

Forward: ``xg = x W_ih^T + b_ih`` for every step in one GEMM, then the cell's step kernel in one
cooperative launch (or the persistent kernel for small H; the path is
:func:`.persistent.choose_path`'s) over the state histories. Backward: the cell's backward step
kernels produce the gate gradients ``dG [T, B, G*H]`` of every step (zero in rows a packed step
did not compute), then one GEMM each::

    dx = dG_x W_ih      dW_ih = dG_x^T x      db_ih = sum(dG_x)
    dW_hh = dG_h^T h_prev      db_hh = sum(dG_h)      dW_hr = dh^T m

where ``dG_x = dG_h = dG`` except for the GRU (its ``n`` gate's recurrent part is
scaled by ``r``), ``h_prev`` is a view of the state history and the sums are
deterministic reductions (no atomics).

With a variant option on, the forward, its fake and the backward hand over to :mod:`.variants`
(:func:`unpack` serves both). Registered by :func:`fusedrnn.ops.library.define_layer` as
``fusedrnn::triton_layer_fwd`` / ``_bwd``. With ``save=False`` (no backward can follow) the
torch.nn cells' kernels skip the saved gates (``WRITE_GATES``); the state histories are the
outputs and are always written. The variant kernels still write their saved activations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import library
from ..checks import check_layer, gate_count
from . import runtime, variants
from .common import forward_buffers
from .persistent import choose_path
from .step import step_bwd, step_fwd

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def forward(a: library.LayerArgs) -> list[Tensor]:
    """Buffers ``[Hs, Cs, gates, m, y]`` (see the cell launchers; empty when unused), or the
    variant op's (:func:`.variants.forward`)."""
    variant = library.is_variant(a)
    check_layer("triton", variants.DTYPES if variant else DTYPES, *a[: library.N_POSITIONAL - 1],
                **library.options_of(a))  # fmt: skip
    with runtime.device_guard(a.x.device):
        return variants.forward(a) if variant else _forward(*a[: library.N_POSITIONAL], a.save)


def _forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse,
             save) -> list[Tensor]:  # fmt: skip
    plan = runtime.layer_plan(x, h0, batch_sizes, reverse)
    xg = F.linear(runtime.flat_rows(x, plan), w_ih, b_ih)  # [N, G*H]: one GEMM for every step
    w_hh, b_hh, h0, c0, w_hr = runtime.contiguous(w_hh, b_hh, h0, c0, w_hr)
    path = choose_path(cell, w_hh, w_hr, plan)
    return step_fwd(cell, xg, h0, c0, w_hh, b_hh, w_hr, plan, plan.packed, save, path)


def fake_forward(a: library.LayerArgs) -> list[Tensor]:
    cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse = a[: library.N_POSITIONAL]
    T = batch_sizes.shape[0] if batch_sizes is not None else x.shape[0]
    B, Hout = h0.shape
    H = w_hh.shape[0] // gate_count(cell, a.cifg)
    if library.is_variant(a):
        return variants.fake_forward(a, T, B, Hout, H)
    return forward_buffers(cell, x, T, B, Hout, H, w_hr is not None, batch_sizes is not None,
                           a.save)  # fmt: skip


def unpack(a: library.LayerArgs, buffers: list[Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(y, h_n, c_n)`` as views of the state histories. Every cell's buffers begin with
    ``Hs``, the LSTM's with ``Hs, Cs``; the packed ``y`` is the fifth buffer but the ninth of
    the variant op (see :func:`.variants.forward`)."""
    hs = buffers[0]
    T = hs.shape[0] - 1
    last = 0 if a.reverse else T
    y = buffers[8 if library.is_variant(a) else 4]
    if a.batch_sizes is None:
        y = hs[:T] if a.reverse else hs[1:]
    c_n = buffers[1][last].to(a.h0.dtype) if a.cell == "lstm" else None
    return y, hs[last], c_n


def backward(a: library.LayerArgs, buffers, grads, needs) -> list[Tensor | None]:
    """Gradients of the library.GRAD_INPUTS; None where not needed."""
    with runtime.device_guard(a.x.device):
        if library.is_variant(a):
            return variants.backward(a, buffers, grads, needs)
        return _backward(*a[: library.N_POSITIONAL], buffers, grads, needs[:8])


def _backward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse, buffers,
              grads, needs):  # fmt: skip
    hs, cs, gates, m, y = buffers
    dhs, dcs, _, _, dy = runtime.dense_grads(grads)
    plan = runtime.layer_plan(x, h0, batch_sizes, reverse)
    T, B = plan.T, plan.B
    w_hh, w_hr = runtime.contiguous(w_hh, w_hr)
    path = choose_path(cell, w_hh, w_hr, plan)
    dgx, dgh, dh0, dc0, dht = step_bwd(cell, w_hh, w_hr, hs, cs, gates, dhs, dcs, dy, plan, path)
    acc = dh0.dtype
    dxg = runtime.input_grad_rows(dgx, plan)
    dgh_flat = dgh.view(T * B, dgh.shape[-1])
    h_prev = runtime.prev_states(hs, plan).reshape(T * B, -1)
    n_x, n_h0, n_c0, n_wih, n_whh, n_bih, n_bhh, n_whr = needs
    return [
        (dxg @ w_ih).view(x.shape) if n_x else None,
        dh0.to(h0.dtype) if n_h0 else None,
        dc0.to(h0.dtype) if n_c0 and dc0 is not None else None,
        dxg.t() @ runtime.flat_rows(x, plan) if n_wih else None,
        dgh_flat.t() @ h_prev if n_whh else None,
        dxg.sum(0, dtype=acc).to(x.dtype) if n_bih else None,
        dgh_flat.sum(0, dtype=acc).to(x.dtype) if n_bhh else None,
        dht.view(T * B, -1).t() @ m.view(T * B, -1) if n_whr and dht is not None else None,
    ]


# half inputs of a variant call run in float32: the variant kernels take float32 and float64
layer = library.define_layer("triton", forward, fake_forward, backward, unpack,
                             in_float32_when=lambda dtype, variant: variant)  # fmt: skip
