"""Shared fixtures for the fusedrnn test suite."""

from __future__ import annotations

import contextlib
import sys

import cuda_host
import pytest
import torch
from misc_testlib import BENCH

import fusedrnn

# Backends that run on CPU tensors in the ordinary test run. Triton under the
# interpreter is slow and is covered by its own tests.
CPU_BACKENDS = [name for name in fusedrnn.available_backends("cpu") if name != "triton"]

sys.path.insert(0, str(BENCH))  # the benchmark harness's modules (bench/*.py) import by name

# torch.nn's recurrent modes: (fusedrnn / torch.nn class name, its keyword arguments)
MODES = {
    "LSTM": ("LSTM", {}),
    "GRU": ("GRU", {}),
    "RNN_TANH": ("RNN", {"nonlinearity": "tanh"}),
    "RNN_RELU": ("RNN", {"nonlinearity": "relu"}),
}

# Tolerances for comparing with torch.nn (same weights, same data).
TOLERANCES = {
    torch.float64: {"rtol": 1e-12, "atol": 1e-12},
    torch.float32: {"rtol": 1e-5, "atol": 1e-5},
}


def pytest_configure(config):
    # torch.nn's CPU LSTM with proj_size warns at every call: the modules' oracle, not a finding
    config.addinivalue_line("filterwarnings", "ignore:LSTM with projections is not supported")


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state, so failures reproduce."""
    torch.manual_seed(0)


@contextlib.contextmanager
def switched(setter, value, restore):
    """``setter(value)`` for the block, then ``setter(restore)``, also after a failure."""
    setter(value)
    try:
        yield
    finally:
        setter(restore)


def num_threads(n: int):
    return switched(torch.set_num_threads, n, torch.get_num_threads())


@pytest.fixture(scope="module")
def one_thread():
    """Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``: tiny tensors
    run fastest, and steadiest on a shared machine, on one thread."""
    with num_threads(1):
        yield


@pytest.fixture(scope="module")
def host_layer():
    """fusedrnn.ops.cuda's layer op over the CPU build of the kernels (tests/cuda_host.py)."""
    if cuda_host.why_not():
        pytest.skip(cuda_host.why_not())
    return cuda_host.host_layer()


@pytest.fixture(params=CPU_BACKENDS)
def cpu_backend(request) -> str:
    """Each backend that can run on CPU tensors here (always "reference")."""
    return request.param


@pytest.fixture
def rnn_pair():
    """Factory: (torch.nn module, fusedrnn module) with identical weights.

    ``rnn_pair("LSTM", 3, 5, num_layers=2, backend="reference", dtype=torch.float64)``
    builds the torch.nn module, then the fusedrnn one loaded from its state_dict (both on
    ``device`` when given).
    """

    def make(cls: str, *args, backend="reference", dtype=torch.float64, device=None, **kwargs):
        to = dict(dtype=dtype, device=device)
        ref = getattr(torch.nn, cls)(*args, **kwargs).to(**to)
        mod = getattr(fusedrnn, cls)(*args, backend=backend, **kwargs).to(**to)
        mod.load_state_dict(ref.state_dict())
        return ref, mod

    return make


@pytest.fixture
def same_error():
    """Run ``fn(torch.nn)`` and ``fn(fusedrnn)``; assert both raise the same exception
    type with the same message, and return that exception."""

    def check(fn, expected: type[BaseException] = Exception) -> BaseException:
        with pytest.raises(expected) as ref_info:
            fn(torch.nn)
        with pytest.raises(expected) as mod_info:
            fn(fusedrnn)
        assert type(mod_info.value) is type(ref_info.value)
        assert str(mod_info.value) == str(ref_info.value)
        return mod_info.value

    return check
