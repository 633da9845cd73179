"""Checking a frame's tarball a peer uploaded, before its origin keeps any of it.

What a frame must hold is its backend's to say (``expected_files``); the checks here are the
same for every backend: unpack exactly those names within bounds, and decode every image whole,
in the sandbox (:mod:`distren.images`). The origin (:mod:`distren.origin`) calls them.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from . import bundle, images, sandbox
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
                    limit: int, limits: sandbox.Limits) -> list[dict]:
    """Unpack a peer's frame tarball into ``unpack_to`` and check it: exactly the ``expected``
    files (no other frame's, nothing else), none larger than it can be, all of them within
    ``limit`` (--max-result-bytes; by the headers before anything is written, and by the bytes
    while writing), every image decoded whole in the sandbox. Returns the files."""
    only = {n: min(limit, largest_file(n, width, height, limit)) for n in expected}
    names = bundle.extract(tar, unpack_to, bundle.Limits(members=1000, total_bytes=limit, only=only),
                           where="frame tarball")
    missing = [n for n in expected if n not in names]
    if missing:
        raise BundleError(f"frame tarball: lacks {', '.join(missing)}, which frame/{frame_id} makes")
    check_images(unpack_to, [n for n in expected if Path(n).suffix.lower() in images.SUFFIXES],
                 width, height, limits)
    return [{"name": n, "size": (unpack_to / n).stat().st_size, "sha256": sha256_file(unpack_to / n)}
            for n in expected]


def check_images(folder: Path, names: list[str], width: int, height: int, limits: sandbox.Limits) -> None:
    """Decode each image completely, in the sandbox (decoding is parsing hostile data), with
    the files mounted read-only into an otherwise empty working folder."""
    if not names:
        return
    sandbox.check()  # an origin with --slots 0 may have none: then it takes no images (503)
    work = folder.parent / f"{folder.name}.check"
    log = folder.parent / f"{folder.name}.check.log"
    work.mkdir()
    for n in names:  # mount points for the read-only files
        (work / n).parent.mkdir(parents=True, exist_ok=True)
        (work / n).touch()
    argv, binds = sandbox.python_command("distren.images", [str(width), str(height), *names])
    limits = replace(limits, wall=min(limits.wall, 600.0))
    out = sandbox.run(argv, work, limits, log, shared={n: folder / n for n in names}, binds=binds)
    if out.ok:
        return
    said = [ln.removeprefix("distren-image-error: ") for ln in out.tail.splitlines()
            if ln.startswith("distren-image-error: ")]
    if said:
        raise images.ImageError(f"frame tarball: {said[-1]}")
    why = out.reason or f"exit {out.returncode}: {out.tail.strip()[-300:]}"
    raise images.ImageError(f"frame tarball: its images could not be checked ({why})")
