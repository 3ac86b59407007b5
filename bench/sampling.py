"""Sampling speed of the char-LM: characters per second of `generate`, by how the loop runs.

Four loops over the same weights, seed and prime, measured interleaved in one process:

* ``fused``:  fusedrnn layers, the whole per-character loop in C++ (fusedrnn._C.generate);
* ``fused16``: the same loop with the layers' weight matrices kept in float16
  (``half_weights``: half the bytes per step; float32 arithmetic on the rounded weights);
* ``python``: fusedrnn layers, one Python model call, softmax and draw per character;
* ``torch``:  torch.nn layers (oneDNN) in the same Python loop.

The fused and python loops choose the same characters (tests/test_charlm_generate.py), and
fused16 those of the model with rounded weights; this measures only their speed. Weights are random: the cost per character does not depend on them.

    python bench/sampling.py                  # 1 thread, the default shapes
    python bench/sampling.py --threads 2 --rounds 9

Writes results.csv, results.md and meta.json to --out (default bench/results/sampling).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.measure import read_gbs, results_markdown, run_standalone, standalone_parser  # noqa: E402
from fusedrnn.charlm.data import Vocab  # noqa: E402
from fusedrnn.charlm.model import CharRNN  # noqa: E402
from fusedrnn.charlm.sample import generate_batch  # noqa: E402

# 65 symbols, the size of tinyshakespeare's alphabet
VOCAB = Vocab(
    sorted(set("\n !$&',-.3:;?" + "".join(map(chr, range(65, 91))) + "abcdefghijklmnopqrstuvwxyz"))
)
LOOPS = ("fused", "fused16", "python", "torch")


def parse_args(argv=None) -> argparse.Namespace:
    p = standalone_parser(__doc__, seconds=0.4)
    p.add_argument("--shapes", default="2x128,3x512", help="LAYERSxHIDDEN, comma separated")
    p.add_argument("--cells", default="lstm,gru,rnn")
    p.add_argument("--batches", default="1,8", help="samples drawn side by side")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sampling")
    return p.parse_args(argv)


def chars_per_second(model: CharRNN, loop: str, batch: int, n: int) -> float:
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    fused = loop.startswith("fused")
    generate_batch(
        model, VOCAB, "\n", n, batch, generator=g, fused=fused, half_weights=loop == "fused16"
    )
    return batch * n / (time.perf_counter() - start)


def measure(cell: str, layers: int, hidden: int, batch: int, rounds: int, seconds: float) -> dict:
    torch.manual_seed(0)
    models = {"fused": CharRNN(len(VOCAB.chars), cell, hidden, layers, 64)}
    models["python"] = models["fused16"] = models["fused"]
    models["torch"] = CharRNN(len(VOCAB.chars), cell, hidden, layers, 64, impl="torch")
    models["torch"].load_state_dict(models["fused"].state_dict())
    # length per measurement from a short probe, so that every loop runs about `seconds`
    lengths = {}
    for loop in LOOPS:
        chars_per_second(models[loop], loop, batch, 20)  # warm-up (first-call set-up)
        rate = chars_per_second(models[loop], loop, batch, 50)
        lengths[loop] = max(20, int(rate * seconds / batch))
    rates: dict[str, list[float]] = {loop: [] for loop in LOOPS}
    for _ in range(rounds):
        for loop in LOOPS:
            rates[loop].append(chars_per_second(models[loop], loop, batch, lengths[loop]))
    med = {loop: statistics.median(r) for loop, r in rates.items()}
    params = [
        p for mod in (models["fused"].rnns, models["fused"].decoder) for p in mod.parameters()
    ]
    med["weight_bytes"] = sum(p.numel() * p.element_size() for p in params)
    # with half_weights the layers' weight matrices take 2 bytes per value
    halved = {id(p) for rnn in models["fused"].rnns for n, p in rnn.named_parameters()
              if n.startswith(("weight_ih", "weight_hh"))}  # fmt: skip
    med["weight_bytes_half"] = sum(
        p.numel() * (2 if id(p) in halved else p.element_size()) for p in params
    )
    return med


def rows(args):
    for shape in args.shapes.split(","):
        layers, hidden = (int(v) for v in shape.split("x"))
        for cell in args.cells.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                med = measure(cell, layers, hidden, batch, args.rounds, args.seconds)
                row = {"cell": cell, "layers": layers, "hidden": hidden, "batch": batch}
                row.update({f"{loop}_chars_per_s": round(med[loop], 1) for loop in LOOPS})
                row["weight_mb"] = round(med["weight_bytes"] / 1e6, 3)
                # steps per second x bytes per step: the rate the fused loop reads weights at
                row["fused_weight_gb_per_s"] = round(
                    med["fused"] / batch * med["weight_bytes"] / 1e9, 1
                )
                row["fused16_weight_gb_per_s"] = round(
                    med["fused16"] / batch * med["weight_bytes_half"] / 1e9, 1
                )
                row["read_gb_per_s"] = round(read_gbs(med["weight_bytes"], args.threads), 1)
                yield row


def main(argv=None) -> int:
    return run_standalone(parse_args(argv), rows, markdown)


def markdown(rows: list[dict], meta: dict) -> str:
    intro = (
        "Embedding 64, vocabulary 65, random weights. Characters per second over all samples "
        "of the batch; ratios against the Python loop over torch.nn layers. Raw numbers: "
        "results.csv. Weights: the recurrent and decoder weights one step reads; the rate "
        "at which the fused loop reads them is what bounds it at B=1, beside the best rate "
        "the run's threads read that many cached bytes (bench/measure.read_gbs). "
        "float16 weights: the fused loop with "
        "`half_weights` (the layers' weight matrices rounded to float16 and kept so, float32 "
        "arithmetic; it samples the rounded model, see docs/charlm.md)."
    )
    columns = [
        "cell", "layers × hidden", "batch", "fused loop", "fused loop, float16 weights",
        "Python loop, fusedrnn layers", "Python loop, torch.nn layers", "weights (MB)",
        "fused loop reads (GB/s)", "float16 weights: reads (GB/s)", "best read (GB/s)",
    ]  # fmt: skip
    body = []
    for r in rows:
        ref = r["torch_chars_per_s"]
        rates = [
            f"{r[f'{loop}_chars_per_s']:,.0f} ({r[f'{loop}_chars_per_s'] / ref:.1f}×)"
            for loop in LOOPS
        ]
        body.append([r["cell"], f"{r['layers']} × {r['hidden']}", str(r["batch"]), *rates,
                     f"{r['weight_mb']:.2f}", f"{r['fused_weight_gb_per_s']:.1f}",
                     f"{r['fused16_weight_gb_per_s']:.1f}", f"{r['read_gb_per_s']:.1f}"])  # fmt: skip
    return results_markdown("Char-LM sampling speed", meta, intro, columns, body)


if __name__ == "__main__":
    sys.exit(main())
