"""The analysis subcommands of ``fusedrnn-charlm``: visualize, find-cells, ngram, evolution.

The main command line adds them with :func:`register_analysis_commands`; each module's
``main(argv)`` also runs on its own (``python -m fusedrnn.charlm.ngram ...``).
"""

from __future__ import annotations

ANALYSIS_COMMANDS = ("visualize", "find-cells", "ngram", "evolution")


def register_analysis_commands(subparsers) -> None:
    """Add the analysis subcommands to an ``argparse`` subparsers object.

    Each sets ``func`` to a callable taking the parsed namespace and returning an exit code;
    user errors are raised as :class:`fusedrnn.charlm.errors.CharLMError`.
    """
    from . import cells, evolution, ngram, visualize

    visualize.register(subparsers)
    cells.register(subparsers)
    ngram.register(subparsers)
    evolution.register(subparsers)
