"""Variant step kernels (layer norm, zoneout, peephole, CIFG) and their launchers: one
forward and one backward kernel, the cell a compile-time constant (``CELL``: LSTM or GRU).

They have the shape of the torch.nn cells' step kernels (:mod:`.step`, whose launcher
:func:`.step.launch_phases` they share): a program walks tiles of BLOCK_B batch rows x
BLOCK_H hidden units with all gates of those units, every step of the sequence in one
cooperative launch whose programs meet at a grid barrier after each phase of a step, or a
launch per phase of each step (the same kernel, ``SYNC`` off). Gate blocks follow the
weights: LSTM i, f, g, o (G = 4) or i, g, o with CIFG (G = 3), GRU r, z, n.

Layer norm needs statistics of whole rows (of ``h W_hh^T`` over all G*H features, of the
LSTM's ``c~`` over H), which no tile holds: each tile writes its rows' partial moments, and
after a barrier every tile merges them (:mod:`.rowstats`). So a normalisation costs a barrier
per step and direction, not a kernel whose program owns whole rows (which would run
``cdiv(B, 16)`` programs at any H, and walk all G*H features of its rows every step). Without
layer norm a step is one phase, as the torch.nn cells' (two with the projection).

Forward phases of a step (``s`` = recurrent part of the gates; a barrier after each)::

    1 (LAYER_NORM)  s_raw = h_prev W_hh^T into Shat; partial moments of its rows
    2               s = LN(s_raw) (saved normalised in Shat, rstd saved) or h_prev W_hh^T,
                    plus b (b_hh + LN bias, so the GRU's b_hn stays inside the reset product)
      GRU           gates with x-part xg (cellmath.gru_fwd), saving r, z, n, s_n; zoneout of
                    the new state into Hs / y (:func:`.rowstats.emit_state`)
      LSTM          gates, candidate c~ (saved), zoneout of c into Cs; saves the gates; with
                    layer norm the partial moments of c~, else m = o tanh(c~) as in 4
    4 (LSTM, LAYER_NORM)  l = LN_c(c~); m = o tanh(l): zoneout into Hs / y, or stored (PROJ)
    8 (PROJ)        h~ = m W_hr^T over the Hout columns; zoneout into Hs / y

Backward phases of a step, from the running gradients ``dh`` (see :mod:`.common`) and the
LSTM's ``dc`` (k_h, k_c are the zoneout keep weights, see :mod:`.cellmath`)::

    1 (PROJ)  dh_t = state_grad(...) over the Hout columns; dh~ = (1 - k_h) dh_t saved in
              dHt; the running dh keeps k_h dh_t, which reaches h_prev directly
    2 GRU     dh_t = state_grad(...), dh~ = (1 - k_h) dh_t, then
                dG_x = [d pre_r, d pre_z, d pre_n]     gradient of xg (x side)
                dG_s = [d pre_r, d pre_z, r d pre_n]   gradient of s (b_hh, LN_hh bias, gain)
                running dh = k_h dh_t + z dh~          (reaches h_prev directly)
              with layer norm the partial row sums of LN_hh's backward
      LSTM    dm = dh~ W_hr (PROJ) or dh~ (dh_t formed here as in 1); d pre_o, dl =
              out_bwd(o, l, dm); with layer norm dl saved and the partial row sums of LN_c's
              backward, else the cell state's gradient as in 4
    4 (LSTM, LAYER_NORM)  dc~ = (1 - k_c) dc_t + LN_c backward of dl + d pre_o w_co; d pre_i,
              d pre_f, d pre_g, dc_prev by cellmath.lstm_variant_bwd, dc_prev += k_c dc_t;
              partial row sums of LN_hh's backward
    8 (LAYER_NORM)  dS_raw = LN backward of dG_s over the G*H features

``dS_raw`` (= ``dG_s`` without layer norm; the LSTM's ``dG_s`` is ``dG_x``) is the gradient
of ``h_prev W_hh^T``, used for ``dW_hh`` and, at the next step, for ``dh_prev``. Parameter
gradients are column sums over all steps afterwards (:mod:`.variants`, :mod:`.layer_op`).
"""

from __future__ import annotations

import functools

import triton
import triton.language as tl
from torch import Tensor

from . import persistent, runtime
from .cellmath import (
    CELL_CODE,
    CIFG,
    GRU,
    LSTM,
    gru_bwd,
    gru_fwd,
    layer_norm_bwd,
    lstm_variant_bwd,
    lstm_variant_fwd,
    lstm_variant_out_bwd,
    sigmoid,
    tanh,
)
from .common import finish_state_grad, forward_buffers, gate_blocks, state_grad, visit
from .configs import pick_variant_config
from .rowstats import (
    emit_state,
    ln_grad_sums,
    merge_moments,
    merge_sums,
    store_partial,
    tile_moments,
    zoneout_weight,
)
from .step import _strides, _tiles, launch_phases
from .sync import grid_barrier
from .tiles import (
    add_gates,
    block_tile,
    kernel_jit,
    load_gates,
    packed_ptrs,
    rec_gates,
    rec_tile,
    store_gates,
    tile_ptrs,
)


@triton.jit
def _offsets(H, CELL: tl.constexpr, OPTIONS: tl.constexpr):
    """``(off_g, off_cf, off_co)``: the offset of the LSTM's g block in the gate tensors and
    of the f and o peephole rows in w_ch (CIFG drops the f gate and its peephole row)."""
    if CIFG & OPTIONS:
        return H, 0, H
    return 2 * H, H, 2 * H


@triton.jit
def peephole_rows(wch_ptr, off_cf, off_co, units, umask, PEEPHOLE: tl.constexpr,
                  ACC_TY: tl.constexpr, BLOCK_H: tl.constexpr):  # fmt: skip
    """The [BLOCK_H] peephole weights ``w_ci, w_cf, w_co`` of the units (zeros without
    peepholes; ``w_cf`` is unused under CIFG)."""
    if PEEPHOLE:
        w_ci = tl.load(wch_ptr + units, mask=umask, other=0.0)
        w_cf = tl.load(wch_ptr + off_cf + units, mask=umask, other=0.0)
        w_co = tl.load(wch_ptr + off_co + units, mask=umask, other=0.0)
    else:
        w_ci = tl.zeros((BLOCK_H,), dtype=ACC_TY)
        w_cf = w_ci
        w_co = w_ci
    return w_ci, w_cf, w_co


@triton.jit
def _program_tiles():
    """``(first tile, stride)`` of the tiles a program visits in a phase: pid, pid + grid,
    ... A launch per phase has a program per tile of its phase, so each visits its own.
    ``SYNC`` is a run-time flag of these kernels (unlike the step kernels' constexpr): one
    compile serves both launches, which halves the variant compiles."""
    return tl.program_id(0), tl.num_programs(0)


@triton.jit
def _sync(sync_ptr, s, n, PER_STEP: tl.constexpr, SYNC, BARRIER: tl.constexpr):
    """The ``n``-th barrier (1, 2, ...) of the launch's step ``s`` (counted from 0), of
    PER_STEP per step, of kind BARRIER (sync.BARRIER_KINDS); nothing in a launch per phase."""
    if SYNC:
        grid_barrier(sync_ptr, s * PER_STEP + n, BARRIER)


@triton.jit
def _lstm_output(m, m_ptr, hs_ptr, mh_ptr, y_ptr, p_h, hs_r, hs_w, row0, rows, rmask, act, units,
                 umask, mask2, H, ZONE_H, PROJ: tl.constexpr, WRITE_Y):  # fmt: skip
    """The LSTM's unprojected output ``m``: stored for the projection phase (PROJ; zero in
    inactive rows, which the dW_hr GEMM reads) or, zoned out, the new state."""
    if PROJ:
        tl.store(m_ptr + rows[:, None] * H + units[None, :], tl.where(act[:, None], m, 0.0),
                 mask=mask2)  # fmt: skip
    else:
        emit_state(m, hs_ptr, mh_ptr, y_ptr, p_h, hs_r, hs_w, row0, rows, rmask, act, units,
                   umask, H, ZONE_H, WRITE_Y)  # fmt: skip


@kernel_jit
def _variant_fwd_kernel(
    xg_ptr,  # [N, GH] input projection (LN_ih and b_ih applied)
    w_ptr,  # [GH, HOUT] W_hh, or [HOUT, GH] W_hh^T (W_T)
    b_ptr,  # [GH] b_hh + LN_hh bias (HAS_BIAS)
    lnw_ptr,  # [GH] LN_hh gain (LAYER_NORM)
    lncw_ptr, lncb_ptr,  # [H] LN_c gain and bias (LSTM, LAYER_NORM)
    wch_ptr,  # [3, H] peephole rows i, f, o; [2, H] i, o with CIFG (PEEPHOLE)
    whr_ptr,  # [HOUT, H] W_hr, or [H, HOUT] W_hr^T (W_T) (PROJ)
    mh_ptr,  # [N, HOUT] zoneout mask of h (ZONE_H == 1)
    mc_ptr,  # [N, H] zoneout mask of c (ZONE_C == 1)
    par_ptr,  # [3] p_h, p_c, layer-norm eps
    hs_ptr,  # [T+1, B, HOUT] hidden-state history
    cs_ptr,  # [T+1, B, H] cell-state history (LSTM; carried, zoned-out)
    gates_ptr,  # [T, B, 4H] saved LSTM i, f, g, o / GRU r, z, n, s_n
    ct_ptr,  # [T, B, H] saved candidate cell state c~ (LSTM)
    shat_ptr,  # [T, B, GH] saved normalised recurrent projection (LAYER_NORM)
    chat_ptr,  # [T, B, H] saved normalised c~ (LSTM, LAYER_NORM)
    rstd_ptr,  # [T, B, 2] saved rstd of the recurrent projection and of c~; GRU [T, B, 1]
    m_ptr,  # [T, B, H] unprojected output (PROJ)
    y_ptr,  # [N, HOUT] packed output (WRITE_Y)
    part_ptr,  # [2, cdiv(H, BLOCK_H), B, 2] partial moments of a step: of s_raw, of c~ (LSTM)
    steps_ptr,  # [T, 2] int32: first row of step t in xg / y / masks, active rows at t
    sync_ptr,  # int32 barrier state, zero at launch (SYNC; sync.barrier_state)
    s_begin: tl.int64, s_end: tl.int64,  # steps s_begin .. s_end - 1 of the visiting order
    phases,  # of each step (see the module docstring), one bit per launch or all of them
    T: tl.int64, B, H, HOUT,  # HOUT: H unless the LSTM projects
    CELL: tl.constexpr,  # cellmath.LSTM or GRU
    HAS_BIAS, LAYER_NORM: tl.constexpr, PEEPHOLE: tl.constexpr,
    OPTIONS: tl.constexpr,  # the bool options' bits (cellmath.option_bits)
    PROJ: tl.constexpr,
    ZONE_H, ZONE_C,  # 0 off, 1 mask, 2 evaluation (p)
    REVERSE,  # run-time (common.visit): one compile for both directions
    SYNC,  # a grid barrier after each phase (cooperative launch); see _program_tiles
    WRITE_Y, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    W_T: tl.constexpr = False,  # the weights transposed (runtime.weights_transposed)
    BARRIER: tl.constexpr = 0,  # the grid barrier's kind (sync.BARRIER_KINDS; SYNC)
):  # fmt: skip
    acc_ty: tl.constexpr = gates_ptr.dtype.element_ty
    G: tl.constexpr = gate_blocks(CELL, OPTIONS)
    STATS: tl.constexpr = 2 if CELL == LSTM else 1
    LN_C: tl.constexpr = LAYER_NORM and CELL == LSTM
    # barriers per step: after phases 1 (LAYER_NORM), 2, 4 (LN_C) and 8 (PROJ)
    N1: tl.constexpr = 1 if LAYER_NORM else 0
    N4: tl.constexpr = N1 + 2 if LN_C else N1 + 1
    PER_STEP: tl.constexpr = N4 + 1 if PROJ else N4
    # only the LSTM's W_hh may be [GH, HOUT]: the GRU uses the one size H throughout
    K = HOUT if CELL == LSTM else H
    GH = G * H
    w_f, w_k = _strides(K, GH, W_T)  # as the step kernel's
    r_f, r_k = _strides(H, HOUT, W_T)
    col_blocks, tiles = _tiles(B, H, BLOCK_B, BLOCK_H)
    first, every = _program_tiles()
    p_h, p_c, eps = tl.load(par_ptr), tl.load(par_ptr + 1), tl.load(par_ptr + 2)
    # (the tuple indexed: a name ``_`` here would clash with the loops' in compiled code)
    offsets = _offsets(H, CELL, OPTIONS)
    off_cf, off_co = offsets[1], offsets[2]
    part_c = part_ptr + col_blocks * B * 2
    for s in range(s_begin, s_end):
        t, slot_r, slot_w, row0, rows_active = visit(s, T, steps_ptr, REVERSE, False)
        hs_r, hs_w = slot_r * B * HOUT, slot_w * B * HOUT
        shat, gates, h_off = shat_ptr + t * B * GH, gates_ptr + t * B * 4 * H, t * B * H
        stat = rstd_ptr + t * B * STATS
        if LAYER_NORM:  # 1: the raw recurrent projection and its partial moments
            for tile in range(first, tiles, every):
                if phases & 1:
                    rows, units, rmask, umask, act, mask2 = block_tile(
                        tile, col_blocks, B, H, rows_active, BLOCK_B, BLOCK_H
                    )
                    r0, r1, r2, r3 = rec_gates(hs_ptr + hs_r, w_ptr, rows, act, units, umask, H,
                                               K, w_f, w_k, G, acc_ty, PRECISION, BLOCK_B,
                                               BLOCK_H, BLOCK_K)  # fmt: skip
                    store_gates(tile_ptrs(shat, rows, units, GH), H, act, mask2, r0, r1, r2, r3, G)
                    mean, m2 = tile_moments(r0, r1, r2, r3, umask, G)
                    store_partial(part_ptr, tile % col_blocks, B, rows, rmask, mean, m2)
            _sync(sync_ptr, s - s_begin, N1, PER_STEP, SYNC, BARRIER)
        for tile in range(first, tiles, every):  # 2: the gates
            if phases & 2:
                rows, units, rmask, umask, act, mask2 = block_tile(
                    tile, col_blocks, B, H, rows_active, BLOCK_B, BLOCK_H
                )
                a = act[:, None]
                if LAYER_NORM:
                    mean, rstd = merge_moments(part_ptr, rows, rmask, B, H, eps, G, acc_ty,
                                               BLOCK_B, BLOCK_H)  # fmt: skip
                    at = tile_ptrs(shat, rows, units, GH)
                    s0, s1, s2, s3 = load_gates(at, H, mask2, G)
                    s0 = tl.where(a, (s0 - mean[:, None]) * rstd[:, None], 0.0)
                    s1 = tl.where(a, (s1 - mean[:, None]) * rstd[:, None], 0.0)
                    s2 = tl.where(a, (s2 - mean[:, None]) * rstd[:, None], 0.0)
                    s3 = tl.where(a, (s3 - mean[:, None]) * rstd[:, None], 0.0)
                    store_gates(at, H, act, mask2, s0, s1, s2, s3, G)  # the saved xhat
                    s0, s1, s2, s3 = _gain(s0, s1, s2, s3, lnw_ptr + units, H, umask, G)
                    tl.store(stat + rows * STATS, tl.where(act, rstd, 0.0),
                             mask=rmask & (tile % col_blocks == 0))  # fmt: skip
                else:
                    s0, s1, s2, s3 = rec_gates(hs_ptr + hs_r, w_ptr, rows, act, units, umask, H,
                                               K, w_f, w_k, G, acc_ty, PRECISION, BLOCK_B,
                                               BLOCK_H, BLOCK_K)  # fmt: skip
                if HAS_BIAS:
                    s0, s1, s2, s3 = add_gates(s0, s1, s2, s3, b_ptr + units, H, umask, G)
                # the input parts after the recurrent ones: fewer registers than interleaved
                x0, x1, x2, x3 = load_gates(packed_ptrs(xg_ptr, row0, rows, units, GH), H,
                                            a & umask[None, :], G)  # fmt: skip
                state = rows[:, None] * H + units[None, :]
                if CELL == GRU:
                    h_prev = tl.load(hs_ptr + hs_r + state, mask=mask2, other=0.0)
                    r, z, n, h = gru_fwd(x0, x1, x2, s0, s1, s2, h_prev, OPTIONS)
                    store_gates(tile_ptrs(gates, rows, units, 4 * H), H, act, mask2, r, z, n, s2, 4)
                    emit_state(h, hs_ptr, mh_ptr, y_ptr, p_h, hs_r, hs_w, row0, rows, rmask, act,
                               units, umask, H, ZONE_H, WRITE_Y)  # fmt: skip
                else:
                    pre_i, pre_f, pre_g, pre_o = x0 + s0, x1 + s1, x2 + s2, x3 + s3
                    if CIFG & OPTIONS:  # gate blocks i, g, o (pre_f unused)
                        pre_f, pre_g, pre_o = pre_i, pre_f, pre_g
                    w_ci, w_cf, w_co = peephole_rows(wch_ptr, off_cf, off_co, units, umask,
                                                     PEEPHOLE, acc_ty, BLOCK_H)  # fmt: skip
                    c_prev = tl.load(cs_ptr + slot_r * B * H + state, mask=mask2, other=0.0)
                    i, f, g, c = lstm_variant_fwd(pre_i, pre_f, pre_g, c_prev, w_ci, w_cf,
                                                  PEEPHOLE, OPTIONS)  # fmt: skip
                    o = sigmoid(pre_o + w_co[None, :] * c)
                    k = zoneout_weight(mc_ptr, p_c, ZONE_C, row0, rows, act, units, umask, H, c)
                    c_kept = tl.where(a, k * c_prev + (1.0 - k) * c, c_prev)  # zoned out
                    tl.store(cs_ptr + slot_w * B * H + state, c_kept, mask=mask2)
                    store_gates(tile_ptrs(gates, rows, units, 4 * H), H, act, mask2, i, f, g, o, 4)
                    c = tl.where(a, c, 0.0)
                    tl.store(ct_ptr + h_off + state, c, mask=mask2)
                    if LAYER_NORM:
                        mean, m2 = tile_moments(c, c, c, c, umask, 1)
                        store_partial(part_c, tile % col_blocks, B, rows, rmask, mean, m2)
                    else:
                        _lstm_output(o * tanh(c), m_ptr + h_off, hs_ptr, mh_ptr, y_ptr, p_h, hs_r,
                                     hs_w, row0, rows, rmask, act, units, umask, mask2, H, ZONE_H,
                                     PROJ, WRITE_Y)  # fmt: skip
        _sync(sync_ptr, s - s_begin, N1 + 1, PER_STEP, SYNC, BARRIER)
        if LN_C:  # 4: the output m = o tanh(LN_c(c~))
            for tile in range(first, tiles, every):
                if phases & 4:
                    rows, units, rmask, umask, act, mask2 = block_tile(
                        tile, col_blocks, B, H, rows_active, BLOCK_B, BLOCK_H
                    )
                    mean, rstd = merge_moments(part_c, rows, rmask, B, H, eps, 1, acc_ty, BLOCK_B,
                                               BLOCK_H)  # fmt: skip
                    tl.store(stat + rows * 2 + 1, tl.where(act, rstd, 0.0),
                             mask=rmask & (tile % col_blocks == 0))  # fmt: skip
                    state = rows[:, None] * H + units[None, :]
                    c = tl.load(ct_ptr + h_off + state, mask=mask2, other=0.0)
                    o = tl.load(tile_ptrs(gates, rows, units, 4 * H) + 3 * H, mask=mask2, other=0.0)
                    chat = tl.where(act[:, None], (c - mean[:, None]) * rstd[:, None], 0.0)
                    tl.store(chat_ptr + h_off + state, chat, mask=mask2)
                    lw = tl.load(lncw_ptr + units, mask=umask, other=0.0)
                    lb = tl.load(lncb_ptr + units, mask=umask, other=0.0)
                    m = o * tanh(chat * lw[None, :] + lb[None, :])
                    _lstm_output(m, m_ptr + h_off, hs_ptr, mh_ptr, y_ptr, p_h, hs_r, hs_w, row0,
                                 rows, rmask, act, units, umask, mask2, H, ZONE_H, PROJ,
                                 WRITE_Y)  # fmt: skip
            _sync(sync_ptr, s - s_begin, N4, PER_STEP, SYNC, BARRIER)
        if PROJ:  # 8: h~ = m W_hr^T
            out_blocks, out_tiles = _tiles(B, HOUT, BLOCK_B, BLOCK_H)
            for tile in range(first, out_tiles, every):
                if phases & 8:
                    rows, cols, rmask, cmask, act, _ = block_tile(
                        tile, out_blocks, B, HOUT, rows_active, BLOCK_B, BLOCK_H
                    )
                    hn = rec_tile(m_ptr + h_off, whr_ptr, rows, act, cols, cmask, H, r_f, r_k,
                                  acc_ty, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)  # fmt: skip
                    emit_state(hn, hs_ptr, mh_ptr, y_ptr, p_h, hs_r, hs_w, row0, rows, rmask, act,
                               cols, cmask, HOUT, ZONE_H, WRITE_Y)  # fmt: skip
            _sync(sync_ptr, s - s_begin, PER_STEP, PER_STEP, SYNC, BARRIER)


@triton.jit
def _gain(s0, s1, s2, s3, w_ptr, H, umask, G: tl.constexpr):
    """The gate tiles q < G times their rows of the gain at ``w_ptr + q * H``."""
    w0, w1, w2, w3 = load_gates(w_ptr, H, umask, G)
    return s0 * w0[None, :], s1 * w1[None, :], s2 * w2[None, :], s3 * w3[None, :]


@triton.jit
def _zoned_state_grad(dh_ptr, ds_ptr, w_ptr, dhs_ptr, dy_ptr, mh_ptr, p_h, ds_prev_off, hs_w, row0,
                      rows, cols, rmask, cmask, act, prev, GH, W, ZONE_H, HAS_DHS, HAS_DY,
                      PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                      BLOCK_K: tl.constexpr):  # fmt: skip
    """``(dh_t, k_h)``: the gradient of the state a step writes in the tile's ``W`` columns
    (:func:`.common.state_grad`, with ``dS_raw`` of the step processed before at
    ``ds_prev_off``) and its zoneout keep weight."""
    total = state_grad(dh_ptr, ds_ptr, w_ptr, dhs_ptr, dy_ptr, ds_prev_off, hs_w, row0, rows, cols,
                       rmask, cmask, act, prev, GH, W, HAS_DHS, HAS_DY, PRECISION, BLOCK_B,
                       BLOCK_H, BLOCK_K)  # fmt: skip
    return total, zoneout_weight(mh_ptr, p_h, ZONE_H, row0, rows, act, cols, cmask, W, total)


@triton.jit
def _lstm_cell_bwd(dl, d_o, dc_ptr, dcs_ptr, cs_ptr, mc_ptr, wch_ptr, gates, dg, p_c, cs_r, cs_w,
                   row0, rows, act, units, umask, mask2, H, GH, ZONE_C, HAS_DCS,
                   PEEPHOLE: tl.constexpr, OPTIONS: tl.constexpr, ACC_TY: tl.constexpr,
                   BLOCK_H: tl.constexpr):  # fmt: skip
    """The LSTM's cell-state gradient and gate gradients of a tile from ``dl`` (of c~ through
    the output, LN_c's backward applied) and ``d pre_o``: stores ``dG`` (``dg`` [B, GH], the
    step's) and the running ``dc``; returns ``(d pre_i, d pre_f, d pre_g)``, zero in inactive
    rows."""
    a = act[:, None]
    off_g, off_cf, off_co = _offsets(H, LSTM, OPTIONS)
    state = rows[:, None] * H + units[None, :]
    dc_t = tl.load(dc_ptr + state, mask=mask2, other=0.0)
    if HAS_DCS:
        dc_t += tl.load(dcs_ptr + cs_w + state, mask=mask2, other=0.0)
    k = zoneout_weight(mc_ptr, p_c, ZONE_C, row0, rows, act, units, umask, H, dc_t)
    dc = (1.0 - k) * dc_t + dl
    w_ci, w_cf, w_co = peephole_rows(wch_ptr, off_cf, off_co, units, umask, PEEPHOLE, ACC_TY,
                                     BLOCK_H)  # fmt: skip
    if PEEPHOLE:
        dc += d_o * w_co[None, :]
    i, f, g, _ = load_gates(tile_ptrs(gates, rows, units, 4 * H), H, mask2, 3)
    c_prev = tl.load(cs_ptr + cs_r + state, mask=mask2, other=0.0)
    d_i, d_f, d_g, dc_prev = lstm_variant_bwd(i, f, g, c_prev, dc, w_ci, w_cf, PEEPHOLE, OPTIONS)
    tl.store(dc_ptr + state, tl.where(a, dc_prev + k * dc_t, dc_t), mask=mask2)
    d_i = tl.where(a, d_i, 0.0)
    d_f = tl.where(a, d_f, 0.0)
    d_g = tl.where(a, d_g, 0.0)
    gate = tile_ptrs(dg, rows, units, GH)
    tl.store(gate, d_i, mask=mask2)
    tl.store(gate + off_g, d_g, mask=mask2)
    tl.store(gate + GH - H, d_o, mask=mask2)
    if not (CIFG & OPTIONS):
        tl.store(gate + H, d_f, mask=mask2)
    return d_i, d_f, d_g


@kernel_jit
def _variant_bwd_kernel(
    dg_ptr,  # [T, B, GH] out: gradient of the gate pre-activations dG_x (of xg)
    dgs_ptr,  # [T, B, GH] out: GRU's gradient dG_s of s (the LSTM's is dG_x)
    ds_ptr,  # [T, B, GH] out: dS_raw (LAYER_NORM; else dG_s itself), read at the next step
    w_ptr, whr_ptr, lnw_ptr, lncw_ptr, lncb_ptr, wch_ptr, mh_ptr, mc_ptr, par_ptr, hs_ptr,
    cs_ptr, gates_ptr, ct_ptr, shat_ptr, chat_ptr, rstd_ptr,  # as the forward kernel's
    dh_ptr,  # [B, HOUT] running state gradient (see common.py)
    dc_ptr,  # [B, H] running cell-state gradient (LSTM)
    dhs_ptr,  # [T+1, B, HOUT] gradient of Hs (HAS_DHS)
    dy_ptr,  # [N, HOUT] gradient of the packed output (HAS_DY)
    dcs_ptr,  # [T+1, B, H] gradient of Cs (HAS_DCS)
    dht_ptr,  # [T, B, HOUT] out: gradient of h~ (before zoneout; LSTM, PROJ)
    dl_ptr,  # [T, B, H] out: gradient of l = LN_c(c~) (LSTM, LAYER_NORM)
    part_ptr,  # [2, cdiv(H, BLOCK_H), B, 2] partial row sums of a step: of LN_hh's backward,
    # of LN_c's (LSTM)
    steps_ptr, sync_ptr,  # as the forward kernel's
    s_begin: tl.int64, s_end: tl.int64,  # as the forward kernel's, in backward order
    phases,  # as the forward kernel's (see the module docstring)
    T: tl.int64, B, H, HOUT, CELL: tl.constexpr, LAYER_NORM: tl.constexpr,
    PEEPHOLE: tl.constexpr, OPTIONS: tl.constexpr, PROJ: tl.constexpr, ZONE_H, ZONE_C,
    REVERSE, SYNC, HAS_DHS, HAS_DY, HAS_DCS, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    BARRIER: tl.constexpr = 0,  # as the forward kernel's
):  # fmt: skip
    acc_ty: tl.constexpr = dh_ptr.dtype.element_ty
    G: tl.constexpr = gate_blocks(CELL, OPTIONS)
    STATS: tl.constexpr = 2 if CELL == LSTM else 1
    LN_C: tl.constexpr = LAYER_NORM and CELL == LSTM
    # barriers per step: after phases 1 (PROJ), 2, 4 (LN_C) and 8 (LAYER_NORM)
    N2: tl.constexpr = 2 if PROJ else 1
    N4: tl.constexpr = N2 + 1 if LN_C else N2
    PER_STEP: tl.constexpr = N4 + 1 if LAYER_NORM else N4
    GH = G * H
    col_blocks, tiles = _tiles(B, H, BLOCK_B, BLOCK_H)
    first, every = _program_tiles()
    p_h, p_c = tl.load(par_ptr), tl.load(par_ptr + 1)
    off_g = _offsets(H, CELL, OPTIONS)[0]
    off_o = GH - H
    part_c = part_ptr + col_blocks * B * 2
    for s in range(s_begin, s_end):
        t, slot_r, slot_w, row0, rows_active = visit(s, T, steps_ptr, REVERSE, True)
        # the step processed just before (the next one in time): none for the first
        t_prev = t + 1
        if REVERSE:
            t_prev = t - 1
        rows_prev = tl.load(steps_ptr + 2 * t_prev + 1, mask=s > 0, other=0)
        hs_w, cs_r, cs_w = slot_w * B * HOUT, slot_r * B * H, slot_w * B * H
        gates, dg, h_off = gates_ptr + t * B * 4 * H, dg_ptr + t * B * GH, t * B * H
        stat = rstd_ptr + t * B * STATS
        if PROJ:  # 1: dh_t over the projected state, which dm = dh~ W_hr reads whole
            out_blocks, out_tiles = _tiles(B, HOUT, BLOCK_B, BLOCK_H)
            for tile in range(first, out_tiles, every):
                if phases & 1:
                    rows, cols, rmask, cmask, act, mask2 = block_tile(
                        tile, out_blocks, B, HOUT, rows_active, BLOCK_B, BLOCK_H
                    )
                    total, k = _zoned_state_grad(
                        dh_ptr, ds_ptr, w_ptr, dhs_ptr, dy_ptr, mh_ptr, p_h, t_prev * B * GH, hs_w,
                        row0, rows, cols, rmask, cmask, act, rows < rows_prev, GH, HOUT, ZONE_H,
                        HAS_DHS, HAS_DY, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K,
                    )  # fmt: skip
                    state = rows[:, None] * HOUT + cols[None, :]
                    a = act[:, None]
                    tl.store(dht_ptr + t * B * HOUT + state, tl.where(a, (1.0 - k) * total, 0.0),
                             mask=mask2)  # fmt: skip
                    tl.store(dh_ptr + state, tl.where(a, k * total, total), mask=mask2)
            _sync(sync_ptr, s - s_begin, 1, PER_STEP, SYNC, BARRIER)
        for tile in range(first, tiles, every):  # 2
            if phases & 2:
                rows, units, rmask, umask, act, mask2 = block_tile(
                    tile, col_blocks, B, H, rows_active, BLOCK_B, BLOCK_H
                )
                a = act[:, None]
                state = rows[:, None] * H + units[None, :]
                if PROJ:
                    dm = rec_tile(dht_ptr + t * B * HOUT, whr_ptr, rows, act, units, umask, HOUT,
                                  1, H, acc_ty, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)  # fmt: skip
                    total = dm
                    k = dm
                else:  # HOUT == H
                    total, k = _zoned_state_grad(
                        dh_ptr, ds_ptr, w_ptr, dhs_ptr, dy_ptr, mh_ptr, p_h, t_prev * B * GH, hs_w,
                        row0, rows, units, rmask, umask, act, rows < rows_prev, GH, H, ZONE_H,
                        HAS_DHS, HAS_DY, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K,
                    )  # fmt: skip
                    dm = (1.0 - k) * total
                if CELL == GRU:
                    h_prev = tl.load(hs_ptr + slot_r * B * H + state, mask=mask2, other=0.0)
                    r, z, n, s_n = load_gates(tile_ptrs(gates, rows, units, 4 * H), H, mask2, 4)
                    d_r, d_z, d_n, d_sn, direct = gru_bwd(r, z, n, s_n, h_prev, dm, OPTIONS)
                    tl.store(dh_ptr + state, tl.where(a, direct + k * total, total), mask=mask2)
                    out = t * B * GH + rows[:, None] * GH + units[None, :]
                    store_gates(dg_ptr + out, H, act, mask2, d_r, d_z, d_n, d_n, 3)
                    store_gates(dgs_ptr + out, H, act, mask2, d_r, d_z, d_sn, d_sn, 3)
                    if LAYER_NORM:
                        lnw, shat = lnw_ptr + units, shat_ptr + out
                        sum_d = tl.zeros((BLOCK_B,), dtype=acc_ty)
                        sum_d, sum_dx = ln_grad_sums(sum_d, sum_d, tl.where(a, d_r, 0.0), lnw,
                                                     shat, umask, mask2)  # fmt: skip
                        sum_d, sum_dx = ln_grad_sums(sum_d, sum_dx, tl.where(a, d_z, 0.0),
                                                     lnw + H, shat + H, umask, mask2)  # fmt: skip
                        sum_d, sum_dx = ln_grad_sums(sum_d, sum_dx, tl.where(a, d_sn, 0.0),
                                                     lnw + 2 * H, shat + 2 * H, umask,
                                                     mask2)  # fmt: skip
                        store_partial(part_ptr, tile % col_blocks, B, rows, rmask, sum_d, sum_dx)
                else:
                    if not PROJ:  # the part of dh_t that reaches h_prev directly
                        tl.store(dh_ptr + state, tl.where(a, k * total, total), mask=mask2)
                    o = tl.load(tile_ptrs(gates, rows, units, 4 * H) + 3 * H, mask=mask2,
                                other=0.0)  # fmt: skip
                    if LAYER_NORM:
                        chat = tl.load(chat_ptr + h_off + state, mask=mask2, other=0.0)
                        lw = tl.load(lncw_ptr + units, mask=umask, other=0.0)
                        lb = tl.load(lncb_ptr + units, mask=umask, other=0.0)
                        l = chat * lw[None, :] + lb[None, :]
                    else:
                        l = tl.load(ct_ptr + h_off + state, mask=mask2, other=0.0)
                    d_o, dl = lstm_variant_out_bwd(o, l, dm)
                    d_o = tl.where(a, d_o, 0.0)
                    dl = tl.where(a, dl, 0.0)
                    if LAYER_NORM:  # LN_c's row sums first: the rest is phase 4's
                        tl.store(dg + rows[:, None] * GH + off_o + units[None, :], d_o, mask=mask2)
                        tl.store(dl_ptr + h_off + state, dl, mask=mask2)
                        dchat = dl * lw[None, :]
                        sum_d, sum_dx = tl.sum(dchat, axis=1), tl.sum(dchat * chat, axis=1)
                        store_partial(part_c, tile % col_blocks, B, rows, rmask, sum_d, sum_dx)
                    else:
                        _lstm_cell_bwd(dl, d_o, dc_ptr, dcs_ptr, cs_ptr, mc_ptr, wch_ptr, gates,
                                       dg, p_c, cs_r, cs_w, row0, rows, act, units, umask, mask2,
                                       H, GH, ZONE_C, HAS_DCS, PEEPHOLE, OPTIONS, acc_ty,
                                       BLOCK_H)  # fmt: skip
        _sync(sync_ptr, s - s_begin, N2, PER_STEP, SYNC, BARRIER)
        if LN_C:  # 4: through LN_c to the cell state and the other gates; LN_hh's row sums
            for tile in range(first, tiles, every):
                if phases & 4:
                    rows, units, rmask, umask, act, mask2 = block_tile(
                        tile, col_blocks, B, H, rows_active, BLOCK_B, BLOCK_H
                    )
                    sum_d, sum_dx = merge_sums(part_c, rows, rmask, B, H, acc_ty, BLOCK_B,
                                               BLOCK_H)  # fmt: skip
                    state = rows[:, None] * H + units[None, :]
                    lw = tl.load(lncw_ptr + units, mask=umask, other=0.0)
                    chat = tl.load(chat_ptr + h_off + state, mask=mask2, other=0.0)
                    dl = tl.load(dl_ptr + h_off + state, mask=mask2, other=0.0)
                    rstd = tl.load(stat + rows * 2 + 1, mask=rmask, other=0.0)
                    dl = layer_norm_bwd(dl * lw[None, :], chat, rstd, sum_d / H, sum_dx / H)
                    gate = tile_ptrs(dg, rows, units, GH)
                    d_o = tl.load(gate + off_o, mask=mask2, other=0.0)
                    d_i, d_f, d_g = _lstm_cell_bwd(
                        dl, d_o, dc_ptr, dcs_ptr, cs_ptr, mc_ptr, wch_ptr, gates, dg, p_c, cs_r,
                        cs_w, row0, rows, act, units, umask, mask2, H, GH, ZONE_C, HAS_DCS,
                        PEEPHOLE, OPTIONS, acc_ty, BLOCK_H,
                    )  # fmt: skip
                    lnw, shat = lnw_ptr + units, tile_ptrs(shat_ptr + t * B * GH, rows, units, GH)
                    sum_d = tl.zeros((BLOCK_B,), dtype=acc_ty)
                    sum_d, sum_dx = ln_grad_sums(sum_d, sum_d, d_i, lnw, shat, umask, mask2)
                    sum_d, sum_dx = ln_grad_sums(sum_d, sum_dx, d_g, lnw + off_g, shat + off_g,
                                                 umask, mask2)  # fmt: skip
                    sum_d, sum_dx = ln_grad_sums(sum_d, sum_dx, d_o, lnw + off_o, shat + off_o,
                                                 umask, mask2)  # fmt: skip
                    if not (CIFG & OPTIONS):
                        sum_d, sum_dx = ln_grad_sums(sum_d, sum_dx, d_f, lnw + H, shat + H, umask,
                                                     mask2)  # fmt: skip
                    store_partial(part_ptr, tile % col_blocks, B, rows, rmask, sum_d, sum_dx)
            _sync(sync_ptr, s - s_begin, N4, PER_STEP, SYNC, BARRIER)
        if LAYER_NORM:  # 8: through LN_hh to h_prev W_hh^T; dS_raw zero in inactive rows
            for tile in range(first, tiles, every):
                if phases & 8:
                    rows, units, rmask, umask, act, mask2 = block_tile(
                        tile, col_blocks, B, H, rows_active, BLOCK_B, BLOCK_H
                    )
                    sum_d, sum_dx = merge_sums(part_ptr, rows, rmask, B, H, acc_ty, BLOCK_B,
                                               BLOCK_H)  # fmt: skip
                    rstd = tl.load(stat + rows * STATS, mask=rmask, other=0.0)
                    at = t * B * GH + rows[:, None] * GH + units[None, :]
                    # dG_s: dG itself but for the GRU
                    g0, g1, g2, g3 = load_gates((dgs_ptr if CELL == GRU else dg_ptr) + at, H,
                                                mask2, G)  # fmt: skip
                    g0, g1, g2, g3 = _gain(g0, g1, g2, g3, lnw_ptr + units, H, umask, G)
                    x0, x1, x2, x3 = load_gates(shat_ptr + at, H, mask2, G)
                    mean_d, mean_dx = sum_d / GH, sum_dx / GH
                    store_gates(ds_ptr + at, H, act, mask2,
                                layer_norm_bwd(g0, x0, rstd, mean_d, mean_dx),
                                layer_norm_bwd(g1, x1, rstd, mean_d, mean_dx),
                                layer_norm_bwd(g2, x2, rstd, mean_d, mean_dx),
                                layer_norm_bwd(g3, x3, rstd, mean_d, mean_dx), G)  # fmt: skip
            _sync(sync_ptr, s - s_begin, PER_STEP, PER_STEP, SYNC, BARRIER)


def variant_buffers(like: Tensor, cell: str, T: int, B: int, H: int, Hout: int, GH: int,
                    ln: bool, proj: bool, packed: bool) -> list[Tensor]:  # fmt: skip
    """The forward's buffers in ``like``'s dtype (float32 or float64, its own accumulation
    dtype): :func:`.common.forward_buffers` ``[Hs, Cs, gates, m, y]`` with the gates always
    saved, and after the gates ``ct [T,B,H], shat [T,B,GH], chat [T,B,H], rstd [T,B,STATS]``
    (STATS = 2 rstds per row for the LSTM, 1 for the GRU), empty where unused: the GRU uses
    Hs, gates, shat, rstd and y."""
    lstm = cell == "lstm"
    hs, cs, gates, m, y = forward_buffers(cell, like, T, B, Hout, H, proj, packed, True)
    buf = functools.partial(runtime.buffer, like)
    return [hs, cs, gates, buf(T, B, H, on=lstm), buf(T, B, GH, on=ln),
            buf(T, B, H, on=ln and lstm), buf(T, B, 2 if lstm else 1, on=ln), m, y]  # fmt: skip


def variant_path(plan: runtime.Plan) -> str:
    """Which launch runs a variant layer: "cooperative" (every step in one launch) or "step"
    (a launch per phase of each step: when forced, and for empty sequences); the persistent
    and resident kernels have no variant."""
    forced = persistent.forced_path()
    if forced in ("persistent", "resident"):
        raise ValueError(f"the variant kernels have no {forced} path")
    if forced is not None:
        return forced
    return "step" if plan.T == 0 else "cooperative"


def _launch(kernel, tensors, sizes, flags, plan, like, backward) -> None:
    """Allocate the partial buffer and launch ``kernel`` (:func:`.step.launch_phases`):
    ``tensors`` are its pointer arguments before ``part``, ``sizes`` its ``B, H, HOUT``,
    ``flags`` its constexprs but the block configuration, ``like`` a tensor of the
    accumulation dtype."""
    B, H, Hout = sizes
    path = variant_path(plan)
    dtype = str(like.dtype).removeprefix("torch.")
    # one config for both launches: they are one compile (see _program_tiles)
    cfg = pick_variant_config(B, H, dtype, backward, flags["PROJ"])
    part = runtime.empty(2, -(-H // cfg.block_h), B, 2, dtype=like.dtype, device=like.device)
    ln, proj = flags["LAYER_NORM"], flags["PROJ"]
    ln_c = ln and flags["CELL"] == LSTM
    if backward:
        on = {1: (proj, Hout), 2: (True, H), 4: (ln_c, H), 8: (ln, H)}
    else:
        on = {1: (ln, H), 2: (True, H), 4: (ln_c, H), 8: (proj, Hout)}
    cols = {p: n for p, (used, n) in on.items() if used}
    launch_phases(kernel, (*tensors, part), sizes, flags, plan, cfg, cols, path == "cooperative")


def _flags(cell, w_hh, ln_hh_w, w_ch, w_hr, zone, options) -> dict:
    """The constexprs and run-time flags both variant kernels take."""
    return dict(CELL=CELL_CODE[cell], LAYER_NORM=ln_hh_w is not None, PEEPHOLE=w_ch is not None,
                OPTIONS=options, PROJ=w_hr is not None, ZONE_H=zone[0], ZONE_C=zone[1],
                PRECISION=runtime.dot_precision(w_hh.dtype))  # fmt: skip


def _sizes(w_hh: Tensor, w_hr: Tensor | None, plan: runtime.Plan) -> tuple[int, int, int, int]:
    """``(B, H, Hout, GH)`` of a layer."""
    GH, Hout = w_hh.shape
    return plan.B, Hout if w_hr is None else w_hr.shape[1], Hout, GH


def variant_fwd(
    cell: str, xg: Tensor, h0: Tensor, c0: Tensor | None, bias: Tensor | None, w_hh: Tensor,
    ln_hh_w: Tensor | None, ln_c_w: Tensor | None, ln_c_b: Tensor | None, w_ch: Tensor | None,
    w_hr: Tensor | None, mask_h: Tensor | None, mask_c: Tensor | None, zone: tuple[int, int],
    par: Tensor, options: int, plan: runtime.Plan,
) -> list[Tensor]:  # fmt: skip
    """Allocate and launch; returns :func:`variant_buffers`. The tensors are the forward
    kernel's (shapes there; ``h0`` [B, Hout], ``c0`` [B, H]), contiguous, None where absent:
    layer norm is on iff ``ln_hh_w`` is given, ``ln_c_b`` comes with ``ln_c_w`` (zeros when the
    layer has none); ``zone`` holds the zoneout modes of h and c (``ZONE_H``, ``ZONE_C``),
    ``options`` the bool options' bits (:func:`.cellmath.option_bits`)."""
    B, H, Hout, GH = _sizes(w_hh, w_hr, plan)
    out = variant_buffers(xg, cell, plan.T, B, H, Hout, GH, ln_hh_w is not None,
                          w_hr is not None, plan.packed)  # fmt: skip
    hs, cs, *_ = out
    hs[plan.first_slot] = h0
    if cell == "lstm":
        cs[plan.first_slot] = c0
    flags = dict(_flags(cell, w_hh, ln_hh_w, w_ch, w_hr, zone, options),
                 HAS_BIAS=bias is not None, WRITE_Y=plan.packed,
                 W_T=runtime.weights_transposed(xg.dtype))  # fmt: skip
    if flags["W_T"]:
        w_hh, w_hr = w_hh.t().contiguous(), None if w_hr is None else w_hr.t().contiguous()
    tensors = (xg, w_hh, *runtime.given(xg, bias, ln_hh_w, ln_c_w, ln_c_b, w_ch, w_hr, mask_h,
                                        mask_c), par, *runtime.given(xg, *out))  # fmt: skip
    _launch(_variant_fwd_kernel, tensors, (B, H, Hout), flags, plan, xg, False)
    return out


def variant_bwd(
    cell: str, w_hh: Tensor, ln_hh_w: Tensor | None, ln_c_w: Tensor | None, ln_c_b: Tensor | None,
    w_ch: Tensor | None, w_hr: Tensor | None, mask_h: Tensor | None, mask_c: Tensor | None,
    zone: tuple[int, int], par: Tensor, options: int,  # as variant_fwd's
    buffers: list[Tensor],  # the forward's (variant_buffers)
    dhs: Tensor | None, dcs: Tensor | None, dy: Tensor | None,  # as .step.step_bwd's
    plan: runtime.Plan,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None]:  # fmt: skip
    """Launch the backward steps. Returns ``dG_x``, ``dG_s``, ``dS_raw [T,B,GH]`` (``dG_s``
    is the same tensor as ``dG_x`` but for the GRU, ``dS_raw`` as ``dG_s`` without layer
    norm), the LSTM's ``dHt [T,B,Hout]`` (gradient of h~; with projection, else empty) and
    ``dl [T,B,H]`` (with layer norm, else empty), ``dh0 [B,Hout]`` and ``dc0 [B,H]`` (LSTM;
    else None); zero in rows a packed step did not compute."""
    T, (B, H, Hout, GH) = plan.T, _sizes(w_hh, w_hr, plan)
    lstm, ln = cell == "lstm", ln_hh_w is not None
    buf = functools.partial(runtime.buffer, w_hh)
    dg = buf(T, B, GH)
    dgs = dg if lstm else buf(T, B, GH)
    ds = buf(T, B, GH) if ln else dgs
    dht, dl = buf(T, B, Hout, on=lstm and w_hr is not None), buf(T, B, H, on=lstm and ln)
    dh, dc = w_hh.new_zeros(B, Hout), w_hh.new_zeros(B, H) if lstm else None
    tensors = (dg, dgs, ds, w_hh, *runtime.given(dg, w_hr, ln_hh_w, ln_c_w, ln_c_b, w_ch, mask_h,
                                                 mask_c, par, *buffers[:7], dh, dc, dhs, dy, dcs,
                                                 dht, dl))  # fmt: skip
    flags = dict(_flags(cell, w_hh, ln_hh_w, w_ch, w_hr, zone, options), HAS_DHS=dhs is not None,
                 HAS_DY=dy is not None, HAS_DCS=dcs is not None)  # fmt: skip
    _launch(_variant_bwd_kernel, tensors, (B, H, Hout), flags, plan, w_hh, True)
    finish_state_grad(dh, dc, ds, w_hh, dhs, dcs, plan)
    return dg, dgs, ds, dht, dl, dh, dc
