"""Per-character text features that interpretable RNN units are known to track.

Every feature is an array with one value per character of the text, aligned with the hidden
state *after* the model has read that character (the state that predicts the next one). So a
"state" feature describes what is known having read ``text[: t + 1]``:

- ``in_quote``: 1 while inside double quotes. The opening ``"`` is already inside (after reading
  it, the model is in the quote) and the closing ``"`` is outside again.
- ``paren_depth``: nesting depth of ``( [ {`` after reading the character (closers lower it,
  never below 0); ``in_parens`` is ``paren_depth > 0``.
- ``line_pos``: characters since the last newline; 0 at the newline itself, 1 at the first
  character of a line, and so on.
- ``in_comment``: 1 inside a comment: ``#`` or ``//`` to the end of the line, or ``/* ... */``.
  Comment openers inside double quotes do not count; the newline ending a line comment and the
  ``/`` closing a block comment are outside (the state after reading them). The first ``/`` of
  ``//`` or ``/*`` cannot yet be known to open a comment, so it is outside too.
- ``word_start``: 1 at the first character of a word (a letter, digit or ``_`` whose preceding
  character is none of these).

Binary features are float arrays of 0/1. A feature that is constant over the text (e.g. no
comment anywhere) cannot be correlated with anything; :func:`find-cells <fusedrnn.charlm.cells>`
reports it as such rather than inventing a score.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

BINARY_FEATURES = ("in_quote", "in_parens", "in_comment", "word_start")
CONTINUOUS_FEATURES = ("paren_depth", "line_pos")
FEATURES = ("in_quote", "paren_depth", "in_parens", "line_pos", "in_comment", "word_start")

_OPEN = "([{"
_CLOSE = ")]}"


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _running(text: str, step: Callable[[float, str], float], start: float) -> np.ndarray:
    """A feature whose value is a running state: ``step(state, ch)`` after each character."""
    out = np.zeros(len(text), dtype=np.float64)
    state = start
    for t, ch in enumerate(text):
        state = step(state, ch)
        out[t] = state
    return out


def in_quote(text: str) -> np.ndarray:
    return _running(text, lambda inside, ch: not inside if ch == '"' else inside, False)


def _depth_step(depth: int, ch: str) -> int:
    if ch in _OPEN:
        return depth + 1
    if ch in _CLOSE:
        return max(depth - 1, 0)
    return depth


def paren_depth(text: str) -> np.ndarray:
    return _running(text, _depth_step, 0)


def line_pos(text: str) -> np.ndarray:
    return _running(text, lambda pos, ch: 0 if ch == "\n" else pos + 1, 0)


def in_comment(text: str) -> np.ndarray:
    out = np.zeros(len(text), dtype=np.float64)
    state = "code"  # code | string | line | block
    slash = False  # the previous character was a '/' in code (may open '//' or '/*')
    star = False  # the previous character was a '*' in a block comment (may close it)
    escaped = False  # the previous character was a backslash inside a string
    for t, ch in enumerate(text):
        if state == "code":
            if slash and ch in "/*":
                state = "line" if ch == "/" else "block"
                star = False  # the '*' of '/*' does not also start the closing '*/'
            elif ch == "#":
                state = "line"
            elif ch == '"':
                state = "string"
                escaped = False
            slash = state == "code" and ch == "/"
        elif state == "string":
            if ch == '"' and not escaped:
                state = "code"
            escaped = ch == "\\" and not escaped
        elif state == "line":
            if ch == "\n":
                state = "code"
        else:  # block
            if star and ch == "/":
                state = "code"
                slash = False  # '*/' followed by '/' is not '//'
            else:
                star = ch == "*"
        out[t] = state in ("line", "block")
    return out


def word_start(text: str) -> np.ndarray:
    out = np.zeros(len(text), dtype=np.float64)
    prev_word = False
    for t, ch in enumerate(text):
        w = _is_word_char(ch)
        out[t] = w and not prev_word
        prev_word = w
    return out


def compute_features(text: str) -> dict[str, np.ndarray]:
    """All features of ``text``, each a float64 array of length ``len(text)``."""
    depth = paren_depth(text)
    return {
        "in_quote": in_quote(text),
        "paren_depth": depth,
        "in_parens": (depth > 0).astype(np.float64),
        "line_pos": line_pos(text),
        "in_comment": in_comment(text),
        "word_start": word_start(text),
    }
