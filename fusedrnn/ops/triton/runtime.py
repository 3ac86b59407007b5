"""Launch accounting, debug poisoning and dtype policy for the Triton kernels."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch


class LaunchCounter:
    """Number of Triton kernel launches, per kernel name, while active."""

    def __init__(self) -> None:
        self.by_kernel: dict[str, int] = {}

    @property
    def total(self) -> int:
        return sum(self.by_kernel.values())

    def __repr__(self) -> str:
        return f"LaunchCounter(total={self.total}, by_kernel={self.by_kernel})"


_counters: list[LaunchCounter] = []
_captured: list[list] = []
_poison = os.environ.get("FUSEDRNN_TRITON_POISON") == "1"


@contextlib.contextmanager
def launch_counter() -> Iterator[LaunchCounter]:
    """Count the Triton launches made inside the ``with`` block."""
    counter = LaunchCounter()
    _counters.append(counter)
    try:
        yield counter
    finally:
        _counters.remove(counter)


@contextlib.contextmanager
def capture_launches() -> Iterator[list]:
    """Inside the block, launches are recorded as ``(kernel, grid, args, kwargs)`` and
    not run. The compile report derives the specialisations a launch makes from these
    (no GPU needed: the launchers run on CPU tensors and only their arguments matter)."""
    records: list = []
    _captured.append(records)
    try:
        yield records
    finally:
        _captured.remove(records)


def launch(kernel, grid, *args, **kwargs) -> None:
    """Launch ``kernel[grid](*args, **kwargs)`` and record it."""
    for counter in _counters:
        name = kernel.fn.__name__ if hasattr(kernel, "fn") else kernel.__name__
        counter.by_kernel[name] = counter.by_kernel.get(name, 0) + 1
    if _captured:
        _captured[-1].append((kernel, grid, args, kwargs))
        return
    kernel[grid](*args, **kwargs)


@contextlib.contextmanager
def poison_buffers(enabled: bool = True) -> Iterator[None]:
    """Fill every buffer a kernel writes with NaN before launching (debug):
    an element a kernel forgets to write then shows up in the results."""
    global _poison
    old, _poison = _poison, enabled
    try:
        yield
    finally:
        _poison = old


def empty(*shape: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A buffer that the kernels fully overwrite (NaN-filled in poison mode)."""
    if _poison:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    if _captured:  # no kernel fills it; torch work after the launches must not meet denormals
        return torch.zeros(shape, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation / cell-state dtype: float64 stays float64, the rest use float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision: IEEE float32 unless the user allowed TF32."""
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


class Step:
    """One time step as the kernels see it."""

    __slots__ = ("t", "row0", "rows", "slot_r", "slot_w")

    def __init__(self, t: int, row0: int, rows: int, reverse: bool) -> None:
        self.t = t  # time index
        self.row0 = row0  # first row of this step in x / xg / packed y
        self.rows = rows  # active batch rows
        # Hs/Cs slots: forward reads t and writes t+1, reverse reads t+1 and writes t
        self.slot_r, self.slot_w = (t + 1, t) if reverse else (t, t + 1)


class Plan:
    """The visiting order of a layer's steps (packed or dense, either direction)."""

    def __init__(self, batch_sizes: torch.Tensor | None, seq_len: int, batch: int, reverse: bool):
        if batch_sizes is None:
            sizes = [batch] * seq_len
        else:
            sizes = [int(b) for b in batch_sizes.tolist()]
        self.T, self.B, self.reverse = len(sizes), batch, reverse
        offsets = [0] * len(sizes)
        for t in range(1, len(sizes)):
            offsets[t] = offsets[t - 1] + sizes[t - 1]
        order = range(len(sizes) - 1, -1, -1) if reverse else range(len(sizes))
        self.steps = [Step(t, offsets[t], sizes[t], reverse) for t in order]
        self.first_slot = self.T if reverse else 0  # holds h0 / c0
        self.last_slot = 0 if reverse else self.T  # holds h_n / c_n
