"""The implementations a benchmark configuration is measured with.

Every provider turns one ``torch.nn`` module (the weights every provider shares) into a callable
``run(x [T, B, I], state) -> (y [T, B, H], state)`` with ``torch.nn``'s state layout
(``h [L, B, H]`` or ``(h, c)`` for LSTM), so one timing loop and one correctness check serve all:

- ``torch.nn``: the stock module (oneDNN on CPU, cuDNN on GPU): the baseline every ratio is
  taken against.
- ``fusedrnn[<backend>]``: ``fusedrnn.LSTM/GRU/RNN`` pinned to one backend, for every backend
  that ``fusedrnn.available_backends(device)`` lists, except Triton on CPU tensors (that is the
  interpreter: a correctness tool, never a speed).
- ``naive loop``: ``nn.LSTMCell`` (GRUCell, RNNCell) per layer in a Python loop over time, the
  code people write first.
- ``torch.compile``: the same loop function compiled whole (``dynamic=False``): Dynamo unrolls
  the time loop, so compile time grows with T x layers; it is measured and reported apart.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import fusedrnn  # noqa: E402

CELLS = ("lstm", "gru", "rnn")
MODES = ("fwd", "fwdbwd", "step")
NN_LAYER = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
NN_CELL = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn": nn.RNNCell}
FUSED_LAYER = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}

TORCH_NN = "torch.nn"
NAIVE = "naive loop"
COMPILE = "torch.compile"

State = Tensor | tuple[Tensor, Tensor]
Run = Callable[[Tensor, State], tuple[Tensor, State]]


@dataclass(frozen=True)
class Config:
    """One measured shape. ``I`` is the first layer's input size; deeper layers take H."""

    cell: str
    mode: str
    B: int
    T: int
    I: int  # noqa: E741
    H: int
    layers: int
    dtype: torch.dtype
    device: str
    group: str = "sweep"  # "headline" rows form the summary table
    # fusedrnn's variant options (e.g. (("layer_norm", True),)): the model is then fusedrnn's
    # module with them, its reference backend the baseline (torch.nn has no such layer)
    options: tuple[tuple[str, object], ...] = ()
    proj: int = 0  # the LSTM's proj_size: h (the output and the state fed back) is [B, proj]

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).replace("torch.", "")

    @property
    def out_size(self) -> int:
        """The width of y and h: ``proj`` where the LSTM has a projection, else H."""
        return self.proj or self.H

    def label(self) -> str:
        opts = "".join(f" {k}" if v is True else f" {k}={v}" for k, v in self.options)
        proj = f" proj={self.proj}" if self.proj else ""
        return (
            f"{self.cell}{opts} {self.mode} B={self.B} T={self.T} I={self.I} H={self.H}{proj} "
            f"L={self.layers} {self.dtype_name}"
        )

    def layer_kwargs(self) -> dict:
        """The keyword arguments beyond (I, H, num_layers) of the layer module of this shape."""
        return {**dict(self.options), **({"proj_size": self.proj} if self.proj else {})}


def fused_provider_names(device: str) -> list[str]:
    """``fusedrnn[...]`` providers for ``device``, from what the package reports available."""
    names = []
    for backend in fusedrnn.available_backends(device):
        if backend == "triton" and torch.device(device).type == "cpu":
            continue  # the interpreter: never a speed
        names.append(f"fusedrnn[{backend}]")
    return names


def all_provider_names(device: str) -> list[str]:
    return [TORCH_NN, *fused_provider_names(device), NAIVE, COMPILE]


def make_reference_module(cfg: Config, seed: int = 0) -> nn.Module:
    """The torch.nn module whose weights every provider of ``cfg`` copies (with variant
    options: fusedrnn's module on its reference backend)."""
    torch.manual_seed(seed)
    if cfg.options:
        cls = getattr(fusedrnn, FUSED_LAYER[cfg.cell])
        mod = cls(cfg.I, cfg.H, num_layers=cfg.layers, backend="reference", **cfg.layer_kwargs())
    else:
        mod = NN_LAYER[cfg.cell](cfg.I, cfg.H, num_layers=cfg.layers, **cfg.layer_kwargs())
    return mod.to(device=cfg.device, dtype=cfg.dtype)


def make_inputs(cfg: Config, seed: int = 1) -> tuple[Tensor, State]:
    """x [T, B, I] and a random initial state (zeros would hide bugs in the h0 path)."""
    gen = torch.Generator().manual_seed(seed)
    kw = {"dtype": cfg.dtype, "device": cfg.device}

    def rnd(*shape):
        return torch.randn(*shape, generator=gen).to(**kw)

    x = rnd(cfg.T, cfg.B, cfg.I)
    h = 0.5 * rnd(cfg.layers, cfg.B, cfg.out_size)
    if cfg.cell == "lstm":
        return x, (h, 0.5 * rnd(cfg.layers, cfg.B, cfg.H))
    return x, h


def _torch_nn(ref: nn.Module, cfg: Config) -> tuple[Run, list[nn.Parameter]]:
    def run(x, state):
        return ref(x, state)

    return run, list(ref.parameters())


def _fused(backend: str):
    def build(ref: nn.Module, cfg: Config) -> tuple[Run, list[nn.Parameter]]:
        cls = getattr(fusedrnn, FUSED_LAYER[cfg.cell])
        mod = cls(cfg.I, cfg.H, num_layers=cfg.layers, backend=backend, **cfg.layer_kwargs())
        mod = mod.to(device=cfg.device, dtype=cfg.dtype)
        mod.load_state_dict(ref.state_dict())

        def run(x, state):
            return mod(x, state)

        return run, list(mod.parameters())

    return build


def _cells_from(ref: nn.Module, cfg: Config) -> nn.ModuleList:
    """One nn.*Cell per layer holding copies of ``ref``'s layer weights."""
    if cfg.proj:
        raise ValueError(f"{cfg.label()}: nn.LSTMCell has no projection (proj_size)")
    cells = nn.ModuleList()
    for layer in range(cfg.layers):
        in_size = cfg.I if layer == 0 else cfg.H
        cell = NN_CELL[cfg.cell](in_size, cfg.H).to(device=cfg.device, dtype=cfg.dtype)
        with torch.no_grad():
            for stem in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(cell, stem).copy_(getattr(ref, f"{stem}_l{layer}"))
        cells.append(cell)
    return cells


def naive_loop_fn(cells: nn.ModuleList, is_lstm: bool) -> Run:
    """The plain loop: layer by layer, step by step, through nn.*Cell."""

    def run(x, state):
        h0, c0 = state if is_lstm else (state, None)
        hs, cs = [], []
        for layer, cell in enumerate(cells):
            h = h0[layer]
            c = c0[layer] if is_lstm else None
            ys = []
            for x_t in x.unbind(0):  # unbind, not x[t]: indexing per step is 3-4x slower
                if is_lstm:
                    h, c = cell(x_t, (h, c))
                else:
                    h = cell(x_t, h)
                ys.append(h)
            x = torch.stack(ys)
            hs.append(h)
            cs.append(c)
        h_n = torch.stack(hs)
        return x, ((h_n, torch.stack(cs)) if is_lstm else h_n)

    return run


def _naive(ref: nn.Module, cfg: Config) -> tuple[Run, list[nn.Parameter]]:
    cells = _cells_from(ref, cfg)
    return naive_loop_fn(cells, cfg.cell == "lstm"), list(cells.parameters())


# Inductor by default; the quick (CI) suite swaps in "aot_eager", which runs Dynamo and
# AOTAutograd without code generation, to exercise this provider within its time budget.
COMPILE_BACKEND = "inductor"


def _compiled(ref: nn.Module, cfg: Config) -> tuple[Run, list[nn.Parameter]]:
    cells = _cells_from(ref, cfg)
    loop = naive_loop_fn(cells, cfg.cell == "lstm")
    return torch.compile(loop, dynamic=False, backend=COMPILE_BACKEND), list(cells.parameters())


def build(name: str, ref: nn.Module, cfg: Config) -> tuple[Run, list[nn.Parameter]]:
    """(run, parameters) of provider ``name`` with ``ref``'s weights."""
    if name == TORCH_NN:
        return _torch_nn(ref, cfg)
    if name == NAIVE:
        return _naive(ref, cfg)
    if name == COMPILE:
        return _compiled(ref, cfg)
    if name.startswith("fusedrnn[") and name.endswith("]"):
        return _fused(name[len("fusedrnn[") : -1])(ref, cfg)
    raise ValueError(f"unknown provider {name!r}")


# -- correctness ----------------------------------------------------------------------------

# (absolute on outputs, relative-to-largest on gradients). fp32 differences between oneDNN and
# a GEMM+pointwise loop are summation-order rounding; half precision rounds every stored gate.
TOLERANCES = {
    torch.float32: (1e-4, 1e-4),
    torch.float64: (1e-10, 1e-10),
    torch.bfloat16: (5e-2, 5e-2),
    torch.float16: (1e-2, 1e-2),
}


# TF32 keeps 10 mantissa bits of each float32 product operand (about 3e-4 relative error per
# product); over a recurrence that compounds, so it is held to a tolerance between float32's and
# bfloat16's.
TF32_TOLERANCE = (2e-2, 2e-2)


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 on or off for cuBLAS (torch.mm, the fused backends' GEMMs, Triton's float32 dots
    follow the same flag) and cuDNN (torch.nn's RNNs) together, so that a float32 comparison
    pits like against like; torch's own defaults differ (cuDNN on, matmul off). While TF32 is
    on, float32 is compared at ``TF32_TOLERANCE``."""
    before = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        TOLERANCES[torch.float32],
    )
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    if enabled:
        TOLERANCES[torch.float32] = TF32_TOLERANCE
    try:
        yield
    finally:
        matmul, cudnn, tol = before
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn
        TOLERANCES[torch.float32] = tol


def flat_state(state: State) -> list[Tensor]:
    return list(state) if isinstance(state, tuple) else [state]


def _clone_state(state: State, requires_grad: bool = False) -> State:
    def c(t):
        return t.detach().clone().requires_grad_(requires_grad)

    return tuple(c(t) for t in state) if isinstance(state, tuple) else c(state)


@dataclass
class Outcome:
    out: list[Tensor]  # y, h_n[, c_n]
    grads: list[Tensor] | None  # dx, d(state)..., d(param) in torch.nn order


def evaluate(run: Run, params: list[nn.Parameter], x: Tensor, state: State, with_grad: bool):
    """Forward outputs and, if ``with_grad``, the gradients of sum(y * gy + h_n * gh)."""
    if not with_grad:
        with torch.no_grad():
            y, st = run(x, _clone_state(state))
        return Outcome([y.detach(), *[t.detach() for t in flat_state(st)]], None)
    xg = x.detach().clone().requires_grad_(True)
    sg = _clone_state(state, requires_grad=True)
    for p in params:
        p.grad = None
    y, st = run(xg, sg)
    gen = torch.Generator().manual_seed(7)
    loss = (y * torch.randn(y.shape, generator=gen).to(y)).sum()
    for t in flat_state(st):  # the final states must carry gradient too
        loss = loss + (t * torch.randn(t.shape, generator=gen).to(t)).sum()
    loss.backward()
    grads = [xg.grad, *[t.grad for t in flat_state(sg)], *[p.grad for p in params]]
    out = [y.detach(), *[t.detach() for t in flat_state(st)]]
    for p in params:
        p.grad = None
    return Outcome(out, [g.detach() if g is not None else None for g in grads])


def compare(got: Outcome, want: Outcome, dtype: torch.dtype) -> tuple[float, float | None, str]:
    """(max abs error of outputs, max abs error of gradients or None, problem or "")."""
    atol, rtol = TOLERANCES[dtype]
    err_out = max(
        (a.float() - b.float()).abs().max().item() for a, b in zip(got.out, want.out, strict=True)
    )
    problem = ""
    if not err_out <= atol:  # also catches NaN
        problem = f"outputs differ from torch.nn by {err_out:.3g} > {atol:g}"
    err_grad = None
    if got.grads is not None and want.grads is not None:
        err_grad, worst_rel = 0.0, 0.0
        for a, b in zip(got.grads, want.grads, strict=True):
            if (a is None) != (b is None):
                problem = problem or "a gradient is missing"
                continue
            if a is None:
                continue
            err = (a.float() - b.float()).abs().max().item()
            scale = max(b.float().abs().max().item(), 1.0)
            err_grad = max(err_grad, err) if err == err else float("nan")
            worst_rel = max(worst_rel, err / scale) if err == err else float("nan")
        if not worst_rel <= rtol:
            problem = problem or (
                f"gradients differ from torch.nn by {err_grad:.3g} (relative {worst_rel:.3g} > "
                f"{rtol:g})"
            )
    return err_out, err_grad, problem


def interpreter_note() -> str:
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "TRITON_INTERPRET=1 is set: fusedrnn[triton] on CPU is the interpreter, not timed"
    return ""
