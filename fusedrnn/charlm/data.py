"""Corpus loading, the character vocabulary, the contiguous split and stream batching.

Batching follows char-rnn / torch-rnn: the training text is cut into B equally long contiguous
streams, one per batch row, and each batch is the next ``seq_len`` characters of every stream, so
the hidden state at the end of one batch is the right initial state for the next (truncated
backpropagation through time). An epoch ends when the streams are used up; the state is reset
there.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch

from .errors import DataError


def load_corpus(path: str | os.PathLike | None, bytes_mode: bool = False) -> str:
    """Read a training text; ``None`` means the embedded default corpus.

    In ``bytes_mode`` any file is accepted and each byte becomes one symbol; the returned string
    holds one character per byte (latin-1 decoding, U+0000..U+00FF), so every later stage works on
    ``str`` alike. Otherwise the file must be UTF-8 text.
    """
    if path is None:
        from .corpus import embedded_corpus

        text = embedded_corpus()
        if bytes_mode:
            text = text.encode("utf-8").decode("latin-1")
        return text
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"data file not found: {path}")
    if os.path.isdir(path):
        raise DataError(f"data path is a directory, not a file: {path}")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"cannot read data file {path}: {e.strerror or e}") from None
    if not raw:
        raise DataError(f"data file is empty: {path}")
    if bytes_mode:
        return raw.decode("latin-1")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"data file is not valid UTF-8 text ({path}, byte {e.start}); "
            "use --bytes to train on raw bytes"
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]  # a byte-order mark is not part of the text
    if not text:
        raise DataError(f"data file is empty: {path}")
    return text


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class Vocab:
    """Characters <-> integer ids. Stored in checkpoints as a plain dict (JSON-able)."""

    def __init__(self, chars: list[str] | str, bytes_mode: bool = False):
        chars = list(chars)
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise DataError("invalid vocabulary: symbols must be distinct single characters")
        if not chars:
            raise DataError("invalid vocabulary: it is empty")
        self.chars: list[str] = chars
        self.bytes_mode = bool(bytes_mode)
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str, bytes_mode: bool = False) -> Vocab:
        return cls(sorted(set(text)), bytes_mode)

    @property
    def size(self) -> int:
        return len(self.chars)

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Vocab)
            and self.chars == other.chars
            and self.bytes_mode == other.bytes_mode
        )

    def __repr__(self) -> str:
        return f"Vocab(size={self.size}, bytes_mode={self.bytes_mode})"

    def unknown(self, text: str) -> list[str]:
        """Characters of ``text`` that are not in the vocabulary (sorted, distinct)."""
        return sorted(set(text) - self.stoi.keys())

    def encode(self, text: str) -> list[int]:
        unknown = self.unknown(text)
        if unknown:
            shown = ", ".join(repr(c) for c in unknown[:10])
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise DataError(f"characters not in the model's vocabulary: {shown}{more}")
        return [self.stoi[c] for c in text]

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def text_from_user(self, s: str) -> str:
        """A string typed by the user (e.g. --prime) in the corpus' symbol space."""
        if self.bytes_mode:
            return s.encode("utf-8", "surrogateescape").decode("latin-1")
        return s

    def to_output_bytes(self, s: str) -> bytes:
        return s.encode("latin-1") if self.bytes_mode else s.encode("utf-8", "replace")

    def to_dict(self) -> dict:
        return {"chars": "".join(self.chars), "bytes_mode": self.bytes_mode}

    @classmethod
    def from_dict(cls, d: dict) -> Vocab:
        if not isinstance(d, dict) or not isinstance(d.get("chars"), str):
            raise DataError("invalid vocabulary record")
        return cls(list(d["chars"]), bool(d.get("bytes_mode", False)))


def split_corpus(text: str, val_frac: float = 0.1, test_frac: float = 0.0) -> tuple[str, str, str]:
    """Contiguous split: the first part trains, then validation, then test (nanoGPT-style)."""
    for name, f in (("val_frac", val_frac), ("test_frac", test_frac)):
        if not 0.0 <= f < 1.0:
            raise DataError(f"{name} must be in [0, 1), got {f}")
    if val_frac + test_frac >= 1.0:
        raise DataError(f"val_frac + test_frac must be < 1, got {val_frac + test_frac}")
    n = len(text)
    n_test = int(round(n * test_frac))
    n_val = int(round(n * val_frac))
    n_train = n - n_val - n_test
    return text[:n_train], text[n_train : n_train + n_val], text[n_train + n_val :]


def encode_tensor(vocab: Vocab, text: str) -> torch.Tensor:
    """[N] int64 ids (vectorised through a lookup table; the corpus can be millions of chars)."""
    unknown = vocab.unknown(text)
    if unknown:
        vocab.encode("".join(unknown))  # raises the standard error message
    if not text:
        return torch.zeros(0, dtype=torch.long)
    cps = torch.frombuffer(bytearray(text.encode("utf-32-le")), dtype=torch.int32).long()
    if cps.numel() == 0:
        return cps
    table = torch.full((int(cps.max()) + 1,), -1, dtype=torch.long)
    for i, c in enumerate(vocab.chars):
        if ord(c) < table.numel():
            table[ord(c)] = i
    return table[cps]


@dataclass
class Position:
    """Where training is in the data: the batch index inside the current epoch."""

    epoch: int = 0
    batch: int = 0


class StreamBatcher:
    """B contiguous streams over ``data``; batch k is columns [k*T, (k+1)*T) of every stream.

    ``rows`` selects the streams this process owns (distributed training gives each rank a
    contiguous share), so the union over ranks is exactly the single-process batch.
    """

    def __init__(
        self, data: torch.Tensor, batch_size: int, seq_len: int, rows: slice | None = None
    ):
        if batch_size < 1 or seq_len < 1:
            raise DataError("batch size and sequence length must be >= 1")
        n = data.numel()
        self.stream_len = n // batch_size
        self.batch_size = batch_size
        self.seq_len = seq_len
        # inputs use [0, L-1), targets are shifted by one: L-1 usable steps per stream
        self.batches_per_epoch = (self.stream_len - 1) // seq_len
        if self.batches_per_epoch < 1:
            need = batch_size * (seq_len + 1)
            raise DataError(
                f"the training text is too short: {n} characters, but one batch needs "
                f"batch_size x (seq_len + 1) = {need}; lower --batch-size/--seq-len or add text"
            )
        streams = data[: batch_size * self.stream_len].view(batch_size, self.stream_len)
        self.streams = streams[rows] if rows is not None else streams

    def get(self, pos: Position) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y): [b, T] int64 inputs and next-character targets at this position."""
        a = pos.batch * self.seq_len
        chunk = self.streams[:, a : a + self.seq_len + 1]
        return chunk[:, :-1], chunk[:, 1:]

    def advance(self, pos: Position) -> Position:
        if pos.batch + 1 >= self.batches_per_epoch:
            return Position(pos.epoch + 1, 0)
        return Position(pos.epoch, pos.batch + 1)
