"""Cell speed: one step of fusedrnn's LSTMCell / GRUCell / RNNCell against torch.nn's.

A user's own loop over time calls a cell once per step (decoders, attention, custom
recurrences), so the cost of one call is what counts: two small products and the gate math,
plus whatever the call path adds. Two modes per cell and shape, each measured interleaved in
one process with the same weights and inputs:

* ``step``:     ``cell(x, state)`` under ``torch.no_grad()`` (inference, sampling);
* ``fwdbwd``:   ``cell(x, state)`` with autograd, then the backward of ``sum(h * g)`` into the
  input, the state and every parameter (training).

Before timing, each mode's outputs (and gradients) are compared with torch.nn's.

    python bench/cells.py                     # 1 thread
    python bench/cells.py --threads 2

Writes results.csv, results.md and meta.json to --out (default bench/results/cells).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import fusedrnn  # noqa: E402
from bench.measure import results_markdown, run_standalone, standalone_parser  # noqa: E402

CELLS = ("LSTMCell", "GRUCell", "RNNCell")
MODES = ("step", "fwdbwd")
IMPLS = ("torch", "fusedrnn")
INPUT = 128


def parse_args(argv=None) -> argparse.Namespace:
    p = standalone_parser(__doc__, seconds=0.2)
    p.add_argument("--shapes", default="1x128,32x128,1x512,32x512", help="BATCHxHIDDEN, comma "
                   "separated")  # fmt: skip
    p.add_argument("--cells", default=",".join(CELLS))
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cells")
    return p.parse_args(argv)


def _call(cell, mode: str, x, state, g):
    """One timed call; returns what is compared with torch.nn (outputs, then gradients)."""
    if mode == "step":
        with torch.no_grad():
            out = cell(x, state)
        return list(out) if isinstance(out, tuple) else [out]
    out = cell(x, state)
    h = out[0] if isinstance(out, tuple) else out
    wrt = [x, *(state if isinstance(state, tuple) else (state,)), *cell.parameters()]
    return [h.detach(), *torch.autograd.grad((h * g).sum(), wrt)]


def measure(name: str, batch: int, hidden: int, mode: str, rounds: int, seconds: float) -> dict:
    torch.manual_seed(0)
    ref = getattr(torch.nn, name)(INPUT, hidden)
    mod = getattr(fusedrnn, name)(INPUT, hidden)
    mod.load_state_dict(ref.state_dict())
    grad = mode == "fwdbwd"
    x = torch.randn(batch, INPUT, requires_grad=grad)
    h = torch.randn(batch, hidden, requires_grad=grad)
    state = (h, torch.randn(batch, hidden, requires_grad=grad)) if name == "LSTMCell" else h
    g = torch.randn(batch, hidden)
    cells = {"torch": ref, "fusedrnn": mod}
    want = _call(ref, mode, x, state, g)
    for i, (a, b) in enumerate(zip(_call(mod, mode, x, state, g), want, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=f"{name} {mode} output {i}")

    def per_call(impl: str, n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            _call(cells[impl], mode, x, state, g)
        return (time.perf_counter() - start) / n

    counts = {}
    for impl in IMPLS:
        per_call(impl, 5)  # warm-up: first-call set-up
        counts[impl] = max(5, int(seconds / per_call(impl, 20)))
    times: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    for _ in range(rounds):
        for impl in IMPLS:
            times[impl].append(per_call(impl, counts[impl]))
    return {impl: statistics.median(t) * 1e6 for impl, t in times.items()}


def rows(args):
    for shape in args.shapes.split(","):
        batch, hidden = (int(v) for v in shape.split("x"))
        for name in args.cells.split(","):
            for mode in MODES:
                us = measure(name, batch, hidden, mode, args.rounds, args.seconds)
                row = {"cell": name, "mode": mode, "batch": batch, "hidden": hidden}
                row.update({f"{impl}_us": round(us[impl], 2) for impl in IMPLS})
                row["speedup"] = round(us["torch"] / us["fusedrnn"], 3)
                yield row


def main(argv=None) -> int:
    return run_standalone(parse_args(argv), rows, markdown)


def markdown(rows: list[dict], meta: dict) -> str:
    intro = (
        f"Input {INPUT}, float32, random weights. *step*: one call under no_grad; *fwdbwd*: one "
        "call with autograd and the backward into input, state and parameters. Times per call "
        "in µs; speed-up = torch.nn's time / fusedrnn's. Raw numbers: results.csv."
    )
    columns = ["cell", "mode", "batch", "hidden", "torch.nn (µs)", "fusedrnn (µs)", "speed-up"]
    body = [
        [r["cell"], r["mode"], str(r["batch"]), str(r["hidden"]), f"{r['torch_us']:,.1f}",
         f"{r['fusedrnn_us']:,.1f}", f"{r['speedup']:.2f}×"]
        for r in rows
    ]  # fmt: skip
    return results_markdown(
        "Cell speed: one step of fusedrnn's cells against torch.nn's", meta, intro, columns, body
    )


if __name__ == "__main__":
    sys.exit(main())
