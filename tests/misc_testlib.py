"""Skip marks and helpers that several test files share."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from layer_cases import triton_interpreting

from fusedrnn.ops import cpu

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
needs_cpu = pytest.mark.skipif(not cpu.is_available(), reason="fusedrnn._C is not built")
needs_interpreter = pytest.mark.skipif(
    not triton_interpreting(), reason="triton ops run on CPU tensors only with TRITON_INTERPRET=1"
)
compiled_only = pytest.mark.skipif(
    triton_interpreting(), reason="the interpreter does not compile; run without TRITON_INTERPRET"
)


def csv_rows(path, columns=None) -> list[dict]:
    """A CSV file's rows; with columns, its header must be exactly those."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert columns is None or reader.fieldnames == columns
        return list(reader)


def run_python(*args, timeout: float = 120, check: bool = False, **kw):
    """python *args in the checkout, its output captured as text; with check it must exit 0."""
    cmd = [sys.executable, *map(str, args)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r
