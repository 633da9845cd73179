"""A renderer's cache of other servers' job scenes, by content hash.

A job's bundle is named by its SHA-256 (signed in the origin's announcement), so one fetched for
one lease serves every later lease of the same job, and a copy is as good as the origin's once
its hash matches.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from . import bundle


class Scenes:
    def __init__(self, cache: Path):
        self._cache = cache
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def lock(self, key: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(key, threading.Lock())

    def bundle_path(self, sha: str) -> Path:
        return self._cache / "bundles" / f"{sha}.tar"

    def scene(self, sha: str, fetch: Callable[[Path], None]) -> Path:
        """The unpacked scene of bundle ``sha``; ``fetch(dest)`` downloads the bundle (checking
        its hash) when it is not here yet. One fetch per bundle at a time."""
        scene = self._cache / "scenes" / sha
        with self.lock(sha):
            if not scene.is_dir():
                tar = self.bundle_path(sha)
                if not tar.exists():
                    fetch(tar)
                unpacked = self._cache / "scenes" / f".{sha}.unpacked"
                shutil.rmtree(unpacked, ignore_errors=True)
                bundle.extract(tar, unpacked)
                os.replace(unpacked / "scene", scene)
                shutil.rmtree(unpacked, ignore_errors=True)
        return scene
