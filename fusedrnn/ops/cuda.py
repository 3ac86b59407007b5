"""The ``cuda`` backend: hand-written CUDA kernels (csrc/cuda) behind the layer op contract.

Per step, one cuBLAS GEMM ``h_{t-1} W_hh^T`` and one fused gate kernel; the backward walks the
steps in reverse with one gate-gradient kernel and one ``dG_t W_hh`` GEMM per step, then the
weight gradients as GEMMs over all steps and the bias gradients as deterministic column sums.
The time loop is C++ (csrc/cuda/layer_driver.h) in the extension ``fusedrnn._C_cuda``, which is
built only when torch has CUDA and nvcc is present.

Backward (per element, gates G = pre-activations; see csrc/cell_math.h for each cell):

    dh_t   = dy_t + dh_{t+1 -> t}                    (proj: dhpre_t = dh_t W_hr)
    dG_t   = cell_backward(dh_t, dc_t, saved_t)      (LSTM also yields dc_{t-1})
    dh_{t-1} = dHG_t W_hh  (+ dh_t * z for GRU)      (dHG = dG except GRU's n gate: dxn * r)
    dW_ih = dG^T X,  dX = dG W_ih,  dW_hh = dHG^T H_prev,  dW_hr = dH^T Hpre,
    db_ih = colsum(dG),  db_hh = colsum(dHG)

Importing this module never touches CUDA and never imports the extension; ``is_available()``
does both, lazily.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType

import torch
from torch import Tensor

from .checks import GATES, check_layer
from .library import define_layer_op, with_variants

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# columns of the saved activations per row, in units of H (layer_driver.h: saved_width)
_SAVED_WIDTH = {"lstm": 6, "gru": 4, "rnn_tanh": 0, "rnn_relu": 0}

_ext: ModuleType | None = None


def _load_ext() -> ModuleType:
    global _ext
    if _ext is None:
        _ext = importlib.import_module("fusedrnn._C_cuda")
    return _ext


def is_available() -> bool:
    """True when a CUDA device is usable and the extension fusedrnn._C_cuda was built."""
    try:
        if not torch.cuda.is_available():
            return False
        _load_ext()
    except (ImportError, OSError, RuntimeError):
        return False
    return True


def _sizes(x: Tensor, h0: Tensor, batch_sizes: Tensor | None) -> list[int]:
    """Active rows of every step (dense input: all rows, every step)."""
    if batch_sizes is not None:
        return [int(b) for b in batch_sizes.tolist()]
    return [h0.shape[0]] * x.shape[0]


def _flat(x: Tensor, batch_sizes: Tensor | None) -> Tensor:  # -> [N, I] contiguous
    return (x if batch_sizes is not None else x.reshape(-1, x.shape[-1])).contiguous()


def _c(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


def make_layer(
    backend: str, get_ext: Callable[[], ModuleType], device_type: str = "cuda"
) -> Callable[..., tuple[Tensor, Tensor, Tensor | None]]:
    """The layer op over an extension module with ``layer_forward`` / ``layer_backward``
    (fusedrnn._C_cuda; the test-suite passes a CPU build of the same driver)."""

    def forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse):
        check_layer(
            backend, SUPPORTED_DTYPES, cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
            batch_sizes, device_type=device_type, proj_below_hidden=True,
            both_biases=True,
        )  # fmt: skip
        # [y [N, Hout], h_n [B, Hout], c_n [B, H], saved [N, S*H] acc, h_prev [N, Hout],
        #  hpre [N, H]]: always saved, because a custom op cannot know whether a backward follows
        out = get_ext().layer_forward(
            cell, _flat(x, batch_sizes), h0.contiguous(), _c(c0), w_ih.contiguous(),
            w_hh.contiguous(), _c(b_ih), _c(b_hh), _c(w_hr), _sizes(x, h0, batch_sizes),
            reverse, True,
        )  # fmt: skip
        return [t if t is not None else x.new_empty(0) for t in out]

    def fake_forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse):
        N = x.shape[0] if batch_sizes is not None else x.shape[0] * x.shape[1]
        H, Hout = w_ih.shape[0] // GATES[cell], h0.shape[1]
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        S = _SAVED_WIDTH[cell]
        return [
            x.new_empty(N, Hout),
            x.new_empty(h0.shape),
            x.new_empty(c0.shape) if cell == "lstm" else x.new_empty(0),
            x.new_empty(N, S * H, dtype=acc) if S else x.new_empty(0),
            x.new_empty(N, Hout),
            x.new_empty(N, H) if w_hr is not None else x.new_empty(0),
        ]

    def backward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse, buffers,
                 grads, needs):  # fmt: skip
        y, h_n, c_n, saved, h_prev, hpre = buffers
        dy = grads[0] if grads[0] is not None else torch.zeros_like(y)  # [N, Hout]
        dh_n = grads[1] if grads[1] is not None else torch.zeros_like(h_n)  # [B, Hout]
        dc_n = None
        if cell == "lstm":
            dc_n = grads[2] if grads[2] is not None else torch.zeros_like(c_n)  # [B, H]
        out = get_ext().layer_backward(
            cell, dy.contiguous(), dh_n.contiguous(), _c(dc_n), _flat(x, batch_sizes),
            w_ih.contiguous(), w_hh.contiguous(), _c(w_hr), b_ih is not None,
            _sizes(x, h0, batch_sizes), reverse, y, saved if _SAVED_WIDTH[cell] else None,
            h_prev, hpre if w_hr is not None else None,
        )  # fmt: skip
        out[0] = out[0].view(x.shape)  # dx [N, I] -> x's shape
        return out

    def unpack(cell, x, h0, batch_sizes, reverse, buffers):
        y = buffers[0]  # [N, Hout] -> [T, B, Hout] for dense input
        if batch_sizes is None:
            y = y.view(x.shape[0], x.shape[1], h0.shape[1])
        return y, buffers[1], buffers[2] if cell == "lstm" else None

    op_layer = define_layer_op(backend, forward, fake_forward, backward, unpack)

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
        """Same contract as :func:`fusedrnn.ops.reference.layer`."""
        inputs = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
        train = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
        if train or torch.compiler.is_compiling():
            return op_layer(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse)
        # eager inference: the same kernels without writing the activations a backward needs
        check_layer(
            backend, SUPPORTED_DTYPES, cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
            batch_sizes, device_type=device_type, proj_below_hidden=True,
            both_biases=True,
        )  # fmt: skip
        y, h_n, c_n, *_ = get_ext().layer_forward(
            cell, _flat(x, batch_sizes), h0.contiguous(), _c(c0), w_ih.contiguous(),
            w_hh.contiguous(), _c(b_ih), _c(b_hh), _c(w_hr), _sizes(x, h0, batch_sizes),
            reverse, False,
        )  # fmt: skip
        return unpack(cell, x, h0, batch_sizes, reverse, [y, h_n, c_n])

    layer.fwd_op = op_layer.fwd_op
    layer.bwd_op = op_layer.bwd_op
    return layer


_plain_layer = make_layer("cuda", _load_ext)


def _variant_layer():
    from .cuda_variants import layer as op  # imports this module: looked up at call time

    return op


# The layer op contract (fusedrnn/ops/CONTRACT.md): torch.nn's cells run the per-step
# kernels above, a call with a variant option those of fusedrnn.ops.cuda_variants.
layer = with_variants(lambda: _plain_layer, _variant_layer)
