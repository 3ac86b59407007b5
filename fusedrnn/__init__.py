"""fusedrnn: fused LSTM / GRU / RNN kernels behind drop-in torch.nn modules.

Importing this package never touches a GPU and never fails because an
extension was not built; backends are probed on first use.
"""

from .backends import BackendUnavailableError, available_backends
from .modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

__version__ = "0.1.0"

__all__ = [
    "LSTM",
    "GRU",
    "RNN",
    "LSTMCell",
    "GRUCell",
    "RNNCell",
    "available_backends",
    "BackendUnavailableError",
]
