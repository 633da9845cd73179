"""Comparing a part of two images exactly: a peer's upload and the origin's own render of it.

Decoding the upload is parsing hostile data with a large C library, so the origin runs this
module in the sandbox (``python -m distren.pixels X0 Y0 X1 Y1 GOT WANT``, see
:mod:`distren.verification`), as it checks uploads with :mod:`distren.images`. It imports
nothing of distren's, to start fast in a fresh interpreter.
"""

from __future__ import annotations

import sys
from pathlib import Path


def compare(got: Path, want: Path, box: tuple[int, int, int, int]) -> str | None:
    """None when ``got`` has exactly the pixels of ``want`` inside ``box`` (x0, y0, x1, y1,
    exclusive ends), in the same mode; otherwise what differs, in words."""
    from PIL import Image, ImageChops

    x0, y0, x1, y1 = box
    with Image.open(got) as g, Image.open(want) as w:
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


def main(argv: list[str]) -> int:
    """Print ``distren-pixels: same`` (exit 0), ``distren-pixels: differ: WHAT`` (exit 1), or,
    when the origin's own image cannot be read, ``distren-pixels: unknown: WHY`` (exit 3)."""
    if len(argv) != 6 or not all(a.isdigit() for a in argv[:4]):
        print("usage: python -m distren.pixels X0 Y0 X1 Y1 GOT WANT", file=sys.stderr)
        return 2
    from PIL import Image

    box = tuple(int(a) for a in argv[:4])
    try:
        with Image.open(argv[5]) as w:
            w.load()
    except Exception as e:  # not the peer's doing: nothing is said of its pixels
        print(f"distren-pixels: unknown: {type(e).__name__}", flush=True)
        return 3
    try:
        said = compare(Path(argv[4]), Path(argv[5]), box)  # type: ignore[arg-type]
    except Exception as e:  # an upload that does not decode differs from any render
        said = f"the image does not decode ({type(e).__name__})"
    print(f"distren-pixels: {'same' if said is None else 'differ: ' + said}", flush=True)
    return 0 if said is None else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
