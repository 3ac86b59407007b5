"""Persistent whole-sequence kernels: one launch per layer and direction.

A program owns BLOCK_B batch rows for the entire sequence. Because the next step
of those rows needs *all* hidden units of the previous step, the program holds the
whole ``W_hh`` ([G*H, H], one [BLOCK_H, BLOCK_H] tile per gate) in registers and
loops over time inside the kernel, keeping ``h`` (and ``c``) on chip; there is no
inter-program communication. That only fits for small H (the limits of
``configs.PERSISTENT_CONFIGS``); larger H, ``proj_size > 0`` and float64 use the step
kernels (:mod:`.step`, whose launchers also launch these).

The forward writes exactly the buffers the per-step kernels write (``Hs``, ``Cs``,
saved gates, packed ``y``), so the weight-gradient GEMMs are shared. The backward
walks time in reverse inside one launch: the state gradient
``dh = dh_carry + dHs[slot] (+ dy)`` and ``dc`` give the gate gradients through
:mod:`.cellmath`, and ``dh_prev = sum_q dG_h,q W_hh,q (+ dh z for the GRU)`` is
formed in registers, so ``dh0``/``dc0`` come out of the same launch. Packed sequences
and REVERSE go through the steps table (:func:`.common.visit`), as in the step kernels.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..checks import GATES
from . import runtime
from .cellmath import GRU, LSTM, RNN_RELU, gru_fwd, lstm_fwd, rnn_fwd
from .common import cell_bwd, gate_blocks, steps_table, visit
from .configs import (
    PERSISTENT_CONFIGS,
    PersistentConfig,
    pick_persistent_config,
    pick_resident_config,
    w_hr_on_chip,
)
from .tiles import add_gates, kernel_jit, load_gates, packed_ptrs, row_block, store_gates, tile_ptrs

_forced: list[str | None] = [None]  # one of PATHS, or None (automatic), innermost last; for tests
PATHS = ("step", "cooperative", "resident", "persistent")


@triton.jit
def _w_tiles(w_ptr, H, units, umask, G: tl.constexpr, TRANSPOSE: tl.constexpr,
             W_T: tl.constexpr = False):  # fmt: skip
    """The blocks of W_hh [G*H, H] (W_T: given as W_hh^T [H, G*H]) of gates q < G, each
    [k, unit] if TRANSPOSE else [unit, k] (zeros for q >= G)."""
    mask = umask[:, None] & umask[None, :]
    if W_T:  # (only [k, unit] blocks are read from it)
        return load_gates(w_ptr + units[:, None] * (G * H) + units[None, :], H, mask, G)
    if TRANSPOSE:
        off = units[None, :] * H + units[:, None]
    else:
        off = units[:, None] * H + units[None, :]
    return load_gates(w_ptr + off, H * H, mask, G)


@triton.jit
def _program_rows(B, H, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """This program's int64 batch rows and all (padded) units, ``rows < B``, ``units < H``,
    the ``[BLOCK_B, BLOCK_H]`` offsets of the tile in a ``[B, H]`` state slot and its mask."""
    rows, rmask, _ = row_block(B, B, BLOCK_B)
    units = tl.arange(0, BLOCK_H)
    umask = units < H
    state = rows[:, None] * H + units[None, :]
    return rows, units, rmask, umask, state, rmask[:, None] & umask[None, :]


@kernel_jit
def _persistent_fwd_kernel(
    xg_ptr, w_ptr, b_ptr, hs_ptr, cs_ptr, gates_ptr, y_ptr, steps_ptr,
    T: tl.int64, B, H, CELL: tl.constexpr, HAS_BIAS, REVERSE: tl.constexpr, WRITE_Y,
    WRITE_GATES: tl.constexpr, ACC_TY: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, W_T: tl.constexpr = False,
):  # fmt: skip
    """Arguments as :func:`.step._step_fwd_kernel`'s, with ``HOUT = H`` (the first slots of
    ``Hs`` and ``Cs`` hold h0 and c0)."""
    G: tl.constexpr = gate_blocks(CELL)
    rows, units, rmask, umask, state, mask2 = _program_rows(B, H, BLOCK_B, BLOCK_H)
    first = T if REVERSE else 0

    # W_hh^T and b_hh per gate, resident for the whole sequence
    w0, w1, w2, w3 = _w_tiles(w_ptr, H, units, umask, G, True, W_T)
    zero = tl.zeros((BLOCK_H,), dtype=ACC_TY)
    b0, b1, b2, b3 = zero, zero, zero, zero
    if HAS_BIAS:
        b0, b1, b2, b3 = add_gates(zero, zero, zero, zero, b_ptr + units, H, umask, G)

    h = tl.load(hs_ptr + first * B * H + state, mask=mask2, other=0.0)
    c = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC_TY)
    if CELL == LSTM:
        c = tl.load(cs_ptr + first * B * H + state, mask=mask2, other=0.0)

    for s in range(T):
        t, _, slot, row0, rows_active = visit(s, T, steps_ptr, REVERSE, False)
        act = rows < rows_active
        a = act[:, None]
        amask = a & umask[None, :]
        hd = tl.where(a, h, 0.0)
        p0 = tl.dot(hd, w0, input_precision=PRECISION, out_dtype=ACC_TY) + b0[None, :]
        p1, p2, p3 = p0, p0, p0
        if G > 1:
            p1 = tl.dot(hd, w1, input_precision=PRECISION, out_dtype=ACC_TY) + b1[None, :]
            p2 = tl.dot(hd, w2, input_precision=PRECISION, out_dtype=ACC_TY) + b2[None, :]
        if G > 3:
            p3 = tl.dot(hd, w3, input_precision=PRECISION, out_dtype=ACC_TY) + b3[None, :]
        # the input parts as in the step kernel: the GRU's n gate takes them apart
        xg = packed_ptrs(xg_ptr, row0, rows, units, G * H)
        if CELL == GRU:
            x0, x1, x2, _ = load_gates(xg, H, amask, 3)
        else:
            p0, p1, p2, p3 = add_gates(p0, p1, p2, p3, xg, H, amask, G)
        saved = tile_ptrs(gates_ptr + t * B * 4 * H, rows, units, 4 * H)
        if CELL == LSTM:
            i, f, g, o, c_new, h_new = lstm_fwd(p0, p1, p2, p3, c)
            c = tl.where(a, c_new, c)
            tl.store(cs_ptr + slot * B * H + state, c, mask=mask2)
            if WRITE_GATES:
                store_gates(saved, H, act, mask2, i, f, g, o, 4)
        elif CELL == GRU:
            r, z, n, h_new = gru_fwd(x0.to(ACC_TY), x1.to(ACC_TY), x2.to(ACC_TY), p0, p1, p2,
                                     h.to(ACC_TY))  # fmt: skip
            if WRITE_GATES:
                store_gates(saved, H, act, mask2, r, z, n, p2, 4)
        else:
            h_new = rnn_fwd(p0, CELL == RNN_RELU)
        h = tl.where(amask, h_new.to(h.dtype), h)
        tl.store(hs_ptr + slot * B * H + state, h, mask=mask2)
        if WRITE_Y:
            tl.store(packed_ptrs(y_ptr, row0, rows, units, H), h, mask=amask)


@kernel_jit
def _persistent_bwd_kernel(
    dgx_ptr, dgh_ptr, w_ptr, hs_ptr, cs_ptr, gates_ptr, dhs_ptr, dy_ptr, dcs_ptr,
    dh0_ptr,  # [B, H] out: gradient of h0 (accumulation dtype)
    dc0_ptr,  # [B, H] out: gradient of c0 (LSTM)
    steps_ptr, T: tl.int64, B, H, CELL: tl.constexpr, REVERSE: tl.constexpr, HAS_DHS, HAS_DY,
    HAS_DCS, ACC_TY: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
):  # fmt: skip
    """Arguments as :func:`.step._step_bwd_kernel`'s, with ``HOUT = H`` (``dgx`` is its ``dg``,
    zero in inactive rows), and the gradients of the first slot's states."""
    G: tl.constexpr = gate_blocks(CELL)
    rows, units, rmask, umask, state, mask2 = _program_rows(B, H, BLOCK_B, BLOCK_H)
    dg_ty = dgx_ptr.dtype.element_ty

    # W_hh per gate ([gate unit, k]), resident for the whole sequence
    w0, w1, w2, w3 = _w_tiles(w_ptr, H, units, umask, G, False)

    dh = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC_TY)  # carried state gradient
    dc = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC_TY)
    for s in range(T):
        t, slot_r, slot_w, row0, rows_active = visit(s, T, steps_ptr, REVERSE, True)
        act = rows < rows_active
        a = act[:, None]
        total = dh
        if HAS_DHS:
            total += tl.load(dhs_ptr + slot_w * B * H + state, mask=mask2, other=0.0).to(ACC_TY)
        if HAS_DY:
            dy = packed_ptrs(dy_ptr, row0, rows, units, H)
            total += tl.load(dy, mask=a & umask[None, :], other=0.0).to(ACC_TY)
        dc_in = dc
        if CELL == LSTM:
            if HAS_DCS:
                dc_in += tl.load(dcs_ptr + slot_w * B * H + state, mask=mask2, other=0.0)
        saved = tile_ptrs(gates_ptr + t * B * 4 * H, rows, units, 4 * H)
        d0, d1, d2, d3, carry = cell_bwd(total, dc_in, hs_ptr, cs_ptr, saved, state,
                                         slot_r * B * H, slot_w * B * H, H, mask2, CELL)  # fmt: skip
        if CELL == LSTM:
            dc = tl.where(a, carry, dc_in)
        # zero in inactive rows: stored for the weight GEMMs, and multiplied here
        d0 = tl.where(a, d0, 0.0).to(dg_ty)
        d1 = tl.where(a, d1, 0.0).to(dg_ty)
        d2 = tl.where(a, d2, 0.0).to(dg_ty)
        d3 = tl.where(a, d3, 0.0).to(dg_ty)
        out = t * B * G * H + rows[:, None] * (G * H) + units[None, :]
        if G > 1:
            tl.store(dgx_ptr + out + H, d1, mask=mask2)
            tl.store(dgx_ptr + out + 2 * H, d2, mask=mask2)
        if G > 3:
            tl.store(dgx_ptr + out + 3 * H, d3, mask=mask2)
        if CELL == GRU:  # the recurrent side's n block is r * d pre_n (see cellmath)
            d2 = d3
            tl.store(dgh_ptr + out, d0, mask=mask2)
            tl.store(dgh_ptr + out + H, d1, mask=mask2)
            tl.store(dgh_ptr + out + 2 * H, d2, mask=mask2)
        prev = tl.dot(d0, w0, input_precision=PRECISION, out_dtype=ACC_TY)
        if G > 1:
            prev = tl.dot(d1, w1, prev, input_precision=PRECISION, out_dtype=ACC_TY)
            prev = tl.dot(d2, w2, prev, input_precision=PRECISION, out_dtype=ACC_TY)
        if G > 3:
            prev = tl.dot(d3, w3, prev, input_precision=PRECISION, out_dtype=ACC_TY)
        if CELL == GRU:
            prev += carry
        tl.store(dgx_ptr + out, d0, mask=mask2)
        dh = tl.where(a, prev, total)

    first = T if REVERSE else 0
    if HAS_DHS:
        dh += tl.load(dhs_ptr + first * B * H + state, mask=mask2, other=0.0).to(ACC_TY)
    tl.store(dh0_ptr + state, dh, mask=mask2)
    if CELL == LSTM:
        if HAS_DCS:
            dc += tl.load(dcs_ptr + first * B * H + state, mask=mask2, other=0.0)
        tl.store(dc0_ptr + state, dc, mask=mask2)


def kernel_path(path: str | None) -> contextlib.AbstractContextManager:
    """Forces the kernels of ``path`` (one of PATHS) inside the ``with`` block; None: the
    automatic choice (:func:`choose_path`). A layer's backward chooses its path when it runs:
    to force both, call ``backward()`` inside the block too."""
    if path not in (None, *PATHS):
        raise ValueError(f"unknown kernel path {path!r}")
    return runtime.pushed(_forced, path)


def forced_path() -> str | None:
    """The path :func:`kernel_path` forces here, or None."""
    return _forced[-1]


def _config(cell: str, w_hh: Tensor, w_hr: Tensor | None) -> PersistentConfig | None:
    fits = w_hh.dtype != torch.float64 and w_hr is None
    return pick_persistent_config(cell, w_hh.shape[1]) if fits else None


def choose_path(cell: str, w_hh: Tensor, w_hr: Tensor | None, plan: runtime.Plan) -> str:
    """Which kernels run a layer: "persistent" (W_hh in registers, small H, no projection),
    "resident" (the step kernels' whole time loop in one launch, each program holding its
    units' slice of W_hh on chip, with projection of W_hr too, where it can
    (:func:`.configs.w_hr_on_chip`); not float64, on a GPU), "cooperative" (the same launch
    reading the weights from the caches at every step) or "step" (a launch per step: when
    forced, and for empty sequences). The interpreter runs one program at a time, so there a
    resident launch of several column blocks becomes a launch per step
    (:func:`.step.launch_phases`): it runs when forced, for tests."""
    # h's width, W_hh's K: the hidden size, or proj_size with a projection
    hout, limit = w_hh.shape[1], max(c.max_hidden for c in PERSISTENT_CONFIGS)
    forced = _forced[-1]
    if forced == "persistent" and (w_hr is not None or hout > limit):
        raise ValueError(f"persistent kernels need proj_size == 0 and H <= {limit}")
    if forced is not None:
        return forced
    if plan.T == 0:
        return "step"
    if _config(cell, w_hh, w_hr) is not None:
        return "persistent"
    if w_hh.dtype != torch.float64 and w_hh.device.type == "cuda":
        # forced, the resident launch reads W_hr from the caches where it cannot hold it
        units, dtype = w_hh.shape[0] // GATES[cell], str(w_hh.dtype).removeprefix("torch.")
        block_h = pick_resident_config(plan.B, units, dtype, False).block_h
        if w_hr is None or w_hr_on_chip(units, hout, block_h):
            return "resident"
    return "cooperative"


def launch(backward: bool, cell: str, w_hh: Tensor, plan: runtime.Plan, tensors: tuple,
           flags: dict) -> None:  # fmt: skip
    """Launch the persistent forward or backward kernel for the whole sequence, a program per
    ``BLOCK_B`` rows (for :func:`.step.step_fwd` / :func:`.step.step_bwd`): ``tensors`` are its
    pointer arguments before the steps table, ``flags`` its constexprs but the block
    configuration and ``REVERSE``."""
    H = w_hh.shape[1]
    # a forced launch past the shipped limits: the smallest block holding every unit
    block_h = max(16, triton.next_power_of_2(H))
    cfg = _config(cell, w_hh, None) or PersistentConfig(cell, block_h, max_hidden=H, block_b=16,
                                                        num_warps=4, maxnreg=None)  # fmt: skip
    runtime.launch(
        _persistent_bwd_kernel if backward else _persistent_fwd_kernel,
        (triton.cdiv(plan.B, cfg.block_b),), *tensors, steps_table(plan, w_hh.device), plan.T,
        plan.B, H, REVERSE=plan.reverse, BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, maxnreg=cfg.maxnreg, **flags,
    )  # fmt: skip
