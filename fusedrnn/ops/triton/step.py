"""Step kernels of the torch.nn cells (LSTM, GRU, Elman RNN) and the launchers of every
path of these cells (:func:`step_fwd` / :func:`step_bwd` also launch the :mod:`.persistent`
kernels, with the same buffers): one forward and one backward kernel, the cell a
compile-time constant (``CELL``, as in :mod:`.persistent`), the LSTM's projection
(proj_size > 0) a second phase of each step.

A launch runs the steps ``s_begin .. s_end - 1`` of the layer's visiting order, each
program walking tiles of ``BLOCK_B`` rows x ``BLOCK_H`` units. Two ways to launch the same
kernel: every step in one cooperative launch (``SYNC``), the programs meeting at a grid
barrier (:mod:`.sync`) after each phase of a step, since the next phase reads the whole
state; or a launch per phase of each step, with a program per tile (the per-step path,
kept for comparison and for empty sequences). So the arithmetic the interpreter tests is
exactly what the cooperative launch runs; the barrier is the only difference.

Where ``W_hh`` lives: in the plain cooperative launch a program re-reads its slice (all gates
of its units) at every step, from the L1/L2 caches. The resident launch (``RESIDENT`` > 0)
loads the slice once, before the step loop, and keeps it in shared memory
(:func:`.tiles.resident_slice`): a program per column block of units, each walking the row
blocks of its own units (:func:`.sync.resident_grid`). The backward holds the same units'
columns of ``W_hh`` for its state gradient. With projection the slice is the first phase's
(forward: units of H, rows of ``W_hh``; backward: units of Hout, columns of ``W_hh``), and
the other phase's product with ``W_hr`` holds a slice of its own (``RESIDENT_PROJ``: forward
the rows of the program's outputs, backward the columns of its units) where one grid keeps
each program in one column block of both phases and a step then waits no longer
(:func:`.configs.resident_tries`); otherwise it reads ``W_hr`` from the caches in the
cooperative launch's K loop. The resident K loops are unrolled, and the chunks of
``h_prev`` (or ``dG``) are loaded ``LOAD_GROUP`` at a time, as many as the shared memory beside
the slice can stage (:func:`.tiles.rec_gates_resident`, :func:`.sync.load_group`), the
phase's other tiles before the first group (:func:`.common.late`; with projection in both
phases where ``W_hr`` is held): a step waits one round trip per group of each phase and each
barrier's two (the forward one more, for its row counts). Every backward launch loads the
next step's row counts before the barrier.

Forward, per step: a tile of BLOCK_B batch rows x BLOCK_H hidden units computes the G
recurrent parts of those units ``h_prev W_hh,q^T`` in one loop over ``h_prev``, adds ``xg``
and ``b_hh`` (the GRU's ``b_hn`` inside the reset product, as PyTorch) and applies the cell
(:mod:`.cellmath`), saving the LSTM's i, f, g, o or the GRU's r, z, n, hn for the backward
(the RNN's backward takes the activation's derivative from the output). With PROJ the LSTM
writes the unprojected ``m_t``, from which the projection phase (after a barrier: it reads
all of ``m_t``) writes ``h_t = m_t W_hr^T``.

Backward, per step: the state gradient (:func:`.common.state_grad`, which folds in
``dG_next W_hh``), then the cell's gate gradients (:mod:`.cellmath`); with projection a first
phase forms ``dh_t`` over the ``Hout`` columns and the cell's phase computes ``dm_t = dh_t
W_hr``. The GRU writes ``dG_x`` and ``dG_h`` (see :func:`step_bwd`); its direct term ``dh z``
stays in the running state gradient. Weight gradients are GEMMs over all steps afterwards
(see :mod:`.layer_op`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..checks import GATES
from . import configs, persistent, runtime
from .cellmath import CELL_CODE, GRU, LSTM, RNN_RELU, gru_fwd, lstm_fwd, rnn_fwd
from .common import (
    cell_bwd,
    cell_bwd_inputs,
    cell_bwd_loaded,
    finish_state_grad,
    forward_buffers,
    gate_blocks,
    late,
    late_all,
    state_grad,
    state_grad_inputs,
    state_grad_sum,
    steps_table,
    visit,
    visit_rows,
    visit_slots,
)
from .configs import (
    pick_cooperative_config,
    pick_resident_config,
    pick_step_config,
    resident_allowed,
    resident_tries,
)
from .sync import (
    BARRIER_KINDS,
    barrier_state,
    cooperative_grid,
    grid_barrier,
    load_group,
    resident_grid,
    step_chunks,
)
from .tiles import (
    add_gates,
    add_loaded,
    block_tile,
    kernel_jit,
    load_gates,
    packed_ptrs,
    rec_gates,
    rec_gates_resident,
    rec_tile,
    resident_slice,
    store_gates,
    store_state,
    tile_ptrs,
)


@triton.jit
def _walk(SYNC: tl.constexpr):
    """``(first tile, stride)`` of the tiles a program visits: pid, pid + grid, ... in a
    cooperative launch. A per-step launch has a program per tile and walks
    ``range(pid, pid + 1)``: bounds the compiler can count, so the loop folds away and
    nothing is hoisted out of it (hoisted tile pointers made the per-step kernels spill)."""
    if SYNC:
        return tl.program_id(0), tl.num_programs(0)
    return tl.program_id(0), 1


@triton.jit
def _strides(K, F, W_T: tl.constexpr):
    """``(stride_f, stride_k)`` of weight element (f, k) of an ``[F, K]`` weight, given as is
    or transposed (``W_T``, :func:`.runtime.weights_transposed`)."""
    if W_T:
        return 1, F
    return K, 1


@triton.jit
def _tiles(B, N, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """Column blocks and tiles of a ``[B, N]`` phase (:func:`.tiles.block_tile` numbers them)."""
    col_blocks = tl.cdiv(N, BLOCK_H)
    return col_blocks, col_blocks * tl.cdiv(B, BLOCK_B)


@triton.jit
def _resident_units(first, col_blocks, H, BLOCK_H: tl.constexpr):
    """The units (and ``units < H``) whose weights a program holds on chip: those of its first
    tile's column block. A resident launch gives each program tiles of one column block, its
    grid a multiple of the column blocks (:func:`launch_phases`); a launch per phase has a
    program per tile."""
    units = (first % col_blocks) * BLOCK_H + tl.arange(0, BLOCK_H)
    return units, units < H


@triton.jit
def _cell_inputs(xg_ptr, b_ptr, cs_ptr, h_ptr, xg_row0, rows, units, umask, amask, mask2, state,
                 c_off, H, HAS_BIAS, CELL: tl.constexpr, GX: tl.constexpr,
                 STATE: tl.constexpr):  # fmt: skip
    """What a forward step reads for its tile besides the product ``h_{t-1} W_hh^T``: the
    tiles of ``xg`` and ``b_hh`` ([1, BLOCK_H], zeros without a bias) of its GX gates, the
    LSTM's ``c_{t-1}`` (``cs`` at ``c_off``) and, with STATE, the state an inactive row keeps
    (``h`` [B, H], already offset); ``xg``'s first tile stands in for what is not read."""
    x0, x1, x2, x3 = load_gates(packed_ptrs(xg_ptr, xg_row0, rows, units, GX * H), H, amask, GX)
    # masked off without a bias, not branched around (see common.state_grad_inputs); GRU:
    # b_hn belongs to the reset product, the bias joins h's parts alone
    b0, b1, b2, b3 = load_gates(b_ptr + units[None, :], H, umask[None, :] & HAS_BIAS, GX)
    c_prev = x0
    if CELL == LSTM:
        c_prev = tl.load(cs_ptr + c_off + state, mask=mask2, other=0.0)
    h_prev = x0
    if STATE:
        h_prev = tl.load(h_ptr + state, mask=mask2, other=0.0)
    return x0, x1, x2, x3, b0, b1, b2, b3, c_prev, h_prev


@triton.jit
def _cell_grad_inputs(dc_ptr, dcs_ptr, state, w_off, mask2, CELL: tl.constexpr, HAS_DCS):
    """The LSTM's tiles of its running cell-state gradient ``dc`` [B, H] and of ``dCs``
    [T+1, B, H] at the slot ``w_off`` the step writes (zeros without HAS_DCS); none for the
    other cells."""
    ins = ()
    if CELL == LSTM:
        dc = tl.load(dc_ptr + state, mask=mask2, other=0.0)
        # masked off, not branched around (see common.state_grad_inputs)
        dcs = tl.load(dcs_ptr + w_off + state, mask=mask2 & HAS_DCS, other=0.0)
        ins = (dc, dcs)
    return ins


@triton.jit
def _cell_grad(dh, ins, CELL: tl.constexpr, HAS_DCS):
    """The gradient of the cell state a step writes, from :func:`_cell_grad_inputs`'s tiles
    ``ins`` (LSTM); ``dh`` for the other cells, which pass it on unused."""
    dc = dh
    if CELL == LSTM:
        dc = ins[0]
        if HAS_DCS:
            dc += ins[1].to(dc.dtype)
    return dc


@kernel_jit
def _step_fwd_kernel(
    xg_ptr,  # [N, G*H] input projection x W_ih^T + b_ih (x layout)
    w_ptr,  # [G*H, HOUT] W_hh, or [HOUT, G*H] W_hh^T (W_T)
    b_ptr,  # [G*H] b_hh (HAS_BIAS)
    hs_ptr,  # [T+1, B, HOUT] hidden-state history
    cs_ptr,  # [T+1, B, H] cell-state history (LSTM; accumulation dtype)
    gates_ptr,  # [T, B, 4H] saved LSTM i, f, g, o / GRU r, z, n, hn (WRITE_GATES)
    m_ptr,  # [T, B, H] unprojected output (PROJ)
    whr_ptr,  # [HOUT, H] W_hr, or [H, HOUT] W_hr^T (W_T) (PROJ)
    y_ptr,  # [N, HOUT] packed output (WRITE_Y)
    steps_ptr,  # [T, 2] int32: first row of step t in x / xg / y, active rows at t
    sync_ptr,  # int32 barrier state, zero at launch (SYNC; sync.barrier_state)
    s_begin: tl.int64, s_end: tl.int64,  # steps s_begin .. s_end - 1 of the visiting order
    phases,  # of each step: 1 the cell, 2 the projection (PROJ), 3 both (cooperative)
    T: tl.int64, B, H, HOUT,  # HOUT: H unless the LSTM projects
    CELL: tl.constexpr,  # cellmath.LSTM, GRU, RNN_TANH or RNN_RELU
    HAS_BIAS, PROJ: tl.constexpr, REVERSE: tl.constexpr,
    SYNC: tl.constexpr,  # a grid-wide barrier between steps (cooperative launch)
    WRITE_Y, WRITE_GATES: tl.constexpr, ACC_TY: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    RESIDENT: tl.constexpr = 0,  # chunks of W_hh held on chip (see _resident_units), 0: none
    LOAD_GROUP: tl.constexpr = 1,  # chunks of h_prev loaded together (tiles.rec_gates_resident)
    W_T: tl.constexpr = False,  # the weights transposed (runtime.weights_transposed)
    RESIDENT_PROJ: tl.constexpr = 0,  # chunks of W_hr held on chip as W_hh's (PROJ), 0: none
    BARRIER: tl.constexpr = 0,  # the grid barrier's kind (sync.BARRIER_KINDS; SYNC)
):  # fmt: skip
    G: tl.constexpr = gate_blocks(CELL)
    GX: tl.constexpr = 3 if CELL == GRU else G  # gate blocks of xg and b_hh (GRU: G is 3 too)
    # only the LSTM's W_hh may be [4H, HOUT]: the others use the one size H throughout
    K = HOUT if CELL == LSTM else H
    # weight element (f, k) of W_hh ([G*H, K]) and W_hr ([HOUT, H]) at f * stride_f + k * stride_k
    w_f, w_k = _strides(K, G * H, W_T)
    r_f, r_k = _strides(H, HOUT, W_T)
    col_blocks, tiles = _tiles(B, H, BLOCK_B, BLOCK_H)
    first, every = _walk(SYNC)
    ws, wr = (), ()
    if RESIDENT:  # W_hh,q[units, :] as [k, unit] tiles
        own, own_mask = _resident_units(first, col_blocks, H, BLOCK_H)
        ws = resident_slice(w_ptr, own, own_mask, K, w_f, w_k, H * w_f, G, RESIDENT, BLOCK_K)
    if RESIDENT_PROJ:  # W_hr[outputs, :] as [k, output] tiles, the projection's
        outs, outs_mask = _resident_units(first, _tiles(B, HOUT, BLOCK_B, BLOCK_H)[0], HOUT,
                                          BLOCK_H)  # fmt: skip
        wr = resident_slice(whr_ptr, outs, outs_mask, H, r_f, r_k, 0, 1, RESIDENT_PROJ, BLOCK_K)
    # the row counts loaded as the step begins: loaded a step ahead, as the backward's are, the
    # float32 and TF32 forward kernels spilled (at 255 registers)
    for s in range(s_begin, s_end if SYNC else s_begin + 1):
        t, slot_r, slot_w, xg_row0, rows_active = visit(s, T, steps_ptr, REVERSE, False)
        hs_r = slot_r * B * HOUT
        for tile in range(first, tiles if SYNC else first + 1, every):
            if phases & 1:
                rows, units, rmask, umask, act, mask2 = block_tile(
                    tile, col_blocks, B, H, rows_active, BLOCK_B, BLOCK_H
                )
                amask = act[:, None] & umask[None, :]
                state = rows[:, None] * H + units[None, :]
                if RESIDENT:
                    # every load of the step issued before the product, h_{t-1}'s first group
                    # last, and the tiles passed through `late` where used: one round trip for
                    # them all (fusedrnn.sass). The other launches load these tiles after their
                    # K loop: holding them across it, they would spill (float64)
                    ins = _cell_inputs(xg_ptr, b_ptr, cs_ptr, hs_ptr + hs_r, xg_row0, rows, units,
                                       umask, amask, mask2, state, slot_r * B * H, H, HAS_BIAS,
                                       CELL, GX, not (CELL == LSTM and PROJ))  # fmt: skip
                    p0, p1, p2, p3 = rec_gates_resident(hs_ptr + hs_r, ws, rows, act, K, G,
                                                        ACC_TY, PRECISION, BLOCK_B, BLOCK_H,
                                                        BLOCK_K, RESIDENT, LOAD_GROUP)  # fmt: skip
                    x0, x1, x2, x3, b0, b1, b2, b3, c_prev, h_prev = ins
                    x0, x1, x2, x3 = late_all((x0, x1, x2, x3), amask)
                    c_prev, h_prev = late_all((c_prev, h_prev), mask2)
                    if CELL != GRU:
                        p0, p1, p2, p3 = add_loaded(p0, p1, p2, p3, x0, x1, x2, x3, G)
                    if HAS_BIAS:
                        p0, p1, p2, p3 = add_loaded(p0, p1, p2, p3, b0, b1, b2, b3, GX)
                else:
                    p0, p1, p2, p3 = rec_gates(hs_ptr + hs_r, w_ptr, rows, act, units, umask, H, K,
                                               w_f, w_k, G, ACC_TY, PRECISION, BLOCK_B, BLOCK_H,
                                               BLOCK_K)  # fmt: skip
                    xg = packed_ptrs(xg_ptr, xg_row0, rows, units, GX * H)
                    if CELL == GRU:  # b_hn belongs to the reset product: the bias joins h's parts
                        if HAS_BIAS:
                            p0, p1, p2, _ = add_gates(p0, p1, p2, p2, b_ptr + units, H, umask, 3)
                        x0, x1, x2, _ = load_gates(xg, H, amask, 3)
                    else:
                        p0, p1, p2, p3 = add_gates(p0, p1, p2, p3, xg, H, amask, G)
                        if HAS_BIAS:
                            p0, p1, p2, p3 = add_gates(p0, p1, p2, p3, b_ptr + units, H, umask, G)
                    if CELL == LSTM:
                        c_prev = tl.load(cs_ptr + slot_r * B * H + state, mask=mask2, other=0.0)
                    else:  # the LSTM's after its cell: held across it, it spills (float64)
                        h_prev = tl.load(hs_ptr + hs_r + state, mask=mask2, other=0.0)

                gates_at = tile_ptrs(gates_ptr + t * B * 4 * H, rows, units, 4 * H)
                if CELL == LSTM:
                    i, f, g, o, c, h_new = lstm_fwd(p0, p1, p2, p3, c_prev)
                    tl.store(cs_ptr + slot_w * B * H + state, tl.where(act[:, None], c, c_prev),
                             mask=mask2)  # fmt: skip
                    if WRITE_GATES:  # only when a backward can follow (the op's save flag)
                        store_gates(gates_at, H, act, mask2, i, f, g, o, 4)
                    if PROJ:
                        # zeros in inactive rows: the dW_hr GEMM reads every row
                        tl.store(m_ptr + t * B * H + state, tl.where(act[:, None], h_new, 0.0),
                                 mask=mask2)  # fmt: skip
                    elif not RESIDENT:
                        h_prev = tl.load(hs_ptr + hs_r + state, mask=mask2, other=0.0)
                else:
                    if CELL == GRU:
                        r, z, n, h_new = gru_fwd(x0.to(ACC_TY), x1.to(ACC_TY), x2.to(ACC_TY),
                                                 p0, p1, p2, h_prev.to(ACC_TY))  # fmt: skip
                        if WRITE_GATES:
                            store_gates(gates_at, H, act, mask2, r, z, n, p2, 4)
                    else:
                        h_new = rnn_fwd(p0, CELL == RNN_RELU)
                if not PROJ:
                    store_state(h_new, h_prev, hs_ptr + slot_w * B * HOUT, y_ptr, xg_row0, rows,
                                rmask, act, units, umask, H, WRITE_Y)  # fmt: skip
        if SYNC:  # the projection (or the next step) reads every unit
            grid_barrier(sync_ptr, (s - s_begin) * (1 + PROJ) + 1, BARRIER)
        if PROJ:  # the projected state h_t = m_t W_hr^T ([HOUT, H]), into Hs and y
            out_blocks, out_tiles = _tiles(B, HOUT, BLOCK_B, BLOCK_H)
            for tile in range(first, out_tiles if SYNC else first + 1, every):
                if phases & 2:
                    hs_w, m_off = slot_w * B * HOUT, t * B * H
                    rows, cols, rmask, cmask, act, _ = block_tile(
                        tile, out_blocks, B, HOUT, rows_active, BLOCK_B, BLOCK_H
                    )
                    if RESIDENT_PROJ:  # h_{t-1}'s tile loaded with the product's first group
                        tile_mask = rmask[:, None] & cmask[None, :]
                        h_prev = tl.load(hs_ptr + hs_r + (rows[:, None] * HOUT + cols[None, :]),
                                         mask=tile_mask, other=0.0)  # fmt: skip
                        acc, _, _, _ = rec_gates_resident(m_ptr + m_off, wr, rows, act, H, 1,
                                                          ACC_TY, PRECISION, BLOCK_B, BLOCK_H,
                                                          BLOCK_K, RESIDENT_PROJ,
                                                          LOAD_GROUP)  # fmt: skip
                        h_prev = late(h_prev, tile_mask)
                    else:
                        acc = rec_tile(m_ptr + m_off, whr_ptr, rows, act, cols, cmask, H, r_f,
                                       r_k, ACC_TY, PRECISION, BLOCK_B, BLOCK_H,
                                       BLOCK_K)  # fmt: skip
                        # the tile mask formed after the loop, not held across it (up to 88
                        # registers more)
                        h_prev = tl.load(hs_ptr + hs_r + (rows[:, None] * HOUT + cols[None, :]),
                                         mask=rmask[:, None] & cmask[None, :], other=0.0)  # fmt: skip
                    store_state(acc, h_prev, hs_ptr + hs_w, y_ptr, xg_row0, rows, rmask, act,
                                cols, cmask, HOUT, WRITE_Y)  # fmt: skip
            if SYNC:
                grid_barrier(sync_ptr, (s - s_begin) * 2 + 2, BARRIER)


@kernel_jit
def _step_bwd_kernel(
    dg_ptr,  # [T, B, G*H] out: gate gradients (GRU: the input side, dG_x)
    dgh_ptr,  # [T, B, G*H] GRU: out, recurrent-side dG_h, read at the next step
    w_ptr, hs_ptr, cs_ptr, gates_ptr,  # as the forward kernel's (hs: GRU, RNN; cs: LSTM)
    dh_ptr,  # [B, HOUT] running state gradient (accumulation dtype; see common.py)
    dc_ptr,  # [B, H] running cell-state gradient (LSTM)
    dhs_ptr,  # [T+1, B, HOUT] gradient of Hs (HAS_DHS)
    dy_ptr,  # [N, HOUT] gradient of the packed output (HAS_DY)
    dcs_ptr,  # [T+1, B, H] gradient of Cs (HAS_DCS)
    dht_ptr,  # [T, B, HOUT] gradient of h_t from the projection launch (PROJ)
    whr_ptr, steps_ptr, sync_ptr,  # as the forward kernel's
    s_begin: tl.int64, s_end: tl.int64,  # as the forward kernel's, in backward order
    phases,  # of each step: 2 the projected state's gradient (PROJ), 1 the cell, 3 both
    T: tl.int64, B, H, HOUT, CELL: tl.constexpr, PROJ: tl.constexpr, REVERSE: tl.constexpr,
    SYNC: tl.constexpr, HAS_DHS, HAS_DY, HAS_DCS, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    RESIDENT: tl.constexpr = 0,  # as the forward kernel's (with PROJ: its first phase's)
    LOAD_GROUP: tl.constexpr = 1,  # chunks of dG loaded together (tiles.rec_gates_resident)
    RESIDENT_PROJ: tl.constexpr = 0,  # chunks of W_hr held on chip for the cell's phase (PROJ)
    BARRIER: tl.constexpr = 0,  # as the forward kernel's
):  # fmt: skip
    G: tl.constexpr = gate_blocks(CELL)
    acc_ty = dh_ptr.dtype.element_ty
    K = HOUT if CELL == LSTM else H
    # dG itself but for the GRU: through dg_ptr, so that the compiler sees one tensor
    dg_rec = dgh_ptr if CELL == GRU else dg_ptr
    col_blocks, tiles = _tiles(B, H, BLOCK_B, BLOCK_H)
    first, every = _walk(SYNC)
    ws, wr = (), ()
    if RESIDENT:  # W_hh[:, units] ([G*H, K]) as [k, unit] tiles; with PROJ units of Hout
        own, own_mask = _resident_units(first, _tiles(B, K, BLOCK_B, BLOCK_H)[0], K, BLOCK_H)
        ws = resident_slice(w_ptr, own, own_mask, G * H, 1, K, 0, 1, RESIDENT, BLOCK_K)
    if RESIDENT_PROJ:  # W_hr[:, units] ([HOUT, H]) as [k, unit] tiles, the cell's phase's
        cell_units, cell_mask = _resident_units(first, col_blocks, H, BLOCK_H)
        wr = resident_slice(whr_ptr, cell_units, cell_mask, HOUT, 1, H, 0, 1, RESIDENT_PROJ,
                            BLOCK_K)  # fmt: skip
    # the row counts of a step loaded before the barrier that ends the step before
    steps_end = s_end if SYNC else s_begin + 1
    y_row0, rows_active = visit_rows(s_begin, steps_end, T, steps_ptr, REVERSE, True)
    # the active rows of the step processed just before (the next one in time): none for the
    # first; then carried from step to step
    rows_prev = visit_rows(s_begin - 1, s_begin, T, steps_ptr, REVERSE, True)[1]
    for s in range(s_begin, steps_end):
        t, slot_r, slot_w = visit_slots(s, T, REVERSE, True)
        t_prev = t - 1 if REVERSE else t + 1
        if PROJ:  # dh_t over the projected state, which the cell's dm_t = dh_t W_hr reads whole
            out_blocks, out_tiles = _tiles(B, HOUT, BLOCK_B, BLOCK_H)
            for tile in range(first, out_tiles if SYNC else first + 1, every):
                if phases & 2:  # into dht, for the cell's backward and the dW_hr GEMM
                    dhs_off, dht_off, dg_off = slot_w * B * HOUT, t * B * HOUT, t_prev * B * G * H
                    rows, cols, rmask, cmask, act, mask2 = block_tile(
                        tile, out_blocks, B, HOUT, rows_active, BLOCK_B, BLOCK_H
                    )
                    prev = rows < rows_prev
                    if RESIDENT:  # the tiles loaded before the product (as the cell's below)
                        sg = state_grad_inputs(dh_ptr, dhs_ptr, dy_ptr, dhs_off, y_row0, rows,
                                               cols, rmask, cmask, act, HOUT, HAS_DHS,
                                               HAS_DY)  # fmt: skip
                        rec, _, _, _ = rec_gates_resident(dg_ptr + dg_off, ws, rows, prev, 4 * H,
                                                          1, acc_ty, PRECISION, BLOCK_B, BLOCK_H,
                                                          BLOCK_K, RESIDENT, LOAD_GROUP)  # fmt: skip
                        total = state_grad_sum(late_all(sg, mask2), rec, HAS_DHS, HAS_DY)
                    else:
                        total = state_grad(
                            dh_ptr, dg_ptr, w_ptr, dhs_ptr, dy_ptr, dg_off, dhs_off, y_row0,
                            rows, cols, rmask, cmask, act, prev, 4 * H, HOUT, HAS_DHS, HAS_DY,
                            PRECISION, BLOCK_B, BLOCK_H, BLOCK_K,
                        )  # fmt: skip
                    state = rows[:, None] * HOUT + cols[None, :]
                    a = act[:, None]
                    tl.store(dh_ptr + state, tl.where(a, 0.0, total), mask=mask2)
                    tl.store(dht_ptr + dht_off + state,
                             tl.where(a, total, 0.0).to(dht_ptr.dtype.element_ty),
                             mask=mask2)  # fmt: skip
            if SYNC:
                grid_barrier(sync_ptr, (s - s_begin) * 2 + 1, BARRIER)
        for tile in range(first, tiles if SYNC else first + 1, every):
            if phases & 1:
                rows, units, rmask, umask, act, mask2 = block_tile(
                    tile, col_blocks, B, H, rows_active, BLOCK_B, BLOCK_H
                )
                a = act[:, None]
                state = rows[:, None] * H + units[None, :]
                saved = tile_ptrs(gates_ptr + t * B * 4 * H, rows, units, 4 * H)
                r_off, w_off, prev = slot_r * B * H, slot_w * B * H, rows < rows_prev
                if RESIDENT and (RESIDENT_PROJ or not PROJ):  # RESIDENT_PROJ: PROJ's only
                    # every tile of the step loaded before the product, each passed through
                    # `late` where it is used: their loads travel with its first group
                    if not PROJ:
                        sg = state_grad_inputs(dh_ptr, dhs_ptr, dy_ptr, slot_w * B * HOUT,
                                               y_row0, rows, units, rmask, umask, act, K,
                                               HAS_DHS, HAS_DY)  # fmt: skip
                    dcs = _cell_grad_inputs(dc_ptr, dcs_ptr, state, w_off, mask2, CELL, HAS_DCS)
                    ins = cell_bwd_inputs(hs_ptr, cs_ptr, saved, state, r_off, w_off, H, mask2,
                                          CELL)  # fmt: skip
                    if PROJ:  # dh_t W_hr, the projected state's gradient through W_hr
                        dh, _, _, _ = rec_gates_resident(dht_ptr + t * B * HOUT, wr, rows, act,
                                                         HOUT, 1, acc_ty, PRECISION, BLOCK_B,
                                                         BLOCK_H, BLOCK_K, RESIDENT_PROJ,
                                                         LOAD_GROUP)  # fmt: skip
                    else:
                        dg_prev = dg_rec + t_prev * B * G * H
                        rec, _, _, _ = rec_gates_resident(dg_prev, ws, rows, prev, G * H, 1,
                                                          acc_ty, PRECISION, BLOCK_B, BLOCK_H,
                                                          BLOCK_K, RESIDENT, LOAD_GROUP)  # fmt: skip
                        dh = state_grad_sum(late_all(sg, mask2), rec, HAS_DHS, HAS_DY)
                    dc = _cell_grad(dh, late_all(dcs, mask2), CELL, HAS_DCS)
                    d0, d1, d2, d3, carry = cell_bwd_loaded(dh, dc, late_all(ins, mask2), CELL)
                else:
                    if PROJ:
                        dh = rec_tile(dht_ptr + t * B * HOUT, whr_ptr, rows, act, units, umask,
                                      HOUT, 1, H, acc_ty, PRECISION, BLOCK_B, BLOCK_H,
                                      BLOCK_K)  # fmt: skip
                    else:
                        dh = state_grad(
                            dh_ptr, dg_rec, w_ptr, dhs_ptr, dy_ptr, t_prev * B * G * H,
                            slot_w * B * HOUT, y_row0, rows, units, rmask, umask, act, prev,
                            G * H, K, HAS_DHS, HAS_DY, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K,
                        )  # fmt: skip
                    dc = _cell_grad(dh, _cell_grad_inputs(dc_ptr, dcs_ptr, state, w_off, mask2,
                                                          CELL, HAS_DCS), CELL, HAS_DCS)  # fmt: skip
                    d0, d1, d2, d3, carry = cell_bwd(dh, dc, hs_ptr, cs_ptr, saved, state, r_off,
                                                     w_off, H, mask2, CELL)  # fmt: skip
                if CELL == LSTM and not PROJ:  # the state gradient has reached the gates
                    tl.store(tile_ptrs(dh_ptr, rows, units, HOUT), tl.where(a, 0.0, dh),
                             mask=mask2)  # fmt: skip
                if CELL == LSTM:
                    out = tile_ptrs(dg_ptr + t * B * 4 * H, rows, units, 4 * H)
                    store_gates(out, H, act, mask2, d0, d1, d2, d3, 4)
                    tl.store(dc_ptr + state, tl.where(a, carry, dc), mask=mask2)
                elif CELL == GRU:
                    out = t * B * 3 * H + rows[:, None] * (3 * H) + units[None, :]
                    store_gates(dg_ptr + out, H, act, mask2, d0, d1, d2, d2, 3)
                    store_gates(dgh_ptr + out, H, act, mask2, d0, d1, d3, d3, 3)
                    tl.store(dh_ptr + state, tl.where(a, carry, dh), mask=mask2)
                else:
                    d = tl.where(a, d0, 0.0)
                    tl.store(dg_ptr + t * B * H + state, d.to(dg_ptr.dtype.element_ty), mask=mask2)
                    tl.store(dh_ptr + state, tl.where(a, 0.0, dh), mask=mask2)
        next_rows = visit_rows(s + 1, steps_end, T, steps_ptr, REVERSE, True)
        if SYNC:  # the next step's state gradient reads every unit's dG
            grid_barrier(sync_ptr, (s - s_begin) * (1 + PROJ) + 1 + PROJ, BARRIER)
        rows_prev = rows_active
        y_row0, rows_active = next_rows


def launch_phases(kernel, tensors, sizes, flags, plan, cfg, phase_cols, cooperative,
                  table=None) -> bool:  # fmt: skip
    """Launch ``kernel`` over the plan's steps in block config ``cfg``: every step in one
    cooperative launch (:func:`.sync.step_chunks`), or a launch per phase of each step with a
    program per tile.
    ``phase_cols`` maps each phase's bit to the columns its tiles cover, in the order a step
    runs them (the kernel's ``phases`` argument: one bit per launch, all of them in a
    cooperative launch). ``tensors`` are the kernel's pointer arguments before the steps
    table (the first on the op's device), ``sizes`` those after ``T``, ``flags`` its
    constexprs but the block configuration. A cooperative launch's programs meet at grid
    barriers of the kind :data:`.configs.GRID_BARRIER`. With ``flags["RESIDENT"]`` it
    needs a program per column block of the first phase, whose product holds ``W_hh``
    (:func:`.sync.resident_grid`; the programs walk a second phase's tiles in turn), with
    ``RESIDENT_PROJ`` of the widest phase (H's, a multiple of the other's): on a
    GPU it returns False, launching nothing, when they do not fit at once; under the
    interpreter, which runs one program at a time, several column blocks run a launch per
    step. ``table``: the plan's :func:`.common.steps_table`, made here when not given (a
    caller trying several launches makes it once)."""
    T, B, dev = plan.T, plan.B, tensors[0].device
    table = steps_table(plan, dev) if table is None else table
    tiles = {p: cfg.tiles(cols, B) for p, cols in phase_cols.items()}
    flags = dict(flags, REVERSE=plan.reverse, **cfg.launch_kwargs())
    if cooperative:
        barrier = BARRIER_KINDS[configs.GRID_BARRIER]
        sync = barrier_state(barrier, dev)
        kw = dict(flags, SYNC=True, **({"BARRIER": barrier} if barrier else {}))
        if dev.type == "cuda":  # the driver refuses a grid that cannot be co-resident
            kw["launch_cooperative_grid"] = True
        # the arguments around the steps s_begin, s_end
        head, tail = (*tensors, table, sync), (sum(tiles), T, *sizes)
        args = (*head, 0, T, *tail)
        if flags.get("RESIDENT"):
            # the first phase of a step holds W_hh; with RESIDENT_PROJ the other one W_hr,
            # and the widest phase's column blocks (H's) are a multiple of the other's
            cols = (max if flags.get("RESIDENT_PROJ") else next)(iter(phase_cols.values()))
            grid = resident_grid(kernel, -(-cols // cfg.block_h), -(-B // cfg.block_b), args,
                                 kw, dev)  # fmt: skip
        else:
            grid = cooperative_grid(kernel, max(tiles.values()), args, kw, dev)
        if grid:
            # a phase ends at a barrier: one launch, or a few when its state would wrap
            for i, (begin, end) in enumerate(step_chunks(T, len(tiles), grid, barrier)):
                if i:
                    sync.zero_()
                runtime.launch(kernel, (grid,), *head, begin, end, *tail, **kw)
            return True
        if dev.type == "cuda":  # the resident programs do not fit at once
            return False
        # the interpreter: the resident kernel a launch per phase of each step
    for i in range(T):
        for p, n in tiles.items():
            runtime.launch(kernel, (n,), *tensors, table, table, i, i + 1, p, T, *sizes,
                           SYNC=False, **flags)  # fmt: skip
    return True


def _launch_steps(kernel, tensors, sizes, flags, plan, path, backward):
    """:func:`launch_phases` of a step kernel on ``path`` ("step", "cooperative" or
    "resident"): phase 1 the cell, 2 the projection (the forward's cell first, the
    backward's projected state first).

    A resident launch holds the program's slice of ``W_hh`` in ``RESIDENT`` chunks of K (the
    forward's K is Hout, the backward's G*H; with projection the slice serves the first
    phase, the cell forward, the projected state's gradient backward, and the second phase
    holds ``W_hr``'s in ``RESIDENT_PROJ`` chunks or reads it from the caches:
    :func:`.configs.resident_tries`) and loads its left operands ``LOAD_GROUP`` chunks at a
    time (then without ``W_hr`` on chip, then one chunk at a time, if that kernel does not
    fit). When its programs do not fit on the GPU at once it runs as a cooperative launch
    instead, counted (``launch_counter().not_resident``); under the interpreter, which runs
    one program at a time, a layer of several column blocks runs the resident kernel a launch
    per step. The TF32 forward with projection runs the cooperative launch
    (:func:`.configs.resident_allowed`)."""
    H, Hout = sizes[1], sizes[2]
    dtype = str(tensors[0].dtype).removeprefix("torch.")
    cols = ({2: Hout, 1: H} if backward else {1: H, 2: Hout}) if flags["PROJ"] else {1: H}
    if path == "resident" and not resident_allowed(flags["PRECISION"], flags["PROJ"], backward):
        path = "cooperative"
    table = steps_table(plan, tensors[0].device)  # one for every launch tried
    if path == "resident":
        cfg = pick_resident_config(plan.B, H, dtype, backward)
        e, dev = tensors[0].element_size(), tensors[0].device
        chunks, tries = resident_tries(
            H, Hout if flags["PROJ"] else 0, gate_blocks(flags["CELL"]), backward, cfg.block_h,
            cfg.block_k, lambda n, tiles: load_group(cfg, n, tiles, e, dev),
        )  # fmt: skip
        # each then with one chunk at a time (the least shared memory) before giving up
        for pc, group in tries:
            for g in dict.fromkeys((group, 1)):
                kw = dict(flags, RESIDENT=chunks, LOAD_GROUP=g)
                if pc:
                    kw["RESIDENT_PROJ"] = pc
                if launch_phases(kernel, tensors, sizes, kw, plan, cfg, cols, True, table):
                    return
        runtime.count_not_resident()
        path = "cooperative"
    cfg = (pick_cooperative_config(plan.B, H, dtype, backward, flags["PROJ"])
           if path == "cooperative" else pick_step_config(plan.B, H))  # fmt: skip
    launch_phases(kernel, tensors, sizes, flags, plan, cfg, cols, path == "cooperative", table)


def step_fwd(
    cell: str, xg: Tensor, h0: Tensor, c0: Tensor | None, w_hh: Tensor, b_hh: Tensor | None,
    w_hr: Tensor | None, plan: runtime.Plan, save: bool = True, path: str = "step",
) -> list[Tensor]:  # fmt: skip
    """Launch the forward kernels of ``path`` (:func:`.persistent.choose_path`: a launch per
    step, one cooperative launch or the persistent kernel); returns their buffers
    (:func:`.common.forward_buffers`). The tensors are the forward kernel's (shapes there;
    ``h0`` [B, Hout], ``c0`` [B, H] for the LSTM), the weights contiguous; the kernels read
    them transposed where :func:`.runtime.weights_transposed` says."""
    B, Hout, H = plan.B, w_hh.shape[1], w_hh.shape[0] // GATES[cell]
    gated, proj = cell in ("lstm", "gru"), w_hr is not None
    hs, cs, gates, m, y = out = forward_buffers(cell, xg, plan.T, B, Hout, H, proj, plan.packed,
                                                save)  # fmt: skip
    hs[plan.first_slot] = h0
    if cell == "lstm":
        cs[plan.first_slot] = c0
    flags = dict(ACC_TY=runtime.acc_ty(xg.dtype), PRECISION=runtime.dot_precision(xg.dtype),
                 CELL=CELL_CODE[cell], HAS_BIAS=b_hh is not None, WRITE_Y=plan.packed,
                 WRITE_GATES=gated and save, W_T=runtime.weights_transposed(xg.dtype))  # fmt: skip
    w_rec, w_out = w_hh, w_hr
    if flags["W_T"]:
        w_rec, w_out = w_hh.t().contiguous(), None if w_hr is None else w_hr.t().contiguous()
    # hs stands for the buffers the cell has not (its kernel never reads them)
    head = (xg, w_rec, *runtime.given(xg, b_hh), hs, *runtime.given(hs, cs))
    if path == "persistent":
        persistent.launch(False, cell, w_hh, plan, (*head, gates if gated and save else hs,
                                                     *runtime.given(hs, y)), flags)  # fmt: skip
    else:
        _launch_steps(_step_fwd_kernel, (*head, gates if gated else hs,
                                         *runtime.given(hs, m, w_out, y)), (B, H, Hout),
                      dict(flags, PROJ=proj), plan, path, False)  # fmt: skip
    return out


def step_bwd(
    cell: str, w_hh: Tensor, w_hr: Tensor | None,  # as step_fwd's
    hs: Tensor, cs: Tensor, gates: Tensor,  # the forward's (common.forward_buffers)
    dhs: Tensor | None,  # [T+1, B, Hout] gradient of Hs
    dcs: Tensor | None,  # [T+1, B, H] gradient of Cs
    dy: Tensor | None,  # [N, Hout] gradient of the packed output
    plan: runtime.Plan,
    path: str = "step",
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:  # fmt: skip
    """Launch the backward kernels of ``path`` (as :func:`step_fwd`). Returns ``dG_x`` and
    ``dG_h`` [T,B,G*H] (one tensor but for the GRU, whose ``dG_x = [d pre_r, d pre_z, d pre_n]``
    is the gradient of ``xg`` and ``dG_h = [d pre_r, d pre_z, r d pre_n]`` that of the
    recurrent parts; zero in inactive rows), ``dh0 [B,Hout]``, ``dc0 [B,H]`` (LSTM; both in the
    accumulation dtype) and, with projection, ``dh [T,B,Hout]`` (gradient of every projected
    output, for ``dW_hr``)."""
    T, B, (GH, Hout), H = plan.T, plan.B, w_hh.shape, w_hh.shape[0] // GATES[cell]
    dt, dev, acc = w_hh.dtype, w_hh.device, runtime.acc_dtype(w_hh.dtype)
    lstm, proj = cell == "lstm", w_hr is not None
    dgx = runtime.buffer(w_hh, T, B, GH)
    dgh = runtime.buffer(w_hh, T, B, GH) if cell == "gru" else dgx
    flags = dict(CELL=CELL_CODE[cell], HAS_DHS=dhs is not None, HAS_DY=dy is not None,
                 HAS_DCS=dcs is not None, PRECISION=runtime.dot_precision(dt))  # fmt: skip
    # the running state gradients, or dh0 and dc0, written whole by the persistent launch
    alloc = runtime.empty if path == "persistent" else torch.zeros
    dh = alloc(B, Hout, dtype=acc, device=dev)
    dc = alloc(B, H, dtype=acc, device=dev) if lstm else None
    if path == "persistent":  # dh0 and dc0 come out of the same launch
        tensors = (dgx, dgh, w_hh, hs, *runtime.given(hs, cs, gates, dhs, dy),
                   *runtime.given(dh, dcs), dh, *runtime.given(dh, dc))  # fmt: skip
        persistent.launch(True, cell, w_hh, plan, tensors, dict(flags, ACC_TY=runtime.acc_ty(dt)))
        return dgx, dgh, dh, dc, None
    dht = runtime.buffer(w_hh, T, B, Hout) if proj else None
    tensors = (dgx, dgh, w_hh, *runtime.given(dgx, hs, cs, gates), dh,
               *runtime.given(dgx, dc, dhs, dy, dcs, dht, w_hr))  # fmt: skip
    _launch_steps(_step_bwd_kernel, tensors, (B, H, Hout), dict(flags, PROJ=proj), plan, path,
                  True)  # fmt: skip
    finish_state_grad(dh, dc, dgh, w_hh, dhs, dcs, plan)
    return dgx, dgh, dh, dc, dht
