"""Cell variants: the fused layer ops against the same models written as PyTorch loops.

    python bench/variants.py                  # CPU, 2 threads -> bench/results/<tag>/variants.*
    python bench/variants.py --quick --out /tmp/v   # tiny shapes, harness check only

Headline (the goal): a 2-layer LayerNorm-LSTM, input 128, B=64, T=64, H=256, float32, forward
+backward, fused cpu backend ≥ 4× faster than the model written as a loop over a LayerNorm
LSTM cell (``nn.Linear`` + ``nn.LayerNorm`` per step, the way such models are usually written).

Providers, all with the same weights, checked against each other before timing:

- ``cell loop``: per layer a hand-written cell module (below) called once per time step, the
  usual way of writing these variants; LayerNorm-LSTM and LayerNorm-GRU only.
- ``fusedrnn[reference]``: the pure-PyTorch layer op (input projection for all steps at once,
  then a loop over steps; autograd backward) — a strong loop baseline for every variant.
- ``fusedrnn[cpu]``: the fused C++ layer op with its hand-written backward.
- ``torch.nn``: plain ``nn.LSTM`` / ``nn.GRU`` without the variant, for scale (not the same
  model: it shows what the variant costs over cuDNN/oneDNN's plain cell).

Timing as in bench/run.py: warm-up, then interleaved rounds of ``blocked_autorange`` (or single
calls for slow providers), medians; ratios against the cell loop (or the reference op where
there is no cell loop) within the same run. The raw CSV sits beside the markdown table.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import measure  # noqa: E402
from providers import naive_loop_fn  # noqa: E402

import fusedrnn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# name -> (mode, module kwargs)
VARIANTS = {
    "LN-LSTM": ("LSTM", {"layer_norm": True}),
    "LN-GRU": ("GRU", {"layer_norm": True}),
    "LSTM peephole": ("LSTM", {"peephole": True}),
    "LSTM cifg": ("LSTM", {"cifg": True}),
    "LSTM zoneout 0.1": ("LSTM", {"zoneout": 0.1}),
    "LN-LSTM all": ("LSTM", {"layer_norm": True, "peephole": True, "zoneout": 0.1}),
}
HEADLINE = "LN-LSTM"
GOAL = 4.0


class LayerNormLSTMCell(nn.Module):
    """gates = LN(x W_ihᵀ) + b_ih + LN(h W_hhᵀ) + b_hh;  h = o tanh(LN(c))  (docs/variants.md)."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.ih = nn.Linear(input_size, 4 * hidden_size)
        self.hh = nn.Linear(hidden_size, 4 * hidden_size, bias=False)
        self.b_hh = nn.Parameter(torch.zeros(4 * hidden_size))
        self.ln_ih = nn.LayerNorm(4 * hidden_size)
        self.ln_hh = nn.LayerNorm(4 * hidden_size)
        self.ln_c = nn.LayerNorm(hidden_size)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        h, c = state
        # LN over x W_ihᵀ without its bias: nn.Linear's bias is added after the norm
        gates = (
            self.ln_ih(x @ self.ih.weight.t()) + self.ih.bias + self.ln_hh(self.hh(h)) + self.b_hh
        )
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(self.ln_c(c))
        return h, c


class LayerNormGRUCell(nn.Module):
    """a = LN(x W_ihᵀ) + b_ih, s = LN(h W_hhᵀ) + b_hh; r, z, n as torch.nn.GRUCell."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.ih = nn.Linear(input_size, 3 * hidden_size)
        self.hh = nn.Linear(hidden_size, 3 * hidden_size)
        self.ln_ih = nn.LayerNorm(3 * hidden_size)
        self.ln_hh = nn.LayerNorm(3 * hidden_size)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        a = self.ln_ih(x @ self.ih.weight.t()) + self.ih.bias
        s = self.ln_hh(h @ self.hh.weight.t()) + self.hh.bias
        ar, az, an = a.chunk(3, dim=1)
        sr, sz, sn = s.chunk(3, dim=1)
        r = torch.sigmoid(ar + sr)
        z = torch.sigmoid(az + sz)
        n = torch.tanh(an + r * sn)
        return (1 - z) * n + z * h


class CellLoop(nn.Module):
    """Layers of hand-written cells, each called once per time step."""

    def __init__(self, fused: nn.Module):
        super().__init__()
        self.is_lstm = fused.mode == "LSTM"
        cls = LayerNormLSTMCell if self.is_lstm else LayerNormGRUCell
        self.cells = nn.ModuleList()
        with torch.no_grad():
            for k in range(fused.num_layers):
                size_in = fused.input_size if k == 0 else fused.hidden_size
                cell = cls(size_in, fused.hidden_size)
                cell.ih.weight.copy_(getattr(fused, f"weight_ih_l{k}"))
                cell.ih.bias.copy_(getattr(fused, f"bias_ih_l{k}"))
                cell.hh.weight.copy_(getattr(fused, f"weight_hh_l{k}"))
                (cell.b_hh if self.is_lstm else cell.hh.bias).copy_(getattr(fused, f"bias_hh_l{k}"))
                for which in ("ih", "hh") + (("c",) if self.is_lstm else ()):
                    ln = getattr(cell, f"ln_{which}")
                    ln.weight.copy_(getattr(fused, f"layer_norm_{which}_weight_l{k}"))
                    ln.bias.copy_(getattr(fused, f"layer_norm_{which}_bias_l{k}"))
                self.cells.append(cell)

    def forward(self, x: Tensor, hx):
        return naive_loop_fn(self.cells, self.is_lstm)(x, hx)


def providers(name: str, I: int, H: int, L: int) -> dict[str, nn.Module]:  # noqa: E741
    mode, kw = VARIANTS[name]
    cls = getattr(fusedrnn, mode)
    torch.manual_seed(0)
    ref = cls(I, H, L, backend="reference", **kw)
    with torch.no_grad():  # LN gains/biases away from their 1 / 0 init, so they matter
        for n_, p in ref.named_parameters():
            if n_.startswith("layer_norm"):
                p.add_(0.1 * torch.randn_like(p))
    out: dict[str, nn.Module] = {}
    if kw.keys() == {"layer_norm"}:
        out["cell loop"] = CellLoop(ref)
    out["fusedrnn[reference]"] = ref
    if "cpu" in fusedrnn.available_backends("cpu"):
        m = cls(I, H, L, backend="cpu", **kw)
        m.load_state_dict(ref.state_dict())
        out["fusedrnn[cpu]"] = m
    plain = getattr(nn, mode)(I, H, L)
    out["torch.nn (no variant)"] = plain
    return out


def make_inputs(mode: str, B: int, T: int, I: int, H: int, L: int):  # noqa: E741
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, I, generator=g)
    h0 = torch.randn(L, B, H, generator=g)
    c0 = torch.randn(L, B, H, generator=g)
    return x, ((h0, c0) if mode == "LSTM" else h0)


def run_fn(model: nn.Module, x: Tensor, hx, with_grad: bool, gy: Tensor):
    if not with_grad:
        return measure.forward_fn(model, x, hx)
    xg = x.detach().clone().requires_grad_(True)
    return measure.forward_backward_fn(model, list(model.parameters()), xg, hx, gy)


def check_same(models: dict[str, nn.Module], x: Tensor, hx, tol: float) -> dict[str, float]:
    """Max |Δ| / max(1, max |reference|) of the output and of dx against the reference op, per
    provider (eval mode, so zoneout is deterministic; training masks are compared in the
    tests)."""
    errs = {}
    want = None
    for name, m in models.items():
        if name.startswith("torch.nn"):
            continue
        m.eval()
        xg = x.detach().clone().requires_grad_(True)
        y, _ = m(xg, hx)
        y.sum().backward()
        got = (y.detach(), xg.grad)
        m.train()
        if want is None:
            want = got
            errs[name] = 0.0
            continue
        # relative to each tensor's scale: dx reaches hundreds at the full shape
        errs[name] = max(
            float((a - b).abs().max()) / max(1.0, float(b.abs().max()))
            for a, b in zip(got, want, strict=True)
        )
        if errs[name] > tol:
            raise AssertionError(f"{name} differs from the reference op by {errs[name]:.3g}")
    return errs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default 2; 1 with --quick)")
    p.add_argument("--quick", action="store_true", help="tiny shapes, one round (CI)")
    p.add_argument("--out", type=Path, help="directory (default bench/results/<machine-tag>)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--min-run-time", type=float, default=0.4)
    p.add_argument("--variants", help="comma list of variant names (default all)")
    args = p.parse_args(argv)
    if args.threads is None:
        # quick runs check the harness, not speed; one thread does not stall on a busy machine
        args.threads = 1 if args.quick else 2
    B, T, I, H, L = (4, 5, 8, 16, 2) if args.quick else (64, 64, 128, 256, 2)  # noqa: E741
    rounds = 1 if args.quick else args.rounds
    min_run = 0.02 if args.quick else args.min_run_time
    names = args.variants.split(",") if args.variants else list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    out = args.out or ROOT / "bench" / "results" / measure.machine_tag("cpu", args.threads)
    if args.quick and args.out is None:
        out = out / "tmp" / "quick"  # a harness check never overwrites the committed results
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    start = time.time()
    meta = {
        "command": "python bench/variants.py " + " ".join(argv or sys.argv[1:]),
        "utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": measure.cpu_model(),
        "vector_isa": "AVX-512" if "avx512f" in measure.cpu_flags() else "AVX2",
        "threads": args.threads,
        "load_start": measure.load_average(),
        "shape": {"B": B, "T": T, "I": I, "H": H, "layers": L},
        **measure.versions(),
    }
    peak_start = measure.sgemm_peak_gflops("cpu", args.threads, min_run_time=min_run)
    own_start = measure.own_sgemm_peak_gflops(args.threads, min_run_time=min_run)
    rows = []
    for name in names:
        mode = VARIANTS[name][0]
        models = providers(name, I, H, L)
        x, hx = make_inputs(mode, B, T, I, H, L)
        errs = check_same(models, x, hx, tol=1e-3)
        gy = torch.randn(T, B, H, generator=torch.Generator().manual_seed(3))
        for m in models.values():
            m.train()
        for phase, with_grad in (("forward", False), ("forward+backward", True)):
            fns = {k: run_fn(m, x, hx, with_grad, gy) for k, m in models.items()}
            for fn in fns.values():
                measure.warm_up(fn, "cpu", min_calls=1)
            samples: dict[str, list[float]] = {k: [] for k in fns}
            keys = list(fns)
            for r in range(rounds):
                shift = r % len(keys)
                for k in keys[shift:] + keys[:shift]:
                    samples[k] += measure.time_round_cpu(fns[k], min_run, args.threads)
            for k, ts in samples.items():
                rows.append(
                    {
                        "variant": name,
                        "mode": mode,
                        "phase": phase,
                        "provider": k,
                        "median_ms": statistics.median(ts) * 1e3,
                        "p20_ms": sorted(ts)[len(ts) // 5] * 1e3,
                        "p80_ms": sorted(ts)[(4 * len(ts)) // 5 - (1 if len(ts) >= 5 else 0)] * 1e3,
                        "samples": len(ts),
                        "max_rel_diff_vs_reference": errs.get(k, ""),
                        "load_avg_1m": f"{measure.load_average():.2f}",
                    }
                )
            print(
                f"{name} {phase}: "
                + ", ".join(f"{r['provider']} {r['median_ms']:.1f} ms" for r in rows[-len(keys) :]),
                flush=True,
            )
    peak_end = measure.sgemm_peak_gflops("cpu", args.threads, min_run_time=min_run)
    # the better of the two: a momentary slowdown must not lower the roof
    meta["sgemm_peak_gflops"] = round(max(peak_start, peak_end), 1)
    own_end = measure.own_sgemm_peak_gflops(args.threads, min_run_time=min_run)
    if own_start is not None and own_end is not None:
        meta["own_sgemm_peak_gflops"] = round(max(own_start, own_end), 1)
    meta["headline_gemm_gflop"] = measure.mode_flops("fwdbwd", "lstm", B, T, I, H, L) / 1e9
    fma = measure.fma_gflops_one_core()  # None without gcc or AVX2+FMA
    meta["fma_core_gflops"] = None if fma is None else round(fma, 1)
    meta["load_end"] = measure.load_average()
    meta["elapsed_s"] = round(time.time() - start, 1)
    write(out, rows, meta)
    print(f"bench: wrote {out / 'variants.csv'} and {out / 'variants.md'}")
    return 0


def write(out: Path, rows: list[dict], meta: dict) -> None:
    with open(out / "variants.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "variants_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    s = meta["shape"]
    lines = [
        "# Cell variants: fused layer ops against PyTorch loops",
        "",
        f"Measured {meta['utc']} with `{meta['command'].strip()}` in {meta['elapsed_s']} s.",
        "",
        f"- CPU: {meta['cpu']}, torch.set_num_threads({meta['threads']}); torch "
        f"{meta.get('torch', '?')}",
        f"- Shape: input {s['I']}, {s['layers']} layers, B={s['B']}, T={s['T']}, H={s['H']}, "
        "float32, training mode (zoneout masks drawn)",
        f"- 1-minute load average {meta['load_start']:.2f} at the start, {meta['load_end']:.2f} "
        f"at the end (the benchmark's own threads count); raw numbers in variants.csv.",
        "",
        "**Speed-up = time(baseline) / time(provider)**, baseline = the hand-written cell loop "
        "where there is one, else the reference op. `torch.nn (no variant)` is the plain layer, "
        "a different (cheaper) model shown for scale. Every provider's output and input "
        "gradient matched the reference op (eval mode) before timing.",
        "",
    ]
    provs = list(dict.fromkeys(r["provider"] for r in rows))
    lines += ["| variant | phase | " + " | ".join(provs) + " |"]
    lines += ["|---|---|" + "---|" * len(provs)]
    groups: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        groups.setdefault((r["variant"], r["phase"]), {})[r["provider"]] = r
    for (variant, phase), by in groups.items():
        base = by.get("cell loop") or by["fusedrnn[reference]"]
        cells = []
        for pv in provs:
            r = by.get(pv)
            if r is None:
                cells.append("")
                continue
            ratio = base["median_ms"] / r["median_ms"]
            cells.append(f"{ratio:.2f}× ({r['median_ms']:.3g} ms)")
        lines.append(f"| {variant} | {phase} | " + " | ".join(cells) + " |")
    head = groups.get((HEADLINE, "forward+backward"), {})
    if "cell loop" in head and "fusedrnn[cpu]" in head:
        loop_ms = head["cell loop"]["median_ms"]
        ratio = loop_ms / head["fusedrnn[cpu]"]["median_ms"]
        # the best GEMM rate measured: torch.mm's, or the cpu backend's own kernel where faster
        rate, rate_name = meta["sgemm_peak_gflops"], "torch.mm"
        if meta.get("own_sgemm_peak_gflops", 0) > rate:
            rate, rate_name = meta["own_sgemm_peak_gflops"], "fusedrnn's packed GEMM"
        floor_ms = meta["headline_gemm_gflop"] / rate * 1e3
        lines += [
            "",
            f"Goal: {HEADLINE} forward+backward, fusedrnn[cpu] ≥ {GOAL:.0f}× the cell loop: "
            f"**{ratio:.2f}×, {'met' if ratio >= GOAL else 'not met'}**.",
            "",
            f"The roof: this model's forward+backward is {meta['headline_gemm_gflop']:.3g} GFLOP of "
            f"matrix products (2·B·T·4H·(I+H) per layer, three times for forward+backward), "
            f"which at the best GEMM rate measured in this run ({rate} GFLOP/s, {rate_name}; "
            f"2048² float32, {meta['threads']} threads: torch.mm {meta['sgemm_peak_gflops']}, "
            f"fusedrnn's packed GEMM {meta.get('own_sgemm_peak_gflops', 'not used')}) take at "
            f"least {floor_ms:.0f} ms: "
            f"{loop_ms / floor_ms:.2f}× faster than the cell loop is what an implementation "
            "doing nothing but those products at that rate would reach. It is a bound for "
            "that GEMM rate, not for the CPU. fusedrnn[cpu] reaches "
            f"{floor_ms / head['fusedrnn[cpu]']['median_ms']:.0%} of that bound.",
        ]
        fma = meta.get("fma_core_gflops")
        if fma:
            fma_ms = meta["headline_gemm_gflop"] / (fma * meta["threads"]) * 1e3
            lines[-1] += (
                f" At the FMA peak itself ({fma} GFLOP/s per core, measured in the same run in "
                "a loop of independent FMAs as wide as the CPU has "
                f"({meta.get('vector_isa', '?')}), times {meta['threads']} threads) the products "
                f"would take {fma_ms:.0f} ms: {loop_ms / fma_ms:.2f}× the cell loop, the bound for "
                "any implementation on this CPU."
            )
    (out / "variants.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
