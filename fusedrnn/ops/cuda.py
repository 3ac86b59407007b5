"""The ``cuda`` backend: hand-written CUDA kernels (csrc/cuda) behind the layer op contract.

One time loop for every cell and option, in C++ (csrc/cuda/layer_driver.h: the GEMMs and fused
kernels of each step, forward and backward) in the extension ``fusedrnn._C_cuda``, which is
built only when torch has CUDA and nvcc is present. torch.nn's cells run elementwise kernels,
the variants (math in docs/variants.md) row kernels (csrc/cuda/launchers.h). The per-element
math is csrc/cell_math.h, the same code the cpu backend runs; the backward is derived in
docs/backward.md.

With ``save=False`` the driver writes no activations (the row kernels write scratch rows).
The driver's calls are replayed from CUDA graphs (:mod:`.graphs`): the second call of a shape
captures the time loop, later ones replay it, so a step costs no host time.
Importing this module never touches CUDA and never imports the extension; ``is_available()``
does both, lazily.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from types import ModuleType

import torch
from torch import Tensor

from ..variants import LN_EPS
from . import library
from .checks import acc_dtype, check_layer, gate_count, layer_dims
from .graphs import GraphCache

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@functools.cache
def _load_ext() -> ModuleType:
    return importlib.import_module("fusedrnn._C_cuda")


def is_available() -> bool:
    """True when a CUDA device is usable and the extension fusedrnn._C_cuda was built."""
    try:
        return torch.cuda.is_available() and _load_ext() is not None
    except (ImportError, OSError, RuntimeError):
        return False


# the position of batch_sizes in the driver's arguments: read on the host while it launches
_HOST_ARGS = (library.NAMES.index("batch_sizes"),)


def make_layer(
    backend: str,
    get_ext: Callable[[], ModuleType],
    device_type: str = "cuda",
    graphs: Callable[[], GraphCache] = GraphCache,
) -> Callable[..., tuple[Tensor, Tensor, Tensor | None]]:
    """The layer op over an extension module with ``layer_forward`` / ``layer_backward``
    (fusedrnn._C_cuda, csrc/cuda/layer_module.h; the test-suite passes a CPU build of the same
    driver), each call through its own :class:`.graphs.GraphCache` made by ``graphs``
    (``layer.graphs``: forward's, backward's)."""
    fwd_graphs, bwd_graphs = graphs(), graphs()

    def forward(a: library.LayerArgs) -> list[Tensor]:
        """``[y [N, Hout], h_n, c_n, act, hhat, stats, h_prev, hraw, xhat_ih, rstd_ih]``
        (layer_driver.h); [0] placeholders for absent buffers and, without ``save``, for
        everything after c_n (the driver's scratch rows)."""
        check_layer(backend, SUPPORTED_DTYPES, a, device_type=device_type, proj_below_hidden=True,
                    both_biases=not library.is_variant(a))  # fmt: skip
        kept = 10 if a.save else 3  # the rest are scratch rows: neither returned nor copied

        def run(*args):
            return get_ext().layer_forward(*args)[:kept]

        out = fwd_graphs(run, (*a[:-1], LN_EPS, a.save), _HOST_ARGS)
        return [a.x.new_empty(0) if t is None else t for t in out + [None] * (10 - len(out))]

    def fake_forward(a: library.LayerArgs) -> list[Tensor]:
        (_, N, B, Hout, H), x, cell, G = layer_dims(a), a.x, a.cell, gate_count(a.cell, a.cifg)
        lstm, ln, proj = cell == "lstm", a.ln_ih_w is not None, a.w_hr is not None
        acc = acc_dtype(x.dtype)

        def buf(keep: bool, *shape: int, dtype: torch.dtype | None = None) -> Tensor:
            return x.new_empty(shape, dtype=dtype) if keep and a.save else x.new_empty(0)

        return [
            x.new_empty(N, Hout), x.new_empty(B, Hout), x.new_empty((B, H) if lstm else (0,)),
            buf(cell in ("lstm", "gru"), N, (G + 3) * H if lstm else 4 * H, dtype=acc),
            buf(ln, N, G * H, dtype=acc), buf(ln, N, 4, dtype=acc),
            buf(True, N, Hout), buf(proj, N, H), buf(ln, N, G * H, dtype=acc),
            buf(ln, N, 1, dtype=acc),
        ]  # fmt: skip

    def backward(a: library.LayerArgs, buffers, grads, needs) -> list[Tensor | None]:
        fwd = [t if t.dim() == 2 else None for t in buffers]  # [0] placeholders -> None
        # dy, dh_n, dc_n: grads[:3]
        out = bwd_graphs(get_ext().layer_backward, (*a[:-1], LN_EPS, *grads[:3], fwd), _HOST_ARGS)
        if out[0] is not None:
            out[0] = out[0].view(a.x.shape)  # dx [N, I] -> x's shape
        return out

    def unpack(a: library.LayerArgs, buffers) -> tuple[Tensor, Tensor, Tensor]:
        y = buffers[0]  # [N, Hout] -> [T, B, Hout] for dense input
        if a.batch_sizes is None:
            y = y.view(a.x.shape[0], a.x.shape[1], a.h0.shape[1])
        return y, buffers[1], buffers[2]

    layer = library.define_layer(backend, forward, fake_forward, backward, unpack)
    layer.graphs = (fwd_graphs, bwd_graphs)
    return layer


# The layer op contract (fusedrnn/ops/CONTRACT.md).
layer = make_layer("cuda", _load_ext)
