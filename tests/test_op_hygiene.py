"""What the ops must not do on a GPU, checked on CPU tensors: host syncs and host-to-device
copies inside an op, and Triton launches outside a device guard.

**Host syncs.** Every fusedrnn custom op, forward and backward, dense and packed, runs under a
``TorchDispatchMode`` that sees every aten op inside it (the C++ extension's included) and
fails on:

- ``_local_scalar_dense`` / ``item`` (``.item()``, ``int(t)``, ``bool(t)``), ``nonzero``,
  ``masked_select`` and ``unique`` on any tensor but ``batch_sizes`` and tensors computed from
  it alone: on a device tensor they wait for the device. ``batch_sizes`` is a CPU tensor by the
  layer-op contract; reading its values (e.g. the C++ extension's ``sum().item()`` check) is a
  host read, not a device sync, and is allowed.
- ``lift_fresh``: a tensor literal (``torch.tensor(python_data)``) made inside an op, which on
  a GPU becomes a pageable host-to-device copy (and cannot be captured in a CUDA graph);
- ``_to_copy`` / ``copy_`` from a CPU tensor to another device, and any ``_to_copy`` of
  ``batch_sizes`` (uploading it is the same copy). On CPU tensors ``t.to(x.device)`` is a
  no-op that never reaches the dispatcher, so this rule only bites on a GPU; the literal or
  index tensor such an upload needs is caught by the first two.

**Device guard.** Triton launches on the current CUDA device, not on its tensors' device, so
every launch must go through :func:`fusedrnn.ops.triton.runtime.launch`, which refuses to
launch outside :func:`~fusedrnn.ops.triton.runtime.device_guard` for the tensors' device.

The triton cases need ``TRITON_INTERPRET=1`` (set before triton is imported) and skip without
it: ``TRITON_INTERPRET=1 python -m pytest tests/test_op_hygiene.py -k triton``.
"""

from __future__ import annotations

import ast
import contextlib
from unittest import mock

import pytest
import torch
import torch._library.custom_ops as custom_ops
from layer_cases import Case, make_inputs, outputs_and_grads
from misc_testlib import ROOT, needs_cpu, needs_interpreter
from torch.utils._python_dispatch import TorchDispatchMode

from fusedrnn.ops import cpu

aten = torch.ops.aten
TRITON_DIR = ROOT / "fusedrnn" / "ops" / "triton"
TREES = {p.name: ast.parse(p.read_text()) for p in sorted(TRITON_DIR.glob("*.py"))}

SYNCS = "_local_scalar_dense item nonzero masked_select _unique2 unique_consecutive".split()
SYNCS = {getattr(aten, name).default for name in SYNCS}
LITERALS = {aten.lift_fresh.default, aten.lift_fresh_copy.default}


class HostSyncError(AssertionError):
    pass


class NoHostSync(TorchDispatchMode):
    """Fails on a host sync or host-to-device copy inside an op of ``namespace`` (see the
    module docstring); ``batch_sizes`` may be read on the host."""

    def __init__(self, batch_sizes: torch.Tensor | None, namespace: str = "fusedrnn"):
        super().__init__()
        self.namespace = namespace
        self.host_ptrs = {b.untyped_storage().data_ptr() for b in [batch_sizes] if b is not None}
        self.inside: list[str] = []  # the fusedrnn ops being run
        self.ops_run: list[str] = []

    def _is_host(self, t) -> bool:
        """``t`` is batch_sizes, a view of it, or computed from it alone (host data)."""
        return isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() in self.host_ptrs

    def _track(self, args, kwargs, out) -> None:
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        if tensors and all(self._is_host(t) for t in tensors):
            for o in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(o, torch.Tensor):
                    self.host_ptrs.add(o.untyped_storage().data_ptr())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == self.namespace:
            # run the op's Python body under this mode, so that every aten op it calls
            # (in Python or in the C++ extension) comes through here
            self.ops_run.append(func.name())
            self.inside.append(func.name())
            try:
                with self:
                    return custom_ops.OPDEFS[func.name()]._init_fn(*args, **kwargs)
            finally:
                self.inside.pop()
        if not self.inside:
            return func(*args, **kwargs)
        self._check(func, args, kwargs)
        out = func(*args, **kwargs)
        self._track(args, kwargs, out)
        return out

    def _check(self, func, args, kwargs) -> None:
        where = self.inside[-1]
        if func in SYNCS and not self._is_host(args[0]):
            raise HostSyncError(f"{where}: {func} waits for the device")
        if func in LITERALS:
            raise HostSyncError(f"{where}: {func}: a tensor literal (a host-to-device copy)")
        if func is aten._to_copy.default:
            src, dev = args[0], kwargs.get("device")
            if self._is_host(src):
                raise HostSyncError(f"{where}: batch_sizes copied by {func}")
            if dev is not None and src.device.type == "cpu" and torch.device(dev).type != "cpu":
                raise HostSyncError(f"{where}: host-to-device copy by {func}")
        if func in (aten.copy_.default, aten.copy.default):
            dst, src = args[0], args[1]
            if src.device.type == "cpu" and dst.device.type != "cpu":
                raise HostSyncError(f"{where}: host-to-device copy by {func}")


def test_the_mode_catches_the_patterns():
    """The checks fire on what they are meant to catch (a test of the test)."""
    bs, x = torch.tensor([2, 1]), torch.randn(2)
    patterns = [
        lambda x, bs: x * int(x.sum()),
        lambda x, bs: x[(x > 0).nonzero().squeeze(1)],
        lambda x, bs: x * torch.tensor([1.0, 2.0]),
        lambda x, bs: x * int(bs[0]),  # allowed: a host read
    ]

    @torch.library.custom_op("fusedrnn_test::bad", mutates_args=())
    def bad(x: torch.Tensor, batch_sizes: torch.Tensor, how: int) -> torch.Tensor:
        return patterns[how](x, batch_sizes)

    for how in (0, 1, 2, 3):
        with pytest.raises(HostSyncError) if how < 3 else contextlib.nullcontext():
            with NoHostSync(bs, "fusedrnn_test"):
                bad(x, bs, how)


HYGIENE = [  # backend, cell, layout, triton kernel path (None: the default), variant
    *(pytest.param("cpu", cell, layout, None, variant, marks=needs_cpu,
                   id=f"cpu-{cell}-{layout}" + "-variant" * variant)
      for layout in ("dense", "packed")
      for cell, variant in (("lstm", False), ("gru", False), ("rnn_tanh", False),
                            ("lstm", True), ("gru", True))),
    *(pytest.param("triton", cell, layout, path, False, marks=needs_interpreter,
                   id=f"triton-{cell}-{layout}-{path}")
      for cell in ("lstm", "gru") for layout in ("dense", "packed", "packed_reverse")
      for path in ("step", "cooperative", "resident", "persistent")),
    *(pytest.param("triton", "lstm", layout, path, True, marks=needs_interpreter,
                   id=f"triton-lstm-{layout}-{path}-variant")
      for layout in ("dense", "packed") for path in ("step", "cooperative")),
]  # fmt: skip


@pytest.mark.parametrize("backend,cell,layout,path,variant", HYGIENE)
def test_ops_do_not_sync(backend, cell, layout, path, variant, monkeypatch):
    """No host sync in the layer op's forward and backward (``variant``: with layer norm and
    zoneout, evaluation, on); the triton op bodies enter the guard for x's device, forward and
    backward, and every launch happens inside it (runtime.launch checks each one)."""
    packed, zone = layout.startswith("packed"), "eval" if variant else "none"
    case = Case(cell, T=3, B=3, I=3, H=4, lengths=(3, 2, 1) if packed else None,
                reverse=layout.endswith("reverse"), ln=variant, zone=zone)  # fmt: skip
    a = make_inputs(case, torch.float32)
    layer, stack = cpu.layer, contextlib.ExitStack()
    if backend == "triton":
        from fusedrnn.ops import triton as tb
        from fusedrnn.ops.triton import layer_op, runtime

        guard = mock.Mock(wraps=runtime.device_guard)  # records the device of each entry
        monkeypatch.setattr(runtime, "device_guard", guard)
        stack.enter_context(tb.kernel_path(path))
        layer, launches = layer_op.layer, stack.enter_context(runtime.launch_counter())
    with stack, NoHostSync(a["batch_sizes"]) as mode:
        outputs_and_grads(layer, a)
    assert {n[-4:] for n in mode.ops_run} == {"_fwd", "_bwd"}, mode.ops_run  # both ran under it
    if backend == "triton":
        assert guard.call_args_list == [mock.call(torch.device("cpu"))] * 2
        assert launches.total > 0


# ---- device guard, statically and with a mocked device -----------------------------------


def test_triton_launches_only_through_the_guarded_launcher():
    """Static: the only ``kernel[grid](...)`` call in ops/triton is in runtime.launch (which
    checks the guard); every kernel call elsewhere goes through it."""
    functions = [(file, fn) for file, tree in TREES.items() for fn in ast.walk(tree)
                 if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)]  # fmt: skip
    sites = {(file, fn.name) for file, fn in functions for n in ast.walk(fn)
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Subscript)}  # fmt: skip
    assert sites == {("runtime.py", "launch")}, sites
    # and runtime.launch refuses to launch without a guard, before anything else
    launch = next(fn for file, fn in functions if (file, fn.name) == ("runtime.py", "launch"))
    calls = [n for n in ast.walk(launch) if isinstance(n, ast.Call)]
    assert any(getattr(c.func, "id", None) == "_check_guard" for c in calls)


def test_triton_dots_name_their_accumulator_dtype():
    """Static: every ``tl.dot`` in ops/triton passes ``out_dtype``. Triton 3.6 (compiling for
    a GPU) asserts that an accumulator's dtype equals ``out_dtype``, float32 by default, so a
    float64 kernel without it does not compile there; the interpreter and later Triton
    versions accept it, which is why only a GPU run showed it."""
    missing = [f"{file}:{n.lineno}" for file, tree in TREES.items() for n in ast.walk(tree)
               if isinstance(n, ast.Call) and ast.unparse(n.func) == "tl.dot"
               and "out_dtype" not in {k.arg for k in n.keywords}]  # fmt: skip
    assert not missing, missing


@pytest.mark.parametrize("op", ["forward", "backward"])
def test_triton_op_bodies_enter_the_guard(op):
    """Static: the bodies of the custom ops (what torch.library calls, layer_op's) end in
    ``with runtime.device_guard(a.x.device)``, and only inside it call their work, plain
    (``_forward`` / ``_backward``) and variant (variants.py's)."""
    fn = next(n for n in TREES["layer_op.py"].body if getattr(n, "name", None) == op)
    *before, guard = map(ast.unparse, fn.body)
    assert guard.startswith("with runtime.device_guard(a.x.device):")
    for work in (f" _{op}(", f" variants.{op}("):
        assert work in guard and not any(work in s for s in before), work


def test_triton_guard_enters_the_tensors_device_and_launches_only_inside(monkeypatch):
    """Mocked two devices (no GPU here): the guard makes the tensors' device current and
    restores the previous one; for CPU tensors it touches no CUDA state. runtime.launch
    refuses a launch outside a guard, or under the guard of another device."""
    from fusedrnn.ops.triton import runtime

    entered = []

    @contextlib.contextmanager
    def fake_device(device):
        entered.append(("enter", torch.device(device)))
        yield
        entered.append(("exit", torch.device(device)))

    monkeypatch.setattr(torch.cuda, "device", fake_device)
    cuda1 = torch.device("cuda", 1)
    with runtime.device_guard(cuda1):
        assert entered == [("enter", cuda1)]
    with runtime.device_guard(torch.device("cpu")):
        pass
    assert entered == [("enter", cuda1), ("exit", cuda1)]  # nothing for the CPU

    def kernel(*a):
        raise AssertionError("must not launch")

    with pytest.raises(RuntimeError, match="outside runtime.device_guard"):
        runtime.launch(kernel, (1,), torch.zeros(1))
    # a tensor on another device than the guard's (cuda:1 vs cuda:0, here meta vs cpu)
    with pytest.raises(RuntimeError, match="on cpu under the device guard of meta"):
        with runtime.device_guard(torch.device("meta")):
            runtime.launch(kernel, (1,), torch.zeros(1))
