"""Compile every CUDA kernel file with nvcc and report registers, spills and shared memory.

No GPU is needed: ``nvcc -Xptxas -v`` prints, per kernel, the resources ptxas assigned. Register
spills to local memory are a performance bug in a per-step recurrent kernel, so any spill (or a
compile error) makes the command exit non-zero.

    python -m fusedrnn.cuda_report --arch sm_80,sm_90 [--allow-missing-nvcc] [--json out.json]
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

CSRC = Path(__file__).resolve().parent.parent / "csrc"
CUDA_DIR = CSRC / "cuda"
NVCC_FLAGS = ["-O3", "-std=c++17", "-Xptxas", "-v", "-c"]

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
_PROPS = re.compile(r"Function properties for (\S+)")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


@dataclass
class KernelInfo:
    file: str
    arch: str
    mangled: str
    name: str
    registers: int = 0
    stack: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    smem: int = 0


@dataclass
class CompileResult:
    file: str
    arch: str
    ok: bool
    log: str
    kernels: list[KernelInfo]


def find_nvcc() -> str | None:
    """nvcc from $CUDA_HOME, then /usr/local/cuda*/bin (newest first), then PATH."""
    candidates = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]) / "bin" / "nvcc")
    candidates += [Path(p) / "nvcc" for p in sorted(glob.glob("/usr/local/cuda*/bin"))[::-1]]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    return shutil.which("nvcc")


def demangle(names: list[str]) -> dict[str, str]:
    """Itanium demangling via c++filt when present (CUDA kernels use the same ABI)."""
    tool = shutil.which("cu++filt") or shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True)
    lines = out.stdout.splitlines()
    if out.returncode != 0 or len(lines) != len(names):
        return {n: n for n in names}
    return {n: _shorten(d) for n, d in zip(names, lines, strict=True)}


def _shorten(name: str) -> str:
    """Drop the namespace and the parameter list, keep the template arguments."""
    name = name.replace("fusedrnn::cuda::", "").replace("fusedrnn::", "")
    depth = 0
    for i, ch in enumerate(name):  # cut the parameter list: the first '(' at template depth 0
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0:
            return name[:i]
    return name


def parse_ptxas(log: str, file: str, arch: str) -> list[KernelInfo]:
    """One KernelInfo per entry function of ``arch`` in an ``-Xptxas -v`` log (which may hold
    several archs: each arch's section starts at its first "... for 'sm_XX'" line)."""
    kernels: dict[str, KernelInfo] = {}
    current: KernelInfo | None = None
    section = None
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            section = m[2]
            current = None
            if section == arch:
                current = kernels.setdefault(m[1], KernelInfo(file, arch, m[1], m[1]))
        elif m := _PROPS.search(line):
            # device functions have properties too: only an entry's own block counts
            current = kernels.get(m[1]) if section == arch else None
        elif current is not None and (m := _SPILL.search(line)):
            current.stack, current.spill_stores, current.spill_loads = map(int, m.groups())
        elif current is not None and (m := _USED.search(line)):
            current.registers = int(m[1])
            if s := _SMEM.search(line):
                current.smem = int(s[1])
    return list(kernels.values())


def compile_one(nvcc: str, cu: Path, archs: list[str], outdir: str) -> list[CompileResult]:
    """One nvcc run for all archs: the host-side front end runs once, ptxas once per arch."""
    obj = Path(outdir) / f"{cu.stem}.o"
    gencode = [f"-gencode=arch=compute_{a[3:]},code={a}" for a in archs]
    cmd = [nvcc, *gencode, *NVCC_FLAGS, f"-I{CSRC}", str(cu), "-o", str(obj)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    name = cu.relative_to(CSRC.parent).as_posix() if cu.is_relative_to(CSRC.parent) else str(cu)
    return [
        CompileResult(name, a, proc.returncode == 0, log, parse_ptxas(log, name, a)) for a in archs
    ]


def compile_all(
    nvcc: str, archs: list[str], files: list[Path], jobs: int | None = None
) -> list[CompileResult]:
    jobs = jobs or min(4, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="fusedrnn_cuda_report_") as tmp:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(compile_one, nvcc, f, archs, tmp) for f in files]
            results = [r for f in futures for r in f.result()]
    names = demangle(sorted({k.mangled for r in results for k in r.kernels}))
    for r in results:
        for k in r.kernels:
            k.name = names.get(k.mangled, k.mangled)
    return results


def sources_hash(nvcc: str, archs: list[str]) -> str:
    """Identifies one report: every file the kernels include, the flags, the archs, nvcc."""
    h = hashlib.sha256(" ".join([nvcc, *NVCC_FLAGS, *archs]).encode())
    for f in sorted([*CSRC.glob("*.h"), *CUDA_DIR.glob("*.cu*"), *CUDA_DIR.glob("*.h")]):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def to_json(results: list[CompileResult], nvcc: str, archs: list[str]) -> dict:
    return {
        "sources_hash": sources_hash(nvcc, archs),
        "results": [
            {"file": r.file, "arch": r.arch, "ok": r.ok, "kernels": [asdict(k) for k in r.kernels]}
            for r in results
        ],
    }


def format_table(results: list[CompileResult]) -> str:
    rows = [("file", "arch", "kernel", "regs", "spill st", "spill ld", "stack", "smem")]
    for r in results:
        for k in sorted(r.kernels, key=lambda k: k.name):
            rows.append(
                (
                    Path(k.file).name,
                    k.arch,
                    k.name,
                    str(k.registers),
                    str(k.spill_stores),
                    str(k.spill_loads),
                    str(k.stack),
                    str(k.smem),
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [
            c.ljust(w) if i < 3 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fusedrnn.cuda_report", description=__doc__)
    ap.add_argument("--arch", default="sm_80,sm_90", help="comma-separated, e.g. sm_80,sm_90")
    ap.add_argument(
        "--allow-missing-nvcc",
        action="store_true",
        help="exit 0 with a skip line when nvcc is not installed",
    )
    ap.add_argument(
        "--json",
        metavar="PATH",
        help="also write the results as JSON, with a hash of the sources and flags "
        "(the tests reuse a matching file instead of compiling again)",
    )
    ap.add_argument("--jobs", type=int, default=None, help="parallel nvcc processes")
    args = ap.parse_args(argv)

    archs = [a.strip() for a in args.arch.split(",") if a.strip()]
    bad = [a for a in archs if not re.fullmatch(r"sm_\d+[a-z]?", a)]
    if not archs or bad:
        ap.error(f"--arch wants names like sm_80,sm_90, got {args.arch!r}")
    nvcc = find_nvcc()
    if nvcc is None:
        msg = "cuda_report: nvcc not found (looked in $CUDA_HOME/bin, /usr/local/cuda*/bin, PATH)"
        if args.allow_missing_nvcc:
            print(f"SKIP {msg}")
            return 0
        print(f"ERROR {msg}; pass --allow-missing-nvcc to skip", file=sys.stderr)
        return 2
    files = sorted(CUDA_DIR.glob("*.cu"))
    if not files:
        print(f"ERROR cuda_report: no .cu files under {CUDA_DIR}", file=sys.stderr)
        return 2

    results = compile_all(nvcc, archs, files, args.jobs)
    print(f"nvcc: {nvcc}; flags: {' '.join(NVCC_FLAGS)}; archs: {', '.join(archs)}")
    print(format_table(results))
    failed = [r for r in results if not r.ok]
    empty = [r for r in results if r.ok and not r.kernels]
    spills = [k for r in results for k in r.kernels if k.spill_stores or k.spill_loads]
    for r in failed:
        print(f"\nCOMPILE ERROR {r.file} ({r.arch}):\n{r.log}", file=sys.stderr)
    for r in empty:
        print(f"ERROR {r.file} ({r.arch}): no kernels were compiled", file=sys.stderr)
    for k in spills:
        print(
            f"SPILL {k.file} ({k.arch}) {k.name}: {k.spill_stores} B stores, "
            f"{k.spill_loads} B loads",
            file=sys.stderr,
        )
    n_kernels = sum(len(r.kernels) for r in results)
    print(
        f"\n{len(files)} files x {len(archs)} archs, {n_kernels} kernels, "
        f"{len(failed)} compile errors, {len(spills)} kernels with spills"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(to_json(results, nvcc, archs), indent=1))
    return 1 if failed or empty or spills else 0


if __name__ == "__main__":
    sys.exit(main())
