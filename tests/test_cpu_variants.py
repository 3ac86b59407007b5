"""The compiled CPU kernels of the cell variants: what is particular to them.

Every option, shape and dtype against the reference op (outputs, every gradient, gradcheck) is
tests/test_conformance.py, in each ISA copy of the kernels too (test_cpu_backend.py's
test_narrower_isa_copies_match_too); here are the cpu backend's own work split (row blocks,
split steps), scratch reuse, half precision and its argument checks.
"""

from __future__ import annotations

import layer_cases
import pytest
import torch
from layer_cases import TOL, Case, with_leaves

from fusedrnn.ops import cpu, library, reference

_C = cpu._C

pytestmark = pytest.mark.skipif(
    not cpu.is_available(), reason="fusedrnn._C (the CPU extension) is not built"
)


def make_case(cell, dtype=torch.float64, seed=0, **options):
    """(positional args, keyword args) of a variant layer call on ``Case(cell, **options)``
    (tests/layer_cases.py); every float input requires grad except the masks."""
    a = with_leaves(layer_cases.make_inputs(Case(cell, **options), dtype, seed=seed))
    args = tuple(a[k] for k in library.NAMES[: library.N_POSITIONAL - 1])
    return args, {k: a[k] for k in library.OPTION_DEFAULTS if k in a}


def leaves(args, kw):
    return [t for t in (*args[1:], *kw.values()) if isinstance(t, torch.Tensor) and t.requires_grad]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("batch,blocks", [(17, True), (17, False), (3, True)])
@pytest.mark.skipif(
    not hasattr(_C, "_set_variant_row_blocks"),
    reason="build fusedrnn._C with FUSEDRNN_TEST_HOOKS=1 (as .ci/run does)",
)
def test_several_threads(cell, batch, blocks, dtype):
    # B=17: big enough for blocks of rows on separate threads, cut unevenly (packed lengths),
    # or (blocks off) for steps split over the threads: GEMMs over columns (H >= 128, uneven),
    # pointwise over rows; B=3: too small for blocks, split steps. In float32 the step
    # products of more than four rows use the packed weights (shared by the row blocks).
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    _C._set_variant_row_blocks(blocks)
    try:
        lengths = (3,) * 9 + (2,) * 5 + (1,) * 3 if batch == 17 else (3, 2, 2)
        shape = dict(T=3, B=batch, I=8, H=130, lengths=lengths)
        for reverse in (False, True):
            case = Case(cell, ln=True, peep=cell == "lstm", zone="hc", reverse=reverse, **shape)
            layer_cases.compare(cpu.layer, layer_cases.make_inputs(case, dtype), TOL[dtype])
    finally:
        torch.set_num_threads(threads)
        _C._set_variant_row_blocks(True)


def test_half_precision_computed_in_float32():
    a = layer_cases.make_inputs(Case("lstm", ln=True, peep=True, zone="hc"), torch.float32)
    ref = layer_cases.call(cpu.layer, with_leaves(a))
    out = layer_cases.call(
        cpu.layer, {k: layer_cases.cast(v, torch.bfloat16) for k, v in a.items()}
    )
    for got, want in zip(out, ref, strict=True):
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want.detach(), rtol=5e-2, atol=5e-2)


def f64(*shape):
    return torch.ones(*shape, dtype=torch.float64)


@pytest.mark.parametrize(
    "cell,change,exc,match",
    [  # the ValueErrors are the reference op's too
        ("gru", dict(cifg=True), ValueError, "LSTM-only"),
        ("gru", dict(zoneout_c=0.5), ValueError, "zoneout_c needs an LSTM"),
        ("lstm", dict(ln_c_w=None), ValueError, "layer norm needs"),
        ("lstm", dict(w_ch=f64(2, 7)), ValueError, "peephole weights must be"),
        ("lstm", dict(w_ih=f64(27, 5)), ValueError, "expects 4 gate blocks"),
        ("lstm", dict(mask_h=f64(4, 3, 6)), RuntimeError, "mask_h must have"),
        ("lstm", dict(mask_c=f64(4, 2, 7)), RuntimeError, "mask_c must have"),
        ("lstm", dict(ln_c_w=f64(6)), RuntimeError, "ln_c_w must have shape"),
        ("lstm", dict(ln_hh_b=f64(27)), RuntimeError, "ln_hh_b must have shape"),
        ("lstm", dict(ln_ih_w=torch.ones(28)), RuntimeError, "ln_ih_w has dtype"),
    ],
)
def test_bad_arguments_raise_clear_errors(cell, change, exc, match):
    args, kw = make_case(cell, ln=True, peep=cell == "lstm")
    kw = {**kw, **change}
    a = list(args)
    if "w_ih" in kw:
        a[4] = kw.pop("w_ih")
    for op in (reference.layer, cpu.layer) if exc is ValueError else (cpu.layer,):
        with pytest.raises(exc, match=match):
            op(*a, False, **kw)


def test_opcheck():
    args, kw = make_case("lstm", ln=True, peep=True, zone="hc", proj=3, lengths=(4, 2, 1))
    options = {**library.OPTION_DEFAULTS, **kw, "zoneout_h": 0.4, "zoneout_c": 0.4}
    fargs = library.LayerArgs(*args, False, **options, save=True)
    torch.library.opcheck(
        torch.ops.fusedrnn.cpu_layer_fwd.default,
        tuple(fargs),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_scratch_reuse_leaves_earlier_results_intact(cell):
    """The variant ops reuse per-thread scratch buffers and pooled outputs: the outputs and
    gradients of one call must survive later calls (training and inference, other shapes)."""
    lstm = cell == "lstm"

    def once(seed, B=6, lengths=None):
        args, kw = make_case(cell, torch.float32, seed, T=5, B=B, I=6, H=40, ln=True, peep=lstm,
                             proj=3 * lstm, zone="h", lengths=lengths)  # fmt: skip
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
