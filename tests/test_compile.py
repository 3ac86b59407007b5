"""torch.compile(fullgraph=True) over models built from fusedrnn modules.

The cpu and triton backends are pairs of torch.library custom ops (forward / backward, with
fake kernels and an autograd registration; see fusedrnn/ops/library.py) that Dynamo traces as
opaque nodes; the reference backend is plain PyTorch. Each must trace without a graph break
and match eager, forward and backward. The models take dense input (pack_padded_sequence is
data-dependent and breaks the graph in torch.nn too). Without CUDA the triton backend runs
under the Triton interpreter: TRITON_INTERPRET=1 in the pytest process's environment.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
import torch._inductor.config
from layer_cases import triton_interpreting

import fusedrnn

AVAILABLE = [
    b for b in fusedrnn.available_backends("cpu") if b != "triton" or triton_interpreting()
]


@pytest.fixture(params=["reference", "cpu", "triton"])
def backend(request) -> str:
    if request.param not in AVAILABLE:
        pytest.skip(f"the {request.param} backend cannot run on CPU tensors here")
    return request.param


class TwoLayerLM(torch.nn.Module):
    def __init__(self, rnn: torch.nn.Module):
        super().__init__()
        self.rnn = rnn
        self.head = torch.nn.Linear((rnn.proj_size or 6) * (2 if rnn.bidirectional else 1), 4)

    def forward(self, x):
        # x straight into the module: with batch_first the op sees the transposed graph input,
        # and its dx becomes x.grad through the transpose's backward alone
        y, hidden = self.rnn(x)
        h = hidden[0] if isinstance(hidden, tuple) else hidden
        return self.head(y).square().mean() + h.sum()


def _loss_and_grads(model, x, run=None):
    """``run(x)`` (``model(x)`` by default) and, after its backward, the gradient of x and of
    each of ``model``'s parameters by name."""
    model.zero_grad()
    x = x.clone().requires_grad_()
    loss = (model if run is None else run)(x)
    loss.backward()
    return loss.detach(), {"x": x.grad, **{n: p.grad for n, p in model.named_parameters()}}


@pytest.mark.parametrize(
    "cls,kw,shape",
    [
        ("LSTM", {}, (5, 2, 3)),
        ("GRU", dict(bidirectional=True), (4, 3, 3)),
        ("LSTM", dict(proj_size=4, batch_first=True), (2, 5, 3)),
    ],
    ids=["two_layer_lstm", "bidirectional_gru", "lstm_proj_batch_first"],
)
def test_compile(backend, cls, kw, shape):
    model = TwoLayerLM(getattr(fusedrnn, cls)(3, 6, num_layers=2, backend=backend, **kw)).double()
    x = torch.randn(shape, dtype=torch.float64)
    torch._dynamo.reset()
    # fullgraph=True turns any graph break into an error
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    loss_c, grads_c = _loss_and_grads(model, x, compiled)
    loss_e, grads_e = _loss_and_grads(model, x)
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads_c, grads_e, rtol=1e-10, atol=1e-12)


def test_inductor_batch_first_lstm_matches_torch_nn(backend):
    """Inductor (not aot_eager) plans buffers from the ops' fake strides: a batch_first model
    hands the op a transposed x, and the op's gradient of x must come back with the strides
    the fake promised, or x.grad is silently permuted. Forward and every gradient, x.grad
    included, against eager torch.nn with the same weights."""
    if backend == "reference":
        pytest.skip("plain PyTorch: nothing opaque for Inductor to plan around")
    ref = TwoLayerLM(torch.nn.LSTM(3, 6, num_layers=2, batch_first=True))
    mod = TwoLayerLM(fusedrnn.LSTM(3, 6, num_layers=2, batch_first=True, backend=backend))
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(2, 5, 3)
    torch._dynamo.reset()
    # the on-disk caches key on the graph, not on the custom ops' fake kernels: a graph
    # compiled by another version of the ops must not be reused
    with torch._inductor.config.patch(force_disable_caches=True):
        got = _loss_and_grads(mod, x, torch.compile(mod, backend="inductor", fullgraph=True))
    torch.testing.assert_close(got, _loss_and_grads(ref, x), rtol=1e-5, atol=1e-5)
