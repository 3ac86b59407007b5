"""The grid barrier alone (:func:`.sync.grid_barrier`): programs that pass a count to their
neighbour across each barrier, and do nothing else.

Two uses, where a GPU is present (``bench/barrier.py``, ``tests/test_triton_barrier.py``):

- **A test of the barrier's ordering.** Before barrier ``i`` each program stores its count
  plus one; after it, each loads its neighbour's. After ``n`` barriers every program must hold
  ``n``. A barrier that let a program load before its neighbour's store of that round was
  visible would leave a smaller count behind. Stores alternate between two slots, so a round's
  stores never overwrite values a slower program has yet to load: a program reuses a slot only
  after the next barrier, which every program reaches after its loads.
- **The barrier's cost.** The time per barrier for grids of 1 to a few hundred programs, with
  and without the exchange, for each kind of barrier (:data:`.sync.BARRIER_KINDS`: the
  launches' counter, and two alternatives measured beside it). The cost model's calibration
  (``bench/calibrate.py``) lumps everything a step spends besides its chain into one constant
  per barrier; this measures how much of it the barrier itself takes.

Under the interpreter a launch must have one program: programs run one after another there,
and the first would wait forever for the others (:mod:`.sync`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import runtime
from .sync import (
    BARRIER_KINDS,
    COUNTER_LIMIT,
    FLAGS,
    MAX_FLAG_PROGRAMS,
    barrier_rise,
    barrier_state,
    grid_barrier,
)

_FLAGS, _MAX_FLAGS = FLAGS.value, MAX_FLAG_PROGRAMS.value

BLOCK = 256  # values each program passes on: one 16 x 16 tile, as a step's h tile
NUM_WARPS = 4


@triton.jit
def _barrier_probe_kernel(
    count_ptr,  # int32, zero at launch: the barrier's state (sync.barrier_state)
    slots_ptr,  # [2, programs, BLOCK] float32: the values passed on, by the round's parity
    out_ptr,  # [programs] float32: the smallest value each program holds at the end
    n_barriers,
    EXCHANGE: tl.constexpr,  # pass the count on through memory (else count locally)
    BLOCK: tl.constexpr,
    BARRIER: tl.constexpr = 0,  # the barrier's kind (sync.BARRIER_KINDS)
):
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    offs = tl.arange(0, BLOCK)
    held = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(n_barriers):
        slot = slots_ptr + (i % 2) * programs * BLOCK
        if EXCHANGE:
            tl.store(slot + pid * BLOCK + offs, held + 1.0)
        grid_barrier(count_ptr, i + 1, BARRIER)
        if EXCHANGE:
            held = tl.load(slot + ((pid + 1) % programs) * BLOCK + offs)
        else:
            held = held + 1.0
    tl.store(out_ptr + pid, tl.min(held, axis=0))


def probe(programs: int, n_barriers: int, exchange: bool, device: torch.device,
          kind: str = "counter") -> torch.Tensor:  # fmt: skip
    """[programs] float32: what each program holds after ``n_barriers`` barriers of ``kind``
    (:data:`.sync.BARRIER_KINDS`), which is ``n_barriers`` everywhere when the barrier orders
    the exchange. ``programs`` must fit on the GPU at once (:func:`max_programs`); the driver
    refuses a cooperative launch that does not."""
    if programs < 1 or n_barriers < 0:
        raise ValueError(f"programs must be >= 1 and n_barriers >= 0, got {programs}, "
                         f"{n_barriers}")  # fmt: skip
    if kind not in BARRIER_KINDS:
        raise ValueError(f"unknown barrier kind {kind!r}; choose from {list(BARRIER_KINDS)}")
    flags = BARRIER_KINDS[kind] == _FLAGS
    if flags and programs > _MAX_FLAGS:
        raise ValueError(f"{programs} programs: a flags barrier polls at most "
                         f"{_MAX_FLAGS}")  # fmt: skip
    if n_barriers * barrier_rise(BARRIER_KINDS[kind], programs) >= COUNTER_LIMIT:
        raise ValueError(f"{n_barriers} barriers of {programs} programs overflow the int32 "
                         "barrier counter")  # fmt: skip
    if device.type != "cuda" and programs > 1 and not runtime.capturing():
        raise ValueError(f"{programs} programs off a GPU: the interpreter runs one program at a "
                         "time, and the first would wait at the barrier forever")  # fmt: skip
    args, kw = _arguments(programs, n_barriers, exchange, device, kind)
    with runtime.device_guard(device):
        runtime.launch(_barrier_probe_kernel, (programs,), *args, **kw)
    return args[2]


def max_programs(device: torch.device, kind: str = "counter") -> int:
    """Programs of the probe that fit on ``device`` at once and can meet at its barrier (1 off
    a GPU)."""
    if device.type != "cuda":
        return 1
    from .sync import _programs_that_fit

    args, kw = _arguments(1, 0, True, device, kind)
    with runtime.device_guard(device):
        return _programs_that_fit(_barrier_probe_kernel, args, kw, device)


def _arguments(programs: int, n_barriers: int, exchange: bool, device: torch.device, kind: str):
    count = barrier_state(BARRIER_KINDS[kind], device)
    slots = runtime.empty(2, programs, BLOCK, dtype=torch.float32, device=device)
    out = runtime.empty(programs, dtype=torch.float32, device=device)
    kw = dict(EXCHANGE=exchange, BLOCK=BLOCK, BARRIER=BARRIER_KINDS[kind], num_warps=NUM_WARPS)
    if device.type == "cuda":  # the driver refuses a grid that cannot be co-resident
        kw["launch_cooperative_grid"] = True
    return (count, slots, out, n_barriers), kw
