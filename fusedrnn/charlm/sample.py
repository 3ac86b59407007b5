"""Text generation: one character per step, the recurrent state carried between steps.

Each step calls the model with T=1 and the previous state under ``torch.no_grad``; for the
fusedrnn modules this is the single-step fast path of the backend.
"""

from __future__ import annotations

import copy
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
    fused: bool | None = None,
    half_weights: bool = False,
) -> str:
    """Generate ``length`` characters after ``prime`` (the prime is not part of the result).

    An empty prime starts from ``context`` when given: one of its texts (stretches of training
    text that end at a line start, see :func:`line_start_contexts`), chosen with ``generator``,
    is read first and not output, so the state is that of a model in the middle of real text.
    From a zero state a lone newline is a context the model has rarely seen, and at a low
    temperature its likeliest continuation is often a run of spaces. Without ``context`` the seed
    is a newline when the vocabulary has one, else its first character.
    ``on_text`` receives the text as it is chosen (streaming; in pieces of up to
    :data:`STREAM_CHUNK` characters on the fused path). ``fused`` and ``half_weights``: see
    :func:`generate_batch`.
    """
    return generate_batch(
        model, vocab, prime, length, 1, temperature, top_k, argmax, generator, on_text, context,
        fused, half_weights,
    )[0]  # fmt: skip


STREAM_CHUNK = 64  # characters per piece handed to on_text by the fused loop


@torch.no_grad()
def generate_batch(
    model: CharRNN,
    vocab: Vocab,
    prime: str = "",
    length: int = 200,
    num_samples: int = 1,
    temperature: float = 1.0,
    top_k: int | None = None,
    argmax: bool = False,
    generator: torch.Generator | None = None,
    on_text: Callable[[str], None] | None = None,
    context: list[str] | None = None,
    fused: bool | None = None,
    half_weights: bool = False,
) -> list[str]:
    """``num_samples`` texts generated side by side as one batch (see :func:`generate`).

    ``fused=None`` runs the whole per-character loop in the compiled CPU backend when the model
    allows it (see :func:`fused_unsupported`), else in Python; ``True`` insists on the fused loop and
    ``False`` on the Python one. Both make the same choices from the same generator: the fused
    loop runs the same operations (fusedrnn._C.generate), so a seed gives the same text.
    ``on_text`` (one sample only) receives the text as it is chosen.

    ``half_weights`` samples from the model with its recurrent layers' weight matrices (w_ih,
    w_hh; not biases, embedding or decoder) rounded to float16; the arithmetic stays in the
    model's dtype. A step then streams half the bytes, which is what bounds sampling from a
    large model on a CPU. The fused loop keeps the rounded weights in float16; the Python loop
    runs on a rounded copy of the model (:func:`half_weight_model`); both choose the same text.
    The text differs from the unrounded model's once a draw falls near a boundary between two
    characters: the rounding moves each probability by about 1e-4 (see the tests).
    """
    if length < 0:
        raise DataError(f"length must be >= 0, got {length}")
    if num_samples < 1:
        raise DataError(f"num_samples must be >= 1, got {num_samples}")
    if temperature < 0:
        raise DataError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 0:
        raise DataError(f"top-k must be >= 0, got {top_k}")
    if on_text is not None and num_samples > 1:
        raise DataError("on_text streams one sample; generate a batch without it")
    why_not = fused_unsupported(model, half_weights)
    if fused and why_not:
        raise DataError(f"the fused sampling loop cannot run this model: {why_not}")
    use_fused = why_not is None if fused is None else fused
    was_training = model.training
    model.eval()
    try:
        # with half_weights both loops read the prime through a rounded copy; the fused loop
        # then keeps the same rounded values itself, the Python loop runs on the copy
        rounded = half_weight_model(model) if half_weights else model
        device = model.decoder.weight.device
        usable = [c for c in (context or []) if c and not vocab.unknown(c)]
        if prime:
            seed = prime
        elif usable:
            seed = usable[int(torch.randint(len(usable), (1,), generator=generator))]
        else:
            seed = "\n" if "\n" in vocab.stoi else vocab.chars[0]
        ids = torch.tensor([vocab.encode(seed)] * num_samples, dtype=torch.long, device=device)
        logits, states, _ = rounded.forward_layers(ids)  # ids [B, P]
        last = logits[:, -1].float().cpu()  # [B, V]; choices are made on the CPU generator
        emit = None if on_text is None else lambda row: on_text(vocab.decode(row))
        if use_fused:
            chosen = _fused_loop(
                model, states, last, length, temperature, top_k, argmax, generator, emit,
                half_weights,
            )  # fmt: skip
        else:
            chosen = _python_loop(
                rounded, states, last, length, temperature, top_k, argmax, generator, emit
            )
        return [vocab.decode(row) for row in chosen.tolist()]
    finally:
        model.train(was_training)


def _python_loop(model, states, last, length, temperature, top_k, argmax, generator, emit):
    """One model call, softmax and draw per character: [B, length] ids."""
    device = model.decoder.weight.device
    out = torch.empty(last.shape[0], length, dtype=torch.long)
    for i in range(length):
        nxt = pick(last, temperature, top_k, argmax, generator)  # [B]
        out[:, i] = nxt
        if emit is not None:
            emit(nxt.tolist())
        if i + 1 < length:
            step = nxt.view(-1, 1).to(device)
            logits, states, _ = model.forward_layers(step, states)  # single-step path
            last = logits[:, -1].float().cpu()
    return out


def fused_unsupported(model: CharRNN, half_weights: bool = False) -> str | None:
    """Why the fused sampling loop cannot run ``model`` (None when it can): it needs the
    compiled CPU backend, a float32/float64 model on the CPU and fusedrnn layers that run on
    that backend, so that its arithmetic is the Python loop's; with ``half_weights``, a float32
    model of plain cells."""
    from fusedrnn import backends

    cpu = backends.get("cpu") if "cpu" in backends.available_backends() else None
    if cpu is None or not hasattr(cpu._C, "generate"):
        return "the compiled CPU backend (fusedrnn._C) is not built"
    w = model.decoder.weight
    if w.device.type != "cpu" or w.dtype not in (torch.float32, torch.float64):
        return f"it runs on the CPU in float32 or float64 (the model is {w.dtype} on {w.device})"
    if model.impl != "fusedrnn":
        return "its recurrent layers are torch.nn's"
    try:
        chosen = backends.resolve(model.backend, "cpu")  # FUSEDRNN_BACKEND counts too
    except Exception as e:  # the Python loop will raise it where the layers are called
        return str(e)
    if chosen != "cpu":
        return f"its layers run on the {chosen!r} backend"
    if half_weights and (w.dtype != torch.float32 or model.rnns[0].cell_options.enabled):
        return "its float16 weights are kept for float32 models of plain cells only"
    return None


def half_weight_model(model: CharRNN) -> CharRNN:
    """A copy of ``model`` whose recurrent layers' weight matrices are rounded to float16 (and
    stored back in the model's dtype): what ``half_weights`` samples from."""
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in _weight_matrices(twin):
            p.copy_(p.to(torch.float16).to(p.dtype))
    return twin


def _weight_matrices(model: CharRNN) -> list[torch.Tensor]:
    """The recurrent layers' w_ih and w_hh, checked to fit float16's range."""
    out = []
    for k, rnn in enumerate(model.rnns):
        for name, p in rnn.named_parameters():
            if not name.startswith(("weight_ih", "weight_hh")):
                continue
            top = float(p.detach().abs().max()) if p.numel() else 0.0
            if not top <= 65504.0:  # also NaN
                raise DataError(
                    f"layer {k} {name} has values up to {top:g}, beyond float16's range (65504)"
                )
            out.append(p)
    return out


def _fused_loop(
    model, states, last, length, temperature, top_k, argmax, generator, emit, half_weights=False
):
    """fusedrnn._C.generate over the whole text, streamed in STREAM_CHUNK pieces."""
    from fusedrnn import backends
    from fusedrnn.functional import MODES
    from fusedrnn.ops.library import BOOL_OPTIONS
    from fusedrnn.variants import LN_EPS, layer_weights

    rnns = list(model.rnns)
    lstm = model.is_lstm
    h = torch.cat([s[0] if lstm else s for s in states]).contiguous()  # [L, B, H]
    c = torch.cat([s[1] for s in states]).contiguous() if lstm else None
    options = rnns[0].cell_options
    variant_weights: list = []
    if options.enabled:
        for rnn in rnns:
            (extra,) = layer_weights(rnn)
            variant_weights += [extra.get(stem) for stem in _VARIANT_STEMS]
    args = dict(
        cell=MODES[rnns[0].mode],
        embed=None if model.embed is None else model.embed.weight.detach(),
        flat_weights=[w.detach() for rnn in rnns for w in rnn._flat_weights],
        num_layers=len(rnns),
        has_bias=rnns[0].bias,
        variant_weights=[None if w is None else w.detach() for w in variant_weights],
        **{name: getattr(options, name) for name in BOOL_OPTIONS},  # the module's bool fields
        zoneout_h=float(options.zoneout_h),
        zoneout_c=float(options.zoneout_c),
        eps=LN_EPS,
        dec_w=model.decoder.weight.detach(),
        dec_b=None if model.decoder.bias is None else model.decoder.bias.detach(),
        h=h,
        c=c,
        logits=last.contiguous(),
        temperature=float(temperature),
        top_k=int(top_k or 0),
        argmax=bool(argmax),
        generator=generator,
    )
    on_ids = None if emit is None else lambda ids: emit(ids[0].tolist())  # ids [B, n]
    return backends.get("cpu")._C.generate(
        length=length, on_ids=on_ids, every=STREAM_CHUNK, half_weights=half_weights, **args
    )  # [B, length]


# the order of fusedrnn._C.generate's variant weights, per layer
_VARIANT_STEMS = (
    "layer_norm_ih_weight", "layer_norm_ih_bias", "layer_norm_hh_weight", "layer_norm_hh_bias",
    "layer_norm_c_weight", "layer_norm_c_bias", "weight_ch",
)  # fmt: skip


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
