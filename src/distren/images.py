"""Checking images a peer uploaded: decoded whole, at the job's size.

A header and its checksums say nothing of the pixels: a PNG whose compressed data is garbage
passes both. So every image is decoded completely, which is parsing hostile data with a large
C library; the origin runs this module in the sandbox as a long-lived checker
(``python -m distren.images``, see :mod:`distren.checkers`) that is sent each image as an open
file, never a path, and answers with a verdict. The same checker compares a block of an upload
with the origin's own render of it when the origin verifies the upload (:mod:`distren.pixels`).

Pillow refuses images above about 179 Mpx as decompression bombs. A job may be up to
MAX_SIDE x MAX_SIDE, and the size is checked from the header before any pixel is decoded, so
the job's size, not Pillow's default, is the bound here (and only here).
"""

from __future__ import annotations

import os
import socket
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .errors import BundleError

# The largest side of any job's images. Defined here, not in jobfile (which imports it): this
# module starts in a fresh sandboxed interpreter, and importing jobfile would double what that
# start costs.
MAX_SIDE = 16384

SUFFIXES = {".png", ".tga", ".ppm", ".bmp", ".jpg", ".jpeg"}  # what Pillow decodes; others are not checked


class ImageError(BundleError):
    """An uploaded image that does not decode, or is not of the job's size."""


@contextmanager
def _bounded():
    """Pillow's bound on pixels, as the job's largest size, while an image is decoded."""
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = MAX_SIDE * MAX_SIDE
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def check_image(path: Path | BinaryIO, width: int, height: int, name: str) -> None:
    """Decode ``path`` (a file name or an open binary file) completely; it must be ``width`` x
    ``height``. ``name`` is how the image is called in the message (its name in the frame, never
    a path here)."""
    from PIL import Image

    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise ImageError(f"{name}: the job's size {width}x{height} is outside 1..{MAX_SIDE}")
    try:
        with _bounded(), warnings.catch_warnings():
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
        said = str(e) if isinstance(path, (str, Path)) else str(e).replace(repr(path), repr(name))
        raise ImageError(f"{name} is not a readable image ({type(e).__name__}: {said[:200]})") from None


OK = b"ok"
REFUSED = b"refused: "
COMPARE = b"compare "
MAX_REQUEST = 4096  # WIDTH HEIGHT NAME: a name is at most 1024 bytes (bundle.MAX_PATH_BYTES)


def serve(sock: socket.socket) -> int:
    """Answer requests sent on ``sock`` (a SOCK_SEQPACKET socket), one at a time, until it is
    closed. Nothing is kept from one request to the next but the loaded code.

    - ``WIDTH HEIGHT NAME`` with one open file: check the image (:func:`check_image`); the
      answer is ``ok`` or ``refused: PROBLEM``.
    - ``compare X0 Y0 X1 Y1`` with two open files, the upload and the origin's own render:
      compare that block (:func:`distren.pixels.verdict`); the answer is ``same``,
      ``differ: WHAT`` or ``unknown: WHY``.
    """
    from PIL import Image  # noqa: F401  (loaded before the first image, not during its time)

    from . import pixels

    while True:
        msg, fds, _, _ = socket.recv_fds(sock, MAX_REQUEST, 2)
        if not msg and not fds:
            return 0
        try:
            if msg.startswith(COMPARE):
                box = tuple(int(v) for v in msg[len(COMPARE):].split())
                if len(box) != 4 or len(fds) != 2:
                    raise ValueError("compare needs a box and two files")
                with os.fdopen(fds.pop(0), "rb") as got, os.fdopen(fds.pop(0), "rb") as want, _bounded():
                    answer = pixels.verdict(got, want, box).encode()  # type: ignore[arg-type]
            else:
                width, height, name = msg.decode().split(" ", 2)
                if len(fds) != 1:
                    raise ValueError("no file")
                with os.fdopen(fds.pop(), "rb") as f:
                    check_image(f, int(width), int(height), name)
                answer = OK
        except ImageError as e:
            answer = REFUSED + str(e).encode()
        except ValueError as e:
            answer = REFUSED + f"malformed request to the image checker ({e})".encode()
        finally:
            for fd in fds:
                os.close(fd)
        sock.sendall(answer)


def main() -> int:
    """The checker: requests come on standard input, a socket (see :func:`serve`)."""
    with socket.socket(fileno=sys.stdin.fileno()) as sock:
        return serve(sock)


if __name__ == "__main__":
    sys.exit(main())
