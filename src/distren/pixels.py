"""Comparing a part of two images exactly: a peer's upload and the origin's own render of it.

Decoding the upload is parsing hostile data with a large C library, so the origin runs this in
the sandbox: in the long-lived image checker of the job and the uploading peer
(:mod:`distren.checkers`), which is sent both images as open files, as it is sent the upload's
images to check them (:mod:`distren.images`). It imports nothing of distren's: it runs in the
checker's interpreter, which should start fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

SAME, DIFFER, UNKNOWN = "same", "differ: ", "unknown: "


def compare(got: Path | BinaryIO, want: Path | BinaryIO, box: tuple[int, int, int, int]) -> str | None:
    """None when ``got`` has exactly the pixels of ``want`` inside ``box`` (x0, y0, x1, y1,
    exclusive ends), in the same mode; otherwise what differs, in words."""
    from PIL import Image

    with Image.open(got) as g, Image.open(want) as w:
        return _compare(g, w, box)


def _compare(g, w, box: tuple[int, int, int, int]) -> str | None:
    from PIL import ImageChops

    x0, y0, x1, y1 = box
    if g.size != w.size:
        return f"the image is {g.size[0]}x{g.size[1]}, not {w.size[0]}x{w.size[1]}"
    if g.mode != w.mode:
        return f"its pixels are {g.mode}, not {w.mode}"
    a, b = g.crop(box), w.crop(box)
    if a.tobytes() == b.tobytes():
        return None
    try:
        bbox = ImageChops.difference(a, b).getbbox()
    except ValueError:  # modes Pillow cannot subtract (16-bit grey): say where the block is
        bbox = None
    if bbox is None:
        return f"pixels differ in ({x0},{y0})-({x1 - 1},{y1 - 1})"
    return f"pixels differ in ({x0 + bbox[0]},{y0 + bbox[1]})-({x0 + bbox[2] - 1},{y0 + bbox[3] - 1})"


def verdict(got: BinaryIO, want: BinaryIO, box: tuple[int, int, int, int]) -> str:
    """``same``, ``differ: WHAT``, or, when the origin's own image ``want`` cannot be read,
    ``unknown: WHY`` (nothing is then said of the peer's pixels)."""
    from PIL import Image

    try:
        w = Image.open(want)
        w.load()
    except Exception as e:  # not the peer's doing
        return UNKNOWN + type(e).__name__
    with w:
        try:
            with Image.open(got) as g:
                said = _compare(g, w, box)
        except Exception as e:  # an upload that does not decode differs from any render
            said = f"the image does not decode ({type(e).__name__})"
    return SAME if said is None else DIFFER + said
