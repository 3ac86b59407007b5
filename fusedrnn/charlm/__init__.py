"""Character-level language model (char-rnn style) on fusedrnn's recurrent layers.

Public entry points: :func:`fusedrnn.charlm.train.train`,
:func:`fusedrnn.charlm.checkpoint.load_checkpoint`, :class:`fusedrnn.charlm.model.CharRNN`,
:func:`fusedrnn.charlm.data.load_corpus` / :func:`fusedrnn.charlm.data.split_corpus`,
:func:`fusedrnn.charlm.sample.generate`; the command line is ``python -m fusedrnn.charlm``.
"""

from .errors import CharLMError, CheckpointError, DataError, TrainingError

__all__ = ["CharLMError", "CheckpointError", "DataError", "TrainingError"]
