"""Sample evolution: how the samples of one training run change with the iterations.

``train --sample-at 0,100,300,1000`` appends one record per chosen iteration to
``<out>/samples.jsonl`` (iteration, text, temperature, prime, last val loss); every sample,
chosen or periodic, also goes to ``<out>/samples.txt``. ``evolution`` turns those into a table
"iteration -> sample" as Markdown (for a README) or as a self-contained HTML page::

    python -m fusedrnn.charlm evolution runs/charlm --format md --out evolution.md

``samples.jsonl`` is read when it exists (the ``--sample-at`` samples only); otherwise the
``=== iteration N, val loss X ===`` blocks of ``samples.txt``, or use ``--all`` to read
``samples.txt`` (every sample taken) even when the JSON file exists.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import sys
from pathlib import Path

from .analysis_cli import subcommand
from .errors import DataError

_HEADER = re.compile(r"^=== iteration (\d+)(?:, val loss ([0-9.eE+-]+|nan|inf))? ===$", re.M)


def read_samples(path: str | Path, use_txt: bool = False) -> list[dict]:
    """Sample records [{iter, text, val_loss, temperature, prime}] of a run dir or file."""
    p = Path(path)
    if p.is_dir():
        js, txt = p / "samples.jsonl", p / "samples.txt"
        if js.is_file() and not use_txt:
            p = js
        elif txt.is_file():
            p = txt
        else:
            raise DataError(
                f"{path} has no samples.jsonl or samples.txt: train with "
                "--sample-at ITERS to record samples"
            )
    if not p.is_file():
        raise DataError(f"no such file or directory: {path}")
    raw = p.read_text(encoding="utf-8", errors="replace")
    if p.suffix == ".jsonl":
        recs = []
        for n, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                recs.append(
                    {
                        "iter": int(r["iter"]),
                        "text": str(r["text"]),
                        "val_loss": r.get("val_loss"),
                        "temperature": r.get("temperature"),
                        "prime": r.get("prime", ""),
                    }
                )
            except (ValueError, KeyError, TypeError) as e:
                raise DataError(f"{p}:{n}: not a sample record ({e})") from None
    else:
        recs = _parse_txt(raw)
    if not recs:
        raise DataError(f"{p} holds no samples")
    recs.sort(key=lambda r: r["iter"])  # stable: a resumed run may repeat an iteration
    return recs


def _parse_txt(raw: str) -> list[dict]:
    # the writer emits "=== iteration N[, val loss X] ===\n" + text + "\n\n" per sample
    heads = list(_HEADER.finditer(raw))
    recs = []
    for j, m in enumerate(heads):
        end = heads[j + 1].start() if j + 1 < len(heads) else len(raw)
        text = raw[m.end() + 1 : end]
        if text.endswith("\n\n"):
            text = text[:-2]
        loss = m.group(2)
        recs.append(
            {
                "iter": int(m.group(1)),
                "text": text,
                "val_loss": float(loss) if loss else None,
                "temperature": None,
                "prime": "",
            }
        )
    return recs


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>#+!|~-])")


def _md_cell(text: str) -> str:
    s = _MD_SPECIAL.sub(r"\\\1", text.replace("&", "&amp;"))
    s = s.replace("\r", "")
    return "<br>".join(s.split("\n")) if s else " "


def _loss(v) -> str:
    return "-" if v is None else f"{float(v):.4f}"


def to_markdown(recs: list[dict], title: str = "Sample evolution") -> str:
    lines = [f"## {title}", ""]
    temps = {r.get("temperature") for r in recs if r.get("temperature") is not None}
    primes = {r.get("prime") for r in recs if r.get("prime")}
    if temps:
        lines.append(
            "temperature "
            + ", ".join(str(t) for t in sorted(temps))
            + "; "
            + (("prime " + ", ".join(repr(p) for p in sorted(primes))) if primes else "no prime")
            + "; line breaks shown as line breaks."
        )
        lines.append("")
    lines += ["| iteration | val loss (nats/char) | sample |", "|---:|---:|---|"]
    for r in recs:
        lines.append(f"| {r['iter']} | {_loss(r.get('val_loss'))} | {_md_cell(r['text'])} |")
    return "\n".join(lines) + "\n"


def to_html(recs: list[dict], title: str = "Sample evolution") -> str:
    e = html.escape
    rows = "".join(
        f'<tr><td class="n">{r["iter"]}</td><td class="n">{_loss(r.get("val_loss"))}</td>'
        f"<td><pre>{e(r['text'])}</pre></td></tr>"
        for r in recs
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{e(title)}</title><style>body{{font-family:system-ui,sans-serif;margin:16px}}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;"
        "vertical-align:top;text-align:left}td.n{text-align:right;white-space:nowrap}"
        "pre{margin:0;white-space:pre-wrap;font-family:'DejaVu Sans Mono',Menlo,Consolas,"
        "monospace;font-size:13px}</style></head><body>"
        f"<h1>{e(title)}</h1><table><tr><th>iteration</th><th>val loss</th><th>sample</th></tr>"
        f"{rows}</table></body></html>\n"
    )


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="training --out directory, or a samples.jsonl / samples.txt")
    p.add_argument("--format", choices=("md", "html"), default="md")
    p.add_argument("--out", metavar="FILE", help="write here instead of stdout")
    p.add_argument(
        "--all",
        action="store_true",
        help="read samples.txt (every sample taken) even if samples.jsonl exists",
    )
    p.add_argument("--title", default="Sample evolution")


def run(args: argparse.Namespace) -> int:
    recs = read_samples(args.run, use_txt=args.all)
    doc = (to_markdown if args.format == "md" else to_html)(recs, args.title)
    if args.out:
        Path(args.out).write_text(doc, encoding="utf-8")
        print(args.out)
    else:
        sys.stdout.write(doc)
    return 0


register, main = subcommand(
    "evolution",
    "table of the samples taken during training (Markdown or HTML)",
    "Render the samples saved by `train --sample-at ...` as a table iteration -> sample.",
    _add_arguments,
    run,
)


if __name__ == "__main__":
    sys.exit(main())
