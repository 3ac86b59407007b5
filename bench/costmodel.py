"""GPU cost model of the fused kernels: FLOPs, bytes and launches per step, predicted times.

    python bench/costmodel.py [--gpu H100,A100] [--markdown out.md]

Nothing here runs on a GPU: every time printed is a PREDICTION from the ceilings below, next to
the published anchor (FlashRNN's H100 table). The kernel configurations are read from the code
that launches them: ``fusedrnn.ops.triton.configs`` (``STEP_CONFIGS``, ``PERSISTENT_CONFIGS`` and
the ``pick_*`` functions the launchers call) and the CUDA backend's launch shape
(``kThreads`` / ``kMaxBlocks`` in ``csrc/cuda/common.cuh``).

The model, per layer and direction (G gates, H hidden, Hout = H, I input, B batch, T steps,
``e`` bytes per element of the data type, ``a`` of the accumulation type: 4 for every type here
except float64):

Forward
  once:     input GEMM  X[T·B, I] · W_ihᵀ[I, G·H]:  2·T·B·G·H·I FLOPs,
            (T·B·I + G·H·I + T·B·G·H)·e bytes
  per step: recurrent product h·W_hhᵀ plus the gate math: 2·B·G·H·H FLOPs; bytes read W_hh
            (G·H·H·e, once per step: its re-reads by every batch block are L2 traffic, reported
            apart), b_hh, xg_t (B·G·H·e), h_{t-1} (B·H·e), c_{t-1} (B·H·a, LSTM); written h_t
            (B·H·e; the output y is a view of the h history), c_t (B·H·a, LSTM) and, when
            training, the saved activations (B·S·H·a, S = 4 for LSTM gates, 4 for GRU r, z, n,
            W_hn·h, 0 for RNN, whose backward uses the h history).
Backward
  per step: dh_t = dy_t + dG_{t+1}·W_hh and the gate gradients: 2·B·G·H·H FLOPs; bytes read
            W_hh, dy_t (B·H·e), dG_{t+1} (B·G·H·a), the saved activations, c_{t-1}, c_t (LSTM) or
            h_{t-1} (GRU); written dG_t (B·G·H·a) and dc_{t-1} (B·H·a, LSTM).
  once:     dW_hh = dGᵀ·H_prev, dW_ih = dGᵀ·X, dX = dG·W_ih: 2·T·B·G·H·(H + 2·I) FLOPs.

Bias-gradient reductions are not counted. float32 products are costed at the fp32 peak (no
TF32), half-precision ones at the dense tensor-core peak. Bytes are HBM bytes: a W_hh that stays
in L2 from one step to the next (it fits: 4.5 MiB at H=768 fp16 against 50 MiB of H100 L2)
would make the per-step kernels faster than predicted.

A kernel's time is max(FLOPs / (peak·u), bytes / (bandwidth·u)) + the GPU-side cost of a
dependent launch, where u = min(1, programs / SMs) is the share of the GPU a grid can use: a
per-step grid of 8 programs on a 132-SM H100 gets 8/132 of its bandwidth. The host side is
reported apart as a floor (launches × host cost per launch): a per-step launch loop cannot run
faster than its host can issue launches unless the loop is captured in a CUDA graph.
"""

from __future__ import annotations

import argparse
import importlib
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

GATES = {"lstm": 4, "gru": 3, "rnn": 1}
SAVED = {"lstm": 4, "gru": 4, "rnn": 0}  # saved activations per row, in units of H
ELEM = {"float32": 4, "bfloat16": 2, "float16": 2}
ACC = 4  # bytes: gates, c and gradients are kept in float32 for every data type here


# -- ceilings ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gpu:
    name: str
    bandwidth: float  # bytes/s, device copy
    fp32: float  # FLOP/s, dense float32 (no TF32)
    half: float  # FLOP/s, dense bf16 / fp16 tensor cores
    sms: int
    source: str


GPUS = {
    "H100": Gpu(
        "H100 SXM",
        3.0e12,
        67e12,
        800e12,
        132,
        "measured on an H100 SXM: 3.0 TB/s device-to-device copy, ~67 TFLOP/s fp32, "
        "~800 TFLOP/s bf16 dense GEMM; 132 SMs",
    ),
    "A100": Gpu(
        "A100 SXM4 80GB",
        0.9 * 2.039e12,
        19.5e12,
        312e12,
        108,
        "NVIDIA A100 datasheet: 2,039 GB/s HBM2e (80 GB SXM4; 1,555 GB/s for the 40 GB part), "
        "19.5 TFLOP/s fp32, 312 TFLOP/s bf16/fp16 dense, 108 SMs; the bandwidth is taken at 0.9 "
        "of the datasheet, the ratio the H100's measured copy (3.0) bears to its datasheet "
        "3.35 TB/s",
    ),
}

# Assumptions, not measurements: what one dependent launch costs on the GPU (fill + drain of a
# small kernel behind the previous one) and on the host (Triton's Python launcher; a C++ loop
# calling cudaLaunchKernel plus an ATen/cuBLAS GEMM call).
GPU_LAUNCH_S = 2.0e-6
HOST_LAUNCH_S = {"triton": 20e-6, "cuda": 5e-6}
# Inside a persistent kernel a step still waits for its dependent chain (load xg_t, dot with the
# register-resident W_hh, gate math, write h_t) to finish: assumed 1 µs per step.
PERSISTENT_STEP_S = 1.0e-6

# Published anchor: FlashRNN (Pöppel et al., 2024), H100, LSTM B=16 T=1024 H=768, cuDNN fp16.
ANCHOR = {
    "source": "FlashRNN paper, H100 table, LSTM B=16 T=1024 H=768: cuDNN fp16",
    "cell": "lstm",
    "B": 16,
    "T": 1024,
    "I": 768,
    "H": 768,
    "layers": 1,
    "dtype": "float16",
    "fwd_ms": 2.01,
    "fwdbwd_ms": 5.19,
}


# -- kernel configurations, read from the code ------------------------------------------------


@dataclass(frozen=True)
class KernelConfig:
    """One way the fused layer runs; ``kind`` is step (per-step launch), persistent (one launch
    per sequence) or gemm+pointwise (a library GEMM and one element-wise kernel per step)."""

    backend: str
    kind: str
    description: str
    block_b: int = 0
    block_h: int = 0
    threads: int = 0  # gemm+pointwise: threads per block of the element-wise kernel
    max_blocks: int = 0
    max_hidden: int = 0  # persistent: the largest H it takes
    cell: str = ""  # persistent configs are per cell
    picker: object = field(default=None, compare=False, repr=False)


def triton_configs() -> tuple[list[KernelConfig], str]:
    """The Triton backend's shipped configurations, or ([], why not)."""
    try:
        tc = importlib.import_module("fusedrnn.ops.triton.configs")
    except Exception as exc:  # triton missing, or the module not written yet
        return [], f"no triton configs found (fusedrnn.ops.triton.configs: {exc})"
    out = []
    for c in getattr(tc, "STEP_CONFIGS", ()):
        out.append(
            KernelConfig(
                "triton",
                "step",
                f"per-step block_b={c.block_b} block_h={c.block_h} block_k={c.block_k} "
                f"warps={c.num_warps}",
                block_b=c.block_b,
                block_h=c.block_h,
                picker=getattr(tc, "pick_step_config", None),
            )
        )
    for c in getattr(tc, "PERSISTENT_CONFIGS", ()):
        out.append(
            KernelConfig(
                "triton",
                "persistent",
                f"persistent {c.cell} block_b={c.block_b} block_h={c.block_h} H<={c.max_hidden} "
                f"warps={c.num_warps}",
                block_b=c.block_b,
                block_h=c.block_h,
                max_hidden=c.max_hidden,
                cell=c.cell,
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
    desc = f"cuBLAS GEMM + element-wise kernel per step ({threads} threads/block, grid-stride)"
    return KernelConfig(
        "cuda", "gemm+pointwise", desc, threads=threads, max_blocks=max_blocks
    ), note


def applicable(cfg: KernelConfig, cell: str, B: int, H: int) -> bool:
    """Whether the launchers would pick ``cfg`` for this shape (mirrors the pick functions)."""
    if cfg.kind == "persistent":
        return cfg.cell in (cell, "rnn_tanh" if cell == "rnn" else cell) and H <= cfg.max_hidden
    if cfg.kind == "step" and cfg.picker is not None:
        import os

        saved = os.environ.pop("TRITON_INTERPRET", None)  # the GPU choice, not the interpreter's
        try:
            chosen = cfg.picker(B, H)
        finally:
            if saved is not None:
                os.environ["TRITON_INTERPRET"] = saved
        return (chosen.block_b, chosen.block_h) == (cfg.block_b, cfg.block_h)
    return True


# -- counts -----------------------------------------------------------------------------------


@dataclass
class Kernel:
    """One launch (or one step of a persistent kernel): work and grid size."""

    name: str
    flops: float
    bytes: float
    programs: int
    l2_bytes: float = 0.0
    launches: int = 1  # GPU launches this costs (0 inside a persistent kernel)
    fixed_s: float = 0.0  # latency that no ceiling covers (a persistent kernel's step chain)


@dataclass
class Plan:
    """Kernels of one layer: run once before, per step, and once after the time loop."""

    once_fwd: list[Kernel]
    step_fwd: list[Kernel]
    step_bwd: list[Kernel]
    once_bwd: list[Kernel]


def _gemm(name, m, n, k, e, out_e=None, programs=10**6) -> Kernel:
    out_e = e if out_e is None else out_e
    return Kernel(name, 2.0 * m * n * k, (m * k + k * n) * e + m * n * out_e, programs)


def plan(
    cfg: KernelConfig, cell: str, B: int, T: int, I: int, H: int, dtype: str, training: bool
) -> Plan:  # noqa: E741
    G, S, e, a = GATES[cell], SAVED[cell], ELEM[dtype], ACC
    lstm = cell == "lstm"
    w_hh = G * H * H * e
    once_fwd = [_gemm("input GEMM", T * B, G * H, I, e)]
    fwd_rows = B * (G * H * e + H * e + H * e + (2 * H * a if lstm else 0))
    fwd_rows += B * S * H * a if training else 0
    bwd_rows = B * (H * e + 2 * G * H * a + S * H * a + (2 * H * a if lstm else H * e))
    bwd_rows += B * H * a if lstm else 0
    rec_flops = 2.0 * B * G * H * H
    once_bwd = [
        _gemm("dW_hh GEMM", G * H, H, T * B, a, out_e=e),
        _gemm("dW_ih GEMM", G * H, I, T * B, a, out_e=e),
        _gemm("dX GEMM", T * B, I, G * H, a, out_e=e),
    ]

    if cfg.kind == "step":
        blocks_b = math.ceil(B / cfg.block_b)
        programs = blocks_b * math.ceil(H / cfg.block_h)
        l2 = (blocks_b - 1) * w_hh
        step_fwd = [Kernel("fused step", rec_flops, w_hh + G * H * e + fwd_rows, programs, l2)]
        step_bwd = [Kernel("fused step bwd", rec_flops, w_hh + bwd_rows, programs, l2)]
        return Plan(once_fwd, step_fwd, step_bwd, once_bwd)
    if cfg.kind == "persistent":
        programs = math.ceil(B / cfg.block_b)
        # W_hh is loaded once per program into registers: the whole sequence's weight traffic
        load = Kernel("persistent launch (W_hh load)", 0.0, w_hh * programs, programs)
        step_fwd = [
            Kernel("persistent step", rec_flops, fwd_rows, programs, 0.0, 0, PERSISTENT_STEP_S)
        ]
        step_bwd = [
            Kernel("persistent step bwd", rec_flops, bwd_rows, programs, 0.0, 0, PERSISTENT_STEP_S)
        ]
        return Plan(once_fwd + [load], step_fwd, step_bwd, [load, *once_bwd])
    # gemm+pointwise: the product hg = h·W_hhᵀ goes through memory between the two launches
    n = B * H
    blocks = min(math.ceil(n / cfg.threads), cfg.max_blocks)
    hg = B * G * H * a
    gemm_f = Kernel("recurrent GEMM", rec_flops, w_hh + B * H * e + hg, 10**6)
    gemm_b = Kernel("recurrent GEMM bwd", rec_flops, w_hh + B * G * H * a + B * H * a, 10**6)
    step_fwd = [gemm_f, Kernel("pointwise", 0.0, fwd_rows + hg + G * H * e, blocks)]
    step_bwd = [Kernel("pointwise bwd", 0.0, bwd_rows, blocks), gemm_b]
    return Plan(once_fwd, step_fwd, step_bwd, once_bwd)


def kernel_time(k: Kernel, gpu: Gpu, dtype: str) -> float:
    """Seconds on ``gpu``: roofline at the grid's share of the SMs, plus the launch cost."""
    peak = gpu.fp32 if dtype == "float32" else gpu.half
    share = min(1.0, k.programs / gpu.sms)
    roof = max(k.flops / (peak * share), k.bytes / (gpu.bandwidth * share))
    return roof + GPU_LAUNCH_S * k.launches + k.fixed_s


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
    fwd_s: float
    fwdbwd_s: float
    host_floor_fwd_s: float
    host_floor_fwdbwd_s: float


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
) -> Prediction:
    inf = plan(cfg, cell, B, T, I, H, dtype, training=False)
    tr = plan(cfg, cell, B, T, I, H, dtype, training=True)
    deep_inf = plan(cfg, cell, B, T, H, H, dtype, training=False)
    deep_tr = plan(cfg, cell, B, T, H, H, dtype, training=True)

    def seq_time(p: Plan, backward: bool) -> float:
        t = sum(kernel_time(k, gpu, dtype) for k in p.once_fwd)
        t += T * sum(kernel_time(k, gpu, dtype) for k in p.step_fwd)
        if backward:
            t += T * sum(kernel_time(k, gpu, dtype) for k in p.step_bwd)
            t += sum(kernel_time(k, gpu, dtype) for k in p.once_bwd)
        return t

    def launches(p: Plan, backward: bool) -> int:
        n = sum(k.launches for k in p.once_fwd) + T * sum(k.launches for k in p.step_fwd)
        if backward:
            n += T * sum(k.launches for k in p.step_bwd) + sum(k.launches for k in p.once_bwd)
        return n

    fwd = seq_time(inf, False) + (layers - 1) * seq_time(deep_inf, False)
    fwdbwd = seq_time(tr, True) + (layers - 1) * seq_time(deep_tr, True)
    n_fwd = launches(inf, False) * layers
    n_fwdbwd = launches(tr, True) * layers
    host = HOST_LAUNCH_S[cfg.backend]
    return Prediction(
        implementation=f"{cfg.backend}: {cfg.description}",
        launches_step_fwd=sum(k.launches for k in inf.step_fwd),
        launches_step_bwd=sum(k.launches for k in tr.step_bwd),
        launches_seq_fwd=n_fwd,
        launches_seq_fwdbwd=n_fwdbwd,
        flops_step=sum(k.flops for k in inf.step_fwd),
        bytes_step=sum(k.bytes for k in inf.step_fwd),
        l2_bytes_step=sum(k.l2_bytes for k in inf.step_fwd),
        fwd_s=fwd,
        fwdbwd_s=fwdbwd,
        host_floor_fwd_s=n_fwd * host,
        host_floor_fwdbwd_s=n_fwdbwd * host,
    )


# -- report -----------------------------------------------------------------------------------

CASES = [
    dict(ANCHOR, label="FlashRNN anchor"),
    dict(ANCHOR, label="FlashRNN anchor, bf16", dtype="bfloat16"),
    {"label": "bench headline", "cell": "lstm", "B": 64, "T": 64, "I": 128, "H": 256,
     "layers": 2, "dtype": "float32"},
    {"label": "bench headline", "cell": "lstm", "B": 64, "T": 64, "I": 128, "H": 512,
     "layers": 2, "dtype": "float32"},
    {"label": "bench headline", "cell": "gru", "B": 64, "T": 64, "I": 128, "H": 512,
     "layers": 2, "dtype": "float32"},
    {"label": "small H (persistent range)", "cell": "rnn", "B": 16, "T": 1024, "I": 64,
     "H": 64, "layers": 1, "dtype": "bfloat16"},
    {"label": "sampling step", "cell": "lstm", "B": 1, "T": 1, "I": 128, "H": 512,
     "layers": 2, "dtype": "float32"},
]  # fmt: skip


def _fmt_bytes(n: float) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def _every_config(configs: list[KernelConfig], gpus: list[str]) -> list[str]:
    """One row per shipped configuration: its per-step cost at a shape it serves."""
    lines = [
        "## Every shipped configuration, one forward step (training: saved activations written)",
        "",
        "Per-step kernels at B=64, H=256, I=128, LSTM, float32 (whether or not the launcher "
        "would pick that config there); persistent kernels at their cell, largest H and "
        "B=block_b, bfloat16.",
        "",
        "| config | shape | programs | launches/step | FLOPs/step | bytes/step | "
        + " | ".join(f"predicted µs/step {g}" for g in gpus)
        + " |",
        "|---|---|---|---|---|---|" + "---|" * len(gpus),
    ]
    for c in configs:
        if c.kind == "persistent":
            cell = "rnn" if c.cell.startswith("rnn") else c.cell
            B, H, dt = c.block_b, c.max_hidden, "bfloat16"
        else:
            cell, B, H, dt = "lstm", 64, 256, "float32"
        p = plan(c, cell, B, 64, 128, H, dt, training=True)
        times = [sum(kernel_time(k, GPUS[g], dt) for k in p.step_fwd) * 1e6 for g in gpus]
        lines.append(
            f"| {c.backend}: {c.description} | {cell.upper()} B={B} H={H} {dt} | "
            f"{max(k.programs for k in p.step_fwd) if c.kind != 'gemm+pointwise' else 'cuBLAS + ' + str(p.step_fwd[1].programs)} | "
            f"{sum(k.launches for k in p.step_fwd)} | "
            f"{sum(k.flops for k in p.step_fwd) / 1e6:.2f} M | "
            f"{_fmt_bytes(sum(k.bytes for k in p.step_fwd))} | "
            + " | ".join(f"{t:.2f} (prediction)" for t in times)
            + " |"
        )
    return lines + [""]


def report(gpus: list[str]) -> str:
    configs, note = triton_configs()
    cuda, cuda_note = cuda_config()
    configs = configs + [cuda]
    lines = [
        "# fusedrnn GPU cost model — every time below is a PREDICTION, not a measurement",
        "",
        "Ceilings:",
        *[f"- {GPUS[g].name}: {GPUS[g].source}" for g in gpus],
        f"- assumed, not measured: {GPU_LAUNCH_S * 1e6:.1f} µs of GPU time per dependent "
        f"launch; host cost per launch {', '.join(f'{k} {v * 1e6:.0f} µs' for k, v in HOST_LAUNCH_S.items())} "
        "(host floor = launches × that: what a launch loop costs unless captured in a CUDA graph)",
        "",
    ]
    if note:
        lines += [f"**{note}**: only the CUDA backend's configuration is modelled.", ""]
    if cuda_note:
        lines += [f"CUDA backend: {cuda_note}.", ""]
    lines += [
        f"Anchor (published, measured): {ANCHOR['source']}: {ANCHOR['fwd_ms']} ms forward, "
        f"{ANCHOR['fwdbwd_ms']} ms forward+backward.",
        "",
    ]
    lines += _every_config(configs, gpus)
    for case in CASES:
        cell, B, T, I, H, L, dt = (case[k] for k in ("cell", "B", "T", "I", "H", "layers", "dtype"))  # noqa: E741
        chosen = [c for c in configs if applicable(c, cell, B, H)]
        lines += [
            f"## {case['label']}: {cell.upper()} B={B} T={T} I={I} H={H} layers={L} {dt}",
            "",
            "| GPU | implementation | launches/step fwd, bwd | launches/seq fwd, fwd+bwd | "
            "FLOPs/step | bytes/step (+L2 re-reads) | predicted fwd ms | predicted fwd+bwd ms "
            "| host floor fwd, fwd+bwd ms |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for g in gpus:
            for c in chosen:
                p = predict(c, GPUS[g], cell, B, T, I, H, L, dt)
                lines.append(
                    f"| {g} | {p.implementation} | {p.launches_step_fwd}, {p.launches_step_bwd} | "
                    f"{p.launches_seq_fwd}, {p.launches_seq_fwdbwd} | {p.flops_step / 1e6:.1f} M | "
                    f"{_fmt_bytes(p.bytes_step)} (+{_fmt_bytes(p.l2_bytes_step)}) | "
                    f"{p.fwd_s * 1e3:.3g} (prediction) | {p.fwdbwd_s * 1e3:.3g} (prediction) | "
                    f"{p.host_floor_fwd_s * 1e3:.3g}, {p.host_floor_fwdbwd_s * 1e3:.3g} "
                    "(prediction) |"
                )
        if "fwd_ms" in case:
            lines.append(
                f"| H100 | published cuDNN fp16 (measured, FlashRNN) | | | | | "
                f"{case['fwd_ms']} | {case['fwdbwd_ms']} | |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Predicted GPU cost of the fused RNN kernels")
    p.add_argument("--gpu", default="H100,A100", help="comma list from " + ",".join(GPUS))
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
