"""Held-out loss in nats and bits per character, the hidden state carried through the text."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import DataError
from .model import CharRNN


@torch.no_grad()
def evaluate(
    model: CharRNN,
    data: torch.Tensor,  # [N] int64
    batch_size: int = 32,
    seq_len: int = 128,
    max_chars: int | None = None,
) -> tuple[float, int]:
    """(mean loss in nats/char, number of predicted characters).

    The text is cut into ``b`` contiguous streams (b <= batch_size, fewer for a short text) that
    are read ``seq_len`` characters at a time with the state carried, so every character but the
    first of each stream is predicted with its full left context in the stream.
    """
    if max_chars:
        data = data[: max_chars + 1]
    n = data.numel()
    if n < 2:
        raise DataError(f"the evaluation text is too short ({n} characters)")
    b = max(1, min(batch_size, (n - 1) // max(1, seq_len)))
    L = n // b
    streams = data[: b * L].view(b, L).to(model.decoder.weight.device)
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    state = None
    try:
        for a in range(0, L - 1, seq_len):
            x = streams[:, a : min(a + seq_len, L - 1)]
            y = streams[:, a + 1 : a + 1 + x.shape[1]]
            logits, state = model(x, state)
            loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1), reduction="sum"
            )
            total += loss.double().cpu()
            count += y.numel()
    finally:
        model.train(was_training)
    return float(total) / count, count


def bits(nats: float) -> float:
    return nats / math.log(2)
