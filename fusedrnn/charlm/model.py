"""The character-level language model: embedding -> stacked recurrent layers -> linear decoder.

The recurrent layers are ``fusedrnn.LSTM/GRU/RNN`` (or, for comparisons, ``torch.nn``'s), one
single-layer module per layer so that every layer's output sequence is available to analysis
tools; the inter-layer dropout that a multi-layer ``torch.nn.LSTM`` would apply is applied here
instead, with the same semantics. The state has the ``torch.nn`` layout: ``h [L, B, H]`` and,
for LSTM, ``(h, c)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import CheckpointError

CELLS = ("lstm", "gru", "rnn", "rnn_relu")
IMPLS = ("fusedrnn", "torch")


def rnn_classes(impl: str = "fusedrnn") -> dict[str, type]:
    """The recurrent module classes of an implementation ("fusedrnn" or "torch")."""
    if impl == "torch":
        return {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
    if impl != "fusedrnn":
        raise ValueError(f"unknown rnn implementation {impl!r}; expected one of {IMPLS}")
    from fusedrnn import GRU, LSTM, RNN

    return {"lstm": LSTM, "gru": GRU, "rnn": RNN}


def make_rnn(
    cell: str,
    input_size: int,
    hidden_size: int,
    impl: str = "fusedrnn",
    backend: str | None = None,
    variants: dict | None = None,
) -> nn.Module:
    """One single-layer, batch-first recurrent module (the one place that picks the class).

    ``variants``: fusedrnn cell options (layer_norm, zoneout, peephole, cifg), all off if None.
    """
    if cell not in CELLS:
        raise ValueError(f"unknown model {cell!r}; expected one of {CELLS}")
    cls = rnn_classes(impl)["lstm" if cell == "lstm" else "gru" if cell == "gru" else "rnn"]
    kw: dict = {"batch_first": True}
    if cell.startswith("rnn"):
        kw["nonlinearity"] = "relu" if cell == "rnn_relu" else "tanh"
    if impl == "fusedrnn":
        kw["backend"] = backend
    elif backend not in (None, "torch"):
        raise ValueError("backend= only applies to the fusedrnn implementation")
    if variants:
        if impl != "fusedrnn":
            raise ValueError("cell variants only exist in the fusedrnn implementation")
        kw.update(variants)
    return cls(input_size, hidden_size, 1, **kw)


class CharRNN(nn.Module):
    """Character language model.

    ``embed > 0``: a learned embedding of that size; ``embed == 0``: one-hot inputs (char-rnn).
    """

    def __init__(
        self,
        vocab_size: int,
        model: str = "lstm",
        hidden: int = 256,
        layers: int = 2,
        embed: int = 64,
        dropout: float = 0.0,
        impl: str = "fusedrnn",
        backend: str | None = None,
        layer_norm: bool = False,
        zoneout: float = 0.0,
        peephole: bool = False,
        cifg: bool = False,
    ):
        super().__init__()
        if vocab_size < 1 or hidden < 1 or layers < 1 or embed < 0:
            raise ValueError("vocab_size, hidden and layers must be >= 1 and embed >= 0")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.vocab_size = vocab_size
        self.cell = model
        self.hidden = hidden
        self.num_layers = layers
        self.embed_size = embed
        self.impl = impl
        self.backend = backend
        options = dict(layer_norm=layer_norm, zoneout=zoneout, peephole=peephole, cifg=cifg)
        self.variants = {k: v for k, v in options.items() if v}
        self.embed = nn.Embedding(vocab_size, embed) if embed > 0 else None
        in_size = embed if embed > 0 else vocab_size
        self.rnns = nn.ModuleList(
            make_rnn(model, in_size if k == 0 else hidden, hidden, impl, backend, self.variants)
            for k in range(layers)
        )
        self.drop = nn.Dropout(dropout)
        self.decoder = nn.Linear(hidden, vocab_size)

    @property
    def is_lstm(self) -> bool:
        return self.cell == "lstm"

    def _inputs(self, idx: Tensor) -> Tensor:  # idx [B, T] -> [B, T, E]
        if idx.dim() != 2:
            raise ValueError(f"expected idx of shape [B, T], got {tuple(idx.shape)}")
        if self.embed is not None:
            return self.embed(idx)
        return F.one_hot(idx, self.vocab_size).to(self.decoder.weight.dtype)

    def _layer_state(self, state, k: int):
        if state is None:
            return None
        if self.is_lstm:
            h, c = state  # [L, B, H] each
            return h[k : k + 1], c[k : k + 1]
        return state[k : k + 1]

    def _join(self, states: list):
        if self.is_lstm:
            return torch.cat([s[0] for s in states]), torch.cat([s[1] for s in states])
        return torch.cat(states)

    def forward_layers(self, idx: Tensor, layer_states: list | None = None):
        """idx [B, T] -> (logits [B, T, V], [L] per-layer states, [L] outputs [B, T, H]).

        The state is kept per layer (h [1, B, H], or (h, c) for LSTM) so that a caller stepping
        one character at a time (sampling) does not pay for stacking and slicing it.
        """
        x = self._inputs(idx)
        outs, states = [], []
        for k, rnn in enumerate(self.rnns):
            if k > 0:
                x = self.drop(x)  # the inter-layer dropout of a multi-layer torch.nn RNN
            x, s = rnn(x, None if layer_states is None else layer_states[k])
            outs.append(x)
            states.append(s)
        return self.decoder(self.drop(x)), states, outs

    def forward_with_hidden(self, idx: Tensor, state=None) -> tuple[Tensor, object, list[Tensor]]:
        """idx [B, T] -> (logits [B, T, V], state, [L] outputs of every layer [B, T, H])."""
        per_layer = None
        if state is not None:
            per_layer = [self._layer_state(state, k) for k in range(self.num_layers)]
        logits, states, outs = self.forward_layers(idx, per_layer)
        return logits, self._join(states), outs

    def forward(self, idx: Tensor, state=None) -> tuple[Tensor, object]:
        """idx [B, T] int64 -> (logits [B, T, V], state (h [L, B, H] or (h, c)))."""
        logits, state, _ = self.forward_with_hidden(idx, state)
        return logits, state

    @torch.no_grad()
    def trace(self, idx: Tensor, state=None) -> dict:
        """Step one character at a time (analysis only) and record every layer's states.

        idx [1, T] -> dict(h=[L] of [T, H], c=[L] of [T, H] for LSTM else None, logits=[T, V]).
        """
        if idx.dim() != 2 or idx.shape[0] != 1:
            raise ValueError(f"trace expects idx of shape [1, T], got {tuple(idx.shape)}")
        T = idx.shape[1]
        L = self.num_layers
        hs = [[] for _ in range(L)]
        cs = [[] for _ in range(L)] if self.is_lstm else None
        logits = []
        layer_states = [self._layer_state(state, k) for k in range(L)]
        for t in range(T):
            x = self._inputs(idx[:, t : t + 1])
            for k, rnn in enumerate(self.rnns):
                if k > 0:
                    x = self.drop(x)
                x, s = rnn(x, layer_states[k])
                layer_states[k] = s
                if self.is_lstm:
                    hs[k].append(s[0][0, 0])
                    cs[k].append(s[1][0, 0])
                else:
                    hs[k].append(s[0, 0])
            logits.append(self.decoder(self.drop(x))[0, 0])
        return {
            "h": [torch.stack(v) if v else idx.new_zeros(0, self.hidden).float() for v in hs],
            "c": None if cs is None else [torch.stack(v) for v in cs],
            "logits": torch.stack(logits) if logits else idx.new_zeros(0, self.vocab_size),
            "state": self._join(layer_states) if T else state,
        }

    def init_state(self, batch: int, device=None, dtype=None):
        w = self.decoder.weight
        z = torch.zeros(
            self.num_layers, batch, self.hidden, device=device or w.device, dtype=dtype or w.dtype
        )
        return (z, z.clone()) if self.is_lstm else z

    def architecture(self) -> dict:
        """The constructor arguments, as plain JSON-able values."""
        return {
            "vocab_size": self.vocab_size,
            "model": self.cell,
            "hidden": self.hidden,
            "layers": self.num_layers,
            "embed": self.embed_size,
            "dropout": float(self.drop.p),
            **self.variants,
        }


def detach_state(state):
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def build_model(arch: dict, impl: str = "fusedrnn", backend: str | None = None) -> CharRNN:
    try:
        return CharRNN(
            vocab_size=int(arch["vocab_size"]),
            model=str(arch["model"]),
            hidden=int(arch["hidden"]),
            layers=int(arch["layers"]),
            embed=int(arch["embed"]),
            dropout=float(arch.get("dropout", 0.0)),
            impl=impl,
            backend=backend,
            layer_norm=bool(arch.get("layer_norm", False)),
            zoneout=float(arch.get("zoneout", 0.0)),
            peephole=bool(arch.get("peephole", False)),
            cifg=bool(arch.get("cifg", False)),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"invalid model description in checkpoint: {e}") from None
