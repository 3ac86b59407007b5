"""fusedrnn.ops.graphs: a layer call replayed from a CUDA graph captured on its second sighting.

On CPU tensors the cache runs with :class:`FakeGraphs`, a stand-in for ``torch.cuda.graph`` with
its semantics: capture records a call over the static inputs and computes nothing (the outputs
it returns are poisoned), a replay recomputes from whatever the static inputs hold now into the
same output tensors. Every call gets fresh random values, so a replay that read a stale input,
skipped a copy or returned a static output (overwritten by the next replay) fails. The layer
op of the ``cuda`` backend is run through the cache over the CPU build of its driver
(tests/cuda_host.py) and compared bitwise with the same driver called directly. The real
capture, on a GPU, is the last test."""

from __future__ import annotations

import warnings

import cuda_host
import layer_cases
import pytest
import torch

from fusedrnn.ops import graphs
from fusedrnn.ops.cuda import make_layer
from fusedrnn.ops.graphs import GraphCache


class FakeGraphs:
    device_type = "cpu"

    def __init__(self, fail: bool = False):
        self.fail, self.capturing_now, self.stream = fail, False, 0

    def capturing(self) -> bool:
        return self.capturing_now

    def stream_of(self, device) -> tuple[int, int]:
        return (0, self.stream)

    def capture(self, fn, device):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        out = fn()
        for t in out:  # a capture computes nothing
            if isinstance(t, torch.Tensor):
                t.fill_(float("nan") if t.is_floating_point() else -7)
        return (fn, out), out

    @staticmethod
    def replay(graph) -> None:
        fn, out = graph
        # a replay's kernels write the outputs whatever mode made them (captured under
        # inference mode, they are inference tensors)
        with torch.inference_mode():
            for o, new in zip(out, fn(), strict=True):
                if isinstance(o, torch.Tensor):
                    o.copy_(new)


def step(x, w, scale, host, pair):
    """A call shaped like the driver's: device tensors, a host tensor it reads, a list with a
    None, plain values; returns tensors and a None."""
    n = int(host.sum())
    return [x[:n] @ w * scale, None, pair[0] + 1, x.sum(0)]


def args(g, n=5, k=3, dtype=torch.float64, scale=2.0, host=(2, 1)):
    x = torch.randn(n, k, generator=g, dtype=dtype)
    w = torch.randn(k, 4, generator=g, dtype=dtype)
    return (x, w, scale, torch.tensor(host), [torch.randn(2, generator=g, dtype=dtype), None])


HOST = (3,)


def check(cache, a):
    got = cache(step, a, HOST)
    want = step(*a)
    assert len(got) == len(want)
    for t, u in zip(got, want, strict=True):
        assert (t is None) == (u is None)
        if u is not None:
            assert torch.equal(t, u)
    return got


def test_second_sighting_captures_then_replays_fresh_values():
    g = torch.Generator().manual_seed(0)
    cache = GraphCache(graphs=FakeGraphs())
    kept = []
    for _ in range(4):
        a = args(g)
        kept.append((check(cache, a), step(*a)))
    assert cache.counts == {"eager": 1, "captured": 1, "replayed": 3}
    for got, want in kept:  # earlier results are the callers' own: later replays left them
        assert all(u is None or torch.equal(t, u) for t, u in zip(got, want, strict=True))


def test_inputs_changed_after_a_call_are_not_seen_by_its_results():
    g = torch.Generator().manual_seed(1)
    cache = GraphCache(graphs=FakeGraphs())
    for _ in range(3):
        a = args(g)
        got = cache(step, a, HOST)
        want = step(*a)
        a[0].add_(1.0)  # the caller's tensors, not the cache's copies
        assert torch.equal(got[0], want[0])


@pytest.mark.parametrize("inference", ["capture", "replay"])
def test_inference_mode_on_either_side_of_the_capture(inference):
    """Static inputs made under ``torch.inference_mode`` would refuse the copy of a later call
    outside it."""
    g = torch.Generator().manual_seed(7)
    cache = GraphCache(graphs=FakeGraphs())
    for k in range(4):
        with torch.inference_mode(inference == ("capture" if k < 2 else "replay")):
            check(cache, args(g))
    assert cache.counts == {"eager": 1, "captured": 1, "replayed": 3}


@pytest.mark.parametrize(
    "change",
    [
        dict(n=6),  # shape
        dict(dtype=torch.float32),
        dict(scale=3.0),  # a plain value
        dict(host=(1, 1)),  # a host tensor's values
    ],
    ids=["shape", "dtype", "value", "host-values"],
)
def test_each_part_of_the_key(change):
    g = torch.Generator().manual_seed(2)
    cache = GraphCache(graphs=FakeGraphs())
    check(cache, args(g))
    check(cache, args(g))  # captured
    check(cache, args(g, **change))  # a new key: eager
    assert cache.counts == {"eager": 2, "captured": 1, "replayed": 1}
    check(cache, args(g, **change))
    assert cache.counts == {"eager": 2, "captured": 2, "replayed": 2}


def test_none_stream_and_matmul_settings_are_in_the_key():
    g = torch.Generator().manual_seed(3)
    fake = FakeGraphs()
    cache = GraphCache(graphs=fake)
    a = args(g)
    keys = {cache._key(a, HOST, torch.device("cpu"))}
    fake.stream = 1
    keys.add(cache._key(a, HOST, torch.device("cpu")))
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high" if previous != "high" else "highest")
        keys.add(cache._key(a, HOST, torch.device("cpu")))
    finally:
        torch.set_float32_matmul_precision(previous)
    a[4][1] = a[4][0].clone()  # None -> a tensor in the list
    keys.add(cache._key(a, HOST, torch.device("cpu")))
    assert len(keys) == 4


def test_least_recently_used_graph_is_dropped():
    g = torch.Generator().manual_seed(4)
    cache = GraphCache(capacity=2, graphs=FakeGraphs())
    for n in (5, 6, 5, 6):  # two keys, each captured on its second call
        check(cache, args(g, n=n))
    assert cache.counts == {"eager": 2, "captured": 2, "replayed": 2}
    check(cache, args(g, n=7))  # a third key drops n=5, the least recently used
    check(cache, args(g, n=6))  # still kept: replayed
    check(cache, args(g, n=5))  # dropped: seen again for the first time
    assert cache.counts == {"eager": 4, "captured": 2, "replayed": 3}
    assert len(cache.entries) == 2


@pytest.mark.parametrize("why", ["disabled", "capturing", "capacity-0", "host-device"])
def test_eager_when_replay_does_not_apply(why):
    g = torch.Generator().manual_seed(5)
    fake = FakeGraphs()
    cache = GraphCache(capacity=0 if why == "capacity-0" else 4, graphs=fake)
    fake.capturing_now = why == "capturing"
    if why == "host-device":  # tensors not of the graphs' device type (CPU under CUDA graphs)
        cache = GraphCache()
    previous = graphs.set_enabled(why != "disabled")
    try:
        for _ in range(3):
            check(cache, args(g))
    finally:
        graphs.set_enabled(previous)
    assert cache.counts == {"eager": 3, "captured": 0, "replayed": 0}


def test_a_failed_capture_warns_once_and_stays_eager():
    g = torch.Generator().manual_seed(6)
    cache = GraphCache(graphs=FakeGraphs(fail=True))
    check(cache, args(g))
    with pytest.warns(RuntimeWarning, match="could not be captured"):
        check(cache, args(g))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check(cache, args(g))
    assert cache.counts == {"eager": 3, "captured": 0, "replayed": 0}


# -- the cuda backend's layer op through the cache (CPU build of its driver) -----------------


@pytest.fixture(scope="module")
def host_layers():
    """(the cuda backend's layer op over the host build, the same op through FakeGraphs)."""
    if cuda_host.why_not():
        pytest.skip(cuda_host.why_not())
    plain = cuda_host.host_layer()
    replayed = make_layer(
        "cuda_graph_host_test", lambda: plain.ext, device_type="cpu",
        graphs=lambda: GraphCache(graphs=FakeGraphs()),
    )  # fmt: skip
    return plain, replayed


CASES = [
    layer_cases.Case("lstm", B=3, T=4, I=2, H=5, packed=True),
    layer_cases.Case("lstm", B=2, T=3, I=3, H=6, proj=4),
    layer_cases.Case("gru", B=1, T=5, I=2, H=3, packed=True),
    layer_cases.Case("rnn_tanh", B=4, T=1, I=2, H=5),
    cuda_host.full("lstm", B=2, T=3, I=2, H=4),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_cuda_layer_replays_equal_direct_calls(host_layers, case):
    """Forward and backward of the driver called directly and through the cache, bitwise, on
    three problems of one shape (the cache runs, captures, replays), with new values each time
    (the seed of the output weighting changes too)."""
    plain, replayed = host_layers
    fwd, bwd = replayed.graphs
    before = (fwd.counts["replayed"], bwd.counts["replayed"])
    base = cuda_host.problem(case, torch.float32)
    for k in range(3):
        p = {
            name: v + 0.1 * k * torch.randn_like(v)
            if torch.is_tensor(v) and v.is_floating_point() and not name.startswith("mask")
            else v
            for name, v in base.items()
        }
        cuda_host.assert_same(cuda_host.run(replayed, p, case.reverse),
                              cuda_host.run(plain, p, case.reverse))  # fmt: skip
    # the third call of each shape replayed (earlier cases' keys may already be kept)
    assert fwd.counts["replayed"] > before[0] and bwd.counts["replayed"] > before[1]


# -- on a GPU: torch.cuda.graph itself ----------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_cuda_backend_replays_equal_eager_calls_on_gpu(packed):
    """The cuda backend's layers with replay on and off, on fresh values each call: every
    output and gradient bitwise equal, and replays happened."""
    import fusedrnn
    from fusedrnn.ops import cuda

    if "cuda" not in fusedrnn.available_backends("cuda"):
        pytest.skip("backend cuda not built")
    from torch.nn.utils.rnn import pack_padded_sequence

    mod = fusedrnn.LSTM(5, 7, num_layers=2, backend="cuda").cuda()
    fwd, bwd = cuda.layer.graphs
    start = fwd.counts["replayed"], bwd.counts["replayed"]
    for _ in range(4):
        x = torch.randn(6, 3, 5, device="cuda")
        results = []
        for on in (True, False):
            previous = graphs.set_enabled(on)
            try:
                leaf = x.clone().requires_grad_()
                inp = pack_padded_sequence(leaf, [6, 4, 1]) if packed else leaf
                out, (h, c) = mod(inp)
                y = out.data if packed else out
                grads = torch.autograd.grad(y.sum() + h.sum() + 2 * c.sum(),
                                            [leaf, *mod.parameters()])  # fmt: skip
                results.append([t.detach().clone() for t in (y, h, c, *grads)])
            finally:
                graphs.set_enabled(previous)
        for a, b in zip(*results, strict=True):
            assert torch.equal(a, b)
    assert fwd.counts["replayed"] > start[0] and bwd.counts["replayed"] > start[1]
