"""Look inside a trained character model: text coloured by one unit's activation.

``visualize`` runs a checkpoint over a text one character at a time (``CharRNN.trace``),
records every hidden (``h``) and, for LSTMs, cell (``c``) unit of every layer, and renders

- a self-contained HTML page (no external assets): each character's background is the chosen
  unit's activation after reading it, blue (-1) through white (0) to red (+1); with ``--top-k K``
  every character gets a column below it with the model's K likeliest next characters, shaded
  by their probability (the figures of Karpathy's "The Unreasonable Effectiveness of Recurrent
  Neural Networks"). Hovering a character shows the exact values.
- the same as a PNG (matplotlib, Agg).

Colour scale (``--scale``): ``natural`` (default): ``h`` of an LSTM, GRU or tanh RNN lies in
(-1, 1) and is shown as is; the unbounded cell state ``c`` is shown as ``tanh(c)``, which is what
the LSTM itself passes to its output gate; a ReLU RNN's ``h`` (>= 0) is divided by its maximum.
``max``: the value divided by the unit's largest ``|value|`` over the text (0 stays white).
``range``: the unit's minimum over the text is blue, its maximum red (shows how a unit varies
even when it saturates tanh or never changes sign; ``find-cells`` renders with it).

Spaces are drawn as a grey ``␣``, newlines as a grey ``↵`` that then breaks the line, tabs as
``⇥`` and other control characters as ``\\xNN``; everything else is HTML-escaped.
"""

from __future__ import annotations

import argparse
import html
import math
import os
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .analysis_cli import subcommand
from .errors import CharLMError, DataError

DEFAULT_MAX_CHARS = 2000
PNG_MAX_CHARS = 4000  # beyond this a PNG would be unreadably large; the HTML has no such limit


# --------------------------------------------------------------------------------- tracing
@dataclass
class Trace:
    """Everything recorded while the model read ``text`` (index t = after reading text[t])."""

    text: str
    chars: list[str]  # the vocabulary, index -> character
    h: np.ndarray  # [L, T, H] hidden state of every layer
    c: np.ndarray | None  # [L, T, H] cell state (LSTM) or None
    probs: np.ndarray  # [T, V] P(next character | text[: t + 1])
    cell: str = "lstm"

    @property
    def layers(self) -> int:
        return self.h.shape[0]

    @property
    def hidden(self) -> int:
        return self.h.shape[2]

    def values(self, layer: int, unit: int, kind: str = "h") -> np.ndarray:
        """[T] raw activation of one unit."""
        check_unit(self, layer, unit, kind)
        src = self.h if kind == "h" else self.c
        return src[layer, :, unit]


def check_unit(trace: Trace, layer: int, unit: int, kind: str) -> None:
    if kind not in ("h", "c"):
        raise CharLMError(f"--kind must be h or c, got {kind!r}")
    if kind == "c" and trace.c is None:
        raise CharLMError(f"--kind c needs an LSTM; this model is a {trace.cell}")
    if not 0 <= layer < trace.layers:
        raise CharLMError(
            f"--layer {layer} is out of range: the model has {trace.layers} layers "
            f"(0..{trace.layers - 1})"
        )
    if not 0 <= unit < trace.hidden:
        raise CharLMError(
            f"--unit {unit} is out of range: layers have {trace.hidden} units "
            f"(0..{trace.hidden - 1})"
        )


def run_trace(model, vocab, text: str, chunk: int = 4096, fast: bool = True) -> Trace:
    """Feed ``text`` through ``model`` (a CharRNN) and record every unit at every character.

    The reference path is ``CharRNN.trace`` (one character per call). ``fast`` instead runs
    whole chunks through ``CharRNN.forward_with_hidden`` (one call per layer and chunk), which
    yields every layer's ``h``; an LSTM's ``c`` is then rebuilt from the layer's weights:
    the gates of step t only need x_t and h_{t-1}, both known, so they are computed for all
    steps at once and ``c_t = f_t c_{t-1} + i_t g_t`` is a cheap elementwise scan. The rebuilt
    ``o_t tanh(c_t)`` must reproduce the layer's ``h_t``; if it does not (a layer variant this
    does not know), the reference path is used.
    """
    import torch

    if len(text) == 0:
        raise DataError("the text to analyse is empty")
    ids = vocab.encode(text)  # raises on characters outside the vocabulary
    model.eval()
    with torch.no_grad():
        got = _trace_fast(model, ids, chunk) if fast else None
        if got is None:
            got = _trace_reference(model, ids, chunk)
    h, c, lg = got
    probs = torch.softmax(lg.double(), dim=-1).numpy()
    return Trace(
        text=text,
        chars=list(vocab.chars),
        h=h,
        c=c,
        probs=probs,
        cell=getattr(model, "cell", "lstm"),
    )


def _trace_reference(model, ids: list[int], chunk: int):
    import torch

    device = model.decoder.weight.device
    hs, cs, logits = [], [], []
    state = None
    for a in range(0, len(ids), chunk):  # chunks carry the state: same result, less memory
        x = torch.tensor([ids[a : a + chunk]], dtype=torch.long, device=device)  # [1, t]
        tr = model.trace(x, state)
        state = tr.get("state")
        hs.append(torch.stack(list(tr["h"])).float().cpu().numpy())  # [L, t, H]
        if tr.get("c") is not None:
            cs.append(torch.stack(list(tr["c"])).float().cpu().numpy())
        logits.append(tr["logits"].float().cpu())
    return (
        np.concatenate(hs, axis=1),
        np.concatenate(cs, axis=1) if cs else None,
        torch.cat(logits),
    )


def _trace_fast(model, ids: list[int], chunk: int):
    import torch

    if not hasattr(model, "forward_with_hidden") or not hasattr(model, "_inputs"):
        return None
    lstm = getattr(model, "cell", None) == "lstm"
    if lstm and not all(
        hasattr(r, "weight_hh_l0") and getattr(r, "proj_size", 0) == 0 for r in model.rnns
    ):
        return None
    device = model.decoder.weight.device
    hs, cs, logits = [], [], []
    state = None
    for a in range(0, len(ids), chunk):
        x = torch.tensor([ids[a : a + chunk]], dtype=torch.long, device=device)  # [1, t]
        lg, new_state, outs = model.forward_with_hidden(x, state)
        h = torch.stack([o[0] for o in outs]).float()  # [L, t, H]
        if lstm:
            layer_in = model._inputs(x)[0]  # [t, E]
            c_layers = []
            for k, rnn in enumerate(model.rnns):
                h_prev0 = state[0][k, 0] if state is not None else h.new_zeros(h.shape[2])
                c_prev0 = state[1][k, 0] if state is not None else h.new_zeros(h.shape[2])
                xin = layer_in if k == 0 else h[k - 1]
                c_k = _lstm_cells(rnn, xin, h[k], h_prev0, c_prev0)
                if c_k is None:
                    return None
                c_layers.append(c_k)
            cs.append(np.stack(c_layers))
        hs.append(h.cpu().numpy())
        logits.append(lg[0].float().cpu())
        state = new_state
    return (
        np.concatenate(hs, axis=1),
        np.concatenate(cs, axis=1) if cs else None,
        torch.cat(logits),
    )


def _lstm_cells(rnn, x, h, h0, c0) -> np.ndarray | None:
    """[t, H] cell states of one LSTM layer from its input x [t, I], outputs h [t, H] and
    initial state h0, c0 [H]; None if they do not reproduce h (not a plain LSTM)."""
    import torch

    w_ih, w_hh = rnn.weight_ih_l0.double(), rnn.weight_hh_l0.double()  # [4H, I], [4H, H]
    b = 0.0
    if getattr(rnn, "bias", True):
        b = (rnn.bias_ih_l0 + rnn.bias_hh_l0).double()  # [4H]
    h_prev = torch.cat([h0[None], h[:-1]]).double()  # [t, H]
    gates = x.double() @ w_ih.T + h_prev @ w_hh.T + b  # [t, 4H], rows i, f, g, o
    i, f, g, o = gates.chunk(4, dim=1)
    i, f, g, o = (
        torch.sigmoid(i).cpu().numpy(),
        torch.sigmoid(f).cpu().numpy(),
        torch.tanh(g).cpu().numpy(),
        torch.sigmoid(o).cpu().numpy(),
    )
    ig = i * g
    c = np.empty_like(ig)
    cur = c0.double().cpu().numpy()
    for t in range(c.shape[0]):
        cur = f[t] * cur + ig[t]
        c[t] = cur
    if not np.allclose(o * np.tanh(c), h.double().cpu().numpy(), atol=1e-4, rtol=1e-3):
        return None
    return c.astype(np.float32)


SCALES = ("natural", "max", "range")


def display_values(trace: Trace, layer: int, unit: int, kind: str, scale: str = "natural"):
    """([T] values in [-1, 1] for colouring, description of the scale).

    natural: h as is, tanh(c) for c (a ReLU RNN's h divided by its maximum); max: v / max|v|
    (0 stays white); range: the unit's [min, max] over the text mapped linearly onto [-1, 1]
    (shows how the unit varies even when it never changes sign; 0 is then not white).
    """
    v = trace.values(layer, unit, kind).astype(np.float64)
    name = "c" if kind == "c" else "h"
    if scale == "natural":
        if kind == "c":
            return np.tanh(v), "tanh(c)"
        if trace.cell == "rnn_relu":
            m = float(np.max(np.abs(v))) or 1.0
            return v / m, f"h / max h (max = {m:.3g})"
        return np.clip(v, -1.0, 1.0), "h"
    if scale == "max":
        m = float(np.max(np.abs(v))) or 1.0
        return v / m, f"{name} / max|{name}| (max|{name}| = {m:.3g})"
    if scale == "range":
        lo, hi = float(np.min(v)), float(np.max(v))
        span = (hi - lo) or 1.0
        desc = f"{name} from its min {lo:.3g} (blue) to its max {hi:.3g} (red)"
        return 2 * (v - lo) / span - 1, desc
    raise CharLMError(f"--scale must be one of {', '.join(SCALES)}, got {scale!r}")


def top_k(trace: Trace, k: int) -> tuple[np.ndarray, np.ndarray]:
    """([T, k] character indices, [T, k] probabilities), likeliest first."""
    k = max(1, min(k, trace.probs.shape[1]))
    idx = np.argsort(-trace.probs, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(trace.probs, idx, axis=1)


# --------------------------------------------------------------------------------- colours
def activation_rgb(v: np.ndarray) -> np.ndarray:
    """[...] values in [-1, 1] -> [..., 3] floats in [0, 1]: blue - white - red.

    Saturation stops at 75% so that black text stays readable on both ends.
    """
    v = np.clip(np.nan_to_num(np.asarray(v, dtype=np.float64)), -1.0, 1.0)[..., None]
    red = np.array([0.85, 0.15, 0.12])
    blue = np.array([0.13, 0.35, 0.85])
    white = np.ones(3)
    a = np.abs(v) * 0.75
    end = np.where(v >= 0, red, blue)
    return white * (1 - a) + end * a


def prob_rgb(p: np.ndarray) -> np.ndarray:
    """[...] probabilities -> [..., 3]: white (0) to red (1), as in Karpathy's figures."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)[..., None]
    return np.ones(3) * (1 - p) + np.array([0.9, 0.2, 0.15]) * p


def _css(rgb) -> str:
    r, g, b = (int(round(255 * float(x))) for x in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


def visible(ch: str) -> tuple[str, bool]:
    """(printable stand-in, whether it is a stand-in) for one character."""
    if ch == " ":
        return "\u2423", True
    if ch == "\n":
        return "\u21b5", True
    if ch == "\t":
        return "\u21e5", True
    if ch == "\r":
        return "\\r", True
    o = ord(ch)
    if o < 32 or 0x7F <= o < 0xA0 or 0xD800 <= o < 0xE000:
        return f"\\x{o:02x}" if o < 256 else f"\\u{o:04x}", True
    if unicodedata.combining(ch):
        return "\u25cc" + ch, True  # a combining mark alone would sit on its neighbour's cell
    return ch, False


# --------------------------------------------------------------------------------- HTML
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 16px; color: #111; background: #fff; }
h1 { font-size: 18px; margin: 0 0 4px 0; }
.info { color: #444; font-size: 13px; margin: 2px 0; }
.legend { display: flex; align-items: center; gap: 8px; font-size: 12px; margin: 8px 0 14px 0; }
.bar { width: 240px; height: 14px; border: 1px solid #999;
       background: linear-gradient(to right, #2159d9, #ffffff, #d9261f); }
.pbar { width: 120px; height: 14px; border: 1px solid #999;
        background: linear-gradient(to right, #ffffff, #e63326); }
.text { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 15px;
        line-height: 1.55; white-space: pre-wrap; word-break: break-all; }
.text span { padding: 1px 0; }
.vis { color: #8a8a8a; }
.grid { display: flex; flex-wrap: wrap; row-gap: 10px;
        font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; }
.col { display: flex; flex-direction: column; min-width: 1.25em; text-align: center; }
.col .c { font-size: 15px; padding: 2px 1px; border-bottom: 1px solid #ccc; }
.col .p { font-size: 11px; padding: 0 1px; line-height: 1.3; }
.br { flex-basis: 100%; height: 0; }
"""


def _char_html(ch: str) -> str:
    s, stand_in = visible(ch)
    s = html.escape(s, quote=True)
    return f'<span class="vis">{s}</span>' if stand_in else s


def render_html(
    text: str,
    values: np.ndarray,  # [T] in [-1, 1]
    title: str = "",
    info: list[str] | None = None,
    raw: np.ndarray | None = None,  # [T] raw activations for the tooltips
    topk: tuple[np.ndarray, np.ndarray] | None = None,  # ([T, k] char idx, [T, k] probs)
    chars: list[str] | None = None,  # vocabulary, needed with topk
) -> str:
    """A complete, self-contained HTML page."""
    T = len(text)
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (T,):
        raise ValueError(f"expected {T} values, got shape {values.shape}")
    raw = values if raw is None else np.asarray(raw)
    bg = activation_rgb(values)
    parts = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title or 'activations')}</title><style>{_STYLE}</style></head>",
        "<body>",
        f"<h1>{html.escape(title)}</h1>" if title else "",
    ]
    for line in info or []:
        parts.append(f'<p class="info">{html.escape(line)}</p>')
    parts.append(
        '<div class="legend"><span>-1</span><span class="bar"></span><span>+1</span>'
        + (
            '<span style="margin-left:24px">next-char probability 0</span>'
            '<span class="pbar"></span><span>1</span>'
            if topk is not None
            else ""
        )
        + "</div>"
    )

    def tip(t: int) -> str:
        s = f"{visible(text[t])[0]}  value {float(raw[t]):+.4f}"
        if topk is not None:
            guesses = ", ".join(
                f"{visible(chars[int(i)])[0]} {float(p):.3f}"
                for i, p in zip(topk[0][t], topk[1][t], strict=True)
            )
            s += f"  next: {guesses}"
        return html.escape(s, quote=True)

    if topk is None:
        parts.append('<div class="text">')
        for t, ch in enumerate(text):
            parts.append(
                f'<span style="background:{_css(bg[t])}" title="{tip(t)}">{_char_html(ch)}</span>'
            )
            if ch == "\n":
                parts.append("\n")
        parts.append("</div>")
    else:
        if chars is None:
            raise ValueError("render_html with topk needs the vocabulary (chars=)")
        idx, pr = topk
        pbg = prob_rgb(pr)
        parts.append('<div class="grid">')
        for t, ch in enumerate(text):
            cells = [
                f'<div class="col" title="{tip(t)}">',
                f'<span class="c" style="background:{_css(bg[t])}">{_char_html(ch)}</span>',
            ]
            for j in range(idx.shape[1]):
                cells.append(
                    f'<span class="p" style="background:{_css(pbg[t, j])}">'
                    f"{_char_html(chars[int(idx[t, j])])}</span>"
                )
            cells.append("</div>")
            parts.append("".join(cells))
            if ch == "\n":
                parts.append('<div class="br"></div>')
        parts.append("</div>")
    parts.append("</body></html>\n")
    return "".join(parts)


# --------------------------------------------------------------------------------- PNG
# The PNG draws every row of text as one monospaced string (one text object per row instead of
# one per character keeps a 2000-character figure at about a second); each character cell is
# exactly one glyph advance wide, so the coloured cells line up with the glyphs.
PNG_FONT = "DejaVu Sans Mono"  # ships with matplotlib
PNG_DPI = 100
_ADVANCE_EM = 1233 / 2048  # DejaVu Sans Mono: every glyph advances 1233 font units of 2048
# Agg places glyphs at whole-pixel advances, so the font size is chosen to make the advance
# exactly 8 pixels (~9.6 pt); any other size drifts against the cells along a row.
_ADVANCE_PX = 8
PNG_FONTSIZE = _ADVANCE_PX * 72 / (PNG_DPI * _ADVANCE_EM)  # points
CELL_W = _ADVANCE_PX / PNG_DPI  # inches
CELL_H, HEADER_H, MARGIN = 0.21, 0.45, 0.2  # inches
_MISSING = "\u25a1"  # drawn for characters the PNG font has no glyph for
_glyphs: set[int] | None = None


def _png_char(ch: str) -> tuple[str, bool]:
    """(one glyph for the PNG, whether it is a stand-in) -- always exactly one character."""
    global _glyphs
    s, stand_in = visible(ch)
    if len(s) != 1:
        return _MISSING, True
    if _glyphs is None:
        from matplotlib import font_manager
        from matplotlib.ft2font import FT2Font

        _glyphs = set(FT2Font(font_manager.findfont(PNG_FONT)).get_charmap())
    if ord(s) not in _glyphs or (0x1100 <= ord(s) and _east_asian_wide(s)):
        return _MISSING, True
    return s, stand_in


def _east_asian_wide(ch: str) -> bool:
    return unicodedata.east_asian_width(ch) in ("W", "F")


def _layout(text: str, cols: int) -> list[list[int]]:
    """Rows of character indices: a row ends after a newline or after ``cols`` characters."""
    rows: list[list[int]] = [[]]
    for t, ch in enumerate(text):
        if len(rows[-1]) >= cols:
            rows.append([])
        rows[-1].append(t)
        if ch == "\n":
            rows.append([])
    if not rows[-1] and len(rows) > 1:
        rows.pop()
    return rows


def _figsize(text: str, cols: int, k: int) -> tuple[float, float]:
    w, h = png_size(text, cols, k)
    # Agg truncates width * dpi to whole pixels; a quarter pixel more keeps that exact
    return (w + 0.25) / PNG_DPI, (h + 0.25) / PNG_DPI


def png_size(text: str, cols: int = 80, k: int = 0) -> tuple[int, int]:
    """The (width, height) in pixels that :func:`render_png` produces."""
    rows = _layout(text, cols)
    width = max(len(r) for r in rows)
    per_row = 1 + k + (0.4 if k else 0)  # a gap between blocks when guesses are shown
    w = 2 * MARGIN + max(width, 60) * CELL_W
    h = HEADER_H + 2 * MARGIN + len(rows) * per_row * CELL_H
    return math.ceil(w * PNG_DPI), math.ceil(h * PNG_DPI)


def render_png(
    path: str | os.PathLike,
    text: str,
    values: np.ndarray,  # [T] in [-1, 1]
    title: str = "",
    topk: tuple[np.ndarray, np.ndarray] | None = None,  # ([T, k] char idx, [T, k] probs)
    chars: list[str] | None = None,  # vocabulary, needed with topk
    cols: int = 80,
) -> tuple[int, int]:
    """Draw the coloured text (and guesses) into a PNG; returns its (width, height) in pixels."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if len(text) == 0:
        raise DataError("nothing to draw: the text is empty")
    if len(text) > PNG_MAX_CHARS:
        raise CharLMError(
            f"a PNG shows at most {PNG_MAX_CHARS} characters, got {len(text)}; "
            "lower --max-chars (the HTML has no limit)"
        )
    if topk is not None and chars is None:
        raise ValueError("render_png with topk needs the vocabulary (chars=)")
    k = 0 if topk is None else topk[0].shape[1]
    rows = _layout(text, cols)
    fw, fh = _figsize(text, cols, k)
    per_row = 1 + k + (0.4 if k else 0)
    bg = activation_rgb(values)
    fig = plt.figure(figsize=(fw, fh), dpi=PNG_DPI)
    try:
        ax = fig.add_axes((0, 0, 1, 1))
        ax.set_xlim(0, fw)
        ax.set_ylim(fh, 0)  # y grows downwards, like text
        ax.axis("off")
        if title:
            ax.text(
                MARGIN,
                MARGIN + 0.12,
                title,
                fontsize=10,
                va="center",
                ha="left",
                family="DejaVu Sans",
            )
        font = {"family": PNG_FONT, "fontsize": PNG_FONTSIZE, "va": "center", "ha": "left"}
        for r, row in enumerate(rows):
            y0 = HEADER_H + MARGIN + r * per_row * CELL_H
            block = np.ones((1 + k, len(row), 3))
            block[0] = bg[row]
            if k:
                block[1:] = np.transpose(prob_rgb(topk[1][row]), (1, 0, 2))
            ax.imshow(
                block,
                extent=(MARGIN, MARGIN + len(row) * CELL_W, y0 + (1 + k) * CELL_H, y0),
                interpolation="nearest",
                aspect="auto",
            )
            lines = [[_png_char(text[t]) for t in row]]
            for q in range(k):
                lines.append([_png_char(chars[int(topk[0][t, q])]) for t in row])
            for q, glyphs in enumerate(lines):
                y = y0 + (q + 0.5) * CELL_H
                normal = "".join(" " if si else g for g, si in glyphs)
                grey = "".join(g if si else " " for g, si in glyphs)
                if normal.strip():
                    ax.text(MARGIN, y, normal, color="#000000", **font)
                if grey.strip():
                    ax.text(MARGIN, y, grey, color="#8a8a8a", **font)
        fig.savefig(path, dpi=PNG_DPI)
    finally:
        plt.close(fig)
    return png_size(text, cols, k)


# --------------------------------------------------------------------------------- inputs
def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="a .pt from training")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--impl", choices=["fusedrnn", "torch"], help="recurrent layers to run")
    p.add_argument("--backend", help="fusedrnn backend (default: automatic)")
    p.add_argument("--threads", type=int, help="torch intra-op threads")


def add_text_args(p: argparse.ArgumentParser, default_max: int) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--text",
        metavar="FILE",
        help="analyse this UTF-8 file (default: the validation split of the "
        "checkpoint's training data)",
    )
    g.add_argument("--text-string", metavar="TEXT", help="analyse this string")
    p.add_argument(
        "--split",
        choices=("val", "test", "train"),
        default="val",
        help="split of the training data to analyse when no text is given",
    )
    p.add_argument(
        "--max-chars",
        type=int,
        default=default_max,
        help=f"analyse at most N characters (default {default_max}; 0 = all)",
    )


def load_model(args):
    import torch

    from .checkpoint import load_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise CharLMError(f"--device {args.device} requested but CUDA is not available")
    return load_checkpoint(
        args.checkpoint, map_location=args.device, impl=args.impl, backend=args.backend
    )


def resolve_text(args, vocab, config: dict) -> tuple[str, str]:
    """(text to analyse, description of where it came from)."""
    from .data import load_corpus, split_corpus

    if args.max_chars is not None and args.max_chars < 0:
        raise CharLMError("--max-chars must be >= 0")
    if args.text_string is not None:
        text, desc = vocab.text_from_user(args.text_string), "--text-string"
    elif args.text is not None:
        text, desc = load_corpus(args.text, bool(vocab.bytes_mode)), args.text
    else:
        path = config.get("data")
        if path is not None and not os.path.exists(path):
            raise CharLMError(
                f"the checkpoint's training data {path} is not there any more; "
                "pass --text FILE or --text-string TEXT"
            )
        full = load_corpus(path, bool(config.get("bytes", False)))
        parts = split_corpus(
            full, float(config.get("val_frac", 0.05)), float(config.get("test_frac", 0.05))
        )
        text = parts[{"train": 0, "val": 1, "test": 2}[args.split]]
        desc = f"{args.split} split of {path or 'the embedded corpus'}"
        if not text:
            raise CharLMError(
                f"the {args.split} split of the training data is empty; "
                "pass --text FILE or --text-string TEXT"
            )
    if args.max_chars:
        text = text[: args.max_chars]
    if not text:
        raise DataError("the text to analyse is empty")
    unknown = vocab.unknown(text)
    if unknown:
        shown = ", ".join(repr(c) for c in unknown[:8])
        raise DataError(f"the text has characters outside the model's vocabulary: {shown}")
    return text, desc


def describe(config: dict, model) -> str:
    return f"{config.get('model', getattr(model, 'cell', '?'))} {model.num_layers}x{model.hidden}"


def write_views(
    out_stem: str | os.PathLike,
    trace: Trace,
    layer: int,
    unit: int,
    kind: str,
    scale: str = "natural",
    k: int = 0,
    title: str = "",
    info: list[str] | None = None,
    png: bool = True,
    png_cols: int = 80,
) -> list[Path]:
    """Write ``<stem>.html`` (and ``<stem>.png``) for one unit; returns the paths."""
    vals, scale_desc = display_values(trace, layer, unit, kind, scale)
    tk = top_k(trace, k) if k else None
    raw = trace.values(layer, unit, kind)
    info = list(info or []) + [
        f"colour: {scale_desc}, blue = -1, white = 0, red = +1"
        + (f"; below each character the {k} likeliest next characters" if k else "")
    ]
    stem = Path(out_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    html_path = stem.with_suffix(".html")
    html_path.write_text(
        render_html(trace.text, vals, title, info, raw, tk, trace.chars), encoding="utf-8"
    )
    paths = [html_path]
    if png:
        text = trace.text[:PNG_MAX_CHARS]
        n = len(text)
        tkp = None if tk is None else (tk[0][:n], tk[1][:n])
        render_png(stem.with_suffix(".png"), text, vals[:n], title, tkp, trace.chars, png_cols)
        paths.append(stem.with_suffix(".png"))
    return paths


# --------------------------------------------------------------------------------- command
def _add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_text_args(p, DEFAULT_MAX_CHARS)
    p.add_argument("--layer", type=int, default=0, help="layer index (default 0)")
    p.add_argument("--unit", type=int, default=0, help="unit index within the layer")
    p.add_argument("--kind", choices=("h", "c"), default="h", help="hidden (h) or cell (c)")
    p.add_argument(
        "--scale",
        choices=SCALES,
        default="natural",
        help="colour mapping: natural (h as is, tanh(c); default), max (v / max|v|) or range "
        "(the unit's min..max over the text onto blue..red)",
    )
    p.add_argument(
        "--top-k",
        type=int,
        default=0,
        metavar="K",
        help="show the K likeliest next characters under each character",
    )
    p.add_argument(
        "--out",
        default="visualize",
        metavar="STEM",
        help="output path without extension: STEM.html and STEM.png (default ./visualize)",
    )
    p.add_argument("--no-png", action="store_true", help="write the HTML only")
    p.add_argument("--png-cols", type=int, default=80, help="characters per PNG row")
    p.add_argument(
        "--save-trace",
        metavar="FILE.npz",
        help="also save every unit's activations and the probabilities (numpy)",
    )


def run(args: argparse.Namespace) -> int:
    if args.top_k < 0:
        raise CharLMError("--top-k must be >= 0")
    if args.png_cols < 1:
        raise CharLMError("--png-cols must be >= 1")
    model, vocab, config = load_model(args)
    text, desc = resolve_text(args, vocab, config)
    trace = run_trace(model, vocab, text)
    check_unit(trace, args.layer, args.unit, args.kind)
    if not args.no_png and len(text) > PNG_MAX_CHARS:
        print(
            f"note: the PNG shows the first {PNG_MAX_CHARS} of {len(text)} characters",
            file=sys.stderr,
        )
    title = f"layer {args.layer} {args.kind}[{args.unit}] of {describe(config, model)}"
    info = [f"checkpoint: {args.checkpoint}", f"text: {desc}, {len(text)} characters"]
    paths = write_views(
        args.out,
        trace,
        args.layer,
        args.unit,
        args.kind,
        args.scale,
        args.top_k,
        title,
        info,
        not args.no_png,
        args.png_cols,
    )
    if args.save_trace:
        arrays = {
            "h": trace.h,
            "probs": trace.probs,
            "text": np.array(list(text), dtype="<U1"),
            "chars": np.array(trace.chars),
        }
        if trace.c is not None:
            arrays["c"] = trace.c
        np.savez_compressed(args.save_trace, **arrays)
        paths.append(Path(args.save_trace))
    for p in paths:
        print(p)
    return 0


register, main = subcommand(
    "visualize",
    "colour a text by one unit's activation (HTML + PNG)",
    "Run a checkpoint over a text and colour every character by the activation "
    "of one hidden or cell unit (blue -1, white 0, red +1), optionally with the model's "
    "top-k next-character guesses under each character.",
    _add_arguments,
    run,
)


if __name__ == "__main__":
    sys.exit(main())
