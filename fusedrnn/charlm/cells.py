"""find-cells: which units of a trained model track which property of the text.

Every unit (every layer; ``h`` and, for LSTMs, ``c``) is recorded over a text
(:func:`fusedrnn.charlm.visualize.run_trace`) and scored against the features of
:mod:`fusedrnn.charlm.features`:

- ``pearson``: the absolute Pearson correlation between the unit's raw activation and the
  feature over all characters (for binary features this is the point-biserial correlation).
- ``balanced``: for binary features, the balanced accuracy ``(TPR + TNR) / 2`` of the best
  one-unit threshold classifier ``activation > theta`` (or ``<``); 0.5 is chance, 1 is
  perfect. The threshold is chosen on the same text, so this is an optimistic (in-sample)
  figure: compare with the same score of a randomly initialised model of the same size, which
  ``find-cells`` reports next to it (``--no-random-baseline`` skips that).

The units that score best on each feature are listed (``report.md``, ``scores.json``) and
rendered as in ``visualize`` (HTML and PNG per unit) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .analysis_cli import subcommand
from .errors import CharLMError
from .features import BINARY_FEATURES, FEATURES, compute_features
from .visualize import (
    SCALES,
    Trace,
    add_model_args,
    add_text_args,
    describe,
    load_model,
    resolve_text,
    run_trace,
    write_views,
)

METRICS = ("pearson", "balanced")


@dataclass(frozen=True)
class Unit:
    layer: int
    kind: str  # "h" | "c"
    index: int

    @property
    def name(self) -> str:
        return f"L{self.layer}{self.kind}{self.index}"

    def __str__(self) -> str:
        return f"layer {self.layer} {self.kind}[{self.index}]"


def unit_matrix(trace: Trace) -> tuple[np.ndarray, list[Unit]]:
    """([T, U] float32 activations of every unit, the U units): per layer h units, then c."""
    cols, units = [], []
    for layer in range(trace.layers):
        for kind, src in (("h", trace.h), ("c", trace.c)):
            if src is None:
                continue
            cols.append(src[layer])  # [T, H]
            units += [Unit(layer, kind, j) for j in range(src.shape[2])]
    return np.concatenate(cols, axis=1).astype(np.float32), units


def _block(T: int, block: int | None) -> int:
    # columns per step so that the [T, block] float64 temporaries stay around 100 MB
    return block or max(1, min(512, 12_000_000 // max(T, 1)))


def pearson(acts: np.ndarray, y: np.ndarray, block: int | None = None) -> np.ndarray:
    """[U] |Pearson r| of every column of acts [T, U] with y [T]; 0 for a constant column.

    NaN for every unit when y itself is constant (no correlation is defined).
    """
    y = np.asarray(y, dtype=np.float64)
    yc = y - y.mean()
    ys = np.sqrt(np.sum(yc * yc))
    U = acts.shape[1]
    if ys == 0:
        return np.full(U, np.nan)
    out = np.empty(U)
    step = _block(acts.shape[0], block)
    for a in range(0, U, step):
        x = acts[:, a : a + step].astype(np.float64)
        xc = x - x.mean(axis=0)
        xs = np.sqrt(np.sum(xc * xc, axis=0))
        # a column whose spread is rounding noise of its mean counts as constant
        const = xs <= 1e-12 * np.maximum(np.abs(x).max(axis=0), 1e-300) * np.sqrt(len(y))
        r = (yc @ xc) / (ys * np.where(const, 1.0, xs))
        out[a : a + step] = np.where(const, 0.0, np.abs(r))
    return out


def balanced_accuracy(acts: np.ndarray, y: np.ndarray, block: int | None = None) -> np.ndarray:
    """[U] best balanced accuracy of a threshold on each column of acts [T, U] for binary y.

    For a cut after the i-th smallest activation, "above the cut" predicts 1: TPR is the share
    of positives above it, TNR the share of negatives at or below it. The opposite polarity
    scores 1 - that, so the best of both is max(b, 1 - b). Cuts are only allowed between
    distinct values (tied activations cannot be separated). NaN if y has one class only.
    """
    y = np.asarray(y) > 0.5
    P = int(y.sum())
    N = y.size - P
    U = acts.shape[1]
    if P == 0 or N == 0:
        return np.full(U, np.nan)
    out = np.empty(U)
    step = _block(acts.shape[0], block)
    for a in range(0, U, step):  # bounded memory: [T, step] at a time
        x = acts[:, a : a + step]
        order = np.argsort(x, axis=0, kind="stable")
        xs = np.take_along_axis(x, order, axis=0)
        pos_le = np.cumsum(y[order], axis=0)  # positives among the i+1 smallest
        n_le = np.arange(1, x.shape[0] + 1)[:, None]
        tpr = (P - pos_le) / P
        tnr = (n_le - pos_le) / N
        b = 0.5 * (tpr + tnr)
        b = np.maximum(b, 1.0 - b)
        valid = np.ones_like(b, dtype=bool)
        valid[:-1] = xs[1:] > xs[:-1]  # a cut between equal values is not a threshold
        valid[-1] = False  # everything below the cut: a constant prediction
        b = np.where(valid, b, 0.5)
        out[a : a + step] = b.max(axis=0)
    return out


def score_units(trace: Trace, features: dict[str, np.ndarray] | None = None) -> dict:
    """{feature: {"pearson": [U], "balanced": [U] or None, "constant": bool}}, units."""
    acts, units = unit_matrix(trace)
    feats = compute_features(trace.text) if features is None else features
    scores = {}
    for name, y in feats.items():
        constant = bool(np.all(y == y[0]))
        scores[name] = {
            "pearson": pearson(acts, y),
            "balanced": balanced_accuracy(acts, y) if name in BINARY_FEATURES else None,
            "constant": constant,
        }
    return {"scores": scores, "units": units}


def rank(scored: dict, feature: str, metric: str = "pearson", top: int = 3) -> list[tuple]:
    """[(unit, pearson, balanced or None)] best first by ``metric`` (pearson for continuous)."""
    s = scored["scores"][feature]
    if s["constant"]:
        return []
    key = s["balanced"] if metric == "balanced" and s["balanced"] is not None else s["pearson"]
    order = np.argsort(-np.nan_to_num(key, nan=-1.0), kind="stable")[:top]
    return [
        (
            scored["units"][i],
            float(s["pearson"][i]),
            None if s["balanced"] is None else float(s["balanced"][i]),
        )
        for i in order
    ]


def best_score(scored: dict, feature: str, metric: str) -> float | None:
    s = scored["scores"][feature]
    if s["constant"]:
        return None
    key = s["balanced"] if metric == "balanced" else s["pearson"]
    return None if key is None else float(np.nanmax(key))


def random_baseline(model, vocab, text: str, seed: int = 0) -> dict:
    """Scores of a freshly initialised model with the architecture of ``model``."""
    import torch

    from .model import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = build_model(model.architecture(), impl=model.impl, backend=model.backend)
    fresh.to(model.decoder.weight.device).eval()
    return score_units(run_trace(fresh, vocab, text))


# --------------------------------------------------------------------------------- command
def _add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_text_args(p, 20000)
    p.add_argument(
        "--features",
        default=",".join(FEATURES),
        help=f"comma-separated subset of: {', '.join(FEATURES)}",
    )
    p.add_argument("--top", type=int, default=3, help="units listed per feature (default 3)")
    p.add_argument(
        "--rank-by",
        choices=METRICS,
        default="pearson",
        help="order by |Pearson r| (default) or, for binary features, by the "
        "balanced accuracy of a one-unit threshold",
    )
    p.add_argument(
        "--render",
        type=int,
        default=None,
        metavar="N",
        help="render the best N units per feature (default: all listed)",
    )
    p.add_argument(
        "--render-chars",
        type=int,
        default=1500,
        help="characters shown in each rendering (default 1500)",
    )
    p.add_argument(
        "--top-k",
        type=int,
        default=0,
        metavar="K",
        help="also show the K likeliest next characters in the renderings",
    )
    p.add_argument(
        "--scale",
        choices=SCALES,
        default="range",
        help="colour mapping of the renderings (see visualize; default range: each unit's "
        "min..max over the text onto blue..red)",
    )
    p.add_argument("--no-png", action="store_true", help="HTML renderings only")
    p.add_argument(
        "--no-random-baseline",
        action="store_true",
        help="do not score a randomly initialised model of the same size",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random baseline model")
    p.add_argument("--out", default="cells", help="output directory (default ./cells)")


def _fmt(x) -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.3f}"


def run(args: argparse.Namespace) -> int:
    feats_wanted = [f.strip() for f in args.features.split(",") if f.strip()]
    bad = [f for f in feats_wanted if f not in FEATURES]
    if bad or not feats_wanted:
        raise CharLMError(
            f"unknown feature(s) {', '.join(bad) or '(none given)'}; "
            f"choose from {', '.join(FEATURES)}"
        )
    if args.top < 1:
        raise CharLMError("--top must be >= 1")
    if args.render is not None and args.render < 0:
        raise CharLMError("--render must be >= 0")
    n_render = args.top if args.render is None else min(args.render, args.top)
    model, vocab, config = load_model(args)
    text, desc = resolve_text(args, vocab, config)
    trace = run_trace(model, vocab, text)
    all_feats = compute_features(text)
    feats = {f: all_feats[f] for f in feats_wanted}
    scored = score_units(trace, feats)
    baseline = None if args.no_random_baseline else random_baseline(model, vocab, text, args.seed)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    arch = describe(config, model)
    lines = [
        f"# Units that track text features: {arch}",
        "",
        f"checkpoint `{args.checkpoint}`; text: {desc}, {len(text):,} characters; "
        f"ranked by {'|Pearson r|' if args.rank_by == 'pearson' else 'balanced accuracy'}",
        "(balanced accuracy: best one-unit threshold, chosen in-sample; compare with the "
        "random-initialisation baseline).",
        "",
    ]
    lines += [
        "| feature | rank | unit | \\|r\\| | balanced acc. | random model best \\|r\\| "
        "| random model best bal. acc. | views |",
        "|---|---:|---|---:|---:|---:|---:|---|",
    ]
    report: dict = {
        "checkpoint": str(args.checkpoint),
        "text": desc,
        "chars": len(text),
        "model": arch,
        "rank_by": args.rank_by,
        "features": {},
    }
    index_rows = []
    for f in feats_wanted:
        rec: dict = {
            "constant": scored["scores"][f]["constant"],
            "top": [],
            "positive_fraction": float(np.mean(feats[f] > 0)),
        }
        if baseline is not None:
            rec["random_best_pearson"] = best_score(baseline, f, "pearson")
            rec["random_best_balanced"] = (
                best_score(baseline, f, "balanced") if f in BINARY_FEATURES else None
            )
        if rec["constant"]:
            lines.append(f"| {f} | - | (constant over this text: no score) | - | - | - | - | |")
            report["features"][f] = rec
            continue
        for r, (unit, rr, bal) in enumerate(rank(scored, f, args.rank_by, args.top), start=1):
            views = []
            if r <= n_render:
                stem = out / f"{f}_{r}_{unit.name}"
                title = f"{f} #{r}: {unit} of {arch} (|r| = {rr:.3f}" + (
                    f", balanced accuracy {bal:.3f})" if bal is not None else ")"
                )
                paths = write_views(
                    stem,
                    _clip(trace, args.render_chars),
                    unit.layer,
                    unit.index,
                    unit.kind,
                    scale=args.scale,
                    k=args.top_k,
                    title=title,
                    info=[f"text: {desc}"],
                    png=not args.no_png,
                )
                views = [p.name for p in paths]
            rec["top"].append(
                {
                    "rank": r,
                    "layer": unit.layer,
                    "kind": unit.kind,
                    "unit": unit.index,
                    "pearson": rr,
                    "balanced": bal,
                    "views": views,
                }
            )
            rb = rec.get("random_best_pearson") if r == 1 else None
            rbb = rec.get("random_best_balanced") if r == 1 else None
            links = " ".join(f"[{v.rsplit('.', 1)[1]}]({v})" for v in views)
            lines.append(
                f"| {f} | {r} | {unit} | {rr:.3f} | {_fmt(bal)} | "
                f"{_fmt(rb)} | {_fmt(rbb)} | {links} |"
            )
            index_rows.append((f, r, str(unit), rr, bal, views))
        report["features"][f] = rec
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "scores.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    (out / "index.html").write_text(_index_html(arch, desc, index_rows), encoding="utf-8")
    print("\n".join(lines))
    print(f"\nwritten to {out}/ (report.md, scores.json, index.html and the renderings)")
    return 0


def _clip(trace: Trace, n: int) -> Trace:
    if n <= 0 or n >= len(trace.text):
        return trace
    return Trace(
        text=trace.text[:n],
        chars=trace.chars,
        h=trace.h[:, :n],
        c=None if trace.c is None else trace.c[:, :n],
        probs=trace.probs[:n],
        cell=trace.cell,
    )


def _index_html(arch: str, desc: str, rows) -> str:
    import html

    e = html.escape

    def links(views) -> str:
        return " ".join(f'<a href="{e(v)}">{e(v.rsplit(".", 1)[1])}</a>' for v in views)

    body = "".join(
        f"<tr><td>{e(f)}</td><td>{r}</td><td>{e(u)}</td><td>{rr:.3f}</td><td>{_fmt(bal)}</td>"
        f"<td>{links(views)}</td></tr>"
        for f, r, u, rr, bal, views in rows
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>find-cells: {e(arch)}</title><style>body{{font-family:system-ui,sans-serif;"
        "margin:16px}}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:left}</style></head><body>"
        f"<h1>Units that track text features: {e(arch)}</h1><p>text: {e(desc)}</p><table>"
        "<tr><th>feature</th><th>rank</th><th>unit</th><th>|r|</th><th>balanced acc.</th>"
        f"<th>views</th></tr>{body}</table></body></html>\n"
    )


register, main = subcommand(
    "find-cells",
    "find units that track quotes, brackets, line position, ...",
    "Score every hidden and cell unit against text features (inside quotes, "
    "bracket depth, position in line, inside a comment, start of a word) and render the "
    "best units.",
    _add_arguments,
    run,
)


if __name__ == "__main__":
    sys.exit(main())
