"""Ahead-of-time compile of every Triton kernel specialisation that launches produce, no GPU.

    python -m fusedrnn.compile_report --arch sm_80,sm_90 [--dtypes fp16,bf16,fp32,tf32,fp64]
                                      [--jobs 2] [--filter NAME] [--list]

What is compiled is not written down here but taken from the launch code: the
launchers of every path (per-step, cooperative, persistent, variant; forward and backward)
run on small CPU tensors inside :func:`fusedrnn.ops.triton.runtime.capture_launches`, once
for every combination of the inputs that steer their compile-time flags (bias or not, packed or
not, reverse, projection, whether the saved gates are written, which output gradients
exist, every variant option and zoneout mode), for every dtype the ops accept (float16, bfloat16, float32 with IEEE
and with TF32 dot products, float64; the variant ops accept float32 and float64
only, the persistent kernels never take float64) and for shapes that reach both
step configurations and both divisibility classes of the hidden sizes (a multiple of
16 or not). Each recorded launch is specialised exactly as ``JITFunction.run`` does
it -- the signature, constexprs and ``tt.divisibility`` attributes that Triton's own
binder derives from the arguments, with ``do_not_specialize`` honoured -- and every
distinct specialisation is compiled with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))``. Registers and
spills come from the ``ptxas -v`` log of Triton's bundled ptxas, shared memory from
the kernel metadata. One row per compile; exits non-zero on any compile error, any
spill, or any shared-memory bank conflict in the operand reads of an FMA product or in a
store from registers to shared memory (:mod:`fusedrnn.smem`, Triton's own count). A last
table names, for each cell (and layer-norm variant) at H = 256, 512, 768 and 1024 in each
dtype, the compile its cooperative and resident launches run (:func:`named_launches`; the
LSTM's resident launch with proj_size = H / 2 too, and at H = 768 in bf16 in the config no
launcher picks yet, ``configs.RESIDENT_CANDIDATE``, and with each grid barrier the launches do
not use, ``configs.GRID_BARRIER``); the resident launch's chunks of K follow
H, so those are compiles at that H, and their rows give the dependent global round trips of a
step read from the machine code (:mod:`fusedrnn.sass`: their step loop is straight-line code,
the reductions unrolled, but for a product with ``W_hr`` that reads it from the caches, a loop
walked once). The grid barrier's
probe kernel (``ops/triton/barrier_probe.py``, used by ``bench/barrier.py``), each kind of
barrier, is compiled too.

Not covered: a hidden or projection size of exactly 1 (Triton turns an integer
argument equal to 1 into a constant, a further specialisation) and tensors whose data
pointer is not 16-byte aligned (the launchers allocate their own buffers, but user
weights may be views at odd offsets).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import io
import itertools
import json
import multiprocessing
import os
import pathlib
import re
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace

from fusedrnn.sass import disassemble, round_trips
from fusedrnn.smem import worst_conflicts

# label -> (torch dtype name, allow TF32)
PRECISIONS = {
    "fp16": ("float16", False),
    "bf16": ("bfloat16", False),
    "fp32": ("float32", False),
    "tf32": ("float32", True),
    "fp64": ("float64", False),
}
# (B, H, Hout with projection): B on both sides of the step configs' 16-row block,
# hidden sizes divisible by 16 and not; H <= 32 also reaches the persistent kernels
SHAPES = ((3, 32, 16), (20, 24, 12), (3, 24, 12), (20, 32, 16))
# the hidden sizes of real layers the report names its cooperative and resident compiles for
# (B = 16): H is a run-time argument, so the cooperative launch runs compiles of the shapes
# above (H a multiple of 16); the resident launch's chunk count makes compiles of their own
NAMED_H = (256, 512, 768, 1024)
CANDIDATE_H = 768  # where the named launches add configs.RESIDENT_CANDIDATE's (bf16, LSTM)
# bytes of shared memory one program may use (CUDA's opt-in maximum per block): a resident
# compile over it fails to load, and the layer runs cooperative (ops/triton/sync.py)
MAX_SHARED = {80: 166912, 90: 232448}


@dataclass(frozen=True)
class Job:
    module: str
    kernel: str
    precision: str
    signature: tuple  # ((name, type), ...)
    constexprs: tuple  # ((name, value), ...), dtypes as strings
    attrs: tuple  # names of the arguments Triton marks divisible by 16
    num_warps: int
    num_stages: int
    maxnreg: int | None
    arch: int

    def flags(self) -> str:
        from fusedrnn.ops.library import BOOL_OPTIONS

        skip = {"PRECISION", "BLOCK_B", "BLOCK_H", "BLOCK_K", "ACC_TY"}
        on = []
        for k, v in self.constexprs:
            if k == "OPTIONS":  # the bool options by name (cellmath.option_bits)
                on += [name.upper() for j, name in enumerate(BOOL_OPTIONS) if v >> j & 1]
            elif (
                k not in skip
                and v is not False
                and not (k in ("RESIDENT", "RESIDENT_PROJ", "BARRIER") and v == 0)
                and not (k == "LOAD_GROUP" and not dict(self.constexprs).get("RESIDENT"))
            ):
                on.append(f"{k}={v}" if not isinstance(v, bool) else k)
        return ",".join(on) or "-"

    def blocks(self) -> str:
        c = dict(self.constexprs)
        dims = [str(c[k]) for k in ("BLOCK_B", "BLOCK_H", "BLOCK_K") if k in c]
        regs = f" r{self.maxnreg}" if self.maxnreg else ""
        return "x".join(dims) + f" w{self.num_warps} s{self.num_stages}{regs}"


def _launch_shape(torch, dtype, B, H, Hp, packed, reverse):
    """Run every launcher for every flag-steering input combination of one shape (B, H, Hout
    with projection), layout and direction; the caller captures the launches."""
    from fusedrnn.ops.checks import GATES, OPTION_CELLS, VARIANT_CELLS, gate_count
    from fusedrnn.ops.triton import step, variant_step
    from fusedrnn.ops.triton.cellmath import option_bits
    from fusedrnn.ops.triton.configs import pick_persistent_config
    from fusedrnn.ops.triton.persistent import kernel_path
    from fusedrnn.ops.triton.runtime import Plan, acc_dtype

    acc, T = acc_dtype(dtype), 2
    sizes = torch.tensor([B, max(1, B - 1)]) if packed else None
    plan = Plan(sizes, T, B, reverse)
    N = int(sizes.sum()) if packed else T * B

    def e(*shape, dt=dtype):
        return torch.zeros(*shape, dtype=dt)

    def opt(on, *shape, dt=dtype):
        return e(*shape, dt=dt) if on else None

    bools = (False, True)
    dys = bools if packed else (False,)
    lstm_only = {c: bools if c == "lstm" else (False,) for c in GATES}
    # every cell per step and in the same kernels' cooperative launch, the LSTM with and without
    # projection and dCs; the persistent kernels (whole sequence) for small H, no projection and
    # no float64. Cs and so dCs in the accumulation dtype
    for cell, G in GATES.items():
        small = dtype != torch.float64 and pick_persistent_config(cell, H) is not None
        paths = ("step", "cooperative", "resident", *(("persistent",) if small else ()))
        lstm = cell == "lstm"
        for bias, proj, save, path in itertools.product(bools, lstm_only[cell], bools, paths):
            hout = Hp if proj else H
            if not (proj and path == "persistent"):
                step.step_fwd(cell, e(N, G * H), e(B, hout), opt(lstm, B, H, dt=acc),
                              e(G * H, hout), opt(bias, G * H), opt(proj, hout, H), plan, save,
                              path)  # fmt: skip
        for proj, dhs, dcs, dy, path in itertools.product(
            lstm_only[cell], bools, lstm_only[cell], dys, paths
        ):
            hout = Hp if proj else H
            if not (proj and path == "persistent"):
                step.step_bwd(cell, e(G * H, hout), opt(proj, hout, H), e(T + 1, B, hout),
                              opt(lstm, T + 1, B, H, dt=acc), opt(G > 1, T, B, 4 * H, dt=acc),
                              opt(dhs, T + 1, B, hout), opt(dcs, T + 1, B, H, dt=acc),
                              opt(dy, N, hout), plan, path)  # fmt: skip
    if dtype not in (torch.float32, torch.float64):  # the variant ops' dtypes
        return
    par = e(3)
    # the variant kernels in their cooperative launch and a launch per phase of each step
    for cell, path in itertools.product(VARIANT_CELLS, ("step", "cooperative")):
        lstm = cell == "lstm"
        # peephole, projection, zoneout of c and dCs: LSTM only; each bool option where it applies
        zones_c = (0, 1, 2) if lstm else (0,)
        on = [bools if cell in cells else (False,) for cells in OPTION_CELLS.values()]
        for ln, peep, proj, zh, zc, *flags in itertools.product(
            bools, *[lstm_only[cell]] * 2, (0, 1, 2), zones_c, *on
        ):
            options = dict(zip(OPTION_CELLS, flags, strict=True))
            G = gate_count(cell, options["cifg"])
            hout = Hp if proj else H
            lnc = opt(ln and lstm, H)
            inputs = (e(G * H, hout), opt(ln, G * H), lnc, lnc, opt(peep, G - 1, H),
                      opt(proj, hout, H), opt(zh == 1, N, hout), opt(zc == 1, N, H), (zh, zc), par,
                      option_bits(options))  # fmt: skip
            with kernel_path(path):
                for bias in bools:
                    bufs = variant_step.variant_fwd(cell, e(N, G * H), e(B, hout),
                                                    opt(lstm, B, H), opt(bias, G * H), *inputs,
                                                    plan)  # fmt: skip
                for dhs, dcs, dy in itertools.product(bools, lstm_only[cell], dys):
                    variant_step.variant_bwd(cell, *inputs, bufs, opt(dhs, T + 1, B, hout),
                                             opt(dcs, T + 1, B, H), opt(dy, N, hout),
                                             plan)  # fmt: skip


_BINDERS: dict = {}  # id(kernel): Triton's argument binder
_PACKED: dict = {}


@functools.cache
def _sm90_backend():
    """Triton's compiler backend for sm_90, which binds and packs the launches' arguments."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    return make_backend(GPUTarget("cuda", 90, 32))


def job_key(kernel, args: tuple, kwargs: dict, precision: str = "", arch: int = 0) -> Job:
    """The compile a launch with these arguments needs: the signature, constexprs and
    ``tt.divisibility`` attributes exactly as ``JITFunction.run`` derives them (Triton's own
    binder: integer and pointer divisibility, integers equal to 1 made constant,
    ``do_not_specialize``)."""
    from triton.runtime.jit import create_function_from_signature

    backend = _sm90_backend()
    if id(kernel) not in _BINDERS:
        _BINDERS[id(kernel)] = create_function_from_signature(kernel.signature, kernel.params,
                                                              backend)  # fmt: skip
    bound, spec, options = _BINDERS[id(kernel)](*args, **kwargs)
    # the launcher's cache key is made from ``spec`` and the options: equal keys, one compile
    key = (id(kernel), repr(spec), repr(sorted(options.items())))
    if key not in _PACKED:
        _PACKED[key] = kernel._pack_args(backend, kwargs, bound, spec, options)[1:]
    sig, constexprs, attrs = _PACKED[key]
    names = [p.name for p in kernel.params]
    cx = tuple((names[k[0]], str(v) if hasattr(v, "primitive_bitwidth") else v)
               for k, v in constexprs.items())  # fmt: skip
    divisible = tuple(names[k[0]] for k, v in attrs.items() if v)
    return Job(kernel.fn.__module__.rsplit(".", 1)[1], kernel.fn.__name__, precision,
               tuple(sig.items()), cx, divisible, kwargs.get("num_warps", 4),
               kwargs.get("num_stages", 3), kwargs.get("maxnreg"), arch)  # fmt: skip


def jobs(archs: list[int], precisions: list[str]) -> list[Job]:
    import torch

    from fusedrnn.ops.triton.runtime import capture_launches

    seen: dict[Job, None] = {}
    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    old_threads = torch.get_num_threads()
    # the launchers' own torch work runs on tiny tensors: threads only contend
    torch.set_num_threads(1)
    try:
        for label in precisions:
            dtype_name, tf32 = PRECISIONS[label]
            torch.backends.cuda.matmul.allow_tf32 = tf32
            with capture_launches() as records:
                for shape, packed, reverse in itertools.product(SHAPES, *[(False, True)] * 2):
                    _launch_shape(torch, getattr(torch, dtype_name), *shape, packed, reverse)
            for kernel, _grid, args, kwargs in records:
                seen[job_key(kernel, args, kwargs, label)] = None
        # the grid barrier alone (bench/barrier.py), each kind in both forms; no data type. A
        # count of barriers other than 1 (a constant then) and not a multiple of 16
        from fusedrnn.ops.triton.barrier_probe import probe
        from fusedrnn.ops.triton.sync import BARRIER_KINDS

        with capture_launches() as records:
            for exchange, kind in itertools.product((False, True), BARRIER_KINDS):
                probe(2, 3, exchange, torch.device("cpu"), kind)
        for kernel, _grid, args, kwargs in records:
            seen[job_key(kernel, args, kwargs, "fp32")] = None
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old_tf32
        torch.set_num_threads(old_threads)
    return [replace(j, arch=arch) for arch in archs for j in seen]


def named_launches(
    precisions: list[str], hidden: tuple[int, ...] = NAMED_H
) -> list[tuple[str, Job]]:
    """``(name, job)`` for each kernel of the cooperative and resident launches of every cell
    (and of the layer-norm variants' cooperative launch, in their dtypes; of the LSTM's
    resident launch with proj_size = H / 2) at the hidden sizes ``hidden`` (NAMED_H), B = 16:
    which compile runs e.g. ``resident lstm fwd H=768 bf16``, ``resident lstm fwd H=768
    proj=384 bf16``."""
    import torch

    from fusedrnn.ops.checks import GATES, VARIANT_CELLS
    from fusedrnn.ops.triton import variant_step
    from fusedrnn.ops.triton.persistent import kernel_path
    from fusedrnn.ops.triton.runtime import Plan, capture_launches

    B, T, out = 16, 2, []
    plan = Plan(None, T, B, False)
    for label, H in itertools.product(precisions, hidden):
        if label == "bf16" and H == CANDIDATE_H:
            out += _candidate_launches(H, plan)
        dtype_name, tf32 = PRECISIONS[label]
        dtype = getattr(torch, dtype_name)
        old, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, tf32
        try:
            for cell, G in GATES.items():
                e = functools.partial(torch.zeros, dtype=dtype)
                lstm = cell == "lstm"
                with capture_launches() as records:
                    # float64 never takes the resident launch unless forced
                    for path in ("cooperative", "resident")[: 1 if label == "fp64" else 2]:
                        _layer_launches(cell, dtype, H, 0, plan, path)
                    if cell in VARIANT_CELLS and dtype_name in ("float32", "float64"):
                        ln, zone, par = e(G * H), (0, 0), e(3)
                        ins = (e(G * H, H), ln, *(e(H) if lstm else None,) * 2, None, None,
                               None, None, zone, par, 0)  # fmt: skip
                        with kernel_path("cooperative"):
                            bufs = variant_step.variant_fwd(cell, e(T * B, G * H), e(B, H),
                                                            e(B, H) if lstm else None, ln, *ins,
                                                            plan)  # fmt: skip
                            variant_step.variant_bwd(cell, *ins, bufs, e(T + 1, B, H), None,
                                                     None, plan)  # fmt: skip
                P = H // 2
                with capture_launches() as projected:
                    if lstm and label != "fp64":  # the resident launches' slices follow P
                        _layer_launches(cell, dtype, H, P, plan, "resident")
                for (kernel, _grid, args, kwargs), size in (
                    *((r, f"H={H}") for r in records),
                    *((r, f"H={H} proj={P}") for r in projected),
                ):
                    name = kernel.fn.__name__.strip("_").removesuffix("_kernel")
                    kind = "layer-norm " if name.startswith("variant") else ""
                    what = f"{kind}{cell} {name.rsplit('_', 1)[1]}"
                    launch = "resident" if kwargs.get("RESIDENT") else "cooperative"
                    out.append((f"{launch} {what} {size} {label}",
                                job_key(kernel, args, kwargs, label)))  # fmt: skip
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
    return out


def _layer_launches(cell: str, dtype, H: int, P: int, plan, path: str) -> None:
    """The step launchers of a layer of ``H`` units (``P``: proj_size, 0 without) on ``path``,
    forward then backward, on zero tensors of ``dtype`` at ``plan``'s T and B; the caller
    captures the launches."""
    import torch

    from fusedrnn.ops.checks import GATES
    from fusedrnn.ops.triton import step
    from fusedrnn.ops.triton.runtime import acc_dtype

    G, T, B, acc, Hout = GATES[cell], plan.T, plan.B, acc_dtype(dtype), P or H
    e = functools.partial(torch.zeros, dtype=dtype)
    c = torch.zeros(T + 1, B, H, dtype=acc) if cell == "lstm" else None
    gates = torch.zeros(T, B, 4 * H, dtype=acc) if G > 1 else None
    w_hr = e(P, H) if P else None
    step.step_fwd(cell, e(T * B, G * H), e(B, Hout), None if c is None else c[0],
                  e(G * H, Hout), e(G * H), w_hr, plan, True, path)  # fmt: skip
    step.step_bwd(cell, e(G * H, Hout), w_hr, e(T + 1, B, Hout), c, gates, e(T + 1, B, Hout),
                  None, None, plan, path)  # fmt: skip


def _candidate_launches(H: int, plan) -> list[tuple[str, Job]]:
    """``(name, job)`` of the LSTM's resident launch at ``H`` in bf16 in each experiment no
    launcher runs yet and gpu_check times at that shape: the config
    ``configs.RESIDENT_CANDIDATE`` and each grid barrier other than the shipped one
    (``configs.GRID_BARRIER``), e.g. ``resident lstm fwd H=768 bf16 16x32x64w4s1``,
    ``resident lstm bwd H=768 bf16 barrier=flags``."""
    import torch

    from fusedrnn.ops.triton import configs
    from fusedrnn.ops.triton.runtime import capture_launches

    experiments = {configs.RESIDENT_CANDIDATE.text(): dict(config=configs.RESIDENT_CANDIDATE)}
    for kind in configs.BARRIER_KINDS:
        if kind != configs.GRID_BARRIER:
            experiments[f"barrier={kind}"] = dict(barrier=kind)
    out = []
    for text, given in experiments.items():
        with configs.replaced("resident", **given), capture_launches() as records:
            _layer_launches("lstm", torch.bfloat16, H, 0, plan, "resident")
        out += [(f"resident lstm {kernel.fn.__name__.split('_')[2]} H={H} bf16 {text}",
                 job_key(kernel, args, kwargs, "bf16"))
                for kernel, _grid, args, kwargs in records]  # fmt: skip
    return out


def compile_job(job: Job):
    """``triton.compile`` of ``job`` for its arch in a fresh cache (so that ptxas runs, and
    logs when ``knobs.nvidia.dump_ptxas_log`` is on): the compiled kernel, whose ``asm``
    holds every stage (``ttgir``, ``ptx``, ...)."""
    import importlib

    import triton.language as tl
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(f"fusedrnn.ops.triton.{job.module}"), job.kernel)
    names = [p.name for p in fn.params]
    index = {n: i for i, n in enumerate(names)}
    # dtype constants travel as their names ("fp32")
    constexprs = {(index[k],): tl.dtype(v) if k.endswith("_TY") else v for k, v in job.constexprs}
    attrs = {(index[k],): [["tt.divisibility", 16]] for k in job.attrs}
    return fresh_compile(ASTSource(fn=fn, signature=dict(job.signature), constexprs=constexprs,
                                   attrs=attrs), job.arch,
                         {"num_warps": job.num_warps, "num_stages": job.num_stages,
                          "maxnreg": job.maxnreg})  # fmt: skip


def fresh_compile(src, arch: int, options: dict):
    """``triton.compile`` of ``src`` (an ``ASTSource``) for ``sm_<arch>`` in a fresh cache, so
    that the compile runs whole (ptxas, and whatever the source prints as it is built) instead
    of being found in Triton's cache."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget

    old = knobs.cache.dir
    with tempfile.TemporaryDirectory() as cache:
        knobs.cache.dir = cache
        try:
            return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
        finally:
            knobs.cache.dir = old


def _compile(job: Job) -> dict:
    from triton import knobs

    row = dict(job=job, error=None, regs=None, spill_st=None, spill_ld=None, smem=None)
    t0 = time.time()
    log = io.StringIO()
    knobs.nvidia.dump_ptxas_log = True
    try:
        with contextlib.redirect_stdout(log):
            k = compile_job(job)
        text = log.getvalue()
        regs = re.search(r"Used (\d+) registers", text)
        spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
        if regs is None or spill is None:
            raise RuntimeError("no ptxas -v statistics in the compile log")
        row.update(
            regs=int(regs.group(1)),
            spill_st=int(spill.group(1)),
            spill_ld=int(spill.group(2)),
            smem=int(k.metadata.shared),
        )
        if dict(job.constexprs).get("RESIDENT"):  # an unrolled step: its chain, from the SASS
            row["round_trips"] = round_trips(disassemble(k.asm["cubin"]))
        # shared-memory bank conflicts of the FMA products' operand reads and of the stores from
        # registers (a failure, as spills are)
        row["conflicts"] = worst_conflicts(k.asm["ttgir"], job.arch)
    except Exception as e:  # noqa: BLE001 - every failure is reported in the table
        row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
    row["seconds"] = time.time() - t0
    return row


class _Cache:
    """Results of earlier compiles. A key covers everything a compile depends on: the
    source of every module with kernels (helpers are shared), Triton's version and the
    job, which holds the block configuration and every specialised argument."""

    def __init__(self, path: str):
        import triton

        self.path = pathlib.Path(path)
        src = pathlib.Path(__file__).parent / "ops" / "triton"
        digest = hashlib.sha256(triton.__version__.encode())
        for f in sorted(src.glob("*.py")):  # the modules that hold kernels or their launchers
            text = f.read_bytes()
            if b"@triton.jit" in text or b"@kernel_jit" in text:
                digest.update(text)
        for name in ("sass.py", "smem.py"):  # what a row's counts come from
            digest.update((pathlib.Path(__file__).parent / name).read_bytes())
        self.salt = digest.hexdigest()
        self.rows = json.loads(self.path.read_text()) if self.path.exists() else {}

    def get(self, job: Job) -> dict | None:
        row = self.rows.get(f"{self.salt}:{job!r}")
        return None if row is None else dict(row, job=job)

    def put(self, job: Job, row: dict) -> None:
        self.rows[f"{self.salt}:{job!r}"] = {k: v for k, v in row.items() if k != "job"}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({k: v for k, v in self.rows.items()
                                         if k.startswith(self.salt)}))  # fmt: skip


def _worker_start(started, first: int, when: str, done) -> None:
    """Pool initializer: the workers after the first ``first`` take no job until the file
    ``when`` exists (or every job is done), so that the report can start beside the tests on
    one CPU and use more once they are over."""
    with started.get_lock():
        started.value += 1
        index = started.value
    while index > first and when and not os.path.exists(when) and not done.wait(1.0):
        pass


def failed(row: dict) -> bool:
    """Whether a compile fails the report: an error, a spill or a shared-memory bank conflict."""
    return bool(row["error"] or row["spill_st"] or row["spill_ld"] or row.get("conflicts"))


def _fmt(row: dict) -> str:
    """A compile's row: arch, kernel, dtype, block config, then its registers, spills and
    shared memory (or its error), then its flags and the integer arguments Triton marks
    divisible by 16; a row of a compile not run (``--list``: only its ``job``) without stats."""
    j = row["job"]
    name = j.kernel.strip("_").removesuffix("_kernel")
    if "error" not in row:
        stats = ""
    elif row["error"]:
        stats = f" ERROR {row['error']}"
    else:
        spill = f"{row['spill_st']}/{row['spill_ld']}"
        stats = f" {row['regs']:>4} {spill:>11} {row['smem']:>7}"
        if row.get("conflicts"):
            stats += f" BANK CONFLICTS {row['conflicts']}"
    div = ",".join(a for a in j.attrs if not a.endswith("_ptr")) or "-"
    return (f"sm_{j.arch:<3} {name:<28} {j.precision:<5} {j.blocks():<16}{stats}  "
            f"[{j.flags()}] div16:{div}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sm_80,sm_90", help="comma-separated, e.g. sm_80,sm_90")
    parser.add_argument("--dtypes", default=",".join(PRECISIONS),
                        help=f"any of {','.join(PRECISIONS)} (tf32: float32, TF32 dots)")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--extra-jobs", type=int, default=0,
                        help="more workers, which start once the file --extra-when exists (CI "
                             "creates it when its tests no longer need the CPUs)")  # fmt: skip
    parser.add_argument("--extra-when", default="", help="see --extra-jobs")
    parser.add_argument("--filter", default="", help="only kernels whose name contains this")
    parser.add_argument("--list", action="store_true", help="list the compiles, do not run them")
    parser.add_argument("--cache", default="",
                        help="a JSON file of earlier results, keyed by the kernel sources, the "
                             "Triton version and the specialisation (reused, then updated)")  # fmt: skip
    args = parser.parse_args(argv)
    archs = [int(a.strip().removeprefix("sm_")) for a in args.arch.split(",") if a.strip()]
    precisions = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = [d for d in precisions if d not in PRECISIONS]
    if bad:
        parser.error(f"unknown dtype(s) {bad}; choose from {list(PRECISIONS)}")
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the report compiles the kernels for real")
    start = time.time()
    todo = [j for j in jobs(archs, precisions) if args.filter in j.kernel]
    named = [(name, replace(j, arch=a)) for name, j in named_launches(precisions)
             for a in archs if args.filter in j.kernel]  # fmt: skip
    todo += [j for j in dict.fromkeys(j for _, j in named) if j not in set(todo)]
    print(f"{len(todo)} specialisations from the launch code in {time.time() - start:.1f} s")
    if args.list:
        for j in todo:
            print(_fmt({"job": j}))
        return 0
    print(f"{'arch':<7} {'kernel':<28} {'dtype':<5} {'block config':<16} "
          f"{'regs':>4} {'spill st/ld':>11} {'smem B':>7}  [flags] div16")  # fmt: skip
    failures = 0
    cache = _Cache(args.cache) if args.cache else None
    fresh = [j for j in todo if cache is None or cache.get(j) is None]
    rows = {}
    extra = max(0, args.extra_jobs) if args.extra_when else 0
    ctx = multiprocessing.get_context()
    started, done = ctx.Value("i", 0), ctx.Event()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs) + extra, mp_context=ctx,
                             initializer=_worker_start,
                             initargs=(started, max(1, args.jobs), args.extra_when, done),
                             ) as pool:  # fmt: skip
        compiled = pool.map(_compile, fresh)
        for job in todo:
            row = cache.get(job) if cache is not None else None
            if row is None:
                row = next(compiled)
                if cache is not None and not row["error"]:
                    cache.put(job, row)
            print(_fmt(row), flush=True)
            rows[job] = row
            failures += failed(row)
        done.set()  # an extra worker still waiting ends, so that the pool can shut down
    if cache is not None:
        print(f"{len(todo) - len(fresh)} results from the cache {args.cache}")
    if named:
        print("\nreal layer sizes (B = 16): the compile above that runs each")
        for name, job in dict.fromkeys(named):
            row = rows[job]
            over = (row["smem"] or 0) > MAX_SHARED[job.arch]
            note = "  (over the shared memory of a program: runs cooperative)" if over else ""
            if row.get("round_trips") is not None:
                # W_hr read in the cooperative launch's K loop, not unrolled
                c = dict(job.constexprs)
                looped = c["PROJ"] and not c.get("RESIDENT_PROJ")
                walked = " (W_hr's K loop walked once)" if looped else ""
                note = f"  {row['round_trips']} dependent global round trips per step{walked}{note}"
            print(f"sm_{job.arch:<3} {name:<48} {_fmt(row).split(None, 3)[3]}{note}")
    print(f"{len(todo)} compiles in {time.time() - start:.0f} s; {failures} with errors, spills "
          "or bank conflicts")  # fmt: skip
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
