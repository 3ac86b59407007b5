"""The stack driver: layers × directions on top of a backend's layer op.

The modules in :mod:`fusedrnn.modules` validate arguments the way torch.nn does
and then call :func:`rnn_stack`, which owns everything between one layer op
and the next: splitting the flat weight list, feeding each layer the previous
layer's output, concatenating the two directions, inter-layer dropout, and
stacking the final states into torch.nn's ``[L*D, B, H]`` layout.
"""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

from .ops.library import records_autograd
from .variants import layer_options

MODES = {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu"}


def split_weights(
    flat: list[Tensor], has_bias: bool, proj_size: int
) -> list[tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]]:
    """torch.nn's flat weight order → (w_ih, w_hh, b_ih, b_hh, w_hr) per layer×direction."""
    k = 2 + (2 if has_bias else 0) + (1 if proj_size > 0 else 0)
    return [
        (g[0], g[1], *(g[2:4] if has_bias else (None, None)), g[-1] if proj_size > 0 else None)
        for g in (flat[i : i + k] for i in range(0, len(flat), k))
    ]


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype the recurrent layers compute and return in under ``torch.autocast`` for
    ``device_type``, or None when autocast is off there.

    torch.nn's recurrent layers are autocast ops on CUDA (cuDNN's RNN and the fused cells
    cast to the autocast dtype) and so is its oneDNN LSTM on CPU: output in the autocast
    dtype. fusedrnn applies that one rule on every device and backend."""
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def _cast(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    # autocast's rule for what it casts: floating tensors other than float64
    if t is None or not t.is_floating_point() or t.dtype == torch.float64:
        return t
    return t.to(dtype)


def _stack_step_applies(backend: ModuleType, x: Tensor, *tensors) -> bool:
    """True when one step may run as the backend's ``stack_step``: one C++ call for the whole
    stack, no per-layer op dispatch (what dominates at sampling sizes). That call records no
    autograd; whether the tensors fit it (one float32 / float64 dtype, shapes) it answers
    itself, with None under ``fallback=True``."""
    return (
        hasattr(backend, "stack_step")
        and not records_autograd(x, *tensors)
        and not torch.compiler.is_compiling()
    )


def rnn_stack(
    backend: ModuleType,
    cell: str,  # "lstm" | "gru" | "rnn_tanh" | "rnn_relu"
    x: Tensor,  # [T, B, I] time-major, or packed data [N, I]
    hx: Tensor,  # [L*D, B, Hout]
    cx: Tensor | None,  # [L*D, B, H] (LSTM only)
    flat_weights: list[Tensor],  # torch.nn order, see split_weights (G = 3 blocks with cifg)
    num_layers: int,
    bidirectional: bool,
    has_bias: bool,
    proj_size: int,
    dropout: float,
    training: bool,
    batch_sizes: Tensor | None,  # [T] int64 CPU, packed input only
    options=None,  # fusedrnn.variants.CellOptions; None or all off: torch.nn's cell
    extra_weights: list[dict[str, Tensor]] | None = None,  # variant parameters per layer-dir
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Returns output ([T, B, D*Hout] or packed [N, D*Hout]), h_n, c_n.

    Under autocast the inputs, states and weights are cast once, here, to the autocast dtype
    (:func:`autocast_dtype`) and the layers run with autocast off: the ops see one dtype, as
    their kernels require, and nothing inside them is re-cast per step."""
    dtype = autocast_dtype(x.device.type)
    if dtype is not None:
        with torch.autocast(x.device.type, enabled=False):
            extra = extra_weights and [
                {k: _cast(w, dtype) for k, w in e.items()} for e in extra_weights
            ]
            return rnn_stack(
                backend, cell, _cast(x, dtype), _cast(hx, dtype), _cast(cx, dtype),
                [_cast(w, dtype) for w in flat_weights], num_layers, bidirectional, has_bias,
                proj_size, dropout, training, batch_sizes, options, extra,
            )  # fmt: skip
    variant = options is not None and options.enabled
    if (
        not variant
        and batch_sizes is None
        and x.shape[0] == 1
        and not bidirectional
        and not (dropout > 0 and training and num_layers > 1)
        and _stack_step_applies(backend, x, hx, cx, flat_weights)
    ):
        # The sampling loop (one step, no autograd): the whole stack in one backend call,
        # which skips the per-layer op dispatch that dominates at this size.
        out = backend.stack_step(
            cell, x, hx, cx, flat_weights, num_layers, has_bias, proj_size, fallback=True
        )
        if out is not None:
            return out
    dirs = 2 if bidirectional else 1
    weights = split_weights(flat_weights, has_bias, proj_size)
    if variant:
        hidden = cx.shape[-1] if cx is not None else hx.shape[-1]
        extra = layer_options(options, extra_weights, x, hx.shape[-1], hidden, training)
    else:
        extra = [{} for _ in weights]
    h_n: list[Tensor] = []
    c_n: list[Tensor | None] = []  # Nones without cx (then unused)
    layer_in = x
    for layer in range(num_layers):
        outs = []
        for d in range(dirs):
            idx = layer * dirs + d
            y, h, c = backend.layer(
                cell, layer_in, hx[idx], cx[idx] if cx is not None else None, *weights[idx],
                batch_sizes, d == 1, **extra[idx],
            )  # fmt: skip
            outs.append(y)
            h_n.append(h)
            c_n.append(c)
        layer_in = outs[0] if dirs == 1 else torch.cat(outs, dim=-1)
        if dropout > 0 and training and layer < num_layers - 1:
            layer_in = F.dropout(layer_in, p=dropout, training=True)
    return layer_in, torch.stack(h_n), torch.stack(c_n) if cx is not None else None


def cell_step(
    backend: ModuleType,
    cell: str,  # "lstm" | "gru" | "rnn_tanh" | "rnn_relu"
    x: Tensor,  # [B, I]
    h: Tensor,  # [B, H]
    c: Tensor | None,  # [B, H] (LSTM)
    w_ih: Tensor,  # [G*H, I]
    w_hh: Tensor,  # [G*H, H]
    b_ih: Tensor | None,  # [G*H]
    b_hh: Tensor | None,  # [G*H]
) -> tuple[Tensor, Tensor | None]:
    """One step of a single cell (LSTMCell / GRUCell / RNNCell): the backend's ``stack_step``
    as a stack of one layer when nothing records autograd, else the layer op on a sequence of
    length one. Same autocast rule as :func:`rnn_stack`."""
    dtype = autocast_dtype(x.device.type)
    if dtype is not None:
        with torch.autocast(x.device.type, enabled=False):
            return cell_step(
                backend, cell, *(_cast(t, dtype) for t in (x, h, c, w_ih, w_hh, b_ih, b_hh))
            )
    if _stack_step_applies(backend, x, h, c, w_ih, w_hh, b_ih, b_hh):
        # A cell call in a sampling or inference loop: a stack of one layer, one C++ call.
        weights = [w_ih, w_hh] if b_ih is None else [w_ih, w_hh, b_ih, b_hh]
        out = backend.stack_step(cell, x, h, c, weights, 1, b_ih is not None, 0, fallback=True)
        if out is not None:
            return out[1], out[2]
    _, h_n, c_n = backend.layer(
        cell, x.unsqueeze(0), h, c, w_ih, w_hh, b_ih, b_hh, None, None, False
    )
    return h_n, c_n
