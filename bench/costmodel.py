"""GPU cost model of the fused kernels: work, launches and latency per step, predicted times.

    python bench/costmodel.py [--gpu H100,H200,A100] [--markdown out.md]

Nothing here runs on a GPU: every time printed is a PREDICTION from the ceilings and
assumptions below (each with its source), printed beside published measurements where they
exist. The kernel configurations are read from the code that launches them:
``fusedrnn.ops.triton.configs`` (``STEP_CONFIGS``, ``COOPERATIVE_CONFIGS``, ``RESIDENT_CONFIGS``,
``PERSISTENT_CONFIGS`` and the ``pick_*`` functions the launchers call) and the CUDA backend's
launch shape (``kThreads`` / ``kMaxBlocks`` in ``csrc/cuda/common.cuh``).

Work, per layer and direction (G gates, H hidden, I input, B batch, T steps, ``e`` bytes per
element of the data type, ``a`` = 4 bytes for the float32 gates, cell state and gradients):

Forward
  once:     input GEMM  X[T·B, I] · W_ihᵀ[I, G·H]:  2·T·B·G·H·I FLOPs.
  per step: recurrent product h·W_hhᵀ (reduction K = H) plus the gate math: 2·B·G·H·H FLOPs;
            HBM bytes: W_hh (G·H·H·e; its re-reads by every batch block are L2 traffic,
            reported apart), b_hh, xg_t, h_{t-1}, c_{t-1} and c_t (LSTM), h_t, and when
            training the saved activations (4·B·H·a for LSTM and GRU, none for RNN).
Backward
  per step: dh_t = dy_t + dG_{t+1}·W_hh (reduction K = G·H, G times the forward's) and the
            gate gradients: 2·B·G·H·H FLOPs.
  once:     dW_hh, dW_ih, dX: 2·T·B·G·H·(H + 2·I) FLOPs (bias-gradient sums not counted).

Time of one kernel:

    max(FLOPs / (rate · u), bytes / (bandwidth · u), waves · chain · L2 latency)
        + GPU gap per dependent launch

- u = min(1, programs / SMs): the share of the GPU a grid can use (8 programs on 132 SMs
  get 8/132 of its bandwidth and FLOPs).
- rate: the ceiling of the arithmetic the kernel's products use: float32 FMA for an IEEE
  float32 ``tl.dot`` (Triton lowers it to FMA instructions), the TF32 tensor-core rate when
  ``torch.backends.cuda.matmul.allow_tf32`` is set, the dense bf16/fp16 tensor-core rate for
  half types. These are peaks: small tiles reach less, so every prediction is optimistic.
- chain: the dependent iterations of the kernel's serial loop. A per-step kernel walks its
  reduction in ``block_k`` chunks and each chunk waits for a W_hh tile from L2 (the pipeline
  of ``num_stages`` keeps ``num_stages - 1`` tiles in flight), plus two round trips for the
  step's own loads and stores: ceil(K / block_k) / max(1, num_stages - 1) + 2.
  waves = ceil(programs / (SMs · programs per SM)), programs per SM from the warp limit.
- the three terms overlap perfectly (max, not sum): optimistic again.

The cooperative launch (the Triton backend's default above the persistent range) runs the same
step kernel's whole time loop in one launch: no launch per step, W_hh re-read from L2 (not HBM)
at every step, and a grid-wide barrier after each step that adds ``BARRIER_ROUND_TRIPS`` L2
round trips to the chain; its programs hold ~255 registers each (the compile report), so
``REGS_PER_THREAD`` limits how many fit on an SM, and tiles beyond that are walked serially
(waves). The cell variants' kernels have the same shape; layer norm adds phases to a step
(LSTM: two each way, GRU: one), each ending at a barrier (:data:`VARIANT_PHASE_ROUND_TRIPS`) and
writing or re-reading the normalised values it saves (``B·(G·H + H)·a`` bytes more each way).

The resident launch (the Triton backend's default for the torch.nn cells above the persistent
range, ``persistent.choose_path``) is the cooperative launch with each program holding its column
block's slice of W_hh in shared memory for the whole launch: G gate tiles [H, block_h] forward,
the columns [G·H, block_h] of W_hh backward, K in whole ``block_k`` chunks, beside a
[block_b, block_k] staging buffer for each chunk of the A operand it loads together
(:data:`RESIDENT_BUFFER_SOURCE`; the launcher's group: as many chunks as the GPU's shared memory
per program leaves room for, at most ``MAX_LOAD_GROUP``, ``ops/triton/configs.py``). W_hh comes
from HBM once per launch (a kernel of its own here, which carries the launch) and never again, so
a step's L2 traffic is its A operand (h_{t-1} forward, dG_{t+1} backward: B·K·e bytes per column
block); the chunks of a group are loaded together, and the tile's other loads with the first
group, so the step's chain is one round trip per group, the forward's row counts and the
barrier (:func:`resident_chain`).
The grid is a program per column block times as many row blocks as fit at once: registers
(``REGS_PER_THREAD``, which the resident kernels use too) and shared memory (the slice, its buffer
and the 1 KiB CUDA reserves per program, :data:`SMEM_RESERVED`, against each GPU's limits in
:class:`Gpu`, from :data:`SMEM_SOURCE`); the row blocks beyond are walked in turn, each walk its groups'
round trips again. Where not even one program per column block fits (float32 H=1024: 256 KiB of
slice; float32 H=768 on an A100), the launcher runs the cooperative launch instead, and
:func:`applicable` shows resident rows only where they fit. Like the cooperative launch it is one
launch per layer and direction, none per step. The tables mark the Triton row the launcher runs
unless a path is forced: *(automatic path)*. The variant kernels have no resident launch.

The LSTM's projection (``proj_size`` = P; ``proj`` here): h is P wide, so W_hh is [G·H, P] and
the forward's recurrent K is P, and each step gets a second phase, each phase ending at a grid
barrier of its own (per step: a launch of its own). Forward, after the cell's phase, the
projection h_t = m_t·W_hrᵀ (K = H, tiles over P units). Backward, first the projected state's
gradient dh_t = dy_t + dG_{t+1}·W_hh (K = G·H, tiles over P units), then the cell's phase with
dm_t = dh_t·W_hr (K = P, tiles over H units). The cooperative forward runs in the projection's
own config (``COOPERATIVE_PROJ_FORWARD``); the resident launch holds W_hr's slice too where
``resident_tries`` (ops/triton/configs.py) does, its grid then a program per column block of H,
and that phase waits a round trip per group; otherwise the phase's K loop reads W_hr from the
caches (:func:`chain_length` at the config's one stage). Its TF32 forward runs cooperative, as
the launcher does. A phase with fewer tiles than its launch's grid leaves programs idle, but
they all meet at its barrier. The ``cuda`` backend's step adds a GEMM and an element-wise kernel
each way (in half types a cast of the forward GEMM's operand too), and dW_hr is one more GEMM
after the loop. A layer above the first reads P inputs.

Calibration. On the H200 these formulas were 3-15x optimistic for the cooperative launch:
a step there costs several µs more than its chain of L2 hits. ``bench/calibrate.py`` fits
:class:`Calibration`'s constants (a round trip of the chain, a cost per barrier and per program
meeting there, the share of the FMA peak an IEEE float32 ``tl.dot`` reaches) to a GPU's
measurements of the cooperative launch and checks them on measurements it did not fit; the
report adds, for that GPU, *calibrated* rows of the cooperative and resident launches.

A sequence's time adds the kernels of its layers. The host issues the launches: a per-step
launch loop costs ``launches × host cost`` on the CPU, and the GPU cannot finish before the host
has issued the last launch, so the predicted wall time is
``max(GPU time, host time) + one host launch`` (the first launch's latency). A CUDA graph replay
removes the host term; the column "if graph-captured" shows what that would give. The ``cuda``
backend replays its per-step loop from a CUDA graph (``fusedrnn/ops/graphs.py``; ``replayed``
configs): its host issues, per layer call, one copy into the graph's static inputs for each
device tensor the call reads, the replay and one clone of each output, and the GPU runs those
copies besides the loop (:func:`graph_copies`); the per-step launches cost no host time.
"""

from __future__ import annotations

import argparse
import csv
import functools
import importlib
import json
import math
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from fusedrnn.ops.checks import GATES  # noqa: E402

SAVED = {"lstm": 4, "gru": 4, "rnn": 0}  # saved activations per row, in units of H
ELEM = {"float32": 4, "bfloat16": 2, "float16": 2}
ACC = 4  # bytes: gates, c and gradients are kept in float32 for every data type here


# -- ceilings (datasheets) ----------------------------------------------------------------------


@dataclass(frozen=True)
class Gpu:
    name: str
    bandwidth: float  # bytes/s, HBM, datasheet
    fp32: float  # FLOP/s, float32 FMA (no tensor cores)
    tf32: float  # FLOP/s, dense TF32 tensor cores
    half: float  # FLOP/s, dense bf16 / fp16 tensor cores
    sms: int
    clock: float  # Hz, boost clock
    source: str
    smem_per_sm: int  # bytes of shared memory per SM (SMEM_SOURCE)
    smem_per_block: int  # bytes one program may use, with the opt-in attribute (SMEM_SOURCE)


GPUS = {
    "H100": Gpu(
        "H100 SXM5 80GB",
        3.35e12,
        66.9e12,
        494.7e12,
        989.4e12,
        132,
        1.98e9,
        "NVIDIA H100 datasheet (SXM5): 3.35 TB/s HBM3, 67 TFLOP/s fp32, 989 TFLOP/s TF32 and "
        "1,979 TFLOP/s bf16/fp16 with sparsity (half that dense), 132 SMs, 1.98 GHz boost",
        smem_per_sm=228 * 1024,
        smem_per_block=227 * 1024,
    ),
    "H200": Gpu(
        "H200 SXM 141GB",
        4.8e12,
        66.9e12,
        494.7e12,
        989.4e12,
        132,
        1.98e9,
        "NVIDIA H200 datasheet: 4.8 TB/s HBM3e; the H100 SXM5's SMs, clocks and compute rates",
        smem_per_sm=228 * 1024,
        smem_per_block=227 * 1024,
    ),
    "A100": Gpu(
        "A100 SXM4 80GB",
        2.039e12,
        19.5e12,
        156e12,
        312e12,
        108,
        1.41e9,
        "NVIDIA A100 datasheet (SXM4 80GB): 2,039 GB/s HBM2e, 19.5 TFLOP/s fp32, 156 TFLOP/s "
        "TF32 and 312 TFLOP/s bf16/fp16 dense, 108 SMs, 1.41 GHz boost",
        smem_per_sm=164 * 1024,
        smem_per_block=163 * 1024,
    ),
}
SMEM_SOURCE = (
    "CUDA C++ Programming Guide, technical specifications per compute capability: 228 KB of "
    "shared memory per SM and at most 227 KB per block (opt-in) on 9.0 (H100, H200), 164 KB and "
    "163 KB on 8.0 (A100); 1 KB of an SM's shared memory is reserved for each resident block"
)
SMEM_RESERVED = 1024  # per program (SMEM_SOURCE; ops/triton/sync.resident_programs counts it)

# -- assumptions (not measured here; each says where it comes from) ----------------------------

BANDWIDTH_SHARE = 0.9
BANDWIDTH_SHARE_SOURCE = (
    "assumed: streaming kernels reach about 90 % of the datasheet HBM bandwidth"
)
L2_HIT_CYCLES = 270
L2_HIT_SOURCE = (
    "assumed: published microbenchmarks put an L2 hit on recent NVIDIA GPUs at roughly "
    "200-340 cycles (222-339 across the SMs of an L40, arXiv:2606.22588); no Hopper figure "
    "was measured here"
)
MAX_WARPS_PER_SM = 64  # CUDA programming guide, compute capability 8.0 and 9.0
MAX_PROGRAMS_PER_SM = 32  # same table: resident blocks per SM
GPU_LAUNCH_S = 2.0e-6
GPU_LAUNCH_SOURCE = "assumed: drain + start of a small kernel behind the previous one"
HOST_LAUNCH_S = {"triton": 20e-6, "cuda": 17e-6}
HOST_LAUNCH_SOURCE = (
    "assumed for triton: Triton's Python launch path plus the launcher's own Python per step "
    "(10-20 µs are commonly quoted per Triton launch); measured for cuda: on the H200, its "
    "eager C++ loop took 3.42 ms for the 100 steps (two launches each) of LSTM B=64 T=100 "
    "H=512 float32 forward, where a graph replay of the same call took 1.78 ms "
    "(results/gpu-nvidia-h200/graph_replay.csv), so at least 17 µs per launch on that host; "
    "the same figure is used for the Python copies around a replay"
)
# cuBLAS picks its own kernels; the per-step GEMM [B, H]·[H, G·H] is costed with one assumed
# tile shape and pipeline depth, typical of its Ampere/Hopper kernels.
BARRIER_ROUND_TRIPS = 2
# a variant kernel's extra phase: its barrier, plus its own loads (the partial row statistics,
# the values the phase before saved) and stores (fusedrnn/ops/triton/variant_step.py)
VARIANT_PHASE_ROUND_TRIPS = BARRIER_ROUND_TRIPS + 2
BARRIER_SOURCE = (
    "assumed: a grid barrier is one release increment reaching L2 and one acquire poll that "
    "sees the last arrival (ops/triton/sync.py); contention of the arrivals is not modelled"
)
REGS_PER_THREAD = 255
REGS_SOURCE = (
    "python -m fusedrnn.compile_report: the cooperative step kernels use 200-255 registers "
    "per thread on sm_90, the resident ones 255 (LSTM, bf16 and float32, H=256 and 768); "
    "65,536 per SM"
)
RESIDENT_BUFFER_SOURCE = (
    "python -m fusedrnn.compile_report (sm_90, Triton 3.8): a resident LSTM kernel's shared "
    "memory is its W_hh slice plus one [block_b, block_k] tile of the data type (2 KiB in bf16, "
    "4 KiB in float32) for each chunk of the A operand loaded together: 122,880 bytes at bf16 "
    "H=768 forward (12 chunks), 163,840 backward (32), 229,376 at float32 H=768 (8 each way); "
    "one chunk at a time, 100,352 and 200,704"
)
CUBLAS_TILE = (64, 128, 32)  # (BM, BN, BK)
CUBLAS_STAGES = 4

# Published measurements at their shapes (FlashRNN: Pöppel et al., 2024, H100 table).
PUBLISHED = {
    "source": "FlashRNN paper (Pöppel et al., 2024), H100, LSTM B=16 T=1024 H=768",
    "cell": "lstm",
    "B": 16,
    "T": 1024,
    "I": 768,
    "H": 768,
    "layers": 1,
    "rows": [
        ("cuDNN fp16", 2.01, 5.19),
        ("FlashRNN fused kernel", 4.87, 13.61),
    ],
}
ANCHOR = PUBLISHED  # the shape every comparison is made at
# the speed goals at the anchor shape in bfloat16 (issue 16, stated for an H100): wall time of
# one layer's forward and forward+backward
GOALS_S = {"forward": 4.0e-3, "forward+backward": 11e-3}


def l2_latency(gpu: Gpu) -> float:
    return L2_HIT_CYCLES / gpu.clock


def dot_rate(gpu: Gpu, dtype: str, precision: str) -> float:
    """FLOP/s ceiling of the products a kernel runs (see the module docstring)."""
    if dtype != "float32":
        return gpu.half
    return gpu.tf32 if precision == "tf32" else gpu.fp32


# -- calibration: constants fitted to a GPU's measurements (bench/calibrate.py) ---------------


@dataclass(frozen=True)
class Calibration:
    """What a GPU's measurements of the cooperative launch say a step costs, fitted by
    ``bench/calibrate.py`` and stored beside them (``results/gpu-*/calibration.json``). It
    replaces, in the steps that end at grid barriers (the cooperative and resident launches),
    the assumed L2 round trip of their chain, the barrier's round trips, and the FMA peak of an
    IEEE float32 ``tl.dot``:

        max(compute at the fitted share of the peak, memory, waves · body · round_trip_s)
            + barriers · (barrier_s + programs meeting there · per_program_s)

    where ``body`` is the step's chain without its barriers. Tensor-core rates, bandwidth and
    every other kernel keep the uncalibrated model's values."""

    gpu: str  # key of GPUS
    round_trip_s: float  # one dependent round trip of a step's chain
    barrier_s: float  # a step's cost per barrier, besides its chain: the barrier and the rest
    per_program_s: float  # added per program meeting at a barrier
    ieee_fwd: float  # share of the FMA peak an IEEE float32 tl.dot reaches, forward step
    ieee_bwd: float  # the same, backward step
    source: str  # what it was fitted to
    fit_ratio_range: tuple[float, float] = (math.nan, math.nan)  # measured / fitted, fit points
    held_out_ratio_range: tuple[float, float] = (math.nan, math.nan)  # the same, held out
    path: str = ""  # where it is stored, relative to bench/results


def load_calibrations(results: Path = _ROOT / "bench" / "results") -> dict[str, Calibration]:
    """The calibrations stored under ``results/gpu-*/calibration.json``, by GPUS key."""
    out = {}
    for path in sorted(results.glob("gpu-*/calibration.json")):
        d = dict(json.loads(path.read_text()), path=str(path.relative_to(results)))
        d = {f: d[f] for f in Calibration.__dataclass_fields__ if f in d}
        for f in ("fit_ratio_range", "held_out_ratio_range"):
            d[f] = tuple(d.get(f, (math.nan, math.nan)))
        out[d["gpu"]] = Calibration(**d)
    return out


# -- kernel configurations, read from the code ------------------------------------------------


@dataclass(frozen=True)
class KernelConfig:
    """One way the fused layer runs; ``kind`` is step (per-step launch), cooperative (the
    step kernel's time loop in one launch, also the cell variants' kernels), resident (the
    cooperative launch with W_hh's slices held in shared memory), persistent (one launch per
    sequence) or gemm+pointwise (a library GEMM and one element-wise kernel per step)."""

    backend: str
    kind: str
    description: str
    block_b: int = 0
    block_h: int = 0
    block_k: int = 0
    num_warps: int = 4
    num_stages: int = 1
    threads: int = 0  # gemm+pointwise: threads per block of the element-wise kernel
    max_blocks: int = 0
    max_hidden: int = 0  # persistent: the largest H it takes
    cell: str = ""  # persistent configs are per cell
    picker: object = field(default=None, compare=False, repr=False)
    dtypes: tuple[str, ...] = ()  # cooperative, resident: the data types it serves
    # cooperative, resident: (cell, largest H of the persistent kernels), which take those H
    persistent_up_to: tuple[tuple[str, int], ...] = ()
    # cooperative, resident: the backward's block_b, block_h, block_k, warps, stages
    bwd: tuple[int, int, int, int, int] | None = None
    variants: bool = False  # cooperative: the variant kernels' config (they serve only those)
    # resident: configs.resident_load_group, the chunks of the A operand a step loads together
    load_group: object = field(default=None, compare=False, repr=False)
    # cooperative, resident: the forward's blocks with the LSTM's projection (the projection's
    # own config, COOPERATIVE_PROJ_FORWARD; the resident launch's TF32 forward runs it)
    proj_fwd: tuple[int, int, int, int, int] | None = None
    replayed: bool = False  # the layer call replayed from a CUDA graph (fusedrnn/ops/graphs.py)
    picked: bool = True  # False: a candidate no launcher picks (configs.RESIDENT_CANDIDATE)

    def blocks(self, backward: bool) -> tuple[int, int, int, int, int]:
        """block_b, block_h, block_k, warps, stages of the forward's or the backward's launch."""
        fwd = (self.block_b, self.block_h, self.block_k, self.num_warps, self.num_stages)
        return (self.bwd or fwd) if backward else fwd


def _triton_config(kind, description, c, copied, picker=None) -> KernelConfig:
    """A config of fusedrnn.ops.triton.configs as a KernelConfig: the fields named in ``copied``
    carry over; the others keep KernelConfig's defaults."""
    return KernelConfig(
        "triton", kind, description, picker=picker, **{name: getattr(c, name) for name in copied}
    )


def _step_config(kind, c, picker) -> KernelConfig:
    return _triton_config(
        kind,
        f"per-step block_b={c.block_b} block_h={c.block_h} block_k={c.block_k} "
        f"warps={c.num_warps} stages={c.num_stages}",
        c,
        ("block_b", "block_h", "block_k", "num_warps", "num_stages"),
        picker,
    )


def shipped(name: str):
    """``name`` of fusedrnn/ops/triton/configs.py, the launchers' configurations and rules
    (importing it imports no triton, but its package may be missing)."""
    return getattr(importlib.import_module("fusedrnn.ops.triton.configs"), name)


def shipped_load_group():
    """``resident_load_group`` of fusedrnn/ops/triton/configs.py (the chunks of its A operand a
    resident step loads together), or None where that module cannot be read."""
    try:
        return shipped("resident_load_group")
    except Exception:  # noqa: BLE001 - triton missing, or the module not importable
        return None


def shipped_proj_forward() -> tuple[int, int, int, int, int] | None:
    """The blocks of ``COOPERATIVE_PROJ_FORWARD`` (fusedrnn/ops/triton/configs.py), the
    cooperative forward with the LSTM's projection, or None where it cannot be read."""
    try:
        c = shipped("COOPERATIVE_PROJ_FORWARD")
    except Exception:  # noqa: BLE001 - as shipped_load_group
        return None
    return c.block_b, c.block_h, c.block_k, c.num_warps, c.num_stages


def triton_configs() -> tuple[list[KernelConfig], str]:
    """The Triton backend's shipped configurations, or ([], why not)."""
    try:
        tc = importlib.import_module("fusedrnn.ops.triton.configs")
    except Exception as exc:  # triton missing, or the module not importable
        return [], f"no triton configs found (fusedrnn.ops.triton.configs: {exc})"
    out = [
        _step_config("step", c, getattr(tc, "pick_step_config", None))
        for c in getattr(tc, "STEP_CONFIGS", ())
    ]
    groups = {"half": ("bfloat16", "float16"), "float32": ("float32",)}
    limits: dict[str, int] = {}
    for c in getattr(tc, "PERSISTENT_CONFIGS", ()):
        cell = "rnn" if c.cell.startswith("rnn") else c.cell
        limits[cell] = max(limits.get(cell, 0), c.max_hidden)
    pairs = [("cooperative", f"cooperative ({g})", f, b, groups.get(g, (g,)), False)
             for g, (f, b) in getattr(tc, "COOPERATIVE_CONFIGS", {}).items()]  # fmt: skip
    if hasattr(tc, "pick_variant_config"):  # the variant kernels compute in float32 (or 64)
        pick = functools.partial(tc.pick_variant_config, 16, 512, "float32")
        pairs.append(("cooperative", "variant cooperative (float32)", pick(False), pick(True),
                      ("float32",), True))  # fmt: skip
    # float64 runs resident only when forced (persistent.choose_path), and has no sizes here
    pairs += [("resident", f"resident ({g})", f, b, groups[g], False)
              for g, (f, b) in getattr(tc, "RESIDENT_CONFIGS", {}).items() if g in groups]  # fmt: skip
    candidate = getattr(tc, "RESIDENT_CANDIDATE", None)
    if candidate is not None:
        pairs.append(("resident", "resident candidate, picked by no launcher (half)", candidate,
                      candidate, groups["half"], False))  # fmt: skip
    proj = shipped_proj_forward()
    for kind, name, f, b, dtypes, variants in pairs:
        # the projection's forward config (the variants': 8 warps, as pick_variant_config's)
        p = proj and (proj[:3] + (8,) + proj[4:] if variants else proj)
        out.append(
            KernelConfig(
                "triton", kind,
                f"{name} fwd {f.block_b}x{f.block_h}x{f.block_k} w{f.num_warps} "
                f"s{f.num_stages}, bwd {b.block_b}x{b.block_h}x{b.block_k} w{b.num_warps} "
                f"s{b.num_stages}",
                block_b=f.block_b, block_h=f.block_h, block_k=f.block_k, num_warps=f.num_warps,
                num_stages=f.num_stages, dtypes=dtypes,
                bwd=(b.block_b, b.block_h, b.block_k, b.num_warps, b.num_stages),
                persistent_up_to=tuple(sorted(limits.items())), variants=variants,
                load_group=shipped_load_group() if kind == "resident" else None,
                proj_fwd=p, picked=f is not candidate,
            )
        )  # fmt: skip
    for c in getattr(tc, "PERSISTENT_CONFIGS", ()):
        out.append(
            _triton_config(
                "persistent",
                f"persistent {c.cell} block_b={c.block_b} block_h={c.block_h} H<={c.max_hidden} "
                f"warps={c.num_warps}",
                c,
                ("block_b", "block_h", "num_warps", "max_hidden", "cell"),
            )
        )
    if not out:
        return [], "no triton configs found (configs module has no STEP/PERSISTENT_CONFIGS)"
    return out, ""


def cuda_config() -> tuple[KernelConfig, str]:
    """The CUDA backend: a cuBLAS GEMM plus one element-wise kernel per step, with the launch
    shape of csrc/cuda/common.cuh; the generic shape if that header does not say."""
    header = _ROOT / "csrc" / "cuda" / "common.cuh"
    threads, max_blocks, note = 256, 65535, "launch shape assumed (csrc/cuda/common.cuh not read)"
    try:
        text = header.read_text()
        t = re.search(r"kThreads\s*=\s*(\d+)", text)
        m = re.search(r"kMaxBlocks\s*=\s*(\d+)", text)
        if t and m:
            threads, max_blocks, note = int(t.group(1)), int(m.group(1)), ""
    except OSError:
        pass
    desc = (
        f"cuBLAS GEMM + element-wise kernel per step ({threads} threads/block, grid-stride), "
        "replayed from a CUDA graph"
    )
    return KernelConfig(
        "cuda",
        "gemm+pointwise",
        desc,
        threads=threads,
        max_blocks=max_blocks,
        num_warps=threads // 32,
        replayed=True,
    ), note


def applicable(
    cfg: KernelConfig, cell: str, B: int, H: int, variant: bool = False, dtype: str = "",
    gpu: Gpu | None = None, proj: int = 0,
) -> bool:  # fmt: skip
    """Whether the launchers would pick ``cfg`` for this shape on ``gpu`` (H100 when not
    given; mirrors the pick functions; the per-step configs are shown too, as the per-step path
    they also serve, and the cooperative ones where the resident launch runs, as the path it
    falls back to). The variants (layer norm; float32 kernels) run the cooperative and
    per-step shapes at any H; the resident launch needs its slices to fit on ``gpu``; the
    persistent kernels have no projection (``proj``)."""
    small = 0 if proj else dict(cfg.persistent_up_to).get(cell, 0)
    if cfg.kind == "resident":
        if variant or H <= small or (dtype and dtype not in cfg.dtypes):
            return False
        e = ELEM[dtype or cfg.dtypes[0]]
        return all(
            resident_layout(cfg, cell, B, H, e, gpu or GPUS["H100"], backward, proj).fits
            for backward in (False, True)
        )
    if cfg.kind == "cooperative":
        small = 0 if variant else small
        return cfg.variants == variant and H > small and (not dtype or dtype in cfg.dtypes)
    if variant and cfg.kind not in ("step", "cooperative"):
        return False
    if cfg.kind == "persistent":
        return (not proj and cfg.cell in (cell, "rnn_tanh" if cell == "rnn" else cell)
                and H <= cfg.max_hidden)  # fmt: skip
    if cfg.kind == "step":
        return cfg.picker is None or _picked(cfg, B, H)
    return True


def _picked(cfg: KernelConfig, *shape: int) -> bool:
    import os

    saved = os.environ.pop("TRITON_INTERPRET", None)  # the GPU choice, not the interpreter's
    try:
        chosen = cfg.picker(*shape)
    finally:
        if saved is not None:
            os.environ["TRITON_INTERPRET"] = saved
    return (chosen.block_b, chosen.block_h) == (cfg.block_b, cfg.block_h)


# -- counts -----------------------------------------------------------------------------------


@dataclass
class Kernel:
    """One launch (or one step of a persistent kernel): work, grid and serial chain."""

    name: str
    flops: float
    bytes: float
    programs: int
    l2_bytes: float = 0.0
    launches: int = 1  # GPU launches this costs (0 inside a persistent kernel)
    chain: float = 0.0  # dependent L2 round trips of its serial loop
    warps: int = 4  # per program, for the number of waves
    rate_per_sm: bool = False  # persistent: a program's product runs on its own SM only
    per_sm: int = 0  # programs resident per SM when registers decide (0: the warp limit)
    barriers: int = 0  # grid barriers per step (cooperative and resident launches)
    meeting: int = 0  # programs meeting at them, where more than its own (a launch's grid)
    backward: bool = False  # a backward step (its own share of the IEEE float32 peak, fitted)
    host_issued: bool = False  # issued by the host around a graph replay (graph_copies)


@dataclass
class Plan:
    """Kernels of one layer: run once before, per step, and once after the time loop."""

    once_fwd: list[Kernel]
    step_fwd: list[Kernel]
    step_bwd: list[Kernel]
    once_bwd: list[Kernel]


def _gemm(name, m, n, k, e, out_e=None) -> Kernel:
    """A large library GEMM: fills the GPU, its time is its roofline."""
    out_e = e if out_e is None else out_e
    return Kernel(name, 2.0 * m * n * k, (m * k + k * n) * e + m * n * out_e, 10**6)


def graph_copies(
    cell: str, B: int, T: int, I: int, H: int, dtype: str, training: bool, proj: int = 0
) -> tuple[Kernel, Kernel]:  # noqa: E741
    """What a replayed layer call (fusedrnn/ops/graphs.py) adds to a layer, forward and
    backward: each device tensor it reads copied into the graph's static inputs and each output
    cloned out of the graph, a launch each, every byte read and written once.
    Forward in: x, h0, (c0), W_ih, W_hh, b_ih, b_hh, (W_hr); out: y, h_n, (c_n) and, training,
    the saved inputs of each step, (LSTM, GRU) the saved gates and (projection) the unprojected
    outputs. Backward in: the forward's inputs and outputs, dy, dh_n, (dc_n); out: a gradient
    of each forward input. ``proj``: the LSTM's projection (h, y and dy Hout = proj wide)."""
    G, e, a = GATES["rnn_tanh" if cell == "rnn" else cell], ELEM[dtype], ACC
    n, states, hout = T * B, 2 if cell == "lstm" else 1, proj or H
    gates = {"lstm": (G + 3) * H, "gru": 4 * H}.get(cell, 0)  # the driver's act rows (acc)
    state = B * hout * e + (B * H * e if states == 2 else 0)  # h (and c): h0 or h_n, dh_n ...
    ins = n * I * e + state + (G * H * (I + hout) + 2 * G * H + proj * H) * e
    saved = n * (gates * a + hout * e + (H * e if proj else 0))
    outs = n * hout * e + state + (saved if training else 0)
    n_ins = 5 + states + bool(proj)
    n_outs = 1 + states + ((2 if gates else 1) + bool(proj) if training else 0)
    fwd = Kernel("graph copies", 0.0, 2.0 * (ins + outs), 10**6, launches=n_ins + n_outs,
                 host_issued=True)  # fmt: skip
    if not training:
        return fwd, Kernel("graph copies bwd", 0.0, 0.0, 10**6, launches=0, host_issued=True)
    grads = n * hout * e + state  # dy, dh_n, (dc_n)
    bwd = Kernel("graph copies bwd", 0.0, 2.0 * (ins + outs + grads + ins), 10**6,
                 launches=n_ins + n_outs + 1 + states + n_ins, host_issued=True)  # fmt: skip
    return fwd, bwd


def chain_length(k: int, block_k: int, stages: int) -> float:
    """Dependent L2 round trips of a step kernel reducing over ``k`` (module docstring)."""
    return math.ceil(k / block_k) / max(1, stages - 1) + 2


def resident_chain(walks: int = 1, groups: int = 1, backward: bool = False) -> float:
    """Dependent L2 round trips of one step of a resident launch whose programs walk ``walks``
    tiles each and load their A operand in ``groups`` groups of chunks. W_hh is on chip, so
    nothing in the reduction waits for it; the chunks of a group are loaded together
    (tiles.rec_gates_resident), so a group costs one round trip where chain_length counts one
    per chunk in flight. The tile's own loads are issued with its first group and its stores
    wait for nothing (ops/triton/step.py). The forward step begins with one round trip for its
    row counts; the backward loads them a step ahead, before the barrier. The step ends at one
    grid barrier, whatever the number of tiles a program walked before it. (The sm_90 code
    counted by fusedrnn.sass agrees for every resident kernel that fits a program's shared
    memory at bf16, fp16 and TF32, H = 256..1024, and for the GRU's and RNN's in IEEE float32;
    the IEEE float32 LSTM backward waits longer, its FMA products issuing a group's loads in
    parts: 14 round trips at H=768 where this gives 8.)"""
    return walks * groups + (0 if backward else 1) + BARRIER_ROUND_TRIPS


def _register_limit(warps: int) -> int:
    """Programs of ``warps`` warps whose REGS_PER_THREAD registers fit in an SM's 65,536
    (allocated per warp in units of 256, as ops/triton/sync.resident_programs counts them)."""
    return max(1, 65536 // (-(-REGS_PER_THREAD * 32 // 256) * 256 * warps))


@dataclass(frozen=True)
class ResidentLayout:
    """One direction of a resident launch on a GPU (:func:`resident_layout`)."""

    slice_bytes: int  # W_hh held by one program (with W_hr's where it holds that too)
    smem: int  # shared memory of one program: the slices and the staging buffers beside them
    groups: int  # groups of chunks a step loads the A operand of its W_hh product in
    per_sm: int  # programs one SM holds at once (0: one program exceeds the per-block limit)
    col_blocks: int  # of the grid: the phase whose slices decide it (H's where W_hr is held)
    programs: int
    walks: int  # tiles each program walks per step in the phase of its W_hh product
    fits: bool  # a program per column block fits at once: else the launch runs cooperative
    proj_chunks: int = 0  # chunks of W_hr's slice held on chip (projection; 0: none)
    proj_groups: int = 0  # groups of chunks of its product's A operand, where W_hr is held
    proj_walks: int = 0  # tiles each program walks per step in the projection's phase


def resident_layout(
    cfg: KernelConfig, cell: str, B: int, H: int, e: int, gpu: Gpu, backward: bool,
    proj: int = 0,
) -> ResidentLayout:  # fmt: skip
    """The grid ops/triton/sync.resident_grid gives a resident launch: a program per column
    block times as many row blocks as fit on ``gpu`` at once, so that every tile a program
    walks is in its own column block; the row blocks beyond are walked in turn. The slices and
    the load groups are the launcher's (``resident_tries`` of fusedrnn/ops/triton/configs.py:
    with ``proj``, ``W_hr``'s slice too where a step then waits no longer), the first of its
    tries that fits. Where not even a program per column block fits, the layout is that of
    the last try with one row block per column block (the launcher would run the cooperative
    launch)."""
    bb, bh, bk, warps, _ = cfg.blocks(backward)
    G = GATES["rnn_tanh" if cell == "rnn" else cell]
    hout = proj or H

    def group_of(chunks: int, tiles: int) -> int:
        if cfg.load_group is None:
            return 1
        return cfg.load_group(bb, bh, bk, chunks, tiles, e, gpu.smem_per_block)

    chunks, options = shipped("resident_tries")(H, proj, G, backward, bh, bk, group_of)
    # forward: G gate tiles of [Hout, block_h]; backward: the [G·H, block_h] columns of W_hh
    tiles = chunks if backward else G * chunks
    rows = math.ceil(B / bb)
    # the W_hh phase's columns (forward H's units, backward Hout's) and the other phase's
    own, other = (hout, H) if backward else (H, hout)
    for held, group in options:
        slice_bytes = (tiles + held) * bk * bh * e
        smem = slice_bytes + group * bb * bk * e  # RESIDENT_BUFFER_SOURCE
        per_sm = 0
        if smem <= gpu.smem_per_block:
            per_sm = min(MAX_PROGRAMS_PER_SM, MAX_WARPS_PER_SM // warps, _register_limit(warps),
                         gpu.smem_per_sm // (smem + SMEM_RESERVED))  # fmt: skip
        cols = math.ceil((H if held else own) / bh)
        per_col = min(rows, gpu.sms * per_sm // cols)
        if per_col > 0:
            break
    programs = cols * max(1, per_col)
    return ResidentLayout(
        slice_bytes, smem, math.ceil(chunks / group), per_sm, cols, programs,
        math.ceil(math.ceil(own / bh) * rows / programs), per_col > 0, held,
        math.ceil(held / group), math.ceil(math.ceil(other / bh) * rows / programs) if proj else 0,
    )  # fmt: skip


def plan(
    cfg: KernelConfig, cell: str, B: int, T: int, I: int, H: int, dtype: str, training: bool,
    variant: bool = False, gpu: Gpu | None = None, proj: int = 0, precision: str = "ieee",
) -> Plan:  # noqa: E741  # fmt: skip
    """The kernels of one layer; ``variant``: with layer norm, ``proj``: the LSTM's projection
    (``proj_size``; both in the module docstring); ``gpu``: the GPU whose shared memory and SMs
    size a resident launch's grid (H100 when not given); ``precision``: "tf32" where allowed
    (the resident launch's TF32 forward with projection runs cooperative)."""
    G, S, e, a = GATES["rnn_tanh" if cell == "rnn" else cell], SAVED[cell], ELEM[dtype], ACC
    lstm = cell == "lstm"
    if proj and not lstm:
        raise ValueError(f"only the LSTM projects: {cell} with proj={proj}")
    hout = proj or H
    w_hh, w_hr = G * H * hout * e, proj * H * e
    once_fwd = [_gemm("input GEMM", T * B, G * H, I, e)]
    fwd_rows = B * (G * H * e + hout * e + H * e + (2 * H * a if lstm else 0))
    fwd_rows += B * S * H * a if training else 0
    if proj:
        # the projection's phase: m_t (its product's operand), h_{t-1} (inactive rows keep
        # it) and h_t; backward, the projected state's gradient phase: dy_t, dG_{t+1} (its
        # product's operand) and dh_t, which the cell's phase reads as its operand
        proj_rows, grad_rows = B * (H * e + 2 * proj * e), B * (proj * e + G * H * a + proj * a)
        bwd_rows = B * (proj * a + G * H * a + S * H * a + 3 * H * a)
    else:
        bwd_rows = B * (H * e + 2 * G * H * a + S * H * a + (2 * H * a if lstm else H * e))
        bwd_rows += B * H * a if lstm else 0
    extra_phases = (2 if lstm else 1) if variant else 0
    if variant:  # the normalised values saved and re-read
        fwd_rows += B * (G * H + H) * a
        bwd_rows += B * (G * H + H) * a
    extra_chain = extra_phases * VARIANT_PHASE_ROUND_TRIPS
    rec_flops, proj_flops = 2.0 * B * G * H * hout, 2.0 * B * H * proj
    once_bwd = [
        _gemm("dW_hh GEMM", G * H, hout, T * B, a, out_e=e),
        _gemm("dW_ih GEMM", G * H, I, T * B, a, out_e=e),
        _gemm("dX GEMM", T * B, I, G * H, a, out_e=e),
    ]
    if proj:
        once_bwd.append(_gemm("dW_hr GEMM", proj, H, T * B, a, out_e=e))
    # the phases of a step, in the order they run: (name, FLOPs, weights, rows, the units
    # their tiles cover, K of their product, the cell's phase: the variants' extra phases
    # join it)
    fwd = [("", rec_flops, w_hh, fwd_rows, H, hout, True)]
    bwd = [("", rec_flops, w_hh, bwd_rows, H, G * H, True)]
    if proj:
        fwd.append((" (projection)", proj_flops, w_hr, proj_rows, proj, H, False))
        bwd = [(" (projected state)", rec_flops, w_hh, grad_rows, proj, G * H, False),
               ("", proj_flops, w_hr, bwd_rows, H, proj, True)]  # fmt: skip
    w = cfg.num_warps

    if cfg.kind == "step":
        blocks_b = math.ceil(B / cfg.block_b)
        bk, st = cfg.block_k, cfg.num_stages
        # a variant's extra phases and the projection are launches of their own (their round
        # trips counted alike)
        steps = [
            [Kernel(f"fused step{' bwd' if backward else ''}{name}", flops,
                    weights + (G * H * e if i == 0 and not backward else 0) + rows,
                    blocks_b * math.ceil(n / cfg.block_h), (blocks_b - 1) * weights,
                    launches=1 + (extra_phases if cell_phase else 0),
                    chain=chain_length(k, bk, st) + (extra_chain if cell_phase else 0), warps=w)
             for i, (name, flops, weights, rows, n, k, cell_phase) in enumerate(phases)]
            for backward, phases in ((False, fwd), (True, bwd))
        ]  # fmt: skip
        return Plan(once_fwd, steps[0], steps[1], once_bwd)

    def cooperative(backward: bool, blocks: tuple) -> list[Kernel]:
        """The step kernel's loop in one launch: the weights stay in L2 (re-read by every
        batch block at every step), each phase of a step ends at a grid barrier, no launch per
        step; ``blocks``: block_b, block_h, block_k, warps, stages."""
        bb, bh, bk, warps, st = blocks
        blocks_b = math.ceil(B / bb)
        phases = bwd if backward else fwd
        grid = blocks_b * max(math.ceil(n / bh) for _, _, _, _, n, _, _ in phases)
        return [
            Kernel(f"cooperative step{' bwd' if backward else ''}{name}", flops,
                   (G * H * e if i == 0 else 0) + rows, blocks_b * math.ceil(n / bh),
                   blocks_b * weights, 0,
                   chain=chain_length(k, bk, st) + BARRIER_ROUND_TRIPS
                   + (extra_chain if cell_phase else 0),
                   warps=warps, per_sm=_register_limit(warps),
                   barriers=1 + (extra_phases if cell_phase else 0), backward=backward,
                   meeting=grid)
            for i, (name, flops, weights, rows, n, k, cell_phase) in enumerate(phases)
        ]  # fmt: skip

    launch = Kernel("cooperative launch", 0.0, 0.0, 1)
    fwd_blocks = (cfg.proj_fwd or cfg.blocks(False)) if proj else cfg.blocks(False)
    if cfg.kind == "cooperative":
        return Plan(once_fwd + [launch], cooperative(False, fwd_blocks),
                    cooperative(True, cfg.blocks(True)), [launch, *once_bwd])  # fmt: skip
    if cfg.kind == "resident":
        # each program loads its column block's slice of W_hh (and of W_hr where held) once,
        # from HBM (programs sharing a column block read it again from L2), and a step reads
        # only the A operands: every column block all B rows of h_{t-1} (K = Hout) or
        # dG_{t+1} (K = G·H), and with projection m_t (K = H) or dh_t (K = Hout), from L2
        loads, steps = [], []
        for backward, phases in ((False, fwd), (True, bwd)):
            if not shipped("resident_allowed")(precision, bool(proj), backward):  # cooperative
                loads.append(launch)
                steps.append(cooperative(False, fwd_blocks))
                continue
            _, bh, bk, warps, st = cfg.blocks(backward)
            lay = resident_layout(cfg, cell, B, H, e, gpu or GPUS["H100"], backward, proj)
            suffix = " bwd" if backward else ""
            # programs holding a copy of each slice: every program one of W_hh's, and where
            # it is held one of W_hr's
            l2 = (lay.programs // math.ceil(phases[0][4] / bh) - 1) * w_hh
            if lay.proj_chunks:
                l2 += (lay.programs // math.ceil(phases[1][4] / bh) - 1) * w_hr
            loads.append(
                Kernel(f"resident launch{suffix} (W_hh slices)", 0.0,
                       w_hh + (w_hr if lay.proj_chunks else 0), lay.programs, l2, warps=warps,
                       per_sm=lay.per_sm)
            )  # fmt: skip
            # the W_hh phase a round trip per group and walk (resident_chain); the projection's
            # phase the same where W_hr is held, otherwise its K loop reads W_hr from the caches
            kernels = []
            for name, flops, _, rows, n, k, _ in phases:
                if kernels:
                    body = lay.proj_groups if lay.proj_chunks else chain_length(k, bk, st)
                    chain = lay.proj_walks * body + BARRIER_ROUND_TRIPS
                else:
                    chain, rows = resident_chain(lay.walks, lay.groups, backward), G * H * e + rows
                kernels.append(
                    Kernel(f"resident step{suffix}{name}", flops, rows, lay.programs,
                           math.ceil(n / bh) * B * k * e, 0, chain=chain, warps=warps,
                           per_sm=lay.per_sm, barriers=1, backward=backward)
                )  # fmt: skip
            steps.append(kernels)
        return Plan(once_fwd + loads[:1], steps[0], steps[1], [*loads[1:], *once_bwd])
    if cfg.kind == "persistent":
        if proj:
            raise ValueError("the persistent kernels have no projection")
        programs = math.ceil(B / cfg.block_b)
        # W_hh is loaded once per program and stays on chip: a step waits for its xg_t load
        # (one round trip) and the store of h_t (one more) around an on-chip product
        load = Kernel("persistent launch (W_hh load)", 0.0, w_hh * programs, programs, warps=w)
        step_fwd = [
            Kernel("persistent step", rec_flops, fwd_rows, programs, 0.0, 0, chain=2, warps=w,
                   rate_per_sm=True)
        ]  # fmt: skip
        step_bwd = [
            Kernel("persistent step bwd", rec_flops, bwd_rows, programs, 0.0, 0, chain=2,
                   warps=w, rate_per_sm=True)
        ]  # fmt: skip
        return Plan(once_fwd + [load], step_fwd, step_bwd, [load, *once_bwd])
    # gemm+pointwise: the product hg = h·W_hhᵀ goes through memory between the two launches;
    # with projection the driver's projected state: a GEMM hy = m·W_hrᵀ ([B, H] x [H, Hout],
    # its operand cast to float first in half types) and an element-wise kernel writing h_t and
    # y_t; backward an element-wise kernel (dh_t) and a GEMM dh_t·W_hr before the cell's kernel
    bm, bn, bk = CUBLAS_TILE
    hg = B * G * H * a

    def gemm(name: str, flops: float, nbytes: float, n: int, k: int) -> Kernel:
        return Kernel(name, flops, nbytes, math.ceil(B / bm) * math.ceil(n / bn),
                      chain=chain_length(k, bk, CUBLAS_STAGES))  # fmt: skip

    def pointwise(name: str, nbytes: float, units: int = H) -> Kernel:
        return Kernel(name, 0.0, nbytes, min(math.ceil(B * units / cfg.threads), cfg.max_blocks),
                      chain=2, warps=w)  # fmt: skip

    step_fwd = [gemm("recurrent GEMM", rec_flops, w_hh + B * hout * e + hg, G * H, hout),
                pointwise("pointwise", fwd_rows + hg + G * H * e)]  # fmt: skip
    step_bwd = [pointwise("pointwise bwd", bwd_rows),
                gemm("recurrent GEMM bwd", rec_flops, w_hh + hg + B * hout * a, hout,
                     G * H)]  # fmt: skip
    if proj:
        step_fwd += [gemm("projection GEMM", proj_flops, w_hr + B * (H * a + proj * a), proj, H),
                     pointwise("projection pointwise", B * proj * (a + e + a), proj)]  # fmt: skip
        if e != a:
            step_fwd.insert(2, pointwise("projection operand cast", B * H * (e + a)))
        step_bwd[:0] = [pointwise("projection pointwise bwd", B * proj * (e + 3 * a), proj),
                        gemm("projection GEMM bwd", proj_flops, w_hr + B * (proj + H) * a, H,
                             proj)]  # fmt: skip
    if cfg.replayed:
        copies = graph_copies(cell, B, T, I, H, dtype, training, proj)
        once_fwd, once_bwd = [copies[0], *once_fwd], [copies[1], *once_bwd]
    return Plan(once_fwd, step_fwd, step_bwd, once_bwd)


def waves(k: Kernel, gpu: Gpu) -> int:
    per_sm = max(1, min(MAX_PROGRAMS_PER_SM, MAX_WARPS_PER_SM // max(1, k.warps)))
    if k.per_sm:
        per_sm = min(per_sm, k.per_sm)
    return math.ceil(k.programs / (gpu.sms * per_sm))


def kernel_time(
    k: Kernel, gpu: Gpu, dtype: str, precision: str = "ieee", cal: Calibration | None = None
) -> float:
    """Seconds on ``gpu`` (module docstring): roofline at the grid's share of the SMs, or the
    serial chain when it is longer, plus the GPU gap of its launches. With ``cal`` (fitted to
    this GPU), a step that ends at grid barriers takes the fitted costs instead
    (:class:`Calibration`); other kernels are costed as without it."""
    rate = dot_rate(gpu, dtype, precision)
    fitted = cal is not None and k.barriers > 0
    if fitted and dtype == "float32" and precision == "ieee":
        rate *= cal.ieee_bwd if k.backward else cal.ieee_fwd
    share = min(1.0, k.programs / gpu.sms)
    if k.rate_per_sm:  # each program's product runs on one SM; programs run side by side
        compute = k.flops / k.programs / (rate / gpu.sms) if k.flops else 0.0
    else:
        compute = k.flops / (rate * share)
    memory = k.bytes / (gpu.bandwidth * BANDWIDTH_SHARE * share)
    if not fitted:
        chain = waves(k, gpu) * k.chain * l2_latency(gpu)
        return max(compute, memory, chain) + GPU_LAUNCH_S * k.launches
    n = waves(k, gpu)
    body = n * (k.chain - k.barriers * BARRIER_ROUND_TRIPS) * cal.round_trip_s
    # the programs of one wave meet at each barrier (a phase with fewer tiles than its
    # launch's grid: the grid's)
    arrivals = math.ceil(max(k.programs, k.meeting) / n)
    sync = k.barriers * (cal.barrier_s + arrivals * cal.per_program_s)
    return max(compute, memory, body) + sync + GPU_LAUNCH_S * k.launches


@dataclass
class Prediction:
    implementation: str
    launches_step_fwd: int
    launches_step_bwd: int
    launches_seq_fwd: int
    launches_seq_fwdbwd: int
    flops_step: float
    bytes_step: float
    l2_bytes_step: float
    gpu_fwd_s: float  # GPU time alone: what a graph replay would take
    gpu_fwdbwd_s: float
    host_fwd_s: float  # host time to issue the launches
    host_fwdbwd_s: float
    fwd_s: float  # predicted wall time: max(GPU, host) + one host launch
    fwdbwd_s: float


def wall_time(gpu_s: float, host_s: float, host_launch_s: float) -> float:
    """The GPU cannot finish before the host has issued the last launch."""
    return max(gpu_s, host_s) + host_launch_s


def predict(
    cfg: KernelConfig,
    gpu: Gpu,
    cell: str,
    B: int,
    T: int,
    I: int,  # noqa: E741
    H: int,
    layers: int,
    dtype: str,
    precision: str = "ieee",
    variant: bool = False,
    cal: Calibration | None = None,
    proj: int = 0,
) -> Prediction:
    """The predicted cost of ``layers`` layers (the first reading I inputs, the others the
    layer below's Hout = ``proj`` or H)."""
    kw = dict(variant=variant, gpu=gpu, proj=proj, precision=precision)
    inf = plan(cfg, cell, B, T, I, H, dtype, training=False, **kw)
    tr = plan(cfg, cell, B, T, I, H, dtype, training=True, **kw)
    deep_inf = plan(cfg, cell, B, T, proj or H, H, dtype, training=False, **kw)
    deep_tr = plan(cfg, cell, B, T, proj or H, H, dtype, training=True, **kw)

    def t(ks) -> float:
        return sum(kernel_time(k, gpu, dtype, precision, cal) for k in ks)

    def seq_time(p: Plan, backward: bool) -> float:
        s = t(p.once_fwd) + T * t(p.step_fwd)
        return s + (T * t(p.step_bwd) + t(p.once_bwd) if backward else 0.0)

    def launches(p: Plan, backward: bool) -> int:
        n = sum(k.launches for k in p.once_fwd) + T * sum(k.launches for k in p.step_fwd)
        if backward:
            n += T * sum(k.launches for k in p.step_bwd) + sum(k.launches for k in p.once_bwd)
        return n

    def host_launches(p: Plan, backward: bool) -> int:
        """What the host issues: every launch, or around a graph replay its copies and the
        replay itself (one per layer call, forward and backward)."""
        if not cfg.replayed:
            return launches(p, backward)
        ks = p.once_fwd + (p.once_bwd if backward else [])
        return sum(k.launches for k in ks if k.host_issued) + 1 + backward

    gpu_fwd = seq_time(inf, False) + (layers - 1) * seq_time(deep_inf, False)
    gpu_fwdbwd = seq_time(tr, True) + (layers - 1) * seq_time(deep_tr, True)
    n_fwd = launches(inf, False) * layers
    n_fwdbwd = launches(tr, True) * layers
    host = HOST_LAUNCH_S[cfg.backend]
    host_fwd = (host_launches(inf, False) + (layers - 1) * host_launches(deep_inf, False)) * host
    host_fwdbwd = (host_launches(tr, True) + (layers - 1) * host_launches(deep_tr, True)) * host
    return Prediction(
        implementation=f"{cfg.backend}: {cfg.description}",
        launches_step_fwd=sum(k.launches for k in inf.step_fwd),
        launches_step_bwd=sum(k.launches for k in tr.step_bwd),
        launches_seq_fwd=n_fwd,
        launches_seq_fwdbwd=n_fwdbwd,
        flops_step=sum(k.flops for k in inf.step_fwd),
        bytes_step=sum(k.bytes for k in inf.step_fwd),
        l2_bytes_step=sum(k.l2_bytes for k in inf.step_fwd),
        gpu_fwd_s=gpu_fwd,
        gpu_fwdbwd_s=gpu_fwdbwd,
        host_fwd_s=host_fwd,
        host_fwdbwd_s=host_fwdbwd,
        fwd_s=wall_time(gpu_fwd, host_fwd, host),
        fwdbwd_s=wall_time(gpu_fwdbwd, host_fwdbwd, host),
    )


def barrier_budget(
    cfg: KernelConfig, gpu: Gpu, cal: Calibration, dtype: str = "bfloat16"
) -> dict[str, tuple[float, float]]:
    """For each of :data:`GOALS_S` at the anchor shape: (what the calibration charges a grid
    barrier of ``cfg``'s launch, the most a barrier may cost for the calibrated prediction to
    meet the goal), in seconds. A barrier's cost is all the fit adds per barrier, ``barrier_s``
    plus ``per_program_s`` for each program meeting there, taken alike at every barrier of the
    sequence; the prediction is linear in it, so two predictions give the barriers in the
    sequence and the time without them. Below zero: the goal is missed with free barriers."""

    def wall(barrier_s: float, per_program_s: float) -> tuple[float, float]:
        fit = replace(cal, barrier_s=barrier_s, per_program_s=per_program_s)
        p = predict(cfg, gpu, *(ANCHOR[k] for k in ("cell", "B", "T", "I", "H", "layers")),
                    dtype, cal=fit)  # fmt: skip
        return p.fwd_s, p.fwdbwd_s

    free, per_us, now = wall(0, 0), wall(1e-6, 0), wall(cal.barrier_s, cal.per_program_s)
    out = {}
    for i, (goal, goal_s) in enumerate(GOALS_S.items()):
        barriers = (per_us[i] - free[i]) / 1e-6
        out[goal] = ((now[i] - free[i]) / barriers, (goal_s - free[i]) / barriers)
    return out


def _goals(configs: list[KernelConfig], cals: dict[str, Calibration]) -> list[str]:
    """The section that sets the calibrated resident launches at the anchor beside the goals,
    as a cost per grid barrier (:func:`barrier_budget`)."""
    if not cals:
        return []
    goals = " and ".join(f"{goal} ≤ {s * 1e3:.1f} ms" for goal, s in GOALS_S.items())
    lines = [
        "## What the speed goals need from a grid barrier (calibrated)",
        "",
        f"The goals at the anchor shape in bfloat16 ({goals}, stated for an H100) against the "
        "calibrated resident launch, as the cost of one grid barrier: what the fit charges now "
        "(its fixed cost per barrier plus its cost per program meeting there) and the most a "
        "barrier may cost for the calibrated prediction to meet each goal, the rest of each "
        "step as fitted. These are arithmetic on a fit, not measurements: `bench/barrier.py`'s "
        "µs per barrier (the barrier alone) and `bench/paths.py`'s `resident barrier=...` rows "
        "(the launch with another kind of barrier) are what to set beside them.",
        "",
        "| GPU | launch | a barrier now, µs (calibrated) | "
        + " | ".join(f"{goal} ≤ {s * 1e3:.1f} ms needs, µs" for goal, s in GOALS_S.items())
        + " |",
        "|---|---|---|" + "---|" * len(GOALS_S),
    ]
    for g, cal in cals.items():
        for c in configs:
            if c.kind != "resident" or "bfloat16" not in c.dtypes:
                continue
            budget = barrier_budget(c, GPUS[g], cal)
            now = " / ".join(dict.fromkeys(f"{now * 1e6:.2f}" for now, _ in budget.values()))
            lines.append(
                f"| {g} | {c.backend}: {c.description} | {now} | "
                + " | ".join(f"≤ {need * 1e6:.2f}" for _, need in budget.values())
                + " |"
            )
    return lines + [""]


# -- report -----------------------------------------------------------------------------------

_ANCHOR_SHAPE = {k: PUBLISHED[k] for k in ("cell", "B", "T", "I", "H", "layers")}
CASES = [
    dict(_ANCHOR_SHAPE, label="published anchor", dtype="float16", published=True),
    dict(_ANCHOR_SHAPE, label="published anchor, bf16", dtype="bfloat16", published=True),
    # the resident slices (192 KiB) fit an sm_90 program, not an A100's: cooperative there
    dict(_ANCHOR_SHAPE, label="anchor shape, float32", dtype="float32"),
    # 256 KiB of slice fits no GPU here: the launcher runs the cooperative launch
    {"label": "resident slices too large", "cell": "lstm", "B": 16, "T": 1024, "I": 1024,
     "H": 1024, "layers": 1, "dtype": "float32"},
    {"label": "GPU headline", "cell": "lstm", "B": 64, "T": 100, "I": 512, "H": 512,
     "layers": 1, "dtype": "float32"},
    {"label": "GPU headline, TF32 allowed", "cell": "lstm", "B": 64, "T": 100, "I": 512,
     "H": 512, "layers": 1, "dtype": "float32", "precision": "tf32"},
    {"label": "char-LM 2x512", "cell": "lstm", "B": 64, "T": 128, "I": 64, "H": 512,
     "layers": 2, "dtype": "bfloat16"},
    {"label": "char-LM 2x512, float32", "cell": "lstm", "B": 64, "T": 128, "I": 64, "H": 512,
     "layers": 2, "dtype": "float32"},
    {"label": "CPU bench headline", "cell": "gru", "B": 64, "T": 64, "I": 128, "H": 512,
     "layers": 2, "dtype": "float32"},
    # the variant kernels compute half inputs in float32
    {"label": "layer-norm LSTM (variant kernels)", "cell": "lstm", "B": 16, "T": 1024,
     "I": 768, "H": 768, "layers": 1, "dtype": "float32", "variant": True},
    {"label": "small H (persistent range)", "cell": "rnn", "B": 16, "T": 1024, "I": 64,
     "H": 64, "layers": 1, "dtype": "bfloat16"},
    {"label": "sampling step", "cell": "lstm", "B": 1, "T": 1, "I": 128, "H": 512,
     "layers": 2, "dtype": "float32"},
    # the LSTM's projection (proj_size, a second phase of each step): bench/paths.py's
    # anchor-proj and mid-proj shapes
    dict(_ANCHOR_SHAPE, label="anchor shape with a projection", dtype="bfloat16", proj=384),
    {"label": "GPU headline with a projection, TF32 allowed", "cell": "lstm", "B": 64,
     "T": 100, "I": 512, "H": 512, "proj": 256, "layers": 1, "dtype": "float32",
     "precision": "tf32"},
    # the variant kernels' phases with the projection's one more
    {"label": "layer-norm LSTM with a projection (variant kernels)", "cell": "lstm", "B": 16,
     "T": 1024, "I": 768, "H": 768, "proj": 384, "layers": 1, "dtype": "float32",
     "variant": True},
]  # fmt: skip


def _fmt_bytes(n: float) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def _ms(s: float) -> str:
    return f"{s * 1e3:.3g}"


def _range(r: tuple[float, float]) -> str:
    return f"{r[0]:.2f}-{r[1]:.2f}"


def _step_us(c: KernelConfig, shape: tuple, g: str, cal: Calibration | None = None):
    """µs of one training step of ``c``, forward and backward, at ``shape`` (plan's cell, B,
    T, I, H, dtype) on GPU ``g``."""
    q = plan(c, *shape, training=True, variant=c.variants, gpu=GPUS[g])
    return tuple(sum(kernel_time(k, GPUS[g], shape[-1], cal=cal) for k in ks) * 1e6
                 for ks in (q.step_fwd, q.step_bwd))  # fmt: skip


def _every_config(
    configs: list[KernelConfig], gpus: list[str], cals: dict[str, Calibration] | None = None
) -> list[str]:
    """One row per shipped configuration: its per-step cost at a shape it serves, and for each
    GPU with a calibration (``cals``) the calibrated cost of the steps that end at barriers."""
    cals = cals or {}
    lines = [
        "## Every shipped configuration, one step (training)",
        "",
        "Per-step, cooperative and resident kernels at LSTM B=64 H=256 float32 IEEE (whether or "
        "not the launcher would pick that config there; the variant config with layer norm); "
        "persistent kernels at their cell, largest H and B=block_b, bfloat16. Chain: dependent "
        f"L2 round trips per step, forward / backward; programs and chain on the {gpus[0]} (a "
        "resident launch's grid follows the GPU's shared memory). Calibrated: the steps that "
        "end at grid barriers (cooperative and resident) with a GPU's fitted constants.",
        "",
        "| config | shape | programs | launches/step fwd, bwd | chain fwd, bwd | FLOPs/step | "
        "bytes/step | " + " | ".join(f"predicted µs/step fwd, bwd {g}" for g in gpus)
        + "".join(f" | calibrated µs/step fwd, bwd {g}" for g in cals) + " |",
        "|---|---|---|---|---|---|---|" + "---|" * (len(gpus) + len(cals)),
    ]  # fmt: skip
    for c in configs:
        if c.kind == "persistent":
            cell = "rnn" if c.cell.startswith("rnn") else c.cell
            B, H, dt = c.block_b, c.max_hidden, "bfloat16"
        else:
            cell, B, H, dt = "lstm", 64, 256, "float32"
        shape = (cell, B, 64, 128, H, dt)
        times = [_step_us(c, shape, g) for g in gpus]
        fitted = [_step_us(c, shape, g, cal) if c.kind in ("cooperative", "resident") else None
                  for g, cal in cals.items()]  # fmt: skip
        p = plan(c, *shape, training=True, variant=c.variants, gpu=GPUS[gpus[0]])
        progs = "+".join(str(k.programs if k.programs < 10**6 else "lib") for k in p.step_fwd)
        lines.append(
            f"| {c.backend}: {c.description} | {cell.upper()} B={B} H={H} {dt} | {progs} | "
            f"{sum(k.launches for k in p.step_fwd)}, {sum(k.launches for k in p.step_bwd)} | "
            f"{sum(k.chain for k in p.step_fwd):.0f}, {sum(k.chain for k in p.step_bwd):.0f} | "
            f"{sum(k.flops for k in p.step_fwd) / 1e6:.2f} M | "
            f"{_fmt_bytes(sum(k.bytes for k in p.step_fwd))} | "
            + " | ".join(f"{f:.2f}, {b:.2f} (prediction)" for f, b in times)
            + "".join(f" | {t[0]:.2f}, {t[1]:.2f} (calibrated prediction)" if t else " | "
                      for t in fitted)
            + " |"
        )  # fmt: skip
    return lines + [""]


def automatic_path(chosen: list[KernelConfig]) -> KernelConfig | None:
    """The Triton config among the applicable ``chosen`` that the launcher runs unless a path
    is forced (persistent.choose_path): persistent, else resident where its slices fit, else
    cooperative (the variants' too); never the per-step launch, which runs only when forced
    (or for an empty sequence)."""
    triton = {c.kind: c for c in chosen if c.backend == "triton" and c.picked}
    return next((triton[k] for k in ("persistent", "resident", "cooperative") if k in triton), None)


def _projected(cfg: KernelConfig, proj: int, precision: str) -> str:
    """What a config's description leaves out at a shape with projection: the cooperative
    forward's own config, which a resident launch's forward runs too where it may not run
    resident (the TF32 forward)."""
    if not (proj and cfg.proj_fwd):
        return ""
    blocks = "{}x{}x{} w{} s{}".format(*cfg.proj_fwd)
    if cfg.kind == "cooperative":
        return f"; with projection fwd {blocks}"
    if cfg.kind == "resident" and not shipped("resident_allowed")(precision, True, False):
        return f"; its {precision.upper()} forward with projection runs cooperative {blocks}"
    return ""


def _case(
    case: dict, configs: list[KernelConfig], gpus: list[str],
    cals: dict[str, Calibration] | None = None,
) -> list[str]:  # fmt: skip
    cell, B, T, I, H, L, dt = (case[k] for k in ("cell", "B", "T", "I", "H", "layers", "dtype"))  # noqa: E741
    prec = case.get("precision", "ieee")
    variant, proj = case.get("variant", False), case.get("proj", 0)
    prec_note = f" {prec.upper()}" if dt == "float32" else ""
    shape = f"B={B} T={T} I={I} H={H}" + (f" proj={proj}" if proj else "")
    lines = [
        f"## {case['label']}: {cell.upper()} {shape} layers={L} {dt}{prec_note}",
        "",
        "| GPU | implementation | launches/step fwd, bwd | launches/seq fwd, fwd+bwd | "
        "host time fwd, fwd+bwd ms | GPU time fwd, fwd+bwd ms | predicted fwd ms | "
        "predicted fwd+bwd ms | if graph-captured fwd, fwd+bwd ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def row(g: str, c: KernelConfig, auto: bool, cal=None) -> tuple[Prediction, str]:
        """The prediction on GPU ``g`` and its row's name (``auto``: the automatic path)."""
        p = predict(c, GPUS[g], cell, B, T, I, H, L, dt, prec, variant, cal=cal, proj=proj)
        auto_mark = " *(automatic path)*" if auto else ""
        return p, p.implementation + _projected(c, proj, prec) + auto_mark

    for g in gpus:
        chosen = [c for c in configs if applicable(c, cell, B, H, variant, dt, GPUS[g], proj)]
        auto = automatic_path(chosen)
        for c in chosen:
            p, name = row(g, c, c is auto)
            lines.append(
                f"| {g} | {name} | {p.launches_step_fwd}, {p.launches_step_bwd} | "
                f"{p.launches_seq_fwd}, {p.launches_seq_fwdbwd} | "
                f"{_ms(p.host_fwd_s)}, {_ms(p.host_fwdbwd_s)} | "
                f"{_ms(p.gpu_fwd_s)}, {_ms(p.gpu_fwdbwd_s)} | "
                f"**{_ms(p.fwd_s)}** (prediction) | **{_ms(p.fwdbwd_s)}** (prediction) | "
                f"{_ms(p.gpu_fwd_s)}, {_ms(p.gpu_fwdbwd_s)} (prediction) |"
            )
        cal = (cals or {}).get(g)
        for c in chosen if cal else ():
            if c.kind not in ("cooperative", "resident"):
                continue
            p, name = row(g, c, c is auto, cal)
            lines.append(
                f"| {g} | {name}, *calibrated* | | | | {_ms(p.gpu_fwd_s)}, {_ms(p.gpu_fwdbwd_s)} | "
                f"**{_ms(p.fwd_s)}** (calibrated prediction) | **{_ms(p.fwdbwd_s)}** "
                f"(calibrated prediction) | {_ms(p.gpu_fwd_s)}, {_ms(p.gpu_fwdbwd_s)} "
                "(calibrated prediction) |"
            )
    lines += measured(case)
    if case.get("published"):
        for name, fwd, fwdbwd in PUBLISHED["rows"]:
            lines.append(
                f"| H100 | {name} (published, measured: {PUBLISHED['source']}) | | | | | "
                f"{fwd} | {fwdbwd} | |"
            )
    return lines + [""]


def _paths_shape(r: dict) -> tuple:
    """(cell, variant, B, T, I, H, proj, layers, dtype) of a ``bench/paths.py`` row, from its
    label (``lstm layer_norm fwd B=16 T=1024 I=768 H=768 proj=384 L=1 float32``), the dtype
    ``float32+tf32`` where TF32 was on (its shape's name ends in ``tf32``)."""
    words = r["label"].split(", ")[0].split()
    at = next(i for i, w in enumerate(words) if w.startswith("B="))
    sizes = dict(w.split("=") for w in words[at:-1])
    tf32 = "+tf32" if r["shape"].endswith("tf32") else ""
    return (words[0], at > 2, *(int(sizes.get(k, 0)) for k in ("B", "T", "I", "H", "proj", "L")),
            words[-1] + tf32)  # fmt: skip


def _paths_rows(case: dict, d: Path, device: str) -> list[str]:
    """Table rows of ``d/paths.csv`` (``bench/paths.py``, eager medians of each kernel path and
    config, and of its baseline, in one run) at ``case``'s shape, one per provider that passed
    its check."""
    if not (d / "paths.csv").is_file():
        return []
    want = (case["cell"], bool(case.get("variant")), case["B"], case["T"], case["I"], case["H"],
            case.get("proj", 0), case["layers"],
            case["dtype"] + ("+tf32" if case.get("precision") == "tf32" else ""))  # fmt: skip
    times: dict[str, dict[str, float]] = {}
    with open(d / "paths.csv") as f:
        for r in csv.DictReader(f):
            if not r.get("problem") and r["ms"] and _paths_shape(r) == want:
                times.setdefault(r["provider"], {})[r["mode"]] = float(r["ms"])
    rows = []
    for provider, t in times.items():
        name = provider if provider.startswith(("torch.nn", "fusedrnn[")) else (
            f"fusedrnn[triton] {provider}")  # fmt: skip
        fwd, fwdbwd = (f"{t[m]:.4g}" if m in t else "" for m in ("fwd", "fwdbwd"))
        rows.append(f"| {device} | {name} (measured: {d.name}/paths.csv) | | | | | {fwd} | "
                    f"{fwdbwd} | |")  # fmt: skip
    return rows


def _paths_device(d: Path) -> str:
    """The GPU of a ``bench/paths.py`` run written to ``d`` without gpu_check's ``meta.json``:
    the first words of its ``paths.md``'s machine line (``NVIDIA H200, torch ...``)."""
    if not (d / "paths.md").is_file():
        return d.name
    line = next((ln for ln in (d / "paths.md").read_text().splitlines()[1:] if ln), "")
    return line.split(",")[0] or d.name


def measured(case: dict, results: Path = _ROOT / "bench" / "results") -> list[str]:
    """Table rows of what a GPU measured at ``case``'s shape: ``gpu_check``'s eager medians
    (``results.csv``) and, in rows of their own, the CUDA-graph replay medians of
    ``bench/graph_replay.py`` (``graph_replay.csv``, a run of its own that may predate the
    eager one) and the eager medians of each Triton path of ``bench/paths.py`` (``paths.csv``:
    projected and layer-norm shapes too), one row per provider, from every
    ``results/gpu-*/`` (a ``paths.py`` run of its own included)."""
    cell, B, T, I, H, L = (case[k] for k in ("cell", "B", "T", "I", "H", "layers"))  # noqa: E741
    dtype = case["dtype"] + ("+tf32" if case.get("precision") == "tf32" else "")
    rows: list[str] = []
    for d in sorted(results.glob("gpu-*")):
        if not (d / "results.csv").is_file():
            rows += _paths_rows(case, d, _paths_device(d))
            continue
        meta = json.loads((d / "meta.json").read_text())
        paths = _paths_rows(case, d, meta["device"])
        # results.csv and graph_replay.csv are of torch.nn's cells only, without projection
        if case.get("variant") or case.get("proj"):
            rows += paths
            continue
        eager: dict[str, dict[str, str]] = {}
        with open(d / "results.csv") as f:
            for r in csv.DictReader(f):
                key = (r["cell"], *(int(r[k]) for k in "BTIH"), int(r["layers"]), r["dtype"])
                if key == (cell, B, T, I, H, L, dtype) and r["status"] == "ok":
                    eager.setdefault(r["provider"], {})[r["mode"]] = r["median_ms"]
        replay: dict[str, dict[str, str]] = {}
        if (d / "graph_replay.csv").is_file():
            with open(d / "graph_replay.csv") as f:
                for r in csv.DictReader(f):
                    if f" B={B} T={T} I={I} H={H} L={L}" in r["shape"] and r["dtype"] == dtype:
                        replay.setdefault(r["provider"], {})[r["mode"]] = r.get("replay_ms", "")
        for provider, t in eager.items():
            rows.append(
                f"| {meta['device']} | {provider} (measured: {d.name}/results.csv, "
                f"{meta['date'][:10]}) | | | | | {t.get('fwd', '')} | {t.get('fwdbwd', '')} | |"
            )
        # a separate run (graph_replay.py), possibly of other kernels than results.csv's
        for provider, g in replay.items():
            if "fwd" in g and "fwdbwd" in g:
                rows.append(
                    f"| {meta['device']} | {provider} (measured: {d.name}/graph_replay.csv) | "
                    f"| | | | | | {g['fwd']}, {g['fwdbwd']} (measured) |"
                )
        rows += paths
    return rows


def report(gpus: list[str]) -> str:
    configs, note = triton_configs()
    cuda, cuda_note = cuda_config()
    configs = configs + [cuda]
    smem = ", ".join(
        f"{g} {GPUS[g].smem_per_sm // 1024} / {GPUS[g].smem_per_block // 1024} KiB" for g in gpus
    )
    lines = [
        "# fusedrnn GPU cost model — PREDICTIONS, with measurements beside them",
        "",
        "Generated by `python bench/costmodel.py`; the formulas are in its docstring. Every "
        "uncalibrated prediction is optimistic by construction (peak rates, perfect overlap of "
        "compute, memory and latency); rows marked *calibrated* are fits to a GPU's "
        "measurements instead (below). Rows marked *measured* are not predictions: they are read from "
        "`bench/results/gpu-*/` (`python -m fusedrnn.gpu_check`, eager calls, and its "
        "`bench/paths.py` rows, each Triton path forced; "
        "`bench/graph_replay.py`, the same calls replayed from a CUDA graph, in the last "
        "column), and rows marked *published* are other projects' measurements. *(automatic "
        "path)* marks the Triton kernels the launcher runs at that shape on that GPU unless a "
        "path is forced (`fusedrnn.ops.triton.kernel_path`); the other Triton rows are the "
        "paths it runs when forced, or falls back to.",
        "",
        "Ceilings (datasheets; shared memory from the CUDA programming guide):",
        *[f"- {GPUS[g].name}: {GPUS[g].source}" for g in gpus],
        f"- shared memory per SM / per program: {smem}: {SMEM_SOURCE}",
        "",
        "Assumptions (not measured here):",
        f"- {BANDWIDTH_SHARE:.0%} of the datasheet bandwidth: {BANDWIDTH_SHARE_SOURCE}",
        f"- L2 hit {L2_HIT_CYCLES} cycles "
        f"({', '.join(f'{g} {l2_latency(GPUS[g]) * 1e9:.0f} ns' for g in gpus)}): {L2_HIT_SOURCE}",
        f"- {GPU_LAUNCH_S * 1e6:.1f} µs of GPU time per dependent launch: {GPU_LAUNCH_SOURCE}",
        f"- host time per launch {', '.join(f'{k} {v * 1e6:.0f} µs' for k, v in HOST_LAUNCH_S.items())}: "
        f"{HOST_LAUNCH_SOURCE}",
        f"- grid barrier: {BARRIER_ROUND_TRIPS} L2 round trips per step: {BARRIER_SOURCE}",
        f"- {REGS_PER_THREAD} registers per thread in the cooperative and resident kernels: "
        f"{REGS_SOURCE}",
        f"- a resident program's shared memory: its W_hh slice and one [block_b, block_k] "
        f"buffer: {RESIDENT_BUFFER_SOURCE}",
        f"- cuBLAS per-step GEMM: tile {'x'.join(map(str, CUBLAS_TILE))}, {CUBLAS_STAGES} "
        "pipeline stages (its real kernel choice was not inspected)",
        f"- at most {MAX_WARPS_PER_SM} warps and {MAX_PROGRAMS_PER_SM} programs per SM (CUDA "
        "programming guide, compute capability 8.0/9.0); register limits are ignored, so the "
        "number of waves is a lower bound",
        "- float32 products: the FMA rate for an IEEE `tl.dot`, the TF32 rate when "
        "`torch.backends.cuda.matmul.allow_tf32` is set (cuDNN's RNNs use TF32 by default: "
        "`torch.backends.cudnn.allow_tf32` is True)",
        "",
    ]
    if note:
        lines += [f"**{note}**: only the CUDA backend's configuration is modelled.", ""]
    if cuda_note:
        lines += [f"CUDA backend: {cuda_note}.", ""]
    cals = {g: c for g, c in load_calibrations().items() if g in gpus}
    for g, c in cals.items():
        lines += [
            f"Calibrated rows ({g}, *calibrated*): the steps of the cooperative and resident "
            f"launches costed with constants fitted to the {g}'s measurements of the "
            f"cooperative launch (`bench/calibrate.py`; the points and the fit: "
            f"`results/{Path(c.path).with_suffix('.md')}`): one round trip of a step's chain "
            f"{c.round_trip_s * 1e9:.0f} ns, per barrier {c.barrier_s * 1e6:.2f} µs plus "
            f"{c.per_program_s * 1e9:.0f} ns per program meeting there, an IEEE float32 "
            f"`tl.dot` at {c.ieee_fwd:.1%} (forward) and {c.ieee_bwd:.1%} (backward) of the "
            f"FMA peak. Measured / calibrated: {_range(c.fit_ratio_range)} on the points "
            f"fitted, {_range(c.held_out_ratio_range)} on points held out. These rows are fits, "
            "not bounds: the resident launch was never measured, and its calibrated rows "
            "assume its step costs what the cooperative one's does besides the chain. The "
            "forward's IEEE share was fitted to forward kernels whose reads of the weights were "
            "8-way shared-memory bank conflicts, since removed (`fusedrnn/smem.py`); the "
            "calibrated IEEE float32 forward rows still take it.",
            "",
        ]
    lines += _goals(configs, cals)
    lines += _every_config(configs, gpus, cals)
    for case in CASES:
        lines += _case(case, configs, gpus, cals)
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Predicted GPU cost of the fused RNN kernels")
    p.add_argument("--gpu", default="H100,H200,A100", help="comma list from " + ",".join(GPUS))
    p.add_argument("--markdown", type=Path, help="also write the report to this file")
    args = p.parse_args(argv)
    gpus = [g.strip() for g in args.gpu.split(",")]
    bad = [g for g in gpus if g not in GPUS]
    if bad:
        p.error(f"unknown GPU {bad}; choose from {list(GPUS)}")
    text = report(gpus)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
