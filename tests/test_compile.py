"""Graph capture of models built from fusedrnn modules: torch.compile(fullgraph=True) and
torch.export, and TorchScript, which is refused.

The cpu and triton backends are pairs of torch.library custom ops (forward / backward, with
fake kernels and an autograd registration; see fusedrnn/ops/library.py) that Dynamo traces as
opaque nodes; the reference backend is plain PyTorch. Each must trace without a graph break
and match eager, forward and backward; an exported program runs the same custom ops (or the
same plain PyTorch) and matches eager. The models take dense input (pack_padded_sequence is
data-dependent and breaks the graph in torch.nn too). Without CUDA the triton backend runs
under the Triton interpreter: TRITON_INTERPRET=1 in the pytest process's environment.
Scripting or tracing a module fails up front with one message that names the supported
paths, torch.compile and torch.export.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
import torch._inductor.config
from conftest import TOLERANCES
from layer_cases import triton_interpreting
from module_testlib import module_input, outputs_and_grads

import fusedrnn


@pytest.fixture(params=["reference", "cpu", "triton"])
def backend(request) -> str:
    b = request.param
    if b not in fusedrnn.available_backends("cpu") or b == "triton" and not triton_interpreting():
        pytest.skip(f"the {b} backend cannot run on CPU tensors here")
    return b


class Tagger(torch.nn.Module):
    """An RNN and a linear head: (head(y), h_n)."""

    def __init__(self, rnn: torch.nn.Module):
        super().__init__()
        self.rnn = rnn
        self.head = torch.nn.Linear((rnn.proj_size or rnn.hidden_size) * (1 + rnn.bidirectional), 4)

    def forward(self, x, hx=None):
        # x straight into the module: with batch_first the op sees the transposed graph input,
        # and its dx becomes the input's gradient through the transpose's backward alone
        y, hidden = self.rnn(x, hx)
        return self.head(y), hidden[0] if isinstance(hidden, tuple) else hidden


@pytest.mark.parametrize(
    "cls,kw,shape,compiler",
    [
        ("LSTM", {}, (5, 2, 3), "aot_eager"),
        ("GRU", dict(bidirectional=True), (4, 3, 3), "aot_eager"),
        ("LSTM", dict(proj_size=4, batch_first=True), (2, 5, 3), "aot_eager"),
        ("LSTM", dict(batch_first=True), (2, 5, 3), "inductor"),
    ],
    ids=["two_layer_lstm", "bidirectional_gru", "lstm_proj_batch_first", "inductor_batch_first"],
)
def test_compile(backend, cls, kw, shape, compiler):
    """fullgraph=True turns any graph break into an error. Inductor (not aot_eager) plans
    buffers from the ops' fake strides: a batch_first model hands the op a transposed x, and
    the op's gradient of x must come back with the strides the fake promised, or the input's
    gradient is silently permuted."""
    if compiler == "inductor" and backend == "reference":
        pytest.skip("plain PyTorch: nothing opaque for Inductor to plan around")
    model = Tagger(getattr(fusedrnn, cls)(3, 6, num_layers=2, backend=backend, **kw)).double()
    x = torch.randn(shape, dtype=torch.float64)
    torch._dynamo.reset()
    # the on-disk caches key on the graph, not on the custom ops' fake kernels: a graph
    # compiled by another version of the ops must not be reused
    with torch._inductor.config.patch(force_disable_caches=True):
        compiled = torch.compile(model, fullgraph=True, backend=compiler)
        _, outs_c, grads_c = outputs_and_grads(compiled, x)  # of x and of every parameter
    _, outs_e, grads_e = outputs_and_grads(model, x)
    torch.testing.assert_close(outs_c, outs_e, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads_c, grads_e, rtol=1e-10, atol=1e-12)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize(
    "cls,kw", [("LSTM", {}), ("GRU", {"bidirectional": True})], ids=["LSTM", "GRU-bi"]
)
def test_export_matches_eager(cls, kw, backend, batch_first):
    rnn = getattr(fusedrnn, cls)(5, 6, num_layers=2, batch_first=batch_first, backend=backend, **kw)
    model = Tagger(rnn).eval()
    shape = (2, 7, 5) if batch_first else (7, 2, 5)
    exported = torch.export.export(model, (torch.randn(shape),))
    if backend == "cpu":
        assert "fusedrnn.cpu_layer_fwd" in str(exported.graph)
    x = torch.randn(shape)  # fresh data, not the example the program was traced with
    with torch.no_grad():
        expected = model(x)
        got = exported.module()(x)
    torch.testing.assert_close(got, expected, **TOLERANCES[torch.float32])


SCRIPTED = {
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
@pytest.mark.parametrize("name", SCRIPTED)
def test_torchscript_raises_and_eager_still_runs(name, refuse):
    mod, x = SCRIPTED[name](), module_input(name)
    with pytest.raises(RuntimeError, match=MESSAGE):
        refuse(mod, x)
    mod(x)
