"""The grid-wide barrier of the cooperative step kernels (:mod:`.step`), and how many programs
may wait on it.

A program that waits at the barrier spins: every program of the grid must be resident on the
GPU at once, or the ones spinning keep the others from ever starting. :func:`resident_programs`
computes that limit from the compiled kernel, the launcher never asks for more, and the launch
is a CUDA cooperative launch, which the driver refuses (an error, not a hang) if the grid could
not be co-resident.

The barrier is the one part of these kernels the interpreter cannot test: the interpreter
runs programs one after another, so a cooperative launch there has one program (which then
owns every tile, and its barrier returns at once). It is kept to the lines below, and the
compile report builds the kernels that use it for sm_80 and sm_90.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import configs, runtime

# How programs meet at a grid barrier (``grid_barrier``'s KIND, a kernel's ``BARRIER``). The
# launches use COUNTER (configs.GRID_BARRIER); bench/barrier.py measures RELAXED_POLLS and FLAGS
# beside it (through the probe kernel), to tell what the wait costs and whether contention at
# the one counter is part of it, and bench/paths.py times the resident launch with them.
COUNTER, RELAXED_POLLS, FLAGS = (tl.constexpr(kind) for kind in range(3))
BARRIER_KINDS = {name: kind for kind, name in enumerate(configs.BARRIER_KINDS)}
MAX_FLAG_PROGRAMS = tl.constexpr(1024)  # programs a FLAGS barrier polls at most


@triton.jit
def grid_barrier(count_ptr, n, KIND: tl.constexpr = COUNTER):
    """The ``n``-th barrier of the launch (1, 2, ...). COUNTER: wait until ``*count_ptr`` (int32,
    zero at launch) reaches ``n`` x programs after adding this program's arrival, so the counter
    is never reset within a launch.

    Ordering, as CUDA's cooperative groups do it: the CTA barrier makes every thread's
    stores of this step happen before the one thread's release increment; that thread's
    acquire reads then see every other program's increment and, through them, their stores;
    the second CTA barrier makes those visible to all threads before the next step reads.
    A scalar atomic runs in one thread of the program and its result is shared.

    RELAXED_POLLS waits on the same counter with relaxed loads, which do not invalidate the L1
    cache as each acquire load does, then reads it once with acquire: that read sees at least
    the value the last poll saw (coherence), written by increments that each continue the
    release sequence of every increment before them. FLAGS (``count_ptr`` holds one int32
    per program, zero at launch): each program writes ``n`` into its own flag with release,
    then polls every program's flag with relaxed loads until all hold at least ``n``, then fences
    (:func:`_acquire_fence`); no word is written by more than one program, and no word is
    read with a read-modify-write."""
    if KIND == FLAGS:
        flags = tl.arange(0, MAX_FLAG_PROGRAMS)
        live = flags < tl.num_programs(0)
        tl.debug_barrier()
        tl.atomic_xchg(count_ptr + tl.program_id(0), n, sem="release", scope="gpu")
        seen = tl.min(tl.load(count_ptr + flags, mask=live, other=n, volatile=True), axis=0)
        while seen < n:
            seen = tl.min(tl.load(count_ptr + flags, mask=live, other=n, volatile=True), axis=0)
        _acquire_fence(n)
        tl.debug_barrier()
    else:
        target = n * tl.num_programs(0)
        tl.debug_barrier()
        tl.atomic_add(count_ptr, 1, sem="release", scope="gpu")
        if KIND == RELAXED_POLLS:
            seen = tl.load(count_ptr, volatile=True)
            while seen < target:
                seen = tl.load(count_ptr, volatile=True)
            tl.atomic_add(count_ptr, 0, sem="acquire", scope="gpu")
        else:
            seen = tl.atomic_add(count_ptr, 0, sem="acquire", scope="gpu")
            while seen < target:
                seen = tl.atomic_add(count_ptr, 0, sem="acquire", scope="gpu")
        tl.debug_barrier()


# the interpreter runs one program at a time, so it needs no fence (and has no inline assembly)
_INTERPRETED = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")


@triton.jit
def _acquire_fence(x):
    """``fence.acq_rel.gpu`` in every thread: after the relaxed reads that saw the flags' new
    values, it makes them acquire the releases that wrote them (an acquire pattern of the PTX
    memory model). ``x`` is passed through, so that the fence is an instruction of its own
    with a result (and is not dropped)."""
    if not _INTERPRETED:
        x = tl.inline_asm_elementwise("fence.acq_rel.gpu;\n\tmov.b32 $0, $1;", "=r,r", [x],
                                      dtype=tl.int32, is_pure=False, pack=1)  # fmt: skip
    return x


COUNTER_LIMIT = 2**31  # the int32 barrier counter wraps here (the programs would wait forever)


def barrier_state(kind: int, device) -> torch.Tensor:
    """The int32 words a barrier of ``kind`` starts from, zero: a flag for each program a
    FLAGS barrier may hold (:func:`_programs_that_fit` holds grids to that), else the one
    counter."""
    return torch.zeros(MAX_FLAG_PROGRAMS.value if kind == FLAGS.value else 1, dtype=torch.int32,
                       device=device)  # fmt: skip


def barrier_rise(kind: int, programs: int) -> int:
    """How much one barrier of ``kind`` among ``programs`` raises the highest word of its state
    (:func:`barrier_state`): the counter by one arrival per program, a FLAGS program's flag by
    one. A launch's barriers times this must stay below COUNTER_LIMIT."""
    return 1 if kind == FLAGS.value else programs


def step_chunks(T: int, barriers_per_step: int, programs: int,
                kind: int = COUNTER.value) -> list[tuple[int, int]]:  # fmt: skip
    """``(s_begin, s_end)`` of the cooperative launches that run T steps, each with a fresh
    barrier state: as many steps per launch as its words hold (:func:`barrier_rise`; one
    launch but for sequences of millions of steps)."""
    per_launch = max(1, (COUNTER_LIMIT - 1) // (barriers_per_step * barrier_rise(kind, programs)))
    return [(s, min(T, s + per_launch)) for s in range(0, T, per_launch)]


def resident_programs(
    n_regs: int,  # registers per thread of the compiled kernel
    shared: int,  # bytes of shared memory per program
    num_warps: int,
    sms: int,  # multiprocessors
    regs_per_sm: int = 65536,
    threads_per_sm: int = 2048,
    shared_per_sm: int = 233472,  # sm_80: 167936; sm_90: 233472 (228 KB)
    programs_per_sm: int = 32,
) -> int:
    """Programs of one kernel that fit on the GPU at once (the CUDA occupancy rules:
    registers are allocated per warp in units of 256, and each program reserves 1 KB of
    shared memory besides its own)."""
    regs_per_warp = -(-max(n_regs, 1) * 32 // 256) * 256
    fit = min(
        programs_per_sm,
        threads_per_sm // (32 * num_warps),
        regs_per_sm // (regs_per_warp * num_warps),
        shared_per_sm // (shared + 1024),
    )
    return fit * sms


_fit_cache: dict = {}  # (compiled kernel's hash, device index) -> resident programs


def _programs_that_fit(kernel, args: tuple, kwargs: dict, device) -> int:
    """:func:`resident_programs` of ``kernel`` compiled for these arguments on ``device``
    (0 when one program needs more shared memory than the GPU has), at most the programs its
    barrier can hold (``BARRIER``: a FLAGS barrier polls MAX_FLAG_PROGRAMS flags)."""
    compiled = kernel.warmup(*args, grid=(1,), **kwargs)
    key = (compiled.hash, device.index)
    if key not in _fit_cache:
        try:
            compiled._init_handles()  # loads the binary: n_regs is known from then on
        except triton.runtime.errors.OutOfResources:
            _fit_cache[key] = 0
            return 0
        props = torch.cuda.get_device_properties(device)
        _fit_cache[key] = resident_programs(
            compiled.n_regs, compiled.metadata.shared, compiled.metadata.num_warps,
            props.multi_processor_count, getattr(props, "regs_per_multiprocessor", 65536),
            props.max_threads_per_multi_processor,
            getattr(props, "shared_memory_per_multiprocessor", 233472),
        )  # fmt: skip
    if kwargs.get("BARRIER") == FLAGS.value:
        return min(_fit_cache[key], MAX_FLAG_PROGRAMS.value)
    return _fit_cache[key]


def cooperative_grid(kernel, tiles: int, args: tuple, kwargs: dict, device) -> int:
    """The number of programs for a cooperative launch of ``kernel`` with these arguments:
    one per tile, at most :func:`resident_programs` (programs then own several tiles), and
    one under the interpreter (see the module docstring)."""
    if device.type != "cuda":
        return 1
    return grid_for(tiles, _programs_that_fit(kernel, args, kwargs, device))


def resident_grid(kernel, col_blocks: int, row_blocks: int, args: tuple, kwargs: dict,
                  device) -> int:  # fmt: skip
    """The number of programs for a cooperative launch whose programs hold weights on chip
    (``RESIDENT``): a multiple of the column blocks, so that every tile a program walks
    (pid, pid + grid, ...) is in its column block, and at most one per tile. 0 when not even
    one program per column block fits at once; under the interpreter (one program) unless
    there is a single column block. Launches recorded for the compile report take the grid
    a GPU would (its size does not enter the compile)."""
    if runtime.capturing():
        return col_blocks
    if device.type != "cuda":
        return 1 if col_blocks == 1 else 0
    fit = _programs_that_fit(kernel, args, kwargs, device)
    return col_blocks * min(row_blocks, fit // col_blocks)


def load_group(cfg, chunks: int, slice_tiles: int, elem: int, device) -> int:
    """:func:`.configs.resident_load_group` for ``device``'s shared memory per program; for
    sm_90 when the launch is recorded off a GPU; ``INTERPRETER_LOAD_GROUP`` chunks under the
    interpreter."""
    if device.type == "cuda":
        smem = torch.cuda.get_device_properties(device).shared_memory_per_block_optin
    elif runtime.capturing():
        smem = configs.SM90_SMEM_PER_PROGRAM
    else:
        return min(chunks, configs.INTERPRETER_LOAD_GROUP)
    return configs.resident_load_group(cfg.block_b, cfg.block_h, cfg.block_k, chunks,
                                       slice_tiles, elem, smem)  # fmt: skip


def grid_for(tiles: int, resident: int) -> int:
    """Programs of a cooperative launch of ``tiles`` tiles when ``resident`` programs fit at
    once: one per tile, or all that fit, each then walking several tiles per step in turn
    (counted, :func:`.runtime.count_oversubscribed`: the launch then runs waves of tiles
    inside each step)."""
    if tiles > resident:
        runtime.count_oversubscribed()
    return max(1, min(tiles, resident))
