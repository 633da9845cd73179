"""Checking images a peer uploaded: decoded whole, at the job's size.

A header and its checksums say nothing of the pixels: a PNG whose compressed data is garbage
passes both. So every image is decoded completely, which is parsing hostile data with a large
C library; the origin runs this module in the sandbox (``python -m distren.images W H FILE...``,
see :func:`distren.uploads.check_images`).

Pillow refuses images above about 179 Mpx as decompression bombs. A job may be up to
MAX_SIDE x MAX_SIDE, and the size is checked from the header before any pixel is decoded, so
the job's size, not Pillow's default, is the bound here (and only here).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from .errors import BundleError

# The largest side of any job's images. Defined here, not in jobfile (which imports it): this
# module starts in a fresh sandboxed interpreter for every upload, and importing jobfile would
# double what that start costs.
MAX_SIDE = 16384

SUFFIXES = {".png", ".tga", ".ppm", ".bmp", ".jpg", ".jpeg"}  # what Pillow decodes; others are not checked


class ImageError(BundleError):
    """An uploaded image that does not decode, or is not of the job's size."""


def check_image(path: Path, width: int, height: int, name: str) -> None:
    """Decode ``path`` completely; it must be ``width`` x ``height``. ``name`` is how the
    image is called in the message (its name in the frame, never a path here)."""
    from PIL import Image

    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise ImageError(f"{name}: the job's size {width}x{height} is outside 1..{MAX_SIDE}")
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = MAX_SIDE * MAX_SIDE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.size != (width, height):
                    raise ImageError(f"{name} is {im.size[0]}x{im.size[1]}; the job renders {width}x{height}")
                im.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{name} claims more pixels than any job has ({MAX_SIDE}x{MAX_SIDE} at most)") from None
    except Exception as e:  # Pillow says what is wrong in many ways: OSError, SyntaxError, ValueError...
        raise ImageError(f"{name} is not a readable image ({type(e).__name__}: {str(e)[:200]})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def main(argv: list[str]) -> int:
    """``W H FILE...``: check each file; print the first problem and exit 1, or exit 0."""
    if len(argv) < 3 or not argv[0].isdigit() or not argv[1].isdigit():
        print("usage: python -m distren.images WIDTH HEIGHT FILE...", file=sys.stderr)
        return 2
    width, height = int(argv[0]), int(argv[1])
    for name in argv[2:]:
        try:
            check_image(Path(name), width, height, name)
        except ImageError as e:
            print(f"distren-image-error: {e}", flush=True)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
