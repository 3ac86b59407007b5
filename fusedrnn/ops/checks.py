"""The cell table and the argument checks every backend's layer op makes first.

One place for what a layer op accepts: the cells and their gate counts, which cells take the
variant options, and the messages for option combinations that make no sense. Backends add
only the checks that guard their own raw pointers (C++ and CUDA) or kernels. The options
themselves (names, types, defaults) are rows of :data:`fusedrnn.ops.library.LAYER_ARGS`.
"""

from __future__ import annotations

import torch

from .library import (
    BOOL_OPTION_CELLS,
    BOOL_OPTIONS,
    N_POSITIONAL,
    OPTION_TENSORS,
    LayerArgs,
    is_variant,
)

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
VARIANT_CELLS = ("lstm", "gru")  # the cells that take the variant options
# the cells that take each bool option: those of library.BOOL_OPTION_CELLS, else every variant cell
OPTION_CELLS = {name: BOOL_OPTION_CELLS.get(name, VARIANT_CELLS) for name in BOOL_OPTIONS}


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a layer op accumulates, keeps its cell state and saves its gates in for inputs
    of ``dtype``: float64 stays float64, the rest use float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def gate_count(cell: str, cifg: bool = False) -> int:
    """Gate blocks G of ``w_ih`` / ``w_hh`` ([G*H, ...]); CIFG drops the LSTM's forget block."""
    return 3 if (cell == "lstm" and cifg) else GATES[cell]


def check_cell(cell: str) -> None:
    if cell not in CELLS:
        raise ValueError(f"unknown cell {cell!r}; expected one of {CELLS}")


def layer_dims(a: LayerArgs) -> tuple[int, int, int, int, int]:
    """``(T, N, B, Hout, H)`` of a call: steps, rows of x (``T*B`` dense), batch, the widths of
    h and c (for the fake forwards: nothing is checked)."""
    packed, (B, Hout) = a.batch_sizes is not None, a.h0.shape
    T = a.batch_sizes.shape[0] if packed else a.x.shape[0]
    N = a.x.shape[0] if packed else T * a.x.shape[1]
    return T, N, B, Hout, a.w_hh.shape[0] // gate_count(a.cell, a.cifg)


def check_cell_and_options(a: LayerArgs) -> None:
    """The first checks of every layer op call, with the same messages on every backend: the
    cell, and when the options ask for a variant, which combinations make sense."""
    cell, w_ih, w_hh, cifg, ln_c_w, w_ch = a.cell, a.w_ih, a.w_hh, a.cifg, a.ln_c_w, a.w_ch
    if not is_variant(a):
        return check_cell(cell)
    if cell not in VARIANT_CELLS:
        raise ValueError(f"cell variants exist for {VARIANT_CELLS}, got {cell!r}")
    for name, cells in OPTION_CELLS.items():
        if getattr(a, name) and cell not in cells:
            raise ValueError(f"{name} is {' / '.join(c.upper() for c in cells)}-only")
    is_lstm = cell == "lstm"
    if not is_lstm and (w_ch is not None or ln_c_w is not None or a.mask_c is not None):
        raise ValueError("peephole, layer norm of c and zoneout of c are LSTM-only")
    if not is_lstm and a.zoneout_c > 0:
        raise ValueError("zoneout_c needs an LSTM; GRU has no cell state")
    ln_given = [t is not None for t in (a.ln_ih_w, a.ln_hh_w, *([ln_c_w] if is_lstm else []))]
    if any(ln_given) and not all(ln_given):
        raise ValueError("layer norm needs ln_ih_w, ln_hh_w (and ln_c_w for LSTM) together")
    gates = gate_count(cell, cifg)
    hidden = w_hh.shape[0] // gates
    if w_hh.shape[0] != gates * hidden or w_ih.shape[0] != gates * hidden:
        raise ValueError(
            f"{cell}{' with cifg' if cifg else ''} expects {gates} gate blocks: w_ih / w_hh "
            f"of {gates}*H rows, got {tuple(w_ih.shape)} and {tuple(w_hh.shape)}"
        )
    if w_ch is not None and tuple(w_ch.shape) != ((2 if cifg else 3), hidden):
        raise ValueError(
            f"peephole weights must be [{2 if cifg else 3}, {hidden}], got {tuple(w_ch.shape)}"
        )


def check_layer(
    backend: str,
    dtypes: tuple,  # the dtypes the backend's kernels take
    a: LayerArgs,
    *,
    device_type: str | None = None,  # the device type the kernels need, if only one
    proj_below_hidden: bool = False,  # kernels that need proj_size < H, as torch.nn asks
    both_biases: bool = False,  # kernels that take both biases or none
) -> int:
    """Every argument check of a layer op call whose kernels index raw memory (the GPU
    backends; the C++ extension repeats the few that guard its own pointers), with one set of
    messages: the cell and options first (:func:`check_cell_and_options`), then dtype, device
    and every shape (fusedrnn/ops/CONTRACT.md). Returns H."""
    check_cell_and_options(a)
    cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes = a[: N_POSITIONAL - 1]
    is_lstm = cell == "lstm"
    named = dict(x=x, h0=h0, c0=c0 if is_lstm else None, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih,
                 b_hh=b_hh, w_hr=w_hr, **{k: getattr(a, k) for k in OPTION_TENSORS})  # fmt: skip
    tensors = {name: t for name, t in named.items() if t is not None}
    if device_type is not None:
        for name, t in tensors.items():
            if t.device.type != device_type:
                raise ValueError(
                    f"the {backend} backend needs {device_type} tensors, got {name} on {t.device}"
                )
    if x.dtype not in dtypes:
        raise TypeError(f"the {backend} backend supports {dtypes}, got {x.dtype}")
    for name, t in tensors.items():
        if t.dtype != x.dtype:
            raise TypeError(
                f"{name} is {t.dtype} but x is {x.dtype}: all inputs, weights and masks must "
                "share one dtype"
            )
        if t.device != x.device:
            raise ValueError(
                f"{name} is on {t.device} but x is on {x.device}: all inputs, weights and "
                "masks must be on one device"
            )
    if is_lstm and c0 is None:
        raise ValueError("c0 must be given for the LSTM")
    if w_hr is not None and not is_lstm:
        raise ValueError(f"{cell} has no projection (w_hr must be None)")
    packed = batch_sizes is not None
    if x.dim() != (2 if packed else 3):
        raise ValueError(
            f"x has shape {tuple(x.shape)}, expected {'[N, I] packed' if packed else '[T, B, I]'}"
        )
    for name in ("h0", "w_ih", "w_hh"):
        if named[name].dim() != 2:
            raise ValueError(f"{name} has shape {tuple(named[name].shape)}, expected 2 dims")
    gates = gate_count(cell, a.cifg)
    gh, hout = w_hh.shape
    hidden = gh // gates
    if gh != gates * hidden or hidden == 0:
        raise ValueError(f"w_hh has shape {tuple(w_hh.shape)}, expected [{gates}*H, Hout]")
    batch = h0.shape[0]
    lead = (x.shape[0],) if packed else (x.shape[0], batch)
    want = dict(
        h0=(batch, hout), c0=(batch, hidden), w_ih=(gh, x.shape[-1]), b_ih=(gh,), b_hh=(gh,),
        w_hr=(hout, hidden), ln_ih_w=(gh,), ln_ih_b=(gh,), ln_hh_w=(gh,), ln_hh_b=(gh,),
        ln_c_w=(hidden,), ln_c_b=(hidden,), mask_h=(*lead, hout), mask_c=(*lead, hidden),
    )  # fmt: skip
    for name, shape in want.items():
        t = tensors.get(name)
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape}")
    if w_hr is None and hout != hidden:
        raise ValueError(
            f"w_hh has shape {tuple(w_hh.shape)}, expected {(gh, hidden)} without w_hr"
        )
    if proj_below_hidden and w_hr is not None and hout >= hidden:
        raise ValueError(
            f"w_hr has shape {tuple(w_hr.shape)}, expected [proj_size < {hidden}, {hidden}]"
        )
    if both_biases and (b_ih is None) != (b_hh is None):
        raise ValueError("give both biases or none")
    if a.ln_ih_w is None and any(t is not None for t in (a.ln_ih_b, a.ln_hh_b, a.ln_c_b)):
        raise ValueError("layer-norm biases need the layer-norm gains")
    for name in ("zoneout_h", "zoneout_c"):
        if not 0 <= getattr(a, name) < 1:
            raise ValueError(f"{name} must lie in [0, 1), got {getattr(a, name)}")
    if packed:
        if batch_sizes.dim() != 1 or batch_sizes.device.type != "cpu":
            raise ValueError("batch_sizes must be a 1-D CPU tensor")
        sizes = batch_sizes.tolist()
        if sizes and (sizes[0] > batch or min(sizes) < 1 or sizes != sorted(sizes, reverse=True)):
            raise ValueError(f"batch_sizes must be non-increasing within [1, {batch}]")
        if sum(sizes) != x.shape[0]:
            raise ValueError(f"batch_sizes sum to {sum(sizes)} but x has {x.shape[0]} rows")
    return hidden
