"""Triton helpers shared by the per-step kernels of every cell.

State-history layout (all per-step kernels): ``Hs [T+1, B, Hout]`` holds every
hidden state; the forward direction reads slot t and writes slot t+1, the reverse
direction reads slot t+1 and writes slot t, so ``y`` is a view of ``Hs`` and the
input is never flipped. Rows that are inactive at a step (packed sequences) are
copied through, so every slot holds the full batch.

Backward state gradient (``state_grad``): the gradient of the state a step writes
is the gradient arriving at that slot (from ``y`` / ``h_n``) plus what the step
processed just before (in backward order, i.e. the next step in time) sends back:
``dG_next W_hh`` for rows active there, or the whole running gradient for rows
that were inactive (their state was copied). The running buffer ``DH [B, Hout]``
holds, per row, either the pointwise part of that gradient (GRU's ``dh z``;
0 for LSTM / RNN) or the full carried gradient. Computing ``dG_next W_hh`` at the
start of the next launch (instead of at the end of the launch that produced
``dG_next``) keeps one launch per step: every program needs all of ``dG_next``.
The step processed last has no later launch, so its ``dG W_hh`` is one GEMM on the
host (:func:`finish_state_grad`).
"""

import triton
import triton.language as tl

from .tiles import packed_ptrs, rec_tile


@triton.jit
def state_grad(
    dh_ptr,  # [B, HOUT] running state gradient (accumulation dtype)
    dg_ptr,  # [T, B, GH] recurrent gate gradients of every step
    w_ptr,  # [GH, HOUT] W_hh
    dhs_ptr,  # [T+1, B, HOUT] gradient of the state history (HAS_DHS)
    dy_ptr,  # [N, HOUT] gradient of the packed output (HAS_DY)
    dg_prev_off,  # element offset of dG of the step processed before this one
    dhs_off,  # element offset of dHs[slot written by this step]
    y_row0,  # first row of this step in the packed output
    rows,  # [BLOCK_B] batch rows of this program
    cols,  # [BLOCK_H] state columns of this program
    rmask,  # [BLOCK_B] rows < B
    cmask,  # [BLOCK_H] cols < HOUT
    act,  # [BLOCK_B] rows active at this step
    prev,  # [BLOCK_B] rows active at the step processed before this one
    GH,
    HOUT,
    HAS_DHS,
    HAS_DY,
    PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    acc_ty = dh_ptr.dtype.element_ty
    mask2 = rmask[:, None] & cmask[None, :]
    total = tl.load(dh_ptr + rows[:, None] * HOUT + cols[None, :], mask=mask2, other=0.0)
    # W_hh is [GH, HOUT]: element (col, k) of the product's weight at k * HOUT + col
    total += rec_tile(dg_ptr + dg_prev_off, w_ptr, rows, prev, cols, cmask, GH, 1, HOUT, acc_ty,
                      PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)  # fmt: skip
    if HAS_DHS:
        total += tl.load(
            dhs_ptr + dhs_off + rows[:, None] * HOUT + cols[None, :], mask=mask2, other=0.0
        ).to(acc_ty)
    if HAS_DY:
        dy = packed_ptrs(dy_ptr, y_row0, rows, cols, HOUT)
        total += tl.load(dy, mask=act[:, None] & cmask[None, :], other=0.0).to(acc_ty)
    return total


def finish_state_grad(dh, dg, w_hh, t_prev, rows_prev, dhs, plan) -> None:
    """Completes ``dh`` [B, Hout] (the running state gradient after the last backward
    launch) into the gradient of the first slot's state: adds ``dG W_hh`` of the step
    processed last (``dg[t_prev]`` of ``dg`` [T, B, GH], active in its first ``rows_prev``
    rows) and the gradient arriving at that slot (``dhs``)."""
    if rows_prev:
        dh[:rows_prev].addmm_(dg[t_prev, :rows_prev].to(dh.dtype), w_hh.to(dh.dtype))
    if dhs is not None:
        dh += dhs[plan.first_slot]
