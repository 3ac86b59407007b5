"""Timing, memory, FLOP counts and machine facts for the benchmark suite.

CPU times come from ``torch.utils.benchmark.Timer.blocked_autorange``; its ``times`` are the
per-call averages of each block, so p20 / p80 are quantiles over blocks. GPU times come from CUDA
events around single calls after a warm-up. Either way several short rounds per provider are
interleaved with the other providers of the same configuration and their samples pooled, so a
machine that speeds up or slows down during a run moves every provider alike.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import json
import math
import os
import platform
import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.benchmark import Timer

from fusedrnn.ops.checks import GATES

# -- FLOPs ------------------------------------------------------------------------------------


def forward_flops(cell: str, B: int, T: int, I: int, H: int, layers: int) -> int:  # noqa: E741
    """Multiply-adds of the two GEMMs, 2·B·T·(G·H)·(I+H) per layer; pointwise math not counted."""
    gates = GATES["rnn_tanh" if cell == "rnn" else cell]
    total = 0
    for layer in range(layers):
        in_size = I if layer == 0 else H
        total += 2 * B * T * gates * H * (in_size + H)
    return total


def mode_flops(mode: str, cell: str, B: int, T: int, I: int, H: int, layers: int) -> int:  # noqa: E741
    """Backward costs two forward GEMMs' worth (dgates·W for dx/dh, dgatesᵀ·[x,h] for dW)."""
    fwd = forward_flops(cell, B, T, I, H, layers)
    return 3 * fwd if mode == "fwdbwd" else fwd


# -- timing -----------------------------------------------------------------------------------


@dataclass
class Samples:
    times_s: list[float] = field(default_factory=list)  # per-call seconds, pooled over rounds

    def quantile(self, q: float) -> float:
        xs = sorted(self.times_s)
        if not xs:
            return float("nan")
        pos = q * (len(xs) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    @property
    def median(self) -> float:
        return statistics.median(self.times_s) if self.times_s else float("nan")


def forward_fn(run: Callable, x: torch.Tensor, state) -> Callable[[], object]:
    """The timed closure of inference: one ``run(x, state)`` under ``no_grad``."""

    def fwd():
        with torch.no_grad():
            return run(x, state)

    return fwd


def forward_backward_fn(
    run: Callable, params: list, x: torch.Tensor, state, gy: torch.Tensor
) -> Callable[[], None]:
    """The timed closure of training: ``run(x, state)`` and its backward from ``gy``. ``x``
    requires grad, as an embedding's output would; every call clears the gradients first, so
    that no call pays for accumulating into the previous call's."""

    def fwdbwd():
        for p in params:
            p.grad = None
        x.grad = None
        y, _ = run(x, state)
        y.backward(gy)

    return fwdbwd


def time_round_cpu(
    fn: Callable[[], object], min_run_time: float, threads: int, min_blocks: int = 2
) -> list[float]:
    """Per-call seconds: block averages of one ``blocked_autorange`` for fast calls; for a
    call slower than ``min_run_time`` (which would give a single block after a calibration call
    of its own) ``min_blocks`` single calls timed directly."""
    start = time.perf_counter()
    with set_threads(threads):
        fn()
    first = time.perf_counter() - start
    if first < min_run_time / 2:
        timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
        return list(timer.blocked_autorange(min_run_time=min_run_time).times)
    times = [first]
    with set_threads(threads):
        while len(times) < min_blocks:
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return times


class set_threads:  # noqa: N801 - used like a function
    """torch.set_num_threads for a block, as Timer(num_threads=...) does for its statement."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        self.before = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.before)


def time_round_cuda(fn: Callable[[], object], min_run_time: float) -> list[float]:
    """Per-call times from CUDA events, at least three calls and ``min_run_time`` seconds."""
    times: list[float] = []
    spent = 0.0
    while len(times) < 3 or spent < min_run_time:
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        t = start.elapsed_time(end) / 1e3
        times.append(t)
        spent += t
    return times


def cuda_graph(fn: Callable[[], object], warmup: int = 3) -> tuple[object, object]:
    """``(graph, static outputs)`` of ``fn`` captured by ``torch.cuda.graph`` after ``warmup``
    calls on a side stream (torch's recipe: lazy initialisation, Triton's compiles and
    cuBLAS's workspace happen outside the capture). ``graph.replay()`` reruns the captured
    kernels on the same memory and rewrites the static outputs."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def warm_up(fn: Callable[[], object], device: str, min_calls: int = 2, min_time: float = 0.2):
    start = time.perf_counter()
    calls = 0
    while calls < min_calls or time.perf_counter() - start < min_time:
        fn()
        calls += 1
    sync(device)


def sgemm_peak_gflops(device: str, threads: int, n: int = 2048, min_run_time: float = 1.0):
    """Median GFLOP/s of torch.mm on two n×n float32 matrices: the roof the RNNs are held to."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    return _square_gemm_gflops(lambda: torch.mm(a, b), device, threads, n, min_run_time)


def gemm_peak_gflops(
    device: str, threads: int, dtype: torch.dtype, n: int = 2048, min_run_time: float = 1.0
) -> float:
    """Median GFLOP/s of torch.mm on two n×n matrices of ``dtype`` (on a GPU the roof of
    bfloat16 rows is the tensor cores', far above float32's)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return _square_gemm_gflops(lambda: torch.mm(a, b), device, threads, n, min_run_time)


def _square_gemm_gflops(fn, device: str, threads: int, n: int, min_run_time: float) -> float:
    """Median GFLOP/s of fn, one n×n×n matrix product per call."""
    warm_up(fn, device)
    if torch.device(device).type == "cuda":
        times = time_round_cuda(fn, min_run_time)
    else:
        times = time_round_cpu(fn, min_run_time, threads)
    return 2 * n**3 / statistics.median(times) / 1e9


def own_sgemm_peak_gflops(threads: int, n: int = 2048, min_run_time: float = 1.0):
    """Median GFLOP/s of fusedrnn's own packed float32 GEMM (the cpu backend's) on two n×n
    matrices, or None where it is not built or not used on this CPU."""
    try:
        from fusedrnn import _C
    except ImportError:
        return None
    if not _C.own_sgemm():
        return None
    a, b, c = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    return _square_gemm_gflops(
        lambda: _C._gemm(False, False, 1.0, a, b, 0.0, c), "cpu", threads, n, min_run_time
    )


def read_gbs(nbytes: int, threads: int, repeats: int = 50) -> float:
    """Best GB/s at which ``threads`` threads read ``nbytes`` that are already in cache: the
    best of ``repeats`` calls of ``torch.sum`` over a float32 buffer of that size, less the best
    time of the same call on one element (its fixed cost, a few µs, which would otherwise
    understate the rate of small buffers). What bounds a batch-1 step, which reads each weight
    once."""

    def best_s(buf: torch.Tensor) -> float:
        best = math.inf
        for _ in range(repeats + 1):
            start = time.perf_counter()
            buf.sum()
            best = min(best, time.perf_counter() - start)
        return best

    buf = torch.rand(max(nbytes // 4, 1))
    with set_threads(threads):
        fixed, total = best_s(torch.rand(1)), best_s(buf)
    return buf.numel() * 4 / max(total - fixed, 1e-9) / 1e9


# 10 independent FMA chains: Zen 3 and recent Intel cores retire 2 FMAs per cycle with a 4-5
# cycle latency, so 8-10 chains in flight keep both units busy. Different start values stop the
# compiler from merging identical chains into one.
FMA_C = r"""
#include <immintrin.h>
#define F(a) a = _mm256_fmadd_ps(a, m, c)
float fma_loop(long n) {
    __m256 a0 = _mm256_set1_ps(1.0f), a1 = _mm256_set1_ps(1.1f), a2 = _mm256_set1_ps(1.2f),
           a3 = _mm256_set1_ps(1.3f), a4 = _mm256_set1_ps(1.4f), a5 = _mm256_set1_ps(1.5f),
           a6 = _mm256_set1_ps(1.6f), a7 = _mm256_set1_ps(1.7f), a8 = _mm256_set1_ps(1.8f),
           a9 = _mm256_set1_ps(1.9f);
    const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-6f);
    for (long i = 0; i < n; i++) {
        F(a0); F(a1); F(a2); F(a3); F(a4); F(a5); F(a6); F(a7); F(a8); F(a9);
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                             _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    s = _mm256_add_ps(s, _mm256_add_ps(a8, a9));
    float out[8];
    _mm256_storeu_ps(out, s);
    return out[0];
}
"""


def fma_gflops_one_core(repeats: int = 7) -> float | None:
    """Measured fp32 FMA throughput of one core (GFLOP/s) in the widest FMAs it has (512-bit
    where the CPU has AVX-512F, as fusedrnn's cpu kernels then use), or None without
    gcc/AVX2+FMA.

    Why measured: under a hypervisor /proc/cpuinfo reports the nominal (TSC) clock, and a core
    that boosts above it would show layers at more than 100 % of a peak computed from it. The
    best of several runs is kept, since other load can only slow the loop down. Why the widest:
    a core with two 512-bit units (recent Intel Xeons) does about 1.65x the work in them that it
    does in 256-bit FMAs; one that splits them in halves (AMD Zen 4) does the same in both.
    """
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if " avx2" not in flags or " fma" not in flags:
        return None
    lanes, source, isa = 8, FMA_C, "-mavx2"
    if " avx512f" in flags:
        lanes, isa = 16, "-mavx512f"
        source = FMA_C.replace("256", "512").replace("out[8]", "out[16]")
    with tempfile.TemporaryDirectory() as tmp:
        src, lib = Path(tmp, "fma.c"), Path(tmp, "fma.so")
        src.write_text(source)
        try:
            subprocess.run(
                ["gcc", "-O2", isa, "-mfma", "-shared", "-fPIC", str(src), "-o", str(lib)],
                check=True,
                capture_output=True,
            )
        except (OSError, subprocess.CalledProcessError):
            return None
        fn = ctypes.CDLL(str(lib)).fma_loop
        fn.restype, fn.argtypes = ctypes.c_float, [ctypes.c_long]
        n = 10_000_000
        best = math.inf
        for _ in range(repeats):
            t = time.perf_counter()
            fn(n)
            best = min(best, time.perf_counter() - t)
    return n * 10 * lanes * 2 / best / 1e9  # iterations x chains x lanes x (mul + add)


# -- memory -----------------------------------------------------------------------------------


def saved_tensor_bytes(fn: Callable[[], torch.Tensor], exclude: list[torch.Tensor]) -> int:
    """Bytes of distinct storages autograd saves for backward while ``fn`` builds its graph.

    Seen through ``torch.autograd.graph.saved_tensors_hooks``, which every saved variable passes:
    autograd's own nodes, a custom ``autograd.Function``'s ``ctx.save_for_backward``, a
    ``custom_op``'s ``register_autograd`` context and AOTAutograd's compiled graphs alike.
    Tensors a backend stashes as plain ``ctx`` attributes are invisible to it. Storages of
    ``exclude`` (the parameters and the input) are not activations and are not counted.
    """
    skip = set()
    for t in exclude:
        skip.add(t.untyped_storage().data_ptr())
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        try:
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
        except (RuntimeError, NotImplementedError):  # e.g. opaque mkldnn tensors
            key, nbytes = id(t), t.numel() * t.element_size()
        if key not in skip:
            seen[key] = max(seen.get(key, 0), nbytes)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def cuda_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak CUDA memory allocated above what was allocated before ``fn`` ran."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


# -- machine ----------------------------------------------------------------------------------


def _cpuinfo(key: str) -> str | None:
    """The value of the first ``key`` line of /proc/cpuinfo, None where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine() or "unknown-cpu"


def cpu_flags() -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo), empty where that file is not there."""
    return set((_cpuinfo("flags") or "").split())


def slug(text: str) -> str:
    text = re.sub(r"\((r|tm)\)", "", text.lower())
    text = re.sub(r"\b(cpu|processor|with radeon graphics)\b", "", text)
    text = re.sub(r"@.*$", "", text)
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "unknown"


def machine_tag(device: str, threads: int) -> str:
    if torch.device(device).type == "cuda":
        return "cuda-" + slug(torch.cuda.get_device_name())
    # CPUs of one model name differ in vector ISA (AMD EPYC virtual machines with and without
    # AVX-512), and torch.nn's oneDNN kernels with it: their results must not share a folder
    isa = "-avx512" if "avx512f" in cpu_flags() else ""
    return f"cpu-{slug(cpu_model())}{isa}-{threads}t"


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def versions() -> dict[str, str]:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "absent"
    return {"torch": torch.__version__, "triton": triton_version}


def run_meta(threads: int, rounds: int, load_start: float) -> dict:
    """What a small standalone benchmark records about its run (meta.json)."""
    return {
        "cpu": cpu_model(),
        "vector_isa": "AVX-512"
        if "avx512f" in cpu_flags()
        else "AVX2"
        if "avx2" in cpu_flags()
        else "baseline",  # fmt: skip
        "threads": threads,
        "rounds": rounds,
        "load_average_start": load_start,
        "load_average_end": load_average(),
        **versions(),
    }


def run_sentence(meta: dict) -> str:
    """The machine and run of :func:`run_meta` in words, for the head of a results.md."""
    isa = f" ({meta['vector_isa']})" if "vector_isa" in meta else ""
    return (
        f"{meta['cpu']}{isa}, {meta['threads']} thread(s), torch {meta['torch']}; medians of "
        f"{meta['rounds']} interleaved rounds; load average {meta['load_average_start']:.2f} at "
        f"the start, {meta['load_average_end']:.2f} at the end."
    )


def results_markdown(title: str, meta: dict, intro: str, columns: list[str], body) -> str:
    """A results.md: the title, the run (:func:`run_sentence`) and ``intro``, then a table of
    ``columns`` whose rows are the cell lists of ``body``."""
    lines = [f"# {title}", "", f"{run_sentence(meta)} {intro}", ""]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def write_results(
    out: Path, rows: list[dict], threads: int, rounds: int, load_start: float, markdown
) -> None:
    """results.csv (the rows), meta.json (:func:`run_meta`) and results.md
    (``markdown(rows, meta)``) side by side in ``out``."""
    meta = run_meta(threads, rounds, load_start)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    (out / "results.md").write_text(markdown(rows, meta))


# -- small standalone benchmarks (bench/cells.py, bench/sampling.py) ---------------------------


def standalone_parser(doc: str, seconds: float) -> argparse.ArgumentParser:
    """The options every small standalone benchmark has; it adds its own shapes and --out."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds; medians reported")
    p.add_argument("--seconds", type=float, default=seconds, help="target time of one measurement")
    return p


def run_standalone(args, rows: Callable[..., Iterable[dict]], markdown) -> int:
    """Measures ``rows(args)`` on ``args.threads`` threads, printing each row as it comes, and
    writes the results (:func:`write_results`) to ``args.out``."""
    torch.set_num_threads(args.threads)
    load_start = load_average()
    done = []
    for row in rows(args):
        done.append(row)
        print(row, flush=True)
    write_results(args.out, done, args.threads, args.rounds, load_start, markdown)
    return 0
