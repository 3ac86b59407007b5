"""The ``cpu`` backend: the compiled C++ extension ``fusedrnn._C`` (csrc/cpu).

Each layer runs its whole time loop in C++: one GEMM for the input projection of all steps,
then per step one parallel region in which every thread accumulates ``h W_hh^T`` for its own
block of gate columns into that projection and runs the fused pointwise kernel (the
per-element math of csrc/cell_math.h, shared with the CUDA kernels) on those columns. The
backward is hand-written: a fused pointwise kernel and one GEMM per step, then the weight
gradients as large GEMMs over all steps and the bias gradients as column sums.
``stack_step`` runs one time step of a whole unidirectional stack in one C++ call (sampling).

Float32 GEMMs take the extension's own packed kernel (a 6x16 AVX2 register tile, csrc/cpu/
sgemm*) on CPUs with AVX2+FMA; the recurrent weights are packed once per layer call rather
than once per step. Large temporaries live in per-thread scratch buffers and outputs come from
a per-thread pool of released outputs, so that repeated calls of the same shapes (training)
reuse memory instead of faulting in new pages; :func:`empty_cache` returns it.

Backward derivation (per element; see csrc/cell_math.h for every cell)::

    LSTM  dc = dc_next + dh o (1 - tanh(c)^2)    dgo = dh tanh(c) o (1 - o)
          dgi = dc g i (1 - i)   dgf = dc c_prev f (1 - f)   dgg = dc i (1 - g^2)
          dc_prev = dc f
    GRU   dxn = dh (1 - z)(1 - n^2)   dhn = dxn r   dxr = dhr = dxn hn r (1 - r)
          dxz = dhz = dh (h_prev - n) z (1 - z)   dh_prev = dh z + [dhr dhz dhn] W_hh
    RNN   dpre = dh (1 - h^2) (tanh) or dh [h > 0] (relu)
    all   dh_prev = dG W_hh,  dW_hh = sum_t dG_t^T h_{t-1},  dW_ih = dG^T X,  dX = dG W_ih,
          db = column sums of dG;  with a projection dh_raw = dh W_hr, dW_hr = dH^T H_raw.

The cell variants (layer norm, zoneout, peephole, CIFG; math in docs/variants.md) are options
of the same ``layer``; with any of them on, each layer runs its whole time loop in C++ (csrc/cpu/variant_fwd.cpp): one
GEMM for the input projection of all steps and its layer norm row by row, then the batch rows
are cut into one block per thread (rows are independent sequences, and layer norm needs whole
rows of ``h W_hh^T``) and every thread runs its block through all the steps: the recurrent
GEMM of its rows, their row statistics and the fused pointwise kernels (per-element math in
csrc/cell_math.h, shared with the CUDA kernels), never waiting for the other threads inside
the loop. A batch too small to cut runs as one block with each step's GEMMs split over the
threads. The backward (csrc/cpu/variant_bwd.cpp) is hand-written and cut the same way; weight,
gain and bias gradients are GEMMs and column sums over all steps after the loop
(deterministic, no atomics).

Backward derivation of the variants (per element; csrc/cell_math.h has each step in full)::

    zoneout   s_t = k s_{t-1} + (1 - k) s~_t:   ds~ = (1 - k) ds,  ds_{t-1} += k ds
              (k = the mask in training, p in evaluation; masks are not differentiated)
    LN        out = xhat w + b, xhat = (v - mean) rstd:   dw += dout xhat,  db += dout,
              dv = rstd (dout w - mean(dout w) - xhat mean(dout w xhat))   (row means)
    LSTM      dpo = dh tanh(cn) o (1 - o)   dcn = dh o (1 - tanh(cn)^2)   cn = LN_c(c~) or c~
              dc~ = (1 - k_c) dc_t + LN_c backward of dcn + w_co dpo
              dpi = dc~ g i (1 - i)   [cifg: dc~ (g - c_prev) i (1 - i)]
              dpf = dc~ c_prev f (1 - f)   dpg = dc~ i (1 - g^2)
              dc_prev = k_c dc_t + dc~ f + w_ci dpi + w_cf dpf
              dw_ci = sum dpi c_prev   dw_cf = sum dpf c_prev   dw_co = sum dpo c~
    GRU       the plain GRU cell's backward on (1 - k) dh_t, with LN_hh's backward on the
              recurrent-side gradients
    all       dHP = LN_hh backward of dP,  dh_prev += dHP W_hh,  dW_hh = sum_t dHP_t^T h_{t-1},
              dXP = LN_ih backward of dP,  dX = dXP W_ih,  dW_ih = dXP^T X,
              db_ih = db(LN_ih bias) = sum dP,  db_hh = db(LN_hh bias) = sum dS,
              with a projection dh~ -> dh_raw = dh~ W_hr,  dW_hr = dH~^T H_raw.

The ops are registered with ``torch.library.custom_op`` (``fusedrnn::cpu_layer_fwd`` /
``_bwd`` and ``fusedrnn::cpu_variant_fwd`` / ``_bwd``) with fake implementations and ``register_autograd``, so that
``torch.compile(fullgraph=True)`` traces models using this backend without graph breaks.

This module imports cleanly when the extension was not built; ``is_available()`` is then False.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..variants import LN_EPS
from . import library, reference
from .checks import GATES, check_cell, check_options, gate_count, variants_on

try:
    from fusedrnn import _C
except (ImportError, OSError):  # not built (no compiler, FUSEDRNN_SKIP_CPU_BUILD=1, ...)
    _C = None

# layer_bwd's / variant_bwd's grad_mask bits, in the order of the differentiable inputs
_GRAD_INPUTS = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr")
_VARIANT_GRAD_INPUTS = (
    *_GRAD_INPUTS, "ln_ih_w", "ln_ih_b", "ln_hh_w", "ln_hh_b", "ln_c_w", "ln_c_b", "w_ch",
)  # fmt: skip


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


def _saves(cell: str) -> bool:
    return cell in ("lstm", "gru")


@torch.library.custom_op("fusedrnn::cpu_layer_fwd", mutates_args=())
def _layer_fwd(
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
    train: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> y, h_n, c_n ([0] unless LSTM), ws1, ws2 (saved for backward, [0] unless train)."""
    _need_extension()
    y, h_n, c_n, ws1, ws2 = _C.layer_fwd(
        cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse, train
    )
    return y, h_n, c_n, ws1, ws2


@_layer_fwd.register_fake
def _(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse, train):
    G = GATES[cell]
    H = w_ih.shape[0] // G
    B, Hout = h0.shape
    packed = batch_sizes is not None
    N = x.shape[0] if packed else x.shape[0] * x.shape[1]
    y = x.new_empty((N, Hout) if packed else (x.shape[0], B, Hout))
    h_n = h0.new_empty((B, Hout))
    c_n = h0.new_empty((B, H) if cell == "lstm" else (0,))
    keep = train and _saves(cell)
    ws1 = x.new_empty((N, G * H) if keep else (0,))
    ws2 = x.new_empty((N, H) if keep else (0,))
    return y, h_n, c_n, ws1, ws2


@torch.library.custom_op("fusedrnn::cpu_layer_bwd", mutates_args=())
def _layer_bwd(
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
    y: Tensor,  # forward output
    ws1: Tensor,  # saved by the forward
    ws2: Tensor,
    grad_y: Tensor,  # like y
    grad_hn: Tensor | None,  # [B, Hout]
    grad_cn: Tensor | None,  # [B, H]
    grad_mask: int,  # bit k set: gradient of _GRAD_INPUTS[k] wanted
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr ([0] where not wanted)."""
    _need_extension()
    return tuple(
        _C.layer_bwd(
            cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse,
            y, ws1, ws2, grad_y, grad_hn, grad_cn, grad_mask,
        )
    )  # fmt: skip


@_layer_bwd.register_fake
def _(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse, y, ws1, ws2,
      grad_y, grad_hn, grad_cn, grad_mask):  # fmt: skip
    inputs = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    out = []
    for k, t in enumerate(inputs):
        wanted = t is not None and (grad_mask >> k) & 1 and not (k == 2 and cell != "lstm")
        out.append(t.new_empty(t.shape) if wanted else x.new_empty((0,)))
    return tuple(out)


def _setup_context(ctx, inputs, output):
    cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse, train = inputs
    y, _h_n, _c_n, ws1, ws2 = output
    ctx.cell, ctx.reverse, ctx.train = cell, reverse, train
    ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, y, ws1, ws2)
    ctx.mark_non_differentiable(ws1, ws2)
    # Absent output gradients stay None: materialised, the saved buffers' would be [N, G*H]
    # of zeros per layer per backward (the kernels take None for grad h_n / c_n).
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_y, grad_hn, grad_cn, _g1, _g2):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, y, ws1, ws2 = ctx.saved_tensors
    needs = ctx.needs_input_grad[1:9]
    mask = sum(1 << k for k, n in enumerate(needs) if n)
    if mask and not ctx.train:
        raise RuntimeError(
            "fusedrnn cpu backend: the forward ran with train=False (nothing saved); call "
            "fusedrnn.ops.cpu.layer, which decides this from requires_grad"
        )
    if torch.is_grad_enabled():
        inputs = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
        args = (ctx.cell, *inputs, batch_sizes, ctx.reverse)
        out = library.differentiable_backward(
            reference.layer, args, {}, inputs, needs, (grad_y, grad_hn, grad_cn)
        )
        return (None, *out, None, None, None)
    if grad_y is None:
        grad_y = torch.zeros_like(y)
    grads = _layer_bwd(
        ctx.cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, ctx.reverse,
        y, ws1, ws2, grad_y, grad_hn, grad_cn if ctx.cell == "lstm" else None, mask,
    )  # fmt: skip
    out = [g if n else None for g, n in zip(grads, needs, strict=True)]
    return (None, *out, None, None, None)


torch.library.register_autograd("fusedrnn::cpu_layer_fwd", _backward, setup_context=_setup_context)


@torch.library.custom_op("fusedrnn::cpu_variant_fwd", mutates_args=())
def _variant_fwd(
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
    train: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> y, h_n, c_n ([0] unless LSTM), then six tensors saved for the backward ([0] unless
    train): act [N, G*H], cs [N, H], ct [N, H], hh [N, G*H], xh [N, G*H], stats [N, 4]."""
    _need_extension()
    return tuple(
        _C.variant_fwd(
            cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse, cifg,
            ln_ih_w, ln_ih_b, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b, w_ch, zoneout_h, zoneout_c,
            mask_h, mask_c, LN_EPS, train,
        )
    )  # fmt: skip


@_variant_fwd.register_fake
def _(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse, cifg, ln_ih_w,
      ln_ih_b, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b, w_ch, zoneout_h, zoneout_c, mask_h, mask_c,
      train):  # fmt: skip
    G = gate_count(cell, cifg)
    H = w_ih.shape[0] // G
    B, Hout = h0.shape
    packed = batch_sizes is not None
    N = x.shape[0] if packed else x.shape[0] * x.shape[1]
    lstm, ln = cell == "lstm", ln_ih_w is not None

    def maybe(keep, *shape):
        return x.new_empty(shape if train and keep else (0,))

    y = x.new_empty((N, Hout) if packed else (x.shape[0], B, Hout))
    h_n = h0.new_empty((B, Hout))
    c_n = h0.new_empty((B, H) if lstm else (0,))
    return (
        y, h_n, c_n, maybe(True, N, G * H), maybe(lstm, N, H), maybe(True, N, H),
        maybe(ln, N, G * H), maybe(ln, N, G * H), maybe(ln, N, 4),
    )  # fmt: skip


@torch.library.custom_op("fusedrnn::cpu_variant_bwd", mutates_args=())
def _variant_bwd(
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
    y: Tensor,  # forward output
    saved: list[Tensor],  # the six tensors the forward saved
    grad_y: Tensor,  # like y
    grad_hn: Tensor | None,  # [B, Hout]
    grad_cn: Tensor | None,  # [B, H]
    grad_mask: int,  # bit k set: gradient of _VARIANT_GRAD_INPUTS[k] wanted
) -> list[Tensor]:
    """-> one gradient per _VARIANT_GRAD_INPUTS entry ([0] where not wanted)."""
    _need_extension()
    return _C.variant_bwd(
        cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse, cifg,
        ln_ih_w, ln_ih_b, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b, w_ch, zoneout_h, zoneout_c,
        mask_h, mask_c, LN_EPS, y, saved, grad_y, grad_hn, grad_cn, grad_mask,
    )  # fmt: skip


@_variant_bwd.register_fake
def _(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse, cifg, ln_ih_w,
      ln_ih_b, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b, w_ch, zoneout_h, zoneout_c, mask_h, mask_c,
      y, saved, grad_y, grad_hn, grad_cn, grad_mask):  # fmt: skip
    inputs = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
              ln_ih_w, ln_ih_b, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b, w_ch)  # fmt: skip
    out = []
    for k, t in enumerate(inputs):
        wanted = t is not None and (grad_mask >> k) & 1 and not (k == 2 and cell != "lstm")
        out.append(t.new_empty(t.shape) if wanted else x.new_empty((0,)))
    return out


# positions of the differentiable inputs among _variant_fwd's arguments
_DIFF_POS = (1, 2, 3, 4, 5, 6, 7, 8, 12, 13, 14, 15, 16, 17, 18)


def _variant_setup_context(ctx, inputs, output):
    ctx.cell, ctx.reverse, ctx.cifg = inputs[0], inputs[10], inputs[11]
    ctx.zoneout = (inputs[19], inputs[20])
    ctx.train = inputs[23]
    diff = [inputs[p] for p in _DIFF_POS]
    y, saved = output[0], list(output[3:])
    ctx.save_for_backward(*diff, inputs[9], inputs[21], inputs[22], y, *saved)
    ctx.mark_non_differentiable(*saved)
    # Absent output gradients stay None (see fusedrnn.ops.cpu._setup_context).
    ctx.set_materialize_grads(False)


def _variant_backward(ctx, grad_y, grad_hn, grad_cn, *_saved_grads):
    t = ctx.saved_tensors
    diff, (batch_sizes, mask_h, mask_c, y), saved = t[:15], t[15:19], list(t[19:])
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = diff[:8]
    ln_ih_w, ln_ih_b, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b, w_ch = diff[8:]
    needs = [ctx.needs_input_grad[p] for p in _DIFF_POS]
    mask = sum(1 << k for k, n in enumerate(needs) if n)
    if mask and not ctx.train:
        raise RuntimeError(
            "fusedrnn cpu backend: the variant forward ran with train=False (nothing saved); "
            "call fusedrnn.ops.cpu.layer, which decides this from requires_grad"
        )
    if torch.is_grad_enabled():
        args = (ctx.cell, *diff[:8], batch_sizes, ctx.reverse)
        kwargs = dict(
            cifg=ctx.cifg, ln_ih_w=ln_ih_w, ln_ih_b=ln_ih_b, ln_hh_w=ln_hh_w, ln_hh_b=ln_hh_b,
            ln_c_w=ln_c_w, ln_c_b=ln_c_b, w_ch=w_ch, zoneout_h=ctx.zoneout[0],
            zoneout_c=ctx.zoneout[1], mask_h=mask_h, mask_c=mask_c,
        )  # fmt: skip
        grads = library.differentiable_backward(
            reference.layer, args, kwargs, diff, needs, (grad_y, grad_hn, grad_cn)
        )
    else:
        if grad_y is None:
            grad_y = torch.zeros_like(y)
        grads = _variant_bwd(
            ctx.cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, ctx.reverse,
            ctx.cifg, ln_ih_w, ln_ih_b, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b, w_ch, *ctx.zoneout,
            mask_h, mask_c, y, saved, grad_y, grad_hn, grad_cn if ctx.cell == "lstm" else None, mask,
        )  # fmt: skip
    out: list[Tensor | None] = [None] * 24
    for p, g, n in zip(_DIFF_POS, grads, needs, strict=True):
        out[p] = g if n else None
    return tuple(out)


torch.library.register_autograd(
    "fusedrnn::cpu_variant_fwd", _variant_backward, setup_context=_variant_setup_context
)


LOW_PRECISION = (torch.bfloat16, torch.float16)


def in_float32(op, dtype: torch.dtype, *args, **kwargs) -> tuple[Tensor, Tensor, Tensor | None]:
    """``op(*args, **kwargs)`` with every floating-point tensor argument in float32, as the GPU
    backends accumulate; its (y, h_n, c_n) are returned in ``dtype``. For the half-precision
    inputs (e.g. under CPU autocast) that the kernels do not take directly."""

    def f32(t):
        return t.float() if isinstance(t, Tensor) and t.is_floating_point() else t

    y, h_n, c_n = op(*[f32(a) for a in args], **{k: f32(v) for k, v in kwargs.items()})
    return y.to(dtype), h_n.to(dtype), None if c_n is None else c_n.to(dtype)


def layer(
    cell: str,  # "lstm" | "gru" | "rnn_tanh" | "rnn_relu"
    x: Tensor,  # [T, B, I] dense, or [N, I] packed data when batch_sizes is given
    h0: Tensor,  # [B, Hout]
    c0: Tensor | None,  # [B, H], LSTM only
    w_ih: Tensor,  # [G*H, I]   (G = 4 LSTM, 3 LSTM+cifg, 3 GRU, 1 RNN)
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
    """One layer in one direction; same contract as :func:`fusedrnn.ops.reference.layer`.

    bfloat16 / float16 (e.g. under CPU autocast) are computed in float32, as the GPU backends
    accumulate, and returned in the input's dtype. With variants a GRU returns ``c0`` as
    given for c_n (as the reference does).
    """
    options = dict(
        cifg=cifg, ln_ih_w=ln_ih_w, ln_ih_b=ln_ih_b, ln_hh_w=ln_hh_w, ln_hh_b=ln_hh_b,
        ln_c_w=ln_c_w, ln_c_b=ln_c_b, w_ch=w_ch, zoneout_h=zoneout_h, zoneout_c=zoneout_c,
        mask_h=mask_h, mask_c=mask_c,
    )  # fmt: skip
    variant = variants_on(**options)
    if variant:
        check_options(cell, w_ih, w_hh, cifg, ln_ih_w, ln_hh_w, ln_c_w, w_ch, zoneout_c, mask_c)
    else:
        check_cell(cell)
    is_lstm = cell == "lstm"
    if x.dtype in LOW_PRECISION:
        y, h_n, c_n = in_float32(
            layer, x.dtype, cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse,
            **options,
        )  # fmt: skip
        return y, h_n, c_n if is_lstm else (c0 if variant else None)
    if is_lstm and c0 is None:
        raise ValueError("fusedrnn cpu backend: LSTM needs c0")
    c_in = c0 if is_lstm else None
    weights = (x, h0, c_in, w_ih, w_hh, b_ih, b_hh, w_hr)
    if not variant:
        train = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in weights)
        y, h_n, c_n, _, _ = _layer_fwd(
            cell, x, h0, c_in, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse, train
        )
        return y, h_n, c_n if is_lstm else None
    # masks are data, never differentiated, and the kernels read them in x's dtype
    mask_h = None if mask_h is None else mask_h.detach().to(x.dtype)
    mask_c = None if mask_c is None else mask_c.detach().to(x.dtype)
    diff = (*weights, ln_ih_w, ln_ih_b, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b, w_ch)
    train = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in diff)
    out = _variant_fwd(
        cell, x, h0, c_in, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse, cifg,
        ln_ih_w, ln_ih_b, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b, w_ch, float(zoneout_h),
        float(zoneout_c), mask_h, mask_c, train,
    )  # fmt: skip
    return out[0], out[1], out[2] if is_lstm else c0


def stack_step(
    cell: str,
    x: Tensor,  # [B, I]
    hx: Tensor,  # [L, B, Hout]
    cx: Tensor | None,  # [L, B, H] (LSTM)
    flat_weights: list[Tensor],  # torch.nn order: per layer w_ih, w_hh, [b_ih, b_hh], [w_hr]
    num_layers: int,
    has_bias: bool,
    proj_size: int,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """One time step through a unidirectional stack, no dropout, no autograd.

    For sampling loops: the whole stack runs in one C++ call. Returns ``y`` [B, Hout] (the
    last layer's new h), ``h_n`` [L, B, Hout] and ``c_n`` [L, B, H] (LSTM) or None.
    """
    _need_extension()
    check_cell(cell)
    if torch.is_grad_enabled() and (
        x.requires_grad or hx.requires_grad or any(w.requires_grad for w in flat_weights)
    ):
        raise RuntimeError(
            "fusedrnn.ops.cpu.stack_step does not record autograd; call it under "
            "torch.no_grad() / torch.inference_mode(), or use layer()"
        )
    y, h_n, c_n = _C.stack_step(
        cell, x, hx, cx if cell == "lstm" else None, flat_weights, num_layers, has_bias, proj_size
    )
    return y, h_n, c_n if cell == "lstm" else None
