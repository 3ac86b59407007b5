"""A plain-text progress display: a live bar on a terminal, periodic lines otherwise."""

from __future__ import annotations

import sys
import time


def _fmt_rate(r: float) -> str:
    return f"{r / 1000:.1f}k" if r >= 1000 else f"{r:.0f}"


def _fmt_time(s: float) -> str:
    s = int(max(0, s))
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


class Progress:
    """``update()`` every iteration; redraws at most 10 times a second on a TTY."""

    def __init__(
        self,
        total: int | None,
        enabled: bool = True,
        tty: bool | None = None,
        every: int = 20,
        stream=None,
        width: int = 24,
    ):
        self.stream = stream or sys.stdout
        self.total = total
        self.enabled = enabled
        self.tty = self.stream.isatty() if tty is None else bool(tty)
        self.every = max(1, every)
        self.width = width
        self._last_draw = 0.0
        self._drawn = False
        self._t0 = time.perf_counter()
        self._it0: int | None = None

    def _line(self, it: int, loss: float, speed: float, epoch: int) -> str:
        parts = []
        if self.total:
            frac = min(1.0, it / self.total)
            if self.tty:
                fill = int(frac * self.width)
                parts.append("[" + "#" * fill + "." * (self.width - fill) + "]")
            parts.append(f"iter {it}/{self.total}")
        else:
            parts.append(f"iter {it}")
        parts.append(f"epoch {epoch}")
        parts.append(f"loss {loss:.4f}")
        parts.append(f"{_fmt_rate(speed)} chars/s")
        elapsed = time.perf_counter() - self._t0
        parts.append(f"elapsed {_fmt_time(elapsed)}")
        if self.total and self._it0 is not None and it > self._it0:
            eta = elapsed / (it - self._it0) * max(0, self.total - it)
            parts.append(f"eta {_fmt_time(eta)}")
        return " ".join(parts)

    def update(self, it: int, loss: float, speed: float, epoch: int = 0) -> None:
        if not self.enabled:
            return
        if self._it0 is None:
            self._it0 = it - 1
        if self.tty:
            now = time.perf_counter()
            if now - self._last_draw < 0.1 and not (self.total and it >= self.total):
                return
            self._last_draw = now
            self.stream.write("\r\033[K" + self._line(it, loss, speed, epoch))
            self._drawn = True
        elif it % self.every == 0:
            self.stream.write(self._line(it, loss, speed, epoch) + "\n")
        self.stream.flush()

    def clear(self) -> None:
        """Finish the live line before other output is printed."""
        if self.enabled and self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def finish(self) -> None:
        self.clear()
