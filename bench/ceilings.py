"""Ceilings: how much faster than torch.nn any implementation could be on this machine.

    python bench/ceilings.py                  # bench/run.py's headline shapes, 2 threads, ~2 min

A speed-up over torch.nn is bounded by what torch.nn already gets out of the hardware. For each
headline configuration of bench/run.py (float32, CPU) this measures torch.nn and fusedrnn[cpu]
interleaved, after checking that they agree, and sets torch.nn's time against the least time
the work can take here:

* forward and forward+backward of a sequence: the GEMM FLOPs (``measure.mode_flops``; gate
  math, layer glue and memory traffic not counted, so the true bound is lower) at the FMA peak
  of ``--threads`` cores (``measure.fma_gflops_one_core``). A second, practical ceiling takes
  the best square-GEMM rate measured in the same run instead (torch.mm or fusedrnn's packed
  GEMM on 2048² float32), a rate that a recurrent layer's small per-step products seldom
  reach.
* a single step at batch 1: every weight is read once (about 2 FLOPs per 4-byte weight, so the
  reads bound it, not the FMAs), at the best rate ``--threads`` threads read that many bytes
  already in cache (``measure.read_gbs``).

ceiling = torch.nn's time / least time. Writes results.csv (every measured number), results.md
and meta.json to ``--out`` (default bench/results/<machine-tag>/ceilings/).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import measure  # noqa: E402
import providers as P  # noqa: E402
import run as suite  # noqa: E402
import torch  # noqa: E402

FUSED = "fusedrnn[cpu]"
MODE_NAMES = {"fwd": "forward (no grad)", "fwdbwd": "forward+backward", "step": "single step"}


def parse_args(argv=None) -> argparse.Namespace:
    p = measure.standalone_parser(__doc__, seconds=0.3)
    p.set_defaults(threads=2, rounds=5)
    p.add_argument("--batch", type=int, default=64, help="batch of the sequences")
    p.add_argument("--steps", type=int, default=64, help="T of the sequences")
    p.add_argument("--input", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", default="256,512", help="H of the sequences, comma separated")
    p.add_argument("--step-hidden", type=int, default=512, help="H of the single steps")
    p.add_argument("--cells", default=",".join(P.CELLS))
    p.add_argument("--gemm-n", type=int, default=2048, help="size of the square-GEMM rate")
    p.add_argument("--out", type=Path, help="default bench/results/<machine-tag>/ceilings")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = suite.RESULTS / measure.machine_tag("cpu", args.threads) / "ceilings"
    return args


def ceiling(torch_s: float, work: float, rate: float | None) -> float | None:
    """torch.nn's time over the least time of ``work`` at ``rate`` (work per second)."""
    return None if not rate else torch_s * rate / work


def sig(value: float) -> float:
    """Four significant digits: the CSV keeps what the ratios were computed from."""
    return float(f"{value:.4g}")


def configs(args) -> list[P.Config]:
    cells = args.cells.split(",")
    out = [
        P.Config(cell, "step", 1, 1, args.input, args.step_hidden, args.layers, torch.float32,
                 "cpu", "headline")
        for cell in cells
    ]  # fmt: skip
    for H in (int(h) for h in args.hidden.split(",")):
        for mode in ("fwd", "fwdbwd"):
            out += [
                P.Config(cell, mode, args.batch, args.steps, args.input, H, args.layers,
                         torch.float32, "cpu", "headline")
                for cell in cells
            ]  # fmt: skip
    return out


def timed_pair(cfg: P.Config, args, gemm_gflops: float) -> dict[str, float]:
    """Median seconds per call of torch.nn and fusedrnn[cpu]: bench/run.py's measurement of one
    configuration (both checked against torch.nn first, then timed in interleaved rounds)."""
    how = argparse.Namespace(rounds=args.rounds, min_run_time=args.seconds, threads=args.threads,
                             warmup_calls=1, verbose=False)  # fmt: skip
    ctx = {"row": {}, "sgemm_peak_gflops": gemm_gflops}
    rows = suite.measure_config(cfg, [P.TORCH_NN, FUSED], how, ctx)
    for r in rows:
        if r["status"] != "ok":
            raise SystemExit(f"ceilings: {r['provider']} on {cfg.label()}: {r['reason']}")
    return {r["provider"]: float(r["median_ms"]) / 1e3 for r in rows}


def rows(args):
    fma = measure.fma_gflops_one_core()  # None without gcc or AVX2+FMA
    peak = fma * args.threads * 1e9 if fma else None  # FLOP/s
    gemms = (
        measure.sgemm_peak_gflops("cpu", args.threads, args.gemm_n),
        measure.own_sgemm_peak_gflops(args.threads, args.gemm_n),
    )
    gemm = max(r for r in gemms if r) * 1e9
    for cfg in configs(args):
        t = timed_pair(cfg, args, gemm / 1e9)
        t_nn = t[P.TORCH_NN]
        if cfg.mode == "step":  # the weights' bytes, each read once
            ref = P.make_reference_module(cfg)
            work = sum(p.numel() * p.element_size() for p in ref.parameters())
            best, practical = measure.read_gbs(work, args.threads) * 1e9, None
        else:
            work = measure.mode_flops(cfg.mode, cfg.cell, cfg.B, cfg.T, cfg.I, cfg.H, cfg.layers)
            best, practical = peak, gemm
        top, top_gemm = ceiling(t_nn, work, best), ceiling(t_nn, work, practical)
        yield {
            "cell": cfg.cell, "mode": cfg.mode, "B": cfg.B, "T": cfg.T, "I": cfg.I, "H": cfg.H,
            "layers": cfg.layers, "torch_nn_ms": sig(t_nn * 1e3),
            "fusedrnn_ms": sig(t[FUSED] * 1e3), "speedup": round(t_nn / t[FUSED], 3),
            "work": work, "torch_nn_rate": sig(work / t_nn / 1e9),
            "best_rate": sig(best / 1e9) if best else "",
            "ceiling": round(top, 3) if top else "",
            "ceiling_gemm": round(top_gemm, 3) if top_gemm else "",
            "gemm_gflops": sig(gemm / 1e9),
        }  # fmt: skip


def markdown(rows: list[dict], meta: dict) -> str:
    gemm = rows[0]["gemm_gflops"] if rows else ""
    intro = (
        "float32. *ceiling*: torch.nn's time over the least time the work can take here: for a "
        "sequence its GEMM FLOPs at the FMA peak of the threads' cores, for a single step "
        "(batch 1) its weights read once at the best rate the threads read that many bytes "
        "from cache; *at GEMM rate*: the FLOPs at the best square-GEMM rate of this run "
        f"({gemm} GFLOP/s). *torch.nn uses*: its share of that peak (GFLOP/s), or the rate at "
        "which it reads the step's weights (GB/s). fusedrnn[cpu] and torch.nn were timed "
        "interleaved after they agreed. Raw numbers: results.csv."
    )
    columns = ["cell", "mode", "H", "torch.nn (ms)", "fusedrnn[cpu] (ms)", "speed-up",
               "torch.nn uses", "ceiling", "at GEMM rate"]  # fmt: skip
    body = []
    for r in rows:
        step = r["mode"] == "step"
        used = (f"{r['torch_nn_rate']} of {r['best_rate']} GB/s" if step else
                f"{r['torch_nn_rate']} of {r['best_rate']} GFLOP/s" if r["best_rate"] else
                f"{r['torch_nn_rate']} GFLOP/s")  # fmt: skip
        body.append([r["cell"], MODE_NAMES[r["mode"]], str(r["H"]), f"{r['torch_nn_ms']:.4g}",
                     f"{r['fusedrnn_ms']:.4g}", f"{r['speedup']:.2f}×", used,
                     f"{r['ceiling']:.2f}×" if r["ceiling"] != "" else "",
                     f"{r['ceiling_gemm']:.2f}×" if r["ceiling_gemm"] != "" else ""])  # fmt: skip
    return measure.results_markdown(
        "Ceilings of the headline comparisons on this machine", meta, intro, columns, body
    )


def main(argv=None) -> int:
    return measure.run_standalone(parse_args(argv), rows, markdown)


if __name__ == "__main__":
    sys.exit(main())
