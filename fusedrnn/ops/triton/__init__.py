"""The ``triton`` backend: fused per-step, cooperative and persistent Triton kernels.

Runs on CUDA tensors, or on CPU tensors when ``TRITON_INTERPRET=1`` is set before
the kernels are first loaded. Importing this package imports neither triton nor a
GPU runtime; :func:`layer` loads the kernels on first use.

Layout: the one op, :mod:`.layer_op` (input GEMM, weight-gradient GEMMs, torch.library
registration), hands a call with a variant option to :mod:`.variants`. torch.nn's cells run
the kernels of :mod:`.step` (a launch per step, or one cooperative launch whose programs meet
at a grid barrier, :mod:`.sync`) or :mod:`.persistent` (small H), the options those of
:mod:`.variant_step`; the kernels' helpers are :mod:`.cellmath` (per-element gate math),
:mod:`.tiles`, :mod:`.common` and :mod:`.rowstats`, their block configurations
:mod:`.configs`, and :mod:`.runtime` the guarded launcher and the host-side plan and buffers.

Launches per layer and direction, T steps (see :func:`launch_counter`):

=====================  =========================  =========================
path                   forward                    backward
=====================  =========================  =========================
resident (on a GPU)    1                          1
cooperative            1                          1
persistent (small H)   1                          1
per-step (forced)      T (2T with proj)           T (2T with proj)
variants, cooperative  1                          1
variants, per-step     T per phase (1-4 phases)   T per phase (1-4 phases)
=====================  =========================  =========================

plus the torch GEMMs of :mod:`.layer_op` around them (and, after the step kernels, one
``dG W_hh`` product for ``dh0``: :func:`.common.finish_state_grad`).

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


# the lazy attributes and their modules, which import triton; kernel_path(path) forces the
# "step", "cooperative", "resident" or "persistent" kernels (None: automatic,
# :func:`.persistent.choose_path`)
_LAZY = {"kernel_path": "persistent", "launch_counter": "runtime", "poison_buffers": "runtime"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def layer(*args, **options):
    """The layer op contract (fusedrnn/ops/CONTRACT.md): torch.nn's cells run the step /
    persistent kernels, a call with a variant option the variant kernels (:mod:`.layer_op`,
    imported on first use, which imports triton)."""
    from .layer_op import layer as op

    return op(*args, **options)
