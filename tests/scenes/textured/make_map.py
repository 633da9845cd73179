"""Regenerate maps/checker.png, the image map used by textured.pov.

A 16x16 colourful checker: 4x4 cells of 4x4 pixels, each cell a different
hue, so an image-mapping mistake (flipped, shifted, missing file) is visible.
Deterministic: running it again produces a byte-identical file.

Usage:  python make_map.py      (needs Pillow)
"""

from pathlib import Path

from PIL import Image

SIZE = 16
CELL = 4

PALETTE = [
    (230, 57, 70), (244, 162, 97), (233, 196, 106), (42, 157, 143),
    (38, 70, 83), (69, 123, 157), (168, 218, 220), (241, 250, 238),
    (131, 56, 236), (58, 134, 255), (255, 0, 110), (251, 86, 7),
    (255, 190, 11), (6, 214, 160), (17, 138, 178), (7, 59, 76),
]


def make_image() -> Image.Image:
    img = Image.new("RGB", (SIZE, SIZE))
    px = img.load()
    for y in range(SIZE):
        for x in range(SIZE):
            cx, cy = x // CELL, y // CELL
            r, g, b = PALETTE[cy * (SIZE // CELL) + cx]
            if (cx + cy) % 2:  # darken alternate cells: a visible checker
                r, g, b = r // 2, g // 2, b // 2
            px[x, y] = (r, g, b)
    return img


def main() -> None:
    out = Path(__file__).resolve().parent / "maps" / "checker.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    make_image().save(out, format="PNG", optimize=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
