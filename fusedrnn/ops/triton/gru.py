"""GRU per-step kernels: forward step and backward step.

Forward, one launch per step: a program owns BLOCK_B batch rows x BLOCK_H hidden
units and computes the three recurrent parts of those units
``hq = h_prev W_hh,q^T + b_hh,q`` (q = r, z, n) in one loop over ``h_prev``, then
``r, z = sigmoid(x_q + h_q)``, ``n = tanh(x_n + r * hn)`` (``b_hn`` inside the
reset product, as PyTorch) and ``h = (1 - z) n + z h_prev``. It saves r, z, n, hn.

Backward, one launch per step: the state gradient (:func:`.common.state_grad`,
which folds in ``dG_h,next W_hh``), then :func:`.cellmath.gru_bwd`. Two gate
gradients are written: ``dG_x = [d pre_r, d pre_z, d pre_n]`` (for W_ih, b_ih, x)
and ``dG_h = [d pre_r, d pre_z, r d pre_n]`` (for W_hh, b_hh, h_prev); the direct
term ``dh z`` stays in the running state gradient.
"""

from __future__ import annotations

import torch
import triton.language as tl
from torch import Tensor

from . import runtime
from .cellmath import gru_bwd, gru_fwd
from .common import finish_state_grad, state_grad
from .configs import pick_step_config
from .tiles import (
    add_gates,
    kernel_jit,
    load_gates,
    packed_ptrs,
    rec_gates,
    step_tile,
    store_gates,
    store_state,
)


@kernel_jit
def _gru_fwd_step_kernel(
    xg_ptr,  # [N, 3H] input projection x W_ih^T + b_ih (x layout)
    w_ptr,  # [3H, H] W_hh
    b_ptr,  # [3H] b_hh (HAS_BIAS)
    hs_ptr,  # [T+1, B, H] hidden-state history
    gates_ptr,  # [T, B, 4H] saved r, z, n, hn (accumulation dtype; WRITE_GATES)
    y_ptr,  # [N, H] packed output (WRITE_Y)
    xg_row0,
    rows_active,
    hs_r: tl.int64,
    hs_w: tl.int64,
    gates_off: tl.int64,  # t * B * 4H: step t in gates
    B,
    H,
    HAS_BIAS,
    WRITE_Y,
    WRITE_GATES: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    acc_ty = gates_ptr.dtype.element_ty
    rows, units, rmask, umask, act, mask2 = step_tile(B, H, rows_active, BLOCK_B, BLOCK_H)
    amask = act[:, None] & umask[None, :]

    hr, hz, hn, _ = rec_gates(hs_ptr + hs_r, w_ptr, rows, act, units, umask, H, H, H, 1, 3, acc_ty,
                              PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)  # fmt: skip
    if HAS_BIAS:
        hr, hz, hn, _ = add_gates(hr, hz, hn, hn, b_ptr + units, H, umask, 3)
    xg = packed_ptrs(xg_ptr, xg_row0, rows, units, 3 * H)
    xr, xz, xn, _ = load_gates(xg, H, amask, 3)
    state = rows[:, None] * H + units[None, :]
    h_prev = tl.load(hs_ptr + hs_r + state, mask=mask2, other=0.0)
    r, z, n, h = gru_fwd(xr.to(acc_ty), xz.to(acc_ty), xn.to(acc_ty), hr, hz, hn,
                         h_prev.to(acc_ty))  # fmt: skip

    if WRITE_GATES:  # only when a backward can follow (the op's save flag)
        saved = gates_ptr + gates_off + rows[:, None] * (4 * H) + units[None, :]
        store_gates(saved, H, act, mask2, r, z, n, hn, 4)
    store_state(h, h_prev, hs_ptr + hs_w, y_ptr, xg_row0, rows, rmask, act, units, umask, H,
                WRITE_Y)  # fmt: skip


@kernel_jit
def _gru_bwd_step_kernel(
    dgx_ptr,  # [T, B, 3H] out: input-side gate gradients
    dgh_ptr,  # [T, B, 3H] out: recurrent-side gate gradients (read at the previous step)
    w_ptr,  # [3H, H] W_hh
    hs_ptr,  # [T+1, B, H] hidden-state history
    gates_ptr,  # [T, B, 4H] saved r, z, n, hn
    dh_ptr,  # [B, H] running state gradient (accumulation dtype)
    dhs_ptr,  # [T+1, B, H] gradient of Hs (HAS_DHS)
    dy_ptr,  # [N, H] gradient of the packed output (HAS_DY)
    y_row0,
    rows_active,
    rows_prev,
    hs_r: tl.int64,
    hs_w: tl.int64,
    gates_off: tl.int64,  # t * B * 4H: step t in gates
    dg_off: tl.int64,  # t * B * 3H: step t in dG_x / dG_h
    dg_prev_off: tl.int64,  # offset of dG_h of the step processed before
    B,
    H,
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
        dh_ptr, dgh_ptr, w_ptr, dhs_ptr, dy_ptr, dg_prev_off, hs_w, y_row0,
        rows, units, rmask, umask, act, rows < rows_prev, 3 * H, H,
        HAS_DHS, HAS_DY, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K,
    )  # fmt: skip
    state = rows[:, None] * H + units[None, :]
    h_prev = tl.load(hs_ptr + hs_r + state, mask=mask2, other=0.0).to(acc_ty)
    saved = gates_ptr + gates_off + rows[:, None] * (4 * H) + units[None, :]
    r, z, n, hn = load_gates(saved, H, mask2, 4)
    d_r, d_z, d_n, d_hn, direct = gru_bwd(r, z, n, hn, h_prev, dh)

    out = dg_off + rows[:, None] * (3 * H) + units[None, :]
    store_gates(dgx_ptr + out, H, act, mask2, d_r, d_z, d_n, d_n, 3)
    store_gates(dgh_ptr + out, H, act, mask2, d_r, d_z, d_hn, d_hn, 3)
    tl.store(dh_ptr + state, tl.where(act[:, None], direct, dh), mask=mask2)


def _gru_fwd(
    xg: Tensor,  # [N, 3H] input projection, b_ih included
    h0: Tensor,  # [B, H]
    w_hh: Tensor,  # [3H, H] contiguous
    b_hh: Tensor | None,  # [3H]
    plan: runtime.Plan,
    packed: bool,
    save: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Returns ``Hs [T+1,B,H]``, saved ``gates [T,B,4H]`` (empty unless ``save``) and packed
    ``y [N,H]`` (or empty)."""
    T, B, H = plan.T, plan.B, w_hh.shape[1]
    dt, dev = xg.dtype, xg.device
    hs = runtime.empty(T + 1, B, H, dtype=dt, device=dev)
    hs[plan.first_slot] = h0
    acc = runtime.acc_dtype(dt)  # the kernel takes its accumulation dtype from gates
    gates = (
        runtime.empty(T, B, 4 * H, dtype=acc, device=dev) if save else hs.new_empty(0, dtype=acc)
    )
    y = runtime.empty(xg.shape[0], H, dtype=dt, device=dev) if packed else hs.new_empty(0)
    cfg = pick_step_config(B, H)
    for s in plan.steps:
        runtime.launch(
            _gru_fwd_step_kernel, cfg.step_grid(H, B),
            xg, w_hh, b_hh if b_hh is not None else xg, hs, gates, y if packed else hs,
            s.row0, s.rows, s.slot_r * B * H, s.slot_w * B * H, s.t * B * 4 * H, B, H,
            HAS_BIAS=b_hh is not None, WRITE_Y=packed, WRITE_GATES=save,
            PRECISION=runtime.dot_precision(dt), **cfg.launch_kwargs(),
        )  # fmt: skip
    return hs, gates, y


def _gru_bwd(
    w_hh: Tensor,  # [3H, H] contiguous
    hs: Tensor,  # [T+1, B, H]
    gates: Tensor,  # [T, B, 4H]
    dhs: Tensor | None,  # [T+1, B, H] gradient of Hs
    dy: Tensor | None,  # [N, H] gradient of the packed output
    plan: runtime.Plan,
) -> tuple[Tensor, Tensor, Tensor]:
    """Returns ``dG_x [T,B,3H]``, ``dG_h [T,B,3H]`` (zero in inactive rows) and ``dh0 [B,H]``."""
    T, B, H = plan.T, plan.B, w_hh.shape[1]
    dt, dev, acc = w_hh.dtype, w_hh.device, gates.dtype
    dgx = runtime.empty(T, B, 3 * H, dtype=dt, device=dev)
    dgh = runtime.empty(T, B, 3 * H, dtype=dt, device=dev)
    dh = torch.zeros(B, H, dtype=acc, device=dev)
    cfg = pick_step_config(B, H)
    rows_prev, t_prev = 0, 0
    for s in reversed(plan.steps):
        runtime.launch(
            _gru_bwd_step_kernel, cfg.step_grid(H, B),
            dgx, dgh, w_hh, hs, gates, dh,
            dhs if dhs is not None else dgx, dy if dy is not None else dgx,
            s.row0, s.rows, rows_prev, s.slot_r * B * H, s.slot_w * B * H, s.t * B * 4 * H,
            s.t * B * 3 * H, t_prev * B * 3 * H, B, H,
            HAS_DHS=dhs is not None, HAS_DY=dy is not None, PRECISION=runtime.dot_precision(dt),
            **cfg.launch_kwargs(),
        )  # fmt: skip
        rows_prev, t_prev = s.rows, s.t
    finish_state_grad(dh, dgh, w_hh, t_prev, rows_prev, dhs, plan)
    return dgx, dgh, dh
