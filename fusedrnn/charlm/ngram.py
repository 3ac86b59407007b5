"""A character n-gram baseline with interpolated Kneser-Ney smoothing.

For a model of order ``n`` and a character ``w`` after the history ``h`` (the ``k - 1`` previous
characters at order ``k``)::

    P_k(w | h) = max(a_k(h w) - D_k, 0) / a_k(h)  +  D_k * N_k(h) / a_k(h) * P_{k-1}(w | h')
    P_0(w)     = 1 / V                                 (uniform over the corpus vocabulary)

- ``h'`` is ``h`` without its first character; ``a_k(h) = sum_w a_k(h w)``; ``N_k(h)`` is the
  number of distinct ``w`` with ``a_k(h w) > 0``.
- At the highest order ``a_n`` is the raw count of the n-gram in the training text. At every
  lower order ``a_k(h w)`` is the continuation count ``N1+(. h w)``: the number of distinct
  characters that precede ``h w`` in the training text (Kneser & Ney 1995; Chen & Goodman 1998).
- ``D_k = n1 / (n1 + 2 n2)`` with ``n1``, ``n2`` the numbers of k-grams whose (raw or
  continuation) count is 1 and 2. Since every count is an integer >= 1 and ``D_k <= 1``, the
  first term removes exactly ``D_k * N_k(h)`` from ``a_k(h)``, which is the mass handed to
  order ``k - 1``: each ``P_k(. | h)`` sums to 1. If ``n1 = 0`` (degenerate text), the estimate
  would be 0 and leave nothing for unseen characters; ``D_k = 0.5`` is used then.
- A history never seen at order k (``a_k(h) = 0``) gives ``P_k = P_{k-1}``. Near the start of a
  text, where fewer than ``k - 1`` characters precede, the highest order that fits is used.

So every character of the vocabulary (which is the whole corpus', as for the neural model, so a
character that occurs only in the validation text has probability from the uniform floor) gets a
nonzero probability. The loss is reported in nats and bits per character over the same split as
``eval`` (the ``--val-frac``/``--test-frac`` fractions of ``split_corpus``); each character but
the first of the evaluated text is predicted from the up to ``n - 1`` characters before it in
that text (``eval`` likewise predicts every character but the first of each stream).

The order-1 model is the unigram reduction: ``P_1(w) = max(c(w) - D_1, 0) / N + D_1 * N_1 / N / V``
with ``c(w)`` the raw count, ``N`` the number of training characters and ``N_1`` the number of
distinct training characters.

Tables are sorted int64 keys (the k-gram in base V) searched with ``numpy.searchsorted``: the
training text of tinyshakespeare is counted for orders 1..8 in a few seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np

from .analysis_cli import subcommand
from .errors import CharLMError, DataError

_FALLBACK_DISCOUNT = 0.5


def _gram_keys(ids: np.ndarray, k: int, V: int) -> np.ndarray:
    """[N - k + 1] int64: key of the k-gram starting at each position (base V, first char high)."""
    n = ids.shape[0] - k + 1
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    key = np.zeros(n, dtype=np.int64)
    for j in range(k):
        key = key * V + ids[j : j + n]
    return key


class _Order:
    """The counts of one order: k-gram keys -> count, history keys -> (total, distinct)."""

    def __init__(self, keys: np.ndarray, counts: np.ndarray, V: int, discount: float | None):
        self.keys = keys  # [G] sorted unique k-gram keys
        self.counts = counts.astype(np.float64)  # [G] raw or continuation counts, all >= 1
        hist = keys // V
        self.hkeys, first, self.htypes = np.unique(hist, return_index=True, return_counts=True)
        self.htotal = np.add.reduceat(self.counts, first) if len(keys) else np.zeros(0)
        self.htypes = self.htypes.astype(np.float64)
        if discount is None:
            n1 = int(np.sum(counts == 1))
            n2 = int(np.sum(counts == 2))
            discount = n1 / (n1 + 2 * n2) if n1 > 0 else _FALLBACK_DISCOUNT
        if not 0.0 < discount <= 1.0:
            raise ValueError(f"a Kneser-Ney discount must be in (0, 1], got {discount}")
        self.discount = float(discount)

    @staticmethod
    def _lookup(table: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if table.size == 0:
            return np.zeros(q.shape, dtype=np.int64), np.zeros(q.shape, dtype=bool)
        i = np.minimum(np.searchsorted(table, q), table.size - 1)
        return i, table[i] == q

    def apply(self, hist: np.ndarray, word: np.ndarray, lower: np.ndarray, V: int) -> np.ndarray:
        """P_k for (history key, word) pairs given P_{k-1} of the same pairs (broadcast)."""
        hi, hfound = self._lookup(self.hkeys, hist)
        gi, gfound = self._lookup(self.keys, hist * V + word)
        total = np.where(hfound, self.htotal[hi], 1.0)
        types = np.where(hfound, self.htypes[hi], 0.0)
        count = np.where(gfound, self.counts[gi], 0.0)
        D = self.discount
        p = (np.maximum(count - D, 0.0) + D * types * lower) / total
        return np.where(hfound, p, lower)


class KneserNeyLM:
    """Interpolated Kneser-Ney character model of a fixed order over a fixed vocabulary.

    ``chars``: the vocabulary (every character the model may ever be asked about).
    ``discounts``: optional fixed ``D_1..D_n`` instead of the ``n1 / (n1 + 2 n2)`` estimates.
    """

    def __init__(self, order: int, chars, discounts: list[float] | None = None):
        chars = list(chars)
        if order < 1:
            raise CharLMError(f"the n-gram order must be >= 1, got {order}")
        if not chars or len(set(chars)) != len(chars):
            raise CharLMError("the vocabulary must be non-empty distinct characters")
        V = len(chars)
        if order * math.log2(max(V, 2)) >= 62:
            max_order = int(62 / math.log2(max(V, 2)))
            raise CharLMError(
                f"order {order} is too high for a vocabulary of {V} characters (keys would "
                f"overflow 64 bits); the highest order for this vocabulary is {max_order}"
            )
        if discounts is not None and len(discounts) != order:
            raise ValueError(f"expected {order} discounts, got {len(discounts)}")
        self.order = order
        self.chars = chars
        self.V = V
        self.stoi = {c: i for i, c in enumerate(chars)}
        self._fixed_discounts = discounts
        self.orders: list[_Order] = []

    # ----------------------------------------------------------------------------- fitting
    def encode(self, text: str) -> np.ndarray:
        try:
            return np.fromiter((self.stoi[c] for c in text), dtype=np.int64, count=len(text))
        except KeyError as e:
            raise DataError(f"character {e.args[0]!r} is not in the n-gram vocabulary") from None

    def fit(self, text: str) -> KneserNeyLM:
        ids = self.encode(text)
        if ids.size == 0:
            raise DataError("the n-gram training text is empty")
        n, V = self.order, self.V
        types = [np.zeros(0, dtype=np.int64)] * (n + 2)  # types[k]: distinct k-grams of the text
        raw_counts = None
        for k in range(1, n + 1):
            u, c = np.unique(_gram_keys(ids, k, V), return_counts=True)
            types[k] = u
            if k == n:
                raw_counts = c
        self.orders = []
        for k in range(1, n + 1):
            if k == n:
                keys, counts = types[n], raw_counts
            else:
                # continuation count of a k-gram: distinct (k+1)-gram types ending with it
                keys, counts = np.unique(types[k + 1] % V**k, return_counts=True)
            d = None if self._fixed_discounts is None else self._fixed_discounts[k - 1]
            self.orders.append(_Order(keys, counts, V, d))
        return self

    @property
    def discounts(self) -> list[float]:
        return [o.discount for o in self.orders]

    def _check_fitted(self) -> None:
        if not self.orders:
            raise CharLMError("the n-gram model has not been fitted")

    # ----------------------------------------------------------------------------- probabilities
    def distribution(self, context: str | list[int] | np.ndarray) -> np.ndarray:
        """[V] float64: P(next char | context), using the last ``order - 1`` characters."""
        self._check_fitted()
        ctx = self.encode(context) if isinstance(context, str) else np.asarray(context, np.int64)
        V = self.V
        words = np.arange(V, dtype=np.int64)
        p = np.full(V, 1.0 / V)
        for k, table in enumerate(self.orders, start=1):
            if len(ctx) < k - 1:
                break
            h = 0
            for c in ctx[len(ctx) - (k - 1) :] if k > 1 else []:
                h = h * V + int(c)
            p = table.apply(np.full(V, h, dtype=np.int64), words, p, V)
        return p

    def token_probs(self, ids: np.ndarray, start: int = 1) -> np.ndarray:
        """[N - start] float64: P(ids[t] | up to order-1 previous ids) for t = start..N-1."""
        self._check_fitted()
        ids = np.asarray(ids, dtype=np.int64)
        N = ids.shape[0]
        t = np.arange(start, N)
        word = ids[start:]
        p = np.full(t.shape, 1.0 / self.V)
        V = self.V
        for k, table in enumerate(self.orders, start=1):
            # history of t = ids[t-k+1 : t]; available when t >= k - 1
            ok = t >= k - 1
            hist = np.zeros(t.shape, dtype=np.int64)
            for j in range(k - 1, 0, -1):
                hist = hist * V + np.where(ok, ids[np.maximum(t - j, 0)], 0)
            p = np.where(ok, table.apply(hist, word, p, V), p)
        return p

    def loss(self, text: str | np.ndarray) -> tuple[float, int]:
        """(mean negative log-likelihood in nats/char, number of predicted characters)."""
        ids = self.encode(text) if isinstance(text, str) else np.asarray(text, np.int64)
        if ids.shape[0] < 2:
            raise DataError(f"the evaluation text is too short ({ids.shape[0]} characters)")
        p = self.token_probs(ids, start=1)
        return float(-np.mean(np.log(p))), int(p.shape[0])

    # ----------------------------------------------------------------------------- sampling
    def sample(self, length: int, seed: int = 0, prime: str = "", temperature: float = 1.0) -> str:
        """``length`` characters drawn after ``prime`` (not included), reproducible by seed."""
        self._check_fitted()
        if length < 0:
            raise CharLMError("the sample length must be >= 0")
        if temperature < 0:
            raise CharLMError("the temperature must be >= 0")
        rng = np.random.default_rng(seed)
        ctx = list(self.encode(prime))
        out = []
        for _ in range(length):
            p = self.distribution(ctx[-(self.order - 1) :] if self.order > 1 else [])
            if temperature == 0:
                i = int(np.argmax(p))
            else:
                if temperature != 1.0:
                    logp = np.log(p) / temperature
                    p = np.exp(logp - logp.max())
                c = np.cumsum(p)
                i = int(min(np.searchsorted(c, rng.random() * c[-1], side="right"), self.V - 1))
            ctx.append(i)
            out.append(self.chars[i])
        return "".join(out)


# --------------------------------------------------------------------------------- command line
def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, help="UTF-8 text file (default: the embedded corpus)")
    p.add_argument("--bytes", action="store_true", help="model raw bytes instead of UTF-8 chars")
    p.add_argument("--order", type=int, default=5, help="n-gram order n (default 5)")
    p.add_argument(
        "--table",
        action="store_true",
        help="report every order 1..n (one model per order) instead of order n only",
    )
    p.add_argument("--val-frac", type=float, default=0.05, help="as for train (default 0.05)")
    p.add_argument("--test-frac", type=float, default=0.05, help="as for train (default 0.05)")
    p.add_argument("--split", choices=("val", "test"), default="val", help="text to evaluate")
    p.add_argument("--sample", type=int, default=0, metavar="N", help="print N sampled chars")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prime", default="", help="text the sample continues")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    from .data import Vocab, load_corpus, split_corpus

    text = load_corpus(args.data, bytes_mode=args.bytes)
    train, val, test = split_corpus(text, args.val_frac, args.test_frac)
    held = val if args.split == "val" else test
    if len(train) < 1:
        raise DataError("the training split is empty")
    if len(held) < 2:
        raise DataError(
            f"the {args.split} split has {len(held)} characters; raise --{args.split}-frac"
        )
    vocab = Vocab.from_text(text, bytes_mode=args.bytes)  # the whole corpus, as train does
    orders = range(1, args.order + 1) if args.table else [args.order]
    rows = []
    model = None
    for n in orders:
        t0 = time.perf_counter()
        model = KneserNeyLM(n, vocab.chars).fit(train)
        nats, count = model.loss(held)
        rows.append(
            {
                "order": n,
                "split": args.split,
                "nats_per_char": nats,
                "bits_per_char": nats / math.log(2),
                "chars": count,
                "discounts": model.discounts,
                "seconds": time.perf_counter() - t0,
            }
        )
    result: dict = {
        "data": args.data or "embedded",
        "vocab_size": vocab.size,
        "train_chars": len(train),
        "results": rows,
    }
    if args.sample:
        prime = vocab.text_from_user(args.prime)
        result["sample"] = model.sample(args.sample, args.seed, prime, args.temperature)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(
        f"data: {result['data']}  vocab: {vocab.size}  train chars: {len(train)}  "
        f"{args.split} chars: {len(held)}"
    )
    print("| order | nats/char | bits/char |")
    print("|---:|---:|---:|")
    for r in rows:
        print(f"| {r['order']} | {r['nats_per_char']:.4f} | {r['bits_per_char']:.4f} |")
    if args.sample:
        sys.stdout.flush()
        sys.stdout.buffer.write(vocab.to_output_bytes(args.prime + result["sample"]) + b"\n")
        sys.stdout.flush()
    return 0


register, main = subcommand(
    "ngram",
    "character n-gram baseline (interpolated Kneser-Ney)",
    "Train a character n-gram model with interpolated Kneser-Ney smoothing on "
    "the training split and report its held-out loss (comparable with `eval`).",
    _add_arguments,
    run,
)


if __name__ == "__main__":
    sys.exit(main())
