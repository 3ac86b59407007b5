"""Whole-row Triton helpers of the variant kernels (layer norm needs complete rows).

A variant program owns BLOCK_B batch rows and *all* features of those rows, looping
over them in BLOCK_H chunks, so a row statistic (mean and variance for layer norm,
or the two means of its backward) is a plain loop inside the program and needs no
communication between programs. Values produced in one pass and read in the next
go through a global buffer written by the same program; ``tl.debug_barrier`` between
the passes makes the writes of every thread of the program visible (the chunks are
not necessarily read by the thread that wrote them).
"""

import triton
import triton.language as tl

from .cellmath import layer_norm_bwd, zoneout_keep


@triton.jit
def rec_chunk(
    h_ptr,  # [B, K] left operand rows (e.g. a slot of the state history)
    w_ptr,  # weight: element (f, k) at f * stride_f + k * stride_k
    rows,  # [BLOCK_B]
    act,  # [BLOCK_B] rows active at this step (others read as 0)
    feats,  # [BLOCK_H] output features
    fmask,  # [BLOCK_H]
    K,
    stride_f,
    stride_k,
    ACC_TY: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """``sum_k h[rows, k] w(feats, k)`` as a [BLOCK_B, BLOCK_H] tile."""
    acc = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC_TY)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < K
        h = tl.load(h_ptr + rows[:, None] * K + ks[None, :], mask=act[:, None] & kmask[None, :],
                    other=0.0)  # fmt: skip
        w = tl.load(w_ptr + feats[None, :] * stride_f + ks[:, None] * stride_k, mask=kmask[:, None] & fmask[None, :],
                    other=0.0)  # fmt: skip
        acc = tl.dot(h, w, acc, input_precision=PRECISION)
    return acc


@triton.jit
def row_rstd(
    buf_ptr,  # [B, F] rows to normalise (already offset to the step)
    rows,
    act,
    mean,  # [BLOCK_B]
    F,
    eps,
    ACC_TY: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """``1 / sqrt(var + eps)`` of every row, variance about the given mean (two-pass
    variance: exact enough for float64 comparisons, unlike sum-of-squares)."""
    ss = tl.zeros((BLOCK_B,), dtype=ACC_TY)
    for f0 in range(0, F, BLOCK_H):
        feats = f0 + tl.arange(0, BLOCK_H)
        m2 = act[:, None] & (feats < F)[None, :]
        v = tl.load(buf_ptr + rows[:, None] * F + feats[None, :], mask=m2, other=0.0)
        d = tl.where(m2, v - mean[:, None], 0.0)
        ss += tl.sum(d * d, axis=1)
    return 1.0 / tl.sqrt(ss / F + eps)


@triton.jit
def rec_raw_stats(
    h_ptr,  # [B, K] previous hidden state
    w_ptr,  # [F, K] W_hh
    out_ptr,  # [B, F] out: raw recurrent projection (zero in inactive rows)
    rows,
    rmask,
    act,
    F,
    K,
    eps,
    ACC_TY: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """First layer-norm pass over the recurrent projection: writes ``h W^T`` for all F
    features and returns its row mean and rstd."""
    s1 = tl.zeros((BLOCK_B,), dtype=ACC_TY)
    for f0 in range(0, F, BLOCK_H):
        feats = f0 + tl.arange(0, BLOCK_H)
        fmask = feats < F
        s = rec_chunk(h_ptr, w_ptr, rows, act, feats, fmask, K, K, 1, ACC_TY, PRECISION, BLOCK_B,
                      BLOCK_H, BLOCK_K)  # fmt: skip
        s = tl.where(act[:, None] & fmask[None, :], s, 0.0)
        tl.store(out_ptr + rows[:, None] * F + feats[None, :], s,
                 mask=rmask[:, None] & fmask[None, :])  # fmt: skip
        s1 += tl.sum(s, axis=1)
    mean = s1 / F
    tl.debug_barrier()
    return mean, row_rstd(out_ptr, rows, act, mean, F, eps, ACC_TY, BLOCK_B, BLOCK_H)


@triton.jit
def ln_bwd_rows(
    dy_ptr,  # [B, F] gradient of the layer-norm output (already offset to the step)
    xhat_ptr,  # [B, F] saved normalised input
    w_ptr,  # [F] gain
    rstd,  # [BLOCK_B]
    sum_d,  # [BLOCK_B] row sums of dy * w
    sum_dx,  # [BLOCK_B] row sums of dy * w * xhat
    out_ptr,  # [B, F] out: gradient of the layer-norm input (zero in inactive rows)
    rows,
    rmask,
    act,
    F,
    BLOCK_H: tl.constexpr,
):
    """Last layer-norm backward pass: ``dx`` for all F features of the rows."""
    for f0 in range(0, F, BLOCK_H):
        feats = f0 + tl.arange(0, BLOCK_H)
        fmask = feats < F
        m2 = rmask[:, None] & fmask[None, :]
        off = rows[:, None] * F + feats[None, :]
        w = tl.load(w_ptr + feats, mask=fmask, other=0.0)
        dxhat = tl.load(dy_ptr + off, mask=m2, other=0.0) * w[None, :]
        xhat = tl.load(xhat_ptr + off, mask=m2, other=0.0)
        dx = layer_norm_bwd(dxhat, xhat, rstd, sum_d / F, sum_dx / F)
        tl.store(out_ptr + off, tl.where(act[:, None], dx, 0.0), mask=m2)


@triton.jit
def emit_state(
    h_new,  # [BLOCK_B, BLOCK_H] candidate state h~ of columns ``cols``
    hs_ptr,  # [T+1, B, HOUT] state history
    mh_ptr,  # [N, HOUT] zoneout mask of h, laid out like y (ZONE_H == 1)
    y_ptr,  # [N, HOUT] packed output (WRITE_Y)
    p_h,  # zoneout probability of h (ZONE_H == 2)
    hs_r,  # offset of the slot read
    hs_w,  # offset of the slot written
    row0,  # first row of this step in y / the masks
    rows,
    rmask,
    act,
    cols,
    cmask,
    HOUT,
    ZONE_H,
    WRITE_Y,
):
    """Zoneout of h, then the new state (the old one in inactive rows) into the history
    and the packed output."""
    m2 = rmask[:, None] & cmask[None, :]
    am = act[:, None] & cmask[None, :]
    off = rows[:, None] * HOUT + cols[None, :]
    h_prev = tl.load(hs_ptr + hs_r + off, mask=m2, other=0.0)
    y_off = (row0 + rows[:, None]).to(tl.int64) * HOUT + cols[None, :]
    if ZONE_H == 1:
        mh = tl.load(mh_ptr + y_off, mask=am, other=0.0)
    else:
        mh = tl.zeros_like(h_new)
    k = zoneout_keep(mh, p_h, ZONE_H)
    h = tl.where(act[:, None], k * h_prev + (1.0 - k) * h_new, h_prev).to(h_prev.dtype)
    tl.store(hs_ptr + hs_w + off, h, mask=m2)
    if WRITE_Y:
        tl.store(y_ptr + y_off, h, mask=am)
