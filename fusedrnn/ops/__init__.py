"""Per-layer fused ops, one module per backend, each exposing the same function ``layer``: the
whole time loop of one layer in one direction, the *layer op contract* of ``CONTRACT.md``
(signature and argument shapes: :func:`fusedrnn.ops.reference.layer`).
"""
