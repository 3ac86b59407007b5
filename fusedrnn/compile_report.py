"""Ahead-of-time compile of every shipped Triton kernel configuration, no GPU needed.

    python -m fusedrnn.compile_report --arch sm_80,sm_90 [--dtypes fp32,bf16] [--jobs 2]

Compiles each kernel x constexpr variant x block config (read from
``fusedrnn.ops.triton.configs``, the one place the launchers pick from) x dtype x
arch with ``triton.compile(ASTSource, target=GPUTarget("cuda", cc, 32))``, reads
registers and spills from the ``ptxas -v`` log of Triton's bundled ptxas (the one
``get_ptxas(arch)`` returns, run by Triton itself while building the cubin) and
shared memory from the kernel metadata. Prints one table row per compile and
exits non-zero on any compile error or on any spill.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

DTYPES = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16", "fp64": "fp64"}
# pointers that hold accumulation-dtype buffers (cell state, saved gates, running grads)
ACC_POINTERS = {"cs_ptr", "gates_ptr", "dh_ptr", "dc_ptr", "dh0_ptr", "dc0_ptr", "dcs_ptr"}
INT32_POINTERS = {"steps_ptr"}


@dataclass(frozen=True)
class Job:
    module: str
    kernel: str
    variant: str  # readable constexpr summary
    constexprs: tuple  # ((name, value), ...) without blocks
    blocks: tuple  # ((name, value), ...)
    num_warps: int
    num_stages: int
    dtype: str
    arch: int


def _step_variants():
    """(module, kernel, variant name, feature constexprs) of the per-step kernels."""
    all_grads = dict(HAS_DHS=True, HAS_DY=True)
    return [
        ("lstm", "_lstm_fwd_step_kernel", "", dict(HAS_BIAS=True, PROJ=False, WRITE_Y=True)),
        ("lstm", "_lstm_fwd_step_kernel", "proj", dict(HAS_BIAS=True, PROJ=True, WRITE_Y=True)),
        ("lstm", "_lstm_proj_step_kernel", "", dict(WRITE_Y=True, ACC_TY="acc")),
        ("lstm", "_lstm_bwd_step_kernel", "", dict(PROJ=False, HAS_DCS=True, **all_grads)),
        ("lstm", "_lstm_bwd_step_kernel", "proj", dict(PROJ=True, HAS_DCS=True, **all_grads)),
        ("lstm", "_lstm_proj_grad_step_kernel", "", all_grads),
        ("gru", "_gru_fwd_step_kernel", "", dict(HAS_BIAS=True, WRITE_Y=True)),
        ("gru", "_gru_bwd_step_kernel", "", all_grads),
        ("rnn", "_rnn_fwd_step_kernel", "tanh", dict(RELU=False, HAS_BIAS=True, WRITE_Y=True,
                                                     ACC_TY="acc")),
        ("rnn", "_rnn_fwd_step_kernel", "relu", dict(RELU=True, HAS_BIAS=True, WRITE_Y=True,
                                                     ACC_TY="acc")),
        ("rnn", "_rnn_bwd_step_kernel", "tanh", dict(RELU=False, **all_grads)),
        ("rnn", "_rnn_bwd_step_kernel", "relu", dict(RELU=True, **all_grads)),
    ]  # fmt: skip


def _variant_kernel_variants():
    """(module, kernel, variant name, feature constexprs) of the cell-variant step kernels:
    everything on ("all": layer norm, peephole, projection, masked zoneout), CIFG with
    evaluation zoneout, and everything off."""
    grads = dict(HAS_DHS=True, HAS_DY=True)
    lstm_all = dict(LAYER_NORM=True, PEEPHOLE=True, CIFG=False, PROJ=True, ZONE_H=1, ZONE_C=1)
    lstm_cifg = dict(LAYER_NORM=True, PEEPHOLE=True, CIFG=True, PROJ=False, ZONE_H=2, ZONE_C=2)
    lstm_off = dict(LAYER_NORM=False, PEEPHOLE=False, CIFG=False, PROJ=False, ZONE_H=0, ZONE_C=0)
    gru_ln = dict(LAYER_NORM=True, ZONE_H=1)
    gru_off = dict(LAYER_NORM=False, ZONE_H=0)
    out = []
    for cell, name, flags in (("lstm", "all", lstm_all), ("lstm", "cifg+eval", lstm_cifg),
                              ("lstm", "plain", lstm_off), ("gru", "ln+mask", gru_ln),
                              ("gru", "plain", gru_off)):  # fmt: skip
        fwd = dict(HAS_BIAS=True, WRITE_Y=True, **flags)
        bwd = dict(**grads, **flags) | (dict(HAS_DCS=True) if cell == "lstm" else {})
        out.append((f"{cell}_variants", f"_{cell}_variant_fwd_step_kernel", name, fwd))
        out.append((f"{cell}_variants", f"_{cell}_variant_bwd_step_kernel", name, bwd))
    return out


def jobs(archs: list[int], dtypes: list[str]) -> list[Job]:
    from fusedrnn.ops.triton import configs
    from fusedrnn.ops.triton.persistent import CELL_CODE

    out = []
    for arch in archs:
        for dt in dtypes:
            for mod, kernel, variant, flags in _step_variants():
                for c in configs.STEP_CONFIGS:
                    blocks = (
                        ("BLOCK_B", c.block_b),
                        ("BLOCK_H", c.block_h),
                        ("BLOCK_K", c.block_k),
                    )
                    out.append(
                        Job(mod, kernel, variant, tuple(flags.items()), blocks,
                            c.num_warps, c.num_stages, dt, arch)
                    )  # fmt: skip
            if dt in ("fp32", "fp64"):  # the variant kernels support float32 and float64
                for mod, kernel, variant, flags in _variant_kernel_variants():
                    for c in configs.VARIANT_CONFIGS:
                        blocks = (
                            ("BLOCK_B", c.block_b),
                            ("BLOCK_H", c.block_h),
                            ("BLOCK_K", c.block_k),
                        )
                        out.append(
                            Job(mod, kernel, variant, tuple(flags.items()), blocks,
                                c.num_warps, c.num_stages, dt, arch)
                        )  # fmt: skip
            if dt == "fp64":
                continue  # float64 never takes the persistent path
            for c in configs.PERSISTENT_CONFIGS:
                blocks = (("BLOCK_B", c.block_b), ("BLOCK_H", c.block_h))
                cell = (("CELL", CELL_CODE[c.cell]), ("ACC_TY", "acc"))
                fwd = (*cell, ("HAS_BIAS", True), ("REVERSE", False), ("WRITE_Y", True))
                bwd = (*cell, ("REVERSE", False), ("HAS_DHS", True), ("HAS_DY", True),
                       ("HAS_DCS", c.cell == "lstm"))  # fmt: skip
                for kernel, flags in (
                    ("_persistent_fwd_kernel", fwd),
                    ("_persistent_bwd_kernel", bwd),
                ):
                    out.append(
                        Job("persistent", kernel, c.cell, flags, blocks, c.num_warps,
                            c.num_stages, dt, arch)
                    )  # fmt: skip
    return out


def _compile(job: Job) -> dict:
    import importlib

    import triton
    import triton.language as tl
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(f"fusedrnn.ops.triton.{job.module}"), job.kernel)
    acc = "fp64" if job.dtype == "fp64" else "fp32"
    constexprs = dict(job.constexprs) | dict(job.blocks)
    constexprs = {k: (tl.float64 if acc == "fp64" else tl.float32) if v == "acc" else v
                  for k, v in constexprs.items()}  # fmt: skip
    constexprs["PRECISION"] = "ieee"
    signature = {}
    for p in fn.params:
        if p.name in constexprs:
            signature[p.name] = "constexpr"
        elif p.name in INT32_POINTERS:
            signature[p.name] = "*i32"
        elif p.name.endswith("_ptr"):
            signature[p.name] = f"*{acc}" if p.name in ACC_POINTERS else f"*{job.dtype}"
        else:
            signature[p.name] = "i32"
    row = dict(job=job, error=None, regs=None, spill_st=None, spill_ld=None, smem=None)
    t0 = time.time()
    log = io.StringIO()
    knobs.nvidia.dump_ptxas_log = True
    try:
        with tempfile.TemporaryDirectory() as cache, contextlib.redirect_stdout(log):
            knobs.cache.dir = cache  # a fresh cache: ptxas must run and log
            k = triton.compile(
                ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                target=GPUTarget("cuda", job.arch, 32),
                options={"num_warps": job.num_warps, "num_stages": job.num_stages},
            )
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
    except Exception as e:  # noqa: BLE001 - every failure is reported in the table
        row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
    row["seconds"] = time.time() - t0
    return row


def _fmt(row: dict) -> str:
    j = row["job"]
    name = j.kernel.strip("_").removesuffix("_kernel") + (f"[{j.variant}]" if j.variant else "")
    blocks = "x".join(str(v) for _, v in j.blocks) + f" w{j.num_warps} s{j.num_stages}"
    if row["error"]:
        stats = f"ERROR {row['error']}"
    else:
        spill = f"{row['spill_st']}/{row['spill_ld']}"
        stats = f"{row['regs']:>4} {spill:>11} {row['smem']:>7}"
    return f"sm_{j.arch:<3} {name:<34} {j.dtype:<5} {blocks:<18} {stats}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sm_80,sm_90", help="comma-separated, e.g. sm_80,sm_90")
    parser.add_argument("--dtypes", default="fp32,bf16", help="any of fp32,bf16,fp16,fp64")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--filter", default="", help="only kernels whose name contains this")
    args = parser.parse_args(argv)
    archs = [int(a.strip().removeprefix("sm_")) for a in args.arch.split(",") if a.strip()]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        parser.error(f"unknown dtype(s) {bad}; choose from {list(DTYPES)}")
    os.environ.pop("TRITON_INTERPRET", None)  # compile for real, not the interpreter
    todo = [j for j in jobs(archs, dtypes) if args.filter in j.kernel]
    start = time.time()
    print(f"{'arch':<7} {'kernel':<34} {'dtype':<5} {'block config':<18} "
          f"{'regs':>4} {'spill st/ld':>11} {'smem B':>7}")  # fmt: skip
    failures = 0
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for row in pool.map(_compile, todo):
            print(_fmt(row), flush=True)
            failures += bool(row["error"]) or bool(row["spill_st"]) or bool(row["spill_ld"])
    print(f"{len(todo)} compiles in {time.time() - start:.0f} s; {failures} with errors or spills")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
