"""Which frames a packed job has, whatever its renderer: a frame range from ``--frames``, the
tiles of a still from ``--tiles`` (and the stitch frame that joins them), a movie's name."""

from __future__ import annotations

import re

from . import jobfile
from .errors import SceneError


def parse_frames(spec: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", spec or "")
    if not m:
        raise SceneError(f"--frames {spec!r}: use A-B (e.g. 1-12) or a single frame number")
    a = int(m.group(1))
    b = int(m.group(2)) if m.group(2) is not None else a
    if b < a:
        raise SceneError(f"--frames {spec!r}: the first frame is after the last")
    return a, b


def _splits(total: int, parts: int, block: int, what: str) -> list[int]:
    """Tile edges on multiples of the render block: with antialiasing, only such edges give
    tiles that stitch into exactly the full render (POV-Ray antialiases block by block)."""
    edges = [min(total, round(total * k / parts / block) * block) for k in range(parts)] + [total]
    if any(b <= a for a, b in zip(edges, edges[1:])):
        raise SceneError(
            f"--tiles: {total} px cannot be split into {parts} {what} whose edges fall on the {block}-px "
            f"render block; use fewer {what}, a larger image, or a smaller block (+BS in the INI)"
        )
    return edges


def tile_frames_for(spec: str, width: int, height: int, block: int, final: str) -> list[jobfile.Frame]:
    """CxR tile frames of a still written as ``final``, edges on the ``block`` grid, and the
    stitch frame that makes ``final`` of them."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", spec)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise SceneError(f"--tiles {spec!r}: use COLUMNSxROWS, e.g. 3x2")
    cols, rows = int(m.group(1)), int(m.group(2))
    xs = _splits(width, cols, block, "columns")
    ys = _splits(height, rows, block, "rows")
    stem = movie_stem(final)
    tiles = []
    for r in range(rows):
        for c in range(cols):
            n = r * cols + c
            region = f"{xs[c]},{ys[r]},{xs[c + 1]},{ys[r + 1]}"
            tiles.append(jobfile.Frame(n, settings={"region": region, "output": f"{stem}.tile{n}.png"}))
    stitch = jobfile.Frame(
        len(tiles), deps=tuple(f"frame/{t.id}" for t in tiles), type="stitch",
        settings={"output": final,
                  "tiles": ";".join(f"{t.settings['output']}@{t.settings['region']}" for t in tiles)})
    return tiles + [stitch]


def movie_stem(name: str) -> str:
    return name.rsplit(".", 1)[0]
