"""Per-step kernels of the torch.nn cells (LSTM, GRU, Elman RNN) and their launchers: one
forward and one backward kernel, the cell a compile-time constant (``CELL``, as in
:mod:`.persistent`), plus the LSTM's projection kernels (proj_size > 0).

Forward, one launch per step: a program owns BLOCK_B batch rows x BLOCK_H hidden units
and computes the G recurrent parts of those units ``h_prev W_hh,q^T`` in one loop over
``h_prev``, adds ``xg`` and ``b_hh`` and applies the cell (:mod:`.cellmath`):

- LSTM: ``pre_q = xg_q + h_prev W_hh,q^T + b_hh,q``; writes ``c_t``, the gates i, f, g, o
  (saved for the backward) and ``h_t``, or with PROJ the unprojected ``m_t``: every
  program of the next step needs the complete ``h_t``, so a projection launch per step
  writes ``h_t = m_t W_hr^T``;
- GRU: ``r, z = sigmoid(x_q + h_q)``, ``n = tanh(x_n + r * hn)`` with ``h_q = h_prev
  W_hh,q^T + b_hh,q`` (``b_hn`` inside the reset product, as PyTorch) and ``h = (1 - z) n
  + z h_prev``; saves r, z, n, hn;
- RNN: ``h = act(xg + h_prev W_hh^T + b_hh)``; nothing beyond the state history is saved
  (the backward takes the activation's derivative from the output).

Backward, one launch per step (two with projection): the state gradient
(:func:`.common.state_grad`, which folds in ``dG_next W_hh``), then the cell's gate
gradients (:mod:`.cellmath`). With projection a state-gradient launch over the ``Hout``
columns forms ``dh_t`` first and the step kernel computes ``dm_t = dh_t W_hr``. The GRU
writes two gate gradients: ``dG_x = [d pre_r, d pre_z, d pre_n]`` (for W_ih, b_ih, x)
and ``dG_h = [d pre_r, d pre_z, r d pre_n]`` (for W_hh, b_hh, h_prev); its direct term
``dh z`` stays in the running state gradient. Weight gradients are GEMMs over all steps
afterwards (see :mod:`.layer_op`).
"""

from __future__ import annotations

import torch
import triton.language as tl
from torch import Tensor

from ..checks import GATES
from . import runtime
from .cellmath import (
    CELL_CODE,
    GRU,
    LSTM,
    RNN_RELU,
    gru_bwd,
    gru_fwd,
    lstm_bwd,
    lstm_fwd,
    rnn_bwd,
    rnn_fwd,
)
from .common import finish_state_grad, forward_buffers, state_grad
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
    tile_ptrs,
)


@kernel_jit
def _step_fwd_kernel(
    xg_ptr,  # [N, G*H] input projection x W_ih^T + b_ih (x layout)
    w_ptr,  # [G*H, HOUT] W_hh
    b_ptr,  # [G*H] b_hh (HAS_BIAS)
    hs_ptr,  # [T+1, B, HOUT] hidden-state history
    cs_ptr,  # [T+1, B, H] cell-state history (LSTM; accumulation dtype)
    gates_ptr,  # [T, B, 4H] saved LSTM i, f, g, o / GRU r, z, n, hn (WRITE_GATES)
    m_ptr,  # [T, B, H] unprojected output (PROJ)
    y_ptr,  # [N, HOUT] packed output (WRITE_Y)
    xg_row0,  # first row of this step in x / xg / y
    rows_active,  # batch rows computed at this step (packed), else B
    hs_r: tl.int64,  # element offsets: Hs slot read, Hs slot written
    hs_w: tl.int64,
    cs_r: tl.int64,  # Cs slot read, Cs slot written (LSTM)
    cs_w: tl.int64,
    gates_off: tl.int64,  # t * B * 4H: step t in gates
    m_off: tl.int64,  # t * B * H: step t in m
    B,
    H,
    HOUT,  # H unless the LSTM projects
    CELL: tl.constexpr,  # cellmath.LSTM, GRU, RNN_TANH or RNN_RELU
    HAS_BIAS,
    PROJ: tl.constexpr,
    WRITE_Y,
    WRITE_GATES: tl.constexpr,
    ACC_TY: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    G: tl.constexpr = 4 if CELL == LSTM else (3 if CELL == GRU else 1)
    rows, units, rmask, umask, act, mask2 = step_tile(B, H, rows_active, BLOCK_B, BLOCK_H)
    amask = act[:, None] & umask[None, :]
    # only the LSTM's W_hh may be [4H, HOUT]: the others use the one size H throughout
    K = HOUT if CELL == LSTM else H
    p0, p1, p2, p3 = rec_gates(hs_ptr + hs_r, w_ptr, rows, act, units, umask, H, K, K, 1, G,
                               ACC_TY, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)  # fmt: skip
    if CELL == GRU:  # b_hn belongs to the reset product: the bias joins h's parts alone
        if HAS_BIAS:
            p0, p1, p2, _ = add_gates(p0, p1, p2, p2, b_ptr + units, H, umask, 3)
        xg = packed_ptrs(xg_ptr, xg_row0, rows, units, 3 * H)
        x0, x1, x2, _ = load_gates(xg, H, amask, 3)
    else:
        xg = packed_ptrs(xg_ptr, xg_row0, rows, units, G * H)
        p0, p1, p2, p3 = add_gates(p0, p1, p2, p3, xg, H, amask, G)
        if HAS_BIAS:
            p0, p1, p2, p3 = add_gates(p0, p1, p2, p3, b_ptr + units, H, umask, G)

    state = rows[:, None] * H + units[None, :]
    if CELL == LSTM:
        c_prev = tl.load(cs_ptr + cs_r + state, mask=mask2, other=0.0)
        i, f, g, o, c, h_new = lstm_fwd(p0, p1, p2, p3, c_prev)
        tl.store(cs_ptr + cs_w + state, tl.where(act[:, None], c, c_prev), mask=mask2)
        if WRITE_GATES:  # only when a backward can follow (the op's save flag)
            saved = tile_ptrs(gates_ptr + gates_off, rows, units, 4 * H)
            store_gates(saved, H, act, mask2, i, f, g, o, 4)
        if PROJ:
            # zeros in inactive rows: the dW_hr GEMM reads every row
            tl.store(m_ptr + m_off + state, tl.where(act[:, None], h_new, 0.0), mask=mask2)
        else:
            h_prev = tl.load(hs_ptr + hs_r + state, mask=mask2, other=0.0)
    else:
        h_prev = tl.load(hs_ptr + hs_r + state, mask=mask2, other=0.0)
        if CELL == GRU:
            r, z, n, h_new = gru_fwd(x0.to(ACC_TY), x1.to(ACC_TY), x2.to(ACC_TY), p0, p1, p2,
                                     h_prev.to(ACC_TY))  # fmt: skip
            if WRITE_GATES:
                saved = tile_ptrs(gates_ptr + gates_off, rows, units, 4 * H)
                store_gates(saved, H, act, mask2, r, z, n, p2, 4)
        else:
            h_new = rnn_fwd(p0, CELL == RNN_RELU)
    if not PROJ:
        store_state(h_new, h_prev, hs_ptr + hs_w, y_ptr, xg_row0, rows, rmask, act, units, umask,
                    H, WRITE_Y)  # fmt: skip


@kernel_jit
def _step_bwd_kernel(
    dg_ptr,  # [T, B, G*H] out: gate gradients (GRU: the input side, dG_x)
    dgh_ptr,  # [T, B, G*H] GRU: out, recurrent-side dG_h, read at the next launch
    w_ptr,  # [G*H, HOUT] W_hh
    hs_ptr,  # [T+1, B, H] hidden-state history (GRU, RNN)
    cs_ptr,  # [T+1, B, H] cell-state history (LSTM)
    gates_ptr,  # [T, B, 4H] saved gates (LSTM, GRU)
    dh_ptr,  # [B, HOUT] running state gradient (accumulation dtype; see common.py)
    dc_ptr,  # [B, H] running cell-state gradient (LSTM)
    dhs_ptr,  # [T+1, B, HOUT] gradient of Hs (HAS_DHS)
    dy_ptr,  # [N, HOUT] gradient of the packed output (HAS_DY)
    dcs_ptr,  # [T+1, B, H] gradient of Cs (HAS_DCS)
    dht_ptr,  # [T, B, HOUT] gradient of h_t from the projection launch (PROJ)
    whr_ptr,  # [HOUT, H] W_hr (PROJ)
    y_row0,
    rows_active,
    rows_prev,  # rows active at the step processed before (0 for the first)
    hs_r: tl.int64,  # offsets of the Hs slots this step read (GRU) and wrote
    hs_w: tl.int64,
    cs_r: tl.int64,  # offsets of the Cs slots (LSTM)
    cs_w: tl.int64,
    gates_off: tl.int64,  # t * B * 4H: step t in gates (and in the LSTM's dG)
    dg_off: tl.int64,  # t * B * G*H: step t in dG
    dg_prev_off: tl.int64,  # offset of dG_h of the step processed before
    dht_off: tl.int64,  # t * B * HOUT
    B,
    H,
    HOUT,  # H unless the LSTM projects
    CELL: tl.constexpr,
    PROJ: tl.constexpr,
    HAS_DHS,
    HAS_DY,
    HAS_DCS,
    PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    G: tl.constexpr = 4 if CELL == LSTM else (3 if CELL == GRU else 1)
    acc_ty = dh_ptr.dtype.element_ty
    rows, units, rmask, umask, act, mask2 = step_tile(B, H, rows_active, BLOCK_B, BLOCK_H)
    a = act[:, None]
    if PROJ:
        dh = rec_tile(dht_ptr + dht_off, whr_ptr, rows, act, units, umask, HOUT, 1, H, acc_ty,
                      PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)  # fmt: skip
    else:
        K = HOUT if CELL == LSTM else H
        # dG itself but for the GRU: through dg_ptr, so that the compiler sees one tensor
        dg_rec = dgh_ptr if CELL == GRU else dg_ptr
        dh = state_grad(
            dh_ptr, dg_rec, w_ptr, dhs_ptr, dy_ptr, dg_prev_off, hs_w, y_row0,
            rows, units, rmask, umask, act, rows < rows_prev, G * H, K,
            HAS_DHS, HAS_DY, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K,
        )  # fmt: skip
        if CELL == LSTM:  # the state gradient has reached the gates
            tl.store(tile_ptrs(dh_ptr, rows, units, HOUT), tl.where(a, 0.0, dh), mask=mask2)
    state = rows[:, None] * H + units[None, :]
    if CELL == LSTM:
        dc = tl.load(dc_ptr + state, mask=mask2, other=0.0)
        if HAS_DCS:
            dc += tl.load(dcs_ptr + cs_w + state, mask=mask2, other=0.0).to(acc_ty)
        c_prev = tl.load(cs_ptr + cs_r + state, mask=mask2, other=0.0)
        c = tl.load(cs_ptr + cs_w + state, mask=mask2, other=0.0)
        i, f, g, o = load_gates(tile_ptrs(gates_ptr + gates_off, rows, units, 4 * H), H, mask2, 4)
        d_i, d_f, d_g, d_o, dc_prev = lstm_bwd(i, f, g, o, c_prev, c, dh, dc)
        out = tile_ptrs(dg_ptr + gates_off, rows, units, 4 * H)  # dG: the gates' layout
        store_gates(out, H, act, mask2, d_i, d_f, d_g, d_o, 4)
        tl.store(dc_ptr + state, tl.where(a, dc_prev, dc), mask=mask2)
    elif CELL == GRU:
        h_prev = tl.load(hs_ptr + hs_r + state, mask=mask2, other=0.0).to(acc_ty)
        r, z, n, hn = load_gates(tile_ptrs(gates_ptr + gates_off, rows, units, 4 * H), H, mask2, 4)
        d_r, d_z, d_n, d_hn, direct = gru_bwd(r, z, n, hn, h_prev, dh)
        out = dg_off + rows[:, None] * (3 * H) + units[None, :]
        store_gates(dg_ptr + out, H, act, mask2, d_r, d_z, d_n, d_n, 3)
        store_gates(dgh_ptr + out, H, act, mask2, d_r, d_z, d_hn, d_hn, 3)
        tl.store(dh_ptr + state, tl.where(a, direct, dh), mask=mask2)
    else:  # the activation's derivative from the output
        h = tl.load(hs_ptr + hs_w + state, mask=mask2, other=0.0).to(acc_ty)
        d = tl.where(a, rnn_bwd(h, dh, CELL == RNN_RELU), 0.0)
        tl.store(dg_ptr + dg_off + state, d.to(dg_ptr.dtype.element_ty), mask=mask2)
        tl.store(dh_ptr + state, tl.where(a, 0.0, dh), mask=mask2)


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


def step_fwd(
    cell: str,
    xg: Tensor,  # [N, G*H] input projection, b_ih included
    h0: Tensor,  # [B, Hout]
    c0: Tensor | None,  # [B, H] (LSTM)
    w_hh: Tensor,  # [G*H, Hout] contiguous
    b_hh: Tensor | None,  # [G*H]
    w_hr: Tensor | None,  # [Hout, H] contiguous (LSTM)
    plan: runtime.Plan,
    packed: bool,
    save: bool = True,
) -> list[Tensor]:
    """Launch the step kernels; returns their buffers (:func:`.common.forward_buffers`)."""
    B, Hout, H = plan.B, w_hh.shape[1], w_hh.shape[0] // GATES[cell]
    dt = xg.dtype
    lstm, gated, proj = cell == "lstm", cell in ("lstm", "gru"), w_hr is not None
    out = forward_buffers(cell, xg, h0, c0, H, proj, plan, packed, save)
    hs, cs, gates, m, y = out
    cfg = pick_step_config(B, H)
    flags = dict(ACC_TY=runtime.acc_ty(dt), PRECISION=runtime.dot_precision(dt),
                 **cfg.launch_kwargs())  # fmt: skip
    for s in plan.steps:
        # hs stands for the buffers the cell has not (its kernel never reads them)
        runtime.launch(
            _step_fwd_kernel, cfg.step_grid(H, B),
            xg, w_hh, b_hh if b_hh is not None else xg, hs, cs if lstm else hs,
            gates if gated else hs, m if proj else hs, y if packed else hs,
            s.row0, s.rows, s.slot_r * B * Hout, s.slot_w * B * Hout,
            s.slot_r * B * H, s.slot_w * B * H, s.t * B * 4 * H, s.t * B * H, B, H, Hout,
            CELL=CELL_CODE[cell], HAS_BIAS=b_hh is not None, PROJ=proj, WRITE_Y=packed,
            WRITE_GATES=gated and save, **flags,
        )  # fmt: skip
        if proj:
            runtime.launch(
                _lstm_proj_step_kernel, cfg.step_grid(Hout, B),
                m, w_hr, hs, y if packed else hs,
                s.row0, s.rows, s.slot_r * B * Hout, s.slot_w * B * Hout, s.t * B * H,
                B, H, Hout, WRITE_Y=packed, **flags,
            )  # fmt: skip
    return out


def step_bwd(
    cell: str,
    w_hh: Tensor,  # [G*H, Hout] contiguous
    w_hr: Tensor | None,  # [Hout, H] contiguous (LSTM)
    hs: Tensor,  # [T+1, B, Hout]
    cs: Tensor,  # [T+1, B, H] (LSTM)
    gates: Tensor,  # [T, B, 4H] (LSTM, GRU)
    dhs: Tensor | None,  # [T+1, B, Hout] gradient of Hs
    dcs: Tensor | None,  # [T+1, B, H] gradient of Cs
    dy: Tensor | None,  # [N, Hout] gradient of the packed output
    plan: runtime.Plan,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """Launch the backward steps. Returns ``dG_x`` and ``dG_h`` [T,B,G*H] (one tensor but
    for the GRU; zero in inactive rows), ``dh0 [B,Hout]``, ``dc0 [B,H]`` (LSTM; both in the
    accumulation dtype) and, with projection, ``dh [T,B,Hout]`` (gradient of every
    projected output, for ``dW_hr``)."""
    T, B, (GH, Hout) = plan.T, plan.B, w_hh.shape
    H = GH // GATES[cell]
    dt, dev, acc = w_hh.dtype, w_hh.device, runtime.acc_dtype(w_hh.dtype)
    lstm, proj = cell == "lstm", w_hr is not None
    dgx = runtime.empty(T, B, GH, dtype=dt, device=dev)
    dgh = runtime.empty(T, B, GH, dtype=dt, device=dev) if cell == "gru" else dgx
    dh = torch.zeros(B, Hout, dtype=acc, device=dev)
    dc = torch.zeros(B, H, dtype=acc, device=dev) if lstm else None
    dht = runtime.empty(T, B, Hout, dtype=dt, device=dev) if proj else None
    cfg = pick_step_config(B, H)
    flags = dict(HAS_DHS=dhs is not None, HAS_DY=dy is not None,
                 PRECISION=runtime.dot_precision(dt), **cfg.launch_kwargs())  # fmt: skip

    for s, rows_prev, t_prev in plan.backward():
        if proj:
            runtime.launch(
                _lstm_proj_grad_step_kernel, cfg.step_grid(Hout, B),
                dgx, w_hh, dh, *runtime.given(dgx, dhs, dy), dht, s.row0, s.rows, rows_prev,
                s.slot_w * B * Hout, s.t * B * Hout, t_prev * B * GH, B, H, Hout, **flags,
            )  # fmt: skip
        runtime.launch(
            _step_bwd_kernel, cfg.step_grid(H, B),
            dgx, dgh, w_hh, *runtime.given(dgx, hs, cs, gates), dh,
            *runtime.given(dgx, dc, dhs, dy, dcs, dht, w_hr),
            s.row0, s.rows, rows_prev, s.slot_r * B * Hout, s.slot_w * B * Hout, s.slot_r * B * H,
            s.slot_w * B * H, s.t * B * 4 * H, s.t * B * GH, t_prev * B * GH, s.t * B * Hout,
            B, H, Hout, CELL=CELL_CODE[cell], PROJ=proj, HAS_DCS=dcs is not None, **flags,
        )  # fmt: skip
    finish_state_grad(dh, dgh, w_hh, dhs, plan)
    if dcs is not None:
        dc += dcs[plan.first_slot]
    return dgx, dgh, dh, dc, dht
