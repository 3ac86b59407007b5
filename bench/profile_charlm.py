"""Profile one char-LM training iteration: where the time goes, fusedrnn vs torch.nn layers.

    python bench/profile_charlm.py --data /path/to/tinyshakespeare.txt   # ~3.5 min on 2 cores

Three measurements, written to ``--out`` (default bench/results/profile/): results.md, raw.csv
(every timed sample), summary.csv (medians, FLOPs, GFLOP/s, share of peak) and meta.json (the
machine, its load at the start and the end, the FMA peak). The closing section of results.md,
"What the profile says", is written by hand from the tables; a re-run keeps it, marked with the
date of the run it was written for.

1. The trainer's iteration (fusedrnn/charlm/train.py, its loop body reproduced statement by
   statement) split into phases: embedding, each recurrent layer forward and backward, decoder
   and loss forward and backward, embedding backward, gradient clipping, optimizer step, and the
   glue between them. The same model with fusedrnn layers and with torch.nn layers (same seed,
   weights and batches), the two taking turns in blocks of iterations (``--block``; the first
   iteration of a block, which pays for the switch, is not timed) so that both see the same
   load; and the floor: the iteration with the layers at the FMA peak.
2. The recurrent layers at the headline shapes of bench/run.py (LSTM, B=64 T=64 I=128, H=256
   and 512, 2 layers, 2 threads), forward (with grad, as in training) and backward per layer.
3. Adam as a for-loop, ``foreach=True`` and ``fused=True`` on the same recorded gradients:
   step time, and how far the results lie apart, measured against float32 Adam's own rounding
   error (the for-loop's distance from the same steps in float64).

Phases are timed with time.perf_counter at boundaries the model already has: forward hooks on
the embedding, each recurrent layer and the decoder, and tensor hooks on each layer's input and
output, which autograd calls when the backward reaches them. On the CPU every op is synchronous
and the backward runs on the calling thread in graph order, so the stamps split the iteration
without changing the work it does. Sum of per-phase medians and the median of the total differ
slightly; "other" is total minus the named phases of the same iteration.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import gc
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import fusedrnn  # noqa: E402
from bench.measure import cpu_flags, cpu_model, fma_gflops_one_core, versions  # noqa: E402
from fusedrnn.charlm import config as cfgmod  # noqa: E402
from fusedrnn.charlm.data import (  # noqa: E402
    Position,
    StreamBatcher,
    Vocab,
    encode_tensor,
    load_corpus,
    split_corpus,
)
from fusedrnn.charlm.model import CharRNN, detach_state  # noqa: E402
from fusedrnn.charlm.train import _make_optimizer, lr_at  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
IMPLS = ("fusedrnn", "torch")
now = time.perf_counter

# -- the machine ------------------------------------------------------------------------------


def lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return dict(
        (k.strip(), v.strip())
        for k, v in (ln.split(":", 1) for ln in out.splitlines() if ":" in ln)
    )


def cpuinfo_mhz() -> float | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    m = re.search(r"^cpu MHz\s*:\s*([\d.]+)", text, re.M)
    return float(m.group(1)) if m else None


def mm_gflops(threads: int, n: int = 1024, repeats: int = 7) -> float:
    """torch.mm on n x n float32, best of ``repeats``: the practical GEMM roof beside the FMA peak."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = math.inf
    for _ in range(repeats):
        t = now()
        torch.mm(a, b)
        best = min(best, now() - t)
    return 2 * n**3 / best / 1e9


# -- timing helpers ---------------------------------------------------------------------------


def stamp(marks: dict, key: str):
    """A hook (module or tensor) that records the time under ``key`` and changes nothing."""

    def hook(*_):
        marks[key] = now()

    return hook


def instrument(model: CharRNN, marks: dict) -> None:
    """Forward hooks that stamp each module's forward, and on each layer's input and output a
    tensor hook that stamps when the backward reaches it (layer k's backward runs between them)."""
    model.embed.register_forward_pre_hook(stamp(marks, "emb_f0"))
    model.embed.register_forward_hook(stamp(marks, "emb_f1"))
    model.decoder.register_forward_pre_hook(stamp(marks, "head_f0"))
    for k, rnn in enumerate(model.rnns):

        def pre(mod, args, k=k):
            marks[f"L{k}_f0"] = now()
            args[0].register_hook(stamp(marks, f"L{k}_b1"))

        def post(mod, args, out, k=k):
            marks[f"L{k}_f1"] = now()
            out[0].register_hook(stamp(marks, f"L{k}_b0"))

        rnn.register_forward_pre_hook(pre)
        rnn.register_forward_hook(post)


def phase_names(layers: int) -> list[str]:
    return [
        "embedding fwd",
        *[f"layer {k} fwd" for k in range(layers)],
        "decoder+loss fwd",
        "decoder+loss bwd",
        *[f"layer {k} bwd" for k in reversed(range(layers))],
        "embedding bwd",
        "grad clip",
        "optimizer step",
        "other",
        "total",
    ]


def phases(m: dict, layers: int) -> dict[str, float]:
    """Seconds per phase of one iteration from its stamps."""
    last = layers - 1
    p = {"embedding fwd": m["emb_f1"] - m["emb_f0"]}
    for k in range(layers):
        p[f"layer {k} fwd"] = m[f"L{k}_f1"] - m[f"L{k}_f0"]
    p["decoder+loss fwd"] = m["loss"] - m["head_f0"]
    p["decoder+loss bwd"] = m[f"L{last}_b0"] - m["bwd0"]
    for k in reversed(range(layers)):
        p[f"layer {k} bwd"] = m[f"L{k}_b1"] - m[f"L{k}_b0"]
    p["embedding bwd"] = m["bwd1"] - m["L0_b1"]
    p["grad clip"] = m["clip1"] - m["clip0"]
    p["optimizer step"] = m["step1"] - m["step0"]
    total = m["end"] - m["start"]
    p["other"] = total - sum(p.values())
    p["total"] = total
    return p


def record(rows: list, part: str, shape: str, threads: int, impl: str, it: int, phase: str, s):
    """One timed sample (``s`` seconds) as a row of raw.csv."""
    rows.append(dict(part=part, shape=shape, threads=threads, impl=impl, iter=it, phase=phase,
                     ms=1e3 * s))  # fmt: skip


def quantiles(xs: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(xs, n=5, method="inclusive")  # 20 / 40 / 60 / 80 %
    return statistics.median(xs), q[0], q[3]


def lstm_flops(B: int, T: int, I: int, H: int) -> int:  # noqa: E741
    """GEMM FLOPs of one LSTM layer forward, 2·B·T·4H·(I+H); the gate math is not counted.
    The backward does twice that (dgates·W for dx and dh, dgatesᵀ·[x, h] for dW)."""
    return 2 * B * T * 4 * H * (I + H)


def schedule(warmup: int, iters: int, block: int):
    """(impl, timed iteration index, timed?) in the order to run them: each implementation runs
    ``warmup`` untimed iterations, then the two take turns in blocks of ``block`` iterations,
    the first of each block untimed, the order of the two swapped every round, until each has
    ``iters`` timed ones.

    Why blocks: alternating single iterations slows torch.nn's (oneDNN's) iteration far more
    than fusedrnn's: the 2x128 one-thread iteration took 49 ms instead of 37 (block 1 against
    blocks of 10, one process), all of it in the first iteration after a switch (48 ms, the
    others 37). A training loop never switches, so the iteration after one is not timed.
    """
    if block < 2:
        raise ValueError("--block must be at least 2: the first iteration of a block is not timed")
    for impl in IMPLS:
        for _ in range(warmup):
            yield impl, -1, False
    done = dict.fromkeys(IMPLS, 0)
    rnd = 0
    while min(done.values()) < iters:
        for impl in IMPLS if rnd % 2 == 0 else IMPLS[::-1]:
            yield impl, -1, False
            for _ in range(min(block - 1, iters - done[impl])):
                yield impl, done[impl], True
                done[impl] += 1
        rnd += 1


# -- 1. the trainer's iteration ---------------------------------------------------------------


class Run:
    """One implementation's training state: model, optimizer, data position, carried state."""

    def __init__(self, model: CharRNN, cfg: dict, batcher: StreamBatcher):
        self.model, self.cfg, self.batcher = model, cfg, batcher
        self.opt = _make_optimizer(cfg, model.parameters())
        self.pos, self.it, self.state = Position(), 0, None
        self.marks: dict[str, float] = {}
        instrument(model, self.marks)


def train_step(r: Run) -> float:
    """The body of the training loop in fusedrnn/charlm/train.py (single process, CPU, float32),
    statement by statement; the ``m[...] = now()`` lines are the only additions."""
    m, cfg, model, optimizer = r.marks, r.cfg, r.model, r.opt
    m["start"] = now()
    x, y = r.batcher.get(r.pos)
    x, y = x.to("cpu", non_blocking=True), y.to("cpu", non_blocking=True)
    if r.pos.batch == 0:
        r.state = None
    for g in optimizer.param_groups:
        g["lr"] = lr_at(cfg, r.it)
    with torch.autocast("cpu", dtype=None, enabled=False):
        logits, r.state = model(x, r.state)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))
    m["loss"] = now()
    optimizer.zero_grad(set_to_none=True)
    m["bwd0"] = now()
    loss.backward()
    m["bwd1"] = now()
    loss_val = loss.item()
    if not math.isfinite(loss_val):
        raise RuntimeError(f"the loss became {loss_val}")
    m["clip0"] = now()
    if cfg["grad_clip"] > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
    m["clip1"] = m["step0"] = now()
    optimizer.step()
    m["step1"] = now()
    r.state = detach_state(r.state)
    r.it += 1
    r.pos = r.batcher.advance(r.pos)
    m["end"] = now()
    return loss_val


def make_runs(batcher: StreamBatcher, vocab: Vocab, cfg: dict) -> dict[str, Run]:
    """Both implementations with the weights of one seeded init (the trainer seeds the same)."""
    torch.manual_seed(cfg["seed"])
    arch = (vocab.size, cfg["model"], cfg["hidden"], cfg["layers"], cfg["embed"], cfg["dropout"])
    models = {impl: CharRNN(*arch, impl=impl) for impl in IMPLS}
    models["torch"].load_state_dict(models["fusedrnn"].state_dict())
    for mdl in models.values():
        mdl.train()
    return {impl: Run(mdl, cfg, batcher) for impl, mdl in models.items()}


def profile_charlm(
    ids, vocab, size: dict, threads: int, warmup: int, iters: int, block: int, rows, flops
):
    torch.set_num_threads(threads)
    cfg = {**cfgmod.DEFAULTS, "model": "lstm", "layers": 2, "embed": 64, **size}
    batcher = StreamBatcher(ids, cfg["batch_size"], cfg["seq_len"])
    runs = make_runs(batcher, vocab, cfg)
    label = f"2x{cfg['hidden']} B={cfg['batch_size']} T={cfg['seq_len']}"
    names = phase_names(cfg["layers"])
    for k in range(cfg["layers"]):
        in_size = cfg["embed"] if k == 0 else cfg["hidden"]
        fwd = lstm_flops(cfg["batch_size"], cfg["seq_len"], in_size, cfg["hidden"])
        flops["charlm", label, f"layer {k} fwd"] = fwd
        flops["charlm", label, f"layer {k} bwd"] = 2 * fwd
    losses: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    gc.disable()  # a collection landing inside one phase would be charged to it
    try:
        for impl, it, timed in schedule(warmup, iters, block):
            gc.collect()
            losses[impl].append(train_step(runs[impl]))
            if timed:
                p = phases(runs[impl].marks, cfg["layers"])
                for name in names:
                    record(rows, "charlm", label, threads, impl, it, name, p[name])
    finally:
        gc.enable()
    # the same batches in the same order for both: their losses must agree iteration by iteration
    max_dloss = max(abs(a - b) for a, b in zip(*losses.values(), strict=True))
    print(f"  {label} threads={threads}: max |loss fusedrnn - loss torch.nn| = {max_dloss:.2e}")
    return {"shape": label, "threads": threads, "max_abs_loss_diff": max_dloss, "cfg": cfg}


# -- 2. bench/run.py's headline LSTM, per layer -----------------------------------------------


def profile_headline(B, T, I, H, layers, threads, warmup, iters, block, rows, flops) -> str:  # noqa: E741
    """Single-layer modules chained (the charlm's layout), time-major as bench/run.py feeds them,
    a random initial state; forward with grad as in training, then backward of out·g."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    ref = [nn.LSTM(I if k == 0 else H, H) for k in range(layers)]
    stacks = {
        "torch": ref,
        "fusedrnn": [fusedrnn.LSTM(I if k == 0 else H, H) for k in range(layers)],
    }
    for f, t in zip(stacks["fusedrnn"], ref, strict=True):
        f.load_state_dict(t.state_dict())
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(T, B, I, generator=gen)
    s0 = [
        (0.5 * torch.randn(1, B, H, generator=gen), 0.5 * torch.randn(1, B, H, generator=gen))
        for _ in range(layers)
    ]
    g = torch.randn(T, B, H, generator=gen)
    label = f"B={B} T={T} I={I} H={H} L={layers}"
    for k in range(layers):
        flops["headline", label, f"layer {k} fwd"] = lstm_flops(B, T, I if k == 0 else H, H)
        flops["headline", label, f"layer {k} bwd"] = 2 * lstm_flops(B, T, I if k == 0 else H, H)
    gc.disable()
    try:
        for impl, it, timed in schedule(warmup, iters, block):
            gc.collect()
            m: dict[str, float] = {}
            x = x0.clone().requires_grad_(True)
            y = x
            for k, layer in enumerate(stacks[impl]):
                y.register_hook(stamp(m, f"b1_{k}"))  # the backward has left layer k
                m[f"f0_{k}"] = now()
                y, _ = layer(y, s0[k])
                m[f"f1_{k}"] = now()
                y.register_hook(stamp(m, f"b0_{k}"))  # the backward enters layer k
            y.backward(g)
            for layer in stacks[impl]:
                layer.zero_grad(set_to_none=True)
            if not timed:
                continue
            for k in range(layers):
                fwd, bwd = m[f"f1_{k}"] - m[f"f0_{k}"], m[f"b1_{k}"] - m[f"b0_{k}"]
                record(rows, "headline", label, threads, impl, it, f"layer {k} fwd", fwd)
                record(rows, "headline", label, threads, impl, it, f"layer {k} bwd", bwd)
    finally:
        gc.enable()
    return label


# -- 3. Adam: for-loop, foreach, fused --------------------------------------------------------

ADAM_VARIANTS = {
    "for-loop (foreach=False)": {"foreach": False},
    "foreach=True": {"foreach": True},
    "fused=True (the trainer's)": {"fused": True},
}


def record_grads(ids, vocab, size: dict, n: int):
    """Initial weights and the clipped gradients of ``n`` real training iterations (fusedrnn)."""
    cfg = {**cfgmod.DEFAULTS, "model": "lstm", "layers": 2, "embed": 64, **size}
    run = make_runs(StreamBatcher(ids, cfg["batch_size"], cfg["seq_len"]), vocab, cfg)["fusedrnn"]
    params = list(run.model.parameters())
    init = [p.detach().clone() for p in params]
    grads = []
    for _ in range(n):
        train_step(run)  # the trainer's step; the grads it leaves are the clipped ones it used
        grads.append([p.grad.detach().clone() for p in params])
    return cfg, init, grads


def max_abs_diff(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> float:
    return max((x.double() - y.double()).abs().max().item() for x, y in zip(xs, ys, strict=True))


def profile_adam(cfg, init, grads, threads: int, rows: list, label: str) -> dict:
    torch.set_num_threads(threads)
    kw = {"lr": cfg["lr"], "weight_decay": cfg["weight_decay"]}
    params = {v: [t.clone().requires_grad_(True) for t in init] for v in ADAM_VARIANTS}
    opts = {v: torch.optim.Adam(params[v], **kw, **o) for v, o in ADAM_VARIANTS.items()}
    p64 = [t.double().requires_grad_(True) for t in init]
    opt64 = torch.optim.Adam(p64, **kw, foreach=False)
    gc.disable()
    try:
        for i, gs in enumerate(grads):
            order = list(ADAM_VARIANTS)
            order = order[i % len(order) :] + order[: i % len(order)]  # rotate the order
            for v in order:
                # collect before writing the grads, not after: in the trainer clipping has just
                # read them, so they are in cache when the step starts
                gc.collect()
                for p, gr in zip(params[v], gs, strict=True):
                    p.grad = gr.clone()
                t = now()
                opts[v].step()
                t = now() - t
                if i > 0:  # the first step also allocates the moments
                    record(rows, "adam", label, threads, v, i - 1, "optimizer step", t)
            for p, gr in zip(p64, gs, strict=True):
                p.grad = gr.double()
            opt64.step()
    finally:
        gc.enable()
    # Float32 Adam's own rounding error is the for-loop's distance from float64: a variant
    # within that distance of the for-loop differs by rounding only.
    base = params["for-loop (foreach=False)"]
    return {
        v: {
            "max_abs_vs_forloop": max_abs_diff(params[v], base),
            "max_abs_vs_float64": max_abs_diff(params[v], p64),
        }
        for v in ADAM_VARIANTS
    }


# -- report -----------------------------------------------------------------------------------


def summarise(rows: list, flops: dict, peak_core: float) -> list[dict]:
    """Medians per (part, shape, threads, impl, phase), with FLOPs and rates for the layers."""
    keys = ("part", "shape", "threads", "impl", "phase")
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r["ms"])
    out = []
    for key, xs in groups.items():
        med, p20, p80 = quantiles(xs)
        rec = dict(zip(keys, key, strict=True)) | {"median_ms": med, "p20_ms": p20, "p80_ms": p80}
        rec["samples"] = len(xs)
        n = flops.get((rec["part"], rec["shape"], rec["phase"]))
        if n:
            gflops = n / med / 1e6  # med is in ms
            rec |= {"flops": n, "gflops": gflops, "pct_core_peak": 100 * gflops / peak_core}
            rec["pct_threads_peak"] = 100 * gflops / (peak_core * rec["threads"])
        out.append(rec)
    return out


def iteration_floor(S: dict, c: dict, peak_core: float) -> tuple[float, float]:
    """(ms, GFLOP): the char-LM iteration with its layers' GEMMs at the FMA peak of the threads
    used and every other phase at the faster implementation's median; no implementation of the
    layers can beat it without doing less arithmetic."""
    shape, th, L = c["shape"], c["threads"], c["cfg"]["layers"]
    layers = [p for p in phase_names(L) if p.startswith("layer")]
    rest = [p for p in phase_names(L) if not p.startswith("layer") and p != "total"]
    rest_ms = sum(min(S["charlm", shape, th, i, p]["median_ms"] for i in IMPLS) for p in rest)
    n = sum(S["charlm", shape, th, "fusedrnn", p]["flops"] for p in layers)
    return rest_ms + n / (peak_core * th) / 1e6, n / 1e9


def md_table(header: str, body: list[list]) -> list[str]:
    cols = header.split("|")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in body]


def fmt(ms: float) -> str:
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def rate(s: dict) -> list[str]:
    """ms, GFLOP/s and share of peak of one summary row of a layer."""
    return [fmt(s["median_ms"]), f"{s['gflops']:.1f}", f"{s['pct_threads_peak']:.0f} %"]


RATE_HEAD = "MFLOP|fusedrnn ms|GFLOP/s|% peak|torch.nn ms|GFLOP/s|% peak"


def write_report(out: Path, summary: list, meta: dict, charlm: list, adam: dict) -> None:
    S = {(s["part"], s["shape"], s["threads"], s["impl"], s["phase"]): s for s in summary}
    peak = meta["peak"]
    mm = peak["torch_mm_1024_gflops"]
    nominal = ""
    if peak["cpuinfo_mhz"] and 32 * peak["cpuinfo_mhz"] / 1e3 < mm[1]:
        nominal = (f" (under a hypervisor the nominal clock: a peak computed from it, "
                   f"{32 * peak['cpuinfo_mhz'] / 1e3:.0f} GFLOP/s, lies below what torch.mm "
                   "reaches on one core)")  # fmt: skip
    fma0, fma1 = (peak[k] or math.nan for k in ("fma_loop_gflops", "fma_loop_gflops_end"))
    L = [
        "# Profile of one char-LM training iteration: fusedrnn vs torch.nn layers",
        "",
        f"Measured {meta['date']} with `{meta['command']}` in {meta['elapsed_s'] / 60:.1f} min.",
        "",
        f"- Machine: {meta['cpu_model']}, {meta['cores']} cores x {meta['threads_per_core']} "
        f"thread(s) ({meta['hypervisor']}), torch {meta['torch']}, fusedrnn backend "
        f"`{meta['fusedrnn_backend']}`.",
        f"- Shared machine: other work may have run beside this profile (1-minute load average "
        f"{meta['load_start'][0]:.2f} at the start, {meta['load_end'][0]:.2f} at the end; the "
        f"profile itself adds up to 2). The two implementations took turns in blocks of "
        f"{meta['block']} iterations, the first of each block not timed (torch.nn's 2x128 "
        "iteration right after a fusedrnn one took 48 ms against 37, one thread, measured "
        "apart; a training loop never switches), so both see the same load without paying "
        "for the switch.",
        f"- Peak: {peak['formula']}. Clock {peak['clock_ghz']:.2f} GHz, {peak['clock_source']} "
        f"({fma0:.0f} GFLOP/s at the start, {fma1:.0f} at the end); the kernel's cpuinfo reports "
        f"{peak['cpuinfo_mhz']} MHz{nominal}. "
        f"Per-core peak **{peak['core_gflops']:.0f} GFLOP/s**. For scale, torch.mm on 1024² "
        f"float32 (best of 7) reaches {mm[1]:.0f} GFLOP/s on 1 thread "
        f"({100 * mm[1] / peak['core_gflops']:.0f} % of one core's peak) and {mm[2]:.0f} on 2 "
        f"({50 * mm[2] / peak['core_gflops']:.0f} % of two cores'). `% peak` is against "
        "threads x that (one core's peak for 1 thread, two cores' for 2; summary.csv also has "
        "the share of one core's peak, pct_core_peak).",
        "- Times are medians over the timed iterations (p20 / p80 and every sample in the CSVs), "
        "in ms; `%` is the share of the median iteration; `x` is torch.nn time / fusedrnn time.",
        "- Layer FLOPs count the GEMMs only: forward 2·B·T·4H·(I+H) per layer, backward twice "
        "that; gate math, embedding and decoder are not counted.",
        "",
        "## 1. One training iteration, phase by phase",
        "",
        "The trainer's loop body (fusedrnn/charlm/train.py) with its defaults: LSTM, embed 64, "
        "Adam as `_make_optimizer` builds it (fused), lr 2e-3, grad clip 5, carried hidden state; "
        "tinyshakespeare, the same batches for both. *other*: batch slicing, learning-rate set, "
        "state slicing/joining, dropout(p=0) between layers, zero_grad, loss.item(), detach.",
        "",
    ]
    for c in charlm:
        shape, th = c["shape"], c["threads"]
        tot = {i: S["charlm", shape, th, i, "total"]["median_ms"] for i in IMPLS}
        body = []
        for ph in phase_names(c["cfg"]["layers"]):
            f, t = (S["charlm", shape, th, i, ph]["median_ms"] for i in IMPLS)
            name = ph if ph != "total" else "**iteration (median)**"
            share_f, share_t = (
                f"{100 * f / tot['fusedrnn']:.0f} %",
                f"{100 * t / tot['torch']:.0f} %",
            )
            body.append([name, fmt(f), share_f, fmt(t), share_t, f"{t / f:.2f}x"])
        L += [f"### LSTM {shape}, {th} thread(s)", ""]
        L += md_table("phase|fusedrnn ms|%|torch.nn ms|%|x", body)
        floor, layers_gflop = iteration_floor(S, c, peak["core_gflops"])
        L += ["", "Same weights and batches: the losses of the two agree to "
              f"{c['max_abs_loss_diff']:.1e} over the iterations. If the layers' "
              f"{layers_gflop:.2f} GFLOP ran at the FMA peak of {th} core(s) and the rest took "
              f"the faster of the two medians, the iteration would take {fmt(floor)} ms: "
              f"**at most {tot['torch'] / floor:.2f}x** torch.nn's median.", ""]  # fmt: skip
    L += ["### The recurrent layers in the iteration: FLOPs and rates", ""]
    body = []
    for c in charlm:
        for ph in [p for p in phase_names(c["cfg"]["layers"]) if p.startswith("layer")]:
            f, t = (S["charlm", c["shape"], c["threads"], i, ph] for i in IMPLS)
            body.append(
                [c["shape"], c["threads"], ph, f"{f['flops'] / 1e6:.0f}", *rate(f), *rate(t)]
            )
    L += md_table("model|threads|layer|" + RATE_HEAD, body)
    L += [
        "",
        "## 2. bench/run.py's headline LSTM, per layer",
        "",
        "Two single-layer LSTMs chained, time-major input, random initial state, "
        f"{meta['headline_threads']} threads; forward with grad (as in training), backward of "
        "out·g with grad for the input. bench/run.py times a 2-layer module in one call, so "
        "sums here are close to, not equal to, its forward+backward rows.",
        "",
    ]
    body = []
    for shape in meta["headline_shapes"]:
        for ph in ("layer 0 fwd", "layer 1 fwd", "layer 1 bwd", "layer 0 bwd"):
            f, t = (S["headline", shape, meta["headline_threads"], i, ph] for i in IMPLS)
            x = f"{t['median_ms'] / f['median_ms']:.2f}x"
            body.append([shape, ph, f"{f['flops'] / 1e6:.0f}", *rate(f), *rate(t), x])
    L += md_table("shape|layer|" + RATE_HEAD + "|x", body)
    L += [
        "",
        "## 3. Adam on the CPU: for-loop, foreach, fused",
        "",
        f"The same {meta['adam_steps']} recorded, clipped gradients of real training "
        "iterations replayed through each variant from the same weights, steps interleaved; "
        "the first step (which allocates the moments) not timed. Differences: the largest "
        "|difference| over all parameters after the last step, against the for-loop and "
        "against the same steps in float64. The for-loop's own distance from float64 is the "
        "rounding error of float32 Adam; *vs rounding* is a variant's distance from the "
        "for-loop divided by it (about 1 or below: a rounding difference).",
        "",
    ]
    body = []
    for (shape, th), res in adam.items():
        base = S["adam", shape, th, "for-loop (foreach=False)", "optimizer step"]["median_ms"]
        rounding = res["for-loop (foreach=False)"]["max_abs_vs_float64"]
        for v, r in res.items():
            ms = S["adam", shape, th, v, "optimizer step"]["median_ms"]
            d1, d64 = r["max_abs_vs_forloop"], r["max_abs_vs_float64"]
            body.append([shape, th, v, fmt(ms), f"{base / ms:.2f}x", f"{d1:.2g}", f"{d64:.2g}",
                         f"{d1 / rounding:.2f}"])  # fmt: skip
    L += md_table("model|threads|Adam|step ms|speed-up vs for-loop|max diff vs for-loop|"
                  "max diff vs float64|vs rounding", body)  # fmt: skip
    L.append("")
    (out / "results.md").write_text(keep_findings(out / "results.md", "\n".join(L)))


FINDINGS = "## What the profile says"


def keep_findings(path: Path, text: str) -> str:
    """Carry the hand-written closing section over a re-run, marked as belonging to the run it
    was written for, so that new tables never silently sit under old conclusions."""
    if not path.exists() or FINDINGS not in path.read_text():
        return text
    old = path.read_text()
    section = old[old.index(FINDINGS) :]
    date = re.search(r"^Measured (.+?) with", old, re.M)
    note = f"\n_Written for the run of {date.group(1) if date else 'an earlier date'}._"
    if "_Written for the run of" not in section:
        section = section.replace(FINDINGS, FINDINGS + "\n" + note, 1)
    return text + "\n" + section


# -- main -------------------------------------------------------------------------------------


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "profile"))
    ap.add_argument("--iters", type=int, default=15, help="timed iterations per configuration")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--block", type=int, default=6, help="iterations of one implementation a turn")
    ap.add_argument("--threads", default="1,2", help="torch threads of the char-LM profile")
    ap.add_argument("--big-batch", type=int, default=64, help="batch size of the 2x512 model")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start, load_start = now(), os.getloadavg()
    backend = fusedrnn.backends.resolve(None, "cpu")
    if backend != "cpu":
        sys.exit("the compiled CPU backend of fusedrnn is not available: nothing to profile")

    cpu = lscpu()
    mhz = cpuinfo_mhz()
    fma = fma_gflops_one_core()
    lanes, isa = (16, "AVX-512") if "avx512f" in cpu_flags() else (8, "AVX2")
    flop_per_cycle = 2 * lanes * 2  # 2 FMA units x lanes x 2 flop per cycle
    if fma is not None:
        clock = fma / flop_per_cycle
        source = f"measured: an {isa} FMA loop (10 chains) on one core, best of 7"
    else:
        clock, source = (
            (mhz or float("nan")) / 1e3,
            "from the kernel's cpuinfo (no FMA loop possible)",
        )
    peak_core = flop_per_cycle * clock
    print(f"per-core fp32 FMA peak {peak_core:.1f} GFLOP/s ({clock:.2f} GHz, {source})")
    mm = {th: mm_gflops(th) for th in (1, 2)}

    text = load_corpus(args.data)
    vocab = Vocab.from_text(text)
    train_text, _, _ = split_corpus(text, cfgmod.DEFAULTS["val_frac"], cfgmod.DEFAULTS["test_frac"])
    ids = encode_tensor(vocab, train_text)
    sizes = [
        {"hidden": 128, "batch_size": 32, "seq_len": 64},
        {"hidden": 512, "batch_size": args.big_batch, "seq_len": 64},
    ]
    threads = [int(t) for t in args.threads.split(",")]
    rows: list[dict] = []
    flops: dict[tuple, int] = {}
    charlm = []
    print("1. char-LM iteration")
    for size in sizes:
        for th in threads:
            charlm.append(
                profile_charlm(
                    ids, vocab, size, th, args.warmup, args.iters, args.block, rows, flops
                )
            )

    print("2. headline layers")
    hl_threads = 2
    hl = [
        profile_headline(
            64, 64, 128, H, 2, hl_threads, args.warmup, args.iters, args.block, rows, flops
        )
        for H in (256, 512)
    ]

    print("3. Adam variants")
    adam = {}
    adam_steps = args.iters + 3  # the first is not timed
    for size in sizes:
        cfg, init, grads = record_grads(ids, vocab, size, adam_steps)
        label = f"2x{cfg['hidden']} B={cfg['batch_size']} T={cfg['seq_len']}"
        for th in threads:
            adam[label, th] = profile_adam(cfg, init, grads, th, rows, label)

    summary = summarise(rows, flops, peak_core)
    load_end = os.getloadavg()
    fma_end = fma_gflops_one_core()  # the clock under the end's load, for the record
    meta = {
        "cpu_model": cpu_model(),
        "cores": int(cpu.get("Core(s) per socket", "0")) * int(cpu.get("Socket(s)", "1")),
        "cpus": int(cpu.get("CPU(s)", os.cpu_count() or 0)),
        "threads_per_core": int(cpu.get("Thread(s) per core", "1")),
        "hypervisor": f"{cpu['Hypervisor vendor']} virtual machine"
        if "Hypervisor vendor" in cpu
        else "bare metal",
        **versions(),
        "python": platform.python_version(),
        "fusedrnn_backend": backend,
        "torch_threads": threads,
        "headline_threads": hl_threads,
        "headline_shapes": hl,
        "adam_steps": adam_steps,
        "block": args.block,
        "load_start": [round(x, 2) for x in load_start],
        "load_end": [round(x, 2) for x in load_end],
        "peak": {
            "formula": f"2 FMA units x {lanes} fp32 lanes ({isa}) x 2 flop x clock, per core",
            "clock_ghz": clock,
            "clock_source": source,
            "cpuinfo_mhz": mhz,
            "fma_loop_gflops": fma,
            "fma_loop_gflops_end": fma_end,
            "core_gflops": peak_core,
            "torch_mm_1024_gflops": mm,
        },
        "data": {"file": Path(args.data).name, "chars": len(text), "vocab": vocab.size},
        "iters": args.iters,
        "warmup": args.warmup,
        # the data path cut to its file name: results must not name this machine's directories
        "command": " ".join(
            ["python bench/profile_charlm.py"]
            + [Path(a).name if os.path.isabs(a) else a for a in (argv or sys.argv[1:])]
        ),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "elapsed_s": now() - t_start,
    }
    with open(out / "raw.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    fields = list(summary[0]) + ["flops", "gflops", "pct_core_peak", "pct_threads_peak"]
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(fields)))
        w.writeheader()
        w.writerows(summary)
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    write_report(out, summary, meta, charlm, adam)
    print(f"wrote {out}/results.md, raw.csv, summary.csv, meta.json in {meta['elapsed_s']:.0f} s")


if __name__ == "__main__":
    main()
