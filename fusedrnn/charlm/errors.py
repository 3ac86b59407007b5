"""Errors that the command line reports as one line on stderr (no traceback)."""


class CharLMError(Exception):
    """Base class: a user-facing problem with a clear one-line message."""


class DataError(CharLMError):
    """Missing, empty, undecodable or too-short training data."""


class CheckpointError(CharLMError):
    """A checkpoint that cannot be loaded safely or does not fit the data."""


class TrainingError(CharLMError):
    """Training cannot go on (e.g. the loss became NaN or infinite)."""


def standalone_main(prog: str, add_arguments, run, argv: list[str] | None = None) -> int:
    """Run one subcommand as its own program (``python -m fusedrnn.charlm.<module>``): parse
    ``argv`` with the arguments ``add_arguments`` declares, call ``run``, and report a
    :class:`CharLMError` as one line on stderr with exit code 1."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog=prog)
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except CharLMError as e:
        print(f"fusedrnn-charlm: error: {e}", file=sys.stderr)
        return 1
