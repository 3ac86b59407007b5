"""The shipped kernel configurations: the one place the launchers pick from.

``fusedrnn.compile_report`` compiles every specialisation the launchers make of
these for sm_80 / sm_90 and fails on any spill, and the benchmark cost model reads
them from here too.

Per-step kernels: a program owns ``block_b`` batch rows x ``block_h`` hidden units
(all gates of those units), looping over the reduction dimension in ``block_k``
chunks. ``tl.dot`` needs every block dimension >= 16, so B=1 still uses 16 rows
(masked).

Persistent kernels keep the whole ``W_hh`` in registers (:mod:`.persistent`): ``max_hidden``
is the largest H whose compiles show zero spills on sm_80 and sm_90 (float16, bfloat16, float32
IEEE and TF32; float64 never takes the persistent path). This module imports nothing from
triton, so cost models can read it anywhere.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, replace

# StepConfig.text(): rows x units x reduction block, warps, pipeline stages
CONFIG_TEXT = re.compile(r"(\d+)x(\d+)x(\d+)w(\d+)s(\d+)")


@dataclass(frozen=True)
class StepConfig:
    block_b: int
    block_h: int
    block_k: int
    num_warps: int
    num_stages: int
    # registers ptxas may use per thread: left to itself it stops at 64-128 for these
    # kernels and spills (seen for fp32/TF32/fp64 variant kernels and for H not a multiple
    # of 16); these latency-bound launches run few programs, so occupancy costs little
    maxnreg: int = 255

    def launch_kwargs(self) -> dict:
        """The keywords every launch of this config passes: the block sizes (constexpr)
        and the compile options."""
        return dict(BLOCK_B=self.block_b, BLOCK_H=self.block_h, BLOCK_K=self.block_k,
                    num_warps=self.num_warps, num_stages=self.num_stages,
                    maxnreg=self.maxnreg)  # fmt: skip

    def text(self) -> str:
        """``BxHxKwWsS``, e.g. ``16x16x64w4s1`` (bench/paths.py's options and CSV column)."""
        return (f"{self.block_b}x{self.block_h}x{self.block_k}w{self.num_warps}"
                f"s{self.num_stages}")  # fmt: skip

    @classmethod
    def parse(cls, text: str) -> StepConfig:
        """The config whose :meth:`text` is ``text``; ValueError for another text."""
        m = CONFIG_TEXT.fullmatch(text)
        if m is None:
            raise ValueError(f"{text!r} is not a config like 16x16x64w4s2")
        return cls(*(int(v) for v in m.groups()))

    def tiles(self, cols: int, batch: int) -> int:
        """The ``[block_b, block_h]`` tiles of a ``[batch, cols]`` step (a per-step launch's
        programs)."""
        return -(-cols // self.block_h) * -(-batch // self.block_b)


@dataclass(frozen=True)
class PersistentConfig:
    cell: str
    block_h: int  # power of two >= max_hidden; smaller H is masked
    max_hidden: int
    block_b: int
    num_warps: int
    num_stages: int = 1
    maxnreg: int = 255  # see StepConfig: without it ptxas spills the LSTM/GRU backward


# the step kernels launched per step (every phase of the forward and of the backward)
STEP_CONFIGS: tuple[StepConfig, ...] = (
    StepConfig(block_b=16, block_h=32, block_k=16, num_warps=4, num_stages=2),
    # 8 warps: with 4 the TF32 LSTM forward step spills at 255 registers
    StepConfig(block_b=32, block_h=32, block_k=16, num_warps=8, num_stages=2),
)

# the same kernels launched once for the whole sequence (cooperative, see ops/triton/sync.py),
# (forward, backward) by element type: narrow column blocks spread a small batch over many
# programs, and a deep K block cuts the dependent iterations of each step's recurrent product
# (the backward's is 4H long for the LSTM). Measured on an H200 among four configs
# (bench/results/gpu-nvidia-h200/paths-sweep), then the deepest K block whose compiles are
# free of spills for every cell and flag: 16x16x128 with 3 stages was fastest everywhere but
# spills in the forward. float64 takes the per-step configs.
COOPERATIVE_CONFIGS: dict[str, tuple[StepConfig, StepConfig]] = {
    "half": (
        StepConfig(block_b=16, block_h=16, block_k=64, num_warps=4, num_stages=3),
        StepConfig(block_b=16, block_h=16, block_k=128, num_warps=4, num_stages=3),
    ),
    "float32": (
        StepConfig(block_b=16, block_h=32, block_k=16, num_warps=4, num_stages=2),
        StepConfig(block_b=16, block_h=16, block_k=64, num_warps=4, num_stages=3),
    ),
}

# the same kernels holding each program's slice of W_hh on chip for the whole launch
# (RESIDENT, the "resident" path), (forward, backward) by element type: a program per column
# block of 16 units, K read in unrolled chunks of block_k (see tiles.resident_slice). At
# bf16 H=1024 the slice is 4 x 1024 x 16 x 2 bytes = 128 KiB of shared memory (the
# backward's W_hh^T slice the same), at float32 H=512 as much. 8 warps in float32 and
# float64: with 4 the float32 LSTM backward spills 8-32 bytes on sm_90.
_HALF_RESIDENT = StepConfig(block_b=16, block_h=16, block_k=64, num_warps=4, num_stages=1)
_F32_RESIDENT = StepConfig(block_b=16, block_h=16, block_k=64, num_warps=8, num_stages=1)
_F64_RESIDENT = StepConfig(block_b=16, block_h=16, block_k=32, num_warps=8, num_stages=1)
RESIDENT_CONFIGS: dict[str, tuple[StepConfig, StepConfig]] = {
    "half": (_HALF_RESIDENT, _HALF_RESIDENT),
    "float32": (_F32_RESIDENT, _F32_RESIDENT),
    "float64": (_F64_RESIDENT, _F64_RESIDENT),
}

# Not picked by any launcher: a resident config with 32 units per program, half the programs
# of the shipped one at each barrier. python -m fusedrnn.gpu_check times it at its bf16 anchor
# shape (LSTM H = 768, where its slices fit sm_90's shared memory) and the compile report
# keeps it free of spills there; whether it ships is for that measurement to say.
RESIDENT_CANDIDATE = StepConfig(block_b=16, block_h=32, block_k=64, num_warps=4, num_stages=1)

# Shared memory one program may use on sm_90 (H100, H200; opt-in, CUDA programming guide):
# resident launches recorded off a GPU (the compile report) size their load groups for it.
SM90_SMEM_PER_PROGRAM = 232_448
# Under the interpreter a resident step loads two chunks at a time, so that the tests run
# several groups and a partial last one (every group size gives the same sums).
INTERPRETER_LOAD_GROUP = 2
# At most this many chunks per group: ptxas holds a group's loads in registers until they are
# staged (4 per chunk and thread in the shipped configs), and with more of them near 255
# registers it stages some before issuing the rest, each stage a round trip again. In the sm_90
# code groups of 16 are issued whole (the compile report's round-trip counts); groups of 24 and
# 32 were split in two at bf16 H = 768 and 1024 backward.
MAX_LOAD_GROUP = 16


def w_hr_on_chip(hidden: int, proj: int, block_h: int) -> bool:
    """Whether a resident launch with projection can hold a slice of ``W_hr`` on chip as well
    as ``W_hh``'s: its grid, a multiple of H's column blocks (``block_h`` units each), keeps
    every program in one column block of the Hout-wide phase only if H's column blocks are a
    multiple of Hout's."""
    return -(-hidden // block_h) % -(-proj // block_h) == 0


def resident_load_group(block_b: int, block_h: int, block_k: int, chunks: int,
                        slice_tiles: int, elem: int, smem: int) -> int:  # fmt: skip
    """The chunks of its left operand (h_prev forward, dG backward) a resident step loads
    together (tiles.rec_gates_resident): as many as the shared memory beside the program's
    slice of W_hh holds, a [block_b, block_k] staging buffer each (this is what the sm_90
    compiles allocate: the slice, then one buffer per chunk of a group), at most
    MAX_LOAD_GROUP. ``slice_tiles``: the [block_k, block_h] tiles of the slice (forward G per
    chunk, backward one); ``elem``: bytes per element; ``smem``: bytes a program may use."""
    spare = smem - slice_tiles * block_k * block_h * elem
    return max(1, min(chunks, MAX_LOAD_GROUP, spare // (block_b * block_k * elem)))


def resident_tries(hidden: int, proj: int, gates: int, backward: bool, block_h: int,
                   block_k: int, group_of) -> tuple[int, list[tuple[int, int]]]:  # fmt: skip
    """``(chunks, tries)`` of a resident launch of ``gates`` x ``hidden`` units (``proj``: the
    projection's outputs, 0 without): the chunks of ``block_k`` in the K of its ``W_hh``
    product (forward Hout, backward G*H), and the ``(RESIDENT_PROJ, LOAD_GROUP)`` it tries in
    turn. ``group_of(chunks, tiles)`` is the load group of a launch whose longest left operand
    is ``chunks`` chunks and whose slices take ``tiles`` [block_k, block_h] tiles
    (:func:`.sync.load_group` for a device, :func:`resident_load_group` in the cost model).
    With projection ``W_hr``'s slice (its chunks of K: H forward, Hout backward) is tried on
    chip first where it can be (:func:`w_hr_on_chip`) and where a step then waits no more round
    trips, one per group of each phase, than with ``W_hr`` read in the K loop, one per chunk
    (the resident configs run one stage): it takes shared memory from the groups."""
    chunks = -(-(gates * hidden if backward else proj or hidden) // block_k)
    tiles = chunks if backward else gates * chunks
    plain = (0, group_of(chunks, tiles))
    if not proj or not w_hr_on_chip(hidden, proj, block_h):
        return chunks, [plain]
    proj_chunks = -(-(proj if backward else hidden) // block_k)
    on = group_of(max(chunks, proj_chunks), tiles + proj_chunks)
    held = -(-chunks // on) + -(-proj_chunks // on)
    if held <= -(-chunks // plain[1]) + proj_chunks:
        return chunks, [(proj_chunks, on), plain]
    return chunks, [plain]


def resident_allowed(precision: str, proj: bool, backward: bool) -> bool:
    """Whether a launch may run resident (else cooperative): not the TF32 forward with
    projection, whose resident kernel, holding both phases' bodies, reaches 255 registers and
    spills 4-16 bytes on sm_90 (H = 24 or 32, W_hr on chip or not)."""
    return not (proj and not backward and precision == "tf32")


# the forward with the LSTM's projection as a second phase of each step holds both bodies:
# 8 warps on 16 rows, every dtype, or it spills (4-12 bytes with the configs above, float64's
# 32-row per-step config too)
COOPERATIVE_PROJ_FORWARD = StepConfig(block_b=16, block_h=32, block_k=16, num_warps=8,
                                      num_stages=2)  # fmt: skip

# persistent whole-sequence kernels, one config per cell (smaller H runs the same kernel with
# masked units; see the module docstring for max_hidden); 8 warps: with 4 the float32 backward
# of the GRU and the RNN spills at 255 registers (H not a multiple of 16)
PERSISTENT_CONFIGS: tuple[PersistentConfig, ...] = tuple(
    PersistentConfig(cell, block_h=h, max_hidden=h, block_b=16, num_warps=8)
    for cell, h in (("lstm", 32), ("gru", 32), ("rnn_tanh", 64), ("rnn_relu", 64))
)


# How the programs of a cooperative or resident launch meet at the grid barrier that ends each
# phase of a step (a name of sync.BARRIER_KINDS): one counter that every program increments and
# polls with acquire loads. bench/barrier.py times the other kinds alone and bench/paths.py
# (--resident-barriers) the resident launch with them; whether one replaces the counter is for
# those measurements to say.
GRID_BARRIER = "counter"
BARRIER_KINDS = ("counter", "relaxed", "flags")  # sync.grid_barrier's KIND 0, 1, 2


@contextlib.contextmanager
def replaced(path: str, config: StepConfig | None = None, barrier: str | None = None):
    """Inside the block, ``config`` is the launchers' config of the ``path`` ("cooperative" or
    "resident") launch, forward and backward, for every dtype, and ``barrier`` (one of
    :data:`BARRIER_KINDS`) the grid barrier of every launch that has one; None
    leaves either as shipped. The launchers read these at each launch (bench/paths.py's given
    configs and barriers, the compile report's candidate rows)."""
    if barrier is not None and barrier not in BARRIER_KINDS:
        raise ValueError(f"unknown barrier kind {barrier!r}; choose from {list(BARRIER_KINDS)}")
    name = {"cooperative": "COOPERATIVE_CONFIGS", "resident": "RESIDENT_CONFIGS"}[path]
    new = {name: None if config is None else dict.fromkeys(globals()[name], (config, config)),
           "GRID_BARRIER": barrier}  # fmt: skip
    old = {k: globals()[k] for k, v in new.items() if v is not None}
    globals().update((k, new[k]) for k in old)
    try:
        yield
    finally:
        globals().update(old)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def pick_step_config(batch: int, hidden: int) -> StepConfig:
    """On a GPU: the smallest batch block covering B (the largest when none does),
    which keeps many programs in flight for the latency-bound per-step launch.
    Under the interpreter (cost grows with the number of programs): the config
    with the fewest programs."""
    if interpreting():
        return min(STEP_CONFIGS, key=lambda c: (c.tiles(hidden, batch), c.block_b * c.block_h))
    fits = [c for c in STEP_CONFIGS if c.block_b >= batch]
    return min(fits or [max(STEP_CONFIGS, key=lambda c: c.block_b)], key=lambda c: c.block_b)


def pick_cooperative_config(
    batch: int, hidden: int, dtype: str, backward: bool, proj: bool = False
) -> StepConfig:
    """The cooperative launch's config for ``dtype`` ("float16", "bfloat16", "float32",
    "float64"; with ``proj`` the projection's forward, any dtype), for the torch.nn cells'
    step kernels and the variant kernels alike; under the interpreter, and otherwise for
    float64, the per-step choice (one program walks every tile under the
    interpreter, so the fewest tiles cost least)."""
    if interpreting():
        return pick_step_config(batch, hidden)
    if proj and not backward:
        return COOPERATIVE_PROJ_FORWARD
    configs = COOPERATIVE_CONFIGS.get("half" if dtype in ("float16", "bfloat16") else dtype)
    return configs[backward] if configs else pick_step_config(batch, hidden)


def pick_resident_config(batch: int, hidden: int, dtype: str, backward: bool) -> StepConfig:
    """The resident launch's config for ``dtype`` (as :func:`pick_cooperative_config`);
    under the interpreter 16-unit column blocks with the per-step choice's K block."""
    cfg = RESIDENT_CONFIGS["half" if dtype in ("float16", "bfloat16") else dtype][backward]
    if interpreting():
        return replace(cfg, block_k=pick_step_config(batch, hidden).block_k)
    return cfg


# the variant kernels in float64: one pipeline stage (with two, Triton 3.6 spills 4-8 bytes in
# the forward on sm_90; Triton 3.8 does not)
VARIANT_FLOAT64 = StepConfig(block_b=16, block_h=32, block_k=16, num_warps=8, num_stages=1)


def pick_variant_config(
    batch: int, hidden: int, dtype: str, backward: bool, proj: bool = False
) -> StepConfig:
    """The variant kernels' config (both launches): the cooperative choice with 8 warps (with
    4 the float32 layer-norm kernels spill 4-20 bytes on sm_90), VARIANT_FLOAT64 in float64;
    under the interpreter the per-step choice."""
    if interpreting():
        return pick_step_config(batch, hidden)
    if dtype == "float64":
        return VARIANT_FLOAT64
    return replace(pick_cooperative_config(batch, hidden, dtype, backward, proj), num_warps=8)


def pick_persistent_config(cell: str, hidden: int) -> PersistentConfig | None:
    """The persistent config for this cell and H, or None when W_hh does not fit."""
    fits = [c for c in PERSISTENT_CONFIGS if c.cell == cell and hidden <= c.max_hidden]
    return min(fits, key=lambda c: c.block_h) if fits else None
