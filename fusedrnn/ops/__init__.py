"""Per-layer fused ops, one module per backend.

Every backend module exposes the same function, the *layer op contract*::

    layer(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse, **options)
        -> (y, h_n, c_n)

which runs the whole time loop of one layer in one direction, the cell variants (layer
norm, zoneout, peephole, CIFG) being keyword-only options; see ``CONTRACT.md`` and
:func:`fusedrnn.ops.reference.layer` for the argument shapes. The result must
be differentiable with respect to ``x, h0, c0`` and every weight.
"""
