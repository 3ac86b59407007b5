"""What test_opcheck.py, test_op_hygiene.py and test_autocast.py share: skip marks, the layer
op's positional arguments and one forward + backward through it."""

from __future__ import annotations

import pytest
import torch
from layer_cases import triton_interpreting

from fusedrnn.ops import cpu
from fusedrnn.ops.checks import GATES

needs_cpu = pytest.mark.skipif(not cpu.is_available(), reason="fusedrnn._C is not built")
needs_interpreter = pytest.mark.skipif(
    not triton_interpreting(), reason="triton ops run on CPU tensors only with TRITON_INTERPRET=1"
)

T, I, H = 3, 3, 4


def layer_args(cell, layout="dense", dtype=torch.float32, *, B, batch_sizes, device="cpu"):
    """Layer-op positional arguments (x ... batch_sizes, reverse) with grads required.
    ``layout``: dense, batch_first (a transposed x, as a batch_first module hands it),
    packed, each of them with a "_reverse" suffix; ``batch_sizes`` for the packed ones."""
    gen, G = torch.Generator().manual_seed(0), GATES[cell]

    def rnd(*shape):
        t = torch.randn(*shape, generator=gen, dtype=torch.float64) * 0.5
        return t.to(dtype=dtype, device=device)

    packed = layout.startswith("packed")
    bs = torch.tensor(batch_sizes) if packed else None
    if packed:
        x = rnd(int(bs.sum()), I)
    elif layout.startswith("batch_first"):
        x = rnd(B, T, I).transpose(0, 1)
    else:
        x = rnd(T, B, I)
    ts = [x, rnd(B, H), rnd(B, H) if cell == "lstm" else None]
    ts += [rnd(G * H, I), rnd(G * H, H), rnd(G * H), rnd(G * H)]
    for t in ts:
        if t is not None:
            t.requires_grad_()
    return [*ts, None, bs, layout.endswith("reverse")]


def forward_backward(layer, cell, args, **kw):
    """The layer op's forward, then a backward with gradients into every output, so every
    branch of the backward runs."""
    y, h_n, c_n = layer(cell, *args, **kw)
    outs = [o for o in (y, h_n, c_n) if o is not None and o.requires_grad]
    torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
