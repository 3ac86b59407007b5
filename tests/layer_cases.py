"""One input factory and one comparison for the layer op of every backend.

A :class:`Case` names a layer op call (cell, shape, options); :func:`make_inputs` draws fresh
seeded random inputs for it and :func:`compare` checks a backend's outputs and the gradient of
every differentiable input against :func:`fusedrnn.ops.reference.layer` (autograd through
plain PyTorch), under the same random upstream gradients. Used by ``test_conformance.py`` and
by the backend-specific tests that need the same comparison on their own shapes.
"""

from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import asdict, dataclass

import pytest
import torch

from fusedrnn.ops import library, reference
from fusedrnn.ops.checks import gate_count


def triton_interpreting() -> bool:
    """True when the Triton kernels run on CPU tensors: triton was first imported with
    TRITON_INTERPRET=1 (the variable must be set before that import, so in the pytest
    process's environment)."""
    if importlib.util.find_spec("triton") is None:
        return False
    import triton.language.standard

    return type(triton.language.standard.zeros).__name__ == "InterpretedFunction"


def _triton_on_gpu() -> bool:
    return importlib.util.find_spec("triton") is not None and torch.cuda.is_available()


def triton_devices() -> list:
    """The devices the Triton kernels run on here: "cpu" under the interpreter, "cuda" (a
    GPU test) with a GPU. A module of Triton tests skips without either:
    ``DEVICES = triton_devices() or skip_module_without_triton()``."""
    gpu = [pytest.param("cuda", marks=pytest.mark.gpu)] if _triton_on_gpu() else []
    return (["cpu"] if triton_interpreting() else []) + gpu


def triton_device() -> str | None:
    """The one device a suite runs the Triton kernels on: the interpreter's when it is on."""
    return "cpu" if triton_interpreting() else ("cuda" if _triton_on_gpu() else None)


def skip_module_without_triton() -> None:
    pytest.skip(
        "the triton backend needs CUDA, or TRITON_INTERPRET=1 in the environment of the "
        "pytest process (set before triton is imported)",
        allow_module_level=True,
    )


@pytest.fixture
def poisoned_triton_buffers():
    """Every buffer the Triton kernels write NaN-filled first (a module of Triton tests imports
    it with ``pytestmark = pytest.mark.usefixtures(...)``), so an element a kernel forgets to
    write shows up."""
    from fusedrnn.ops import triton

    with triton.poison_buffers():
        yield


# tolerance against the reference in the same dtype (rtol = atol)
TOL = {torch.float64: 1e-10, torch.float32: 2e-5}


@dataclass(frozen=True)
class Case:
    cell: str
    T: int = 4
    B: int = 3
    I: int = 5  # noqa: E741
    H: int = 7
    proj: int = 0
    bias: bool = True
    packed: bool = False  # random non-increasing lengths, the first of length T
    lengths: tuple[int, ...] | None = None  # packed with these lengths instead
    reverse: bool = False
    batch_first: bool = False  # x transposed in memory, as a batch_first module hands it over
    ln: bool = False
    peep: bool = False
    cifg: bool = False
    zone: str = "none"  # zoneout: "none", "eval" (p only), "h" / "c" / "hc" (training masks)

    @property
    def variant(self) -> bool:
        return self.ln or self.peep or self.cifg or self.zone != "none"

    def __str__(self) -> str:  # the shape, then each option that is not the default
        opts = [k if v is True else f"{k}={v}".replace(" ", "") for k, v in asdict(self).items()
                if k not in ("cell", "T", "B", "I", "H") and v != getattr(Case, k)]  # fmt: skip
        return "-".join([self.cell, f"T{self.T}B{self.B}I{self.I}H{self.H}", *opts])


def _batch_sizes(case: Case, gen: torch.Generator) -> torch.Tensor | None:
    lengths = case.lengths
    if lengths is None and case.packed:
        lengths = sorted(torch.randint(1, case.T + 1, (case.B,), generator=gen).tolist())[::-1]
        lengths[0] = case.T
    if lengths is None:
        return None
    assert sorted(lengths, reverse=True) == list(lengths) and len(lengths) == case.B
    return torch.tensor([sum(n > t for n in lengths) for t in range(max(lengths))])


def make_inputs(case: Case, dtype: torch.dtype, device="cpu", seed: int = 0) -> dict:
    """The layer op's arguments for ``case`` by name (``library.LayerArgs`` names, options
    only where on): fresh seeded random data, not requiring grad."""
    gen = torch.Generator().manual_seed(seed)
    lstm = case.cell == "lstm"
    G, H = gate_count(case.cell, case.cifg), case.H
    Hout = case.proj or H

    def rnd(*shape, scale=1.0, shift=0.0):
        t = torch.randn(*shape, generator=gen, dtype=torch.float64) * scale + shift
        return t.to(dtype=dtype, device=device)

    k = H**-0.5  # torch.nn's initialisation scale: activations away from saturation
    bs = _batch_sizes(case, gen)
    x = rnd(int(bs.sum()), case.I) if bs is not None else rnd(case.T, case.B, case.I)
    if case.batch_first:
        x = x.transpose(0, 1).contiguous().transpose(0, 1)
        assert not x.is_contiguous()
    lead = x.shape[:-1]
    a = dict(
        cell=case.cell, x=x, h0=rnd(case.B, Hout, scale=0.5),
        c0=rnd(case.B, H, scale=0.5) if lstm else None,
        w_ih=rnd(G * H, case.I, scale=k), w_hh=rnd(G * H, Hout, scale=k),
        b_ih=rnd(G * H, scale=k) if case.bias else None,
        b_hh=rnd(G * H, scale=k) if case.bias else None,
        w_hr=rnd(Hout, H, scale=k) if case.proj else None, batch_sizes=bs,
        reverse=case.reverse,
    )  # fmt: skip
    if case.cifg:
        a["cifg"] = True
    if case.ln:  # gains away from 1 and biases away from 0, so that a wrong use of either shows
        for parts, n in (("ih", "hh"), G * H), (("c",) * lstm, H):  # c: the LSTM's cell state
            for end, shift in (("w", 1.0), ("b", 0.0))[: 1 + case.bias]:
                a.update({f"ln_{p}_{end}": rnd(n, scale=0.3, shift=shift) for p in parts})
    if case.peep:
        a["w_ch"] = rnd(2 if case.cifg else 3, H, scale=0.5)
    if case.zone == "eval":
        a.update(zoneout_h=0.3, **({"zoneout_c": 0.2} if lstm else {}))
    for s, width in (("h", Hout), ("c", H))[: 1 + lstm]:  # training masks, h's drawn first
        if case.zone in (s, "hc"):
            a[f"zoneout_{s}"] = 0.4
            a[f"mask_{s}"] = (torch.rand(*lead, width, generator=gen) < 0.4).to(x)
    return a


def call(layer, a: dict):
    """``layer`` on the arguments of :func:`make_inputs` -> (y, h_n, c_n)."""
    options = {k: a[k] for k in library.OPTION_DEFAULTS if k in a}
    return layer(*(a[k] for k in library.NAMES[: library.N_POSITIONAL]), **options)


def with_leaves(a: dict, wanted=library.GRAD_INPUTS) -> dict:
    """A copy of the arguments whose differentiable tensors (those named in ``wanted``) are
    fresh leaves requiring grad."""
    return {
        k: v.detach().clone().requires_grad_() if k in wanted and v is not None else v
        for k, v in a.items()
    }


def outputs_and_grads(layer, a: dict, seed: int = 1, pick: int | None = None, wanted=None):
    """Outputs (y, h_n, c_n; None where absent) and the gradient of every present
    differentiable input by name, under a seeded random linear loss on every output
    (on output ``pick`` alone when given). With ``wanted`` (names) only those inputs require
    grad, and each must get a gradient."""
    names = wanted or library.GRAD_INPUTS
    a = with_leaves(a, names)
    outs = call(layer, a)
    gen = torch.Generator().manual_seed(seed)
    used = [o for k, o in enumerate(outs) if o is not None and pick in (None, k)]
    ups = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o) for o in used]
    leaves = {k: v for k, v in a.items() if k in names and v is not None}
    grads = torch.autograd.grad(used, list(leaves.values()), ups, allow_unused=wanted is None)
    # one tensor given as two gradients (a backend's shared sum) would let an optimizer's
    # in-place step on one parameter's gradient change another's
    starts = [g.data_ptr() for g in grads if g is not None and g.numel()]
    assert len(set(starts)) == len(starts), "two gradients share memory"
    return [None if o is None else o.detach() for o in outs], dict(zip(leaves, grads, strict=True))


def assert_close(got, want, tol: float, what: str) -> None:
    if want is None:
        assert got is None or not got.any(), f"{what} should be None"
        return
    assert got is not None, f"{what} missing"
    assert got.shape == want.shape and got.dtype == want.dtype, (what, got.shape, want.shape)
    assert torch.isfinite(got).all(), f"{what} has non-finite values (unwritten?)"
    torch.testing.assert_close(got, want, rtol=tol, atol=tol, msg=lambda m: f"{what}: {m}")


def cast(v, dtype: torch.dtype):
    """A floating-point tensor in ``dtype``; anything else (None, batch_sizes) as is."""
    return v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v


def compare(
    layer, a: dict, tol: float, *, poison=contextlib.nullcontext, pick=None, upcast=None,
    wanted=None,
) -> None:  # fmt: skip
    """Every output and every gradient (of the inputs named in ``wanted`` only, when given)
    of ``layer`` against the reference op on ``a``. With ``upcast`` (a dtype): ``layer``'s
    results, checked to be in ``a``'s dtype, are cast to it and compared with the reference
    op's on ``a`` cast to it (half precision)."""
    with poison():
        outs, grads = outputs_and_grads(layer, a, pick=pick, wanted=wanted)
    if upcast is not None:
        results = [t for t in (*outs, *grads.values()) if t is not None]
        assert all(t.dtype == a["x"].dtype for t in results), "not in the inputs' dtype"
        outs = [cast(o, upcast) for o in outs]
        grads = {k: cast(g, upcast) for k, g in grads.items()}
        a = {k: cast(v, upcast) for k, v in a.items()}
    ref_outs, ref_grads = outputs_and_grads(reference.layer, a, pick=pick, wanted=wanted)
    for name, o, r in zip(("y", "h_n", "c_n"), outs, ref_outs, strict=True):
        assert_close(o, r, tol, name)
    assert grads.keys() == ref_grads.keys()
    for k in grads:
        assert_close(grads[k], ref_grads[k], tol, f"d{k}")
