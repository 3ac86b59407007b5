"""Char-LM speed: validation loss against training time, fusedrnn vs torch.nn, and sampling speed.

Trains the same model (same seed, data, batches and initial weights) once per implementation of
the recurrent layers, each for the same wall-clock budget, evaluates the full validation split
(the last 10% of the text, as nanoGPT does) every ``--eval-every`` iterations, and reports when
each run first reaches ``--target`` nats/char, measured in training-step time (evaluation,
sampling and checkpointing excluded; they are identical work for both). Then it measures batch-1
sampling throughput of both implementations on the same trained weights.

    python bench/charlm_speed.py                        # tinyshakespeare, 2x256 LSTM, 8 min each
    python bench/charlm_speed.py --budget 60 --hidden 128   # a quick look
    python bench/charlm_speed.py --recipe --out bench/results/tinyshakespeare  # README recipe

Results go to ``--out`` (default bench/results/charlm): results.json, results.md, val_loss.png,
metrics_<impl>.csv; each run's directory (checkpoints) under tmp/.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from fusedrnn.charlm.checkpoint import load_checkpoint  # noqa: E402
from fusedrnn.charlm.sample import generate  # noqa: E402
from fusedrnn.charlm.train import train  # noqa: E402

SHOWN_SAMPLE_CHARS = 600
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def portable(value):
    """``value`` with every absolute path made relative to the repository (or cut to its file
    name when outside it): committed results must not name the directories of the machine that
    wrote them."""
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        p = Path(value)
        try:
            return p.resolve().relative_to(ROOT.resolve()).as_posix()
        except ValueError:
            return p.name
    return value


# The README's tinyshakespeare recipe (the same settings as its `fusedrnn-charlm train` command).
RECIPE: dict = {
    "hidden": 512,
    "layers": 2,
    "embed": 64,
    "dropout": 0.2,
    "batch_size": 64,
    "seq_len": 128,
    "lr": 3e-3,
    "lr_schedule": "cosine",
    "warmup": 50,
    "min_lr": 1e-4,
    "max_iters": 1300,
    "threads": 2,
    "target": 1.45,
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--impls", default="fusedrnn,torch", help="comma-separated, run in this order")
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds of wall time per run (default 480 unless --max-iters is given)",
    )
    p.add_argument("--max-iters", type=int, default=None, help="optimizer steps per run")
    p.add_argument("--model", default="lstm")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--embed", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--lr-schedule", default="constant", choices=["constant", "cosine"])
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--min-lr", type=float, default=0.0)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-max-chars", type=int, default=0, help="0: the whole val split")
    p.add_argument("--target", type=float, default=1.7, help="val loss (nats/char) to reach")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument(
        "--parallel",
        action="store_true",
        help="run the implementations at the same time, one process each: on a shared machine "
        "both then see the same background load",
    )
    p.add_argument("--backend", default=None, help="fusedrnn backend (default: automatic)")
    p.add_argument("--sample-chars", type=int, default=2000)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "charlm"))
    p.add_argument(
        "--recipe",
        action="store_true",
        help="the README's tinyshakespeare recipe: "
        + ", ".join(f"{k} {v}" for k, v in RECIPE.items())
        + " (flags given beside it win)",
    )
    a = p.parse_args(argv)
    if a.recipe:
        given = {arg.split("=")[0] for arg in (argv if argv is not None else sys.argv[1:])}
        for key, value in RECIPE.items():
            if "--" + key.replace("_", "-") not in given:
                setattr(a, key, value)
    if a.budget is None and a.max_iters is None:
        a.budget = 480.0
    return a


def read_curve(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [
            {
                "iter": int(r["iter"]),
                "train_s": float(r["train_s"]),
                "train_cpu_s": float(r["train_cpu_s"]),
                "elapsed_s": float(r["elapsed_s"]),
                "val_loss": float(r["val_loss"]),
            }
            for r in csv.DictReader(f)
            if r["val_loss"]
        ]


def first_below(curve: list[dict], target: float) -> dict | None:
    for r in curve:
        if r["val_loss"] <= target:
            return r
    return None


def sampling_speed(ckpt: Path, impl: str, backend, n: int, seed: int) -> dict:
    """Batch-1 generation of n characters: wall and process-CPU throughput."""
    model, vocab, _ = load_checkpoint(
        ckpt, impl=impl, backend=backend if impl == "fusedrnn" else None
    )
    generate(model, vocab, "\n", 50, 1.0, generator=torch.Generator().manual_seed(seed))  # warm
    t, c = time.perf_counter(), time.process_time()
    text = generate(model, vocab, "\n", n, 1.0, generator=torch.Generator().manual_seed(seed))
    dt, dc = time.perf_counter() - t, time.process_time() - c
    return {
        "chars": n,
        "seconds": dt,
        "cpu_seconds": dc,
        "chars_per_s": n / dt,
        "chars_per_cpu_s": n / dc,
        "text": text,
    }


def _train_proc(cfg: dict, threads: int) -> None:
    torch.set_num_threads(threads)
    train(cfg)


def plot(results: dict, path: Path, target: float) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    for impl, r in results["runs"].items():
        c = r["curve"]
        ax.plot([x["train_s"] for x in c], [x["val_loss"] for x in c], "o-", ms=3, label=impl)
    ax.axhline(target, color="gray", lw=0.8, ls="--")
    ax.set_xlabel("training time (s, evaluation excluded)")
    ax.set_ylabel("val loss (nats/char)")
    ax.set_title(results["config_desc"], fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    a = parse_args(argv)
    if not Path(a.data).is_file():
        print(f"data file not found: {a.data}", file=sys.stderr)
        return 1
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    impls = [s for s in a.impls.split(",") if s]
    schedule = f" cosine to {a.min_lr} after {a.warmup} warmup" if a.lr_schedule == "cosine" else ""
    stop = " ".join(
        x
        for x in (
            f"{a.max_iters} iterations" if a.max_iters else "",
            f"budget {a.budget:.0f}s" if a.budget else "",
        )
        if x
    )
    desc = (
        f"{a.model} {a.layers}x{a.hidden}, embed {a.embed}, dropout {a.dropout}, batch "
        f"{a.batch_size}x{a.seq_len}, Adam lr {a.lr}{schedule}, {a.threads} thread(s), {stop}"
    )
    results: dict = {
        "config_desc": desc,
        "args": vars(a),
        "mode": "parallel (one process per implementation)" if a.parallel else "sequential",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
        },
        "runs": {},
    }
    from fusedrnn import available_backends

    results["machine"]["fusedrnn_backends"] = available_backends("cpu")
    cfgs: dict[str, dict] = {}
    for impl in impls:
        run_dir = out / "tmp" / f"run_{impl}"  # checkpoints: kept out of version control
        cfg = {
            "data": a.data,
            "val_frac": 0.1,
            "test_frac": 0.0,
            "model": a.model,
            "hidden": a.hidden,
            "layers": a.layers,
            "embed": a.embed,
            "batch_size": a.batch_size,
            "seq_len": a.seq_len,
            "lr": a.lr,
            "eval_every": a.eval_every,
            "eval_max_chars": a.eval_max_chars,
            "time_budget": a.budget,
            "max_iters": a.max_iters,
            "dropout": a.dropout,
            "lr_schedule": a.lr_schedule,
            "warmup": a.warmup,
            "min_lr": a.min_lr,
            "impl": impl,
            "backend": a.backend if impl == "fusedrnn" else None,
            "seed": a.seed,
            "out": str(run_dir),
            "sample_every": 0,
            "progress": False,
            "log_every": 50,
            "quiet": a.parallel,  # two interleaved progress streams would be unreadable
        }
        if run_dir.exists():
            for f in ("metrics.csv", "last.pt", "best.pt", "samples.txt", "samples.jsonl"):
                (run_dir / f).unlink(missing_ok=True)
        cfgs[impl] = cfg
    if a.parallel:
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_train_proc, args=(c, a.threads)) for c in cfgs.values()]
        print(f"== {', '.join(impls)} in parallel: {desc}", flush=True)
        for p in procs:
            p.start()
        for p in procs:
            p.join()
            if p.exitcode != 0:
                print(f"a training process failed (exit {p.exitcode})", file=sys.stderr)
                return 1
    for impl, cfg in cfgs.items():
        run_dir = Path(cfg["out"])
        if a.parallel:
            summary = json.loads((run_dir / "summary.json").read_text())
        else:
            print(f"== {impl}: {desc}", flush=True)
            summary = train(cfg)
        curve = read_curve(run_dir)
        shutil.copy(run_dir / "metrics.csv", out / f"metrics_{impl}.csv")
        hit = first_below(curve, a.target)
        results["runs"][impl] = {
            "summary": summary,
            "curve": curve,
            "train_chars_per_s": summary["chars_per_s"],
            "target_reached": hit,
        }
    ref_ckpt = out / "tmp" / f"run_{impls[0]}" / "last.pt"
    results["sampling"] = {
        impl: sampling_speed(ref_ckpt, impl, a.backend, a.sample_chars, a.seed) for impl in impls
    }
    has_png = plot(results, out / "val_loss.png", a.target)

    lines = [
        f"# Char-LM speed: {desc}",
        "",
        f"Data: {portable(a.data)} (last 10% = validation); {results['mode']}; machine: "
        f"{results['machine']['processor'] or results['machine']['platform']}, "
        f"torch {torch.__version__}, fusedrnn cpu backends {available_backends('cpu')}",
        "",
        "Times are training-step time (evaluation excluded), wall clock and process CPU.",
        "",
        f"| impl | iters | train chars/s (wall) | chars/CPU-s | best val loss | reaches {a.target}"
        " at iter | wall s | CPU s | sampling chars/s (wall) | chars/CPU-s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for impl, r in results["runs"].items():
        s = r["summary"]
        hit = r["target_reached"]
        smp = results["sampling"][impl]
        cpu_rate = s["iters_this_run"] * a.batch_size * a.seq_len / max(s["train_cpu_s"], 1e-9)
        r["train_chars_per_cpu_s"] = cpu_rate
        at = (
            f"{hit['iter']} | {hit['train_s']:.1f} | {hit['train_cpu_s']:.1f}"
            if hit
            else "not reached | - | -"
        )
        lines.append(
            f"| {impl} | {s['iters']} | {r['train_chars_per_s']:,.0f} | {cpu_rate:,.0f} | "
            f"{s['best_val_loss']:.4f} | {at} | {smp['chars_per_s']:,.0f} | "
            f"{smp['chars_per_cpu_s']:,.0f} |"
        )
    if len(impls) == 2:
        i0, i1 = impls
        r0, r1 = results["runs"][i0], results["runs"][i1]
        h0, h1 = r0["target_reached"], r1["target_reached"]
        lines.append("")
        if h0 and h1:
            lines.append(
                f"Time to {a.target} nats, {i1} / {i0}: wall {h1['train_s'] / h0['train_s']:.2f}x,"
                f" CPU {h1['train_cpu_s'] / h0['train_cpu_s']:.2f}x"
            )
        lines.append(
            f"Training throughput, {i0} / {i1}: wall "
            f"{r0['train_chars_per_s'] / r1['train_chars_per_s']:.2f}x, CPU "
            f"{r0['train_chars_per_cpu_s'] / r1['train_chars_per_cpu_s']:.2f}x"
        )
        s0, s1 = (results["sampling"][i] for i in impls)
        lines.append(
            f"Sampling throughput, {i0} / {i1}: wall {s0['chars_per_s'] / s1['chars_per_s']:.2f}x,"
            f" CPU {s0['chars_per_cpu_s'] / s1['chars_per_cpu_s']:.2f}x"
        )
    if has_png:
        lines += ["", "![val loss](val_loss.png)"]
    shown = results["sampling"][impls[0]]["text"][:SHOWN_SAMPLE_CHARS]
    lines += [
        "",
        f"Sample from the {impls[0]} run's last weights (prime a newline, temperature 1.0, "
        f"seed {a.seed}, first {len(shown)} of {a.sample_chars} characters):",
        "",
        "```text",
        shown.strip("\n"),
        "```",
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    with open(out / "results.json", "w") as f:
        json.dump(portable(results), f, indent=2, default=str)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
