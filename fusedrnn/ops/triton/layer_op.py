"""The triton backend's layer op: input GEMM, the cell's step kernels, weight GEMMs.

Forward: ``xg = x W_ih^T + b_ih`` for every step in one GEMM, then the cell's step kernel in one
cooperative launch (or the persistent kernel for small H; the path is
:func:`.persistent.choose_path`'s) over the state histories. Backward: the cell's backward step
kernels produce the gate gradients ``dG [T, B, G*H]`` of every step (zero in rows a packed step
did not compute), then the GEMMs and sums over all steps of docs/backward.md, one each
(:func:`_backward`; ``dG_h`` is its ``dHG``, ``h_prev`` a view of the state history).

With a variant option on, the forward, its fake and the backward's kernels hand over to
:mod:`.variants` (:func:`unpack` and the backward's GEMMs serve both). With ``save=False``
the torch.nn cells' kernels skip the saved gates (``WRITE_GATES``); the state histories are the
outputs and are always written. The variant kernels still write their saved activations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import library
from ..checks import check_layer, layer_dims
from ..library import GRAD_INPUTS
from . import runtime, variants
from .common import forward_buffers
from .persistent import choose_path
from .step import step_bwd, step_fwd

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def forward(a: library.LayerArgs) -> list[Tensor]:
    """Buffers ``[Hs, Cs, gates, m, y]`` (see the cell launchers; empty when unused), or the
    variant op's (:func:`.variants.forward`)."""
    variant = library.is_variant(a)
    check_layer("triton", variants.DTYPES if variant else DTYPES, a)
    with runtime.device_guard(a.x.device):
        plan = runtime.layer_plan(a.x, a.h0, a.batch_sizes, a.reverse)
        return variants.forward(a, plan) if variant else _forward(a, plan)


def _forward(a: library.LayerArgs, plan: runtime.Plan) -> list[Tensor]:
    cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = a[: library.N_POSITIONAL - 2]
    xg = F.linear(runtime.flat_rows(x, plan), w_ih, b_ih)  # [N, G*H]: one GEMM for every step
    w_hh, b_hh, h0, c0, w_hr = runtime.contiguous(w_hh, b_hh, h0, c0, w_hr)
    path = choose_path(cell, w_hh, w_hr, plan)
    return step_fwd(cell, xg, h0, c0, w_hh, b_hh, w_hr, plan, a.save, path)


def fake_forward(a: library.LayerArgs) -> list[Tensor]:
    if library.is_variant(a):
        return variants.fake_forward(a)
    T, _, B, Hout, H = layer_dims(a)
    return forward_buffers(a.cell, a.x, T, B, Hout, H, a.w_hr is not None,
                           a.batch_sizes is not None, a.save)  # fmt: skip


def _y_buffer(a: library.LayerArgs) -> int:
    """The packed ``y``'s place among the buffers: the fifth, the variant op's ninth."""
    return 8 if library.is_variant(a) else 4


def unpack(a: library.LayerArgs, buffers: list[Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(y, h_n, c_n)`` as views of the state histories. Every cell's buffers begin with
    ``Hs``, the LSTM's with ``Hs, Cs``."""
    hs = buffers[0]
    T = hs.shape[0] - 1
    last = 0 if a.reverse else T
    y = buffers[_y_buffer(a)]
    if a.batch_sizes is None:
        y = hs[:T] if a.reverse else hs[1:]
    c_n = buffers[1][last].to(a.h0.dtype) if a.cell == "lstm" else None
    return y, hs[last], c_n


def backward(a: library.LayerArgs, buffers, grads, needs) -> list[Tensor | None]:
    """Gradients of the library.GRAD_INPUTS; None where not needed: the kernels' part (the
    cell's, :func:`_cell_backward`, or the variant op's, :func:`.variants.backward`), then
    :func:`_backward`'s GEMMs."""
    # contiguous (autograd may hand over expanded or strided ones; the kernels index densely),
    # None for absent ones and for those of the empty placeholder buffers
    grads = runtime.contiguous(*(g if g is not None and g.numel() else None for g in grads))
    dstates = grads[0], grads[1], grads[_y_buffer(a)]  # of Hs, Cs and the packed y
    with runtime.device_guard(a.x.device):
        plan = runtime.layer_plan(a.x, a.h0, a.batch_sizes, a.reverse)
        args = (a, plan, buffers, *dstates)
        part = variants.backward(*args) if library.is_variant(a) else _cell_backward(*args)
        return _backward(a, plan, buffers, needs, *part)


def _cell_backward(a: library.LayerArgs, plan: runtime.Plan, buffers, dhs, dcs, dy) -> tuple:
    """The torch.nn cells' part of :func:`backward`, as :func:`.variants.backward`'s."""
    w_hh, w_hr = runtime.contiguous(a.w_hh, a.w_hr)
    path = choose_path(a.cell, w_hh, w_hr, plan)
    dgx, dgh, dh0, dc0, dht = step_bwd(a.cell, w_hh, w_hr, *buffers[:3], dhs, dcs, dy, plan, path)
    out = {"h0": dh0.to(a.h0.dtype), "c0": dc0 if dc0 is None else dc0.to(a.h0.dtype)}
    dxg = runtime.input_grad_rows(dgx, plan)
    return out, dxg, dxg, dgh, dgh, dht


def _backward(a: library.LayerArgs, plan: runtime.Plan, buffers, needs, out, dxg, du, dgh, ds,
              dht) -> list[Tensor | None]:  # fmt: skip
    """The GEMMs and sums after the kernels (docs/backward.md; ``du`` is ``dxg`` but
    with the variant op's LN_ih, ``dgh`` the ``dG_h`` of the bias, ``ds`` that of ``W_hh``);
    ``out`` holds the gradients the kernels' part computed."""
    x, w_ih, N = a.x, a.w_ih, plan.T * plan.B
    acc, n = runtime.acc_dtype(x.dtype), dict(zip(GRAD_INPUTS, needs, strict=True))
    if n["x"]:
        out["x"] = (du @ w_ih).view(x.shape)
    if n["w_ih"]:
        out["w_ih"] = du.t() @ runtime.flat_rows(x, plan)
    if n["w_hh"]:
        out["w_hh"] = ds.view(N, -1).t() @ runtime.prev_states(buffers[0], plan).reshape(N, -1)
    # The biases' gradients are column sums: b_ih's of dG, b_hh's of dG_h (often dG itself: then,
    # with dense input, one sum serves both), a layer norm's bias's those of the bias it is added
    # beside. Each sum is made once; a second use gets a copy (outputs must not alias).
    sums: dict[tuple[int, int], Tensor] = {}
    for names, rows in ((("b_ih", "ln_ih_b"), dxg), (("b_hh", "ln_hh_b"), dgh)):
        key = (rows.data_ptr(), rows.numel())
        for name in filter(n.get, names):
            if key in sums:
                out[name] = sums[key].clone()
            else:
                total = rows.reshape(-1, rows.shape[-1]).sum(0, dtype=acc)
                sums[key] = out[name] = total.to(x.dtype)
    if n["w_hr"] and a.w_hr is not None:  # m [T, B, H] comes just before y in both lists
        out["w_hr"] = dht.view(N, -1).t() @ buffers[_y_buffer(a) - 1].view(N, -1)
    return [out.get(name) if need else None for name, need in zip(GRAD_INPUTS, needs, strict=True)]


# half inputs of a variant call run in float32: the variant kernels take float32 and float64
layer = library.define_layer("triton", forward, fake_forward, backward, unpack,
                             in_float32_when=lambda variant: variant)  # fmt: skip
