"""Where an input comes from: a local path or a hub id, decided by one rule for models and data."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def looks_local(name: str, suffixes: Sequence[str] = ()) -> bool:
    """True for a path: it exists, starts with '.', '/' or '~', or ends in one of `suffixes`
    (e.g. '.jsonl' for data). Anything else is a hub id ('org/name', or a legacy 'name')."""
    path = Path(name).expanduser()
    return name.startswith((".", "/", "~")) or path.exists() or path.suffix.lower() in suffixes
