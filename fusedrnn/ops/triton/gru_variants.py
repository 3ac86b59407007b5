"""GRU variant step kernels (layer norm, zoneout): forward and backward.

One launch per step each way; a program owns BLOCK_B batch rows and all 3H features
of them (layer norm of ``h W_hh^T`` needs whole rows, see :mod:`.rowwise`).

Forward: (LAYER_NORM) ``s_raw = h_prev W_hh^T`` into Shat with its row mean and rstd;
then per unit chunk ``s = LN_hh(s_raw) + b`` (or ``h_prev W_hh^T + b``; ``b`` = b_hh +
LN bias, so ``b_hn`` stays inside the reset product), the GRU gates with ``x``-part
``xg`` (:func:`.cellmath.gru_fwd`), and zoneout of ``h~`` into Hs / y. Saves r, z, n,
s_n and the normalised ``s``.

Backward, from the running state gradient (:mod:`.common`)::

    dh~ = (1 - k_h) dh_t                      (k_h: zoneout keep weight)
    dG_x = [d pre_r, d pre_z, d pre_n]        gradient of xg (x side)
    dG_s = [d pre_r, d pre_z, r d pre_n]      gradient of s (b_hh, LN_hh bias and gain)
    running dh = k_h dh_t + z dh~             (reaches h_prev directly)
    (LAYER_NORM) dS_raw = LN backward of dG_s over the 3H features

``dS_raw`` (= ``dG_s`` without layer norm) is the gradient of ``h_prev W_hh^T``.
"""

from __future__ import annotations

import functools

import triton.language as tl
from torch import Tensor

from . import runtime
from .cellmath import gru_bwd, gru_fwd
from .common import finish_state_grad
from .configs import pick_variant_config
from .rowwise import (
    emit_state,
    ln_bwd_rows,
    ln_grad_sums,
    rec_raw_stats,
    recurrent_gates,
    row_chunk,
    zoned_state_grad,
)
from .tiles import kernel_jit, load_gates, packed_ptrs, row_block, store_gates, tile_ptrs


@kernel_jit
def _gru_variant_fwd_step_kernel(
    xg_ptr,  # [N, 3H] input projection (LN_ih and b_ih applied)
    w_ptr,  # [3H, H] W_hh
    b_ptr,  # [3H] b_hh + LN_hh bias (HAS_BIAS)
    lnw_ptr,  # [3H] LN_hh gain (LAYER_NORM)
    mh_ptr,  # [N, H] zoneout mask of h (ZONE_H == 1)
    par_ptr,  # [3] p_h, p_c (unused), eps
    hs_ptr,  # [T+1, B, H] hidden-state history
    gates_ptr,  # [T, B, 4H] saved r, z, n, s_n
    shat_ptr,  # [T, B, 3H] saved normalised recurrent projection (LAYER_NORM)
    rstd_ptr,  # [T, B] saved rstd of the recurrent projection (LAYER_NORM)
    y_ptr,  # [N, H] packed output (WRITE_Y)
    row0,
    rows_active,
    hs_r: tl.int64,
    hs_w: tl.int64,
    gates_off: tl.int64,  # t * B * 4H
    gh_off: tl.int64,  # t * B * 3H
    stat_off: tl.int64,  # t * B
    B,
    H,
    HAS_BIAS,
    LAYER_NORM: tl.constexpr,
    ZONE_H,  # 0 off, 1 mask, 2 evaluation (p)
    WRITE_Y,
    PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    acc_ty: tl.constexpr = gates_ptr.dtype.element_ty
    rows, rmask, act = row_block(B, rows_active, BLOCK_B)
    GH = 3 * H
    p_h = tl.load(par_ptr)
    eps = tl.load(par_ptr + 2)
    h_prev_ptr = hs_ptr + hs_r
    shat = shat_ptr + gh_off
    gates = gates_ptr + gates_off
    mean_s, rstd_s = rec_raw_stats(h_prev_ptr, w_ptr, shat, rows, rmask, act, GH, H, eps,
                                   LAYER_NORM, acc_ty, PRECISION, BLOCK_B, BLOCK_H,
                                   BLOCK_K)  # fmt: skip
    if LAYER_NORM:
        tl.store(rstd_ptr + stat_off + rows, tl.where(act, rstd_s, 0.0), mask=rmask)

    for u0 in range(0, H, BLOCK_H):
        units, umask, m2 = row_chunk(u0, H, rmask, BLOCK_H)
        am = act[:, None] & umask[None, :]
        s_r, s_z, s_n, _ = recurrent_gates(
            h_prev_ptr, w_ptr, b_ptr, lnw_ptr, shat, mean_s, rstd_s, rows, rmask, act, units,
            umask, H, GH, H, HAS_BIAS, 3, LAYER_NORM, acc_ty, PRECISION, BLOCK_B, BLOCK_H,
            BLOCK_K,
        )  # fmt: skip
        xr, xz, xn, _ = load_gates(packed_ptrs(xg_ptr, row0, rows, units, GH), H, am, 3)
        h_prev = tl.load(h_prev_ptr + rows[:, None] * H + units[None, :], mask=m2, other=0.0)
        r, z, n, h = gru_fwd(xr, xz, xn, s_r, s_z, s_n, h_prev)
        store_gates(tile_ptrs(gates, rows, units, 4 * H), H, act, m2, r, z, n, s_n, 4)
        emit_state(h, hs_ptr, mh_ptr, y_ptr, p_h, hs_r, hs_w, row0, rows, rmask, act,
                   units, umask, H, ZONE_H, WRITE_Y)  # fmt: skip


@kernel_jit
def _gru_variant_bwd_step_kernel(
    dgx_ptr,  # [T, B, 3H] out: gradient of xg
    dgs_ptr,  # [T, B, 3H] out: gradient of s
    ds_ptr,  # [T, B, 3H] out: dS_raw (LAYER_NORM; else dG_s itself), read at the next launch
    w_ptr,  # [3H, H] W_hh
    lnw_ptr,  # [3H] LN_hh gain (LAYER_NORM)
    mh_ptr,  # [N, H] zoneout mask of h (ZONE_H == 1)
    par_ptr,  # [3] p_h, p_c, eps
    hs_ptr,  # [T+1, B, H] hidden-state history
    gates_ptr,  # [T, B, 4H] saved r, z, n, s_n
    shat_ptr,  # [T, B, 3H] saved normalised recurrent projection (LAYER_NORM)
    rstd_ptr,  # [T, B] saved rstd (LAYER_NORM)
    dh_ptr,  # [B, H] running state gradient (see common.py)
    dhs_ptr,  # [T+1, B, H] gradient of Hs (HAS_DHS)
    dy_ptr,  # [N, H] gradient of the packed output (HAS_DY)
    row0,
    rows_active,
    rows_prev,
    hs_r: tl.int64,
    hs_w: tl.int64,
    gates_off: tl.int64,  # t * B * 4H
    gh_off: tl.int64,  # t * B * 3H
    gh_prev_off: tl.int64,  # offset of dS_raw of the step processed before
    stat_off: tl.int64,  # t * B
    B,
    H,
    LAYER_NORM: tl.constexpr,
    ZONE_H,
    HAS_DHS,
    HAS_DY,
    PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    acc_ty: tl.constexpr = dh_ptr.dtype.element_ty
    rows, rmask, act = row_block(B, rows_active, BLOCK_B)
    a = act[:, None]
    GH = 3 * H
    p_h = tl.load(par_ptr)
    gates = gates_ptr + gates_off
    sum_s = tl.zeros((BLOCK_B,), dtype=acc_ty)
    sum_sx = tl.zeros((BLOCK_B,), dtype=acc_ty)
    for u0 in range(0, H, BLOCK_H):
        units, umask, m2, total, k = zoned_state_grad(
            u0, dh_ptr, ds_ptr, w_ptr, dhs_ptr, dy_ptr, mh_ptr, p_h, gh_prev_off, hs_w, row0,
            rows, rmask, act, rows_prev, GH, H, ZONE_H, HAS_DHS, HAS_DY, PRECISION,
            BLOCK_B, BLOCK_H, BLOCK_K,
        )  # fmt: skip
        state = rows[:, None] * H + units[None, :]
        h_prev = tl.load(hs_ptr + hs_r + state, mask=m2, other=0.0)
        r, z, n, s_n = load_gates(tile_ptrs(gates, rows, units, 4 * H), H, m2, 4)
        d_r, d_z, d_n, d_sn, direct = gru_bwd(r, z, n, s_n, h_prev, (1.0 - k) * total)
        tl.store(dh_ptr + state, tl.where(a, direct + k * total, total), mask=m2)
        out = gh_off + rows[:, None] * GH + units[None, :]
        store_gates(dgx_ptr + out, H, act, m2, d_r, d_z, d_n, d_n, 3)
        store_gates(dgs_ptr + out, H, act, m2, d_r, d_z, d_sn, d_sn, 3)
        if LAYER_NORM:
            d_r = tl.where(a, d_r, 0.0)
            d_z = tl.where(a, d_z, 0.0)
            d_sn = tl.where(a, d_sn, 0.0)
            lnw = lnw_ptr + units
            shat = shat_ptr + out
            sum_s, sum_sx = ln_grad_sums(sum_s, sum_sx, d_r, lnw, shat, umask, m2)
            sum_s, sum_sx = ln_grad_sums(sum_s, sum_sx, d_z, lnw + H, shat + H, umask, m2)
            sum_s, sum_sx = ln_grad_sums(sum_s, sum_sx, d_sn, lnw + 2 * H, shat + 2 * H, umask, m2)

    if LAYER_NORM:  # through LN_hh to h_prev W_hh^T
        tl.debug_barrier()
        rstd_s = tl.load(rstd_ptr + stat_off + rows, mask=rmask, other=0.0)
        ln_bwd_rows(dgs_ptr + gh_off, shat_ptr + gh_off, lnw_ptr, rstd_s, sum_s, sum_sx,
                    ds_ptr + gh_off, rows, rmask, act, GH, BLOCK_H)  # fmt: skip


def _gru_variant_fwd(
    xg: Tensor,  # [N, 3H] input projection, LN_ih and b_ih applied
    h0: Tensor,  # [B, H]
    w_hh: Tensor,  # [3H, H] contiguous
    bias: Tensor | None,  # [3H] b_hh + LN_hh bias
    ln_hh_w: Tensor | None,  # [3H] (layer norm on iff given)
    mask_h: Tensor | None,  # [N, H]
    par: Tensor,  # [3] p_h, p_c, eps
    zone_h: int,  # 0 off, 1 mask, 2 evaluation
    plan: runtime.Plan,
    packed: bool,
) -> list[Tensor]:
    """Returns ``[Hs [T+1,B,H], gates [T,B,4H], shat [T,B,3H], rstd [T,B], y [N,H]]``
    (empty where unused)."""
    T, B, H = plan.T, plan.B, w_hh.shape[1]
    ln = ln_hh_w is not None
    buf = functools.partial(runtime.buffer, xg)
    hs = buf(T + 1, B, H)
    hs[plan.first_slot] = h0
    out = [hs, buf(T, B, 4 * H), buf(T, B, 3 * H, on=ln), buf(T, B, on=ln),
           buf(xg.shape[0], H, on=packed)]  # fmt: skip
    cfg = pick_variant_config(B)
    for s in plan.steps:
        runtime.launch(
            _gru_variant_fwd_step_kernel, cfg.row_grid(B),
            xg, w_hh, *runtime.given(xg, bias, ln_hh_w, mask_h), par, *runtime.given(xg, *out),
            s.row0, s.rows, s.slot_r * B * H, s.slot_w * B * H, s.t * B * 4 * H, s.t * B * 3 * H,
            s.t * B, B, H,
            HAS_BIAS=bias is not None, LAYER_NORM=ln, ZONE_H=zone_h, WRITE_Y=packed,
            PRECISION=runtime.dot_precision(xg.dtype), **cfg.launch_kwargs(),
        )  # fmt: skip
    return out


def _gru_variant_bwd(
    w_hh: Tensor,  # [3H, H] contiguous
    ln_hh_w: Tensor | None,  # [3H]
    mask_h: Tensor | None,  # [N, H]
    par: Tensor,  # [3]
    zone_h: int,
    buffers: list[Tensor],  # the forward's
    dhs: Tensor | None,  # [T+1, B, H] gradient of Hs
    dy: Tensor | None,  # [N, H] gradient of the packed output
    plan: runtime.Plan,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns ``dG_x, dG_s, dS_raw [T,B,3H]`` (dS_raw is dG_s without layer norm) and
    ``dh0 [B,H]``; zero in rows a packed step did not compute."""
    hs, gates, shat, rstd, y = buffers
    T, B, H = plan.T, plan.B, w_hh.shape[1]
    ln = ln_hh_w is not None
    dgx, dgs = runtime.buffer(w_hh, T, B, 3 * H), runtime.buffer(w_hh, T, B, 3 * H)
    ds = runtime.buffer(w_hh, T, B, 3 * H) if ln else dgs
    dh = w_hh.new_zeros(B, H)
    cfg = pick_variant_config(B)
    for s, rows_prev, t_prev in plan.backward():
        runtime.launch(
            _gru_variant_bwd_step_kernel, cfg.row_grid(B),
            dgx, dgs, ds, w_hh,
            *runtime.given(dgx, ln_hh_w, mask_h, par, hs, gates, shat, rstd, dh, dhs, dy),
            s.row0, s.rows, rows_prev, s.slot_r * B * H, s.slot_w * B * H, s.t * B * 4 * H,
            s.t * B * 3 * H, t_prev * B * 3 * H, s.t * B, B, H,
            LAYER_NORM=ln, ZONE_H=zone_h, HAS_DHS=dhs is not None, HAS_DY=dy is not None,
            PRECISION=runtime.dot_precision(w_hh.dtype), **cfg.launch_kwargs(),
        )  # fmt: skip
    finish_state_grad(dh, ds, w_hh, dhs, plan)
    return dgx, dgs, ds, dh
