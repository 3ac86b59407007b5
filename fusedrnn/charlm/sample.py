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
) -> str:
    """Generate ``length`` characters after ``prime`` (the prime is not part of the result).

    An empty prime starts from a newline when the vocabulary has one (the natural start of a
    line), else from the first character of the vocabulary; either way that seed is not output.
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
        seed = prime if prime else ("\n" if "\n" in vocab.stoi else vocab.chars[0])
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
