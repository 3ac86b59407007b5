"""Cell variants that torch.nn / cuDNN do not offer: options, validation, parameter layout.

``CellOptions`` is the single description of which variant a layer runs. The modules parse
their keyword arguments into it (:func:`parse`), the stack driver reads it, and the layer ops
take its fields as arguments. The math of every variant is in ``docs/variants.md``.

Parameter layout per layer ``k`` and direction (suffix ``_reverse`` for the backward one);
``G`` is the number of gate blocks (4 for LSTM, 3 for LSTM with ``cifg``, 3 for GRU),
``Hout`` is ``proj_size`` if set, else ``hidden_size``:

=============================  ===========  ======================================  ===========
name                           shape        when                                    init
=============================  ===========  ======================================  ===========
layer_norm_ih_weight_l{k}      [G*H]        layer_norm                              1
layer_norm_ih_bias_l{k}        [G*H]        layer_norm and bias                     0
layer_norm_hh_weight_l{k}      [G*H]        layer_norm                              1
layer_norm_hh_bias_l{k}        [G*H]        layer_norm and bias                     0
layer_norm_c_weight_l{k}       [H]          layer_norm, LSTM                        1
layer_norm_c_bias_l{k}         [H]          layer_norm, LSTM, bias                  0
weight_ch_l{k}                 [3, H]       peephole (rows i, f, o)                 U(±1/√H)
weight_ch_l{k}                 [2, H]       peephole and cifg (rows i, o)           U(±1/√H)
=============================  ===========  ======================================  ===========

They are registered after every torch.nn parameter, so the torch.nn keys keep their names and
order in ``state_dict``. With ``cifg`` the torch.nn weights themselves lose the forget rows:
``weight_ih_l{k}`` is [3H, I], ``weight_hh_l{k}`` [3H, Hout], biases [3H], rows i, g, o.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
from torch import Tensor

LN_EPS = 1e-5  # as torch.nn.LayerNorm's default


@dataclass(frozen=True)
class CellOptions:
    """Which variant a recurrent layer runs. All fields off is the plain torch.nn cell."""

    layer_norm: bool = False
    zoneout_h: float = 0.0
    zoneout_c: float = 0.0
    peephole: bool = False
    cifg: bool = False

    def __post_init__(self) -> None:
        for name in ("layer_norm", "peephole", "cifg"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")
        for name in ("zoneout_h", "zoneout_c"):
            _check_probability(name, getattr(self, name))

    @property
    def enabled(self) -> bool:
        """True when any variant is on (the layer then leaves the plain torch.nn path)."""
        return (
            self.layer_norm
            or self.zoneout_h > 0
            or self.zoneout_c > 0
            or self.peephole
            or self.cifg
        )

    def names(self) -> list[str]:
        """The options that are on, for messages (e.g. ``['layer_norm', 'zoneout']``)."""
        out = []
        if self.layer_norm:
            out.append("layer_norm")
        if self.zoneout_h > 0 or self.zoneout_c > 0:
            out.append("zoneout")
        if self.peephole:
            out.append("peephole")
        if self.cifg:
            out.append("cifg")
        return out

    def validate_for(self, mode: str) -> None:
        """Raise if the options make no sense for torch.nn mode ``mode`` ("LSTM", "GRU", ...)."""
        if mode == "LSTM":
            return
        if mode == "GRU":
            bad = [n for n in ("peephole", "cifg") if getattr(self, n)]
            if bad:
                raise ValueError(f"{bad[0]} is an LSTM-only option; GRU does not support it")
            if self.zoneout_c > 0:
                raise ValueError(
                    "zoneout of the cell state (zoneout=(p_h, p_c) with p_c > 0) needs an "
                    "LSTM; GRU has no cell state, pass zoneout=p_h"
                )
            return
        if self.enabled:
            raise ValueError(
                f"{', '.join(self.names())}: cell variants are supported for LSTM and GRU "
                f"only, not {_MODE_NAMES.get(mode, mode)}"
            )

    def gate_count(self, mode: str) -> int:
        """Gate blocks G in weight_ih / weight_hh ([G*H, ...])."""
        base = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}[mode]
        return 3 if (mode == "LSTM" and self.cifg) else base

    def param_specs(
        self, mode: str, hidden_size: int, bias: bool
    ) -> list[tuple[str, tuple[int, ...], str]]:
        """(stem, shape, init) of the extra parameters of one layer-direction, in
        registration order. ``init`` is "ones", "zeros" or "uniform" (U(±1/√H))."""
        h = hidden_size
        gh = self.gate_count(mode) * h
        specs: list[tuple[str, tuple[int, ...], str]] = []
        if self.layer_norm:
            for which, size in (("ih", gh), ("hh", gh)) + ((("c", h),) if mode == "LSTM" else ()):
                specs.append((f"layer_norm_{which}_weight", (size,), "ones"))
                if bias:
                    specs.append((f"layer_norm_{which}_bias", (size,), "zeros"))
        if self.peephole:
            specs.append(("weight_ch", (2 if self.cifg else 3, h), "uniform"))
        return specs

    def param_names(
        self, mode: str, hidden_size: int, bias: bool, num_layers: int, bidirectional: bool
    ) -> list[list[str]]:
        """Extra parameter names per layer-direction (index ``layer * D + direction``)."""
        stems = [s for s, _, _ in self.param_specs(mode, hidden_size, bias)]
        out = []
        for layer in range(num_layers):
            for direction in range(2 if bidirectional else 1):
                suffix = "_reverse" if direction == 1 else ""
                out.append([f"{stem}_l{layer}{suffix}" for stem in stems])
        return out


def _check_probability(name: str, p) -> None:
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p < 1:
        raise ValueError(
            f"{name} should be a probability in [0, 1) (the chance that a unit keeps its "
            f"previous value), got {p!r}"
        )


def parse(
    mode: str,
    layer_norm: bool = False,
    zoneout: float | tuple[float, float] = 0.0,
    peephole: bool = False,
    cifg: bool = False,
) -> CellOptions:
    """The module keyword arguments → validated :class:`CellOptions` for ``mode``.

    ``zoneout=p`` zones out h with probability p, and for LSTM c too; ``zoneout=(p_h, p_c)``
    sets them separately (GRU: p_c must be 0).
    """
    if isinstance(zoneout, (tuple, list)):
        if len(zoneout) != 2:
            raise ValueError(
                f"zoneout should be a probability p or a pair (p_h, p_c), got {zoneout!r}"
            )
        p_h, p_c = zoneout
    else:
        p_h = zoneout
        p_c = zoneout if mode == "LSTM" else 0.0
    _check_probability("zoneout", p_h)
    _check_probability("zoneout", p_c)
    options = CellOptions(
        layer_norm=layer_norm,
        zoneout_h=float(p_h),
        zoneout_c=float(p_c),
        peephole=peephole,
        cifg=cifg,
    )
    options.validate_for(mode)
    return options


def extra_repr(options: CellOptions) -> str:
    """The ``, layer_norm=True, zoneout=(0.1, 0.1)...`` tail of a module's repr."""
    s = ""
    if options.layer_norm:
        s += ", layer_norm=True"
    if options.zoneout_h > 0 or options.zoneout_c > 0:
        s += f", zoneout=({options.zoneout_h}, {options.zoneout_c})"
    if options.peephole:
        s += ", peephole=True"
    if options.cifg:
        s += ", cifg=True"
    return s


# -- module support (called from fusedrnn.modules; kept here so the module code stays small) --

_MODE_NAMES = {"LSTM": "LSTM", "GRU": "GRU", "RNN_TANH": "RNN", "RNN_RELU": "RNN"}


def register_parameters(module, factory_kwargs: dict) -> None:
    """Register ``module.cell_options``' extra parameters after the torch.nn ones and record
    their names per layer-direction in ``module._variant_names``."""
    options: CellOptions = module.cell_options
    specs = options.param_specs(module.mode, module.hidden_size, module.bias)
    names = options.param_names(
        module.mode, module.hidden_size, module.bias, module.num_layers, module.bidirectional
    )
    for group in names:
        for (_, shape, _), name in zip(specs, group, strict=True):
            module.register_parameter(
                name, torch.nn.Parameter(torch.empty(shape, **factory_kwargs))
            )
    module._variant_names = names


def reset_parameters(module) -> None:
    """Layer-norm gains to 1 and biases to 0; the peephole weights keep the U(±1/√H) that
    the torch.nn-style reset gave every parameter."""
    options: CellOptions = getattr(module, "cell_options", CellOptions())
    if not options.enabled:
        return
    specs = options.param_specs(module.mode, module.hidden_size, module.bias)
    with torch.no_grad():
        for group in getattr(module, "_variant_names", []):
            for (_, _, init), name in zip(specs, group, strict=True):
                if init == "ones":
                    getattr(module, name).fill_(1.0)
                elif init == "zeros":
                    getattr(module, name).zero_()


def layer_weights(module) -> list[dict[str, Tensor]]:
    """The extra parameters per layer-direction as {stem: tensor}, read at every call."""
    specs = module.cell_options.param_specs(module.mode, module.hidden_size, module.bias)
    return [
        {stem: getattr(module, name) for (stem, _, _), name in zip(specs, group, strict=True)}
        for group in module._variant_names
    ]


def draw_zoneout_masks(
    options: CellOptions,
    x: Tensor,  # [T, B, I] dense or [N, I] packed: masks take its leading shape
    hidden_out: int,  # Hout
    hidden_size: int,  # H
    num_groups: int,  # L * D
    training: bool,
) -> list[tuple[Tensor | None, Tensor | None]]:
    """(mask_h, mask_c) per layer-direction; 1 means "keep the previous value".

    Drawn up front from the global torch RNG, in the order layer, direction, h then c (a
    mask only when its p > 0 and training), so a call is reproducible under manual_seed."""
    out: list[tuple[Tensor | None, Tensor | None]] = []
    lead = tuple(x.shape[:-1])
    for _ in range(num_groups):
        mh = mc = None
        if training and options.zoneout_h > 0:
            mh = keep_mask(lead + (hidden_out,), options.zoneout_h, x)
        if training and options.zoneout_c > 0:
            mc = keep_mask(lead + (hidden_size,), options.zoneout_c, x)
        out.append((mh, mc))
    return out


def keep_mask(shape: tuple[int, ...], p: float, like: Tensor) -> Tensor:
    """A Bernoulli(p) mask of ``like``'s dtype and device, from the global torch RNG, drawn as
    ``uniform < p``: on the CPU half the time of ``bernoulli_(p)`` (1M floats: 3.0 against
    6.1 ms), which made up most of a zoneout layer's extra forward cost in training. Half
    precision compares a float32 draw, whose resolution keeps p exact to float32."""
    low = like.dtype in (torch.float16, torch.bfloat16)
    u = torch.rand(shape, dtype=torch.float32 if low else like.dtype, device=like.device)
    return u.lt_(p).to(like.dtype)


def layer_options(
    options: CellOptions,
    extra_weights: list[dict[str, Tensor]],  # per layer-direction, stems of param_specs
    x: Tensor,  # [T, B, I] dense or [N, I] packed
    hidden_out: int,  # Hout
    hidden_size: int,  # H
    training: bool,
) -> list[dict]:
    """The layer op's keyword-only variant options for each layer-direction, zoneout masks
    drawn (:func:`draw_zoneout_masks`)."""
    masks = draw_zoneout_masks(options, x, hidden_out, hidden_size, len(extra_weights), training)
    return [
        {
            "cifg": options.cifg,
            "ln_ih_w": e.get("layer_norm_ih_weight"),
            "ln_ih_b": e.get("layer_norm_ih_bias"),
            "ln_hh_w": e.get("layer_norm_hh_weight"),
            "ln_hh_b": e.get("layer_norm_hh_bias"),
            "ln_c_w": e.get("layer_norm_c_weight"),
            "ln_c_b": e.get("layer_norm_c_bias"),
            "w_ch": e.get("weight_ch"),
            "zoneout_h": options.zoneout_h,
            "zoneout_c": options.zoneout_c,
            "mask_h": mh,
            "mask_c": mc,
        }
        for e, (mh, mc) in zip(extra_weights, masks, strict=True)
    ]
