"""Helpers shared by the kernels of every cell (per-step, persistent, variant) and launchers.

State-history layout (all step kernels): ``Hs [T+1, B, Hout]`` holds every
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
start of the next step (instead of at the end of the step that produced ``dG_next``)
needs one launch, or one grid barrier, per step: every program needs all of
``dG_next``. The step processed last has no later step, so its ``dG W_hh`` is one GEMM
on the host (:func:`finish_state_grad`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import runtime
from .cellmath import CIFG, GRU, LSTM, RNN_RELU, gru_bwd, lstm_bwd, rnn_bwd
from .tiles import load_gates, packed_ptrs, rec_tile


@triton.jit
def state_grad(dh_ptr, dg_ptr, w_ptr, dhs_ptr, dy_ptr, dg_prev_off, dhs_off, y_row0, rows, cols,
               rmask, cmask, act, prev, GH, HOUT, HAS_DHS, HAS_DY, PRECISION: tl.constexpr,
               BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """The tile ``rows x cols`` (masks ``rmask``, ``cmask``) of the gradient of the state a
    step writes (see the module docstring): the running ``dh`` [B, HOUT] (accumulation dtype),
    plus ``dG W_hh`` of the step processed before this one (``dg`` [T, B, GH] at
    ``dg_prev_off``, ``W_hh`` [GH, HOUT]; its active rows ``prev``), plus ``dHs`` [T+1, B, HOUT]
    at ``dhs_off``, the slot this step writes (HAS_DHS), plus, in this step's active rows
    ``act``, ``dy`` [N, HOUT] from row ``y_row0`` (HAS_DY). (The resident launch, which holds
    ``W_hh`` on chip, calls its parts in another order: :func:`.step._step_bwd_kernel`.)"""
    # W_hh is [GH, HOUT]: element (col, k) of the product's weight at k * HOUT + col
    rec = rec_tile(dg_ptr + dg_prev_off, w_ptr, rows, prev, cols, cmask, GH, 1, HOUT,
                   dh_ptr.dtype.element_ty, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)  # fmt: skip
    # loaded after the K loop: not held across it
    ins = state_grad_inputs(dh_ptr, dhs_ptr, dy_ptr, dhs_off, y_row0, rows, cols, rmask, cmask,
                            act, HOUT, HAS_DHS, HAS_DY)  # fmt: skip
    return state_grad_sum(ins, rec, HAS_DHS, HAS_DY)


@triton.jit
def state_grad_inputs(dh_ptr, dhs_ptr, dy_ptr, dhs_off, y_row0, rows, cols, rmask, cmask, act,
                      HOUT, HAS_DHS, HAS_DY):  # fmt: skip
    """The tiles :func:`state_grad` adds to its product: ``(dh, dHs, dy)``, zeros for the
    gradients not given."""
    mask2 = rmask[:, None] & cmask[None, :]
    state = rows[:, None] * HOUT + cols[None, :]
    dh = tl.load(dh_ptr + state, mask=mask2, other=0.0)
    # masked off, not branched around: a load in a branch is waited for where the branch
    # ends, before the loads written after it are issued
    dhs = tl.load(dhs_ptr + dhs_off + state, mask=mask2 & HAS_DHS, other=0.0)
    dy = tl.load(packed_ptrs(dy_ptr, y_row0, rows, cols, HOUT),
                 mask=act[:, None] & cmask[None, :] & HAS_DY, other=0.0)  # fmt: skip
    return dh, dhs, dy


@triton.jit
def state_grad_sum(ins, rec, HAS_DHS, HAS_DY):
    """:func:`state_grad`'s sum of its product ``rec`` and the tiles ``ins``
    (:func:`state_grad_inputs`), in that order, in the accumulation dtype (``rec``'s)."""
    dh, dhs, dy = ins
    total = dh + rec
    if HAS_DHS:
        total += dhs.to(rec.dtype)
    if HAS_DY:
        total += dy.to(rec.dtype)
    return total


@triton.jit
def late(x, mask):
    """``x`` where ``mask``, else 0: the identity on a tile loaded with ``mask`` and
    ``other=0.0``, written where the tile is used. A loaded tile that takes the layout of a
    ``tl.dot``'s result changes layout through shared memory behind a CTA barrier; the
    compiler puts that change right after the load, unless an operation on the tile in its
    load layout stands between, and loads written after the change wait for it (one round
    trip more, :mod:`fusedrnn.sass`). So a step that loads all its tiles first and passes them
    through ``late`` at their use issues the loads together."""
    return tl.where(mask, x, 0.0)


@triton.jit
def late_all(tiles, mask):
    """:func:`late` of each tile of a tuple."""
    out = ()
    for i in tl.static_range(len(tiles)):
        out = out + (late(tiles[i], mask),)
    return out


@triton.constexpr_function
def gate_blocks(CELL, OPTIONS=0):
    """The number G of gate blocks of a cell: LSTM 4 (3 with CIFG), GRU 3, RNN 1. A constexpr
    function, not a ``@triton.jit`` one: Triton 3.6 (the GPU machines' version) returns a
    jit function's value as a tensor, which a ``tl.constexpr`` parameter then rejects."""
    return (3 if CIFG & OPTIONS else 4) if CELL == LSTM else (3 if CELL == GRU else 1)


@triton.jit
def cell_bwd(dh, dc, hs_ptr, cs_ptr, saved, state, r_off, w_off, H, mask2, CELL: tl.constexpr):
    """Gate gradients of a step of a torch.nn cell (:mod:`.cellmath`) from the gradients
    ``dh`` (and, LSTM, ``dc``) of the states it wrote: LSTM ``(d_i, d_f, d_g, d_o, dc_prev)``,
    GRU ``(d_r, d_z, d_n, d_hn, dh z)``, RNN ``d pre`` in every slot (from the saved output).
    The states are read at ``r_off`` / ``w_off`` (the slots read / written) plus ``state``, the
    tile's offsets in a [B, H] slot; ``saved`` points at the tile of the first saved gate."""
    ins = cell_bwd_inputs(hs_ptr, cs_ptr, saved, state, r_off, w_off, H, mask2, CELL)
    return cell_bwd_loaded(dh, dc, ins, CELL)


@triton.jit
def cell_bwd_inputs(hs_ptr, cs_ptr, saved, state, r_off, w_off, H, mask2, CELL: tl.constexpr):
    """The tiles :func:`cell_bwd` reads (arguments as there), six: LSTM ``(c_{t-1}, c_t, i, f,
    g, o)``, GRU ``(h_{t-1}, h_{t-1}, r, z, n, hn)``, RNN ``h_t`` six times."""
    if CELL == LSTM:
        a = tl.load(cs_ptr + r_off + state, mask=mask2, other=0.0)
        b = tl.load(cs_ptr + w_off + state, mask=mask2, other=0.0)
        g0, g1, g2, g3 = load_gates(saved, H, mask2, 4)
    elif CELL == GRU:
        a = tl.load(hs_ptr + r_off + state, mask=mask2, other=0.0)
        b = a
        g0, g1, g2, g3 = load_gates(saved, H, mask2, 4)
    else:
        a = tl.load(hs_ptr + w_off + state, mask=mask2, other=0.0)
        b, g0, g1, g2, g3 = a, a, a, a, a
    return a, b, g0, g1, g2, g3


@triton.jit
def cell_bwd_loaded(dh, dc, ins, CELL: tl.constexpr):
    """:func:`cell_bwd` of the tiles ``ins`` it reads (:func:`cell_bwd_inputs`)."""
    a, b, g0, g1, g2, g3 = ins
    if CELL == LSTM:
        return lstm_bwd(g0, g1, g2, g3, a, b, dh, dc)
    elif CELL == GRU:
        return gru_bwd(g0, g1, g2, g3, a.to(dh.dtype), dh)
    else:
        d = rnn_bwd(a.to(dh.dtype), dh, CELL == RNN_RELU)
        return d, d, d, d, d


@triton.jit
def visit(s, T, steps_ptr, REVERSE, BACKWARD: tl.constexpr):
    """The s-th step visited (the backward visits the forward's order reversed): its time
    index, the Hs/Cs slots it reads and writes (see the module docstring), its first row in
    x / y and its active rows (from the ``[T, 2]`` steps table). REVERSE is a compile-time
    constant (the step and persistent kernels) or a run-time flag (the variant kernels, which
    so compile once for both directions)."""
    t, slot_r, slot_w = visit_slots(s, T, REVERSE, BACKWARD)
    row0 = tl.load(steps_ptr + 2 * t)
    rows = tl.load(steps_ptr + 2 * t + 1)
    return t, slot_r, slot_w, row0, rows


@triton.jit
def visit_slots(s, T, REVERSE, BACKWARD: tl.constexpr):
    """:func:`visit`'s time index and slots, without the table."""
    if REVERSE == BACKWARD:
        t = s
    else:
        t = T - 1 - s
    slot_r, slot_w = t, t + 1
    if REVERSE:
        slot_r, slot_w = t + 1, t
    return t, slot_r, slot_w


@triton.jit
def visit_rows(s, s_end, T, steps_ptr, REVERSE, BACKWARD: tl.constexpr):
    """:func:`visit`'s first row and active rows of the s-th step, zeros unless
    ``0 <= s < s_end``: the backward step kernel loads them a step ahead, before the barrier
    that ends the step before, so that a step does not begin with a round trip to the table."""
    t, _, _ = visit_slots(s, T, REVERSE, BACKWARD)
    live = (s >= 0) & (s < s_end)
    row0 = tl.load(steps_ptr + 2 * t, mask=live, other=0)
    rows = tl.load(steps_ptr + 2 * t + 1, mask=live, other=0)
    return row0, rows


def forward_buffers(cell, like, T, B, Hout, H, proj, packed, save) -> list:
    """The buffers the forward kernels of the torch.nn cells write (per-step and persistent
    alike), in ``like``'s dtype (``x`` or ``xg`` [N, K]) and on its device: ``[Hs [T+1,B,Hout],
    Cs [T+1,B,H] (LSTM), gates [T,B,4H] (LSTM, GRU), m [T,B,H] (proj), y [N,Hout] (packed)]``.
    Empty where unused: the gates unless ``save`` (only the backward reads them), then in the
    accumulation dtype where the cell has gates."""
    acc, lstm, gated = runtime.acc_dtype(like.dtype), cell == "lstm", cell in ("lstm", "gru")
    hs = runtime.buffer(like, T + 1, B, Hout)
    cs = runtime.empty(T + 1, B, H, dtype=acc, device=like.device) if lstm else hs.new_empty(0)
    gates = (runtime.empty(T, B, 4 * H, dtype=acc, device=like.device) if gated and save
             else hs.new_empty(0, dtype=acc if gated else like.dtype))  # fmt: skip
    return [hs, cs, gates, runtime.buffer(like, T, B, H, on=proj),
            runtime.buffer(like, like.shape[0], Hout, on=packed)]  # fmt: skip


def finish_state_grad(dh, dc, dg, w_hh, dhs, dcs, plan) -> None:
    """Completes ``dh`` [B, Hout] and the LSTM's ``dc`` [B, H] (the running state gradients
    after the last backward launch) into the gradients of the first slot's states: adds
    ``dG W_hh`` of the step processed last (``plan.steps[0]``, from ``dg`` [T, B, GH]) and the
    gradients arriving at that slot (``dhs``, ``dcs``)."""
    last = plan.steps[0] if plan.steps else None
    if last is not None and last.rows:
        dh[: last.rows].addmm_(dg[last.t, : last.rows].to(dh.dtype), w_hh.to(dh.dtype))
    if dhs is not None:
        dh += dhs[plan.first_slot]
    if dcs is not None:
        dc += dcs[plan.first_slot]


def steps_table(plan: runtime.Plan, device: torch.device) -> Tensor:
    """[T, 2] int32 ``(first row, active rows)`` per step, made on ``device`` from host
    integers passed as kernel scalars: no host-to-device copy and no sync, so the op can be
    captured in a CUDA graph. Dense input: two launches. Packed input: one fill per run of
    equal batch sizes (at most min(T, B) runs, batch sizes never increase) and a cumsum."""
    T = plan.T
    rows = torch.empty(T, dtype=torch.int32, device=device)
    by_t, start = plan.by_t, 0
    for t in range(1, T + 1):
        if t == T or by_t[t].rows != by_t[start].rows:
            rows[start:t].fill_(by_t[start].rows)
            start = t
    if all(s.rows == plan.B for s in by_t):  # dense: row0 = t * B
        row0 = torch.arange(0, T * plan.B, plan.B, dtype=torch.int32, device=device)
    else:  # packed: row0 = exclusive prefix sum of the batch sizes
        row0 = torch.cumsum(rows, 0, dtype=torch.int32) - rows
    return torch.stack((row0, rows), 1)
