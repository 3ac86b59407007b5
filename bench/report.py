"""Markdown tables and PNG plots from the benchmark rows (matplotlib, Agg backend)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

MODE_TITLE = {"fwd": "forward (no grad)", "fwdbwd": "forward+backward", "step": "single step"}
CELL_TITLE = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN (tanh)"}


def _f(row: dict, key: str) -> float:
    try:
        return float(row.get(key, ""))
    except (TypeError, ValueError):
        return float("nan")


def _ok(row: dict) -> bool:
    return row["status"] == "ok" and _f(row, "median_ms") == _f(row, "median_ms")


def _cfg_key(row: dict) -> tuple:
    return (
        row["dtype"],
        row["cell"],
        row["mode"],
        *(int(row[k]) for k in "BTIH"),
        int(row["layers"]),
    )


def _order(key: tuple) -> tuple:
    dtype, cell, mode, *sizes = key
    cells, modes = list(CELL_TITLE), list(MODE_TITLE)
    return (dtype, cells.index(cell), modes.index(mode), *sizes)


def _providers(rows: list[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for r in rows:
        seen.setdefault(r["provider"], None)
    return list(seen)


def _shape(key: tuple) -> str:
    dtype, cell, mode, B, T, I, H, layers = key  # noqa: E741
    return f"{CELL_TITLE[cell]}, {MODE_TITLE[mode]}, B={B} T={T} I={I} H={H} L={layers}, {dtype}"


def _cell_text(row: dict | None, ref_name: str) -> str:
    if row is None:
        return ""
    if not _ok(row):
        return row["status"]
    ms = _f(row, "median_ms")
    if row["provider"] == ref_name:
        return f"1.00× ({ms:.3g} ms)"
    s = _f(row, "speedup_vs_torch_nn")
    if s != s:
        return f"({ms:.3g} ms)"
    star = "**" if row["provider"].startswith("fusedrnn") else ""
    return f"{star}{s:.2f}×{star} ({ms:.3g} ms)"


def _table(rows: list[dict], providers: list[str], value) -> list[str]:
    by_cfg: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in rows:
        by_cfg[_cfg_key(r)][r["provider"]] = r
    lines = [
        "| cell | mode | shape | dtype | " + " | ".join(providers) + " |",
        "|---|---|---|---|" + "---|" * len(providers),
    ]
    for key, per in sorted(by_cfg.items(), key=lambda kv: _order(kv[0])):
        dtype, cell, mode, B, T, I, H, layers = key  # noqa: E741
        shape = f"B={B} T={T} I={I} H={H} L={layers}"
        cells = [value(per.get(p)) for p in providers]
        lines.append(
            f"| {CELL_TITLE[cell]} | {MODE_TITLE[mode]} | {shape} | {dtype} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def markdown(rows: list[dict], meta: dict, plots: list[Path]) -> str:
    ref = "torch.nn"
    provs = _providers(rows)
    head = [r for r in rows if r["group"] == "headline"]
    sweep = [r for r in rows if r["group"] != "headline"]
    quick = " (quick mode: tiny sizes, not a measurement to quote)" if meta["quick"] else ""
    load_note = (
        "The machine was not reserved: other processes may have been running (1-minute load "
        f"average {meta['load_start']:.2f} at the start, {meta['load_end']:.2f} at the end, "
        f"with {meta['threads']} benchmark thread(s); each CSV row carries the load when that "
        "configuration started). Providers of one configuration were timed interleaved, so "
        "ratios suffer less than absolute times."
    )
    out = [
        f"# fusedrnn benchmark results: `{meta['tag']}`{quick}",
        "",
        f"Measured {meta['date']} with `{meta['command']}` in {meta['elapsed_s'] / 60:.1f} min.",
        "",
        f"- Device: {meta['device']}, CPU model: {meta['cpu_model']}, "
        f"torch.set_num_threads({meta['threads']})",
        f"- torch {meta['versions']['torch']}, triton {meta['versions']['triton']}",
        "- " + meta.get("peak_note", _cpu_peak_note(meta)),
        f"- fusedrnn[cpu]: {meta.get('cpu_kernels', 'not recorded')}",
        f"- Providers: {', '.join(meta['providers'])}",
        f"- {load_note}",
        "",
        "**Speedup = time(torch.nn) / time(provider)**: above 1× is faster than torch.nn "
        "(oneDNN on CPU, cuDNN on GPU). Times are medians (p20 / p80 in the CSV); every "
        "provider matched torch.nn (outputs and gradients, same weights) before it was timed.",
        "",
        "## Headline",
        "",
        _headline_text(head),
        "",
        *_table(head, provs, lambda r: _cell_text(r, ref)),
        "",
        "Achieved GFLOP/s (GEMM FLOPs only: 2·B·T·G·H·(I+H) per layer forward, 3× that for "
        "forward+backward) and its share of the measured sgemm peak:",
        "",
        *_table(
            head,
            provs,
            lambda r: (
                f"{_f(r, 'gflops'):.3g} ({_f(r, 'pct_sgemm_peak'):.0f} %)" if r and _ok(r) else ""
            ),
        ),
        "",
    ]
    out += _goals(head, meta)
    if sweep:
        out += ["## Sweeps", "", *_table(sweep, provs, lambda r: _cell_text(r, ref)), ""]
    if meta.get("skipped_budget"):
        out += [
            f"Not measured, the run's --time-budget being spent: "
            f"{'; '.join(meta['skipped_budget'])}.",
            "",
        ]
    if meta.get("interrupted"):
        out += ["The run was interrupted: configurations after the last row were not measured.", ""]
    out += _compile_section(rows, meta)
    out += _memory_section(rows, provs)
    out += _problems(rows)
    if plots:
        out += ["## Plots", ""]
        out += [f"![{p.stem}]({p.name})" for p in plots]
        out += [""]
    return "\n".join(out)


def _cpu_peak_note(meta: dict) -> str:
    return (
        f"sgemm peak measured in the same run (torch.mm, {meta['sgemm_n']}² float32, median; "
        f"the better of the start and the end of the run): "
        f"**{meta['sgemm_peak_gflops']:.1f} GFLOP/s**. This is the BLAS of torch, not the "
        "FMA peak of the CPU: fusedrnn[cpu] uses its own packed GEMM where it can, so its share "
        "may exceed 100 %"
    )


def _headline_text(head: list[dict]) -> str:
    seq = sorted({(r["I"], r["layers"], r["B"], r["T"]) for r in head if r["mode"] != "step"})
    step = sorted({(r["I"], r["layers"], r["H"]) for r in head if r["mode"] == "step"})
    parts = [f"Sequence modes: input {i}, {layers} layers, B={b}, T={t}" for i, layers, b, t in seq]
    parts += [
        f"single step: B=1, T=1, input {i}, H={h}, {layers} layers, no grad, the state carried "
        "from call to call (the sampling loop)"
        for i, layers, h in step
    ]
    return "; ".join(parts) + "."


def _goals(head: list[dict], meta: dict) -> list[str]:
    cpu = sorted(
        (r for r in head if r["provider"] == "fusedrnn[cpu]"), key=lambda r: _order(_cfg_key(r))
    )
    if meta["device"] != "cpu":
        return []
    lines = [
        "### Goals of the compiled CPU backend (shown, not asserted)",
        "",
        "fusedrnn[cpu] against torch.nn: forward ≥ "
        f"{meta['goals']['fwd']}×, forward+backward ≥ {meta['goals']['fwdbwd']}×, "
        f"single step ≥ {meta['goals']['step']}×.",
        "",
    ]
    if not cpu:
        return lines + ["fusedrnn[cpu] was not available in this run (fusedrnn._C not built).", ""]
    lines += ["| cell | mode | H | speedup | goal | met |", "|---|---|---|---|---|---|"]
    for r in cpu:
        goal = meta["goals"][r["mode"]]
        s = _f(r, "speedup_vs_torch_nn")
        met = "yes" if s >= goal else ("no" if s == s else r["status"])
        shown = f"{s:.2f}×" if s == s else r["status"]
        lines.append(
            f"| {CELL_TITLE[r['cell']]} | {MODE_TITLE[r['mode']]} | {r['H']} | {shown} | "
            f"≥ {goal}× | {met} |"
        )
    return lines + [""]


def _compile_section(rows: list[dict], meta: dict) -> list[str]:
    comp = [r for r in rows if r["provider"] == "torch.compile" and r["status"] != "skipped"]
    if not comp:
        return []
    lines = [
        "## torch.compile",
        "",
        f"The naive loop compiled whole (`torch.compile(loop, dynamic=False, "
        f"backend={meta['compile_backend']!r})`): Dynamo unrolls "
        "T × layers cell steps. Its first call (compile, plus one run; Inductor's on-disk "
        "cache can shorten it) is excluded from the timings above and listed here.",
        "",
        "| shape | status | first call (s) | speedup vs torch.nn | note |",
        "|---|---|---|---|---|",
    ]
    for r in comp:
        s = _f(r, "speedup_vs_torch_nn")
        lines.append(
            f"| {_shape(_cfg_key(r))} | {r['status']} | {r.get('first_call_s', '')} | "
            f"{f'{s:.2f}×' if s == s else ''} | {r['reason']} |"
        )
    return lines + [""]


def _memory_section(rows: list[dict], provs: list[str]) -> list[str]:
    mem = [
        r
        for r in rows
        if r["mode"] == "fwdbwd" and r.get("saved_activation_bytes") not in ("", None)
    ]
    if not mem:
        return []

    def mb(r):
        if r is None or r.get("saved_activation_bytes") in ("", None):
            return ""
        text = f"{float(r['saved_activation_bytes']) / 2**20:.2f}"
        if r.get("cuda_peak_bytes") not in ("", None):
            text += f" / {float(r['cuda_peak_bytes']) / 2**20:.1f}"
        return text

    return [
        "## Memory of forward+backward",
        "",
        "MiB of activations saved for backward: distinct storages passed through "
        "`torch.autograd.graph.saved_tensors_hooks` while the forward builds its graph, "
        "parameters and the input excluded (autograd nodes, `ctx.save_for_backward` of custom "
        "Functions and compiled graphs are all seen; tensors kept as plain ctx attributes would "
        "not be). On CUDA a second number is the `max_memory_allocated` peak above baseline.",
        "",
        *_table(mem, provs, mb),
        "",
    ]


def _problems(rows: list[dict]) -> list[str]:
    bad = [r for r in rows if r["status"] in ("incorrect", "error")]
    skipped = {r["reason"] for r in rows if r["status"] == "skipped"}
    lines = ["## Correctness and failures", ""]
    errs = [_f(r, "max_abs_err_out") for r in rows if r["status"] == "ok"]
    errs = [e for e in errs if e == e]
    gerrs = [_f(r, "max_abs_err_grad") for r in rows if r["status"] == "ok"]
    gerrs = [e for e in gerrs if e == e]
    if errs:
        lines.append(
            f"Largest max-abs error vs torch.nn among timed providers: outputs {max(errs):.3g}"
            + (f", gradients {max(gerrs):.3g}" if gerrs else "")
            + " (per row in the CSV)."
        )
        lines.append("")
    if bad:
        lines += ["| provider | shape | status | reason |", "|---|---|---|---|"]
        lines += [
            f"| {r['provider']} | {_shape(_cfg_key(r))} | {r['status']} | {r['reason']} |"
            for r in bad
        ]
        lines.append("")
    else:
        lines += ["No provider failed or disagreed with torch.nn.", ""]
    if skipped:
        lines += ["Skipped: " + "; ".join(sorted(skipped)), ""]
    return lines


# -- plots ------------------------------------------------------------------------------------


def plots(rows: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if _ok(r)]
    head_seq = [r for r in ok if r["group"] == "headline" and r["mode"] == "fwd"]
    if not head_seq:
        return []
    base = head_seq[0]
    b, t, i, layers = (int(base[k]) for k in ("B", "T", "I", "layers"))
    h_base = min(int(r["H"]) for r in head_seq)
    provs = _providers(rows)
    color = {p: f"C{i}" for i, p in enumerate(provs)}  # one colour per provider in every plot
    written = []

    def line_plot(name, title, xkey, select, modes):
        cells = sorted({r["cell"] for r in ok if select(r) and r["mode"] in modes})
        panels = [(c, m) for c in cells for m in modes]
        panels = [
            (c, m)
            for c, m in panels
            if len({r[xkey] for r in ok if r["cell"] == c and r["mode"] == m and select(r)}) > 1
        ]
        if not panels:
            return
        fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
        for ax, (c, m) in zip(axes[0], panels, strict=True):
            for p in provs:
                pts = sorted(
                    (int(r[xkey]), _f(r, "median_ms"))
                    for r in ok
                    if r["provider"] == p and r["cell"] == c and r["mode"] == m and select(r)
                )
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker="o", label=p, color=color[p])
            xs = sorted(
                {int(r[xkey]) for r in ok if r["cell"] == c and r["mode"] == m and select(r)}
            )
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs, [str(x) for x in xs])
            ax.minorticks_off()
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(plt.matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.set_xlabel(xkey)
            ax.set_ylabel("median time (ms)")
            ax.set_title(f"{CELL_TITLE[c]} {MODE_TITLE[m]}", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)

    def seq(r):
        return int(r["T"]) == t and int(r["I"]) == i and int(r["layers"]) == layers

    for mode in ("fwd", "fwdbwd"):
        line_plot(
            f"time_vs_hidden_{mode}",
            f"time vs hidden size, {MODE_TITLE[mode]} (B={b}, T={t}, I={i}, layers={layers})",
            "H",
            lambda r: seq(r) and int(r["B"]) == b,
            [mode],
        )
        line_plot(
            f"time_vs_batch_{mode}",
            f"time vs batch, {MODE_TITLE[mode]} (H={h_base}, T={t}, I={i}, layers={layers})",
            "B",
            lambda r: seq(r) and int(r["H"]) == h_base,
            [mode],
        )
    line_plot(
        "time_vs_hidden_step",
        "single step (B=1, T=1, no grad, carried state) vs hidden size",
        "H",
        lambda r: int(r["B"]) == 1 and int(r["T"]) == 1,
        ["step"],
    )
    written += _speedup_bars(plt, [r for r in ok if r["group"] == "headline"], provs, color, out)
    return written


def _speedup_bars(
    plt, head: list[dict], provs: list[str], color: dict[str, str], out: Path
) -> list[Path]:
    keys = sorted(dict.fromkeys(_cfg_key(r) for r in head), key=_order)
    others = [p for p in provs if p != "torch.nn"]
    if not keys or not others:
        return []
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(keys) + 2), 4.8))
    width = 0.8 / len(others)
    for j, p in enumerate(others):
        vals = []
        for k in keys:
            r = next((r for r in head if _cfg_key(r) == k and r["provider"] == p), None)
            vals.append(_f(r, "speedup_vs_torch_nn") if r else float("nan"))
        xs = [n + (j - (len(others) - 1) / 2) * width for n in range(len(keys))]
        ax.bar(xs, vals, width=width, label=p, color=color[p])
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    fmt = plt.matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}×")
    ax.yaxis.set_major_formatter(fmt)
    ax.yaxis.set_minor_formatter(fmt)
    ax.set_ylabel("speedup vs torch.nn (log scale)")
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels(
        [f"{CELL_TITLE[k[1]].split()[0]}\n{k[2]}\nH={k[6]}" for k in keys], fontsize=8
    )
    ax.legend(fontsize=8)
    ax.set_title("headline configurations: speedup over torch.nn (higher is faster)", fontsize=10)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    path = out / "speedup_headline.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]
