"""torch.library registration of a backend's layer op, so torch.compile traces it.

A backend that runs its own kernels (and has its own backward) registers two
custom ops in the ``fusedrnn`` namespace with :func:`define_layer_op`:

    fusedrnn::<backend>_layer_fwd(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                  batch_sizes, reverse) -> Tensor[] buffers
    fusedrnn::<backend>_layer_bwd(<the same inputs>, buffers, grads, needs)
                                  -> Tensor[8] grads of x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr

The forward returns *buffers* (whatever the backward needs: state histories,
saved gates, ...) rather than ``(y, h_n, c_n)``, because a custom op's outputs may
not alias each other; ``unpack`` turns the buffers into ``(y, h_n, c_n)`` with
views and indexing that Dynamo traces. ``register_fake`` gives both ops meta
shapes and ``register_autograd`` ties the backward op to the forward, so
``torch.compile(fullgraph=True)`` sees two opaque nodes and no graph break.
The backward op returns an empty placeholder for every gradient that is not
needed or whose input is None; the autograd glue maps those to None.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

NAMESPACE = "fusedrnn"
INPUT_NAMES = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr")

# forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse) -> buffers
ForwardFn = Callable[..., list[Tensor]]
# backward(cell, x, ..., reverse, buffers, grads, needs) -> 8 gradients (None allowed)
BackwardFn = Callable[..., Sequence[Tensor | None]]
# unpack(cell, x, h0, batch_sizes, reverse, buffers) -> (y, h_n, c_n or None)
UnpackFn = Callable[..., tuple[Tensor, Tensor, Tensor | None]]


def differentiable_backward(
    reference: Callable[..., tuple[Tensor, Tensor, Tensor | None]],
    args: Sequence,
    kwargs: dict,
    inputs: Sequence[Tensor | None],
    needs: Sequence[bool],
    grads: Sequence[Tensor | None],
) -> list[Tensor | None]:
    """The gradients of ``inputs`` as a graph autograd can differentiate again: the backward
    of a fused op is itself an opaque kernel, so under ``create_graph=True`` the forward is
    recomputed with ``reference(*args, **kwargs)`` (same contract, plain PyTorch) and
    differentiated by autograd. ``grads`` are those of (y, h_n, c_n); None means zero."""
    wanted = [t for t, n in zip(inputs, needs, strict=True) if n and t is not None]
    result: list[Tensor | None] = [None] * len(inputs)
    if not wanted:
        return result
    outs = reference(*args, **kwargs)
    pairs = [
        (o, g) for o, g in zip(outs, grads, strict=False)
        if o is not None and g is not None and o.requires_grad
    ]  # fmt: skip
    if not pairs:
        return result
    computed = iter(
        torch.autograd.grad(
            [o for o, _ in pairs],
            wanted,
            [g for _, g in pairs],
            create_graph=True,
            allow_unused=True,
            materialize_grads=True,
        )
    )
    for k, (t, n) in enumerate(zip(inputs, needs, strict=True)):
        if n and t is not None:
            result[k] = next(computed)
    return result


DOUBLE_BACKWARD_BACKENDS = ("cpu", "reference")


def refuse_double_backward(backend: str) -> None:
    """Call first in an op's backward whose gradients are computed by opaque kernels only:
    under ``create_graph=True`` (grad mode on inside the backward) they would silently have
    no graph, or fail deep inside autograd."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"fusedrnn {backend} backend: double backward (create_graph=True) is not "
            f"supported; the {' and '.join(DOUBLE_BACKWARD_BACKENDS)} backends support it"
        )


def define_layer_op(
    backend: str,
    forward: ForwardFn,
    fake_forward: ForwardFn,
    backward: BackwardFn,
    unpack: UnpackFn,
) -> Callable[..., tuple[Tensor, Tensor, Tensor | None]]:
    """Register ``fusedrnn::<backend>_layer_fwd/_bwd`` and return a ``layer``
    function with the layer-op contract signature that calls them."""
    fwd_name = f"{NAMESPACE}::{backend}_layer_fwd"
    bwd_name = f"{NAMESPACE}::{backend}_layer_bwd"

    @torch.library.custom_op(fwd_name, mutates_args=())
    def layer_fwd(
        cell: str,
        x: Tensor,
        h0: Tensor,
        c0: Tensor | None,
        w_ih: Tensor,
        w_hh: Tensor,
        b_ih: Tensor | None,
        b_hh: Tensor | None,
        w_hr: Tensor | None,
        batch_sizes: Tensor | None,
        reverse: bool,
    ) -> list[Tensor]:
        return forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse)

    layer_fwd.register_fake(fake_forward)

    @torch.library.custom_op(bwd_name, mutates_args=())
    def layer_bwd(
        cell: str,
        x: Tensor,
        h0: Tensor,
        c0: Tensor | None,
        w_ih: Tensor,
        w_hh: Tensor,
        b_ih: Tensor | None,
        b_hh: Tensor | None,
        w_hr: Tensor | None,
        batch_sizes: Tensor | None,
        reverse: bool,
        buffers: list[Tensor],
        grads: list[Tensor | None],
        needs: list[bool],
    ) -> list[Tensor]:
        inputs = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
        out = backward(
            cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse,
            buffers, grads, needs,
        )  # fmt: skip
        return [
            g if g is not None and n and t is not None else x.new_empty(0)
            for g, n, t in zip(out, needs, inputs, strict=True)
        ]

    @layer_bwd.register_fake
    def _(
        cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse, buffers, grads, needs
    ):
        inputs = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
        # the real gradients are fresh contiguous tensors whatever the inputs' strides (a
        # batch_first x is a transposed view): empty_like would copy the input's strides
        return [
            t.new_empty(t.shape) if n and t is not None else x.new_empty(0)
            for n, t in zip(needs, inputs, strict=True)
        ]

    def setup_context(ctx, inputs, output) -> None:
        ctx.cell, ctx.reverse = inputs[0], inputs[10]
        ctx.present = [t is not None for t in (*inputs[1:9],)]
        ctx.save_for_backward(*inputs[1:10], *output)

    def backward_rule(ctx, grads):
        saved = ctx.saved_tensors
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes = saved[:9]
        buffers = list(saved[9:])
        # the inputs of the op: positions 1..8 are the differentiable tensors
        needs = [bool(n) and p for n, p in zip(ctx.needs_input_grad[1:9], ctx.present, strict=True)]
        refuse_double_backward(backend)
        out = layer_bwd(
            ctx.cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, ctx.reverse,
            buffers, list(grads), needs,
        )  # fmt: skip
        result = [g if n else None for g, n in zip(out, needs, strict=True)]
        return (None, *result, None, None)

    layer_fwd.register_autograd(backward_rule, setup_context=setup_context)

    def layer(
        cell: str,
        x: Tensor,  # [T, B, I] dense or [N, I] packed
        h0: Tensor,  # [B, Hout]
        c0: Tensor | None,  # [B, H]
        w_ih: Tensor,  # [G*H, I]
        w_hh: Tensor,  # [G*H, Hout]
        b_ih: Tensor | None,  # [G*H]
        b_hh: Tensor | None,  # [G*H]
        w_hr: Tensor | None,  # [Hout, H]
        batch_sizes: Tensor | None,  # [T] int64 on the CPU
        reverse: bool,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        buffers = layer_fwd(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse)
        return unpack(cell, x, h0, batch_sizes, reverse, buffers)

    layer.fwd_op = layer_fwd
    layer.bwd_op = layer_bwd
    return layer


LayerFn = Callable[..., tuple[Tensor, Tensor, Tensor | None]]


def with_variants(plain: Callable[[], LayerFn], variant: Callable[[], LayerFn]) -> LayerFn:
    """A backend's one layer op (signature of :func:`fusedrnn.ops.reference.layer`) over its
    two kernel families: ``plain()`` runs torch.nn's cells, ``variant()`` a call with any
    variant option on. Both are looked up at call time, so kernels load only when used."""
    from .checks import variants_on

    def layer(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse, **options):
        args = (cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse)
        if variants_on(**options):
            return variant()(*args, **options)
        return plain()(*args)

    return layer
