"""Fit the cost model's step costs to a GPU's measurements of the cooperative launch, and check
the fit against measurements it did not see.

    python bench/calibrate.py [--results bench/results/gpu-nvidia-h200]

The uncalibrated model (``bench/costmodel.py``) costs a step of the cooperative and resident
launches from datasheet peaks and an assumed L2 hit; on the H200 it was 3-15x optimistic for
the cooperative launch. This fits five constants of :class:`costmodel.Calibration` to one GPU's
measurements, all eager wall times of the Triton backend forced onto the cooperative launch:

- **fit** (``paths-sweep/paths.csv``, ``bench/paths.py --configs``): four block configurations,
  each for the forward and backward launch alike, at three shapes (LSTM bf16 B=16 T=1024
  H=768; float32 IEEE B=64 H=512, one layer T=100 and two layers T=128), forward and
  forward+backward. The configurations differ in the chain of their K loop (K blocks of 32 to
  128, 2 or 3 pipeline stages) and in their grids (24 to 128 programs), which is what separates
  the chain's round trip from the barrier's cost and the per-program term.
- **held out** (``paths.csv`` and gpu_check's ``results.csv`` of a later run): the shipped
  configurations (:data:`MEASURED_SHIPPED`) and 16x16x128 with 3 stages, LSTM and GRU, bf16,
  float32 IEEE and TF32. Rows of the resident launch, when a run has them, are held out too:
  the fit is of the cooperative launch, so they test its transfer to the resident one; and so
  are the projected LSTM's (``proj=`` in the label: two phases a step, each with its barrier).

``bench/paths.py`` writes the configs each row ran (``configs``: forward/backward); rows of
runs older than that column take their configs from the provider's name, "shipped" meaning
:data:`MEASURED_SHIPPED`. gpu_check's ``results.csv`` says no config: it is read only from a run
whose ``meta.json`` does not name its ``triton_path`` (runs before the resident launch became the
automatic path). The layer-norm rows are left out (the variant kernels are not fitted).

The fit minimises the sum of squared ``log(predicted / measured)`` over the fit points
(relative errors: the points span 2-50 ms), by Gauss-Newton steps with Levenberg damping on the
constants' logarithms (all of them are positive); the prediction is
:func:`costmodel.predict` with the calibration, the same function the report uses. Each
measurement is a median of interleaved rounds (``bench/paths.py``); the fit has no noise model,
so the spread of the held-out ratios is the honest statement of its accuracy.

What the fit cannot say: which instructions make up the per-barrier cost (no profile was taken);
the tensor-core rates (none of the points is bound by them: they keep the datasheet peak); and
any other kernel (per-step launches, the CUDA backend). Writes ``calibration.json`` (read by
:func:`costmodel.load_calibrations`) and ``calibration.md`` into the results folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import costmodel as cm  # noqa: E402

from fusedrnn.ops.triton.configs import CONFIG_TEXT, StepConfig  # noqa: E402

# the cooperative configs the measured kernels shipped (fusedrnn/ops/triton/configs.py at
# commit 57c2da2, the kernels of runs 5 and 6): forward, backward as (block_b, block_h,
# block_k, warps, stages)
MEASURED_SHIPPED = {
    "half": ((16, 16, 64, 4, 3), (16, 16, 128, 4, 3)),
    "float32": ((16, 32, 16, 4, 2), (16, 16, 64, 4, 3)),
}
FIT_FILE = "paths-sweep/paths.csv"
HELD_OUT_FILES = ("paths.csv", "results.csv")
NAMES = ("round_trip_s", "barrier_s", "per_program_s", "ieee_fwd", "ieee_bwd")
_LABEL = re.compile(
    r"(\w+) \w+ B=(\d+) T=(\d+) I=(\d+) H=(\d+)(?: proj=(\d+))? L=(\d+) (\w+)(, TF32 on)?"
)


@dataclass(frozen=True)
class Point:
    """One measurement: a shape, the launch and configs it ran, and its median."""

    source: str
    cell: str
    B: int
    T: int
    I: int  # noqa: E741
    H: int
    layers: int
    dtype: str
    precision: str  # "ieee" or "tf32"
    mode: str  # "fwd" or "fwdbwd"
    fwd: tuple[int, int, int, int, int]
    bwd: tuple[int, int, int, int, int]
    config: str
    ms: float
    kind: str = "cooperative"  # or "resident" (held out: the fit is of the cooperative launch)
    proj: int = 0  # the LSTM's proj_size

    @property
    def label(self) -> str:
        prec = f" {self.precision.upper()}" if self.dtype == "float32" else ""
        proj = f" proj={self.proj}" if self.proj else ""
        return (f"{self.cell} B={self.B} T={self.T} H={self.H}{proj} L={self.layers} "
                f"{self.dtype}{prec}")  # fmt: skip


def blocks(text: str) -> tuple[int, int, int, int, int]:
    """``16x16x64w4s2`` -> (16, 16, 64, 4, 2): block_b, block_h, block_k, warps, stages (the
    text bench/paths.py's ``configs`` column writes, ``StepConfig.text``)."""
    c = StepConfig.parse(text)
    return c.block_b, c.block_h, c.block_k, c.num_warps, c.num_stages


def _configs(provider: str, dtype: str, recorded: str = ""):
    """(fwd, bwd, name, kind) of a cooperative or resident provider of bench/paths.py (or
    gpu_check's ``fusedrnn[triton]``), None for the others: from the CSV's ``configs`` column
    where it has one (``fwd/bwd``), else from the provider's name, the shipped configs being
    those of the measured kernels (:data:`MEASURED_SHIPPED`; the resident launch came after)."""
    shipped = provider in ("cooperative (shipped)", "fusedrnn[triton]", "resident")
    if provider == "resident" or (provider.startswith("resident ") and recorded):
        kind = "resident"
    elif shipped or (provider.startswith("cooperative ") and CONFIG_TEXT.search(provider)):
        kind = "cooperative"
    else:
        return None
    name = "shipped" if shipped else provider.split()[1]
    if recorded:
        fwd, bwd = (blocks(t) for t in recorded.split("/"))
    elif kind == "resident":
        return None
    elif shipped:
        fwd, bwd = MEASURED_SHIPPED["float32" if dtype == "float32" else "half"]
    else:
        fwd = bwd = blocks(name)
    return fwd, bwd, name, kind


def read_paths(path: Path, source: str) -> list[Point]:
    """The cooperative and resident rows of a ``bench/paths.py`` CSV (:func:`_configs`), the
    projected LSTM's (``proj=`` in the label) included, those with another grid barrier than
    the counter (``--resident-barriers``) not."""
    out = []
    with open(path) as f:
        for r in csv.DictReader(f):
            m = _LABEL.match(r["label"])
            # the model's barrier is the counter, the one every launch measured so far used
            if m is None or r.get("problem") or (r.get("barrier") or "counter") != "counter":
                continue
            cell, B, T, I, H, proj, L, dtype, tf32 = m.groups()  # noqa: E741
            tf32 = tf32 or r["shape"].endswith("tf32")  # the CSV's label leaves it out
            picked = _configs(r["provider"], dtype, r.get("configs") or "")
            if picked is None:
                continue
            fwd, bwd, name, kind = picked
            out.append(Point(source, cell, int(B), int(T), int(I), int(H), int(L), dtype,
                             "tf32" if tf32 else "ieee", r["mode"], fwd, bwd, name,
                             float(r["ms"]), kind, int(proj or 0)))  # fmt: skip
    return out


def read_results(path: Path, source: str) -> list[Point]:
    """gpu_check's ``fusedrnn[triton]`` rows (eager calls, the automatic path) of a run whose
    automatic path was the cooperative launch with :data:`MEASURED_SHIPPED`: one whose
    ``meta.json`` has no ``triton_path`` (:func:`calibrate` checks)."""
    out = []
    with open(path) as f:
        for r in csv.DictReader(f):
            if r["provider"] != "fusedrnn[triton]" or r["status"] != "ok":
                continue
            dtype, _, tf32 = r["dtype"].partition("+")
            fwd, bwd, name, _kind = _configs(r["provider"], dtype)
            out.append(Point(source, r["cell"], *(int(r[k]) for k in "BTIH"), int(r["layers"]),
                             dtype, "tf32" if tf32 else "ieee", r["mode"], fwd, bwd, name,
                             float(r["median_ms"])))  # fmt: skip
    return out


def gpu_key(device: str) -> str:
    """The cost model's GPU (a key of ``costmodel.GPUS``) that ``device`` names."""
    keys = [k for k in cm.GPUS if k in device]
    if len(keys) != 1:
        raise SystemExit(f"calibrate: no cost-model GPU for device {device!r} ({list(cm.GPUS)})")
    return keys[0]


def kernel_config(p: Point) -> cm.KernelConfig:
    """The model's config of a point; a resident one loads its A operand in the shipped
    kernels' groups of chunks (no resident launch was measured before they did). With
    projection the cooperative forward's recorded config is the projection's; the resident
    launch's TF32 forward runs the shipped one (``COOPERATIVE_PROJ_FORWARD``)."""
    bb, bh, bk, w, st = p.fwd
    resident = p.kind == "resident"
    group = cm.shipped_load_group() if resident else None
    proj_fwd = cm.shipped_proj_forward() if resident else p.fwd
    return cm.KernelConfig("triton", p.kind, p.config, block_b=bb, block_h=bh, block_k=bk,
                           num_warps=w, num_stages=st, bwd=p.bwd, load_group=group,
                           proj_fwd=proj_fwd)  # fmt: skip


def predicted_ms(p: Point, gpu: str, cal: cm.Calibration | None) -> float:
    pred = cm.predict(kernel_config(p), cm.GPUS[gpu], p.cell, p.B, p.T, p.I, p.H, p.layers,
                      p.dtype, p.precision, cal=cal, proj=p.proj)  # fmt: skip
    return (pred.fwd_s if p.mode == "fwd" else pred.fwdbwd_s) * 1e3


def _calibration(gpu: str, logs: np.ndarray, source: str) -> cm.Calibration:
    return cm.Calibration(
        gpu=gpu, source=source, **dict(zip(NAMES, np.exp(logs).tolist(), strict=True))
    )


def fit(points: list[Point], gpu: str, source: str = "", iterations: int = 200) -> cm.Calibration:
    """The calibration minimising sum(log(predicted / measured)^2) over ``points`` (module
    docstring). Starts from the uncalibrated model's values: the L2 hit as the round trip,
    the barrier's assumed round trips, no per-program term (a nanosecond), the FMA peak."""
    lat = cm.l2_latency(cm.GPUS[gpu])
    x = np.log([lat, cm.BARRIER_ROUND_TRIPS * lat, 1e-9, 1.0, 1.0])
    measured = np.log([p.ms for p in points])

    def residuals(logs: np.ndarray) -> np.ndarray:
        cal = _calibration(gpu, logs, source)
        return np.log([predicted_ms(p, gpu, cal) for p in points]) - measured

    damping, r = 1e-3, residuals(x)
    for _ in range(iterations):
        jac = np.empty((len(points), len(x)))
        for j in range(len(x)):  # the prediction is piecewise smooth: finite differences
            step = np.zeros_like(x)
            step[j] = 1e-6
            jac[:, j] = (residuals(x + step) - r) / 1e-6
        jtj, grad = jac.T @ jac, jac.T @ r
        while True:
            delta = np.linalg.solve(jtj + damping * np.diag(np.diag(jtj) + 1e-12), -grad)
            trial = residuals(x + delta)
            if trial @ trial < r @ r:
                x, r, damping = x + delta, trial, max(damping / 3, 1e-9)
                break
            damping *= 4
            if damping > 1e9:
                return _calibration(gpu, x, source)
        if np.max(np.abs(delta)) < 1e-9:
            break
    return _calibration(gpu, x, source)


def _ratio_range(rows) -> tuple[float, float]:
    ratios = [m / c for _, m, c, _ in rows]
    return (min(ratios), max(ratios)) if ratios else (math.nan, math.nan)


def table(points: list[Point], gpu: str, cal: cm.Calibration):
    """(point, measured ms, calibrated ms, uncalibrated ms) of each point."""
    return [(p, p.ms, predicted_ms(p, gpu, cal), predicted_ms(p, gpu, None)) for p in points]


def markdown(cal: cm.Calibration, fit_rows, held_rows, device: str) -> str:
    lat = cm.l2_latency(cm.GPUS[cal.gpu])
    before = {
        "round_trip_s": f"{lat * 1e9:.0f} ns (an L2 hit, {cm.L2_HIT_CYCLES} cycles)",
        "barrier_s": f"{cm.BARRIER_ROUND_TRIPS * lat * 1e9:.0f} ns ({cm.BARRIER_ROUND_TRIPS} "
        "L2 round trips)",
        "per_program_s": "0 (contention not modelled)",
        "ieee_fwd": "1 (the FMA peak)",
        "ieee_bwd": "1 (the FMA peak)",
    }
    meaning = {
        "round_trip_s": "one dependent round trip of a step's chain (a K block in flight, the "
        "step's own loads and stores)",
        "barrier_s": "per grid barrier: what a step costs besides its chain and its products",
        "per_program_s": "per program meeting at a barrier",
        "ieee_fwd": "share of the float32 FMA peak an IEEE `tl.dot` reaches, forward step",
        "ieee_bwd": "the same, backward step",
    }
    value = {n: getattr(cal, n) for n in NAMES}
    shown = {n: (f"{v * 1e9:.0f} ns" if n.endswith("_s") else f"{v:.3f}") for n, v in value.items()}
    lines = [
        f"# Cost model calibration: {device}",
        "",
        "Generated by `python bench/calibrate.py`; the method is in its docstring. "
        f"Fitted to {cal.source}. Every ratio below is measured / predicted.",
        "",
        "| constant | fitted | uncalibrated model | what it stands for |",
        "|---|---|---|---|",
        *[f"| `{n}` | {shown[n]} | {before[n]} | {meaning[n]} |" for n in NAMES],
        "",
    ]
    for title, rows in (("Fit points", fit_rows), ("Held-out points", held_rows)):
        lo, hi = _ratio_range(rows)
        unc = [m / u for _, m, _, u in rows]
        lines += [
            f"## {title} ({len(rows)}): calibrated {lo:.2f}-{hi:.2f}, uncalibrated "
            f"{min(unc):.1f}-{max(unc):.1f}",
            "",
            "| source | shape | mode | configs | measured ms | calibrated ms | ratio | "
            "uncalibrated ms | ratio |",
            "|---|---|---|---|---|---|---|---|---|",
            *[
                f"| {p.source} | {p.label} | {p.mode} | "
                f"{p.config if p.kind == 'cooperative' else f'{p.kind} ({p.config})'} | {m:.3g} | {c:.3g} | "
                f"{m / c:.2f} | {u:.3g} | {m / u:.1f} |"
                for p, m, c, u in rows
            ],
            "",
        ]
    return "\n".join(lines)


def calibrate(results: Path) -> tuple[cm.Calibration, dict, str]:
    """Fit to ``results``' sweep, check on its later files: (calibration, JSON, markdown)."""
    meta = json.loads((results / "meta.json").read_text())
    device = meta["device"]
    gpu = gpu_key(device)
    sweep = read_paths(results / FIT_FILE, FIT_FILE)
    fit_points = [p for p in sweep if p.kind == "cooperative"]
    held = [p for p in sweep if p.kind != "cooperative"]
    if (results / "paths.csv").is_file():
        held += read_paths(results / "paths.csv", "paths.csv")
    # a run that names its Triton path ran the automatic one (resident where it fits): its
    # rows say no config, so only paths.csv's rows of it are read
    if (results / "results.csv").is_file() and "triton_path" not in meta:
        held += read_results(results / "results.csv", "results.csv")
    if not fit_points:
        raise SystemExit(f"calibrate: no cooperative measurements in {results / FIT_FILE}")
    source = (f"{results.name}/{FIT_FILE} ({len(fit_points)} eager medians of the cooperative "
              f"launch); held out: {len(held)} points of {', '.join(HELD_OUT_FILES)}")  # fmt: skip
    cal = fit(fit_points, gpu, source)
    fit_rows, held_rows = table(fit_points, gpu, cal), table(held, gpu, cal)
    cal = replace(cal, fit_ratio_range=_ratio_range(fit_rows),
                  held_out_ratio_range=_ratio_range(held_rows))  # fmt: skip
    doc = {k: v for k, v in asdict(cal).items() if k != "path"}  # the file's own place
    doc.update(fit_points=len(fit_rows), held_out_points=len(held_rows))
    return cal, doc, markdown(cal, fit_rows, held_rows, device)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=cm._ROOT / "bench/results/gpu-nvidia-h200")
    ap.add_argument("--out", type=Path, help="folder to write into (default: --results)")
    args = ap.parse_args(argv)
    cal, doc, text = calibrate(args.results)
    out = args.out or args.results
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "calibration.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
