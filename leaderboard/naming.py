"""Safe file names from record strings, and where the board keeps things by default.

Method names and run ids come from submitters, so they never reach a path unchanged: anything outside a
conservative alphabet becomes `_`, which also rules out `..` and folder separators.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_RECORDS_DIR = PACKAGE_DIR / "records"
DEFAULT_SITE_DIR = Path("site")
SITE_MARKER = ".slowrun-leaderboard"

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def slug(text: str, *, limit: int = 80) -> str:
    """A file-name-safe form of `text`: same text, same slug; never empty, never starting with a dot."""
    cleaned = _UNSAFE.sub("_", text).strip("._-")[:limit]
    return cleaned or "_"


def page_names(relpaths: list[str]) -> dict[str, str]:
    """A distinct page stem per record file, readable where possible: `track__method-run` from its path.

    Two paths that clean up to the same stem (they differed only in unsafe characters) get a short
    digest of the original path appended, so no page ever overwrites another.
    """
    stems: dict[str, str] = {}
    taken: set[str] = set()
    for relpath in sorted(relpaths):
        base = relpath[:-5] if relpath.endswith(".json") else relpath
        stem = slug(base.replace("/", "__"), limit=120)
        if stem in taken:
            stem = f"{stem}-{hashlib.sha256(relpath.encode()).hexdigest()[:10]}"
        taken.add(stem)
        stems[relpath] = stem
    return stems


def hash_prefix(data_hash: str, length: int = 12) -> str:
    """The short form of a data hash shown in titles (an algorithm prefix such as `sha256:` dropped)."""
    return data_hash.split(":", 1)[-1][:length]
