"""A content-addressed cache of JSON records: atomic, checksummed, never pickle.

A key is the sha256 of the canonical JSON of exactly the fields that change the output.
Each entry stores its key and a checksum of its value; an entry that fails either check
(truncated, corrupt, or written for another key) is reported once and treated as absent.
Writes go to a temporary file in the same directory and are renamed into place, so
readers, other pytest-xdist workers and killed runs never see half an entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from .errors import CacheError

SCHEMA = 1
ENTRY_BYTES = 8192
"""Disk an entry takes at most, for sizing work before it starts: one JSON file per item, measured at 0.2-2.5 KB
on the demo (a text's features the largest) and stored in one 4 KiB block; 8 KiB leaves room for answers of a
thousand tokens and larger blocks."""


def canonical(obj: Any) -> str:
    """Canonical JSON: sorted keys, no whitespace, NaN kept as a token JSON readers accept here."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def make_key(namespace: str, fields: Mapping[str, Any]) -> str:
    """sha256 over the namespace and the canonical JSON of the fields."""
    return hashlib.sha256(f"{namespace}\n{canonical(fields)}".encode("utf-8")).hexdigest()


class CacheWarning(UserWarning):
    """A cache entry was unreadable and is being recomputed."""


@dataclass
class Cache:
    """Records under root/namespace/ab/abcdef....json. `enabled=False` neither reads nor writes;
    `refresh=True` ignores what is there and rewrites it."""

    root: Path
    enabled: bool = True
    refresh: bool = False
    hits: dict[str, int] = field(default_factory=dict)
    misses: dict[str, int] = field(default_factory=dict)
    _reported: set[str] = field(default_factory=set)

    def _path(self, namespace: str, key: str) -> Path:
        return Path(self.root) / namespace / key[:2] / f"{key}.json"

    def get(self, namespace: str, key: str) -> Any | None:
        """The stored value, or None when absent, disabled, refreshing, or failing verification."""
        value = self._read(namespace, key) if self.enabled and not self.refresh else None
        counter = self.hits if value is not None else self.misses
        counter[namespace] = counter.get(namespace, 0) + 1
        return value

    def _read(self, namespace: str, key: str) -> Any | None:
        path = self._path(namespace, key)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            entry = json.loads(raw)
            value = entry["value"]
            ok = (entry.get("schema") == SCHEMA and entry.get("key") == key
                  and entry.get("sha256") == hashlib.sha256(canonical(value).encode("utf-8")).hexdigest())
        except (ValueError, KeyError, TypeError, AttributeError):
            ok = False
        if not ok:
            if str(path) not in self._reported:
                self._reported.add(str(path))
                warnings.warn(f"cache entry {path} is corrupt or belongs to another key; recomputing it.",
                              CacheWarning, stacklevel=3)
            return None
        return value

    def put(self, namespace: str, key: str, value: Any) -> None:
        """Write atomically. Raises CacheError (disk full, read-only) without touching existing entries."""
        if not self.enabled:
            return
        path = self._path(namespace, key)
        body = canonical({"schema": SCHEMA, "key": key, "value": value,
                          "sha256": hashlib.sha256(canonical(value).encode("utf-8")).hexdigest()})
        try:
            atomic_write_text(path, body, prefix=f".{key[:12]}.")
        except OSError as e:
            raise CacheError(f"cannot write the cache entry {path} ({e.strerror or e}). Free space or choose another "
                             f"directory with --eval-cache-dir, or run with --no-cache.") from None

    def stats(self) -> dict[str, dict[str, int]]:
        return {"hits": dict(self.hits), "misses": dict(self.misses)}

    def room(self, entries: int, what: str) -> None:
        """Raise CacheError, before any work, when the cache's disk cannot take `entries` more entries (bytes
        at ENTRY_BYTES each, or files where the file system counts them); `what` names the work in the message."""
        if not self.enabled or entries <= 0:
            return
        root = Path(self.root)
        root.mkdir(parents=True, exist_ok=True)
        fs = os.statvfs(root)
        free_bytes, need = fs.f_bavail * fs.f_frsize, entries * ENTRY_BYTES
        short = (f"{need / 1e6:,.0f} MB ({entries:,} entries at up to {ENTRY_BYTES // 1024} KiB) and {free_bytes / 1e6:,.0f} "
                 f"MB are free" if free_bytes < need else
                 f"{entries:,} files and {fs.f_favail:,} are free" if fs.f_files and fs.f_favail < entries else None)
        if short:
            raise CacheError(f"{what} needs up to {short} in the cache directory {root}. Free space there, point "
                             f"--eval-cache-dir (or DPO_EVAL_CACHE_DIR) at a larger disk, gate fewer checkpoints at "
                             f"once (a glob or a list), or run with --no-cache (nothing is kept for a re-run).")


def atomic_write_text(path: Path, text: str, prefix: str = "") -> None:
    """Write to a temporary file beside `path`, then rename: readers see the old file or the new one,
    never half of one, even when the process is killed mid-write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix or f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these files are meant to be shared and read
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes, streamed."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_digest(path: Path, memo: Cache | None = None) -> str:
    """sha256 of a file's bytes, memoised by (path, size, mtime) so a 14 GB base is hashed once."""
    st = Path(path).stat()
    key = make_key("file-digest", {"path": str(Path(path).resolve()), "size": st.st_size, "mtime": st.st_mtime_ns})
    if memo is not None and (hit := memo.get("file-digest", key)) is not None:
        return str(hit)
    digest = sha256_file(path)
    if memo is not None:
        memo.put("file-digest", key, digest)
    return digest


def memoized(cache: Cache, namespace: str, keys: Sequence[str],
             compute: Callable[[list[int]], Iterable[tuple[int, Any]]]) -> tuple[list[Any], int]:
    """The JSON value for each key: read from the cache, else computed, written and returned.

    `compute` gets the indices of the missing keys (the first index of each distinct key) and yields
    (index, value) as each value is ready; each one is written as it arrives, so an interrupted run
    keeps everything it finished. Returns (values in key order, how many were computed).
    """
    values: dict[str, Any] = {}
    missing: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key in values or key in missing:
            continue
        hit = cache.get(namespace, key)
        if hit is None:
            missing[key] = i
        else:
            values[key] = hit
    if missing:
        for i, value in compute(list(missing.values())):
            cache.put(namespace, keys[i], value)
            values[keys[i]] = value
        lost = [k for k in missing if k not in values]
        if lost:
            raise RuntimeError(f"{namespace}: compute returned no value for {len(lost)} of {len(missing)} keys")
    return [values[k] for k in keys], len(missing)
