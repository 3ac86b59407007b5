"""Backend registry and selection.

A backend is a module under ``fusedrnn.ops`` that implements the layer op
contract (see :mod:`fusedrnn.ops`). Selection order: an explicit ``backend=``
argument, else the environment variable ``FUSEDRNN_BACKEND``, else automatic
(CUDA tensor: triton, then cuda; CPU tensor: the compiled cpu backend if it was
built, else the reference with a one-time warning).

Nothing here touches a GPU or imports an extension at ``import fusedrnn`` time:
backends are probed lazily, on first use.
"""

from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType

import torch

BACKENDS = ("reference", "cpu", "triton", "cuda")

_HOW_TO_GET = {
    "cpu": (
        "the C++ extension fusedrnn._C was not built. Build it with a C++ compiler "
        "present: pip install --no-build-isolation -e . (unset FUSEDRNN_SKIP_CPU_BUILD)"
    ),
    "triton": (
        "it needs the `triton` package (pip install triton) and CUDA tensors, or "
        "TRITON_INTERPRET=1 in the environment to run its kernels on CPU tensors"
    ),
    "cuda": (
        "the CUDA extension fusedrnn._C_cuda was not built. Build it with a CUDA "
        "build of torch and nvcc on PATH: pip install --no-build-isolation -e . "
        "(unset FUSEDRNN_SKIP_CUDA_BUILD)"
    ),
}

_MODULES = {name: f"fusedrnn.ops.{name}" for name in BACKENDS}
_probe_cache: dict[str, ModuleType | None] = {}
_warned_fallback = False


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run here."""


def _load(name: str) -> ModuleType | None:
    """Import a backend module; None if it (or what it needs) is missing."""
    if name not in _probe_cache:
        try:
            mod = importlib.import_module(_MODULES[name])
            ok = getattr(mod, "is_available", lambda: True)()
        except ImportError:
            mod, ok = None, False
        _probe_cache[name] = mod if ok else None
    return _probe_cache[name]


def _runs_on(name: str, device: torch.device) -> bool:
    if name in ("cpu", "cuda"):
        return device.type == name
    # triton: CUDA tensors, or CPU tensors under the interpreter
    interpreted = device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"
    return name == "reference" or device.type == "cuda" or interpreted


def available_backends(device: torch.device | str | None = None) -> list[str]:
    """Names of the backends that can run here (on ``device`` if given)."""
    names = [n for n in BACKENDS if _load(n) is not None]
    if device is not None:
        device = torch.device(device)
        names = [n for n in names if _runs_on(n, device)]
    return names


def resolve(name: str | None, device_type: str) -> str:
    """The backend name to use for tensors on a device of type ``device_type``.

    Under torch.compile this runs once at trace time and its answer is a
    constant of the graph (it imports modules and reads the environment, which
    Dynamo would otherwise refuse to trace).
    """
    global _warned_fallback
    if name is None:
        name = os.environ.get("FUSEDRNN_BACKEND") or None
    if name is None and device_type == "cpu" and _load("cpu") is not None:
        return "cpu"  # the common case first: it runs at every call of a layer
    device = torch.device(device_type)
    if name is not None:
        if name not in BACKENDS:
            raise ValueError(f"unknown fusedrnn backend {name!r}; choose from {BACKENDS}")
        if _load(name) is None:
            raise BackendUnavailableError(
                f"fusedrnn backend {name!r} is not available: {_HOW_TO_GET[name]}"
            )
        if not _runs_on(name, device):
            raise BackendUnavailableError(
                f"fusedrnn backend {name!r} cannot run on {device.type} tensors"
            )
        return name
    if device.type == "cuda":
        return next((c for c in ("triton", "cuda") if _load(c) is not None), "reference")
    if device.type == "cpu" and _load("cpu") is not None:
        return "cpu"
    if device.type == "cpu" and not _warned_fallback:
        _warned_fallback = True
        warnings.warn(
            "fusedrnn: the compiled CPU backend is not built, using the (slow) "
            f"reference backend; {_HOW_TO_GET['cpu']}",
            stacklevel=3,
        )
    return "reference"


# What torch._dynamo.assume_constant_result does, without importing torch._dynamo (seconds
# of start-up for every command-line run) just to set one attribute.
resolve._dynamo_marked_constant = True  # type: ignore[attr-defined]


def under_functorch() -> bool:
    """True inside torch.func transforms (grad, vmap, ...), which cannot see through the fused
    backends' custom ops; the layer op then runs on the reference backend, whose plain torch
    operations every transform supports."""
    return not torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active()


def get(name: str) -> ModuleType:
    """The backend module for a name returned by :func:`resolve`."""
    if name != "reference" and under_functorch():
        name = "reference"
    mod = _load(name)
    if mod is None:
        raise BackendUnavailableError(
            f"fusedrnn backend {name!r} is not available: {_HOW_TO_GET.get(name, '')}"
        )
    return mod
