"""LSTM per-step kernels: forward step, projection step, backward step.

Forward, one launch per step (plus one projection launch per step when
proj_size > 0): a program owns BLOCK_B batch rows x BLOCK_H hidden units and
computes all four gates of those units, ``pre_q = xg_q + h_prev W_hh,q^T + b_hh,q``,
then the cell update (see :mod:`.cellmath`). It writes ``c_t``, the gate
activations (saved for the backward) and either ``h_t`` (no projection) or the
unprojected ``m_t``; the projection launch then writes ``h_t = m_t W_hr^T``,
because every program of the next step needs the complete ``h_t``.

Backward, one launch per step (two with projection): the program first forms the
gradient of ``h_t`` (:func:`.common.state_grad`, which includes ``dG_{t+1} W_hh``),
then the gate gradients ``dG_t`` and ``dc_{t-1}`` by :func:`.cellmath.lstm_bwd`.
With projection a state-gradient launch over the ``Hout`` columns forms
``dh_t`` first and the gate launch computes ``dm_t = dh_t W_hr`` in-kernel.
Weight gradients are GEMMs over all steps afterwards (see :mod:`.layer_op`).
"""

from __future__ import annotations

import torch
import triton.language as tl
from torch import Tensor

from . import runtime
from .cellmath import lstm_bwd, lstm_fwd
from .common import finish_state_grad, state_grad
from .configs import pick_step_config
from .tiles import (
    add_gates,
    kernel_jit,
    load_gates,
    packed_ptrs,
    rec_gates,
    rec_tile,
    step_tile,
    store_gates,
    store_state,
)


@kernel_jit
def _lstm_fwd_step_kernel(
    xg_ptr,  # [N, 4H] input projection x W_ih^T + b_ih (x layout)
    w_ptr,  # [4H, HOUT] W_hh
    b_ptr,  # [4H] b_hh (HAS_BIAS)
    hs_ptr,  # [T+1, B, HOUT] hidden-state history
    cs_ptr,  # [T+1, B, H] cell-state history (accumulation dtype)
    gates_ptr,  # [T, B, 4H] saved i, f, g, o (accumulation dtype; WRITE_GATES)
    m_ptr,  # [T, B, H] unprojected output (PROJ)
    y_ptr,  # [N, HOUT] packed output (WRITE_Y)
    xg_row0,  # first row of this step in x / xg / y
    rows_active,  # batch rows computed at this step (packed), else B
    hs_r: tl.int64,  # element offsets: Hs slot read, Hs slot written
    hs_w: tl.int64,
    cs_r: tl.int64,  # Cs slot read, Cs slot written
    cs_w: tl.int64,
    gates_off: tl.int64,  # t * B * 4H: step t in gates
    m_off: tl.int64,  # t * B * H: step t in m
    B,
    H,
    HOUT,
    HAS_BIAS,
    PROJ: tl.constexpr,
    WRITE_Y,
    WRITE_GATES: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    acc_ty = cs_ptr.dtype.element_ty
    rows, units, rmask, umask, act, mask2 = step_tile(B, H, rows_active, BLOCK_B, BLOCK_H)
    amask = act[:, None] & umask[None, :]

    acc_i, acc_f, acc_g, acc_o = rec_gates(
        hs_ptr + hs_r, w_ptr, rows, act, units, umask, H, HOUT, HOUT, 1, 4, acc_ty, PRECISION,
        BLOCK_B, BLOCK_H, BLOCK_K,
    )  # fmt: skip
    xg = packed_ptrs(xg_ptr, xg_row0, rows, units, 4 * H)
    acc_i, acc_f, acc_g, acc_o = add_gates(acc_i, acc_f, acc_g, acc_o, xg, H, amask, 4)
    if HAS_BIAS:
        acc_i, acc_f, acc_g, acc_o = add_gates(acc_i, acc_f, acc_g, acc_o, b_ptr + units, H,
                                               umask, 4)  # fmt: skip

    state = rows[:, None] * H + units[None, :]
    c_prev = tl.load(cs_ptr + cs_r + state, mask=mask2, other=0.0)
    i, f, g, o, c, m = lstm_fwd(acc_i, acc_f, acc_g, acc_o, c_prev)
    tl.store(cs_ptr + cs_w + state, tl.where(act[:, None], c, c_prev), mask=mask2)
    if WRITE_GATES:  # only when a backward can follow (the op's save flag)
        saved = gates_ptr + gates_off + rows[:, None] * (4 * H) + units[None, :]
        store_gates(saved, H, act, mask2, i, f, g, o, 4)

    if PROJ:
        # zeros in inactive rows: the dW_hr GEMM reads every row
        tl.store(m_ptr + m_off + state, tl.where(act[:, None], m, 0.0), mask=mask2)
    else:
        h_prev = tl.load(hs_ptr + hs_r + state, mask=mask2, other=0.0)
        store_state(m, h_prev, hs_ptr + hs_w, y_ptr, xg_row0, rows, rmask, act, units, umask, H,
                    WRITE_Y)  # fmt: skip


@kernel_jit
def _lstm_proj_step_kernel(
    m_ptr,  # [T, B, H] unprojected outputs
    w_ptr,  # [HOUT, H] W_hr
    hs_ptr,  # [T+1, B, HOUT] hidden-state history
    y_ptr,  # [N, HOUT] packed output (WRITE_Y)
    xg_row0,
    rows_active,
    hs_r: tl.int64,
    hs_w: tl.int64,
    m_off: tl.int64,  # offset of step t in m
    B,
    H,
    HOUT,
    WRITE_Y,
    ACC_TY: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rows, cols, rmask, cmask, act, _ = step_tile(B, HOUT, rows_active, BLOCK_B, BLOCK_H)
    acc = rec_tile(m_ptr + m_off, w_ptr, rows, act, cols, cmask, H, H, 1, ACC_TY, PRECISION,
                   BLOCK_B, BLOCK_H, BLOCK_K)  # fmt: skip
    # the tile mask formed after the loop, not held across it (up to 88 registers more)
    h_prev = tl.load(hs_ptr + hs_r + (rows[:, None] * HOUT + cols[None, :]),
                     mask=rmask[:, None] & cmask[None, :], other=0.0)  # fmt: skip
    store_state(acc, h_prev, hs_ptr + hs_w, y_ptr, xg_row0, rows, rmask, act, cols, cmask, HOUT,
                WRITE_Y)  # fmt: skip


@kernel_jit
def _lstm_bwd_step_kernel(
    dg_ptr,  # [T, B, 4H] gate-gradient history (written at step t, read at the previous one)
    w_ptr,  # [4H, HOUT] W_hh
    gates_ptr,  # [T, B, 4H] saved i, f, g, o
    cs_ptr,  # [T+1, B, H] cell-state history
    dh_ptr,  # [B, HOUT] running state gradient (see common.py; not PROJ)
    dc_ptr,  # [B, H] running cell-state gradient
    dhs_ptr,  # [T+1, B, HOUT] gradient of Hs (HAS_DHS)
    dy_ptr,  # [N, HOUT] gradient of the packed output (HAS_DY)
    dcs_ptr,  # [T+1, B, H] gradient of Cs (HAS_DCS)
    dht_ptr,  # [T, B, HOUT] gradient of h_t from the projection launch (PROJ)
    whr_ptr,  # [HOUT, H] W_hr (PROJ)
    y_row0,
    rows_active,
    rows_prev,  # rows active at the step processed before (0 for the first)
    hs_w: tl.int64,  # offset of the Hs slot this step wrote
    cs_r: tl.int64,
    cs_w: tl.int64,
    gates_off: tl.int64,  # t * B * 4H: step t in gates and dG
    dg_prev_off: tl.int64,  # offset of dG of the step processed before
    dht_off: tl.int64,  # t * B * HOUT
    B,
    H,
    HOUT,
    PROJ: tl.constexpr,
    HAS_DHS,
    HAS_DY,
    HAS_DCS,
    PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    acc_ty = dc_ptr.dtype.element_ty
    rows, units, rmask, umask, act, mask2 = step_tile(B, H, rows_active, BLOCK_B, BLOCK_H)

    if PROJ:
        dm = rec_tile(dht_ptr + dht_off, whr_ptr, rows, act, units, umask, HOUT, 1, H, acc_ty,
                      PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)  # fmt: skip
    else:
        dm = state_grad(
            dh_ptr, dg_ptr, w_ptr, dhs_ptr, dy_ptr, dg_prev_off, hs_w, y_row0,
            rows, units, rmask, umask, act, rows < rows_prev, 4 * H, HOUT,
            HAS_DHS, HAS_DY, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K,
        )  # fmt: skip
        tl.store(
            dh_ptr + rows[:, None] * HOUT + units[None, :],
            tl.where(act[:, None], 0.0, dm),
            mask=mask2,
        )

    state = rows[:, None] * H + units[None, :]
    dc = tl.load(dc_ptr + state, mask=mask2, other=0.0)
    if HAS_DCS:
        dc += tl.load(dcs_ptr + cs_w + state, mask=mask2, other=0.0).to(acc_ty)
    c_prev = tl.load(cs_ptr + cs_r + state, mask=mask2, other=0.0)
    c = tl.load(cs_ptr + cs_w + state, mask=mask2, other=0.0)
    saved = gates_ptr + gates_off + rows[:, None] * (4 * H) + units[None, :]
    i, f, g, o = load_gates(saved, H, mask2, 4)
    d_i, d_f, d_g, d_o, dc_prev = lstm_bwd(i, f, g, o, c_prev, c, dm, dc)
    out = dg_ptr + gates_off + rows[:, None] * (4 * H) + units[None, :]
    store_gates(out, H, act, mask2, d_i, d_f, d_g, d_o, 4)
    tl.store(dc_ptr + state, tl.where(act[:, None], dc_prev, dc), mask=mask2)


@kernel_jit
def _lstm_proj_grad_step_kernel(
    dg_ptr,  # [T, B, 4H] gate-gradient history
    w_ptr,  # [4H, HOUT] W_hh
    dh_ptr,  # [B, HOUT] running state gradient
    dhs_ptr,  # [T+1, B, HOUT] gradient of Hs (HAS_DHS)
    dy_ptr,  # [N, HOUT] gradient of the packed output (HAS_DY)
    dht_ptr,  # [T, B, HOUT] out: gradient of h_t (zero in inactive rows)
    y_row0,
    rows_active,
    rows_prev,
    hs_w: tl.int64,
    dht_off: tl.int64,  # t * B * HOUT
    dg_prev_off: tl.int64,
    B,
    H,
    HOUT,
    HAS_DHS,
    HAS_DY,
    PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rows, cols, rmask, cmask, act, mask2 = step_tile(B, HOUT, rows_active, BLOCK_B, BLOCK_H)
    total = state_grad(
        dh_ptr, dg_ptr, w_ptr, dhs_ptr, dy_ptr, dg_prev_off, hs_w, y_row0,
        rows, cols, rmask, cmask, act, rows < rows_prev, 4 * H, HOUT,
        HAS_DHS, HAS_DY, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K,
    )  # fmt: skip
    state = rows[:, None] * HOUT + cols[None, :]
    a = act[:, None]
    tl.store(dh_ptr + state, tl.where(a, 0.0, total), mask=mask2)
    tl.store(
        dht_ptr + dht_off + state,
        tl.where(a, total, 0.0).to(dht_ptr.dtype.element_ty),
        mask=mask2,
    )


def _lstm_fwd(
    xg: Tensor,  # [N, 4H] input projection, b_ih included
    h0: Tensor,  # [B, Hout]
    c0: Tensor,  # [B, H]
    w_hh: Tensor,  # [4H, Hout] contiguous
    b_hh: Tensor | None,  # [4H]
    w_hr: Tensor | None,  # [Hout, H] contiguous
    plan: runtime.Plan,
    packed: bool,
    save: bool = True,
) -> list[Tensor]:
    """Allocate the histories and launch the step kernels. Returns
    ``[Hs [T+1,B,Hout], Cs [T+1,B,H], gates [T,B,4H], m [T,B,H] | empty, y [N,Hout] | empty]``
    (gates empty unless ``save``: only the backward reads them)."""
    T, B = plan.T, plan.B
    H, Hout = w_hh.shape[0] // 4, w_hh.shape[1]
    dt, dev, acc = xg.dtype, xg.device, runtime.acc_dtype(xg.dtype)
    hs = runtime.empty(T + 1, B, Hout, dtype=dt, device=dev)
    hs[plan.first_slot] = h0
    cs = runtime.empty(T + 1, B, H, dtype=acc, device=dev)
    cs[plan.first_slot] = c0
    gates = runtime.empty(T, B, 4 * H, dtype=acc, device=dev) if save else cs.new_empty(0)
    proj = w_hr is not None
    m = runtime.empty(T, B, H, dtype=dt, device=dev) if proj else hs.new_empty(0)
    y = runtime.empty(xg.shape[0], Hout, dtype=dt, device=dev) if packed else hs.new_empty(0)
    cfg = pick_step_config(B, H)
    prec = runtime.dot_precision(dt)
    for s in plan.steps:
        runtime.launch(
            _lstm_fwd_step_kernel, cfg.step_grid(H, B),
            xg, w_hh, b_hh if b_hh is not None else xg, hs, cs, gates,
            m if proj else hs, y if packed else hs,
            s.row0, s.rows, s.slot_r * B * Hout, s.slot_w * B * Hout,
            s.slot_r * B * H, s.slot_w * B * H, s.t * B * 4 * H, s.t * B * H, B, H, Hout,
            HAS_BIAS=b_hh is not None, PROJ=proj, WRITE_Y=packed, WRITE_GATES=save,
            PRECISION=prec, **cfg.launch_kwargs(),
        )  # fmt: skip
        if proj:
            runtime.launch(
                _lstm_proj_step_kernel, cfg.step_grid(Hout, B),
                m, w_hr, hs, y if packed else hs,
                s.row0, s.rows, s.slot_r * B * Hout, s.slot_w * B * Hout, s.t * B * H,
                B, H, Hout,
                WRITE_Y=packed, ACC_TY=tl.float64 if acc == torch.float64 else tl.float32,
                PRECISION=prec, **cfg.launch_kwargs(),
            )  # fmt: skip
    return [hs, cs, gates, m, y]


def _lstm_bwd(
    w_hh: Tensor,  # [4H, Hout] contiguous
    w_hr: Tensor | None,  # [Hout, H] contiguous
    cs: Tensor,  # [T+1, B, H]
    gates: Tensor,  # [T, B, 4H]
    dhs: Tensor | None,  # [T+1, B, Hout] gradient of Hs
    dcs: Tensor | None,  # [T+1, B, H] gradient of Cs
    dy: Tensor | None,  # [N, Hout] gradient of the packed output
    plan: runtime.Plan,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Launch the backward steps. Returns ``dG [T,B,4H]`` (zero in inactive rows),
    ``dh0 [B,Hout]``, ``dc0 [B,H]`` (accumulation dtype) and, with projection,
    ``dh [T,B,Hout]`` (gradient of every projected output, for ``dW_hr``)."""
    T, B = plan.T, plan.B
    H, Hout = w_hh.shape[0] // 4, w_hh.shape[1]
    dt, dev, acc = w_hh.dtype, w_hh.device, cs.dtype
    dg = runtime.empty(T, B, 4 * H, dtype=dt, device=dev)
    dh = torch.zeros(B, Hout, dtype=acc, device=dev)
    dc = torch.zeros(B, H, dtype=acc, device=dev)
    proj = w_hr is not None
    dht = runtime.empty(T, B, Hout, dtype=dt, device=dev) if proj else None
    cfg = pick_step_config(B, H)
    flags = dict(HAS_DHS=dhs is not None, HAS_DY=dy is not None,
                 PRECISION=runtime.dot_precision(dt), **cfg.launch_kwargs())  # fmt: skip
    anyt = dg  # placeholder pointer for absent tensors
    rows_prev, t_prev = 0, 0
    for s in reversed(plan.steps):
        if proj:
            runtime.launch(
                _lstm_proj_grad_step_kernel, cfg.step_grid(Hout, B),
                dg, w_hh, dh, dhs if dhs is not None else anyt, dy if dy is not None else anyt,
                dht, s.row0, s.rows, rows_prev, s.slot_w * B * Hout, s.t * B * Hout,
                t_prev * B * 4 * H, B, H, Hout, **flags,
            )  # fmt: skip
        runtime.launch(
            _lstm_bwd_step_kernel, cfg.step_grid(H, B),
            dg, w_hh, gates, cs, dh, dc,
            dhs if dhs is not None else anyt, dy if dy is not None else anyt,
            dcs if dcs is not None else anyt, dht if proj else anyt, w_hr if proj else anyt,
            s.row0, s.rows, rows_prev, s.slot_w * B * Hout, s.slot_r * B * H, s.slot_w * B * H,
            s.t * B * 4 * H, t_prev * B * 4 * H, s.t * B * Hout, B, H, Hout,
            PROJ=proj, HAS_DCS=dcs is not None, **flags,
        )  # fmt: skip
        rows_prev, t_prev = s.rows, s.t
    finish_state_grad(dh, dg, w_hh, t_prev, rows_prev, dhs, plan)
    if dcs is not None:
        dc += dcs[plan.first_slot]
    return dg, dh, dc, dht
