"""What one grid barrier costs on a GPU, against the number of programs meeting at it.

    python bench/barrier.py --out DIR [--programs 1,24,48,96,128,256] [--kinds counter,...]
                            [--device cuda]

Runs ``fusedrnn/ops/triton/barrier_probe.py``: programs that only meet at barriers, alone
("barrier") or passing a tile of values to their neighbour across each one ("exchange", a
step's store, barrier and dependent load, without its arithmetic), for each kind of barrier
(``sync.BARRIER_KINDS``): "counter", the one the launches use; "relaxed", its polls relaxed
loads with one acquire at the end; "flags", a flag per program and no counter that every
program increments and polls, which tells whether the counter's contention is part of the
cost per program. Each grid runs ``--short`` and ``--long`` barriers in one launch, CUDA-event
medians of interleaved rounds; one barrier's cost is the difference over ``long - short``, so
that the launch's own cost cancels. Grids larger than fit on the GPU at once are left out.
Every launch's result is checked first (each program must end holding the number of barriers).

The cost model's calibration (``bench/calibrate.py``) fits one constant per barrier for all a
step costs besides its chain, and one per program meeting at it; set beside these rows, they
say how much of that is the barrier itself. Writes ``barrier.csv`` and ``barrier.md``.
Under the interpreter (``--device cpu``, a dry run) only the one-program grid runs.
"""

from __future__ import annotations

import argparse
import csv
import functools
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import graph_replay  # noqa: E402
import measure  # noqa: E402

FORMS = {"barrier": False, "exchange": True}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--programs", default="1,24,48,96,128,256")
    ap.add_argument("--kinds", default="counter,relaxed,flags")
    ap.add_argument("--short", type=int, default=100)  # neither 1 nor a multiple of 16: the
    ap.add_argument("--long", type=int, default=1100)  # specialisation the compile report has
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-run-time", type=float, default=0.05)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args(argv)
    if not 0 <= args.short < args.long:
        ap.error("--short must be below --long")
    from fusedrnn.ops.triton.barrier_probe import max_programs, probe
    from fusedrnn.ops.triton.sync import BARRIER_KINDS

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not kinds or set(kinds) - set(BARRIER_KINDS):
        ap.error(f"--kinds: choose from {','.join(BARRIER_KINDS)}")
    device = torch.device(args.device)
    fit = min(max_programs(device, kind) for kind in kinds)
    wanted = sorted({int(p) for p in args.programs.split(",")})
    grids, left_out = [p for p in wanted if p <= fit], [p for p in wanted if p > fit]
    rows, failed = [], False
    for programs in grids:
        for kind, (form, exchange) in itertools.product(kinds, FORMS.items()):
            calls, problem = {}, ""
            for n in (args.short, args.long):
                got = probe(programs, n, exchange, device, kind)
                bad = int((got != n).sum())
                if bad:
                    problem = f"{bad} of {programs} programs ended with a count other than {n}"
                calls[n] = functools.partial(probe, programs, n, exchange, device, kind)
                measure.warm_up(calls[n], args.device)
            failed |= bool(problem)
            ms = graph_replay.time_interleaved(calls, args.device, args.rounds, args.min_run_time)
            per = (ms[args.long] - ms[args.short]) * 1e3 / (args.long - args.short)
            rows.append(dict(programs=programs, kind=kind, form=form, us_per_barrier=per,
                             short_ms=ms[args.short], long_ms=ms[args.long], problem=problem))  # fmt: skip
            print(f"{programs:5} {kind:8} {form:9} {per:8.3f} µs per barrier  {problem}",
                  flush=True)  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "barrier.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(FIELDS))
        w.writeheader()
        w.writerows(rows)
    cuda = device.type == "cuda"
    machine = torch.cuda.get_device_name(device) if cuda else measure.cpu_model()
    clock = "CUDA-event" if cuda else "wall-clock (the interpreter: no speed)"
    lines = [
        "# The grid barrier alone (bench/barrier.py)",
        "",
        f"{machine}, torch {torch.__version__}; µs per barrier = (time of {args.long} barriers "
        f"- time of {args.short}) / {args.long - args.short}, {clock} medians of "
        f"{args.rounds} interleaved rounds. {fit} programs of the probe fit at once"
        + (f"; left out: {', '.join(map(str, left_out))} programs" if left_out else "")
        + ".",
        "",
        "| programs | kind | form | µs per barrier | check |",
        "|---|---|---|---|---|",
        *[
            f"| {r['programs']} | {r['kind']} | {r['form']} | {r['us_per_barrier']:.3f} | "
            f"{r['problem'] or 'ok'} |"
            for r in rows
        ],  # fmt: skip
    ]
    (args.out / "barrier.md").write_text("\n".join(lines) + "\n")
    return 1 if failed else 0


FIELDS = ("programs", "kind", "form", "us_per_barrier", "short_ms", "long_ms", "problem")

if __name__ == "__main__":
    sys.exit(main())
