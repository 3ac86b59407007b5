"""Variant step kernels (layer norm, zoneout, peephole, CIFG) and their launchers: one
forward and one backward kernel, the cell a compile-time constant (``CELL``: LSTM or GRU,
as in :mod:`.step`).

One launch per step each way. A program owns BLOCK_B batch rows and every hidden
unit of them (looping in BLOCK_H chunks, see :mod:`.rowwise`), because layer norm
needs whole rows: of ``h W_hh^T`` over all G*H features and of the LSTM's ``c`` over H.
Gate blocks follow the weights: LSTM i, f, g, o (G = 4) or i, g, o with CIFG (G = 3),
GRU r, z, n.

Forward passes over the rows of a program (``s`` = recurrent part of the gates)::

    1 (LAYER_NORM)  s_raw = h_prev W_hh^T into Shat, row mean and rstd
    2               s = LN(s_raw) or h_prev W_hh^T, plus b (b_hh + LN bias, so the GRU's
                    b_hn stays inside the reset product); shat = normalised s_raw saved
      GRU           gates with x-part xg (cellmath.gru_fwd), saving r, z, n, s_n;
                    h~ = the new state
      LSTM          gates, candidate c~, zoneout of c into Cs; saves gates and c~
    3 (LSTM)        l = LN_c(c~) or c~; m = o tanh(l); h~ = m (or stores m with PROJ)
    4 (PROJ)        h~ = m W_hr^T
    then zoneout of h~ into Hs / y (:func:`.rowwise.emit_state`).

Backward of one step, from the running gradients ``dh`` (see :mod:`.common`) and the
LSTM's ``dc`` (k_h, k_c are the zoneout keep weights, see :mod:`.cellmath`); the GRU in
one pass over the units::

    dh_t = state_grad(...)                    dh~ = (1 - k_h) dh_t
    dG_x = [d pre_r, d pre_z, d pre_n]        gradient of xg (x side)
    dG_s = [d pre_r, d pre_z, r d pre_n]      gradient of s (b_hh, LN_hh bias and gain)
    running dh = k_h dh_t + z dh~             (reaches h_prev directly)

the LSTM in three (its ``dG_x = dG_s = dG = d pre``)::

    A  dh_t = state_grad(...)          dh~ = (1 - k_h) dh_t    (saved in dHt)
       the running dh keeps k_h dh_t, which reaches h_prev directly
    B  dm = dh~ W_hr (PROJ) or dh~;    d pre_o, dl = out_bwd(o, l, dm)     (dl saved)
    C  dc~ = (1 - k_c) dc_t + LN_c backward of dl (or dl) + d pre_o w_co;
       d pre_i, d pre_f, d pre_g, dc_prev by cellmath.lstm_variant_bwd; dc_prev += k_c dc_t

then (LAYER_NORM) ``dS_raw`` = LN backward of ``dG_s`` over the G*H features. ``dS_raw``
(= ``dG_s`` without layer norm) is the gradient of ``h_prev W_hh^T``, used for ``dW_hh``
and, at the next launch, for ``dh_prev``. Parameter gradients are column sums over all
steps afterwards (:mod:`.variants`, :mod:`.layer_op`).
"""

from __future__ import annotations

import functools

import triton
import triton.language as tl
from torch import Tensor

from . import runtime
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
from .common import finish_state_grad, forward_buffers, gate_blocks, state_grad
from .configs import pick_variant_config
from .rowwise import (
    emit_state,
    ln_grad_sums,
    recurrent_gates,
    row_chunk,
    row_rstd,
    zoneout_weight,
)
from .tiles import kernel_jit, load_gates, packed_ptrs, rec_tile, row_block, store_gates, tile_ptrs


@triton.jit
def _program(par_ptr, B, H, rows_active, CELL: tl.constexpr, OPTIONS: tl.constexpr,
             BLOCK_B: tl.constexpr):  # fmt: skip
    """What both variant kernels start from: this program's rows (:func:`.tiles.row_block`),
    the G*H gate features, ``(off_g, off_cf, off_co)`` (the offset of the LSTM's g block in the
    gate tensors and of the f and o peephole rows in w_ch; CIFG drops the f gate and its
    peephole row) and the zoneout probabilities ``p_h, p_c``."""
    rows, rmask, act = row_block(B, rows_active, BLOCK_B)
    GH = gate_blocks(CELL, OPTIONS) * H
    if CIFG & OPTIONS:
        off_g, off_cf, off_co = H, 0, H
    else:
        off_g, off_cf, off_co = 2 * H, H, 2 * H
    return rows, rmask, act, GH, off_g, off_cf, off_co, tl.load(par_ptr), tl.load(par_ptr + 1)


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


@kernel_jit
def _variant_fwd_step_kernel(
    xg_ptr,  # [N, GH] input projection (LN_ih and b_ih applied)
    w_ptr,  # [GH, HOUT] W_hh
    b_ptr,  # [GH] b_hh + LN_hh bias (HAS_BIAS)
    lnw_ptr,  # [GH] LN_hh gain (LAYER_NORM)
    lncw_ptr, lncb_ptr,  # [H] LN_c gain and bias (LSTM, LAYER_NORM)
    wch_ptr,  # [3, H] peephole rows i, f, o; [2, H] i, o with CIFG (PEEPHOLE)
    whr_ptr,  # [HOUT, H] W_hr (PROJ)
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
    row0, rows_active,  # first row of this step in xg / y / masks, its active rows
    hs_r: tl.int64, hs_w: tl.int64,  # offsets of the Hs slots read / written
    cs_r: tl.int64, cs_w: tl.int64,  # offsets of the Cs slots read / written
    gates_off: tl.int64, gh_off: tl.int64, h_off: tl.int64,  # t * B * 4H, t * B * GH, t * B * H
    stat_off: tl.int64,  # t * B * 2; GRU t * B
    B, H, HOUT,  # HOUT: H unless the LSTM projects
    CELL: tl.constexpr,  # cellmath.LSTM or GRU
    HAS_BIAS, LAYER_NORM: tl.constexpr, PEEPHOLE: tl.constexpr,
    OPTIONS: tl.constexpr,  # the bool options' bits (cellmath.option_bits)
    PROJ: tl.constexpr,
    ZONE_H, ZONE_C,  # 0 off, 1 mask, 2 evaluation (p)
    WRITE_Y, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    acc_ty: tl.constexpr = gates_ptr.dtype.element_ty
    G: tl.constexpr = gate_blocks(CELL, OPTIONS)
    # only the LSTM's W_hh may be [GH, HOUT]: the GRU uses the one size H throughout
    K = HOUT if CELL == LSTM else H
    rows, rmask, act, GH, off_g, off_cf, off_co, p_h, p_c = _program(
        par_ptr, B, H, rows_active, CELL, OPTIONS, BLOCK_B
    )
    eps = tl.load(par_ptr + 2)
    h_prev_ptr = hs_ptr + hs_r
    shat = shat_ptr + gh_off
    gates = gates_ptr + gates_off

    # pass 1 (LAYER_NORM): h_prev W_hh^T into Shat (zero in inactive rows), its row mean and rstd
    mean_s = tl.zeros((BLOCK_B,), dtype=acc_ty)
    rstd_s = mean_s
    if LAYER_NORM:
        for f0 in range(0, GH, BLOCK_H):
            feats, fmask, m2, _ = row_chunk(rows, rmask, f0, GH, BLOCK_H)
            raw = rec_tile(h_prev_ptr, w_ptr, rows, act, feats, fmask, K, K, 1, acc_ty, PRECISION,
                           BLOCK_B, BLOCK_H, BLOCK_K)  # fmt: skip
            raw = tl.where(act[:, None] & fmask[None, :], raw, 0.0)
            # the offsets formed after the loop, not held across it
            tl.store(shat + rows[:, None] * GH + feats[None, :], raw, mask=m2)
            mean_s += tl.sum(raw, axis=1)
        mean_s = mean_s / GH
        tl.debug_barrier()
        rstd_s = row_rstd(shat, rows, act, mean_s, GH, eps, acc_ty, BLOCK_B, BLOCK_H)
        tl.debug_barrier()
        if CELL == GRU:  # the LSTM stores it with the rstd of c~ after pass 2
            tl.store(rstd_ptr + stat_off + rows, tl.where(act, rstd_s, 0.0), mask=rmask)

    # pass 2: the gates, and the GRU's new state or the LSTM's candidate cell state
    c_sum = tl.zeros((BLOCK_B,), dtype=acc_ty)
    for u0 in range(0, H, BLOCK_H):
        units, umask, m2, _ = row_chunk(rows, rmask, u0, H, BLOCK_H)
        s0, s1, s2, s3 = recurrent_gates(
            h_prev_ptr, w_ptr, b_ptr, lnw_ptr, shat, mean_s, rstd_s, rows, rmask, act, units,
            umask, H, GH, K, HAS_BIAS, G, LAYER_NORM, acc_ty, PRECISION, BLOCK_B, BLOCK_H,
            BLOCK_K,
        )  # fmt: skip
        # the input parts after the recurrent ones: fewer registers than interleaved
        am = act[:, None] & umask[None, :]
        x0, x1, x2, x3 = load_gates(packed_ptrs(xg_ptr, row0, rows, units, GH), H, am, G)
        # the tile's offsets formed after the recurrent loop, not held across it
        state = rows[:, None] * H + units[None, :]
        if CELL == GRU:
            h_prev = tl.load(h_prev_ptr + state, mask=m2, other=0.0)
            r, z, n, h = gru_fwd(x0, x1, x2, s0, s1, s2, h_prev, OPTIONS)
            store_gates(tile_ptrs(gates, rows, units, 4 * H), H, act, m2, r, z, n, s2, 4)
            emit_state(h, hs_ptr, mh_ptr, y_ptr, p_h, hs_r, hs_w, row0, rows, rmask, act,
                       units, umask, H, ZONE_H, WRITE_Y)  # fmt: skip
        else:
            pre_i, pre_f, pre_g, pre_o = x0 + s0, x1 + s1, x2 + s2, x3 + s3
            if CIFG & OPTIONS:  # gate blocks i, g, o (pre_f unused)
                pre_f, pre_g, pre_o = pre_i, pre_f, pre_g
            w_ci, w_cf, w_co = peephole_rows(wch_ptr, off_cf, off_co, units, umask, PEEPHOLE,
                                             acc_ty, BLOCK_H)  # fmt: skip
            c_prev = tl.load(cs_ptr + cs_r + state, mask=m2, other=0.0)
            i, f, g, c = lstm_variant_fwd(pre_i, pre_f, pre_g, c_prev, w_ci, w_cf, PEEPHOLE,
                                          OPTIONS)  # fmt: skip
            o = sigmoid(pre_o + w_co[None, :] * c)
            k = zoneout_weight(mc_ptr, p_c, ZONE_C, row0, rows, act, units, umask, H, c)
            a = act[:, None]
            tl.store(cs_ptr + cs_w + state, tl.where(a, k * c_prev + (1.0 - k) * c, c_prev),
                     mask=m2)  # fmt: skip
            store_gates(tile_ptrs(gates, rows, units, 4 * H), H, act, m2, i, f, g, o, 4)
            c = tl.where(a, c, 0.0)
            tl.store(ct_ptr + h_off + state, c, mask=m2)
            c_sum += tl.sum(tl.where(umask[None, :], c, 0.0), axis=1)

    if CELL == LSTM:
        tl.debug_barrier()
        if LAYER_NORM:
            mean_c = c_sum / H
            rstd_c = row_rstd(ct_ptr + h_off, rows, act, mean_c, H, eps, acc_ty, BLOCK_B,
                              BLOCK_H)  # fmt: skip
            stat = rstd_ptr + stat_off + rows * 2
            tl.store(stat, tl.where(act, rstd_s, 0.0), mask=rmask)
            tl.store(stat + 1, tl.where(act, rstd_c, 0.0), mask=rmask)
        else:
            mean_c = c_sum
            rstd_c = c_sum

        # pass 3: the (unprojected) output m = o tanh(LN_c(c~))
        for u0 in range(0, H, BLOCK_H):
            units, umask, m2, state = row_chunk(rows, rmask, u0, H, BLOCK_H)
            c = tl.load(ct_ptr + h_off + state, mask=m2, other=0.0)
            o = tl.load(tile_ptrs(gates, rows, units, 4 * H) + 3 * H, mask=m2, other=0.0)
            if LAYER_NORM:
                chat = tl.where(act[:, None], (c - mean_c[:, None]) * rstd_c[:, None], 0.0)
                tl.store(chat_ptr + h_off + state, chat, mask=m2)
                lw = tl.load(lncw_ptr + units, mask=umask, other=0.0)
                lb = tl.load(lncb_ptr + units, mask=umask, other=0.0)
                l = chat * lw[None, :] + lb[None, :]
            else:
                l = c
            m = o * tanh(l)
            if PROJ:
                tl.store(m_ptr + h_off + state, tl.where(act[:, None], m, 0.0), mask=m2)
            else:
                emit_state(m, hs_ptr, mh_ptr, y_ptr, p_h, hs_r, hs_w, row0, rows, rmask, act,
                           units, umask, HOUT, ZONE_H, WRITE_Y)  # fmt: skip

    if PROJ:  # pass 4: h~ = m W_hr^T
        tl.debug_barrier()
        for c0 in range(0, HOUT, BLOCK_H):
            cols, cmask, _, _ = row_chunk(rows, rmask, c0, HOUT, BLOCK_H)
            hn = rec_tile(m_ptr + h_off, whr_ptr, rows, act, cols, cmask, H, H, 1, acc_ty,
                          PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)  # fmt: skip
            emit_state(hn, hs_ptr, mh_ptr, y_ptr, p_h, hs_r, hs_w, row0, rows, rmask, act,
                       cols, cmask, HOUT, ZONE_H, WRITE_Y)  # fmt: skip


@kernel_jit
def _variant_bwd_step_kernel(
    dg_ptr,  # [T, B, GH] out: gradient of the gate pre-activations dG_x (of xg)
    dgs_ptr,  # [T, B, GH] out: GRU's gradient dG_s of s (the LSTM's is dG_x)
    ds_ptr,  # [T, B, GH] out: dS_raw (LAYER_NORM; else dG_s itself), read at the next launch
    w_ptr, whr_ptr, lnw_ptr, lncw_ptr, lncb_ptr, wch_ptr, mh_ptr, mc_ptr, par_ptr, hs_ptr,
    cs_ptr, gates_ptr, ct_ptr, shat_ptr, chat_ptr, rstd_ptr,  # as the forward kernel's
    dh_ptr,  # [B, HOUT] running state gradient (see common.py)
    dc_ptr,  # [B, H] running cell-state gradient (LSTM)
    dhs_ptr,  # [T+1, B, HOUT] gradient of Hs (HAS_DHS)
    dy_ptr,  # [N, HOUT] gradient of the packed output (HAS_DY)
    dcs_ptr,  # [T+1, B, H] gradient of Cs (HAS_DCS)
    dht_ptr,  # [T, B, HOUT] out: gradient of h~ (before zoneout; LSTM)
    dl_ptr,  # [T, B, H] out: gradient of l = LN_c(c~) (or c~; LSTM)
    row0, rows_active, rows_prev,  # rows_prev: active at the step processed before (0 first)
    hs_r: tl.int64, hs_w: tl.int64, cs_r: tl.int64, cs_w: tl.int64, gates_off: tl.int64,
    gh_off: tl.int64,  # as the forward kernel's
    gh_prev_off: tl.int64,  # offset of dS_raw of the step processed before
    h_off: tl.int64, hout_off: tl.int64, stat_off: tl.int64,  # t * B * (H, HOUT, STATS)
    B, H, HOUT, CELL: tl.constexpr, LAYER_NORM: tl.constexpr, PEEPHOLE: tl.constexpr,
    OPTIONS: tl.constexpr, PROJ: tl.constexpr, ZONE_H, ZONE_C, HAS_DHS, HAS_DY, HAS_DCS,
    PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    acc_ty: tl.constexpr = dh_ptr.dtype.element_ty
    STATS: tl.constexpr = 2 if CELL == LSTM else 1
    rows, rmask, act, GH, off_g, off_cf, off_co, p_h, p_c = _program(
        par_ptr, B, H, rows_active, CELL, OPTIONS, BLOCK_B
    )
    a = act[:, None]
    off_o = GH - H
    dg = dg_ptr + gh_off
    gates = gates_ptr + gates_off
    sum_s = tl.zeros((BLOCK_B,), dtype=acc_ty)
    sum_sx = tl.zeros((BLOCK_B,), dtype=acc_ty)

    # the GRU's gradients of every gate and of h_prev, with the LN_hh row sums; the LSTM's (A)
    # of h~, and the part of dh_t that reaches h_prev directly
    W = H if CELL == GRU else HOUT  # the columns of dh_t
    for c0 in range(0, W, BLOCK_H):
        cols, cmask, m2, _ = row_chunk(rows, rmask, c0, W, BLOCK_H)
        total = state_grad(
            dh_ptr, ds_ptr, w_ptr, dhs_ptr, dy_ptr, gh_prev_off, hs_w, row0,
            rows, cols, rmask, cmask, act, rows < rows_prev, GH, W,
            HAS_DHS, HAS_DY, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K,
        )  # fmt: skip
        k = zoneout_weight(mh_ptr, p_h, ZONE_H, row0, rows, act, cols, cmask, W, total)  # k_h
        state = rows[:, None] * W + cols[None, :]  # after the loop, not held across it
        if CELL == GRU:
            h_prev = tl.load(hs_ptr + hs_r + state, mask=m2, other=0.0)
            r, z, n, s_n = load_gates(tile_ptrs(gates, rows, cols, 4 * H), H, m2, 4)
            d_r, d_z, d_n, d_sn, direct = gru_bwd(r, z, n, s_n, h_prev, (1.0 - k) * total,
                                                  OPTIONS)  # fmt: skip
            tl.store(dh_ptr + state, tl.where(a, direct + k * total, total), mask=m2)
            out = gh_off + rows[:, None] * GH + cols[None, :]
            store_gates(dg_ptr + out, H, act, m2, d_r, d_z, d_n, d_n, 3)
            store_gates(dgs_ptr + out, H, act, m2, d_r, d_z, d_sn, d_sn, 3)
            if LAYER_NORM:
                d_r = tl.where(a, d_r, 0.0)
                d_z = tl.where(a, d_z, 0.0)
                d_sn = tl.where(a, d_sn, 0.0)
                lnw = lnw_ptr + cols
                shat = shat_ptr + out
                sum_s, sum_sx = ln_grad_sums(sum_s, sum_sx, d_r, lnw, shat, cmask, m2)
                sum_s, sum_sx = ln_grad_sums(sum_s, sum_sx, d_z, lnw + H, shat + H, cmask, m2)
                sum_s, sum_sx = ln_grad_sums(sum_s, sum_sx, d_sn, lnw + 2 * H, shat + 2 * H,
                                             cmask, m2)  # fmt: skip
        else:
            tl.store(dht_ptr + hout_off + state, tl.where(a, (1.0 - k) * total, 0.0), mask=m2)
            tl.store(dh_ptr + state, tl.where(a, k * total, total), mask=m2)
    if CELL == LSTM:
        tl.debug_barrier()

        # B: output gate and the gradient of l, with the row sums of the LN_c backward
        sum_d = tl.zeros((BLOCK_B,), dtype=acc_ty)
        sum_dx = tl.zeros((BLOCK_B,), dtype=acc_ty)
        for u0 in range(0, H, BLOCK_H):
            units, umask, m2, state = row_chunk(rows, rmask, u0, H, BLOCK_H)
            if PROJ:
                dm = rec_tile(dht_ptr + hout_off, whr_ptr, rows, act, units, umask, HOUT, 1, H,
                              acc_ty, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)  # fmt: skip
            else:
                dm = tl.load(dht_ptr + hout_off + state, mask=m2, other=0.0)
            o = tl.load(tile_ptrs(gates, rows, units, 4 * H) + 3 * H, mask=m2, other=0.0)
            if LAYER_NORM:
                chat = tl.load(chat_ptr + h_off + state, mask=m2, other=0.0)
                lw = tl.load(lncw_ptr + units, mask=umask, other=0.0)
                lb = tl.load(lncb_ptr + units, mask=umask, other=0.0)
                l = chat * lw[None, :] + lb[None, :]
            else:
                l = tl.load(ct_ptr + h_off + state, mask=m2, other=0.0)
            d_o, dl = lstm_variant_out_bwd(o, l, dm)
            d_o = tl.where(a, d_o, 0.0)
            dl = tl.where(a, dl, 0.0)
            tl.store(dg + rows[:, None] * GH + off_o + units[None, :], d_o, mask=m2)
            tl.store(dl_ptr + h_off + state, dl, mask=m2)
            if LAYER_NORM:
                dchat = dl * lw[None, :]
                sum_d += tl.sum(dchat, axis=1)
                sum_dx += tl.sum(dchat * chat, axis=1)
        tl.debug_barrier()

        # C: the cell state, the other gates; row sums of the LN_hh backward
        if LAYER_NORM:
            rstd_c = tl.load(rstd_ptr + stat_off + rows * STATS + 1, mask=rmask, other=0.0)
        for u0 in range(0, H, BLOCK_H):
            units, umask, m2, state = row_chunk(rows, rmask, u0, H, BLOCK_H)
            dc_t = tl.load(dc_ptr + state, mask=m2, other=0.0)
            if HAS_DCS:
                dc_t += tl.load(dcs_ptr + cs_w + state, mask=m2, other=0.0)
            k = zoneout_weight(mc_ptr, p_c, ZONE_C, row0, rows, act, units, umask, H, dc_t)
            dl = tl.load(dl_ptr + h_off + state, mask=m2, other=0.0)
            if LAYER_NORM:
                lw = tl.load(lncw_ptr + units, mask=umask, other=0.0)
                chat = tl.load(chat_ptr + h_off + state, mask=m2, other=0.0)
                dl = layer_norm_bwd(dl * lw[None, :], chat, rstd_c, sum_d / H, sum_dx / H)
            dc = (1.0 - k) * dc_t + dl
            gate = dg + rows[:, None] * GH + units[None, :]
            d_o = tl.load(gate + off_o, mask=m2, other=0.0)
            w_ci, w_cf, w_co = peephole_rows(wch_ptr, off_cf, off_co, units, umask, PEEPHOLE,
                                             acc_ty, BLOCK_H)  # fmt: skip
            if PEEPHOLE:
                dc += d_o * w_co[None, :]
            i, f, g, _ = load_gates(tile_ptrs(gates, rows, units, 4 * H), H, m2, 3)
            c_prev = tl.load(cs_ptr + cs_r + state, mask=m2, other=0.0)
            d_i, d_f, d_g, dc_prev = lstm_variant_bwd(i, f, g, c_prev, dc, w_ci, w_cf, PEEPHOLE,
                                                      OPTIONS)  # fmt: skip
            tl.store(dc_ptr + state, tl.where(a, dc_prev + k * dc_t, dc_t), mask=m2)
            d_i = tl.where(a, d_i, 0.0)
            d_g = tl.where(a, d_g, 0.0)
            tl.store(gate, d_i, mask=m2)
            tl.store(gate + off_g, d_g, mask=m2)
            if not (CIFG & OPTIONS):
                d_f = tl.where(a, d_f, 0.0)
                tl.store(gate + H, d_f, mask=m2)
            if LAYER_NORM:
                shat = shat_ptr + gh_off + rows[:, None] * GH + units[None, :]
                lnw = lnw_ptr + units
                sum_s, sum_sx = ln_grad_sums(sum_s, sum_sx, d_i, lnw, shat, umask, m2)
                sum_s, sum_sx = ln_grad_sums(sum_s, sum_sx, d_g, lnw + off_g, shat + off_g, umask,
                                             m2)  # fmt: skip
                sum_s, sum_sx = ln_grad_sums(sum_s, sum_sx, d_o, lnw + off_o, shat + off_o, umask,
                                             m2)  # fmt: skip
                if not (CIFG & OPTIONS):
                    sum_s, sum_sx = ln_grad_sums(sum_s, sum_sx, d_f, lnw + H, shat + H, umask, m2)

    if LAYER_NORM:  # through LN_hh to h_prev W_hh^T
        tl.debug_barrier()
        rstd_s = tl.load(rstd_ptr + stat_off + rows * STATS, mask=rmask, other=0.0)
        # dS_raw from dG_s (dG itself but for the GRU), zero in inactive rows
        dgs = (dgs_ptr if CELL == GRU else dg_ptr) + gh_off
        shat, ds = shat_ptr + gh_off, ds_ptr + gh_off
        for f0 in range(0, GH, BLOCK_H):
            feats, fmask, m2, off = row_chunk(rows, rmask, f0, GH, BLOCK_H)
            lw = tl.load(lnw_ptr + feats, mask=fmask, other=0.0)
            dxhat = tl.load(dgs + off, mask=m2, other=0.0) * lw[None, :]
            xhat = tl.load(shat + off, mask=m2, other=0.0)
            dx = layer_norm_bwd(dxhat, xhat, rstd_s, sum_s / GH, sum_sx / GH)
            tl.store(ds + off, tl.where(act[:, None], dx, 0.0), mask=m2)


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


def _launch_setup(cell, w_hh, ln_hh_w, w_ch, w_hr, zone, options, plan) -> tuple:
    """``(T, B, H, Hout, GH, STATS, grid, flags)`` of either variant kernel's launches:
    the sizes, the rstds saved per row (2 for the LSTM, 1 for the GRU), the grid and the
    constexprs and block configuration both kernels take."""
    GH, Hout = w_hh.shape
    cfg = pick_variant_config(plan.B)
    flags = dict(CELL=CELL_CODE[cell], LAYER_NORM=ln_hh_w is not None, PEEPHOLE=w_ch is not None,
                 OPTIONS=options, PROJ=w_hr is not None, ZONE_H=zone[0], ZONE_C=zone[1],
                 PRECISION=runtime.dot_precision(w_hh.dtype), **cfg.launch_kwargs())  # fmt: skip
    H = Hout if w_hr is None else w_hr.shape[1]
    return (plan.T, plan.B, H, Hout, GH, 2 if cell == "lstm" else 1,
            (triton.cdiv(plan.B, cfg.block_b),), flags)  # fmt: skip


def _slots(s: runtime.Step, B: int, H: int, Hout: int, GH: int) -> tuple[int, ...]:
    """A step's offsets in both kernels' order: the Hs slots read / written, the Cs slots,
    its gates (``t * B * 4H``) and its rows of the ``GH`` wide buffers."""
    return (s.slot_r * B * Hout, s.slot_w * B * Hout, s.slot_r * B * H, s.slot_w * B * H,
            s.t * B * 4 * H, s.t * B * GH)  # fmt: skip


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
    T, B, H, Hout, GH, stats, grid, flags = _launch_setup(cell, w_hh, ln_hh_w, w_ch, w_hr, zone,
                                                          options, plan)  # fmt: skip
    out = variant_buffers(xg, cell, T, B, H, Hout, GH, ln_hh_w is not None, w_hr is not None,
                          plan.packed)  # fmt: skip
    hs, cs, *_ = out
    hs[plan.first_slot] = h0
    if cell == "lstm":
        cs[plan.first_slot] = c0
    for s in plan.steps:
        runtime.launch(
            _variant_fwd_step_kernel, grid,
            xg, w_hh, *runtime.given(xg, bias, ln_hh_w, ln_c_w, ln_c_b, w_ch, w_hr, mask_h, mask_c),
            par, *runtime.given(xg, *out), s.row0, s.rows, *_slots(s, B, H, Hout, GH),
            s.t * B * H, s.t * B * stats, B, H, Hout, HAS_BIAS=bias is not None,
            WRITE_Y=plan.packed, **flags,
        )  # fmt: skip
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
    norm), the LSTM's ``dHt [T,B,Hout]`` (gradient of h~) and ``dl [T,B,H]`` (empty for the
    GRU), ``dh0 [B,Hout]`` and ``dc0 [B,H]`` (LSTM; else None); zero in rows a packed step
    did not compute."""
    T, B, H, Hout, GH, stats, grid, flags = _launch_setup(cell, w_hh, ln_hh_w, w_ch, w_hr, zone,
                                                          options, plan)  # fmt: skip
    lstm = cell == "lstm"
    buf = functools.partial(runtime.buffer, w_hh)
    dg = buf(T, B, GH)
    dgs = dg if lstm else buf(T, B, GH)
    ds = buf(T, B, GH) if ln_hh_w is not None else dgs
    dht, dl = buf(T, B, Hout, on=lstm), buf(T, B, H, on=lstm)
    dh, dc = w_hh.new_zeros(B, Hout), w_hh.new_zeros(B, H) if lstm else None
    # each launch reads the gate gradients of the step processed just before it (none first)
    rows_prev, t_prev = 0, 0
    for s in reversed(plan.steps):
        runtime.launch(
            _variant_bwd_step_kernel, grid,
            dg, dgs, ds, w_hh, *runtime.given(dg, w_hr, ln_hh_w, ln_c_w, ln_c_b, w_ch, mask_h,
                                              mask_c, par, *buffers[:7], dh, dc, dhs, dy, dcs,
                                              dht, dl),
            s.row0, s.rows, rows_prev, *_slots(s, B, H, Hout, GH), t_prev * B * GH, s.t * B * H,
            s.t * B * Hout, s.t * B * stats, B, H, Hout, HAS_DHS=dhs is not None,
            HAS_DY=dy is not None, HAS_DCS=dcs is not None, **flags,
        )  # fmt: skip
        rows_prev, t_prev = s.rows, s.t
    finish_state_grad(dh, dc, ds, w_hh, dhs, dcs, plan)
    return dg, dgs, ds, dht, dl, dh, dc
