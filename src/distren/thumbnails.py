"""Scaling frames' images down for the dashboard, in the sandbox.

A frame's image comes from a render of an untrusted scene (or a peer's upload): decoding it is
parsing hostile data with a large C library, so :mod:`distren.previews` runs this module in the
sandbox (``python -m distren.thumbnails W H SIDE...  -- NAME...``), one process for a batch of
images. Every image must be the job's size (checked from the header before any pixel is
decoded); each is written as one PNG per side, ``NAME.SIDE.png``, never larger than SIDE.
"""

from __future__ import annotations

import sys
import warnings

from .images import MAX_SIDE


def scale(name: str, width: int, height: int, sides: list[int]) -> None:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = width * height
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(name) as im:
            if im.size != (width, height):
                raise ValueError(f"{name} is {im.size[0]}x{im.size[1]}, not the job's {width}x{height}")
            im.draft("RGB", (max(sides), max(sides)))  # JPEG: decode at a smaller scale at once
            im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
        for side in sorted(sides, reverse=True):
            small = im.copy()
            small.thumbnail((side, side))
            small.save(f"{name}.{side}.png", optimize=False)
            im = small  # the next, smaller side from this one


def main(argv: list[str]) -> int:
    """``W H SIDE... -- NAME...``: scale each image; one line per image that fails, exit 0."""
    if "--" not in argv:
        print("usage: python -m distren.thumbnails WIDTH HEIGHT SIDE... -- NAME...", file=sys.stderr)
        return 2
    cut = argv.index("--")
    nums, names = argv[:cut], argv[cut + 1:]
    if len(nums) < 3 or not all(n.isdigit() for n in nums):
        print("distren-thumbnail-error: width, height and sides must be numbers", flush=True)
        return 2
    width, height, sides = int(nums[0]), int(nums[1]), [int(n) for n in nums[2:]]
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE) or not all(1 <= s <= MAX_SIDE for s in sides):
        print("distren-thumbnail-error: sizes out of range", flush=True)
        return 2
    for name in names:
        try:
            scale(name, width, height, sides)
        except Exception as e:  # Pillow says what is wrong in many ways: OSError, SyntaxError, ValueError...
            print(f"distren-thumbnail-error: {name}: {type(e).__name__}: {str(e)[:200]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
