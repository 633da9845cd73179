"""Checking a frame's tarball a peer uploaded, before its origin keeps any of it.

What a frame must hold is its backend's to say (``expected_files``); the checks here are the
same for every backend: unpack exactly those names within bounds, and decode every image whole,
in the sandbox (:mod:`distren.checkers`). The origin (:mod:`distren.origin`) calls them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from . import bundle, images
from .errors import BundleError
from .fsutil import sha256_file

IMAGE_BYTES_PER_PIXEL = 16  # EXR, float RGBA, uncompressed: the largest an image POV-Ray writes can be
IMAGE_FORMATS = images.SUFFIXES | {".exr", ".hdr"}


def largest_file(name: str, width: int, height: int, limit: int) -> int:
    """The largest a file of a frame can be: an image of the job's size has a bound (so a
    small compressed upload cannot unpack to gigabytes under an image's name); a movie has
    only the server's --max-result-bytes."""
    if Path(name).suffix.lower() in IMAGE_FORMATS:
        return IMAGE_BYTES_PER_PIXEL * width * height + 8 * height + (1 << 20)
    return limit


def check_frame_tar(tar: Path, unpack_to: Path, expected: list[str], frame_id: int, width: int, height: int,
                    limit: int, check_images: Callable[[Path, list[str], int, int], None]) -> list[dict]:
    """Unpack a peer's frame tarball into ``unpack_to`` and check it: exactly the ``expected``
    files (no other frame's, nothing else), none larger than it can be, all of them within
    ``limit`` (--max-result-bytes; by the headers before anything is written, and by the bytes
    while writing), every image decoded whole by ``check_images(folder, names, width, height)``
    (:meth:`distren.checkers.Checkers.check`, in the sandbox). Returns the files."""
    only = {n: min(limit, largest_file(n, width, height, limit)) for n in expected}
    names = bundle.extract(tar, unpack_to, bundle.Limits(members=1000, total_bytes=limit, only=only),
                           where="frame tarball")
    missing = [n for n in expected if n not in names]
    if missing:
        raise BundleError(f"frame tarball: lacks {', '.join(missing)}, which frame/{frame_id} makes")
    check_images(unpack_to, [n for n in expected if Path(n).suffix.lower() in images.SUFFIXES], width, height)
    return [{"name": n, "size": (unpack_to / n).stat().st_size, "sha256": sha256_file(unpack_to / n)}
            for n in expected]
