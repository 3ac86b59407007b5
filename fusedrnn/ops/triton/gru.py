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
import triton
import triton.language as tl
from torch import Tensor

from . import runtime
from .cellmath import gru_bwd, gru_fwd
from .common import state_grad
from .configs import pick_step_config


@triton.jit(do_not_specialize=["xg_row0", "rows_active", "hs_r", "hs_w", "gates_off", "B"])
def _gru_fwd_step_kernel(
    xg_ptr,  # [N, 3H] input projection x W_ih^T + b_ih (x layout)
    w_ptr,  # [3H, H] W_hh
    b_ptr,  # [3H] b_hh (HAS_BIAS)
    hs_ptr,  # [T+1, B, H] hidden-state history
    gates_ptr,  # [T, B, 4H] saved r, z, n, hn (accumulation dtype)
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
    PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    acc_ty = gates_ptr.dtype.element_ty
    rows = tl.program_id(1).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    units = tl.program_id(0).to(tl.int64) * BLOCK_H + tl.arange(0, BLOCK_H)
    rmask = rows < B
    umask = units < H
    act = rows < rows_active
    mask2 = rmask[:, None] & umask[None, :]
    amask = act[:, None] & umask[None, :]

    hr = tl.zeros((BLOCK_B, BLOCK_H), dtype=acc_ty)
    hz = tl.zeros((BLOCK_B, BLOCK_H), dtype=acc_ty)
    hn = tl.zeros((BLOCK_B, BLOCK_H), dtype=acc_ty)
    for k0 in range(0, H, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < H
        h = tl.load(
            hs_ptr + hs_r + rows[:, None] * H + ks[None, :],
            mask=act[:, None] & kmask[None, :],
            other=0.0,
        )
        w_off = units[None, :] * H + ks[:, None]
        wmask = kmask[:, None] & umask[None, :]
        w = tl.load(w_ptr + w_off, mask=wmask, other=0.0)
        hr = tl.dot(h, w, hr, input_precision=PRECISION)
        w = tl.load(w_ptr + H * H + w_off, mask=wmask, other=0.0)
        hz = tl.dot(h, w, hz, input_precision=PRECISION)
        w = tl.load(w_ptr + 2 * H * H + w_off, mask=wmask, other=0.0)
        hn = tl.dot(h, w, hn, input_precision=PRECISION)
    if HAS_BIAS:
        hr += tl.load(b_ptr + units, mask=umask, other=0.0).to(acc_ty)[None, :]
        hz += tl.load(b_ptr + H + units, mask=umask, other=0.0).to(acc_ty)[None, :]
        hn += tl.load(b_ptr + 2 * H + units, mask=umask, other=0.0).to(acc_ty)[None, :]

    xg = xg_ptr + (xg_row0 + rows[:, None]).to(tl.int64) * (3 * H) + units[None, :]
    xr = tl.load(xg, mask=amask, other=0.0).to(acc_ty)
    xz = tl.load(xg + H, mask=amask, other=0.0).to(acc_ty)
    xn = tl.load(xg + 2 * H, mask=amask, other=0.0).to(acc_ty)
    state = rows[:, None] * H + units[None, :]
    h_prev = tl.load(hs_ptr + hs_r + state, mask=mask2, other=0.0)
    r, z, n, h = gru_fwd(xr, xz, xn, hr, hz, hn, h_prev.to(acc_ty))

    a = act[:, None]
    saved = gates_ptr + gates_off + rows[:, None] * (4 * H) + units[None, :]
    tl.store(saved, tl.where(a, r, 0.0), mask=mask2)
    tl.store(saved + H, tl.where(a, z, 0.0), mask=mask2)
    tl.store(saved + 2 * H, tl.where(a, n, 0.0), mask=mask2)
    tl.store(saved + 3 * H, tl.where(a, hn, 0.0), mask=mask2)
    h_new = tl.where(a, h.to(h_prev.dtype), h_prev)
    tl.store(hs_ptr + hs_w + state, h_new, mask=mask2)
    if WRITE_Y:
        tl.store(
            y_ptr + (xg_row0 + rows[:, None]).to(tl.int64) * H + units[None, :], h_new, mask=amask
        )


@triton.jit(
    do_not_specialize=[
        "y_row0",
        "rows_active",
        "rows_prev",
        "hs_r",
        "hs_w",
        "gates_off",
        "dg_off",
        "dg_prev_off",
        "B",
    ]
)
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
    rows = tl.program_id(1).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    units = tl.program_id(0).to(tl.int64) * BLOCK_H + tl.arange(0, BLOCK_H)
    rmask = rows < B
    umask = units < H
    act = rows < rows_active
    mask2 = rmask[:, None] & umask[None, :]
    dh = state_grad(
        dh_ptr, dgh_ptr, w_ptr, dhs_ptr, dy_ptr, dg_prev_off, hs_w, y_row0,
        rows, units, rmask, umask, act, rows < rows_prev, 3 * H, H,
        HAS_DHS, HAS_DY, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K,
    )  # fmt: skip
    state = rows[:, None] * H + units[None, :]
    h_prev = tl.load(hs_ptr + hs_r + state, mask=mask2, other=0.0).to(acc_ty)
    saved = gates_ptr + gates_off + rows[:, None] * (4 * H) + units[None, :]
    r = tl.load(saved, mask=mask2, other=0.0)
    z = tl.load(saved + H, mask=mask2, other=0.0)
    n = tl.load(saved + 2 * H, mask=mask2, other=0.0)
    hn = tl.load(saved + 3 * H, mask=mask2, other=0.0)
    d_r, d_z, d_n, d_hn, direct = gru_bwd(r, z, n, hn, h_prev, dh)

    a = act[:, None]
    ty = dgx_ptr.dtype.element_ty
    out = dg_off + rows[:, None] * (3 * H) + units[None, :]
    d_r = tl.where(a, d_r, 0.0).to(ty)
    d_z = tl.where(a, d_z, 0.0).to(ty)
    tl.store(dgx_ptr + out, d_r, mask=mask2)
    tl.store(dgx_ptr + out + H, d_z, mask=mask2)
    tl.store(dgx_ptr + out + 2 * H, tl.where(a, d_n, 0.0).to(ty), mask=mask2)
    tl.store(dgh_ptr + out, d_r, mask=mask2)
    tl.store(dgh_ptr + out + H, d_z, mask=mask2)
    tl.store(dgh_ptr + out + 2 * H, tl.where(a, d_hn, 0.0).to(ty), mask=mask2)
    tl.store(dh_ptr + state, tl.where(a, direct, dh), mask=mask2)


def _gru_fwd(
    xg: Tensor,  # [N, 3H] input projection, b_ih included
    h0: Tensor,  # [B, H]
    w_hh: Tensor,  # [3H, H] contiguous
    b_hh: Tensor | None,  # [3H]
    plan: runtime.Plan,
    packed: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Returns ``Hs [T+1,B,H]``, saved ``gates [T,B,4H]`` and packed ``y [N,H]`` (or empty)."""
    T, B, H = plan.T, plan.B, w_hh.shape[1]
    dt, dev = xg.dtype, xg.device
    hs = runtime.empty(T + 1, B, H, dtype=dt, device=dev)
    hs[plan.first_slot] = h0
    gates = runtime.empty(T, B, 4 * H, dtype=runtime.acc_dtype(dt), device=dev)
    y = runtime.empty(xg.shape[0], H, dtype=dt, device=dev) if packed else hs.new_empty(0)
    cfg = pick_step_config(B, H)
    grid = (triton.cdiv(H, cfg.block_h), triton.cdiv(B, cfg.block_b))
    for s in plan.steps:
        runtime.launch(
            _gru_fwd_step_kernel, grid,
            xg, w_hh, b_hh if b_hh is not None else xg, hs, gates, y if packed else hs,
            s.row0, s.rows, s.slot_r * B * H, s.slot_w * B * H, s.t * B * 4 * H, B, H,
            HAS_BIAS=b_hh is not None, WRITE_Y=packed, PRECISION=runtime.dot_precision(dt),
            BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_K=cfg.block_k,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, maxnreg=cfg.maxnreg,
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
    grid = (triton.cdiv(H, cfg.block_h), triton.cdiv(B, cfg.block_b))
    rows_prev, t_prev = 0, 0
    for s in reversed(plan.steps):
        runtime.launch(
            _gru_bwd_step_kernel, grid,
            dgx, dgh, w_hh, hs, gates, dh,
            dhs if dhs is not None else dgx, dy if dy is not None else dgx,
            s.row0, s.rows, rows_prev, s.slot_r * B * H, s.slot_w * B * H, s.t * B * 4 * H,
            s.t * B * 3 * H, t_prev * B * 3 * H, B, H,
            HAS_DHS=dhs is not None, HAS_DY=dy is not None, PRECISION=runtime.dot_precision(dt),
            BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_K=cfg.block_k,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, maxnreg=cfg.maxnreg,
        )  # fmt: skip
        rows_prev, t_prev = s.rows, s.t
    if rows_prev:
        dh[:rows_prev].addmm_(dgh[t_prev, :rows_prev].to(acc), w_hh.to(acc))
    if dhs is not None:
        dh += dhs[plan.first_slot]
    return dgx, dgh, dh
