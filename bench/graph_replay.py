"""A whole layer call captured in a CUDA graph: does capture work, and how much of the eager
time is host time?

    python bench/graph_replay.py [--out DIR]      # on a GPU
    python bench/graph_replay.py --dry-run        # the same code on CPU tensors, tiny shapes

For each headline shape, each provider (torch.nn = cuDNN, then every fused GPU backend) and two
modes:

- ``fwd``: the module call without grad;
- ``fwdbwd``: forward, a fixed random weighting of every output and ``backward()``, with the
  gradients set to None first (torch's whole-network capture recipe).

the call is captured by ``torch.cuda.graph`` (``measure.cuda_graph``), its replay's outputs and
gradients compared with an eager call's on the same inputs, then eager calls and replays are
timed (CUDA-event medians over interleaved rounds). The per-step paths launch one to three
kernels per time step from the host, a replay launches them with no host work, so
``eager / replay`` is the share of host time in the eager call. The ``cuda`` backend replays
its own calls from graphs (``fusedrnn/ops/graphs.py``), so it runs twice: as it ships, and as
``fusedrnn[cuda] (own replay off)``, its per-step launches issued by the host at every call.

Writes ``graph_replay.csv`` and ``graph_replay.md`` into ``--out`` (default
``bench/results/gpu-<name>/``). The dry run replaces the graph by a stand-in that reruns the
call eagerly and copies into the captured outputs: it checks this script, not CUDA graphs.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import measure  # noqa: E402
import providers as P  # noqa: E402

import fusedrnn  # noqa: E402
from fusedrnn.ops import graphs  # noqa: E402

OWN_REPLAY_OFF = " (own replay off)"

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = ("shape", "dtype", "mode", "provider", "capture", "replay_vs_eager", "max_abs_diff",
           "eager_ms", "replay_ms", "eager_over_replay")  # fmt: skip

# (label, B, T, I, H, layers, dtype): the gpu_check headline shapes
GPU_SHAPES = (
    ("flashrnn-anchor", 16, 1024, 768, 768, 1, torch.bfloat16),
    ("mid", 64, 100, 512, 512, 1, torch.float32),
    ("charlm", 64, 128, 64, 512, 2, torch.float32),
)
DRY_SHAPES = (("tiny", 3, 5, 4, 6, 2, torch.float32),)


class StandIn:
    """The dry run's graph: replay() reruns ``fn`` eagerly into the captured outputs."""

    def __init__(self, fn):
        self.fn = fn
        self.out = fn()

    def replay(self):
        for dst, src in zip(self.out, self.fn(), strict=True):
            dst.copy_(src)


def make_call(provider: str, cfg: P.Config, mode: str):
    """A function of no arguments returning every output (and every gradient with ``fwdbwd``)
    as a list, with its inputs, weights and upstream gradients fixed on the device."""
    if provider.endswith(OWN_REPLAY_OFF):
        inner = make_call(provider.removesuffix(OWN_REPLAY_OFF), cfg, mode)

        def call_eagerly():
            previous = graphs.set_enabled(False)
            try:
                return inner()
            finally:
                graphs.set_enabled(previous)

        return call_eagerly
    ref = P.make_reference_module(cfg)
    run, params = P.build(provider, ref, cfg)
    x, state = P.make_inputs(cfg)
    if mode == "fwd":

        def call():
            with torch.no_grad():
                y, st = run(x, state)
            return [y, *P.flat_state(st)]

        return call
    leaves = [x.requires_grad_(), *[t.requires_grad_() for t in P.flat_state(state)], *params]
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        y, st = run(x, state)
    # made before capture: a copy from host memory cannot be captured
    ups = [torch.randn(t.shape, generator=gen).to(t) for t in [y, *P.flat_state(st)]]

    def call():
        for t in leaves:
            t.grad = None
        y, st = run(x, state)
        outs = [y, *P.flat_state(st)]
        loss = sum((o * u).sum() for o, u in zip(outs, ups, strict=True))
        loss.backward()
        return [o.detach() for o in outs] + [t.grad for t in leaves]

    return call


def compare(got: list[torch.Tensor], want: list[torch.Tensor]) -> tuple[str, float]:
    diffs = [(a.float() - b.float()).abs().max().item() for a, b in zip(got, want, strict=True)]
    worst = max(diffs)
    if all(torch.equal(a, b) for a, b in zip(got, want, strict=True)):
        return "bitwise equal", worst
    return ("differs" if not worst <= 1e-3 else "close"), worst


def time_interleaved(fns: dict, device: str, rounds: int, min_run_time: float) -> dict:
    """Median ms of each function, its rounds interleaved with the others'."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):  # interleaved, so a drifting clock moves all alike
        for name, fn in fns.items():
            if device == "cuda":
                times[name] += measure.time_round_cuda(fn, min_run_time)
            else:
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def measure_one(provider, cfg, mode, device, rounds, min_run_time) -> dict:
    call = make_call(provider, cfg, mode)
    row = {"provider": provider, "mode": mode}
    try:
        if device == "cuda":
            graph, static = measure.cuda_graph(call)
        else:
            graph = StandIn(call)
            static = graph.out
        row["capture"] = "ok"
    except Exception as exc:  # recorded, and the eager time still measured
        row["capture"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        graph = static = None
    if graph is not None:
        graph.replay()
        measure.sync(device)
        replayed = [t.clone() for t in static]
        eager = [t.clone() for t in call()]
        row["replay_vs_eager"], worst = compare(replayed, eager)
        row["max_abs_diff"] = f"{worst:.3g}"
    measure.warm_up(call, device)
    if graph is None:
        t = time_interleaved({"eager": call}, device, rounds, min_run_time)
        row["eager_ms"] = f"{t['eager']:.4g}"
        return row
    t = time_interleaved({"eager": call, "replay": graph.replay}, device, rounds, min_run_time)
    row.update(eager_ms=f"{t['eager']:.4g}", replay_ms=f"{t['replay']:.4g}",
               eager_over_replay=f"{t['eager'] / t['replay']:.2f}")  # fmt: skip
    return row


def markdown(rows: list[dict], env: str) -> str:
    lines = [
        "# A layer call captured in a CUDA graph: eager against replay",
        "",
        f"{env}. `python bench/graph_replay.py`: `torch.cuda.graph` around the module call "
        "(fwd, no grad) or around forward, loss and backward (fwdbwd); the replay's outputs and "
        "gradients compared with an eager call's; CUDA-event medians of interleaved rounds. "
        "eager / replay above 1 is host time that a replay removes.",
        "",
        "| shape | dtype | mode | provider | capture | replay vs eager | eager (ms) | "
        "replay (ms) | eager / replay |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['dtype']} | {r['mode']} | {r['provider']} | {r['capture']} | "
            f"{r.get('replay_vs_eager', '')} | {r.get('eager_ms', '')} | "
            f"{r.get('replay_ms', '')} | {r.get('eager_over_replay', '')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-run-time", type=float, default=0.1)
    args = ap.parse_args(argv)
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("graph_replay: no CUDA device (--dry-run runs the script on the CPU)")
        return 2
    if device == "cuda":
        name = torch.cuda.get_device_name()
        env = f"{name}, torch {torch.__version__}, triton {measure.versions().get('triton')}"
        out = args.out or RESULTS / ("gpu-" + measure.slug(name))
        backends = [b for b in ("triton", "cuda") if b in fusedrnn.available_backends("cuda")]
    else:
        env = "dry run on the CPU (a stand-in graph)"
        out = args.out or Path("/tmp/graph_replay_dry_run")
        backends = ["cpu" if "cpu" in fusedrnn.available_backends("cpu") else "reference"]
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for label, B, T, I, H, layers, dtype in GPU_SHAPES if device == "cuda" else DRY_SHAPES:  # noqa: E741
        for mode in ("fwd", "fwdbwd"):
            fused = [f"fusedrnn[{b}]" for b in backends]
            if "cuda" in backends:
                fused.append("fusedrnn[cuda]" + OWN_REPLAY_OFF)
            for provider in [P.TORCH_NN, *fused]:
                cfg = P.Config("lstm", mode, B, T, I, H, layers, dtype, device)
                with P.tf32(False):
                    row = measure_one(provider, cfg, mode, device, args.rounds, args.min_run_time)
                row.update(shape=f"{label} B={B} T={T} I={I} H={H} L={layers}",
                           dtype=cfg.dtype_name)  # fmt: skip
                rows.append(row)
                print("graph_replay:", " ".join(f"{k}={row.get(k, '')}" for k in COLUMNS))
                sys.stdout.flush()
                with open(out / "graph_replay.csv", "w", newline="") as f:  # a crash keeps rows
                    w = csv.DictWriter(f, fieldnames=COLUMNS)
                    w.writeheader()
                    w.writerows(rows)
    (out / "graph_replay.md").write_text(markdown(rows, env))
    bad = [r for r in rows if r["capture"] != "ok" or r.get("replay_vs_eager") == "differs"]
    print(f"graph_replay: wrote {out}; {len(bad)} of {len(rows)} rows failed capture or differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
