"""One torch.library registration for every backend's layer op, generated from one argument table.

A backend that runs its own kernels (and has its own backward) hands :func:`define_layer` four
functions of a :data:`LayerArgs` tuple and gets two custom ops in the ``fusedrnn`` namespace::

    fusedrnn::<backend>_layer_fwd(<LAYER_ARGS>) -> Tensor[] buffers
    fusedrnn::<backend>_layer_bwd(<LAYER_ARGS>, Tensor[] buffers, Tensor?[] grads, bool[] needs)
                                  -> Tensor[] one gradient per GRAD_INPUTS entry

plus the public ``layer`` with the contract signature; ``save``, ``needs`` and the eager path are
described in fusedrnn/ops/CONTRACT.md. Schema, fake backward, setup_context, the needed-gradient
list and the autograd registration all come from :data:`LAYER_ARGS`; what a new option touches
besides its rows is listed in fusedrnn/ops/CONTRACT.md.

- The forward returns *buffers* (whatever the backward needs: state histories, saved gates)
  rather than ``(y, h_n, c_n)``, because a custom op's outputs may not alias each other;
  ``unpack`` turns them into ``(y, h_n, c_n)`` with views and indexing that Dynamo traces.
- ``save`` is decided in ``layer``, before the op, so eager no-grad calls,
  ``torch.inference_mode`` and compiled inference all skip writing what a backward would read.
- The backward op returns an empty placeholder for each gradient not in ``needs`` (custom ops
  return no None) and the autograd glue maps those to None.
- Output gradients autograd did not compute stay None (``set_materialize_grads(False)``):
  materialised, the saved buffers' would be zeros the size of the activations, per backward.
- ``register_fake`` gives both ops meta shapes, so ``torch.compile(fullgraph=True)`` sees two
  opaque nodes and no graph break.
"""

from __future__ import annotations

import itertools
from collections import namedtuple
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

NAMESPACE = "fusedrnn"

# (name, schema type, differentiable), in the order of the op's arguments
LAYER_ARGS = (
    ("cell", "str", False),  # "lstm" | "gru" | "rnn_tanh" | "rnn_relu"
    ("x", "Tensor", True),  # [T, B, I] dense or [N, I] packed
    ("h0", "Tensor", True),  # [B, Hout]
    ("c0", "Tensor?", True),  # [B, H], LSTM only
    ("w_ih", "Tensor", True),  # [G*H, I]
    ("w_hh", "Tensor", True),  # [G*H, Hout]
    ("b_ih", "Tensor?", True),  # [G*H]
    ("b_hh", "Tensor?", True),  # [G*H]
    ("w_hr", "Tensor?", True),  # [Hout, H]
    ("batch_sizes", "Tensor?", False),  # [T] int64 on the CPU
    ("reverse", "bool", False),
    # the variant options (docs/variants.md); all off is torch.nn's cell
    ("cifg", "bool", False),
    ("ln_ih_w", "Tensor?", True),  # [G*H]
    ("ln_ih_b", "Tensor?", True),  # [G*H]
    ("ln_hh_w", "Tensor?", True),  # [G*H]
    ("ln_hh_b", "Tensor?", True),  # [G*H]
    ("ln_c_w", "Tensor?", True),  # [H]
    ("ln_c_b", "Tensor?", True),  # [H]
    ("w_ch", "Tensor?", True),  # [3, H] or [2, H] with cifg
    ("zoneout_h", "float", False),
    ("zoneout_c", "float", False),
    ("mask_h", "Tensor?", False),  # like y
    ("mask_c", "Tensor?", False),  # like y with H features
    ("save", "bool", False),  # a backward can follow: write what it reads
)
NAMES = tuple(name for name, _, _ in LAYER_ARGS)
N_POSITIONAL = NAMES.index("cifg")  # cell ... reverse: the contract's positional arguments
OPTION_DEFAULTS = {  # the keyword-only options after them (all but save), each off
    name: {"bool": False, "float": 0.0}.get(ty) for name, ty, _ in LAYER_ARGS[N_POSITIONAL:-1]
}
OPTION_TENSORS = tuple(  # the tensor-valued options
    name for name, ty, _ in LAYER_ARGS if name in OPTION_DEFAULTS and ty.startswith("Tensor")
)
# The bool options, next to each other right after ``reverse``: the C++ backends take them in
# this order from one list (csrc/options.h::FRNN_BOOL_OPTIONS).
BOOL_OPTIONS = tuple(name for name, ty, _ in LAYER_ARGS if name in OPTION_DEFAULTS and ty == "bool")
# The bool options that only some of the variant cells (LSTM, GRU) take, with those cells:
# checks.OPTION_CELLS completes it (checks rejects a bool option elsewhere, the compile report
# walks it only there).
BOOL_OPTION_CELLS = {"cifg": ("lstm",)}
GRAD_INPUTS = tuple(name for name, _, diff in LAYER_ARGS if diff)
_GRAD_POS = tuple(k for k, (_, _, diff) in enumerate(LAYER_ARGS) if diff)
_TENSOR_POS = tuple(k for k, (_, ty, _) in enumerate(LAYER_ARGS) if ty.startswith("Tensor"))
_SIGNATURE = ", ".join(f"{ty} {name}" for name, ty, _ in LAYER_ARGS)
FWD_SCHEMA = f"({_SIGNATURE}) -> Tensor[]"
BWD_SCHEMA = f"({_SIGNATURE}, Tensor[] buffers, Tensor?[] grads, bool[] needs) -> Tensor[]"

LayerArgs = namedtuple("LayerArgs", NAMES)


def options_of(a: LayerArgs) -> dict:
    """The variant options of a call, as the keyword arguments of the contract."""
    return {name: getattr(a, name) for name in OPTION_DEFAULTS}


def variants_on(**options) -> bool:
    """True when a layer op call asks for any variant (torch.nn's plain cell otherwise).
    Takes the layer op's keyword-only options; an unknown option name is a TypeError."""
    unknown = options.keys() - OPTION_DEFAULTS.keys()
    if unknown:
        raise TypeError(f"unknown layer op option(s) {sorted(unknown)}; the options are "
                        f"{list(OPTION_DEFAULTS)}")  # fmt: skip
    return any(v is not None and (k in OPTION_TENSORS or v > 0) for k, v in options.items())


def is_variant(a: LayerArgs) -> bool:
    return variants_on(**options_of(a))


def records_autograd(*tensors) -> bool:
    """True when grad mode is on and a tensor requires grad (None allowed; a list or tuple
    stands for its items): a backward can follow."""
    if not torch.is_grad_enabled():
        return False
    flat = [t for item in tensors for t in (item if isinstance(item, list | tuple) else [item])]
    return any(t is not None and t.requires_grad for t in flat)


# forward(a) -> buffers;  fake_forward(a) -> buffers of the same shapes and strides
ForwardFn = Callable[[LayerArgs], list[Tensor]]
# backward(a, buffers, grads, needs) -> gradients in GRAD_INPUTS order (None allowed; a shorter
# sequence leaves the rest None). grads: one per buffer, None where autograd has none.
BackwardFn = Callable[..., Sequence[Tensor | None]]
# unpack(a, buffers) -> (y, h_n, c_n of an LSTM)
UnpackFn = Callable[..., tuple[Tensor, Tensor, Tensor | None]]

DOUBLE_BACKWARD_BACKENDS = ("cpu", "reference")
LOW_PRECISION = (torch.bfloat16, torch.float16)


def differentiable_backward(
    a: LayerArgs, needs: Sequence[bool], grads: Sequence[Tensor | None]
) -> list[Tensor | None]:
    """The gradients of the GRAD_INPUTS as a graph autograd can differentiate again: the
    backward of a fused op is itself an opaque kernel, so under ``create_graph=True`` the
    forward is recomputed with :func:`fusedrnn.ops.reference.layer` (same contract, plain
    PyTorch) and differentiated by autograd. ``grads`` are those of (y, h_n, c_n); ``needs``
    asks for at least one gradient."""
    from . import reference

    wanted = [getattr(a, name) for name, n in zip(GRAD_INPUTS, needs, strict=True) if n]
    outs = reference.layer(*a[:N_POSITIONAL], **options_of(a))
    pairs = [
        (o, g) for o, g in zip(outs, grads, strict=False)
        if o is not None and g is not None and o.requires_grad
    ]  # fmt: skip
    if not pairs:
        return [None] * len(needs)
    computed = iter(torch.autograd.grad(
        [o for o, _ in pairs], wanted, [g for _, g in pairs],
        create_graph=True, allow_unused=True, materialize_grads=True,
    ))  # fmt: skip
    return [next(computed) if n else None for n in needs]


def _f32(t):
    return t.float() if isinstance(t, Tensor) and t.is_floating_point() else t


_PLAIN = (Tensor, torch.nn.Parameter)


def _unwatched(args) -> bool:
    """True when nothing observes the dispatcher: no dispatch or function mode (fake tensors,
    opcheck, flop counters), no profiler, no functorch transform, no tensor subclass but
    nn.Parameter among the arguments. An eager call with autograd may then run a layer op's
    Python body directly: the custom-op machinery costs about 50 µs per call (it rebuilds the
    24 arguments at each level of the dispatch), a quarter of an RNNCell step with backward."""
    return not (
        torch._C._len_torch_dispatch_stack() > 0
        or torch._C._is_torch_function_mode_enabled()
        or torch.autograd.profiler._is_profiler_enabled
        or torch._C._are_functorch_transforms_active()
        or any(isinstance(t, Tensor) and type(t) not in _PLAIN for t in args)
    )


def define_layer(
    backend: str,
    forward: ForwardFn,
    fake_forward: ForwardFn,
    backward: BackwardFn,
    unpack: UnpackFn,
    *,
    in_float32_when: Callable[[bool], bool] = lambda variant: False,
    double_backward: bool = False,
) -> Callable[..., tuple[Tensor, Tensor, Tensor | None]]:
    """Register ``fusedrnn::<backend>_layer_fwd/_bwd`` and return the backend's ``layer``.

    ``in_float32_when(variant)``: whether a call with half-precision inputs (e.g. under
    autocast), variant or not, runs with every floating-point tensor in float32 because the
    kernels do not take them, as the GPU backends accumulate; y, h_n and c_n come back in the
    input's dtype.
    ``double_backward``: under ``create_graph=True`` the backward recomputes through the
    reference op (:func:`differentiable_backward`) instead of refusing; the backend's forward
    then returns y, h_n and c_n as its first three buffers."""
    fwd_op = torch.library.custom_op(
        f"{NAMESPACE}::{backend}_layer_fwd",
        lambda *args: forward(LayerArgs(*args)),
        mutates_args=(),
        schema=FWD_SCHEMA,
    )
    fwd_op.register_fake(lambda *args: fake_forward(LayerArgs(*args)))

    def run_backward(*args):
        a, (buffers, grads, needs) = LayerArgs(*args[:-3]), args[-3:]
        out = backward(a, buffers, grads, needs)
        return [
            g if g is not None and n else a.x.new_empty(0)
            for g, n in itertools.zip_longest(out, needs)
        ]

    def fake_backward(*args):
        a, needs = LayerArgs(*args[:-3]), args[-1]
        # the real gradients are fresh contiguous tensors whatever the inputs' strides (a
        # batch_first x is a transposed view): empty_like would copy the input's strides
        return [
            t.new_empty(t.shape) if n else a.x.new_empty(0)
            for t, n in zip((getattr(a, name) for name in GRAD_INPUTS), needs, strict=True)
        ]

    bwd_op = torch.library.custom_op(
        f"{NAMESPACE}::{backend}_layer_bwd", run_backward, mutates_args=(), schema=BWD_SCHEMA
    )
    bwd_op.register_fake(fake_backward)

    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*[inputs[k] for k in _TENSOR_POS], *output)
        ctx.plain = {k: v for k, v in enumerate(inputs) if k not in _TENSOR_POS}
        ctx.present = [inputs[k] is not None for k in _GRAD_POS]
        ctx.set_materialize_grads(False)

    def backward_rule(ctx, grads, direct: bool = False):
        saved = ctx.saved_tensors
        tensors = dict(zip(_TENSOR_POS, saved, strict=False))
        a = LayerArgs(*[tensors[k] if k in tensors else ctx.plain[k] for k in range(len(NAMES))])
        buffers = list(saved[len(_TENSOR_POS) :])
        needs = [
            bool(ctx.needs_input_grad[k]) and p for k, p in zip(_GRAD_POS, ctx.present, strict=True)
        ]
        result: list[Tensor | None] = [None] * len(NAMES)
        if not any(needs):
            return tuple(result)
        if not a.save:
            raise RuntimeError(
                f"fusedrnn {backend} backend: the forward ran with save=False (nothing saved "
                f"for a backward); call fusedrnn.ops.{backend}.layer, which decides this"
            )
        if torch.is_grad_enabled():  # create_graph=True: the gradients need a graph
            if not double_backward:
                raise RuntimeError(
                    f"fusedrnn {backend} backend: double backward (create_graph=True) is not "
                    f"supported; the {' and '.join(DOUBLE_BACKWARD_BACKENDS)} backends support it"
                )
            grads_in = differentiable_backward(a, needs, grads[:3])  # y, h_n, c_n come first
        else:
            bwd_args = (*a, buffers, list(grads), needs)
            grads_in = run_backward(*bwd_args) if direct and _unwatched(a) else bwd_op(*bwd_args)
        for k, g, n in zip(_GRAD_POS, grads_in, needs, strict=True):
            result[k] = g if n else None
        return tuple(result)

    fwd_op.register_autograd(backward_rule, setup_context=setup_context)

    class EagerLayer(torch.autograd.Function):
        """The same autograd rule for eager calls that record a graph (CONTRACT.md; compiled
        code keeps the registered rule). While anything observes the dispatcher
        (:func:`_unwatched`) the ops themselves run, so that dispatch modes see them as in
        compiled code; otherwise their Python bodies do."""

        @staticmethod
        def forward(ctx, *args):
            ctx.direct = _unwatched(args)
            buffers = tuple(forward(LayerArgs(*args)) if ctx.direct else fwd_op(*args))
            setup_context(ctx, args, buffers)
            return buffers

        @staticmethod
        def backward(ctx, *grads):
            return backward_rule(ctx, grads, ctx.direct)

    def layer(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse, **options):
        """One layer in one direction; the contract of :func:`fusedrnn.ops.reference.layer`."""
        variant = variants_on(**options)  # an unknown option is a TypeError here
        if x.dtype in LOW_PRECISION and in_float32_when(variant):
            args = map(_f32, (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr))
            y, h_n, c_n = layer(cell, *args, batch_sizes, reverse,
                                **{k: _f32(v) for k, v in options.items()})  # fmt: skip
            return y.to(x.dtype), h_n.to(x.dtype), None if c_n is None else c_n.to(x.dtype)
        lstm = cell == "lstm"
        opts = {**OPTION_DEFAULTS, **options}
        opts["zoneout_h"], opts["zoneout_c"] = float(opts["zoneout_h"]), float(opts["zoneout_c"])
        for m in ("mask_h", "mask_c"):  # data, never differentiated; the kernels read x's dtype
            if opts[m] is not None:
                opts[m] = opts[m].detach().to(x.dtype)
        tensors = (x, h0, c0 if lstm else None, w_ih, w_hh, b_ih, b_hh, w_hr)
        diff = [*tensors, *(opts[n] for n in GRAD_INPUTS[len(tensors) :])]
        save = records_autograd(*diff)
        a = LayerArgs(cell, *tensors, batch_sizes, reverse, **opts, save=save)
        eager = save and not torch.compiler.is_compiling()
        y, h_n, c_n = unpack(a, list(EagerLayer.apply(*a)) if eager else fwd_op(*a))
        return y, h_n, c_n if lstm else c0

    layer.fwd_op = fwd_op
    layer.bwd_op = bwd_op
    return layer
