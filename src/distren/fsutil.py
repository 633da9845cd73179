"""Atomic file writes: temp file in the same folder, fsync, rename, fsync the folder.

A reader (or a restart after SIGKILL) sees either the old file or the whole new one, never half.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_open(path: Path, mode: int = 0o644):
    """Yield a binary file object; on clean exit it replaces ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def remove_stale_temps(root: Path) -> list[Path]:
    """Remove the temp files of atomic writes that a SIGKILL cut short (``.NAME.XXXXXXXX.tmp``,
    as ``atomic_open`` names them). Only at start, before anything writes: then each is junk."""
    gone = []
    for p in Path(root).rglob(".*.tmp"):
        if re.fullmatch(r"\..+\.[A-Za-z0-9_]{8}\.tmp", p.name) and p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    with atomic_open(path, mode) as f:
        f.write(data)


def atomic_write_stream(path: Path, chunks: Iterable[bytes], limit: int | None = None) -> tuple[str, int]:
    """Write chunks atomically; return (sha256 hex, size). Raises ValueError past ``limit`` bytes
    (and leaves nothing behind)."""
    h = hashlib.sha256()
    size = 0
    with atomic_open(path) as f:
        for chunk in chunks:
            size += len(chunk)
            if limit is not None and size > limit:
                raise ValueError(f"more than {limit} bytes")
            h.update(chunk)
            f.write(chunk)
    return h.hexdigest(), size


def sha256_stream(f) -> str:
    h = hashlib.sha256()
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return sha256_stream(f)
