"""The ``cuda`` backend of the cell variants: layer norm, zoneout, peephole, CIFG (csrc/cuda).

Same contract and results as :func:`fusedrnn.ops.reference.layer` with variant options (the spec; math in
docs/variants.md). The time loop is C++ (csrc/cuda/variant_driver.h): the input projection of
all steps is one GEMM and its layer norm is done for all rows at once; per step one cuBLAS GEMM
``h_{t-1} W_hh^T`` and one fused row kernel, in which a thread block owns one batch row (layer
norm needs whole rows) and reduces the row statistics in a fixed order (csrc/cuda/rowblock.cuh).
The per-element math is csrc/cell_math.h (LayerNorm, Zoneout, LSTMVariantCell, GRUCell), the
same code the cpu backend runs. With a projection, zoneout of h acts on ``y_t = hraw W_hr^T``
in a small elementwise kernel after the GEMM.

Backward (per element; csrc/cell_math.h has each step in full), per step in reverse order::

    zoneout   s_t = k s_{t-1} + (1 - k) s~_t:   ds~ = (1 - k) ds,  ds_{t-1} += k ds
              (k = the mask in training, p in evaluation; masks are not differentiated)
    LN        out = xhat w + b, xhat = (v - mean) rstd:
              dv = rstd (dout w - mean(dout w) - xhat mean(dout w xhat))    (row means:
              two block reductions in the row kernel)
    LSTM      dpo = dh~ tanh(cn) o (1 - o)   dcn = dh~ o (1 - tanh(cn)^2)   cn = LN_c(c~) or c~
              dc~ = (1 - k_c) dc_t + LN_c backward of dcn + w_co dpo
              dpi = dc~ g i (1 - i)   [cifg: dc~ (g - c_prev) i (1 - i)]
              dpf = dc~ c_prev f (1 - f)   dpg = dc~ i (1 - g^2)
              dc_prev = k_c dc_t + dc~ f + w_ci dpi + w_cf dpf
    GRU       the plain GRU cell's backward on (1 - k) dh_t (dA input side, dS recurrent side)
    all       dHP = LN_hh backward of dP (GRU: of dS),  dh_{t-1} = direct part + dHP W_hh

then over all steps (GEMMs and deterministic column sums, no atomics)::

    dXP = LN_ih backward of dP,  dX = dXP W_ih,  dW_ih = dXP^T X,  dW_hh = dHP^T H_prev,
    dW_hr = dH~^T Hraw,  db_ih = dln_ih_b = colsum(dP),  db_hh = dln_hh_b = colsum(dS),
    dln_ih_w = colsum(dP xhat_ih),  dln_hh_w = colsum(dS xhat_hh),
    dln_c_w = colsum(dcn chat),  dln_c_b = colsum(dcn),
    dw_ci = colsum(dP_i c_prev),  dw_cf = colsum(dP_f c_prev),  dw_co = colsum(dP_o c~).

The ops are ``torch.library.custom_op`` (``fusedrnn::cuda_variant_fwd`` / ``_bwd``) with fake
implementations and ``register_autograd``, as :mod:`fusedrnn.ops.cuda`. Importing this module
never touches CUDA and never imports the extension; ``is_available()`` does both, lazily.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import torch
from torch import Tensor

from ..variants import LN_EPS
from . import cuda as _cuda
from . import library
from .checks import check_layer, gate_count

SUPPORTED_DTYPES = _cuda.SUPPORTED_DTYPES
# the differentiable inputs, in the order of variant_backward's gradients
GRAD_INPUTS = (
    "x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr",
    "ln_ih_w", "ln_ih_b", "ln_hh_w", "ln_hh_b", "ln_c_w", "ln_c_b", "w_ch",
)  # fmt: skip
# their positions among the forward op's arguments
_DIFF_POS = (1, 2, 3, 4, 5, 6, 7, 8, 12, 13, 14, 15, 16, 17, 18)
_N_BUFFERS = 11  # y, h_n, c_n, act, cell, hhat, stats, h_prev, hraw, xhat_ih, rstd_ih


def is_available() -> bool:
    """True when a CUDA device is usable and fusedrnn._C_cuda was built with the variants."""
    return _cuda.is_available() and hasattr(_cuda._load_ext(), "variant_forward")


def _sizes(x: Tensor, h0: Tensor, batch_sizes: Tensor | None) -> list[int]:
    """Active rows of every step (dense input: all rows, every step)."""
    if batch_sizes is not None:
        return [int(b) for b in batch_sizes.tolist()]
    return [h0.shape[0]] * x.shape[0]


def _rows(t: Tensor | None, dtype: torch.dtype | None = None) -> Tensor | None:
    """[T, B, K] or [N, K] -> contiguous [N, K] (masks: detached, in x's dtype)."""
    if t is None:
        return None
    t = t.reshape(-1, t.shape[-1])
    return (t.detach().to(dtype) if dtype is not None else t).contiguous()


def _c(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


def make_layer(
    backend: str, get_ext: Callable[[], ModuleType], device_type: str = "cuda"
) -> Callable[..., tuple[Tensor, Tensor, Tensor | None]]:
    """The variant layer op over an extension with ``variant_forward`` / ``variant_backward``
    (fusedrnn._C_cuda; the test-suite passes a CPU build of the same driver)."""

    def run_forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse, cifg,
                    lns, w_ch, zoneout_h, zoneout_c, mask_h, mask_c, save):  # fmt: skip
        return get_ext().variant_forward(
            cell, _rows(x), h0.contiguous(), _c(c0) if cell == "lstm" else None,
            w_ih.contiguous(), w_hh.contiguous(), _c(b_ih), _c(b_hh), _c(w_hr),
            _sizes(x, h0, batch_sizes), reverse, cifg, *[_c(t) for t in lns], _c(w_ch),
            float(zoneout_h), float(zoneout_c), _rows(mask_h, x.dtype), _rows(mask_c, x.dtype),
            LN_EPS, save,
        )  # fmt: skip

    @torch.library.custom_op(f"fusedrnn::{backend}_variant_fwd", mutates_args=())
    def fwd_op(
        cell: str,
        x: Tensor,  # [T, B, I] dense or [N, I] packed
        h0: Tensor,  # [B, Hout]
        c0: Tensor | None,  # [B, H] (LSTM)
        w_ih: Tensor,  # [G*H, I]
        w_hh: Tensor,  # [G*H, Hout]
        b_ih: Tensor | None,  # [G*H]
        b_hh: Tensor | None,  # [G*H]
        w_hr: Tensor | None,  # [Hout, H]
        batch_sizes: Tensor | None,  # [T] int64 CPU
        reverse: bool,
        cifg: bool,
        ln_ih_w: Tensor | None,  # [G*H]
        ln_ih_b: Tensor | None,  # [G*H]
        ln_hh_w: Tensor | None,  # [G*H]
        ln_hh_b: Tensor | None,  # [G*H]
        ln_c_w: Tensor | None,  # [H]
        ln_c_b: Tensor | None,  # [H]
        w_ch: Tensor | None,  # [3, H] or [2, H]
        zoneout_h: float,
        zoneout_c: float,
        mask_h: Tensor | None,  # like y
        mask_c: Tensor | None,  # like y with H features
    ) -> list[Tensor]:
        """-> [y [N, Hout], h_n, c_n, act, cell, hhat, stats, h_prev, hraw, xhat_ih, rstd_ih]
        (variant_driver.h), [0] placeholders for absent buffers."""
        lns = (ln_ih_w, ln_ih_b, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b)
        out = run_forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse,
                          cifg, lns, w_ch, zoneout_h, zoneout_c, mask_h, mask_c, True)  # fmt: skip
        return [t if t is not None else x.new_empty(0) for t in out]

    @fwd_op.register_fake
    def _(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse, cifg, ln_ih_w,
          ln_ih_b, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b, w_ch, zoneout_h, zoneout_c, mask_h,
          mask_c):  # fmt: skip
        G = gate_count(cell, cifg)
        H, (B, Hout) = w_hh.shape[0] // G, h0.shape
        N = x.shape[0] if batch_sizes is not None else x.shape[0] * x.shape[1]
        lstm, ln, proj = cell == "lstm", ln_ih_w is not None, w_hr is not None
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32

        def maybe(keep, *shape, dtype=None):
            return x.new_empty(shape if keep else (0,), dtype=dtype if keep else None)

        return [
            x.new_empty(N, Hout), x.new_empty(B, Hout), maybe(lstm, B, H),
            x.new_empty(N, G * H if lstm else 4 * H, dtype=acc), maybe(lstm, N, 3 * H, dtype=acc),
            maybe(ln, N, G * H, dtype=acc), maybe(ln, N, 4, dtype=acc), x.new_empty(N, Hout),
            maybe(proj, N, H), maybe(ln, N, G * H, dtype=acc), maybe(ln, N, 1, dtype=acc),
        ]  # fmt: skip

    @torch.library.custom_op(f"fusedrnn::{backend}_variant_bwd", mutates_args=())
    def bwd_op(
        cell: str,
        x: Tensor,
        h0: Tensor,
        c0: Tensor | None,
        w_ih: Tensor,
        w_hh: Tensor,
        b_ih: Tensor | None,
        b_hh: Tensor | None,
        w_hr: Tensor | None,
        batch_sizes: Tensor | None,
        reverse: bool,
        cifg: bool,
        ln_ih_w: Tensor | None,
        ln_ih_b: Tensor | None,
        ln_hh_w: Tensor | None,
        ln_hh_b: Tensor | None,
        ln_c_w: Tensor | None,
        ln_c_b: Tensor | None,
        w_ch: Tensor | None,
        zoneout_h: float,
        zoneout_c: float,
        mask_h: Tensor | None,
        mask_c: Tensor | None,
        buffers: list[Tensor],  # the forward op's outputs
        grad_y: Tensor,  # [N, Hout]
        grad_hn: Tensor,  # [B, Hout]
        grad_cn: Tensor | None,  # [B, H] (LSTM)
        needs: list[bool],  # per GRAD_INPUTS entry
    ) -> list[Tensor]:
        """-> one gradient per GRAD_INPUTS entry ([0] where not needed or absent)."""
        inputs = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                  ln_ih_w, ln_ih_b, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b, w_ch)  # fmt: skip
        has = [t is not None for t in inputs]
        has[2] = has[2] and cell == "lstm"
        fwd = [t if t.dim() == 2 else None for t in buffers]  # [0] placeholders -> None
        out = get_ext().variant_backward(
            cell, grad_y.contiguous(), grad_hn.contiguous(),
            _c(grad_cn) if cell == "lstm" else None, _rows(x), w_ih.contiguous(),
            w_hh.contiguous(), _c(w_hr), cifg, _c(ln_ih_w), _c(ln_hh_w), _c(ln_c_w), _c(w_ch),
            float(zoneout_h), float(zoneout_c), _rows(mask_h, x.dtype), _rows(mask_c, x.dtype),
            has, _sizes(x, h0, batch_sizes), reverse, LN_EPS, fwd,
        )  # fmt: skip
        if out[0] is not None:
            out[0] = out[0].view(x.shape)  # dx [N, I] -> x's shape
        return [
            g if g is not None and n and h else x.new_empty(0)
            for g, n, h in zip(out, needs, has, strict=True)
        ]

    @bwd_op.register_fake
    def _(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse, cifg, ln_ih_w,
          ln_ih_b, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b, w_ch, zoneout_h, zoneout_c, mask_h, mask_c,
          buffers, grad_y, grad_hn, grad_cn, needs):  # fmt: skip
        inputs = (x, h0, c0 if cell == "lstm" else None, w_ih, w_hh, b_ih, b_hh, w_hr,
                  ln_ih_w, ln_ih_b, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b, w_ch)  # fmt: skip
        # contiguous like the real gradients: empty_like would copy the strides of a transposed
        # (batch_first) x, which the real dx (a view of a fresh [N, I] buffer) does not have
        return [
            t.new_empty(t.shape) if n and t is not None else x.new_empty(0)
            for n, t in zip(needs, inputs, strict=True)
        ]

    def setup_context(ctx, inputs, output):
        ctx.cell, ctx.reverse, ctx.cifg = inputs[0], inputs[10], inputs[11]
        ctx.zoneout = (inputs[19], inputs[20])
        ctx.present = [inputs[p] is not None for p in _DIFF_POS]
        ctx.save_for_backward(*[inputs[p] for p in _DIFF_POS], inputs[9], inputs[21],
                              inputs[22], *output)  # fmt: skip

    def backward(ctx, grads):
        library.refuse_double_backward(backend)
        t = ctx.saved_tensors
        diff, (batch_sizes, mask_h, mask_c), buffers = t[:15], t[15:18], list(t[18:])
        wanted = [ctx.needs_input_grad[p] for p in _DIFF_POS]
        needs = [bool(n) and p for n, p in zip(wanted, ctx.present, strict=True)]
        y, h_n, c_n = buffers[:3]
        grad_y = grads[0] if grads[0] is not None else torch.zeros_like(y)
        grad_hn = grads[1] if grads[1] is not None else torch.zeros_like(h_n)
        grad_cn = None
        if ctx.cell == "lstm":
            grad_cn = grads[2] if grads[2] is not None else torch.zeros_like(c_n)
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = diff[:8]
        out = bwd_op(
            ctx.cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, ctx.reverse,
            ctx.cifg, *diff[8:14], diff[14], *ctx.zoneout, mask_h, mask_c, buffers, grad_y,
            grad_hn, grad_cn, needs,
        )  # fmt: skip
        result: list[Tensor | None] = [None] * 23
        for p, g, n in zip(_DIFF_POS, out, needs, strict=True):
            result[p] = g if n else None
        return tuple(result)

    fwd_op.register_autograd(backward, setup_context=setup_context)

    def unpack(cell, x, h0, c0, batch_sizes, y, h_n, c_n):
        if batch_sizes is None:
            y = y.view(x.shape[0], x.shape[1], h0.shape[1])  # [N, Hout] -> [T, B, Hout]
        # GRU: c_n is c0 as given, as the reference returns it
        return y, h_n, c_n if cell == "lstm" else c0

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
        """One variant layer in one direction; contract of ``fusedrnn.ops.reference.layer``."""
        lns = (ln_ih_w, ln_ih_b, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b)
        check_layer(
            backend, SUPPORTED_DTYPES, cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
            batch_sizes, device_type=device_type, proj_below_hidden=True, cifg=cifg,
            ln_ih_w=ln_ih_w, ln_ih_b=ln_ih_b, ln_hh_w=ln_hh_w, ln_hh_b=ln_hh_b, ln_c_w=ln_c_w, ln_c_b=ln_c_b, w_ch=w_ch,
            zoneout_h=zoneout_h, zoneout_c=zoneout_c, mask_h=mask_h, mask_c=mask_c,
        )  # fmt: skip
        c_in = c0 if cell == "lstm" else None
        diff = (x, h0, c_in, w_ih, w_hh, b_ih, b_hh, w_hr, *lns, w_ch)
        train = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in diff)
        if train or torch.compiler.is_compiling():
            out = fwd_op(
                cell, x, h0, c_in, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse, cifg,
                *lns, w_ch, float(zoneout_h), float(zoneout_c), mask_h, mask_c,
            )  # fmt: skip
        else:  # eager inference: the same kernels, writing scratch rows instead of history
            out = run_forward(cell, x, h0, c_in, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes,
                              reverse, cifg, lns, w_ch, zoneout_h, zoneout_c, mask_h, mask_c,
                              False)  # fmt: skip
        return unpack(cell, x, h0, c0, batch_sizes, *out[:3])

    layer.fwd_op = fwd_op
    layer.bwd_op = bwd_op
    return layer


layer = make_layer("cuda", _cuda._load_ext)
