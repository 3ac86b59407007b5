"""The analysis subcommands of ``fusedrnn-charlm``: visualize, find-cells, ngram, evolution.

The main command line adds them with :func:`register_analysis_commands`; each module's
``main(argv)`` also runs on its own (``python -m fusedrnn.charlm.ngram ...``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .errors import standalone_main

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


def subcommand(
    name: str,
    help: str,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
):
    """``(register, main)`` of one analysis command: ``register(subparsers)`` adds it to
    ``fusedrnn-charlm``, ``main(argv)`` runs it on its own under the same options."""

    def register(subparsers) -> argparse.ArgumentParser:
        p = subparsers.add_parser(name, help=help, description=description)
        add_arguments(p)
        p.set_defaults(func=run)
        return p

    def main(argv: list[str] | None = None) -> int:
        return standalone_main(f"fusedrnn-charlm {name}", add_arguments, run, argv)

    return register, main
