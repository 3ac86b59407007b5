"""Measure fusedrnn against torch.nn, the naive cell loop and torch.compile: one command.

    python bench/run.py                       # full suite on the CPU, committed results
    python bench/run.py --quick [--out DIR]   # CI: tiny sizes, every provider and mode, ~1 min
    python bench/run.py --device cuda         # GPU suite (skips with a message without a GPU)

Writes ``bench/results/<machine-tag>/`` (or ``--out``; ``--quick`` writes to the ignored
``bench/results/<machine-tag>/tmp/quick/`` unless ``--out`` is given, so the committed results are
never overwritten by a harness check): ``results.csv`` (one row per provider
and configuration), ``results.md`` (ratios vs torch.nn first, absolute times beside) and PNG
plots. Every provider is checked against torch.nn with the same weights (outputs and gradients)
before it is timed; one that disagrees is recorded as incorrect and not timed, and the command
exits non-zero. Speed is reported, never asserted.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import signal
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import measure  # noqa: E402
import providers as P  # noqa: E402
import report  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

# Goals of the compiled CPU backend against torch.nn (oneDNN), shown in the report, not asserted.
CPU_GOALS = {"fwd": 1.0, "fwdbwd": 1.15, "step": 6.0}

COLUMNS = [
    "machine",
    "cpu_model",
    "device",
    "torch",
    "triton",
    "threads",
    "load_avg_1m",
    "timestamp_utc",
    "dtype",
    "cell",
    "mode",
    "B",
    "T",
    "I",
    "H",
    "layers",
    "group",
    "provider",
    "status",
    "reason",
    "median_ms",
    "p20_ms",
    "p80_ms",
    "samples",
    "speedup_vs_torch_nn",
    "flops",
    "gflops",
    "pct_sgemm_peak",
    "sgemm_peak_gflops",
    "first_call_s",
    "saved_activation_bytes",
    "cuda_peak_bytes",
    "max_abs_err_out",
    "max_abs_err_grad",
]


# -- the suite --------------------------------------------------------------------------------


def full_suite(device: str, dtypes: list[torch.dtype], sweep_cells: list[str]) -> list[P.Config]:
    """Headline shapes for every cell (the CPU backend's requirement), sweeps for some cells."""
    out: list[P.Config] = []
    seen: set[tuple] = set()

    def add(cell, mode, B, T, H, layers, group, dtype, I=128):  # noqa: E741
        key = (cell, mode, B, T, I, H, layers, dtype)
        if key in seen:
            return
        seen.add(key)
        out.append(P.Config(cell, mode, B, T, I, H, layers, dtype, device, group))

    for dtype in dtypes:
        # cheapest first, so that a run cut short by --time-budget still covers every cell
        for cell in P.CELLS:
            add(cell, "step", 1, 1, 512, 2, "headline", dtype)
        for H in (256, 512):
            for mode in ("fwd", "fwdbwd"):
                for cell in P.CELLS:
                    add(cell, mode, 64, 64, H, 2, "headline", dtype)
    for dtype in dtypes:
        for cell in sweep_cells:
            for mode in ("fwd", "fwdbwd"):
                for H in (64, 128, 256, 512):
                    add(cell, mode, 64, 64, H, 2, "sweep", dtype)
                for B in (1, 8, 16, 32, 128):
                    add(cell, mode, B, 64, 256, 2, "sweep", dtype)
                for T in (16, 128):
                    add(cell, mode, 64, T, 256, 2, "sweep", dtype)
                for layers in (1, 4):
                    add(cell, mode, 64, 64, 256, layers, "sweep", dtype)
            for H in (128, 256, 512, 1024):
                add(cell, "step", 1, 1, H, 2, "sweep", dtype)
    return out


def quick_suite(device: str, dtypes: list[torch.dtype]) -> list[P.Config]:
    """Tiny shapes touching every cell, mode and provider; for LSTM two H and two B, so that
    every plot has lines."""
    out = []
    for dtype in dtypes:
        for cell in P.CELLS:
            for mode in ("fwd", "fwdbwd"):
                shapes = ((16, 4), (24, 4), (16, 2)) if cell == "lstm" else ((16, 4),)
                for H, B in shapes:
                    group = "headline" if (H, B) == (16, 4) else "sweep"
                    out.append(P.Config(cell, mode, B, 4, 8, H, 1, dtype, device, group))
            out.append(P.Config(cell, "step", 1, 1, 8, 16, 2, dtype, device, "headline"))
    return out


def compile_in_scope(cfg: P.Config, scope: str, quick: bool) -> tuple[bool, str]:
    """Whether torch.compile is measured on ``cfg``; the reason recorded when it is not."""
    if quick:
        ok = cfg.cell == "lstm" and cfg.group == "headline"
        return ok, "quick mode exercises torch.compile on the LSTM headline shapes only"
    if scope == "none":
        return False, "torch.compile not requested (--compile-scope none)"
    if scope == "all" or cfg.mode == "step":  # T=1: a compile of seconds, not minutes
        return True, ""
    if scope == "headline" and cfg.group == "headline":
        return True, ""
    if scope == "lstm-headline" and cfg.group == "headline" and cfg.cell == "lstm":
        return True, ""
    return False, (
        f"outside --compile-scope {scope}: compiling the whole unrolled loop takes minutes per "
        "shape on this machine"
    )


# -- one configuration ------------------------------------------------------------------------


def _short(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0][:300] if msg else ''}"


def _timed_fn(cfg: P.Config, run, params, x, state):
    """The closure that is timed: one whole forward, forward+backward, or one sampling step."""
    if cfg.mode == "fwd":
        return measure.forward_fn(run, x, state)
    if cfg.mode == "step":
        carried = [state]

        def step():
            with torch.no_grad():
                y, carried[0] = run(x, carried[0])
            return y

        return step
    xg = x.detach().clone().requires_grad_(True)  # the input needs dx, as an embedding would
    gy = torch.randn(cfg.T, cfg.B, cfg.H, generator=torch.Generator().manual_seed(3))
    gy = gy.to(device=cfg.device, dtype=cfg.dtype)
    return measure.forward_backward_fn(run, params, xg, state, gy)


def measure_config(cfg: P.Config, names: list[str], args, ctx: dict) -> list[dict]:
    ref = P.make_reference_module(cfg)
    x, state = P.make_inputs(cfg)
    base = {
        **ctx["row"],
        "load_avg_1m": f"{measure.load_average():.2f}",
        "timestamp_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "dtype": cfg.dtype_name,
        "cell": cfg.cell,
        "mode": cfg.mode,
        "B": cfg.B,
        "T": cfg.T,
        "I": cfg.I,
        "H": cfg.H,
        "layers": cfg.layers,
        "group": cfg.group,
    }
    nn_run, nn_params = P.build(P.TORCH_NN, ref, cfg)
    want = P.evaluate(nn_run, nn_params, x, state, with_grad=True)

    rows: dict[str, dict] = {}
    timed: list[tuple[str, object]] = []
    extras: dict[str, tuple] = {}
    for name in names:
        row = {**base, "provider": name, "status": "ok", "reason": ""}
        rows[name] = row
        if name == P.COMPILE:
            ok, why = compile_in_scope(cfg, args.compile_scope, args.quick)
            if not ok:
                row.update(status="skipped", reason=why)
                continue
        try:
            run, params = (nn_run, nn_params) if name == P.TORCH_NN else P.build(name, ref, cfg)
            # The first call of a compiled provider is its compile time; it must be the timed
            # mode's graph (no_grad for fwd/step), so that call is made first.
            start = time.perf_counter()
            with_grad = cfg.mode == "fwdbwd"
            got = P.evaluate(run, params, x, state, with_grad=with_grad)
            measure.sync(cfg.device)
            row["first_call_s"] = f"{time.perf_counter() - start:.3f}"
            if not with_grad and name != P.COMPILE:  # compiling a grad graph would cost minutes
                got = P.evaluate(run, params, x, state, with_grad=True)
            err_out, err_grad, problem = P.compare(got, want, cfg.dtype)
            row["max_abs_err_out"] = f"{err_out:.3g}"
            row["max_abs_err_grad"] = "" if err_grad is None else f"{err_grad:.3g}"
            if problem:
                row.update(status="incorrect", reason=problem)
                continue
            fn = _timed_fn(cfg, run, params, x, state)
            measure.warm_up(fn, cfg.device, min_calls=args.warmup_calls)
        except Exception as exc:  # recorded, e.g. torch.compile failing on this machine
            row.update(status="error", reason=_short(exc))
            if args.verbose:
                traceback.print_exc()
            continue
        timed.append((name, fn))
        extras[name] = (run, params)

    samples = {name: measure.Samples() for name, _ in timed}
    for r in range(args.rounds):
        shift = r % max(len(timed), 1)
        for name, fn in timed[shift:] + timed[:shift]:
            if torch.device(cfg.device).type == "cuda":
                samples[name].times_s += measure.time_round_cuda(fn, args.min_run_time)
            else:
                samples[name].times_s += measure.time_round_cpu(fn, args.min_run_time, args.threads)

    flops = measure.mode_flops(cfg.mode, cfg.cell, cfg.B, cfg.T, cfg.I, cfg.H, cfg.layers)
    peak = ctx["sgemm_peak_gflops"]
    for name, s in samples.items():
        row = rows[name]
        gflops = flops / s.median / 1e9
        row.update(
            median_ms=f"{s.median * 1e3:.4g}",
            p20_ms=f"{s.quantile(0.2) * 1e3:.4g}",
            p80_ms=f"{s.quantile(0.8) * 1e3:.4g}",
            samples=len(s.times_s),
            flops=flops,
            gflops=f"{gflops:.3g}",
            pct_sgemm_peak=f"{100 * gflops / peak:.1f}" if peak == peak else "",
        )
        if cfg.mode == "fwdbwd":
            run, params = extras[name]
            _memory(cfg, row, run, params, x, state)
    if P.TORCH_NN in samples:
        t_nn = samples[P.TORCH_NN].median
        for name, s in samples.items():
            rows[name]["speedup_vs_torch_nn"] = f"{t_nn / s.median:.3f}"
    return [rows[n] for n in names]


def _memory(cfg: P.Config, row: dict, run, params, x, state) -> None:
    """Saved-for-backward activation bytes (any device) and the CUDA peak above baseline."""
    xg = x.detach().clone().requires_grad_(True)
    states = list(state) if isinstance(state, tuple) else [state]
    try:
        row["saved_activation_bytes"] = measure.saved_tensor_bytes(
            lambda: run(xg, state)[0], exclude=[*params, xg, *states]
        )
        if torch.device(cfg.device).type == "cuda":

            def fwdbwd():
                y, _ = run(xg, state)
                y.backward(torch.ones_like(y))

            row["cuda_peak_bytes"] = measure.cuda_peak_bytes(fwdbwd)
    except Exception as exc:
        row["reason"] = (row["reason"] + "; " if row["reason"] else "") + "memory: " + _short(exc)
    for p in params:
        p.grad = None


# -- command line -----------------------------------------------------------------------------


def output_dir(args, tag: str) -> Path:
    """Where results go: quick runs never land in the committed bench/results/<tag>/."""
    if args.out is not None:
        return args.out
    return RESULTS / tag / "tmp" / "quick" if args.quick else RESULTS / tag


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="tiny sizes, few repetitions (CI)")
    p.add_argument(
        "--out",
        type=Path,
        help="output directory (default bench/results/<tag>; with --quick <tag>/tmp/quick)",
    )
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default 2; 1 with --quick)")
    p.add_argument("--dtypes", help="comma list; default float32 on CPU, +bfloat16,float16 on GPU")
    p.add_argument("--cells", help="comma list of cells to run (default lstm,gru,rnn)")
    p.add_argument("--sweep-cells", default="lstm", help="cells that get the H/B/T/layer sweeps")
    p.add_argument("--providers", help="comma list of provider names to keep (default all)")
    p.add_argument("--headline-only", action="store_true", help="skip the sweeps")
    p.add_argument(
        "--compile-scope",
        default="step",
        choices=["none", "step", "lstm-headline", "headline", "all"],
        help="configurations on which torch.compile is measured (single step: unless none)",
    )
    p.add_argument("--rounds", type=int, help="interleaved timing rounds per provider")
    p.add_argument("--min-run-time", type=float, help="seconds per provider per round")
    p.add_argument("--warmup-calls", type=int, default=1)
    p.add_argument(
        "--time-budget",
        type=float,
        help="minutes; once spent, remaining sweep configurations are skipped (headline never)",
    )
    p.add_argument("--no-plots", action="store_true")
    p.add_argument(
        "--report-only",
        type=Path,
        metavar="DIR",
        help="rewrite results.md and the plots of DIR from its results.csv and meta.json",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.threads is None:
        # quick runs check the harness, not speed; one thread does not stall on a busy machine
        args.threads = 1 if args.quick else 2
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.min_run_time is None:
        args.min_run_time = 0.02 if args.quick else 0.4
    return args


def _cpu_kernels() -> str:
    """What fusedrnn[cpu] runs on this machine (its GEMM may beat the torch.mm peak)."""
    try:
        from fusedrnn import _C
    except ImportError:
        return "fusedrnn._C not built"
    gemm = f"packed {_C.sgemm_isa()} kernel of fusedrnn" if _C.own_sgemm() else "the BLAS of torch"
    return f"pointwise kernels {_C.kernel_isa()}, float32 GEMMs: {gemm}"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report_only:
        with open(args.report_only / "results.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        meta = json.loads((args.report_only / "meta.json").read_text())
        meta.setdefault("load_end", float("nan"))
        meta.setdefault("elapsed_s", float("nan"))
        n = write_report(args.report_only, rows, meta, plots=not args.no_plots)
        print(f"bench: rewrote {args.report_only / 'results.md'} and {n} plots")
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench: --device cuda requested but no CUDA device is visible; nothing measured.")
        return 0
    torch.set_num_threads(args.threads)
    if args.dtypes:
        dtypes = [getattr(torch, d.strip()) for d in args.dtypes.split(",")]
    elif args.device == "cuda":
        dtypes = [torch.float32, torch.bfloat16, torch.float16]
    else:
        dtypes = [torch.float32]

    names = P.all_provider_names(args.device)
    if args.providers:
        keep = [n.strip() for n in args.providers.split(",")]
        unknown = [n for n in keep if n not in names]
        if unknown:
            print(f"bench: unknown or unavailable providers {unknown}; available: {names}")
            return 2
        names = [P.TORCH_NN] + [n for n in names if n in keep and n != P.TORCH_NN]

    if args.quick:
        configs = quick_suite(args.device, dtypes)
    else:
        configs = full_suite(args.device, dtypes, args.sweep_cells.split(","))
        if args.headline_only:
            configs = [c for c in configs if c.group == "headline"]
    if args.cells:
        cells = args.cells.split(",")
        configs = [c for c in configs if c.cell in cells]

    tag = measure.machine_tag(args.device, args.threads)
    out = output_dir(args, tag)
    out.mkdir(parents=True, exist_ok=True)
    vers = measure.versions()
    load_start = measure.load_average()
    print(f"bench: {len(configs)} configurations x {len(names)} providers -> {out}")
    print(f"bench: providers {names}; threads {args.threads}; load average {load_start:.2f}")
    note = P.interpreter_note()
    if note:
        print("bench: " + note)
    if args.quick:
        P.COMPILE_BACKEND = "aot_eager"
    sgemm_n = 512 if args.quick else 2048
    peak = measure.sgemm_peak_gflops(
        args.device, args.threads, n=sgemm_n, min_run_time=0.1 if args.quick else 1.0
    )
    print(f"bench: sgemm peak (torch.mm) {peak:.1f} GFLOP/s")
    ctx = {
        "sgemm_peak_gflops": peak,
        "row": {
            "machine": tag,
            "cpu_model": measure.cpu_model(),
            "device": args.device,
            "torch": vers["torch"],
            "triton": vers["triton"],
            "threads": args.threads,
            "sgemm_peak_gflops": f"{peak:.1f}",
        },
    }

    rows: list[dict] = []
    skipped_budget: list[str] = []
    started = time.perf_counter()
    csv_path = out / "results.csv"
    budget_s = args.time_budget * 60 if args.time_budget else float("inf")
    meta = {
        "tag": tag,
        "cpu_model": measure.cpu_model(),
        "device": args.device,
        "threads": args.threads,
        "versions": vers,
        "sgemm_peak_gflops": peak,
        "sgemm_n": sgemm_n,
        "compile_backend": P.COMPILE_BACKEND,
        "load_start": load_start,
        "quick": args.quick,
        "command": "python bench/run.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "goals": CPU_GOALS,
        "providers": names,
        "compile_scope": args.compile_scope,
        "skipped_budget": skipped_budget,
        "cpu_kernels": _cpu_kernels(),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    signal.signal(signal.SIGTERM, _interrupt)  # a killed run still writes its report
    try:
        _run_all(configs, names, args, ctx, rows, csv_path, started, budget_s, skipped_budget)
    except KeyboardInterrupt:
        print("bench: interrupted; writing the report of what was measured")
        meta["interrupted"] = True
    meta.update(load_end=measure.load_average(), elapsed_s=time.perf_counter() - started)
    # The peak is measured again at the end and the better of the two kept: a peak taken while
    # other work had the cores would make every provider look closer to it than it is.
    peak_end = measure.sgemm_peak_gflops(
        args.device, args.threads, n=sgemm_n, min_run_time=0.1 if args.quick else 1.0
    )
    meta.update(sgemm_peak_start=peak, sgemm_peak_end=peak_end)
    meta["sgemm_peak_gflops"] = peak = max(peak, peak_end)
    for r in rows:
        r["sgemm_peak_gflops"] = f"{peak:.1f}"
        if r.get("gflops"):
            r["pct_sgemm_peak"] = f"{100 * float(r['gflops']) / peak:.1f}"
    _write_csv(csv_path, rows)
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    n_plots = write_report(out, rows, meta, plots=not args.no_plots)
    print(f"bench: wrote {csv_path}, {out / 'results.md'} and {n_plots} plots")
    bad = [r for r in rows if r["status"] == "incorrect"]
    for r in bad:
        print(f"bench: INCORRECT {r['provider']} on {r['cell']} {r['mode']}: {r['reason']}")
    return 1 if bad else 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _run_all(configs, names, args, ctx, rows, csv_path, started, budget_s, skipped_budget):
    for i, cfg in enumerate(configs):
        if time.perf_counter() - started > budget_s:
            print(f"[{i + 1}/{len(configs)}] {cfg.label()}: skipped, --time-budget spent")
            skipped_budget.append(cfg.label())
            continue
        t0 = time.perf_counter()
        cfg_rows = measure_config(cfg, names, args, ctx)
        rows += cfg_rows
        _write_csv(csv_path, rows)  # after every configuration: a crash keeps what was measured
        summary = ", ".join(
            f"{r['provider']} {r['median_ms']}ms"
            if r["status"] == "ok"
            else f"{r['provider']} {r['status']}"
            for r in cfg_rows
        )
        print(
            f"[{i + 1}/{len(configs)}] {cfg.label()} ({time.perf_counter() - t0:.1f}s): {summary}"
        )
        sys.stdout.flush()


def write_report(out: Path, rows: list[dict], meta: dict, plots: bool = True) -> int:
    pngs = report.plots(rows, out) if plots else []
    (out / "results.md").write_text(report.markdown(rows, meta, pngs))
    return len(pngs)


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="raise")
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in COLUMNS})


if __name__ == "__main__":
    sys.exit(main())
