"""Elman RNN (tanh / relu) per-step kernels: forward step and backward step.

Forward, one launch per step: ``h = act(xg + h_prev W_hh^T + b_hh)`` for a block
of rows x units. Nothing beyond the state history is saved: the backward takes the
activation's derivative from the output (``1 - h^2`` for tanh, ``[h > 0]`` for relu).

Backward, one launch per step: the state gradient (:func:`.common.state_grad`,
which folds in ``dG_next W_hh``) times the activation's derivative.
"""

from __future__ import annotations

import torch
import triton.language as tl
from torch import Tensor

from . import runtime
from .cellmath import rnn_bwd, rnn_fwd
from .common import finish_state_grad, state_grad
from .configs import pick_step_config
from .tiles import kernel_jit, packed_ptrs, rec_tile, step_tile, store_state


@kernel_jit
def _rnn_fwd_step_kernel(
    xg_ptr,  # [N, H] input projection x W_ih^T + b_ih (x layout)
    w_ptr,  # [H, H] W_hh
    b_ptr,  # [H] b_hh (HAS_BIAS)
    hs_ptr,  # [T+1, B, H] hidden-state history
    y_ptr,  # [N, H] packed output (WRITE_Y)
    xg_row0,
    rows_active,
    hs_r: tl.int64,
    hs_w: tl.int64,
    B,
    H,
    RELU: tl.constexpr,
    HAS_BIAS,
    WRITE_Y,
    ACC_TY: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rows, units, rmask, umask, act, mask2 = step_tile(B, H, rows_active, BLOCK_B, BLOCK_H)
    amask = act[:, None] & umask[None, :]
    pre = rec_tile(hs_ptr + hs_r, w_ptr, rows, act, units, umask, H, H, 1, ACC_TY, PRECISION,
                   BLOCK_B, BLOCK_H, BLOCK_K)  # fmt: skip
    xg = packed_ptrs(xg_ptr, xg_row0, rows, units, H)
    pre += tl.load(xg, mask=amask, other=0.0).to(ACC_TY)
    if HAS_BIAS:
        pre += tl.load(b_ptr + units, mask=umask, other=0.0).to(ACC_TY)[None, :]
    state = rows[:, None] * H + units[None, :]
    h_prev = tl.load(hs_ptr + hs_r + state, mask=mask2, other=0.0)
    store_state(rnn_fwd(pre, RELU), h_prev, hs_ptr + hs_w, y_ptr, xg_row0, rows, rmask, act, units,
                umask, H, WRITE_Y)  # fmt: skip


@kernel_jit
def _rnn_bwd_step_kernel(
    dg_ptr,  # [T, B, H] gate-gradient history
    w_ptr,  # [H, H] W_hh
    hs_ptr,  # [T+1, B, H] hidden-state history
    dh_ptr,  # [B, H] running state gradient (accumulation dtype)
    dhs_ptr,  # [T+1, B, H] gradient of Hs (HAS_DHS)
    dy_ptr,  # [N, H] gradient of the packed output (HAS_DY)
    y_row0,
    rows_active,
    rows_prev,
    hs_w: tl.int64,
    g_off: tl.int64,  # t * B * H
    dg_prev_off: tl.int64,
    B,
    H,
    RELU: tl.constexpr,
    HAS_DHS,
    HAS_DY,
    PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    acc_ty = dh_ptr.dtype.element_ty
    rows, units, rmask, umask, act, mask2 = step_tile(B, H, rows_active, BLOCK_B, BLOCK_H)
    dh = state_grad(
        dh_ptr, dg_ptr, w_ptr, dhs_ptr, dy_ptr, dg_prev_off, hs_w, y_row0,
        rows, units, rmask, umask, act, rows < rows_prev, H, H,
        HAS_DHS, HAS_DY, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K,
    )  # fmt: skip
    state = rows[:, None] * H + units[None, :]
    h = tl.load(hs_ptr + hs_w + state, mask=mask2, other=0.0).to(acc_ty)
    a = act[:, None]
    d = tl.where(a, rnn_bwd(h, dh, RELU), 0.0)
    tl.store(dg_ptr + g_off + state, d.to(dg_ptr.dtype.element_ty), mask=mask2)
    tl.store(dh_ptr + state, tl.where(a, 0.0, dh), mask=mask2)


def _rnn_fwd(
    xg: Tensor,  # [N, H] input projection, b_ih included
    h0: Tensor,  # [B, H]
    w_hh: Tensor,  # [H, H] contiguous
    b_hh: Tensor | None,  # [H]
    plan: runtime.Plan,
    packed: bool,
    relu: bool,
) -> tuple[Tensor, Tensor]:
    """Returns ``Hs [T+1,B,H]`` and packed ``y [N,H]`` (or empty)."""
    T, B, H = plan.T, plan.B, w_hh.shape[1]
    dt, dev = xg.dtype, xg.device
    hs = runtime.empty(T + 1, B, H, dtype=dt, device=dev)
    hs[plan.first_slot] = h0
    y = runtime.empty(xg.shape[0], H, dtype=dt, device=dev) if packed else hs.new_empty(0)
    cfg = pick_step_config(B, H)
    acc_ty = tl.float64 if dt == torch.float64 else tl.float32
    for s in plan.steps:
        runtime.launch(
            _rnn_fwd_step_kernel, cfg.step_grid(H, B),
            xg, w_hh, b_hh if b_hh is not None else xg, hs, y if packed else hs,
            s.row0, s.rows, s.slot_r * B * H, s.slot_w * B * H, B, H,
            RELU=relu, HAS_BIAS=b_hh is not None, WRITE_Y=packed, ACC_TY=acc_ty,
            PRECISION=runtime.dot_precision(dt), **cfg.launch_kwargs(),
        )  # fmt: skip
    return hs, y


def _rnn_bwd(
    w_hh: Tensor,  # [H, H] contiguous
    hs: Tensor,  # [T+1, B, H]
    dhs: Tensor | None,  # [T+1, B, H] gradient of Hs
    dy: Tensor | None,  # [N, H] gradient of the packed output
    plan: runtime.Plan,
    relu: bool,
) -> tuple[Tensor, Tensor]:
    """Returns ``dG [T,B,H]`` (zero in inactive rows) and ``dh0 [B,H]``."""
    T, B, H = plan.T, plan.B, w_hh.shape[1]
    dt, dev, acc = w_hh.dtype, w_hh.device, runtime.acc_dtype(w_hh.dtype)
    dg = runtime.empty(T, B, H, dtype=dt, device=dev)
    dh = torch.zeros(B, H, dtype=acc, device=dev)
    cfg = pick_step_config(B, H)
    rows_prev, t_prev = 0, 0
    for s in reversed(plan.steps):
        runtime.launch(
            _rnn_bwd_step_kernel, cfg.step_grid(H, B),
            dg, w_hh, hs, dh, dhs if dhs is not None else dg, dy if dy is not None else dg,
            s.row0, s.rows, rows_prev, s.slot_w * B * H, s.t * B * H, t_prev * B * H, B, H,
            RELU=relu, HAS_DHS=dhs is not None, HAS_DY=dy is not None,
            PRECISION=runtime.dot_precision(dt), **cfg.launch_kwargs(),
        )  # fmt: skip
        rows_prev, t_prev = s.rows, s.t
    finish_state_grad(dh, dg, w_hh, t_prev, rows_prev, dhs, plan)
    return dg, dh
