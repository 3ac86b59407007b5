"""torch.export of models holding fusedrnn modules: the exported program runs the same
custom ops (or the same plain PyTorch, on the reference backend) and matches eager."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fusedrnn

pytestmark = pytest.mark.usefixtures("one_thread")


class Tagger(nn.Module):
    def __init__(self, cls, backend, batch_first, **kw):
        super().__init__()
        self.rnn = getattr(fusedrnn, cls)(
            5, 6, num_layers=2, batch_first=batch_first, backend=backend, **kw
        )
        self.head = nn.Linear(12 if kw.get("bidirectional") else 6, 3)

    def forward(self, x):
        out, state = self.rnn(x)
        h_n = state[0] if isinstance(state, tuple) else state
        return self.head(out), h_n


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize(
    "cls,kw", [("LSTM", {}), ("GRU", {"bidirectional": True})], ids=["LSTM", "GRU-bi"]
)
def test_export_matches_eager(cls, kw, backend, batch_first, tol):
    model = Tagger(cls, backend, batch_first, **kw).eval()
    shape = (2, 7, 5) if batch_first else (7, 2, 5)
    exported = torch.export.export(model, (torch.randn(shape),))
    if backend == "cpu":
        assert "fusedrnn.cpu_layer_fwd" in str(exported.graph)
    x = torch.randn(shape)  # fresh data, not the example the program was traced with
    with torch.no_grad():
        expected = model(x)
        got = exported.module()(x)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, **tol(torch.float32))
