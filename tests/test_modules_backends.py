"""Backend selection from the modules: explicit backend=, FUSEDRNN_BACKEND, automatic
choice, clear errors for unknown or unavailable backends, and an import that never
touches a GPU."""

from __future__ import annotations

import os
import textwrap
import warnings

import pytest
import torch
from misc_testlib import ROOT, run_python
from module_testlib import flatten, module_input

import fusedrnn
from fusedrnn import backends

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def clean_env(monkeypatch):
    """No FUSEDRNN_BACKEND / TRITON_INTERPRET from the caller's shell, and the
    one-time fallback warning re-armed."""
    monkeypatch.delenv("FUSEDRNN_BACKEND", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(backends, "_warned_fallback", False)
    return monkeypatch


def _assert_unavailable(module, name):
    """``module`` refuses to run on backend ``name``; one that is not built says how to build it."""
    with pytest.raises(fusedrnn.BackendUnavailableError) as info:
        module(module_input(type(module).__name__))
    message = str(info.value)
    assert f"fusedrnn backend '{name}'" in message
    if name == "cuda" and name not in fusedrnn.available_backends():
        assert "not available" in message and "pip install" in message and "nvcc" in message


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_backend_argument_attribute_and_env_var(cls, clean_env):
    x = module_input(cls)
    clean_env.setenv("FUSEDRNN_BACKEND", "cuda")  # explicit backend= wins over the env var
    with warnings.catch_warnings(action="error"):  # no fallback warning for an explicit choice
        getattr(fusedrnn, cls)(3, 4, backend="reference")(x)
    with pytest.raises(ValueError, match=r"unknown fusedrnn backend 'fast'; choose from"):
        getattr(fusedrnn, cls)(3, 4, backend="fast")
    with pytest.raises(ValueError, match="unknown fusedrnn backend"):
        backends.resolve("fast", torch.device("cpu"))
    mod = getattr(fusedrnn, cls)(3, 4)
    clean_env.setenv("FUSEDRNN_BACKEND", "reference")
    with warnings.catch_warnings(action="error"):
        out = flatten(mod(x))
    assert backends.resolve(None, torch.device("cpu")) == "reference"
    clean_env.setenv("FUSEDRNN_BACKEND", "bogus")
    with pytest.raises(ValueError, match="unknown fusedrnn backend 'bogus'"):
        mod(x)
    unavailable = [n for n in backends.BACKENDS if n not in fusedrnn.available_backends("cpu")]
    for name in unavailable:  # named by the env var
        clean_env.setenv("FUSEDRNN_BACKEND", name)
        _assert_unavailable(mod, name)
    clean_env.delenv("FUSEDRNN_BACKEND")
    for name in unavailable:  # named at construction, or set on the attribute between calls
        _assert_unavailable(getattr(fusedrnn, cls)(3, 4, backend=name), name)
        mod.backend = name
        _assert_unavailable(mod, name)
    mod.backend = "reference"  # the failed calls left nothing behind
    torch.testing.assert_close(flatten(mod(x)), out, rtol=0, atol=0)
    clean_env.setenv("FUSEDRNN_BACKEND", "")  # empty means unset
    assert backends.resolve(None, torch.device("cpu")) in ("cpu", "reference")


def test_cpu_backend_and_automatic_choice(clean_env):
    """The backends listed, the reference one always; the compiled backend where it is built,
    otherwise a clear error for backend="cpu" and the reference backend chosen automatically,
    with one warning per process."""
    names, on_cpu = fusedrnn.available_backends(), fusedrnn.available_backends("cpu")
    assert "reference" in on_cpu and set(on_cpu) <= set(names) <= set(backends.BACKENDS)
    assert fusedrnn.available_backends(torch.device("cpu")) == on_cpu
    assert "cpu" not in fusedrnn.available_backends("cuda")
    assert issubclass(fusedrnn.BackendUnavailableError, RuntimeError)
    mod, auto, x = fusedrnn.RNN(3, 4, backend="cpu"), fusedrnn.GRU(3, 4), torch.randn(5, 2, 3)
    built = "cpu" in names
    if built:
        mod(x)  # runs (its results against torch.nn: test_modules_forward.py)
    else:
        with pytest.raises(fusedrnn.BackendUnavailableError, match="fusedrnn._C was not built"):
            mod(x)
        with pytest.warns(UserWarning, match="reference backend") as record:
            auto(x)
        assert len(record) == 1
    with warnings.catch_warnings(action="error"):  # no warning, or only once per process
        auto(x)
    assert backends.resolve(None, torch.device("cpu")) == ("cpu" if built else "reference")


_SUBPROCESS = textwrap.dedent(
    """
    import sys
    import torch

    def triton_driver_created():
        # importing triton (torch._dynamo does) loads its driver modules; what must not
        # happen is creating the driver, which probes CUDA
        config = getattr(sys.modules.get("triton.runtime.driver"), "driver", None)
        return config is not None and (config._default or config._active) is not None

    import fusedrnn
    assert not torch.cuda.is_initialized(), "import initialised CUDA"
    assert not triton_driver_created(), "import created triton's GPU driver"
    assert "fusedrnn._C" not in sys.modules and "fusedrnn._C_cuda" not in sys.modules
    x = torch.randn(4, 2, 3)
    for cls in (fusedrnn.LSTM, fusedrnn.GRU, fusedrnn.RNN):
        cls(3, 5)(x)  # automatic choice
    fusedrnn.LSTMCell(3, 5)(x[0])
    assert not torch.cuda.is_initialized(), "a CPU forward initialised CUDA"
    names = fusedrnn.available_backends()
    assert "reference" in names, names
    assert not torch.cuda.is_initialized(), "probing backends initialised CUDA"
    assert not triton_driver_created(), "probing backends created triton's GPU driver"
    # nor imported triton, which fixes whether its kernels run in the interpreter
    assert "triton" not in sys.modules, "probing backends imported triton"
    print("ok", names)
    """
)


def test_import_never_touches_a_gpu():
    env = {k: v for k, v in os.environ.items() if k not in ("FUSEDRNN_BACKEND", "TRITON_INTERPRET")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    result = run_python("-W", "ignore", "-c", _SUBPROCESS, env=env, timeout=300, check=True)
    assert result.stdout.startswith("ok")
