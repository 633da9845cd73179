"""POV-Ray's fractalzoom: distren (submit to download, one server already running with default
settings) against POV-Ray alone (one process rendering the same frames on all cores), alternating,
for a heavy job (12 frames at 160x120) and a light one (60 frames at 32x24). Prints each round,
the medians and the ratios, the load average around them (other work on the machine adds noise),
and checks that distren's frames have exactly POV-Ray's pixels.

    .venv/bin/python bench/fractalzoom.py [--rounds N] [--only heavy|light] [-- SERVE OPTIONS...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageChops

sys.path.insert(0, str(Path(__file__).parent))
from common import FRACTALZOOM, median, server  # noqa: E402

from distren.pack import pack  # noqa: E402

JOBS = {"heavy": (160, 120, 1, 12), "light": (32, 24, 1, 60)}


def povray(width: int, height: int, first: int, last: int, out: Path) -> float:
    shutil.copytree(FRACTALZOOM, out)
    t0 = time.perf_counter()
    subprocess.run(["povray", "fractalzoom.ini", f"+W{width}", f"+H{height}", f"+SF{first}", f"+EF{last}", "-D"],
                   cwd=out, check=True, capture_output=True)
    return time.perf_counter() - t0


def distren(client, width: int, height: int, first: int, last: int, out: Path) -> float:
    """Submit to download, as a user would: pack, upload, wait, fetch the frames."""
    out.mkdir()
    t0 = time.perf_counter()
    pack(FRACTALZOOM / "fractalzoom.ini", out / "job.tar", width, height, f"{first}-{last}")
    url = client.submit(out / "job.tar")
    st = client.wait(url, poll=0.05)
    assert st["state"] == "done", st
    client.download(url, out / "frames")
    return time.perf_counter() - t0


def same_pixels(pov: Path, dis: Path) -> int:
    """Frames compared; raises when one differs or is missing."""
    pngs = sorted(pov.glob("*.png"))
    assert pngs, f"POV-Ray wrote no frames in {pov}"
    for png in pngs:
        theirs = dis / png.name
        assert theirs.exists(), f"distren has no {png.name}"
        a, b = Image.open(png).convert("RGBA"), Image.open(theirs).convert("RGBA")
        assert a.size == b.size and ImageChops.difference(a, b).getbbox() is None, f"{png.name} differs"
    return len(pngs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", choices=sorted(JOBS))
    ap.add_argument("serve", nargs="*", help="options for distren serve (after --)")
    args = ap.parse_args()
    jobs = {args.only: JOBS[args.only]} if args.only else JOBS
    results = {}
    with server("bench", *args.serve) as (client, tmp):
        info = client.info()
        print(f"machine: {os.cpu_count()} cores; distren server with {info['slots']} slots "
              f"({' '.join(args.serve) or 'default settings'}); load average {os.getloadavg()[0]:.2f}")
        for name, (w, h, first, last) in jobs.items():
            p_times, d_times = [], []
            for r in range(args.rounds):
                work = Path(tempfile.mkdtemp(dir=tmp))
                # Alternate which goes first, so that neither always follows the other's tail.
                order = ("p", "d") if r % 2 == 0 else ("d", "p")
                for who in order:
                    if who == "p":
                        p_times.append(povray(w, h, first, last, work / "p"))
                    else:
                        d_times.append(distren(client, w, h, first, last, work / "d"))
                n = same_pixels(work / "p", work / "d" / "frames")
                shutil.rmtree(work)
                print(f"{name} {last - first + 1}x{w}x{h} round {r + 1}: povray {p_times[-1]:.2f} s   "
                      f"distren {d_times[-1]:.2f} s   ({n} frames pixel-identical; "
                      f"load {os.getloadavg()[0]:.2f})")
            results[name] = (median(p_times), median(d_times))
    for name, (p, d) in results.items():
        w, h, first, last = JOBS[name]
        print(f"{last - first + 1} frames {w}x{h}: median povray {p:.2f} s, distren {d:.2f} s, "
              f"ratio distren / povray = {d / p:.2f}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
