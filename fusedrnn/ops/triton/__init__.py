"""The ``triton`` backend: fused per-step, cooperative and persistent Triton kernels.

Runs on CUDA tensors, or on CPU tensors when ``TRITON_INTERPRET=1`` is set before
the kernels are first loaded. Importing this package imports neither triton nor a
GPU runtime; :func:`layer` loads the kernels on first use.

Layout (one op per file): :mod:`.cellmath` (per-element gate math, forward and
backward), :mod:`.common` (the backward's state gradient and gate gradients of every cell,
shared by the step and persistent kernels; step visiting order and forward buffers),
:mod:`.step` (the step kernels of every cell and their launchers: one cooperative launch
whose programs meet at a grid barrier between steps, :mod:`.sync`, or a launch per step),
:mod:`.persistent` (whole-sequence kernels for small H, and the choice of path),
:mod:`.layer_op` (the one op: input GEMM, weight-gradient GEMMs, torch.library
registration), :mod:`.configs` (the shipped block configurations), :mod:`.runtime` (the
guarded launcher, device guard, launch accounting, debug poisoning, the plan of a layer's
steps and its host-side row and buffer helpers), :mod:`.variants` (the op's layer norm /
zoneout / peephole / CIFG branch; its step kernels of both cells and their launchers in
:mod:`.variant_step`, whole-row helpers in :mod:`.rowwise`).

Launches per layer and direction, T steps (see :func:`launch_counter`):

=====================  ==================  ==================
path                   forward             backward
=====================  ==================  ==================
cooperative            1                   1
persistent (small H)   1                   1
per-step (forced)      T (2T with proj)    T (2T with proj)
=====================  ==================  ==================

plus torch GEMMs around them: the input projection before the loop, and after the
backward loop ``dx``, ``dW_ih``, ``dW_hh``, ``dW_hr`` and the bias sums (plus one
``dG_first W_hh`` product for ``dh0`` after the step kernels).

Specialisation: compile-time flags only where they change the arithmetic (cell,
projection, layer norm, peephole, CIFG, ReLU, direction of the persistent loop); whether
a bias, a packed output or an output gradient exists and the zoneout mode are run-time
arguments, so one compile serves them all. Arguments that change from step to step
(offsets, active rows) are ``do_not_specialize`` (:func:`.tiles.kernel_jit`), so a
sequence compiles each kernel once, and element offsets along the sequence are int64
(buffers pass 2**31 elements).
``python -m fusedrnn.compile_report`` compiles every resulting specialisation.
"""

from __future__ import annotations

import importlib.util
import sys

from .runtime import launch_counter, poison_buffers

__all__ = ["is_available", "kernel_path", "layer", "launch_counter", "poison_buffers"]


def is_available() -> bool:
    """True when the ``triton`` package is installed (no GPU is probed).

    triton itself is not imported here: whether its kernels run in the interpreter
    is fixed when triton is first imported (``TRITON_INTERPRET``), and probing
    backends must not decide that for the process."""
    if "triton" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):
        return False


def kernel_path(path: str | None):
    """Context manager forcing the "step", "cooperative" or "persistent" kernels (None:
    automatic, :func:`.persistent.choose_path`)."""
    from .persistent import kernel_path as _kernel_path

    return _kernel_path(path)


def layer(*args, **options):
    """The layer op contract (fusedrnn/ops/CONTRACT.md): torch.nn's cells run the step /
    persistent kernels, a call with a variant option the variant kernels (:mod:`.layer_op`,
    imported on first use, which imports triton)."""
    from .layer_op import layer as op

    return op(*args, **options)
