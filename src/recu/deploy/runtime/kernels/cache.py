"""numba's on-disk cache of the kernels, kept consistent with their sources.

numba checks a cached function against its own source file only, but a kernel compiles code from
several files of this folder into one cached library (the plan executor inlines the float, popcount,
tap and AMX kernels): after an edit or upgrade of one of them numba would load a stale executor (seen:
a float conv changed and the cached plan kept the old one). :func:`ensure_fresh_cache` drops every
cached function of this folder when the folder's combined source changes.

Below every kernel module: it finds the cache files by name (numba names them ``<file stem>.<function>
-<line>.py<version>.nbi``/``.nbc`` in one directory per source directory), so it needs to import none of
them, and a kernel module imported later is covered as well.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from .jit import jit

__all__ = ["source_stamp", "ensure_fresh_cache"]

_HERE = Path(__file__).parent
_STAMP_FILE = "recu_deploy_sources.sha256"
_FRESH_LOCK = threading.Lock()
_FRESH = False


def _sources() -> list[Path]:
    return sorted(_HERE.glob("*.py"))


def source_stamp() -> str:
    """sha256 of this folder's source files (what the cached machine code was built from)."""
    h = hashlib.sha256()
    for path in _sources():
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


@jit()
def _locate() -> int:  # never called: its dispatcher knows the cache directory of this folder
    return 0


def cache_dir() -> Path | None:
    """The directory numba caches this folder's kernels in (None: caching is off)."""
    path = getattr(getattr(_locate, "_cache", None), "_cache_path", None)
    return Path(path) if path else None


def ensure_fresh_cache() -> None:
    """Drop numba's cached kernels of this folder if its sources changed since they were written
    (once per process; call before the first kernel runs)."""
    global _FRESH
    with _FRESH_LOCK:
        if _FRESH:
            return
        folder = cache_dir()
        if folder is not None:
            _flush_if_stale(folder)
        _FRESH = True


def _flush_if_stale(folder: Path) -> None:
    stamp_path = folder / _STAMP_FILE
    stamp = source_stamp()
    try:
        old = stamp_path.read_text().strip()
    except OSError:
        old = None
    if old == stamp:
        return
    stems = tuple(f"{p.stem}." for p in _sources())
    for entry in os.scandir(folder):
        if entry.name.startswith(stems) and entry.name.endswith((".nbi", ".nbc")):
            try:
                os.remove(entry.path)
            except OSError:
                pass  # another process removed it first, or an unwritable cache: it recompiles anyway
    try:
        stamp_path.write_text(stamp)
    except OSError:
        pass  # an unwritable cache: numba compiles in memory anyway
