"""The ``cpu`` backend: the compiled C++ extension ``fusedrnn._C`` (csrc/cpu).

Each layer runs its whole time loop in C++ (csrc/cpu/layer_fwd.cpp, the backward
csrc/cpu/layer_bwd.cpp, derived in docs/backward.md): one GEMM for the input projection of all
steps, then per step the recurrent GEMM ``h W_hh^T`` and fused per-row pointwise kernels (the
per-element math of csrc/cell_math.h, shared with the CUDA kernels; the cell variants of
docs/variants.md are options of the same loop), with blocks of batch rows or the parts of every
step spread over the threads (csrc/cpu/common.h::run_row_blocks says which).
``stack_step`` runs one time step of a whole unidirectional stack in one C++ call (sampling).

Float32 GEMMs take the extension's own packed kernel on CPUs with AVX2+FMA (csrc/cpu/sgemm.h);
the pointwise kernels are compiled once per ISA and chosen at run time
(csrc/cpu/kernels_generic.cpp; ``FUSEDRNN_CPU_ISA`` overrides it). Large temporaries live in
per-thread scratch buffers and outputs come from a per-thread pool of released outputs
(csrc/cpu/scratch.h); :func:`empty_cache` returns that memory.

This module imports cleanly when the extension was not built; ``is_available()`` is then False.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..variants import LN_EPS
from . import library
from .checks import check_cell, check_cell_and_options, layer_dims

try:
    from fusedrnn import _C
except (ImportError, OSError):  # not built (no compiler, FUSEDRNN_SKIP_CPU_BUILD=1, ...)
    _C = None


def is_available() -> bool:
    return _C is not None


def empty_cache() -> None:
    """Frees the scratch buffers and the pool of released outputs that the calling thread keeps
    between layer calls (like ``torch.cuda.empty_cache``; tensors still in use keep their
    memory). A no-op without the extension."""
    if _C is not None:
        _C.release_scratch()


def _need_extension() -> None:
    if _C is None:
        raise RuntimeError(
            "fusedrnn cpu backend: the C++ extension fusedrnn._C was not built. Build it with "
            "a C++ compiler present: pip install --no-build-isolation -e ."
        )


def forward(a: library.LayerArgs) -> list[Tensor]:
    """``[y, h_n, c_n, *saved]``: the saved buffers are those of the configuration
    (csrc/cpu/layer_ops.h::saved_widths, in that order), each [0] unless ``save``. y, h_n and
    c_n come first (the double backward reads their gradients there); c_n is [0] unless LSTM."""
    _need_extension()
    if a.cell == "lstm" and a.c0 is None:
        raise ValueError("fusedrnn cpu backend: LSTM needs c0")
    check_cell_and_options(a)
    return list(_C.layer_fwd(*a[:-1], LN_EPS, a.save))


def fake_forward(a: library.LayerArgs) -> list[Tensor]:
    (T, N, B, Hout, H), x = layer_dims(a), a.x
    GH, lstm, gru, ln = a.w_hh.shape[0], a.cell == "lstm", a.cell == "gru", a.ln_ih_w is not None
    # csrc/cpu/layer_ops.h::direct_gates (c~_t is c_t itself) and saved_widths: act, cs, ct, hh,
    # xh, stats, each [N, width] where the configuration has it
    direct = not gru and not (ln or a.w_ch is not None or a.cifg or a.mask_c is not None
                              or a.zoneout_c > 0)  # fmt: skip
    slots = [(lstm or gru, GH), (lstm, H), (not direct, H), (ln, GH), (ln, GH), (ln, 4)]
    y = (N, Hout) if a.batch_sizes is not None else (T, B, Hout)
    return [x.new_empty(y), a.h0.new_empty((B, Hout)), a.h0.new_empty((B, H) if lstm else (0,)),
            *(x.new_empty((N, w) if a.save else (0,)) for on, w in slots if on)]  # fmt: skip


def backward(a: library.LayerArgs, buffers, grads, needs) -> list[Tensor]:
    """The extension's backward; ``needs`` goes to C++ as a bit mask (bit k: GRAD_INPUTS[k])."""
    _need_extension()
    y = buffers[0]
    grad_y = grads[0] if grads[0] is not None else torch.zeros_like(y)
    grad_cn = grads[2] if a.cell == "lstm" else None
    mask = sum(1 << k for k, n in enumerate(needs) if n)
    return _C.layer_bwd(*a[:-1], LN_EPS, y, buffers[3:], grad_y, grads[1], grad_cn, mask)


# The layer op contract (fusedrnn/ops/CONTRACT.md): bfloat16 / float16 (e.g. under CPU autocast)
# are computed in float32, as the GPU backends accumulate, and returned in the input's dtype
# (the kernels take float32 and float64).
layer = library.define_layer(
    "cpu", forward, fake_forward, backward, lambda a, buffers: tuple(buffers[:3]),
    in_float32_when=lambda variant: True, double_backward=True,
)  # fmt: skip


def stack_step(
    cell: str,
    x: Tensor,  # [B, I], or one step [1, B, I] ([B, 1, I] when batch_first)
    hx: Tensor | None,  # [L, B, Hout] ([B, Hout]: a cell, x [B, I], L = 1); None: zeros
    cx: Tensor | None,  # [L, B, H] or [B, H] likewise (LSTM; None with hx None: zeros)
    flat_weights: list[Tensor],  # torch.nn order: per layer w_ih, w_hh, [b_ih, b_hh], [w_hr]
    num_layers: int,
    has_bias: bool,
    proj_size: int,
    batch_first: bool = False,
    fallback: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None] | None:
    """The contract's ``stack_step`` (fusedrnn/ops/CONTRACT.md): one time step of a
    unidirectional stack in one C++ call, for sampling loops; ``y`` is the last layer's new h,
    ``h_n`` and ``c_n`` come back in the rank their states were given."""
    _need_extension()
    check_cell(cell)
    if library.records_autograd(x, hx, flat_weights):
        raise RuntimeError(
            "fusedrnn.ops.cpu.stack_step does not record autograd; call it under "
            "torch.no_grad() / torch.inference_mode(), or use layer()"
        )
    lstm = cell == "lstm"
    out = _C.stack_step(
        cell, x, hx, cx if lstm else None, flat_weights, num_layers, has_bias, proj_size,
        batch_first, fallback,
    )  # fmt: skip
    return (out[0], out[1], out[2] if lstm else None) if out else None
