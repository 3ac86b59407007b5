"""A layer call replayed from a CUDA graph: the per-step path without its per-step host cost.

The ``cuda`` backend's time loop (csrc/cuda/layer_driver.h) issues a cuBLAS GEMM and a kernel
per step from C++, each through ATen. On an H200 those host calls, not the GPU, set the pace:
the same layer call replayed from a CUDA graph took 0.45-0.76 of the eager time at the
benchmark shapes (``bench/results/gpu-nvidia-h200/graph_replay.md``: 3.42 ms eager against
1.78 ms replayed at LSTM B=64 T=100 H=512 float32, 34 µs of host time per step of which the GPU
needed 18). A :class:`GraphCache` therefore stands between a backend and its extension:

- A call whose *key* is new runs eagerly; the key is remembered. Shapes seen once (the last,
  shorter batch of an epoch, a single evaluation) cost nothing more.
- The second call with that key captures the extension's call into a CUDA graph on a copy of
  its device tensors (the *static* inputs), then replays it.
- Every later call copies its device tensors into the static inputs, replays the graph and
  returns clones of its outputs (a replay overwrites them; the caller keeps its own).

The key is everything a captured launch depends on besides the values in device memory: each
non-tensor argument; each device tensor's shape, strides, dtype and device (None where absent);
the *values* of the host tensors the call reads while it issues its launches (``batch_sizes``:
they decide how many steps run, and with how many rows); the current stream; and the settings
cuBLAS reads when the GEMMs are issued (TF32, reduced-precision reductions, deterministic
algorithms).

Capture is skipped, and the call runs eagerly, while the current stream is already capturing
(the caller's own ``torch.cuda.graph``, or ``torch.compile(mode="reduce-overhead")``: the
caller's graph then records the eager launches), when replay is switched off
(:func:`set_enabled`, or ``FUSEDRNN_GRAPHS=0`` in the environment) and for a key whose capture
failed once (a warning says why). At most ``capacity`` graphs are kept per cache, the least
recently used dropped first.

Cost: the copies in and out (bandwidth, no dependent latency) and the memory each kept graph
holds: its static inputs, its outputs and what the call allocates inside, a few times the
activations of one layer call.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

_enabled = os.environ.get("FUSEDRNN_GRAPHS", "1") != "0"
# one capture at a time in the process (torch.cuda.graph's rule): the forward's cache and the
# backward's, on the autograd engine's thread, are different caches
_capture_lock = threading.Lock()


def set_enabled(enabled: bool) -> bool:
    """Switch replay on or off for every cache (``FUSEDRNN_GRAPHS=0`` starts it off); returns
    the previous setting. Graphs already kept stay kept, unused while off."""
    global _enabled
    previous, _enabled = _enabled, bool(enabled)
    return previous


def enabled() -> bool:
    return _enabled


class CudaGraphs:
    """How a :class:`GraphCache` captures and replays: ``torch.cuda.graph``. The tests give a
    cache a stand-in with the same four members that runs on CPU tensors."""

    device_type = "cuda"
    _streams: dict[torch.device, torch.cuda.Stream] = {}  # one side stream per device

    @staticmethod
    def capturing() -> bool:
        return torch.cuda.is_current_stream_capturing()

    @staticmethod
    def stream_of(device: torch.device) -> tuple[int, int]:
        s = torch.cuda.current_stream(device)
        return s.device_index, s.stream_id

    @staticmethod
    def capture(fn: Callable[[], Any], device: torch.device) -> tuple[Any, Any]:
        """``(graph, fn's outputs)``: fn's launches recorded, not run."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.device(device):
            # torch.cuda.graph's own side stream belongs to the device current at its first
            # use; thread_local: another thread's allocations (the autograd engine's, a data
            # loader's) do not invalidate this capture
            if device not in CudaGraphs._streams:
                CudaGraphs._streams[device] = torch.cuda.Stream(device)
            stream = CudaGraphs._streams[device]
            with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
                out = fn()
        return graph, out

    @staticmethod
    def replay(graph: Any) -> None:
        graph.replay()


@dataclass
class _Entry:
    graph: Any = None  # None: seen once, not captured
    static: list[Tensor] = field(default_factory=list)  # the device tensors' copies, in order
    outputs: Any = None
    failed: bool = False  # capture failed: eager from now on


def _settings() -> tuple:
    """What cuBLAS reads from the host when a GEMM is issued (and so is baked into a graph)."""
    m = torch.backends.cuda.matmul
    return (
        torch.get_float32_matmul_precision(),
        m.allow_fp16_reduced_precision_reduction,
        m.allow_bf16_reduced_precision_reduction,
        torch.are_deterministic_algorithms_enabled(),
    )


def _meta(t: Tensor) -> tuple:
    return (tuple(t.shape), t.stride(), t.dtype, t.device)


class GraphCache:
    """Replays ``fn(*args)`` from CUDA graphs (module docstring). ``fn`` returns a list of
    tensors and Nones; ``args`` may hold tensors, lists of tensors (one level) and plain
    values; ``host`` names the positions of host tensors whose values the call reads."""

    def __init__(self, capacity: int = 4, graphs: Any = CudaGraphs) -> None:
        self.capacity = capacity
        self.graphs = graphs
        self.entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self.counts = {"eager": 0, "captured": 0, "replayed": 0}
        # one call's copy in, replay and clone out are issued together: two threads on one
        # stream would otherwise overwrite each other's static inputs
        self._lock = threading.Lock()

    def __call__(self, fn: Callable[..., list], args: Sequence, host: Collection[int] = ()):
        tensors = self._device_tensors(args, host)  # copied into the static inputs, in order
        device = self._device(tensors)
        if device is None or not _enabled or self.capacity <= 0 or self.graphs.capturing():
            return self._eager(fn, args)
        key = self._key(args, host, device)
        with self._lock:
            entry = self.entries.get(key)
            if entry is None:  # first sighting: remember it, run it as it is
                self.entries[key] = _Entry()
                self._evict()
                return self._eager(fn, args)
            self.entries.move_to_end(key)
            if entry.failed:
                return self._eager(fn, args)
            if entry.graph is None and not self._capture(entry, fn, args, host, tensors, device):
                return self._eager(fn, args)
            for static, t in zip(entry.static, tensors, strict=True):
                static.copy_(t)
            self.graphs.replay(entry.graph)
            self.counts["replayed"] += 1
            return [t.clone() if isinstance(t, Tensor) else t for t in entry.outputs]

    def clear(self) -> None:
        """Drop every kept graph (their memory returns to the allocator)."""
        with self._lock:
            self.entries.clear()

    # -- the parts -------------------------------------------------------------------------

    def _eager(self, fn, args):
        self.counts["eager"] += 1
        return fn(*args)

    def _capture(self, entry: _Entry, fn, args, host, tensors, device) -> bool:
        """Record ``fn`` over fresh copies of the device tensors; False (and a warning) when
        it cannot be captured, and the key runs eagerly from then on."""
        # plain tensors even under torch.inference_mode: a later call outside it copies into them
        with torch.inference_mode(False):
            entry.static = [torch.empty_like(t) for t in tensors]
        replaced = iter(entry.static)
        static_args = [
            v if k in host else self._map(v, lambda _: next(replaced)) for k, v in enumerate(args)
        ]
        try:
            with _capture_lock:
                entry.graph, entry.outputs = self.graphs.capture(lambda: fn(*static_args), device)
        except RuntimeError as err:
            entry.static, entry.failed = [], True
            warnings.warn(
                f"fusedrnn: a layer call could not be captured in a CUDA graph ({err}); calls "
                "of this shape run eagerly, with a host round trip per step",
                RuntimeWarning,
                stacklevel=4,
            )
            return False
        self.counts["captured"] += 1
        return True

    def _evict(self) -> None:
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)

    def _device(self, tensors: list[Tensor]) -> torch.device | None:
        """The device of the call's device tensors; None when there are none, or when they
        are not of the graphs' device type."""
        if not tensors or tensors[0].device.type != self.graphs.device_type:
            return None
        return tensors[0].device

    @staticmethod
    def _map(v, f):
        if isinstance(v, Tensor):
            return f(v)
        if isinstance(v, list | tuple):
            return type(v)(f(t) if isinstance(t, Tensor) else t for t in v)
        return v

    @staticmethod
    def _device_tensors(args, host) -> list[Tensor]:
        out: list[Tensor] = []
        for k, v in enumerate(args):
            if k not in host:
                for t in v if isinstance(v, list | tuple) else (v,):
                    if isinstance(t, Tensor):
                        out.append(t)
        return out

    def _key(self, args, host, device) -> tuple:
        parts: list = [self.graphs.stream_of(device), _settings()]
        for k, v in enumerate(args):
            if k in host:
                parts.append(None if v is None else (v.dtype, tuple(v.tolist())))
            elif isinstance(v, list | tuple):
                parts.append(tuple(_meta(t) if isinstance(t, Tensor) else t for t in v))
            else:
                parts.append(_meta(v) if isinstance(v, Tensor) else v)
        return tuple(parts)
