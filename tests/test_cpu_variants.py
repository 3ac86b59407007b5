"""The compiled CPU kernels of the cell variants against the reference variant op.

Layer norm, peephole, cifg, zoneout (evaluation p, training masks for h and for c), with and
without biases, projection, dense and packed, both directions, awkward shapes, float32 and
float64: every output and every gradient of ``fusedrnn.ops.cpu.layer`` with variant options is
compared with ``fusedrnn.ops.reference.layer`` (plain PyTorch, differentiated by autograd) on
fresh random data; gradcheck in float64 for each option.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest
import torch

from fusedrnn.ops import cpu, library, reference

_C = cpu._C

pytestmark = pytest.mark.skipif(
    not cpu.is_available(), reason="fusedrnn._C (the CPU extension) is not built"
)

TOL = {torch.float32: dict(rtol=2e-5, atol=2e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}
ZONES = ("none", "eval", "mask_h", "mask_c", "both")


def make_case(cell, *, T=4, B=3, I=5, H=7, proj=0, bias=True, ln=False, peep=False, cifg=False,
              zone="none", lengths=None, dtype=torch.float64, seed=0):  # fmt: skip
    """(positional args, keyword args) of a variant layer call; every float input requires
    grad except the masks. lengths (non-increasing) -> packed [N, I] with batch_sizes."""
    g = torch.Generator().manual_seed(seed)
    lstm = cell == "lstm"
    G = (3 if cifg else 4) if lstm else 3
    Hout = proj or H

    def rnd(*shape, scale=1.0, shift=0.0):
        t = torch.randn(*shape, generator=g, dtype=dtype) * scale + shift
        return t.requires_grad_()

    batch_sizes = None
    if lengths is not None:
        assert sorted(lengths, reverse=True) == list(lengths) and len(lengths) == B
        batch_sizes = torch.tensor([sum(n > t for n in lengths) for t in range(max(lengths))])
        x = rnd(int(batch_sizes.sum()), I)
        lead = (x.shape[0],)
    else:
        x = rnd(T, B, I)
        lead = (T, B)
    k = H**-0.5
    args = (
        cell, x, rnd(B, Hout, scale=0.5), rnd(B, H, scale=0.5) if lstm else None,
        rnd(G * H, I, scale=k), rnd(G * H, Hout, scale=k),
        rnd(G * H, scale=k) if bias else None, rnd(G * H, scale=k) if bias else None,
        rnd(Hout, H, scale=k) if proj else None, batch_sizes,
    )  # fmt: skip
    kw: dict = {}
    if lstm:
        kw["cifg"] = cifg
    if ln:
        # gains away from 1 and biases away from 0, so that a wrong use of either shows
        kw.update(
            ln_ih_w=rnd(G * H, scale=0.3, shift=1.0), ln_hh_w=rnd(G * H, scale=0.3, shift=1.0)
        )
        if bias:
            kw.update(ln_ih_b=rnd(G * H, scale=0.3), ln_hh_b=rnd(G * H, scale=0.3))
        if lstm:
            kw["ln_c_w"] = rnd(H, scale=0.3, shift=1.0)
            if bias:
                kw["ln_c_b"] = rnd(H, scale=0.3)
    if peep:
        kw["w_ch"] = rnd(2 if cifg else 3, H, scale=0.5)

    def mask(n):
        return torch.bernoulli(torch.full(lead + (n,), 0.4, dtype=dtype), generator=g)

    if zone == "eval":
        kw["zoneout_h"] = 0.3
        if lstm:
            kw["zoneout_c"] = 0.2
    if zone in ("mask_h", "both"):
        kw["zoneout_h"], kw["mask_h"] = 0.4, mask(Hout)
    if zone in ("mask_c", "both") and lstm:
        kw["zoneout_c"], kw["mask_c"] = 0.4, mask(H)
    return args, kw


def leaves(args, kw):
    return [t for t in (*args[1:], *kw.values()) if isinstance(t, torch.Tensor) and t.requires_grad]


def compare(args, kw, reverse, dtype, *, seed=1):
    """Outputs and every gradient, cpu vs reference, under the same random upstream grads."""
    ref = reference.layer(*args, reverse, **kw)
    out = cpu.layer(*args, reverse, **kw)
    tol = TOL[dtype]
    for name, a, b in zip(("y", "h_n", "c_n"), out, ref, strict=True):
        if b is None:
            assert a is None, name
            continue
        assert a.shape == b.shape and a.dtype == b.dtype, name
        torch.testing.assert_close(a, b, **tol, msg=lambda m, n=name: f"{n}: {m}")
    g = torch.Generator().manual_seed(seed)
    ups = [torch.randn(o.shape, generator=g, dtype=dtype) for o in ref if o is not None]
    inputs = leaves(args, kw)
    g_ref = torch.autograd.grad([o for o in ref if o is not None], inputs, ups)
    g_out = torch.autograd.grad([o for o in out if o is not None], inputs, ups)
    for k, (a, b) in enumerate(zip(g_out, g_ref, strict=True)):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, k=k: f"grad of input {k}: {m}")


def _lstm_grid():
    # every (ln, peep, cifg, zone) combination; bias, proj, packing and direction cycle so
    # that each value meets each option several times without the full product
    cases = []
    for n, (ln, peep, cifg, zone) in enumerate(
        itertools.product((False, True), (False, True), (False, True), ZONES)
    ):
        cases.append(
            dict(
                ln=ln,
                peep=peep,
                cifg=cifg,
                zone=zone,
                bias=n % 3 != 1,
                proj=3 if n % 4 == 2 else 0,
                packed=n % 2 == 1,
                reverse=n % 5 in (1, 3),
            )  # fmt: skip
        )
    return cases


def _gru_grid():
    cases = []
    for n, (ln, zone, bias) in enumerate(
        itertools.product((False, True), ("none", "eval", "mask_h"), (True, False))
    ):
        cases.append(dict(ln=ln, zone=zone, bias=bias, packed=n % 2 == 0, reverse=n % 3 == 1))
    return cases


def _id(c):
    return "-".join(f"{k}={v}" for k, v in c.items())


def _run_case(cell, c, dtype, **shape):
    lengths = (4, 4, 2) if c["packed"] else None
    args, kw = make_case(
        cell, ln=c["ln"], peep=c.get("peep", False), cifg=c.get("cifg", False), zone=c["zone"],
        bias=c["bias"], proj=c.get("proj", 0), lengths=lengths, dtype=dtype, **shape,
    )  # fmt: skip
    compare(args, kw, c["reverse"], dtype)


@pytest.mark.parametrize("c", _lstm_grid(), ids=_id)
def test_lstm_variants_float64(c):
    _run_case("lstm", c, torch.float64)


@pytest.mark.parametrize("c", _gru_grid(), ids=_id)
def test_gru_variants_float64(c):
    _run_case("gru", c, torch.float64)


@pytest.mark.parametrize(
    "cell,c",
    [("lstm", c) for c in _lstm_grid()[::5]] + [("gru", c) for c in _gru_grid()[::2]],
    ids=lambda v: v if isinstance(v, str) else _id(v),
)
def test_variants_float32(cell, c):
    _run_case(cell, c, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize(
    "shape",
    [
        dict(T=1, B=1, I=2, H=5),
        dict(T=3, B=1, I=1, H=33),
        dict(T=1, B=4, I=3, H=5),
        dict(T=5, B=2, I=4, H=40),
    ],  # fmt: skip
    ids=_id,
)
def test_awkward_shapes_all_options(cell, shape, dtype):
    lstm = cell == "lstm"
    for reverse in (False, True):
        args, kw = make_case(cell, ln=True, peep=lstm, zone="both", proj=4 if lstm else 0,
                             dtype=dtype, **shape)  # fmt: skip
        compare(args, kw, reverse, dtype)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_packed_with_sequences_ending_at_once(cell):
    # several rows finishing at the same step, one row of length 1, odd H above one chunk
    lstm = cell == "lstm"
    args, kw = make_case(cell, B=5, H=35, ln=True, peep=lstm, cifg=lstm, zone="both",
                         lengths=(6, 6, 3, 3, 1))  # fmt: skip
    for reverse in (False, True):
        compare(args, kw, reverse, torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("batch,blocks", [(17, True), (17, False), (3, True)])
def test_several_threads(cell, batch, blocks, dtype):
    # B=17: big enough for blocks of rows on separate threads, cut unevenly (packed lengths),
    # or (blocks off) for steps split over the threads: GEMMs over columns (H >= 128, uneven),
    # pointwise over rows; B=3: too small for blocks, split steps. In float32 the step
    # products of more than four rows use the packed weights (shared by the row blocks).
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    _C._set_variant_row_blocks(blocks)
    try:
        lstm = cell == "lstm"
        lengths = (3,) * 9 + (2,) * 5 + (1,) * 3 if batch == 17 else (3, 2, 2)
        args, kw = make_case(cell, T=3, B=batch, I=8, H=130, ln=True, peep=lstm, zone="both",
                             lengths=lengths, dtype=dtype)  # fmt: skip
        compare(args, kw, False, dtype)
        compare(args, kw, True, dtype)
    finally:
        torch.set_num_threads(threads)
        _C._set_variant_row_blocks(True)


OPTIONS = {
    "ln": dict(ln=True),
    "peep": dict(peep=True),
    "cifg": dict(cifg=True),
    "cifg_peep_ln": dict(cifg=True, peep=True, ln=True),
    "zone_eval": dict(zone="eval"),
    "mask_h": dict(zone="mask_h"),
    "mask_c": dict(zone="mask_c"),
    "proj_ln_mask_h": dict(proj=2, ln=True, zone="mask_h"),
    "nobias_ln": dict(bias=False, ln=True),
}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_gradcheck_lstm(name):
    args, kw = make_case("lstm", T=3, B=2, I=2, H=3, lengths=(3, 2), **OPTIONS[name])
    _gradcheck(args, kw)


@pytest.mark.parametrize("name", ["plain", "ln", "zone_eval", "mask_h", "nobias_ln"])
def test_gradcheck_gru(name):
    opts = dict(OPTIONS.get(name, {}))
    args, kw = make_case("gru", T=3, B=2, I=2, H=3, **opts)
    _gradcheck(args, kw)


def _gradcheck(args, kw):
    inputs = leaves(args, kw)

    def f(*ts):
        it = iter(ts)
        a = [next(it) if isinstance(t, torch.Tensor) and t.requires_grad else t for t in args]
        k = {n: next(it) if isinstance(t, torch.Tensor) and t.requires_grad else t
             for n, t in kw.items()}  # fmt: skip
        outs = []
        for reverse in (False, True):
            outs += [o for o in cpu.layer(*a, reverse, **k) if o is not None]
        return tuple(outs)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_only_some_outputs_used():
    # h_n alone (no gradient reaches y or c_n), and y alone
    args, kw = make_case("lstm", ln=True, peep=True, zone="both", lengths=(4, 3, 1))
    inputs = leaves(args, kw)
    for pick in (1, 0, 2):
        ref = reference.layer(*args, False, **kw)[pick]
        out = cpu.layer(*args, False, **kw)[pick]
        g_ref = torch.autograd.grad(ref.sum(), inputs, allow_unused=True)
        g_out = torch.autograd.grad(out.sum(), inputs, allow_unused=True)
        for a, b in zip(g_out, g_ref, strict=True):
            if b is None:
                assert a is None or a.abs().max() == 0
            else:
                torch.testing.assert_close(a, b, **TOL[torch.float64])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_repeatable_and_independent_of_train_mode(cell):
    # the same call twice, and under no_grad (nothing saved, scratch rows), bit for bit: a
    # result that read uninitialised memory would differ between the runs
    lstm = cell == "lstm"
    args, kw = make_case(cell, T=5, B=4, H=9, ln=True, peep=lstm, zone="both", proj=3 * lstm,
                         lengths=(5, 4, 4, 2), dtype=torch.float32)  # fmt: skip
    inputs = leaves(args, kw)
    runs = []
    for _ in range(2):
        out = [o for o in cpu.layer(*args, True, **kw) if o is not None]
        grads = torch.autograd.grad([o.sum() for o in out], inputs)
        runs.append((out, grads))
    with torch.no_grad():
        eval_out = [o for o in cpu.layer(*args, True, **kw) if o is not None]
    for a, b, c in zip(runs[0][0], runs[1][0], eval_out, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        assert torch.equal(a, b)


def test_half_precision_computed_in_float32():
    args, kw = make_case("lstm", ln=True, peep=True, zone="both", dtype=torch.float32)
    ref = cpu.layer(*args, False, **kw)

    def bf(t):
        return t.detach().to(torch.bfloat16) if isinstance(t, torch.Tensor) else t

    a16 = [bf(t) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in args]
    kw16 = {k: bf(v) for k, v in kw.items()}
    out = cpu.layer(*a16, False, **kw16)
    for a, b in zip(out, ref, strict=True):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.float(), b.detach(), rtol=5e-2, atol=5e-2)


def test_gru_returns_c0_as_the_reference():
    args, kw = make_case("gru")
    assert cpu.layer(*args, False, **kw)[2] is None


@pytest.mark.parametrize(
    "cell,change,match",
    [
        ("gru", dict(cifg=True), "LSTM-only"),
        ("gru", dict(zoneout_c=0.5), "zoneout_c needs an LSTM"),
        ("lstm", dict(ln_c_w=None), "layer norm needs"),
        ("lstm", dict(w_ch=torch.zeros(2, 7, dtype=torch.float64)), "peephole weights must be"),
        ("lstm", dict(w_ih=torch.zeros(27, 5, dtype=torch.float64)), "expects 4 gate blocks"),
    ],
)
def test_validation_errors_match_the_reference(cell, change, match):
    args, kw = make_case(cell, ln=True, peep=cell == "lstm")
    kw = {**kw, **change}
    a = list(args)
    if "w_ih" in kw:
        a[4] = kw.pop("w_ih")
    for op in (reference.layer, cpu.layer):
        with pytest.raises(ValueError, match=match):
            op(*a, False, **kw)


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(mask_h=torch.ones(4, 3, 6, dtype=torch.float64)), "mask_h must have"),
        (dict(mask_c=torch.ones(4, 2, 7, dtype=torch.float64)), "mask_c must have"),
        (dict(ln_c_w=torch.ones(6, dtype=torch.float64)), "ln_c_w must have shape"),
        (dict(ln_hh_b=torch.ones(27, dtype=torch.float64)), "ln_hh_b must have shape"),
        (dict(ln_ih_w=torch.ones(28, dtype=torch.float32)), "ln_ih_w has dtype"),
    ],
)
def test_bad_shapes_raise_clear_errors(change, match):
    args, kw = make_case("lstm", ln=True, peep=True)
    with pytest.raises(RuntimeError, match=match):
        cpu.layer(*args, False, **{**kw, **change})


def test_opcheck():
    args, kw = make_case("lstm", ln=True, peep=True, zone="both", proj=3, lengths=(4, 2, 1))
    fargs = library.LayerArgs(*args, False, **{**kw, "zoneout_h": 0.4, "zoneout_c": 0.4},
                              save=True)  # fmt: skip
    torch.library.opcheck(
        torch.ops.fusedrnn.cpu_layer_fwd.default,
        tuple(fargs),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )


def test_generic_isa_copy_matches():
    # the baseline-ISA copy of the kernels (the AVX2 one runs in every other test where the
    # CPU has it); a subprocess, since the copy is chosen once per process
    code = (
        "import torch, tests.test_cpu_variants as t\n"
        "from fusedrnn import _C\n"
        "assert _C.kernel_isa() == 'generic'\n"
        "for cell in ('lstm', 'gru'):\n"
        "    for dt in (torch.float32, torch.float64):\n"
        "        a, k = t.make_case(cell, H=33, ln=True, peep=cell == 'lstm', zone='both',\n"
        "                           lengths=(4, 3, 1), dtype=dt)\n"
        "        t.compare(a, k, True, dt)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "FUSEDRNN_CPU_ISA": "generic"}
    res = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_scratch_reuse_leaves_earlier_results_intact(cell):
    """The variant ops reuse per-thread scratch buffers and pooled outputs: the outputs and
    gradients of one call must survive later calls (training and inference, other shapes)."""
    lstm = cell == "lstm"

    def once(seed, B=6, lengths=None):
        args, kw = make_case(cell, T=5, B=B, I=6, H=40, ln=True, peep=lstm, proj=3 * lstm,
                             zone="mask_h", lengths=lengths, dtype=torch.float32, seed=seed)  # fmt: skip
        with torch.no_grad():
            y_inf = cpu.layer(*args, False, **kw)[0]
        outs = [o for o in cpu.layer(*args, False, **kw) if o is not None]
        grads = torch.autograd.grad(sum(o.sum() for o in outs), leaves(args, kw))
        return [t.detach() for t in (y_inf, *outs, *grads)]

    first = once(41)
    kept = [t.clone() for t in first]
    once(42)
    once(43, B=4, lengths=(5, 4, 2, 1))
    for a, b in zip(first, kept, strict=True):
        assert torch.equal(a, b)
