"""Text generation: one character per step, the recurrent state carried between steps.

Each step calls the model with T=1 and the previous state under ``torch.no_grad``; for the
fusedrnn modules this is the single-step fast path of the backend.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .data import Vocab
from .errors import DataError
from .model import CharRNN


def pick(
    logits: torch.Tensor,  # [B, V]
    temperature: float = 1.0,
    top_k: int | None = None,
    argmax: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:  # [B] int64
    """Choose the next characters: greedy, or sampled from softmax(logits / T) within the top k."""
    if argmax or temperature == 0:
        return logits.argmax(dim=-1)
    if temperature < 0:
        raise DataError(f"temperature must be >= 0, got {temperature}")
    logits = logits.float() / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: CharRNN,
    vocab: Vocab,
    prime: str = "",
    length: int = 200,
    temperature: float = 1.0,
    top_k: int | None = None,
    argmax: bool = False,
    generator: torch.Generator | None = None,
    on_text: Callable[[str], None] | None = None,
    context: list[str] | None = None,
) -> str:
    """Generate ``length`` characters after ``prime`` (the prime is not part of the result).

    An empty prime starts from ``context`` when given: one of its texts (stretches of training
    text that end at a line start, see :func:`line_start_contexts`), chosen with ``generator``,
    is read first and not output, so the state is that of a model in the middle of real text.
    From a zero state a lone newline is a context the model has rarely seen, and at a low
    temperature its likeliest continuation is often a run of spaces. Without ``context`` the seed
    is a newline when the vocabulary has one, else its first character.
    ``on_text`` receives every character as soon as it is chosen (streaming).
    """
    if length < 0:
        raise DataError(f"length must be >= 0, got {length}")
    if temperature < 0:
        raise DataError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 0:
        raise DataError(f"top-k must be >= 0, got {top_k}")
    was_training = model.training
    model.eval()
    try:
        device = model.decoder.weight.device
        usable = [c for c in (context or []) if c and not vocab.unknown(c)]
        if prime:
            seed = prime
        elif usable:
            seed = usable[int(torch.randint(len(usable), (1,), generator=generator))]
        else:
            seed = "\n" if "\n" in vocab.stoi else vocab.chars[0]
        ids = torch.tensor([vocab.encode(seed)], dtype=torch.long, device=device)  # [1, P]
        logits, states, _ = model.forward_layers(ids)
        last = logits[:, -1].float().cpu()  # [1, V]; choices are made on the CPU generator
        out: list[str] = []
        for i in range(length):
            nxt = pick(last, temperature, top_k, argmax, generator)  # [1]
            ch = vocab.chars[int(nxt)]
            out.append(ch)
            if on_text is not None:
                on_text(ch)
            if i + 1 < length:
                step = nxt.view(1, 1).to(device)
                logits, states, _ = model.forward_layers(step, states)  # single-step path
                last = logits[:, -1].float().cpu()
        return "".join(out)
    finally:
        model.train(was_training)


def line_start_contexts(text: str, n: int = 16, width: int = 120, seed: int = 0) -> list[str]:
    """Up to ``n`` stretches of ``text``, each about ``width`` characters ending just after a
    newline, at positions spread over the text (deterministic for a ``seed``). Stored in a
    checkpoint, they let an unprimed sample start from a line start in real context."""
    import random

    rng = random.Random(seed)
    out: list[str] = []
    if len(text) <= width:
        return out
    for _ in range(n * 4):
        if len(out) >= n:
            break
        end = text.find("\n", rng.randrange(width, len(text)))
        if end < 0:
            continue
        piece = text[end + 1 - width : end + 1]
        if piece not in out:
            out.append(piece)
    return out
