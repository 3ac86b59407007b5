"""LSTM variant step kernels (layer norm, zoneout, peephole, CIFG): forward and backward.

One launch per step each way. A program owns BLOCK_B batch rows and every hidden
unit of them (looping in BLOCK_H chunks, see :mod:`.rowwise`), because layer norm
needs whole rows: of ``h W_hh^T`` over all G*H features and of ``c`` over H. Gate
blocks follow the weights: i, f, g, o (G = 4) or i, g, o with CIFG (G = 3).

Forward passes over the rows of a program (``s`` = recurrent part of the gates)::

    1 (LAYER_NORM)  s_raw = h_prev W_hh^T into Shat, row mean and rstd
    2               s = LN(s_raw) or h_prev W_hh^T, plus biases; gates, candidate c~,
                    zoneout of c into Cs; saves gates, c~ and shat = normalised s_raw
    3               l = LN_c(c~) or c~; m = o tanh(l); h~ = m (or stores m with PROJ)
    4 (PROJ)        h~ = m W_hr^T
    then zoneout of h~ into Hs / y (:func:`.rowwise.emit_state`).

Backward of one step, from the running gradients ``dh`` (see :mod:`.common`) and
``dc`` (k_h, k_c are the zoneout keep weights, see :mod:`.cellmath`)::

    A  dh_t = state_grad(...)          dh~ = (1 - k_h) dh_t    (saved in dHt)
       the running dh keeps k_h dh_t, which reaches h_prev directly
    B  dm = dh~ W_hr (PROJ) or dh~;    d pre_o, dl = out_bwd(o, l, dm)     (dl saved)
    C  dc~ = (1 - k_c) dc_t + LN_c backward of dl (or dl) + d pre_o w_co;
       d pre_i, d pre_f, d pre_g, dc_prev by cellmath.lstm_variant_bwd; dc_prev += k_c dc_t
    D  (LAYER_NORM) dS_raw = LN backward of dG over the G*H features

``dG = d pre`` is the gradient of the input projection xg, of ``b_hh`` and of the LN
bias; ``dS_raw`` (= ``dG`` without layer norm) that of ``h_prev W_hh^T``, used for
``dW_hh`` and, at the next launch, for ``dh_prev``. Parameter gradients are column
sums over all steps afterwards (:mod:`.variants`).
"""

from __future__ import annotations

import functools

import triton
import triton.language as tl
from torch import Tensor

from . import runtime
from .cellmath import (
    layer_norm_bwd,
    lstm_variant_bwd,
    lstm_variant_fwd,
    lstm_variant_out_bwd,
    sigmoid,
    tanh,
)
from .common import finish_state_grad
from .configs import pick_variant_config
from .rowwise import (
    emit_state,
    ln_bwd_rows,
    ln_grad_sums,
    rec_raw_stats,
    recurrent_gates,
    row_chunk,
    row_rstd,
    zoned_state_grad,
    zoneout_weight,
)
from .tiles import kernel_jit, load_gates, packed_ptrs, rec_tile, row_block, store_gates, tile_ptrs


@triton.jit
def gate_offsets(H, CIFG: tl.constexpr):
    """``(GH, off_g, off_cf, off_co, off_o)``: the gate features and the offsets of the g
    and o blocks in the gate tensors and of the f and o peephole rows in w_ch (CIFG drops
    the f gate and its peephole row)."""
    if CIFG:
        GH = 3 * H
        off_g = H
        off_cf = 0
        off_co = H
    else:
        GH = 4 * H
        off_g = 2 * H
        off_cf = H
        off_co = 2 * H
    return GH, off_g, off_cf, off_co, GH - H


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
def _lstm_variant_fwd_step_kernel(
    xg_ptr,  # [N, GH] input projection (LN_ih and b_ih applied)
    w_ptr,  # [GH, HOUT] W_hh
    b_ptr,  # [GH] b_hh + LN_hh bias (HAS_BIAS)
    lnw_ptr,  # [GH] LN_hh gain (LAYER_NORM)
    lncw_ptr,  # [H] LN_c gain (LAYER_NORM)
    lncb_ptr,  # [H] LN_c bias (LAYER_NORM)
    wch_ptr,  # [3, H] peephole rows i, f, o; [2, H] i, o with CIFG (PEEPHOLE)
    whr_ptr,  # [HOUT, H] W_hr (PROJ)
    mh_ptr,  # [N, HOUT] zoneout mask of h (ZONE_H == 1)
    mc_ptr,  # [N, H] zoneout mask of c (ZONE_C == 1)
    par_ptr,  # [3] p_h, p_c, layer-norm eps
    hs_ptr,  # [T+1, B, HOUT] hidden-state history
    cs_ptr,  # [T+1, B, H] cell-state history (carried, zoned-out)
    gates_ptr,  # [T, B, 4H] saved i, f, g, o
    ct_ptr,  # [T, B, H] saved candidate cell state c~
    shat_ptr,  # [T, B, GH] saved normalised recurrent projection (LAYER_NORM)
    chat_ptr,  # [T, B, H] saved normalised c~ (LAYER_NORM)
    rstd_ptr,  # [T, B, 2] saved rstd of the recurrent projection and of c~ (LAYER_NORM)
    m_ptr,  # [T, B, H] unprojected output (PROJ)
    y_ptr,  # [N, HOUT] packed output (WRITE_Y)
    row0,  # first row of this step in xg / y / masks
    rows_active,
    hs_r: tl.int64,  # offsets of the Hs slots read / written
    hs_w: tl.int64,
    cs_r: tl.int64,  # offsets of the Cs slots read / written
    cs_w: tl.int64,
    gates_off: tl.int64,  # t * B * 4H
    gh_off: tl.int64,  # t * B * GH
    h_off: tl.int64,  # t * B * H
    stat_off: tl.int64,  # t * B * 2
    B,
    H,
    HOUT,
    HAS_BIAS,
    LAYER_NORM: tl.constexpr,
    PEEPHOLE: tl.constexpr,
    CIFG: tl.constexpr,
    PROJ: tl.constexpr,
    ZONE_H,  # 0 off, 1 mask, 2 evaluation (p)
    ZONE_C,
    WRITE_Y,
    PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    acc_ty: tl.constexpr = cs_ptr.dtype.element_ty
    G: tl.constexpr = 3 if CIFG else 4
    rows, rmask, act = row_block(B, rows_active, BLOCK_B)
    GH, off_g, off_cf, off_co, off_o = gate_offsets(H, CIFG)
    p_h = tl.load(par_ptr)
    p_c = tl.load(par_ptr + 1)
    eps = tl.load(par_ptr + 2)
    h_prev_ptr = hs_ptr + hs_r
    shat = shat_ptr + gh_off
    gates = gates_ptr + gates_off

    # pass 1 (LAYER_NORM)
    mean_s, rstd_s = rec_raw_stats(h_prev_ptr, w_ptr, shat, rows, rmask, act, GH, HOUT, eps,
                                   LAYER_NORM, acc_ty, PRECISION, BLOCK_B, BLOCK_H,
                                   BLOCK_K)  # fmt: skip

    # pass 2: gates and the candidate cell state
    c_sum = tl.zeros((BLOCK_B,), dtype=acc_ty)
    for u0 in range(0, H, BLOCK_H):
        units, umask, m2 = row_chunk(u0, H, rmask, BLOCK_H)
        s0, s1, s2, s3 = recurrent_gates(
            h_prev_ptr, w_ptr, b_ptr, lnw_ptr, shat, mean_s, rstd_s, rows, rmask, act, units,
            umask, H, GH, HOUT, HAS_BIAS, G, LAYER_NORM, acc_ty, PRECISION, BLOCK_B, BLOCK_H,
            BLOCK_K,
        )  # fmt: skip
        # the input parts after the recurrent ones: fewer registers than interleaved
        am = act[:, None] & umask[None, :]
        x0, x1, x2, x3 = load_gates(packed_ptrs(xg_ptr, row0, rows, units, GH), H, am, G)
        if CIFG:  # gate blocks i, g, o
            pre_i, pre_g, pre_o = x0 + s0, x1 + s1, x2 + s2
            pre_f = pre_i  # unused
        else:
            pre_i, pre_f, pre_g, pre_o = x0 + s0, x1 + s1, x2 + s2, x3 + s3
        w_ci, w_cf, w_co = peephole_rows(wch_ptr, off_cf, off_co, units, umask, PEEPHOLE, acc_ty,
                                         BLOCK_H)  # fmt: skip

        state = rows[:, None] * H + units[None, :]
        c_prev = tl.load(cs_ptr + cs_r + state, mask=m2, other=0.0)
        i, f, g, c = lstm_variant_fwd(pre_i, pre_f, pre_g, c_prev, w_ci, w_cf, PEEPHOLE, CIFG)
        o = sigmoid(pre_o + w_co[None, :] * c)
        k = zoneout_weight(mc_ptr, p_c, ZONE_C, row0, rows, act, units, umask, H, c)
        a = act[:, None]
        tl.store(cs_ptr + cs_w + state, tl.where(a, k * c_prev + (1.0 - k) * c, c_prev), mask=m2)
        store_gates(tile_ptrs(gates, rows, units, 4 * H), H, act, m2, i, f, g, o, 4)
        c = tl.where(a, c, 0.0)
        tl.store(ct_ptr + h_off + state, c, mask=m2)
        c_sum += tl.sum(tl.where(umask[None, :], c, 0.0), axis=1)
    tl.debug_barrier()

    if LAYER_NORM:
        mean_c = c_sum / H
        rstd_c = row_rstd(ct_ptr + h_off, rows, act, mean_c, H, eps, acc_ty, BLOCK_B, BLOCK_H)
        stat = rstd_ptr + stat_off + rows * 2
        tl.store(stat, tl.where(act, rstd_s, 0.0), mask=rmask)
        tl.store(stat + 1, tl.where(act, rstd_c, 0.0), mask=rmask)
    else:
        mean_c = c_sum
        rstd_c = c_sum

    # pass 3: the (unprojected) output m = o tanh(LN_c(c~))
    for u0 in range(0, H, BLOCK_H):
        units, umask, m2 = row_chunk(u0, H, rmask, BLOCK_H)
        state = rows[:, None] * H + units[None, :]
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
            cols, cmask, _ = row_chunk(c0, HOUT, rmask, BLOCK_H)
            hn = rec_tile(m_ptr + h_off, whr_ptr, rows, act, cols, cmask, H, H, 1, acc_ty,
                          PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)  # fmt: skip
            emit_state(hn, hs_ptr, mh_ptr, y_ptr, p_h, hs_r, hs_w, row0, rows, rmask, act,
                       cols, cmask, HOUT, ZONE_H, WRITE_Y)  # fmt: skip


@kernel_jit
def _lstm_variant_bwd_step_kernel(
    dg_ptr,  # [T, B, GH] out: gradient of the gate pre-activations dG
    ds_ptr,  # [T, B, GH] out: dS_raw (LAYER_NORM; else dG itself), read at the next launch
    w_ptr,  # [GH, HOUT] W_hh
    whr_ptr,  # [HOUT, H] W_hr (PROJ)
    lnw_ptr,  # [GH] LN_hh gain (LAYER_NORM)
    lncw_ptr,  # [H] LN_c gain (LAYER_NORM)
    lncb_ptr,  # [H] LN_c bias (LAYER_NORM)
    wch_ptr,  # [3 | 2, H] peephole weights (PEEPHOLE)
    mh_ptr,  # [N, HOUT] zoneout mask of h (ZONE_H == 1)
    mc_ptr,  # [N, H] zoneout mask of c (ZONE_C == 1)
    par_ptr,  # [3] p_h, p_c, eps
    cs_ptr,  # [T+1, B, H] cell-state history
    gates_ptr,  # [T, B, 4H] saved i, f, g, o
    ct_ptr,  # [T, B, H] saved c~
    shat_ptr,  # [T, B, GH] saved normalised recurrent projection (LAYER_NORM)
    chat_ptr,  # [T, B, H] saved normalised c~ (LAYER_NORM)
    rstd_ptr,  # [T, B, 2] saved rstds (LAYER_NORM)
    dh_ptr,  # [B, HOUT] running state gradient (see common.py)
    dc_ptr,  # [B, H] running cell-state gradient
    dhs_ptr,  # [T+1, B, HOUT] gradient of Hs (HAS_DHS)
    dy_ptr,  # [N, HOUT] gradient of the packed output (HAS_DY)
    dcs_ptr,  # [T+1, B, H] gradient of Cs (HAS_DCS)
    dht_ptr,  # [T, B, HOUT] out: gradient of h~ (before zoneout)
    dl_ptr,  # [T, B, H] out: gradient of l = LN_c(c~) (or c~)
    row0,
    rows_active,
    rows_prev,  # rows active at the step processed before (0 for the first)
    hs_w: tl.int64,  # offset of the Hs slot this step wrote
    cs_r: tl.int64,
    cs_w: tl.int64,
    gates_off: tl.int64,  # t * B * 4H
    gh_off: tl.int64,  # t * B * GH
    gh_prev_off: tl.int64,  # offset of dS_raw of the step processed before
    h_off: tl.int64,  # t * B * H
    hout_off: tl.int64,  # t * B * HOUT
    stat_off: tl.int64,  # t * B * 2
    B,
    H,
    HOUT,
    LAYER_NORM: tl.constexpr,
    PEEPHOLE: tl.constexpr,
    CIFG: tl.constexpr,
    PROJ: tl.constexpr,
    ZONE_H,
    ZONE_C,
    HAS_DHS,
    HAS_DY,
    HAS_DCS,
    PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    acc_ty: tl.constexpr = dc_ptr.dtype.element_ty
    rows, rmask, act = row_block(B, rows_active, BLOCK_B)
    a = act[:, None]
    GH, off_g, off_cf, off_co, off_o = gate_offsets(H, CIFG)
    p_h = tl.load(par_ptr)
    p_c = tl.load(par_ptr + 1)
    dg = dg_ptr + gh_off
    gates = gates_ptr + gates_off

    # A: gradient of h~, and the part of dh_t that reaches h_prev directly
    for c0 in range(0, HOUT, BLOCK_H):
        cols, cmask, m2, total, k = zoned_state_grad(
            c0, dh_ptr, ds_ptr, w_ptr, dhs_ptr, dy_ptr, mh_ptr, p_h, gh_prev_off, hs_w, row0,
            rows, rmask, act, rows_prev, GH, HOUT, ZONE_H, HAS_DHS, HAS_DY, PRECISION,
            BLOCK_B, BLOCK_H, BLOCK_K,
        )  # fmt: skip
        off = rows[:, None] * HOUT + cols[None, :]
        tl.store(dht_ptr + hout_off + off, tl.where(a, (1.0 - k) * total, 0.0), mask=m2)
        tl.store(dh_ptr + off, tl.where(a, k * total, total), mask=m2)
    tl.debug_barrier()

    # B: output gate and the gradient of l, with the row sums of the LN_c backward
    sum_d = tl.zeros((BLOCK_B,), dtype=acc_ty)
    sum_dx = tl.zeros((BLOCK_B,), dtype=acc_ty)
    for u0 in range(0, H, BLOCK_H):
        units, umask, m2 = row_chunk(u0, H, rmask, BLOCK_H)
        state = rows[:, None] * H + units[None, :]
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
        rstd_c = tl.load(rstd_ptr + stat_off + rows * 2 + 1, mask=rmask, other=0.0)
    sum_s = tl.zeros((BLOCK_B,), dtype=acc_ty)
    sum_sx = tl.zeros((BLOCK_B,), dtype=acc_ty)
    for u0 in range(0, H, BLOCK_H):
        units, umask, m2 = row_chunk(u0, H, rmask, BLOCK_H)
        state = rows[:, None] * H + units[None, :]
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
        w_ci, w_cf, w_co = peephole_rows(wch_ptr, off_cf, off_co, units, umask, PEEPHOLE, acc_ty,
                                         BLOCK_H)  # fmt: skip
        if PEEPHOLE:
            dc += d_o * w_co[None, :]
        i, f, g, _ = load_gates(tile_ptrs(gates, rows, units, 4 * H), H, m2, 3)
        c_prev = tl.load(cs_ptr + cs_r + state, mask=m2, other=0.0)
        d_i, d_f, d_g, dc_prev = lstm_variant_bwd(i, f, g, c_prev, dc, w_ci, w_cf, PEEPHOLE, CIFG)
        tl.store(dc_ptr + state, tl.where(a, dc_prev + k * dc_t, dc_t), mask=m2)
        d_i = tl.where(a, d_i, 0.0)
        d_g = tl.where(a, d_g, 0.0)
        tl.store(gate, d_i, mask=m2)
        tl.store(gate + off_g, d_g, mask=m2)
        if not CIFG:
            d_f = tl.where(a, d_f, 0.0)
            tl.store(gate + H, d_f, mask=m2)
        if LAYER_NORM:
            shat = shat_ptr + gh_off + rows[:, None] * GH + units[None, :]
            lnw = lnw_ptr + units
            sum_s, sum_sx = ln_grad_sums(sum_s, sum_sx, d_i, lnw, shat, umask, m2)
            sum_s, sum_sx = ln_grad_sums(sum_s, sum_sx, d_g, lnw + off_g, shat + off_g, umask, m2)
            sum_s, sum_sx = ln_grad_sums(sum_s, sum_sx, d_o, lnw + off_o, shat + off_o, umask, m2)
            if not CIFG:
                sum_s, sum_sx = ln_grad_sums(sum_s, sum_sx, d_f, lnw + H, shat + H, umask, m2)

    if LAYER_NORM:  # D: through LN_hh to h_prev W_hh^T
        tl.debug_barrier()
        rstd_s = tl.load(rstd_ptr + stat_off + rows * 2, mask=rmask, other=0.0)
        ln_bwd_rows(dg, shat_ptr + gh_off, lnw_ptr, rstd_s, sum_s, sum_sx, ds_ptr + gh_off,
                    rows, rmask, act, GH, BLOCK_H)  # fmt: skip


def _lstm_variant_fwd(
    xg: Tensor,  # [N, GH] input projection, LN_ih and b_ih applied
    h0: Tensor,  # [B, Hout]
    c0: Tensor,  # [B, H]
    w_hh: Tensor,  # [GH, Hout] contiguous
    bias: Tensor | None,  # [GH] b_hh + LN_hh bias, contiguous
    ln_hh_w: Tensor | None,  # [GH] (layer norm on iff given)
    ln_c_w: Tensor | None,  # [H]
    ln_c_b: Tensor | None,  # [H] (zeros when absent)
    w_ch: Tensor | None,  # [3 | 2, H]
    w_hr: Tensor | None,  # [Hout, H]
    mask_h: Tensor | None,  # [N, Hout]
    mask_c: Tensor | None,  # [N, H]
    par: Tensor,  # [3] p_h, p_c, eps
    zone: tuple[int, int],  # zoneout modes of h, c (0 off, 1 mask, 2 evaluation)
    cifg: bool,
    plan: runtime.Plan,
    packed: bool,
) -> list[Tensor]:
    """Allocate and launch. Returns ``[Hs [T+1,B,Hout], Cs [T+1,B,H], gates [T,B,4H],
    ct [T,B,H], shat [T,B,GH], chat [T,B,H], rstd [T,B,2], m [T,B,H], y [N,Hout]]``
    (empty where unused)."""
    T, B = plan.T, plan.B
    GH, Hout = w_hh.shape
    H = GH // (3 if cifg else 4)
    ln, proj = ln_hh_w is not None, w_hr is not None
    buf = functools.partial(runtime.buffer, xg)
    hs, cs = buf(T + 1, B, Hout), buf(T + 1, B, H)
    hs[plan.first_slot] = h0
    cs[plan.first_slot] = c0
    out = [hs, cs, buf(T, B, 4 * H), buf(T, B, H), buf(T, B, GH, on=ln), buf(T, B, H, on=ln),
           buf(T, B, 2, on=ln), buf(T, B, H, on=proj), buf(xg.shape[0], Hout, on=packed)]  # fmt: skip
    cfg = pick_variant_config(B)
    for s in plan.steps:
        runtime.launch(
            _lstm_variant_fwd_step_kernel, cfg.row_grid(B),
            xg, w_hh, *runtime.given(xg, bias, ln_hh_w, ln_c_w, ln_c_b, w_ch, w_hr, mask_h, mask_c),
            par, *runtime.given(xg, *out),
            s.row0, s.rows, s.slot_r * B * Hout, s.slot_w * B * Hout, s.slot_r * B * H,
            s.slot_w * B * H, s.t * B * 4 * H, s.t * B * GH, s.t * B * H, s.t * B * 2, B, H, Hout,
            HAS_BIAS=bias is not None, LAYER_NORM=ln, PEEPHOLE=w_ch is not None, CIFG=cifg,
            PROJ=proj, ZONE_H=zone[0], ZONE_C=zone[1], WRITE_Y=packed,
            PRECISION=runtime.dot_precision(xg.dtype), **cfg.launch_kwargs(),
        )  # fmt: skip
    return out


def _lstm_variant_bwd(
    w_hh: Tensor,  # [GH, Hout] contiguous
    w_hr: Tensor | None,  # [Hout, H]
    ln_hh_w: Tensor | None,  # [GH]
    ln_c_w: Tensor | None,  # [H]
    ln_c_b: Tensor | None,  # [H]
    w_ch: Tensor | None,  # [3 | 2, H]
    mask_h: Tensor | None,  # [N, Hout]
    mask_c: Tensor | None,  # [N, H]
    par: Tensor,  # [3]
    zone: tuple[int, int],
    cifg: bool,
    buffers: list[Tensor],  # the forward's
    dhs: Tensor | None,  # [T+1, B, Hout] gradient of Hs
    dcs: Tensor | None,  # [T+1, B, H] gradient of Cs
    dy: Tensor | None,  # [N, Hout] gradient of the packed output
    plan: runtime.Plan,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Launch the backward steps. Returns ``dG [T,B,GH]``, ``dS_raw [T,B,GH]`` (the same
    tensor without layer norm), ``dHt [T,B,Hout]`` (gradient of h~), ``dl [T,B,H]``,
    ``dh0 [B,Hout]`` and ``dc0 [B,H]``; zero in rows a packed step did not compute."""
    hs, cs, gates, ct, shat, chat, rstd, m, y = buffers
    T, B = plan.T, plan.B
    GH, Hout = w_hh.shape
    H = GH // (3 if cifg else 4)
    ln, proj = ln_hh_w is not None, w_hr is not None
    dg = runtime.buffer(w_hh, T, B, GH)
    ds = runtime.buffer(w_hh, T, B, GH) if ln else dg
    dht, dl = runtime.buffer(w_hh, T, B, Hout), runtime.buffer(w_hh, T, B, H)
    dh, dc = w_hh.new_zeros(B, Hout), w_hh.new_zeros(B, H)
    cfg = pick_variant_config(B)
    for s, rows_prev, t_prev in plan.backward():
        runtime.launch(
            _lstm_variant_bwd_step_kernel, cfg.row_grid(B),
            dg, ds, w_hh, *runtime.given(dg, w_hr, ln_hh_w, ln_c_w, ln_c_b, w_ch, mask_h, mask_c,
                                         par, cs, gates, ct, shat, chat, rstd, dh, dc, dhs, dy,
                                         dcs, dht, dl),
            s.row0, s.rows, rows_prev, s.slot_w * B * Hout, s.slot_r * B * H, s.slot_w * B * H,
            s.t * B * 4 * H, s.t * B * GH, t_prev * B * GH, s.t * B * H, s.t * B * Hout,
            s.t * B * 2, B, H, Hout,
            LAYER_NORM=ln, PEEPHOLE=w_ch is not None, CIFG=cifg, PROJ=proj, ZONE_H=zone[0],
            ZONE_C=zone[1], HAS_DHS=dhs is not None, HAS_DY=dy is not None,
            HAS_DCS=dcs is not None, PRECISION=runtime.dot_precision(w_hh.dtype),
            **cfg.launch_kwargs(),
        )  # fmt: skip
    finish_state_grad(dh, ds, w_hh, dhs, plan)
    if dcs is not None:
        dc += dcs[plan.first_slot]
    return dg, ds, dht, dl, dh, dc
