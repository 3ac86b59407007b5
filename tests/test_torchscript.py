"""TorchScript is not supported: scripting or tracing a module fails up front with one
message that names the supported paths, torch.compile and torch.export."""

from __future__ import annotations

import pytest
import torch
from module_testlib import module_input

import fusedrnn

MODULES = {
    "LSTM": lambda: fusedrnn.LSTM(3, 4, backend="cpu"),
    "LSTM_PROJ": lambda: fusedrnn.LSTM(3, 4, proj_size=2, num_layers=2, backend="cpu"),
    "GRU": lambda: fusedrnn.GRU(3, 4, bidirectional=True, backend="cpu"),
    "RNN": lambda: fusedrnn.RNN(3, 4, batch_first=True, backend="reference"),
    "LSTMCell": lambda: fusedrnn.LSTMCell(3, 4, backend="cpu"),
    "GRUCell": lambda: fusedrnn.GRUCell(3, 4, backend="cpu"),
    "RNNCell": lambda: fusedrnn.RNNCell(3, 4, backend="reference"),
}
MESSAGE = r"TorchScript.*not supported.*torch\.compile.*torch\.export"


@pytest.mark.parametrize(
    "refuse",
    [
        lambda mod, x: torch.jit.script(mod),
        lambda mod, x: torch.jit.script(torch.nn.Sequential(mod)),
        lambda mod, x: torch.jit.trace(mod, (x,)),
    ],
    ids=["script", "script_submodule", "trace"],
)
@pytest.mark.parametrize("name", MODULES)
def test_torchscript_raises_and_eager_still_runs(name, refuse):
    mod, x = MODULES[name](), module_input(name)
    with pytest.raises(RuntimeError, match=MESSAGE):
        refuse(mod, x)
    mod(x)
