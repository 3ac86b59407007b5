"""CUDA graphs: a fused module's forward, loss and backward captured by ``torch.cuda.graph``
replay what an eager call computes (every output and every gradient), dense and packed, and a
replay after new values are copied into the captured input follows them (nothing was baked in
at capture). GPU only; the host-side rules that make capture possible (no device reads, no
host-to-device copies inside an op) are checked on CPU tensors by test_op_hygiene.py."""

from __future__ import annotations

import contextlib

import measure
import pytest
import torch
from module_testlib import flatten
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fusedrnn

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

T, B, I, H = 6, 3, 5, 7
LENGTHS = [6, 4, 1]
# "triton-cooperative" / "-resident": the triton backend forced onto those launches (at H = 7
# it would take the persistent kernels)
BACKENDS = ["triton", "triton-cooperative", "triton-resident", "cuda"]


def _module(spec: str, cls: str):
    """(two-layer ``cls`` on the GPU, factory of a context selecting its kernel path)."""
    backend, _, path = spec.partition("-")
    if backend not in fusedrnn.available_backends("cuda"):
        pytest.skip(f"backend {backend} not built")
    mod = getattr(fusedrnn, cls)(I, H, num_layers=2, backend=backend).cuda()
    if not path:
        return mod, contextlib.nullcontext
    from fusedrnn.ops import triton as tb

    return mod, lambda: tb.kernel_path(path)


def _setup(spec: str, cls: str, packed: bool):
    """``(input leaf, call)``: ``call`` runs forward, a random linear loss and backward, and
    returns every output and every gradient (of the input and of each parameter)."""
    mod, path = _module(spec, cls)
    x = torch.randn(T, B, I, device="cuda")
    p = pack_padded_sequence(x, LENGTHS) if packed else None
    leaf = (p.data if packed else x).clone().requires_grad_()
    inp = PackedSequence(leaf, p.batch_sizes) if packed else leaf
    leaves = [leaf, *mod.parameters()]
    with torch.no_grad():
        ups = [torch.randn_like(o) for o in flatten(mod(inp))]

    def call():
        for t in leaves:
            t.grad = None
        with path():
            outs = flatten(mod(inp))
            sum((o * u).sum() for o, u in zip(outs, ups, strict=True)).backward()
        return [o.detach() for o in outs] + [t.grad for t in leaves]

    return leaf, call


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_replay_matches_eager(backend, cls, packed):
    leaf, call = _setup(backend, cls, packed)
    graph, static = measure.cuda_graph(call)
    for t in static:
        t.fill_(float("nan"))  # the replay must write every element
    for _ in range(2):  # the captured values, then new ones copied into the same input
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close([t.clone() for t in static], call(), rtol=1e-6, atol=1e-6)
        with torch.no_grad():
            leaf.copy_(torch.randn_like(leaf))


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_reduce_overhead_matches_eager(backend):
    """``torch.compile(mode="reduce-overhead")`` (Inductor with CUDA-graph trees) around a
    two-layer LSTM: forward and the gradients of input and weights agree with eager calls on
    fresh inputs, over the calls that warm up, record and then replay the graph."""
    mod, path = _module(backend, "LSTM")
    torch._dynamo.reset()
    compiled = torch.compile(mod, mode="reduce-overhead")
    params = list(mod.parameters())
    for _ in range(4):
        x = torch.randn(T, B, I, device="cuda", requires_grad=True)
        u = torch.randn(T, B, H, device="cuda")
        results = []
        for fn in (compiled, mod):
            torch.compiler.cudagraph_mark_step_begin()
            with path():
                y, (h, c) = fn(x)
                grads = torch.autograd.grad((y * u).sum() + h.sum() + c.sum(), [x, *params])
            results.append([t.detach().clone() for t in (y, h, c, *grads)])
        torch.testing.assert_close(*results, rtol=1e-6, atol=1e-6)
