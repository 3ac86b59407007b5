"""Drop-in replacements for torch.nn.LSTM / GRU / RNN and their cells.

Constructor arguments (and their positional order), parameter names, shapes,
registration order, initialisation, gate order, outputs and error messages
follow torch.nn, so a ``state_dict`` moves between the two in both directions
with no converter. The one addition is the keyword-only ``backend=``.

Design decision: the classes subclass :class:`torch.nn.Module`, not
``torch.nn.RNNBase``. ``isinstance(m, torch.nn.LSTM)`` is therefore False, but
TorchDynamo graph-breaks on every ``nn.RNNBase`` subclass, and staying outside
that hierarchy is what keeps ``torch.compile(fullgraph=True)`` possible.

Weights are read with ``getattr`` at every call (no cached flat list), so
``optimizer.step()``, ``load_state_dict``, ``.to()``, reassigning a weight,
``torch.func.functional_call`` and parametrizations are always seen.
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch
from torch import Tensor, nn
from torch.nn import init
from torch.nn.utils.rnn import PackedSequence

from . import backends
from . import variants as _variants
from .functional import MODES, cell_step, rnn_stack


def _apply_permutation(tensor: Tensor, permutation: Tensor, dim: int = 1) -> Tensor:
    return tensor.index_select(dim, permutation)


def _promote_cell_state(c: Tensor, dtype: torch.dtype) -> Tensor:
    """torch.nn uses c only elementwise, so a c of a narrower dtype is promoted, exactly;
    doing that up front keeps mixed dtypes away from the backends."""
    if c.dtype != dtype and torch.promote_types(c.dtype, dtype) == dtype:
        return c.to(dtype)
    return c


_NO_TORCHSCRIPT = (
    "TorchScript (torch.jit.script / torch.jit.trace) is not supported by fusedrnn modules: "
    "their kernels are custom ops that TorchScript cannot compile or trace faithfully. Use "
    "torch.compile, or torch.export for deployment."
)


def _refuse_torchscript(*_args) -> None:
    raise RuntimeError(_NO_TORCHSCRIPT)


def _refuse_jit_trace() -> None:
    if torch.jit.is_tracing():
        raise RuntimeError(_NO_TORCHSCRIPT)


def _check_devices(input: Tensor, hidden: tuple[Tensor, ...], params: list[Tensor]) -> None:
    """torch.nn's RNN device checks, with its messages: a state or a weight on another device
    (meta included) would otherwise be read as if it lived on the input's."""
    for h in hidden:
        if h.device != input.device:
            raise RuntimeError(
                "Input and hidden tensors are not at the same device, found input tensor at "
                f"{input.device} and hidden tensor at {h.device}"
            )
    for p in params:
        if p.device != input.device:
            raise RuntimeError(
                "Input and parameter tensors are not at the same device, found input tensor at "
                f"{input.device} and parameter tensor at {p.device}"
            )


def _check_state_dims(hx, is_lstm: bool, is_batched: bool) -> None:
    """torch.nn's check, with its messages, that the states are batched as the input is."""
    want = 3 if is_batched else 2
    given = f"For {'batched 3-D' if is_batched else 'unbatched 2-D'} input"
    if is_lstm:
        if hx[0].dim() != want or hx[1].dim() != want:
            raise RuntimeError(
                f"{given}, hx and cx should also be {want}-D but got "
                f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
            )
    elif hx.dim() != want:
        raise RuntimeError(f"{given}, hx should also be {want}-D but got {hx.dim()}-D tensor")


def _check_backend(backend: str | None) -> None:
    if backend is not None and backend not in backends.BACKENDS:
        raise ValueError(f"unknown fusedrnn backend {backend!r}; choose from {backends.BACKENDS}")


def _extra_repr(module: nn.Module, shown: dict[str, bool]) -> str:
    """torch.nn's extra_repr: the sizes, then the fields whose ``shown`` is true (those off
    their defaults), then the fusedrnn backend when one is pinned."""
    s = "{input_size}, {hidden_size}" + "".join(f", {k}={{{k}}}" for k, on in shown.items() if on)
    if module.backend is not None:
        s += ", backend={backend!r}"
    return s.format(**module.__dict__)


def _check_seq_len(input: Tensor, batch_sizes: Tensor | None, batch_first: bool) -> None:
    seq_len = batch_sizes.numel() if batch_sizes is not None else input.size(int(batch_first))
    if seq_len == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")


class RNNBase(nn.Module):
    """Shared machinery of LSTM, GRU and RNN (mirrors ``torch.nn.RNNBase``)."""

    mode: str
    # torch.jit.script calls this on every submodule before compiling anything
    __prepare_scriptable__ = _refuse_torchscript

    def __init__(
        self,
        mode: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        *,
        backend: str | None = None,
        layer_norm: bool = False,
        zoneout: float | tuple[float, float] = 0.0,
        peephole: bool = False,
        cifg: bool = False,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self.backend = backend
        num_directions = 2 if bidirectional else 1

        if (
            not isinstance(dropout, numbers.Number)
            or not 0 <= dropout <= 1
            or isinstance(dropout, bool)
        ):
            raise ValueError(
                "dropout should be a number in range [0, 1] representing the "
                "probability of an element being zeroed"
            )
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout option adds dropout after all but last recurrent layer, so "
                "non-zero dropout expects num_layers greater than 1, but got "
                f"dropout={dropout} and num_layers={num_layers}",
                stacklevel=3,
            )
        if not isinstance(bias, bool):
            raise TypeError(f"bias should be of type bool, got: {type(bias).__name__}")
        if not isinstance(batch_first, bool):
            raise TypeError(
                f"batch_first should be of type bool, got: {type(batch_first).__name__}"
            )
        if not isinstance(input_size, int):
            raise TypeError(f"input_size should be of type int, got: {type(input_size).__name__}")
        if input_size <= 0:
            raise ValueError("input_size must be greater than zero")
        if not isinstance(hidden_size, int):
            raise TypeError(f"hidden_size should be of type int, got: {type(hidden_size).__name__}")
        if hidden_size <= 0:
            raise ValueError("hidden_size must be greater than zero")
        if num_layers <= 0:
            raise ValueError("num_layers must be greater than zero")
        if proj_size < 0:
            raise ValueError(
                "proj_size should be a positive integer or zero to disable projections"
            )
        if proj_size >= hidden_size:
            raise ValueError("proj_size has to be smaller than hidden_size")
        if mode not in MODES:
            raise ValueError("Unrecognized RNN mode: " + mode)
        _check_backend(backend)

        # cell variants (fusedrnn.variants); all off is exactly the torch.nn layer
        self.cell_options = _variants.parse(mode, layer_norm, zoneout, peephole, cifg)
        gate_size = self.cell_options.gate_count(mode) * hidden_size
        real_hidden_size = proj_size if proj_size > 0 else hidden_size
        self._flat_weights_names: list[str] = []
        self._all_weights: list[list[str]] = []
        for layer in range(num_layers):
            for direction in range(num_directions):
                layer_input_size = input_size if layer == 0 else real_hidden_size * num_directions
                suffix = "_reverse" if direction == 1 else ""
                shapes = [
                    ("weight_ih", (gate_size, layer_input_size)),
                    ("weight_hh", (gate_size, real_hidden_size)),
                ]
                if bias:
                    shapes += [("bias_ih", (gate_size,)), ("bias_hh", (gate_size,))]
                if proj_size > 0:
                    shapes += [("weight_hr", (proj_size, hidden_size))]
                names = []
                for stem, shape in shapes:
                    name = f"{stem}_l{layer}{suffix}"
                    self.register_parameter(
                        name, nn.Parameter(torch.empty(shape, **factory_kwargs))
                    )
                    names.append(name)
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)
        _variants.register_parameters(self, factory_kwargs)
        self.reset_parameters()

    # -- torch.nn.RNNBase compatibility -------------------------------------------------

    @property
    def _flat_weights(self) -> list[Tensor]:
        # Looked up at every access: never stale (functional_call, parametrizations, ...).
        # Straight from _parameters where the weight lives there (nn.Module.__getattr__ is a
        # Python call per weight, a large share of a single-step call); getattr otherwise
        # (a parametrized weight is a property of the class, its original moved away).
        params = self._parameters
        return [
            params[name] if name in params else getattr(self, name)
            for name in self._flat_weights_names
        ]

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def flatten_parameters(self) -> None:
        """No-op, kept for compatibility: fusedrnn reads the weights where they are."""

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            init.uniform_(weight, -stdv, stdv)
        _variants.reset_parameters(self)

    def extra_repr(self) -> str:
        shown = {
            "proj_size": self.proj_size != 0,
            "num_layers": self.num_layers != 1,
            "bias": self.bias is not True,
            "batch_first": self.batch_first is not False,
            "dropout": self.dropout != 0,
            "bidirectional": self.bidirectional is not False,
        }
        return _extra_repr(self, shown) + _variants.extra_repr(self.cell_options)

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("backend", None)
        self.__dict__.setdefault("cell_options", _variants.CellOptions())
        self.__dict__.setdefault("_variant_names", [])

    def check_input(self, input: Tensor, batch_sizes: Tensor | None) -> None:
        weight_dtype = getattr(self, self._flat_weights_names[0]).dtype
        if input.dtype != weight_dtype and not torch._C._is_any_autocast_enabled():
            raise ValueError(
                f"RNN input dtype ({input.dtype}) does not match weight dtype "
                f"({weight_dtype}). Convert input: input.to({weight_dtype}), "
                f"or convert model: model.to({input.dtype})"
            )
        expected_input_dim = 2 if batch_sizes is not None else 3
        if input.dim() != expected_input_dim:
            raise RuntimeError(
                f"input must have {expected_input_dim} dimensions, got {input.dim()}"
            )
        if self.input_size != input.size(-1):
            raise RuntimeError(
                "input.size(-1) must be equal to input_size. "
                f"Expected {self.input_size}, got {input.size(-1)}"
            )

    def _mini_batch(self, input: Tensor, batch_sizes: Tensor | None) -> int:
        if batch_sizes is not None:
            return int(batch_sizes[0])
        return input.size(0) if self.batch_first else input.size(1)

    def get_expected_hidden_size(
        self, input: Tensor, batch_sizes: Tensor | None
    ) -> tuple[int, int, int]:
        num_directions = 2 if self.bidirectional else 1
        real_hidden_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        return (
            self.num_layers * num_directions,
            self._mini_batch(input, batch_sizes),
            real_hidden_size,
        )

    def check_hidden_size(
        self,
        hx: Tensor,
        expected_hidden_size: tuple[int, int, int],
        msg: str = "Expected hidden size {}, got {}",
    ) -> None:
        if hx.size() != expected_hidden_size:
            raise RuntimeError(msg.format(expected_hidden_size, list(hx.size())))

    def check_forward_args(self, input: Tensor, hidden: Tensor, batch_sizes: Tensor | None):
        self.check_input(input, batch_sizes)
        self.check_hidden_size(hidden, self.get_expected_hidden_size(input, batch_sizes))
        _check_devices(input, (hidden,), self._flat_weights)

    def permute_hidden(self, hx: Tensor, permutation: Tensor | None) -> Tensor:
        if permutation is None:
            return hx
        return _apply_permutation(hx, permutation)

    # -- the shared forward ---------------------------------------------------------------

    def _run(
        self,
        input: Tensor,  # [T, B, I] (batch_first already undone) or packed data [N, I]
        hx: Tensor,  # [L*D, B, Hout]
        cx: Tensor | None,  # [L*D, B, H]
        batch_sizes: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        _refuse_jit_trace()
        name = backends.resolve(self.backend, input.device.type)
        return rnn_stack(
            backends.get(name),
            MODES[self.mode],
            input,
            hx,
            cx,
            self._flat_weights,
            self.num_layers,
            self.bidirectional,
            self.bias,
            self.proj_size,
            self.dropout,
            self.training,
            batch_sizes,
            self.cell_options,
            _variants.layer_weights(self) if self.cell_options.enabled else None,
        )

    def _one_step(self, input, hx, is_lstm: bool):
        """A sampling loop's call, straight to the cpu backend's ``stack_step``, or None.

        Taken only when the call is one rnn_stack would hand to ``stack_step`` anyway: no
        autograd, autocast, tracing, compiling or functorch, plain cells in one direction
        without dropout, the cpu backend, a batched input, and tensors that ``stack_step``
        finds fit (one step, feature sizes, one float32 / float64 dtype, CPU, state shapes; it
        answers None otherwise, in C++, where the comparisons cost nanoseconds). Any other call
        returns None and takes the general path with its checks and messages. (At B=1, H=512,
        2 layers each microsecond here is 2 % of an RNN step.)
        """
        if (
            not _shortcut_call(input, 3, self.backend)  # 2-D is unbatched [T, I] here
            or self.bidirectional
            or self.cell_options.enabled
            or (self.dropout > 0 and self.training and self.num_layers > 1)
        ):
            return None
        states = _shortcut_states(hx, is_lstm)
        if states is None:
            return None
        h, c = states
        out = backends.get("cpu").stack_step(
            MODES[self.mode], input, h, c, self._flat_weights, self.num_layers, self.bias,
            self.proj_size, self.batch_first, fallback=True,
        )  # fmt: skip
        if out is None:
            return None
        output, h_n, c_n = out
        return (output, (h_n, c_n)) if is_lstm else (output, h_n)

    def _unpack_input(self, input, hx, is_lstm: bool):
        """torch.nn's input handling: PackedSequence, unbatched 2-D, batch_first.

        Returns (input [T,B,I] or packed data, hx, batch_sizes, sorted_indices,
        unsorted_indices, is_batched)."""
        if isinstance(input, PackedSequence):
            data, batch_sizes, sorted_indices, unsorted_indices = input
            return data, hx, batch_sizes, sorted_indices, unsorted_indices, True
        if input.dim() not in (2, 3):
            prefix = "RNN" if self.mode.startswith("RNN") else self.mode
            tail = " tensor instead" if prefix == "RNN" else " instead"
            raise ValueError(f"{prefix}: Expected input to be 2D or 3D, got {input.dim()}D{tail}")
        is_batched = input.dim() == 3
        if hx is not None:
            _check_state_dims(hx, is_lstm, is_batched)
        if not is_batched:
            input = input.unsqueeze(0 if self.batch_first else 1)
            if hx is not None:
                hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1)) if is_lstm else hx.unsqueeze(1)
        return input, hx, None, None, None, is_batched

    def _time_major(self, input: Tensor, batch_sizes: Tensor | None) -> Tensor:
        if batch_sizes is None and self.batch_first:
            return input.transpose(0, 1)
        return input

    def _output(self, output, batch_sizes, sorted_indices, unsorted_indices, is_batched):
        if batch_sizes is not None:
            return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
        if self.batch_first:
            output = output.transpose(0, 1)
        if not is_batched:
            output = output.squeeze(0 if self.batch_first else 1)
        return output


class RNN(RNNBase):
    """Drop-in ``torch.nn.RNN`` (Elman RNN, tanh or relu) with fused kernels."""

    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if len(args) > 3:
            self.nonlinearity = args[3]
            args = args[:3] + args[4:]
        else:
            self.nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if self.nonlinearity == "tanh":
            mode = "RNN_TANH"
        elif self.nonlinearity == "relu":
            mode = "RNN_RELU"
        else:
            raise ValueError(
                f"Unknown nonlinearity '{self.nonlinearity}'. Select from 'tanh' or 'relu'."
            )
        super().__init__(mode, *args, **kwargs)

    def forward(self, input, hx: Tensor | None = None):
        return _forward_single_state(self, input, hx)


class GRU(RNNBase):
    """Drop-in ``torch.nn.GRU`` with fused kernels (gate rows r, z, n).

    Keyword-only variants (off by default; see ``docs/variants.md``): ``layer_norm=True``
    normalises the input and recurrent projections (parameters ``layer_norm_{ih,hh}_
    {weight,bias}_l{k}``, registered after the torch.nn ones); ``zoneout=p`` keeps each unit
    of h at its previous value with probability p in training (its expectation in eval).
    With a variant on, the layer runs the variant op of its backend (reference, cpu, triton
    and cuda each have one).
    """

    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, **kwargs)

    def forward(self, input, hx: Tensor | None = None):
        return _forward_single_state(self, input, hx)


def _shortcut_call(input, dim: int, backend: str | None) -> bool:
    """Whether a call may go straight to the cpu backend's ``stack_step`` as far as the input,
    the global modes and the backend tell: a plain ``dim``-D tensor, nothing recording
    autograd, no autocast, tracing, compiling or functorch, the cpu backend."""
    return not (
        type(input) is not Tensor
        or input.dim() != dim
        or torch.is_grad_enabled()
        or torch._C._is_any_autocast_enabled()
        or torch.jit.is_tracing()
        or torch.compiler.is_compiling()
        or torch._C._are_functorch_transforms_active()
        or backends.resolve(backend, "cpu") != "cpu"
    )


def _shortcut_states(hx, is_lstm: bool) -> tuple[Tensor | None, Tensor | None] | None:
    """(h, c) of a shortcut call (absent: None, None), or None where the states are not plain
    tensors (a tuple of two for an LSTM): the general path then says what is wrong."""
    if hx is None:
        return None, None
    if not is_lstm:
        return (hx, None) if type(hx) is Tensor else None
    if type(hx) is not tuple or len(hx) != 2:
        return None
    return hx if type(hx[0]) is Tensor and type(hx[1]) is Tensor else None


def _forward_single_state(self: RNNBase, input, hx):
    """GRU / RNN forward: one state tensor."""
    fast = self._one_step(input, hx, is_lstm=False)
    if fast is not None:
        return fast
    orig_is_packed = isinstance(input, PackedSequence)
    input, hx, batch_sizes, sorted_indices, unsorted_indices, is_batched = self._unpack_input(
        input, hx, is_lstm=False
    )
    num_directions = 2 if self.bidirectional else 1
    if hx is None:
        hx = torch.zeros(
            self.num_layers * num_directions,
            self._mini_batch(input, batch_sizes),
            self.hidden_size,
            dtype=input.dtype,
            device=input.device,
        )
    else:
        hx = self.permute_hidden(hx, sorted_indices)
    self.check_forward_args(input, hx, batch_sizes)
    _check_seq_len(input, batch_sizes, self.batch_first)
    input = self._time_major(input, batch_sizes)
    output, h_n, _ = self._run(input, hx, None, batch_sizes)
    output = self._output(output, batch_sizes, sorted_indices, unsorted_indices, is_batched)
    if not orig_is_packed and not is_batched:
        h_n = h_n.squeeze(1)
    return output, self.permute_hidden(h_n, unsorted_indices)


class LSTM(RNNBase):
    """Drop-in ``torch.nn.LSTM`` with fused kernels (gate rows i, f, g, o).

    Keyword-only variants (off by default; see ``docs/variants.md``):

    - ``layer_norm=True``: LN of the input and recurrent projections and of c_t in
      h_t = o * tanh(LN(c_t)); parameters ``layer_norm_{ih,hh,c}_{weight,bias}_l{k}``.
    - ``zoneout=p`` or ``(p_h, p_c)``: in training each unit of h (of c) keeps its previous
      value with probability p_h (p_c); in eval the expectation is used.
    - ``peephole=True``: i and f see c_{t-1}, o sees c_t through ``weight_ch_l{k}`` [3, H].
    - ``cifg=True``: f = 1 - i; the forget rows are gone, so ``weight_ih_l{k}`` is [3H, I],
      ``weight_hh_l{k}`` [3H, Hout] and the biases [3H] (rows i, g, o). Such a state_dict
      does not load into torch.nn.LSTM.

    The extra parameters are registered after the torch.nn ones: the torch.nn keys and their
    order are unchanged (cifg aside). With a variant on, the layer runs the variant op of its
    backend (reference, cpu, triton and cuda each have one).
    """

    def __init__(self, *args, **kwargs):
        super().__init__("LSTM", *args, **kwargs)

    def get_expected_cell_size(
        self, input: Tensor, batch_sizes: Tensor | None
    ) -> tuple[int, int, int]:
        layers, mini_batch, _ = self.get_expected_hidden_size(input, batch_sizes)
        return (layers, mini_batch, self.hidden_size)

    def check_forward_args(self, input, hidden, batch_sizes):  # type: ignore[override]
        self.check_input(input, batch_sizes)
        self.check_hidden_size(
            hidden[0],
            self.get_expected_hidden_size(input, batch_sizes),
            "Expected hidden[0] size {}, got {}",
        )
        self.check_hidden_size(
            hidden[1],
            self.get_expected_cell_size(input, batch_sizes),
            "Expected hidden[1] size {}, got {}",
        )
        _check_devices(input, tuple(hidden), self._flat_weights)

    def permute_hidden(self, hx, permutation):  # type: ignore[override]
        if permutation is None:
            return hx
        return _apply_permutation(hx[0], permutation), _apply_permutation(hx[1], permutation)

    def forward(self, input, hx: tuple[Tensor, Tensor] | None = None):
        fast = self._one_step(input, hx, is_lstm=True)
        if fast is not None:
            return fast
        orig_is_packed = isinstance(input, PackedSequence)
        input, hx, batch_sizes, sorted_indices, unsorted_indices, is_batched = self._unpack_input(
            input, hx, is_lstm=True
        )
        num_directions = 2 if self.bidirectional else 1
        real_hidden_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        if hx is None:
            shape = (self.num_layers * num_directions, self._mini_batch(input, batch_sizes))
            kw = {"dtype": input.dtype, "device": input.device}
            hx = (
                torch.zeros(*shape, real_hidden_size, **kw),
                torch.zeros(*shape, self.hidden_size, **kw),
            )
        hx = self.permute_hidden(hx, sorted_indices)
        self.check_forward_args(input, hx, batch_sizes)
        if len(hx) != 2:
            raise RuntimeError("lstm expects two hidden states")
        _check_seq_len(input, batch_sizes, self.batch_first)
        input = self._time_major(input, batch_sizes)
        output, h_n, c_n = self._run(
            input, hx[0], _promote_cell_state(hx[1], input.dtype), batch_sizes
        )
        output = self._output(output, batch_sizes, sorted_indices, unsorted_indices, is_batched)
        if not orig_is_packed and not is_batched:
            h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)
        return output, self.permute_hidden((h_n, c_n), unsorted_indices)


# -- cells ------------------------------------------------------------------------------


class RNNCellBase(nn.Module):
    """Shared machinery of the cells (mirrors ``torch.nn.RNNCellBase``)."""

    __prepare_scriptable__ = _refuse_torchscript

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool,
        num_chunks: int,
        device=None,
        dtype=None,
        *,
        backend: str | None = None,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.backend = backend
        _check_backend(backend)
        self.weight_ih = nn.Parameter(
            torch.empty((num_chunks * hidden_size, input_size), **factory_kwargs)
        )
        self.weight_hh = nn.Parameter(
            torch.empty((num_chunks * hidden_size, hidden_size), **factory_kwargs)
        )
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(num_chunks * hidden_size, **factory_kwargs))
            self.bias_hh = nn.Parameter(torch.empty(num_chunks * hidden_size, **factory_kwargs))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def extra_repr(self) -> str:
        shown = {
            "bias": "bias" in self.__dict__ and self.bias is not True,
            "nonlinearity": "nonlinearity" in self.__dict__ and self.nonlinearity != "tanh",
        }
        return _extra_repr(self, shown)

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("backend", None)

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            init.uniform_(weight, -stdv, stdv)

    def _check(self, input: Tensor, states: tuple[Tensor, ...]) -> None:
        """The checks torch's cell kernels make, with their messages."""
        if input.size(1) != self.input_size:
            raise RuntimeError(
                f"input has inconsistent input_size: got {input.size(1)} expected {self.input_size}"
            )
        for i, h in enumerate(states):
            if input.size(0) != h.size(0):
                raise RuntimeError(
                    f"Input batch size {input.size(0)} doesn't match hidden{i} "
                    f"batch size {h.size(0)}"
                )
            if h.size(1) != self.hidden_size:
                raise RuntimeError(
                    f"hidden{i} has inconsistent hidden_size: got {h.size(1)}, "
                    f"expected {self.hidden_size}"
                )
        # torch's cells fail here with "Tensor on device cpu is not on the expected device
        # meta!"; the RNN layers' wording names which tensor is elsewhere
        weights = (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        _check_devices(input, states, [w for w in weights if w is not None])
        # torch's cells fail in their two matmuls (input @ W_ih^T, then h @ W_hh^T); c is
        # only used elementwise, so a c of another dtype is promoted, not rejected.
        # (under autocast they cast both sides instead)
        autocast = torch.is_autocast_enabled(input.device.type)
        for mat1, mat2 in ((input, self.weight_ih), (states[0], self.weight_hh)):
            if mat1.dtype != mat2.dtype and not autocast:
                raise RuntimeError(
                    "mat1 and mat2 must have the same dtype, but got "
                    f"{_dtype_name(mat1.dtype)} and {_dtype_name(mat2.dtype)}"
                )

    def _one_step(self, input, hx, is_lstm: bool):
        """A batched call without autograd straight to the cpu backend's ``stack_step`` (a
        stack of one layer), or None: the rules of ``RNNBase._one_step``, states [B, H]."""
        if not _shortcut_call(input, 2, self.backend):
            return None
        states = _shortcut_states(hx, is_lstm)
        if states is None or any(t is not None and t.dim() != 2 for t in states):
            return None  # a 3-D state would pass as [1, B, H]; torch.nn refuses it
        cell = "lstm" if is_lstm else self._cell()  # after the dim checks, as in torch.nn
        params = self._parameters  # direct: nn.Module.__getattr__ is a Python call per weight
        names = ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if self.bias else ())
        weights = [params[n] if n in params else getattr(self, n) for n in names]
        h, c = states
        out = backends.get("cpu").stack_step(
            cell, input, h, c, weights, 1, self.bias, 0, fallback=True
        )
        if out is None:
            return None
        h_new, _, c_new = out  # y is the new h, [B, H] also when the state was absent
        return (h_new, c_new if c_new.dim() == 2 else c_new[0]) if is_lstm else h_new

    def _one_state_forward(self, name: str, input: Tensor, hx: Tensor | None) -> Tensor:
        """``forward`` of RNNCell / GRUCell (one state), with torch.nn's checks and messages;
        ``self._cell()`` names the cell after the shape checks, as torch.nn orders them."""
        fast = self._one_step(input, hx, is_lstm=False)
        if fast is not None:
            return fast
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None and hx.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
        cell = self._cell()
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            hx = self._zero_state(input)
        elif not is_batched:
            hx = hx.unsqueeze(0)
        self._check(input, (hx,))
        h, _ = self._step(cell, input, hx, None)
        return h if is_batched else h.squeeze(0)

    def _zero_state(self, input: Tensor) -> Tensor:
        return torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)

    def _step(self, cell: str, input: Tensor, h: Tensor, c: Tensor | None):
        """One step through the layer op: a sequence of length one."""
        _refuse_jit_trace()
        backend = backends.get(backends.resolve(self.backend, input.device.type))
        return cell_step(
            backend, cell, input, h, c, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh
        )


def _dtype_name(dtype: torch.dtype) -> str:
    return {
        torch.float32: "Float",
        torch.float64: "Double",
        torch.float16: "Half",
        torch.bfloat16: "BFloat16",
    }.get(dtype, str(dtype))


class RNNCell(RNNCellBase):
    """Drop-in ``torch.nn.RNNCell``."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "tanh",
        device=None,
        dtype=None,
        *,
        backend: str | None = None,
    ) -> None:
        super().__init__(input_size, hidden_size, bias, 1, device, dtype, backend=backend)
        self.nonlinearity = nonlinearity

    def _cell(self) -> str:
        if self.nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        return "rnn_tanh" if self.nonlinearity == "tanh" else "rnn_relu"

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        return self._one_state_forward("RNNCell", input, hx)


class _GatedCell(RNNCellBase):
    """GRUCell and LSTMCell: torch.nn gives both this constructor, ``_gates`` rows per unit."""

    _gates: int

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        backend: str | None = None,
    ) -> None:
        super().__init__(input_size, hidden_size, bias, self._gates, device, dtype, backend=backend)


class GRUCell(_GatedCell):
    """Drop-in ``torch.nn.GRUCell``."""

    _gates = 3

    def _cell(self) -> str:
        return "gru"

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        return self._one_state_forward("GRUCell", input, hx)


class LSTMCell(_GatedCell):
    """Drop-in ``torch.nn.LSTMCell``."""

    _gates = 4

    def forward(
        self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        fast = self._one_step(input, hx, is_lstm=True)
        if fast is not None:
            return fast
        if input.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None:
            for idx, value in enumerate(hx):
                if value.dim() not in (1, 2):
                    raise ValueError(
                        f"LSTMCell: Expected hx[{idx}] to be 1D or 2D, got {value.dim()}D instead"
                    )
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            zeros = self._zero_state(input)
            hx = (zeros, zeros)
        elif not is_batched:
            hx = (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
        if not isinstance(hx, (tuple, list)):
            raise TypeError(
                "lstm_cell(): argument 'hx' (position 2) must be tuple of Tensors, "
                f"not {type(hx).__name__}"
            )
        if len(hx) != 2:
            raise RuntimeError("lstm_cell expects two hidden states")
        self._check(input, tuple(hx))
        h, c = self._step("lstm", input, hx[0], _promote_cell_state(hx[1], input.dtype))
        if not is_batched:
            return h.squeeze(0), c.squeeze(0)
        return h, c
