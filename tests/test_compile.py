"""torch.compile(fullgraph=True) over models built from fusedrnn modules.

The triton backend is a pair of torch.library custom ops (forward / backward,
with fake kernels and an autograd registration; see fusedrnn/ops/library.py),
so Dynamo traces it as opaque nodes; the reference backend is plain PyTorch.
Both must trace without a graph break and match eager, forward and backward.
(PackedSequence input is data-dependent, pack_padded_sequence breaks the graph
in torch.nn too, so the compiled models here take dense input.)
On a machine without CUDA the triton backend runs under the Triton interpreter,
which needs TRITON_INTERPRET=1 in the environment of the pytest process (the
triton case is skipped otherwise).
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
    def __init__(self, cls: str, backend: str, **kwargs):
        super().__init__()
        self.rnn = getattr(fusedrnn, cls)(3, 6, num_layers=2, backend=backend, **kwargs)
        out = (self.rnn.proj_size or 6) * (2 if self.rnn.bidirectional else 1)
        self.head = torch.nn.Linear(out, 4)

    def forward(self, x):
        y, hidden = self.rnn(x)
        h = hidden[0] if isinstance(hidden, tuple) else hidden
        return self.head(y).square().mean() + h.sum()


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
    model = TwoLayerLM(cls, backend, **kw).double()
    x = torch.randn(shape, dtype=torch.float64)
    torch._dynamo.reset()
    # fullgraph=True turns any graph break into an error
    loss_c = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    loss_c.backward()
    grads_c = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    loss_e = model(x)
    loss_e.backward()
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-12, atol=1e-12)
    for (name, p), g in zip(model.named_parameters(), grads_c, strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-10, atol=1e-12, msg=name)


def test_inductor_batch_first_lstm_matches_torch_nn(backend):
    """Inductor (not aot_eager) plans buffers from the ops' fake strides: a batch_first model
    hands the op a transposed x, and the op's gradient of x must come back with the strides
    the fake promised, or x.grad is silently permuted. Forward and every gradient, x.grad
    included, against eager torch.nn with the same weights."""
    if backend == "reference":
        pytest.skip("plain PyTorch: nothing opaque for Inductor to plan around")
    torch.manual_seed(0)
    ref = torch.nn.LSTM(3, 6, num_layers=2, batch_first=True)
    mod = fusedrnn.LSTM(3, 6, num_layers=2, batch_first=True, backend=backend)
    mod.load_state_dict(ref.state_dict())

    def loss(m, x):
        # x straight into the module: the op sees the transposed graph input and its dx
        # becomes x.grad through the transpose's backward alone
        y, (h, _) = m(x)
        return (y * torch.arange(6.0)).square().mean() + h.sum()

    x = torch.randn(2, 5, 3)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: loss(mod, x), backend="inductor", fullgraph=True)
    results = []
    # the on-disk caches key on the graph, not on the custom ops' fake kernels: a graph
    # compiled by another version of the ops must not be reused
    with torch._inductor.config.patch(force_disable_caches=True):
        for fn, m in ((compiled, mod), (lambda x: loss(ref, x), ref)):
            xi = x.clone().requires_grad_()
            out = fn(xi)
            out.backward()
            results.append((out.detach(), xi.grad, [p.grad for p in m.parameters()]))
    (out_c, dx_c, grads_c), (out_r, dx_r, grads_r) = results
    torch.testing.assert_close(out_c, out_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dx_c, dx_r, rtol=1e-5, atol=1e-5)
    for (name, _), a, b in zip(ref.named_parameters(), grads_c, grads_r, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)
