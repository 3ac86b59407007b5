"""Launch accounting, device guard, debug poisoning and dtype policy for the Triton kernels."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import NamedTuple

import torch
import triton.language as tl

from ..checks import acc_dtype
from ..reference import step_slices


class LaunchCounter:
    """Number of Triton kernel launches, per kernel name, while active; ``oversubscribed``:
    cooperative launches with more tiles than programs fit on the GPU at once (see
    :func:`.sync.cooperative_grid`); ``not_resident``: resident launches that ran as
    cooperative ones, their programs too many to fit at once (:func:`.sync.resident_grid`)."""

    def __init__(self) -> None:
        self.by_kernel: dict[str, int] = {}
        self.oversubscribed = 0
        self.not_resident = 0

    @property
    def total(self) -> int:
        return sum(self.by_kernel.values())

    def __repr__(self) -> str:
        return (f"LaunchCounter(total={self.total}, by_kernel={self.by_kernel}, "
                f"oversubscribed={self.oversubscribed}, "
                f"not_resident={self.not_resident})")  # fmt: skip


_counters: list[LaunchCounter] = []
_captured: list[list] = []
_poison = [os.environ.get("FUSEDRNN_TRITON_POISON") == "1"]  # innermost setting last


@contextlib.contextmanager
def pushed(stack: list, item):
    """``item`` on top of ``stack`` inside the block. Taken off by identity, innermost first:
    list.remove would take the first equal item, e.g. an outer empty capture list."""
    stack.append(item)
    try:
        yield item
    finally:
        del stack[next(k for k in reversed(range(len(stack))) if stack[k] is item)]


def launch_counter() -> contextlib.AbstractContextManager[LaunchCounter]:
    """Count the Triton launches made inside the ``with`` block."""
    return pushed(_counters, LaunchCounter())


def count_oversubscribed() -> None:
    """Record a cooperative launch whose programs walk several tiles per step."""
    for counter in _counters:
        counter.oversubscribed += 1


def count_not_resident() -> None:
    """Record a resident launch that ran as a cooperative one."""
    for counter in _counters:
        counter.not_resident += 1


_guarded = threading.local()  # .devices: the devices entered by device_guard, innermost last


@contextlib.contextmanager
def device_guard(device: torch.device) -> Iterator[None]:
    """Make ``device`` current for the Triton launches inside the block.

    Triton launches on the *current* CUDA device and its current stream, not on the device of
    the tensors it is handed; without this, tensors on cuda:1 while cuda:0 is current would be
    read from the wrong device. A no-op for CPU tensors (the interpreter) apart from recording
    the device, which :func:`launch` checks."""
    with pushed(_guarded.__dict__.setdefault("devices", []), device):
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            yield


def _name(kernel) -> str:
    return kernel.fn.__name__ if hasattr(kernel, "fn") else kernel.__name__


def _check_guard(kernel, args) -> None:
    stack = getattr(_guarded, "devices", None)
    if not stack:
        raise RuntimeError(
            f"fusedrnn: Triton kernel {_name(kernel)} launched outside runtime.device_guard"
        )
    # The first tensor argument stands for all: the ops check that their inputs share one
    # device and allocate every buffer there; checking each argument would add microseconds
    # to every launch of the per-step path.
    first = next((a for a in args if isinstance(a, torch.Tensor)), None)
    if first is not None and first.device != stack[-1]:
        raise RuntimeError(
            f"fusedrnn: Triton kernel {_name(kernel)} got a tensor on {first.device} under the "
            f"device guard of {stack[-1]}"
        )


def capture_launches() -> contextlib.AbstractContextManager[list]:
    """Inside the block, launches are recorded as ``(kernel, grid, args, kwargs)`` and
    not run. The compile report derives the specialisations a launch makes from these
    (no GPU needed: the launchers run on CPU tensors and only their arguments matter)."""
    return pushed(_captured, [])


def capturing() -> bool:
    """Whether launches are being recorded (:func:`capture_launches`), not run."""
    return bool(_captured)


def launch(kernel, grid, *args, **kwargs) -> None:
    """Launch ``kernel[grid](*args, **kwargs)`` and record it. Every launch must sit inside
    :func:`device_guard` for the device of its tensors (checked here)."""
    for counter in _counters:
        name = _name(kernel)
        counter.by_kernel[name] = counter.by_kernel.get(name, 0) + 1
    if _captured:  # recorded, not run: no device is touched, so no guard is needed
        _captured[-1].append((kernel, grid, args, kwargs))
        return
    _check_guard(kernel, args)
    kernel[grid](*args, **kwargs)


def poison_buffers(enabled: bool = True) -> contextlib.AbstractContextManager[bool]:
    """Fill every buffer a kernel writes with NaN before launching (debug):
    an element a kernel forgets to write then shows up in the results."""
    return pushed(_poison, enabled)


def empty(*shape: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A buffer that the kernels fully overwrite (NaN-filled in poison mode)."""
    if _poison[-1]:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    if _captured:  # no kernel fills it; torch work after the launches must not meet denormals
        return torch.zeros(shape, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def buffer(like: torch.Tensor, *shape: int, on: bool = True) -> torch.Tensor:
    """:func:`empty` in ``like``'s dtype and on its device, or an empty placeholder when not
    ``on`` (a buffer the kernels do not use)."""
    return empty(*shape, dtype=like.dtype, device=like.device) if on else like.new_empty(0)


def given(placeholder: torch.Tensor, *tensors: torch.Tensor | None) -> list[torch.Tensor]:
    """The tensors, ``placeholder`` for each absent one (None or empty): a kernel reads those
    only under a flag that is off, but every pointer argument needs a tensor."""
    return [t if t is not None and t.numel() else placeholder for t in tensors]


def acc_ty(dtype: torch.dtype) -> tl.dtype:
    """:func:`.checks.acc_dtype` as the kernels' ``ACC_TY`` constexpr (the launchers call it
    as ``runtime.acc_dtype``)."""
    return tl.float64 if acc_dtype(dtype) == torch.float64 else tl.float32


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision: IEEE float32 unless the user allowed TF32."""
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def weights_transposed(dtype: torch.dtype) -> bool:
    """Whether the forward kernels read ``W_hh`` and ``W_hr`` transposed: where their ``tl.dot``
    is a loop of FMAs (float32 IEEE; float64 runs on tensor cores). Its right operand goes
    through shared memory in the order it was loaded in. In the weights' own order (k fastest)
    the units a warp reads at once lie a whole chunk of k apart, in the same few banks: an
    8-way bank conflict (:mod:`fusedrnn.smem`), every read replayed 8 times. Transposed (units
    fastest), as the backward reads ``W_hh``, they are conflict-free."""
    return dtype == torch.float32 and dot_precision(dtype) == "ieee"


class Step(NamedTuple):
    """One time step as the kernels see it."""

    t: int  # time index
    row0: int  # first row of this step in x / xg / packed y
    rows: int  # active batch rows
    slot_r: int  # the Hs/Cs slot read: t forward, t+1 reverse
    slot_w: int  # the one written: t+1 forward, t reverse


class Plan:
    """The visiting order of a layer's steps (packed or dense, either direction)."""

    def __init__(self, batch_sizes: torch.Tensor | None, seq_len: int, batch: int, reverse: bool):
        r, w = (1, 0) if reverse else (0, 1)
        self.by_t = [Step(t, row0, n, t + r, t + w)  # time order
                     for t, row0, n in step_slices(batch_sizes, seq_len, batch, False)]  # fmt: skip
        self.T, self.B, self.reverse = len(self.by_t), batch, reverse
        self.packed = batch_sizes is not None  # the op's x, y, dy are packed [N, K] rows
        self.steps = self.by_t[::-1] if reverse else self.by_t  # visiting order
        self.first_slot = self.T if reverse else 0  # holds h0 / c0


def layer_plan(x, h0, batch_sizes, reverse) -> Plan:
    """The plan of a layer op's ``x`` ([T, B, I], or [N, I] with ``batch_sizes``) and ``h0``."""
    seq_len = batch_sizes.numel() if batch_sizes is not None else x.shape[0]
    return Plan(batch_sizes, seq_len, h0.shape[0], reverse)


def flat_rows(t: torch.Tensor, plan: Plan) -> torch.Tensor:
    """``[T, B, K]`` as ``[T*B, K]`` rows (packed ``[N, K]`` already is)."""
    return t if plan.packed else t.reshape(-1, t.shape[-1])


def prev_states(hs: torch.Tensor, plan: Plan) -> torch.Tensor:
    """The ``[T, B, K]`` view of a state history ``[T+1, B, K]`` that holds the state each
    step read (slot t forward, slot t+1 reverse), for the weight-gradient GEMMs."""
    return hs[1:] if plan.reverse else hs[: plan.T]


def contiguous(*tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    """The tensors made contiguous (the kernels index densely), None kept."""
    return [t.contiguous() if t is not None else None for t in tensors]


def input_grad_rows(dg: torch.Tensor, plan: Plan) -> torch.Tensor:
    """The gate gradients ``dG [T, B, GH]`` of the rows the input projection produced: all
    ``[T*B, GH]``, or the packed rows ``[N, GH]`` (t-major), views sliced with the host's batch
    sizes and one cat, so no index tensor is copied to the device and nothing waits for it (as
    ``nonzero`` on a device mask would)."""
    if not plan.packed:
        return dg.view(plan.T * plan.B, dg.shape[-1])
    return torch.cat([dg[s.t, : s.rows] for s in plan.by_t])
