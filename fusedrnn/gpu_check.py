"""One command for a GPU machine: build, check against torch.nn, benchmark against cuDNN.

    python -m fusedrnn.gpu_check               # on an H100/H200, from a source checkout
    python -m fusedrnn.gpu_check --dry-run     # the same pipeline on CPU tensors, tiny sizes

Phases, each given what is left of one global time budget (``--budget-s``, default 7.5 min) and
skipped with a recorded reason when too little is left, never overrunning it (subprocesses have
timeouts; a watchdog ends an in-process phase still running 20 s past the budget, a hung kernel
say, after writing the report):

1. environment: GPU, multiprocessors, driver, CUDA, cuDNN, torch and triton versions, clocks
   (``env.json``);
2. build: is the CUDA extension importable? If not, ``pip install --no-build-isolation -e .``
   for this GPU's architecture, bounded by a timeout;
3. correctness: the GPU tests (pytest ``-m gpu``) in a subprocess, then an in-process check of
   every cell, fused backend and dtype, forward and all gradients, against torch.nn (cuDNN)
   with the same weights (bench/providers.py's comparison and tolerances);
4. benchmark: bench/run.py's measurement of the headline shapes against cuDNN (providers checked
   against torch.nn first, CUDA-event medians over interleaved rounds), written by the same
   writers as the CPU results: ``results.csv``, ``results.md``, ``meta.json``;
5. paths: bench/barrier.py in a subprocess, the grid barrier alone for grids of 1 to 256
   programs, the launches' kind and two alternatives, each launch's result checked
   (``barrier.csv``, ``barrier.md``); then
   bench/paths.py: the Triton backend's launches (a launch per step, the cooperative launch and
   the resident one, there also with 32 units per program, an experiment the calibrated cost
   model suggests, and with each other kind of grid barrier) at the bf16 anchor shape, of the
   layer-norm variants, and last of the anchor with a projection (``proj_size`` H/2), each
   checked first against torch.nn or fusedrnn's reference op (``paths.csv``, ``paths.md``,
   written after each shape and mode, so that what was timed stays when the budget stops the
   rest).

Into ``--out`` (default ``bench/results/gpu-<name>/``; a scratch directory with ``--dry-run``)
it also writes ``gpu_check.json`` (phases, wall times, counts), ``summary.md`` and
``gpu_check.log`` (the build and pytest output). Exit status: 0 all ran clean, 1 something failed
or disagreed with torch.nn, 2 nothing could run (no CUDA device, no bench/ directory), 3 nothing
failed but the budget cut something short (a phase skipped or stopped, a shape left out).

bench/ is imported from the checkout this package lives in: run it from a source checkout.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fusedrnn.ops.triton.configs import BARRIER_KINDS, GRID_BARRIER, RESIDENT_CANDIDATE

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"

# The GPU tests: every test marked gpu, wherever it lives (on the latest H200 run, 973 of them: every
# path of the triton and cuda backends against the reference on CUDA tensors, opcheck, autocast
# and CUDA graphs). -m gpu leaves out their CPU-side tests (the interpreter, compile reports).
GPU_TEST_ARGS = ("-m", "gpu", "tests")
LOG_TAIL_LINES = 40
# past the budget, in-process phases are stopped (GPU default: 450 + 20 s, under 8 min)
WATCHDOG_GRACE_S = 20


class CheckError(Exception):
    """A condition under which nothing can be measured (exit status 2)."""


# -- time budget ------------------------------------------------------------------------------


class Budget:
    """A global deadline. ``clock`` is injectable so that tests can move time by hand."""

    def __init__(self, total_s: float, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.start = clock()
        self.total_s = total_s

    def elapsed(self) -> float:
        return self.clock() - self.start

    def remaining(self) -> float:
        return self.total_s - self.elapsed()

    def allot(self, max_s: float, reserve_s: float) -> float:
        """Seconds a phase may take: at most ``max_s``, leaving ``reserve_s`` for later ones."""
        return max(0.0, min(max_s, self.remaining() - reserve_s))


@dataclass(frozen=True)
class Limits:
    """A phase runs only with ``min_s`` of the budget to spend, and spends at most ``max_s``."""

    min_s: float
    max_s: float


@dataclass
class Phase:
    name: str
    status: str = "pending"  # ok / failed / skipped / timeout
    reason: str = ""
    wall_s: float = 0.0
    allotted_s: float = 0.0
    details: dict = field(default_factory=dict)


def run_phase(
    budget: Budget,
    phase: Phase,
    limits: Limits,
    reserve_s: float,
    fn: Callable[[float], tuple[str, str]],
) -> Phase:
    """Run ``fn(allotted_s) -> (status, reason)`` if the budget allows, recording wall time;
    an exception fails the phase, it never ends the run."""
    allotted = budget.allot(limits.max_s, reserve_s)
    phase.allotted_s = round(allotted, 1)
    if allotted <= 0 or allotted < limits.min_s:
        phase.status = "skipped"
        phase.reason = (
            f"time budget: {max(budget.remaining(), 0):.0f} s left, {reserve_s:.0f} s of it kept "
            f"for later phases; this phase needs at least {limits.min_s:.0f} s"
        )
        return phase
    start = budget.clock()
    try:
        phase.status, phase.reason = fn(allotted)
    except Exception as exc:
        phase.status, phase.reason = "failed", _short(exc)
        phase.details["traceback"] = portable(traceback.format_exc())[-3000:]
    phase.wall_s = round(budget.clock() - start, 2)
    return phase


def _short(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


# -- what is run: the GPU plan and its CPU stand-in -------------------------------------------


@dataclass(frozen=True)
class Shape:
    """One headline benchmark shape (LSTM). ``tf32``: float32 with TF32 allowed."""

    name: str
    B: int
    T: int
    I: int  # noqa: E741
    H: int
    layers: int
    dtype: torch.dtype
    tf32: bool = False

    @property
    def dtype_label(self) -> str:
        name = str(self.dtype).replace("torch.", "")
        return name + "+tf32" if self.tf32 else name


@dataclass(frozen=True)
class Plan:
    device: str
    wanted_backends: tuple[str, ...]  # fused backends under test
    built_backend: str  # the one that needs a compiled extension
    check_dtypes: tuple[torch.dtype, ...]
    check_shape: tuple[int, int, int, int, int]  # B, T, I, H, layers
    shapes: tuple[Shape, ...]
    test_args: tuple[str, ...]
    limits: dict[str, Limits]
    write_reserve_s: float
    config_floor_s: float  # least time one benchmark configuration is assumed to take
    rounds: int
    min_run_time: float
    threads: int
    peak_n: int
    budget_s: float
    paths_args: tuple[str, ...] = ()  # bench/paths.py's shapes and timing options
    barrier_args: tuple[str, ...] = ()  # bench/barrier.py's options


def _headline_shapes(anchor, mid, charlm) -> tuple[Shape, ...]:
    """The benchmarked shapes, each given as (B, T, I, H): the dry run keeps the GPU plan's
    names, dtypes and layer counts at tiny sizes, so that it exercises the same rows."""
    return (
        Shape("flashrnn-anchor", *anchor, 1, torch.bfloat16),
        Shape("mid", *mid, 1, torch.float32),
        Shape("charlm", *charlm, 2, torch.float32),
        Shape("mid", *mid, 1, torch.float32, tf32=True),
    )


def gpu_plan() -> Plan:
    # char-LM size: 2 layers x 512 over the default 64-wide embedding (fusedrnn.charlm.config)
    from fusedrnn.charlm.config import DEFAULTS

    embed = int(DEFAULTS["embed"]) or 64
    return Plan(
        device="cuda",
        wanted_backends=("triton", "cuda"),
        built_backend="cuda",
        check_dtypes=(torch.float32, torch.bfloat16),
        check_shape=(3, 9, 13, 37, 2),  # B, T, I, H, layers: nothing a power of two
        shapes=_headline_shapes((16, 1024, 768, 768), (64, 100, 512, 512), (64, 128, embed, 512)),
        test_args=GPU_TEST_ARGS,
        limits={
            "build": Limits(60, 210),
            "tests": Limits(30, 240),
            "check": Limits(10, 60),
            "bench": Limits(90, float("inf")),
            # the H200's last run spent 212 s before this phase: what is left, up to 210 s,
            # for the barrier probe and the anchor's seven providers before the other shapes
            "paths": Limits(30, 210),
        },
        write_reserve_s=15,
        config_floor_s=10,
        rounds=3,
        min_run_time=0.1,
        threads=torch.get_num_threads(),
        peak_n=4096,
        budget_s=450,
        # at the anchor also the resident launch in the config no launcher picks
        # (configs.RESIDENT_CANDIDATE: bench/README.md, GPU cost model) and with the grid
        # barriers the launches do not use (configs.GRID_BARRIER)
        paths_args=(
            *"--shapes anchor,ln-anchor,ln-gru-mid,anchor-proj --rounds 3".split(),
            *("--resident-configs", f"anchor:{RESIDENT_CANDIDATE.text()}"),
            "--resident-barriers",
            ",".join(f"anchor:{kind}" for kind in BARRIER_KINDS if kind != GRID_BARRIER),
        ),
        barrier_args=("--rounds", "3"),  # 6 grids x 3 kinds x 2 forms, as paths.py: 3 rounds
    )


def dry_run_plan() -> Plan:
    """The GPU plan's plumbing on CPU tensors: the cpu backend stands in for triton and cuda,
    torch.nn (oneDNN) for cuDNN, a quick CPU test file for the GPU tests, tiny shapes. Where
    the cpu extension was not built, the reference backend stands in for it."""
    import fusedrnn

    built = "cpu" in fusedrnn.available_backends("cpu")
    return Plan(
        device="cpu",
        wanted_backends=("cpu",) if built else ("reference",),
        built_backend="cpu",
        check_dtypes=(torch.float32, torch.bfloat16),
        check_shape=(2, 3, 5, 7, 2),
        shapes=_headline_shapes((2, 16, 12, 12), (4, 8, 10, 10), (4, 8, 6, 10)),
        test_args=("tests/test_modules_errors.py",),
        limits={
            "build": Limits(5, 60),
            "tests": Limits(5, 60),
            "check": Limits(1, 30),
            "bench": Limits(2, float("inf")),
            "paths": Limits(5, 90),
        },
        write_reserve_s=5,
        config_floor_s=0.5,
        rounds=1,
        min_run_time=0.005,
        threads=1,
        peak_n=256,
        budget_s=90,
        # the Triton kernels under the interpreter (never a speed): the projected LSTM's rows,
        # the layer-norm LSTM's
        paths_args=tuple(
            "--shapes tiny-proj,ln-tiny --device cpu --rounds 1 --min-run-time 0.001".split()
        ),
        barrier_args=tuple(
            "--device cpu --short 2 --long 10 --rounds 1 --min-run-time 0.001".split()
        ),  # fmt: skip
    )


# -- phase 1: environment ---------------------------------------------------------------------

NVIDIA_SMI_FIELDS = (
    "name",
    "driver_version",
    "clocks.sm",
    "clocks.max.sm",
    "clocks.mem",
    "clocks.max.mem",
    "power.draw",
    "power.limit",
    "temperature.gpu",
    "utilization.gpu",
    "memory.used",
)


def nvidia_smi(timeout_s: float) -> dict | None:
    """One GPU's clocks and state as nvidia-smi reports them (read only, nothing is set)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    query = ",".join(NVIDIA_SMI_FIELDS)
    try:
        proc = subprocess.run(
            [exe, f"--query-gpu={query}", "--format=csv,noheader,nounits", "--id=0"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": _short(exc)}
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[-300:]}
    values = [v.strip() for v in proc.stdout.strip().splitlines()[0].split(",")]
    return dict(zip(NVIDIA_SMI_FIELDS, values, strict=False))


def environment(plan: Plan, budget: Budget) -> dict:
    import measure  # bench/, on sys.path by then

    env = {
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": plan.device,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_model": measure.cpu_model(),
        "cpu_count": os.cpu_count(),
        **measure.versions(),
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }
    if plan.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            sm_count=props.multi_processor_count,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            l2_cache_mib=round(getattr(props, "L2_cache_size", 0) / 2**20, 1) or None,
            nvidia_smi=nvidia_smi(timeout_s=max(1.0, min(10.0, budget.remaining()))),
        )
    return env


def gpu_tag(env: dict) -> str:
    import measure

    return "gpu-" + measure.slug(env["gpu"]) if env.get("gpu") else "dry-run-cpu"


# -- phase 2: build ---------------------------------------------------------------------------


def probe_backends(device: str, timeout_s: float) -> list[str]:
    """fusedrnn.available_backends(device) in a fresh interpreter: this process must not cache
    an answer from before the build."""
    code = f"import json, fusedrnn; print(json.dumps(fusedrnn.available_backends({device!r})))"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if proc.returncode != 0:
        raise RuntimeError("import fusedrnn failed: " + proc.stderr.strip()[-500:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def build_command() -> list[str]:
    # --no-index: the build needs nothing from a registry, and a GPU machine may reach none.
    return [
        sys.executable,
        *("-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index", "-v"),
        *("-e", "."),
    ]


def build_env(env: dict) -> dict:
    """setup.py's knobs: this GPU's architecture only, every core, no CPU extension (not used
    on the GPU, and a minute saved)."""
    out = dict(os.environ)
    if env.get("capability"):
        out["TORCH_CUDA_ARCH_LIST"] = env["capability"]
    out["MAX_JOBS"] = str(os.cpu_count() or 4)
    out["FUSEDRNN_SKIP_CPU_BUILD"] = "1"
    out.pop("FUSEDRNN_SKIP_CUDA_BUILD", None)
    return out


def run_logged(cmd: list[str], timeout_s: float, log, env: dict | None = None) -> tuple[int, str]:
    """(return code, or None on timeout; output) of ``cmd``, its output also written to ``log``.

    The command runs in a session of its own so that a timeout ends its workers too (pytest-xdist
    workers, nvcc under ninja): they hold the output pipe open and would outlive a plain kill."""
    log.write(portable(f"\n$ {' '.join(cmd)}\n"))
    log.flush()
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        text, _ = proc.communicate(timeout=max(timeout_s, 1.0))
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        text, _ = proc.communicate()
        rc = None
    except BaseException:  # interrupted: its own session would let it run on
        _kill_group(proc)
        proc.wait()
        raise
    log.write(portable(text))
    log.write(f"\n[exit status {rc}]\n")
    log.flush()
    return rc, text


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def tail(text: str, n: int = LOG_TAIL_LINES) -> list[str]:
    return portable(text).rstrip().splitlines()[-n:]


def portable(text: str) -> str:
    """``text`` without this machine's paths to the checkout and the interpreter: the outputs
    are committed, and what they say must hold on any machine."""
    return (
        text.replace(sys.executable, "python")  # first: the interpreter may lie in the checkout
        .replace(str(ROOT) + os.sep, "")
        .replace(str(ROOT), ".")
    )


def build_phase(
    plan: Plan, env: dict, phase: Phase, log, allotted: float, rebuild: bool, dry_run: bool
) -> tuple[str, str]:
    before = probe_backends(plan.device, timeout_s=min(allotted, 120))
    phase.details["backends_before"] = before
    if plan.built_backend in before and not rebuild:
        phase.details["backends_after"] = before
        return "ok", f"{plan.built_backend} extension already importable, not rebuilt"
    if dry_run:
        phase.details["backends_after"] = before
        return "not attempted", "dry run: the build is not attempted"
    start = time.monotonic()
    rc, text = run_logged(build_command(), allotted - 20, log, env=build_env(env))
    phase.details.update(
        command=portable(" ".join(build_command())),
        exit_status=rc,
        log_tail=tail(text) if rc != 0 else [],  # gpu_check.log has all of it
        build_s=round(time.monotonic() - start, 1),
    )
    after = probe_backends(plan.device, timeout_s=max(10.0, min(60.0, allotted / 4)))
    phase.details["backends_after"] = after
    if rc is None:
        return "timeout", f"build stopped after {allotted - 20:.0f} s"
    if plan.built_backend not in after:
        return "failed", f"build exit status {rc}; {plan.built_backend} still not importable"
    return "ok", f"built in {phase.details['build_s']} s"


# -- phase 3a: the GPU tests in pytest --------------------------------------------------------

_OUTCOME = re.compile(r"\b(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")
_NODEID = re.compile(r"(\S+\.py::\S+)")
_SUMMARY = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)")


def parse_pytest(text: str) -> dict:
    """Counts and failing test ids from ``pytest -v`` output, with or without xdist, complete
    or cut off by a timeout (then counted from the per-test lines)."""
    outcomes: dict[str, str] = {}
    for line in text.splitlines():
        word, node = _OUTCOME.search(line), _NODEID.search(line)
        if word and node:
            outcomes[node.group(1)] = word.group(1).lower()
    counts: dict[str, int] = {}
    final = [ln for ln in text.splitlines() if ln.startswith("=") and " in " in ln]
    if final and _SUMMARY.search(final[-1]):
        for n, what in _SUMMARY.findall(final[-1]):
            counts["error" if what.startswith("error") else what] = int(n)
    else:
        for what in outcomes.values():
            counts[what] = counts.get(what, 0) + 1
    failing = sorted(k for k, v in outcomes.items() if v in ("failed", "error"))
    return {"counts": counts, "failing": failing, "complete": bool(final)}


def pytest_command(plan: Plan) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", *plan.test_args]
    if plan.device == "cuda" and _have_xdist():
        # Triton compiles each kernel configuration on the host: spread it over the cores
        cmd += ["-n", str(min(8, max(1, (os.cpu_count() or 2) // 2)))]
    return cmd


def _have_xdist() -> bool:
    import importlib.util

    return importlib.util.find_spec("xdist") is not None


def tests_phase(plan: Plan, phase: Phase, log, allotted: float) -> tuple[str, str]:
    env = dict(os.environ)
    if plan.device == "cuda":
        env.pop("TRITON_INTERPRET", None)  # the GPU, not the interpreter, is under test
    rc, text = run_logged(pytest_command(plan), allotted, log, env=env)
    parsed = parse_pytest(text)
    phase.details.update(command=portable(" ".join(pytest_command(plan))), exit_status=rc, **parsed)
    counts = parsed["counts"]
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no test reported"
    bad = counts.get("failed", 0) + counts.get("error", 0)
    if rc is None:
        status = "failed" if bad else "timeout"
        return status, f"stopped after {allotted:.0f} s: {summary} so far"
    if bad or rc not in (0, 5):
        return "failed", f"exit status {rc}: {summary}"
    if not counts.get("passed"):
        return "failed", f"no test passed ({summary}): was the GPU seen by the tests?"
    return "ok", summary


# -- phase 3b: every cell, backend and dtype against torch.nn, in process ---------------------


def check_phase(plan: Plan, phase: Phase, budget: Budget, allotted: float) -> tuple[str, str]:
    """Forward and all gradients of each fused backend against torch.nn with the same weights:
    bench/providers.py's evaluate/compare, so the benchmark and this check share tolerances.
    A case runs to its end once started; none starts after ``allotted`` seconds."""
    import providers as P

    import fusedrnn

    backends = [b for b in plan.wanted_backends if b in fusedrnn.available_backends(plan.device)]
    phase.details["backends"] = backends
    stop_at = budget.elapsed() + allotted
    cases = []
    B, T, I, H, layers = plan.check_shape  # noqa: E741
    for dtype in plan.check_dtypes:
        for cell in P.CELLS:
            cfg = P.Config(cell, "fwdbwd", B, T, I, H, layers, dtype, plan.device, "check")
            for backend in backends:
                case = {"cell": cell, "dtype": cfg.dtype_name, "backend": backend}
                cases.append(case)
                if budget.elapsed() >= stop_at:
                    case.update(status="skipped", reason="time budget spent")
                    continue
                case.update(_check_case(P, cfg, backend))
    phase.details["cases"] = cases
    missing = [b for b in plan.wanted_backends if b not in backends]
    n = {s: sum(c["status"] == s for c in cases) for s in ("ok", "incorrect", "error", "skipped")}
    phase.details["counts"] = n
    summary = ", ".join(f"{v} {k}" for k, v in n.items() if v)
    if missing:
        summary += f"; not available: {', '.join(missing)}"
    if n["incorrect"] or n["error"]:
        return "failed", summary
    if n["skipped"]:
        phase.details["cut_short"] = True
        if not n["ok"]:
            return "skipped", summary
    if not n["ok"]:
        return "failed", summary or "no backend to check"
    return ("failed" if missing else "ok"), summary


def _check_case(P, cfg, backend: str) -> dict:
    try:
        with P.tf32(False):  # float32 means IEEE float32 on both sides
            ref = P.make_reference_module(cfg)
            x, state = P.make_inputs(cfg)
            want = P.evaluate(*P.build(P.TORCH_NN, ref, cfg), x, state, with_grad=True)
            run, params = P.build(f"fusedrnn[{backend}]", ref, cfg)
            got = P.evaluate(run, params, x, state, with_grad=True)
            err_out, err_grad, problem = P.compare(got, want, cfg.dtype)
    except Exception as exc:
        return {"status": "error", "reason": _short(exc)}
    return {
        "status": "incorrect" if problem else "ok",
        "reason": problem,
        "max_abs_err_out": float(f"{err_out:.3g}"),
        "max_abs_err_grad": None if err_grad is None else float(f"{err_grad:.3g}"),
    }


# -- phase 4: the headline benchmark ----------------------------------------------------------


def provider_names(plan: Plan, shape: Shape, compile_charlm: bool) -> list[str]:
    import providers as P

    import fusedrnn

    available = fusedrnn.available_backends(plan.device)
    names = [P.TORCH_NN] + [f"fusedrnn[{b}]" for b in plan.wanted_backends if b in available]
    if compile_charlm and shape.name == "charlm":
        names.append(P.COMPILE)
    return names


def bench_args(plan: Plan, compile_charlm: bool):
    """bench/run.py's own options, so that its measurement runs exactly as it does there."""
    import run as bench_run

    return bench_run.parse_args(
        [
            *("--device", plan.device),
            *("--threads", str(plan.threads)),
            *("--rounds", str(plan.rounds)),
            *("--min-run-time", str(plan.min_run_time)),
            *("--warmup-calls", "2"),
            *("--compile-scope", "headline" if compile_charlm else "none"),
        ]
    )


def gemm_peaks(plan: Plan) -> dict[str, float]:
    """Matrix-product roofs of this device: float32 (TF32 off), float32 with TF32, bfloat16."""
    import measure
    import providers as P

    peaks = {}
    for label, dtype, tf32 in (
        ("float32", torch.float32, False),
        ("float32+tf32", torch.float32, True),
        ("bfloat16", torch.bfloat16, False),
    ):
        if plan.device == "cpu" and label != "float32":
            continue  # the stand-in run needs one roof only
        with P.tf32(tf32):
            peaks[label] = round(
                measure.gemm_peak_gflops(
                    plan.device, plan.threads, dtype, n=plan.peak_n, min_run_time=0.2
                ),
                1,
            )
    return peaks


@dataclass
class BenchState:
    rows: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


def bench_phase(
    plan: Plan,
    env: dict,
    tag: str,
    out: Path,
    state: BenchState,
    phase: Phase,
    budget: Budget,
    compile_charlm: bool,
    command: str,
) -> tuple[str, str]:
    import providers as P
    import run as bench_run

    args = bench_args(plan, compile_charlm)
    torch.set_num_threads(plan.threads)
    peaks = gemm_peaks(plan)
    device_desc = env.get("gpu") or "cpu (dry run: stands in for a GPU)"
    state.meta.update(_meta(plan, env, tag, peaks, command, device_desc, compile_charlm))
    ctx = {
        "sgemm_peak_gflops": peaks["float32"],
        "row": {
            "machine": tag,
            "cpu_model": env["cpu_model"],
            "device": device_desc,
            "torch": env["torch"],
            "triton": env["triton"],
            "threads": plan.threads,
            "sgemm_peak_gflops": f"{peaks['float32']:.1f}",
        },
    }
    slowest = plan.config_floor_s
    for shape in plan.shapes:
        for mode in ("fwd", "fwdbwd"):
            cfg = P.Config(
                "lstm",
                mode,
                shape.B,
                shape.T,
                shape.I,
                shape.H,
                shape.layers,
                shape.dtype,
                plan.device,
                "headline",
            )
            label = f"{cfg.label()}{' tf32' if shape.tf32 else ''}"
            left = budget.remaining() - plan.write_reserve_s
            if left < slowest:
                state.skipped.append(label)
                print(f"gpu_check: bench {label}: skipped, {left:.0f} s of the budget left")
                continue
            start = time.monotonic()
            with P.tf32(shape.tf32):
                rows = bench_run.measure_config(
                    cfg, provider_names(plan, shape, compile_charlm), args, ctx
                )
            took = time.monotonic() - start
            slowest = max(slowest, took)
            for row in rows:
                row["dtype"] = shape.dtype_label  # TF32 rows stay apart in every table
            state.rows += rows
            bench_run._write_csv(out / "results.csv", state.rows)  # a crash keeps what ran
            print(f"gpu_check: bench {label} ({took:.1f} s): {_row_summary(rows)}")
            sys.stdout.flush()
    measured = {_cfg_key(r) for r in state.rows}
    bad = [r for r in state.rows if r["status"] in ("incorrect", "error")]
    phase.details.update(
        configurations=len(measured),
        skipped_budget=list(state.skipped),
        incorrect_or_error=[
            f"{r['provider']} {r['dtype']} {r['mode']} B={r['B']} T={r['T']}: "
            f"{r['status']} {r['reason']}"
            for r in bad
        ],
        gemm_peaks_gflops=peaks,
    )
    summary = f"{len(measured)} configurations measured, {len(state.skipped)} skipped"
    if bad:
        return "failed", summary + f"; {len(bad)} provider rows incorrect or in error"
    return "ok", summary


def paths_phase(plan: Plan, out: Path, phase: Phase, log, allotted: float) -> tuple[str, str]:
    """bench/barrier.py (the grid barrier alone, at most a quarter of the time), then
    bench/paths.py into ``out`` (on CPU tensors: under the Triton interpreter)."""
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        return "skipped", "triton is not installed"
    env = dict(os.environ)
    if plan.device == "cuda":
        env.pop("TRITON_INTERPRET", None)
    else:
        env["TRITON_INTERPRET"] = "1"
    end = time.monotonic() + allotted
    results = []
    for script, args, share, row_name, what in (
        ("barrier", plan.barrier_args, 0.25, "{programs} programs {kind} {form}",
         "ended with a wrong count"),
        ("paths", plan.paths_args, 1.0, "{label} {provider}", "disagree with their baseline"),
    ):  # fmt: skip
        cmd = [sys.executable, str(BENCH / f"{script}.py"), "--out", str(out), *args]
        (out / f"{script}.csv").unlink(missing_ok=True)  # an earlier run's rows are not this run's
        rc, text = run_logged(cmd, max(1.0, (end - time.monotonic()) * share), log, env=env)
        rows = []
        if (out / f"{script}.csv").is_file():
            with open(out / f"{script}.csv") as f:
                rows = list(csv.DictReader(f))
        bad = [f"{row_name.format(**r)}: {r['problem']}" for r in rows if r["problem"]]
        phase.details[script] = dict(command=portable(" ".join(cmd)), exit_status=rc,
                                     rows=len(rows), problems=bad)  # fmt: skip
        results.append((script, rc, text, rows, bad, what))
    for script, rc, text, _rows, bad, what in results:
        if rc is None:
            return "timeout", f"{script}.py stopped at its share of {allotted:.0f} s"
        if rc != 0 or bad:
            why = f"{len(bad)} rows {what}" if bad else "; ".join(tail(text, 1))
            return "failed", f"{script}.py exit status {rc}: {why}"
    return "ok", ", ".join(f"{script}.py {len(rows)} rows" for script, _, _, rows, _, _ in results)


def _cfg_key(row: dict) -> tuple:
    return (row["dtype"], row["mode"], *(row[k] for k in "BTIH"), row["layers"])


def _row_summary(rows: list[dict]) -> str:
    return ", ".join(
        f"{r['provider']} {r['median_ms']} ms"
        if r["status"] == "ok"
        else f"{r['provider']} {r['status']}"
        for r in rows
    )


def _meta(plan, env, tag, peaks, command, device_desc, compile_charlm) -> dict:
    """The keys bench/report.py's markdown reads, as bench/run.py writes them."""
    import measure
    import providers as P

    return {
        "tag": tag,
        "cpu_model": env["cpu_model"],
        "device": device_desc,
        "threads": plan.threads,
        "versions": measure.versions(),
        "sgemm_peak_gflops": peaks["float32"],
        "sgemm_n": plan.peak_n,
        "gemm_peaks_gflops": peaks,
        "compile_backend": P.COMPILE_BACKEND,
        "load_start": measure.load_average(),
        "quick": plan.device == "cpu",
        "command": command,
        "date": env["date_utc"],
        "goals": {},  # the CPU backend's goals; none are set for the GPU
        # what fusedrnn[triton] runs: bench/calibrate.py reads results.csv only without it
        "triton_path": "automatic (fusedrnn.ops.triton.persistent.choose_path: persistent for "
        "small H, else resident where the W_hh slices fit, else cooperative)",
        "providers": [P.TORCH_NN]
        + [f"fusedrnn[{b}]" for b in plan.wanted_backends]
        + ([P.COMPILE] if compile_charlm else []),
        "compile_scope": "char-LM shape" if compile_charlm else "none",
        "skipped_budget": [],
        "cpu_kernels": (
            "stands in for triton and cuda in this dry run"
            if plan.device == "cpu"
            else "not run: this run measures the GPU backends"
        ),
        "peak_note": _peak_note(plan, peaks),
        "tf32": "rows labelled float32+tf32 ran with TF32 allowed in cuBLAS and cuDNN alike; "
        "plain float32 rows with TF32 off in both",
    }


def _peak_note(plan: Plan, peaks: dict[str, float]) -> str:
    shown = ", ".join(f"{k} {v:.0f}" for k, v in peaks.items())
    return (
        f"matrix-product roofs measured in the same run (torch.mm, {plan.peak_n}², median, "
        f"GFLOP/s): {shown}. The GFLOP/s table's share is of the float32 (TF32 off) roof, "
        "bfloat16 and TF32 rows included"
    )


# -- writing ----------------------------------------------------------------------------------


def write_bench_outputs(out: Path, state: BenchState, plots: bool, budget: Budget) -> None:
    import measure
    import run as bench_run

    meta = state.meta
    meta.setdefault("load_start", measure.load_average())
    meta.update(
        skipped_budget=state.skipped,
        load_end=measure.load_average(),
        elapsed_s=budget.elapsed(),
    )
    bench_run._write_csv(out / "results.csv", state.rows)
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    if not state.rows:
        (out / "results.md").write_text(
            "# fusedrnn GPU check: no benchmark row\n\nThe benchmark did not run; "
            "gpu_check.json says why.\n"
        )
        return
    try:
        bench_run.write_report(out, state.rows, meta, plots=plots)
    except ImportError:  # matplotlib missing: the tables still matter
        bench_run.write_report(out, state.rows, meta, plots=False)


def headline_table(rows: list[dict]) -> list[str]:
    """Ratios vs torch.nn (cuDNN) first, absolute medians beside, one line per configuration."""
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    others = [p for p in providers if p != "torch.nn"]
    lines = [
        "| shape | dtype | mode | torch.nn (ms) | " + " | ".join(others) + " |",
        "|---|---|---|---|" + "---|" * len(others),
    ]
    for key in dict.fromkeys(_cfg_key(r) for r in rows):
        per = {r["provider"]: r for r in rows if _cfg_key(r) == key}
        dtype, mode, B, T, I, H, layers = key  # noqa: E741
        nn = per.get("torch.nn", {})
        base = nn.get("median_ms") if nn.get("status") == "ok" else nn.get("status", "")
        cells = []
        for p in others:
            r = per.get(p)
            if r is None:
                cells.append("")
            elif r["status"] != "ok":
                cells.append(r["status"])
            elif r.get("speedup_vs_torch_nn"):
                cells.append(f"{float(r['speedup_vs_torch_nn']):.2f}× ({r['median_ms']} ms)")
            else:
                cells.append(f"({r['median_ms']} ms)")
        lines.append(
            f"| B={B} T={T} I={I} H={H} L={layers} | {dtype} | {mode} | {base} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def summary_markdown(report: dict, rows: list[dict]) -> str:
    env = report["env"]
    machine = env.get("gpu") or "no GPU (dry run on the CPU)"
    lines = [
        f"# fusedrnn GPU check: {report['tag']}",
        "",
        f"{report['mode']} run, {env['date_utc']}, `{report['command']}`: "
        f"{report['elapsed_s']:.0f} s of a {report['budget_s']:.0f} s budget; exit status "
        f"{report['exit_status']}.",
        "",
        f"- Machine: {machine}"
        + (f", {env['sm_count']} SMs, capability {env['capability']}" if env.get("gpu") else "")
        + f"; CPU {env['cpu_model']} ({env['cpu_count']} cores)",
        f"- torch {env['torch']} (CUDA {env['torch_cuda']}, cuDNN {env['cudnn']}), "
        f"triton {env['triton']}, Python {env['python']}",
    ]
    smi = env.get("nvidia_smi") or {}
    if smi and "error" not in smi:
        lines.append(
            f"- Driver {smi.get('driver_version')}; clocks at the start: SM "
            f"{smi.get('clocks.sm')} / {smi.get('clocks.max.sm')} MHz, memory "
            f"{smi.get('clocks.mem')} MHz; {smi.get('temperature.gpu')} °C"
        )
    lines += ["", "## Phases", "", "| phase | status | wall (s) | note |", "|---|---|---|---|"]
    for p in report["phases"]:
        lines.append(f"| {p['name']} | {p['status']} | {p['wall_s']} | {p['reason']} |")
    lines += ["", "## Headline: speedup vs torch.nn (cuDNN on a GPU), median times", ""]
    if rows:
        lines += headline_table(rows)
        lines += [
            "",
            "float32 rows: TF32 off in cuBLAS and cuDNN alike; float32+tf32 rows: on in both. "
            "Full tables, memory and errors vs torch.nn: results.md and results.csv.",
        ]
    else:
        lines.append("Not measured: see the phases above.")
    return "\n".join(lines) + "\n"


# -- command line -----------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m fusedrnn.gpu_check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--budget-s", type=float, help="global time budget (default 450; dry run 90)")
    p.add_argument("--out", type=Path, help="output directory (see above for the default)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="every phase on CPU tensors with tiny shapes, into a scratch directory",
    )
    p.add_argument("--rebuild", action="store_true", help="build even if the extension imports")
    p.add_argument(
        "--compile",
        action="store_true",
        help="add torch.compile on the char-LM shape (its compile can take minutes and, once "
        "started, is not stopped by the budget)",
    )
    p.add_argument("--no-plots", action="store_true")
    return p.parse_args(argv)


def import_bench() -> None:
    """Make bench/ importable; it ships in the source checkout only, not in a wheel."""
    if not (BENCH / "run.py").is_file():
        raise CheckError(
            f"bench/ not found beside the package ({BENCH}): run python -m fusedrnn.gpu_check "
            "from a source checkout of fusedrnn"
        )
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))


def choose_out(args, dry_run: bool, tag: str) -> Path:
    if dry_run:
        if args.out is None:
            return Path(tempfile.mkdtemp(prefix="fusedrnn-gpu-check-dry-"))
        if _inside(args.out, RESULTS):
            raise CheckError(f"a dry run never writes into committed results: {args.out}")
        return args.out
    return args.out or RESULTS / tag


def _inside(path: Path, parent: Path) -> bool:
    try:
        path.resolve().relative_to(parent.resolve())
    except ValueError:
        return False
    return True


def exit_status(phases: list[Phase], state: BenchState) -> int:
    """1: something failed or disagreed with torch.nn; 3: nothing failed, but the budget cut
    something short (a phase skipped or stopped at its timeout, cases or shapes left out)."""
    if any(p.status == "failed" for p in phases):
        return 1
    cut = any(
        p.status in ("skipped", "timeout", "not run") or p.details.get("cut_short") for p in phases
    )
    return 3 if cut or state.skipped else 0


def main(argv=None, clock: Callable[[], float] = time.monotonic) -> int:
    args = parse_args(argv)
    try:
        return _main(args, argv, clock)
    except CheckError as exc:
        print(f"gpu_check: {exc}")
        return 2


@dataclass
class Session:
    """What one run has found and measured so far: everything the final report is made of."""

    args: argparse.Namespace
    plan: Plan
    budget: Budget
    command: str
    env: dict = field(default_factory=dict)
    tag: str = ""
    out: Path = Path()
    phases: dict[str, Phase] = field(default_factory=dict)
    state: BenchState = field(default_factory=BenchState)
    current: str = ""  # the phase running now


def finish(s: Session) -> int:
    """Write meta.json, results.*, gpu_check.json and summary.md from what was done."""
    for phase in s.phases.values():
        if phase.status == "pending":
            phase.status, phase.reason = "not run", "the run stopped before this phase"
    if not s.state.meta:
        device = s.env.get("gpu") or "cpu (dry run)"
        nan = {"float32": float("nan")}
        s.state.meta.update(_meta(s.plan, s.env, s.tag, nan, s.command, device, s.args.compile))
    write_bench_outputs(s.out, s.state, plots=not s.args.no_plots, budget=s.budget)
    status = exit_status(list(s.phases.values()), s.state)
    report = {
        "tag": s.tag,
        "mode": "dry-run" if s.args.dry_run else "gpu",
        "command": s.command,
        "out": str(s.out.relative_to(ROOT)) if _inside(s.out, ROOT) else str(s.out),
        "budget_s": s.budget.total_s,
        "elapsed_s": round(s.budget.elapsed(), 1),
        "exit_status": status,
        "env": s.env,
        "phases": [vars(p) for p in s.phases.values()],
    }
    (s.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    (s.out / "summary.md").write_text(summary_markdown(report, s.state.rows))
    print(
        f"gpu_check: wrote {portable(str(s.out))} in {s.budget.elapsed():.0f} s; exit status {status}"
    )
    sys.stdout.flush()
    return status


def start_watchdog(s: Session, after_s: float) -> threading.Timer:
    """A kernel that never returns (a grid barrier waiting on a block that is not resident, say)
    would hold the in-process phases past any budget: at ``after_s`` the report is written from
    what was done and the process ends."""

    def fire():
        phase = s.phases.get(s.current)
        if phase is not None:
            phase.status = "failed"
            phase.reason = f"still running {after_s:.0f} s after the start: stopped (a hang?)"
        print(f"gpu_check: {s.current or 'run'} still running at {after_s:.0f} s; stopping")
        try:
            finish(s)
        finally:
            os._exit(1)

    timer = threading.Timer(after_s, fire)
    timer.daemon = True
    timer.start()
    return timer


def _main(args, argv, clock) -> int:
    if not args.dry_run and not torch.cuda.is_available():
        raise CheckError(
            f"no CUDA device: torch {torch.__version__} (CUDA build: {torch.version.cuda}) sees "
            "none, so nothing was built, tested or measured and nothing was written; "
            "--dry-run runs the pipeline on the CPU"
        )
    import_bench()
    plan = dry_run_plan() if args.dry_run else gpu_plan()
    s = Session(
        args=args,
        plan=plan,
        budget=Budget(plan.budget_s if args.budget_s is None else args.budget_s, clock),
        command="python -m fusedrnn.gpu_check " + " ".join(sys.argv[1:] if argv is None else argv),
    )
    s.phases = {n: Phase(n) for n in ("environment", "build", "tests", "check", "bench", "paths")}
    start = clock()
    s.env = environment(plan, s.budget)
    s.phases["environment"].status = "ok"
    s.phases["environment"].wall_s = round(clock() - start, 2)
    s.tag = gpu_tag(s.env)
    s.out = choose_out(args, args.dry_run, s.tag).resolve()
    s.out.mkdir(parents=True, exist_ok=True)
    (s.out / "env.json").write_text(json.dumps(s.env, indent=1))
    print(f"gpu_check: {s.env.get('gpu') or 'dry run on the CPU'} -> {portable(str(s.out))}")
    print(f"gpu_check: budget {s.budget.total_s:.0f} s")
    watchdog = start_watchdog(s, s.budget.remaining() + WATCHDOG_GRACE_S)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a killed run still writes its report
    try:
        _run_phases(s)
    except KeyboardInterrupt:
        phase = s.phases.get(s.current)
        if phase is not None:
            phase.status, phase.reason = "failed", "interrupted"
        print("gpu_check: interrupted; writing the report of what was done")
    finally:
        watchdog.cancel()
        signal.signal(signal.SIGTERM, previous)
    return finish(s)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _run_phases(s: Session) -> None:
    plan, budget, args = s.plan, s.budget, s.args
    order = ["build", "tests", "check", "bench", "paths"]

    def reserve(name: str) -> float:
        later = order[order.index(name) + 1 :]
        return sum(plan.limits[n].min_s for n in later) + plan.write_reserve_s

    with open(s.out / "gpu_check.log", "w") as log:
        steps = {
            "build": lambda t: build_phase(
                plan, s.env, s.phases["build"], log, t, args.rebuild, args.dry_run
            ),
            "tests": lambda t: tests_phase(plan, s.phases["tests"], log, t),
            "check": lambda t: check_phase(plan, s.phases["check"], budget, t),
            "bench": lambda t: bench_phase(
                plan,
                s.env,
                s.tag,
                s.out,
                s.state,
                s.phases["bench"],
                budget,
                args.compile,
                s.command,
            ),
            "paths": lambda t: paths_phase(plan, s.out, s.phases["paths"], log, t),
        }
        for name in order:
            s.current = name
            phase = run_phase(budget, s.phases[name], plan.limits[name], reserve(name), steps[name])
            print(f"gpu_check: {name}: {phase.status} ({phase.wall_s} s) {phase.reason}")
            sys.stdout.flush()
        s.current = ""


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
