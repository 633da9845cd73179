"""distren against Blender alone on the same frames: the tests' scene (tests/blender_scenes.py) at
320x240 and 16 samples, 24 frames (or as the arguments say). Blender alone is one process rendering the animation
(``bpy.ops.render.render(animation=True)``, as ``blender -b -a``, on all cores); distren is one
server with --slots 1 and 2, submit to download, each frame a sandboxed process that imports
bpy and opens the .blend again. Prints each time (median of ROUNDS) and distren's over Blender's.

    .venv/bin/python bench/blender.py [ROUNDS] [FRAMES] [SAMPLES] [WIDTHxHEIGHT]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import distren_run, median, server  # noqa: E402


SCENES = Path(__file__).resolve().parents[1] / "tests" / "blender_scenes.py"
SETUP = """
import bpy, sys
bpy.ops.wm.open_mainfile(filepath=sys.argv[1], load_ui=False, use_scripts=False)
s = bpy.context.scene
s.render.resolution_x, s.render.resolution_y = int(sys.argv[2]), int(sys.argv[3])
s.cycles.samples, s.frame_end = int(sys.argv[4]), int(sys.argv[5])
bpy.ops.wm.save_mainfile()
"""


def blender_alone(blend: Path) -> float:
    out = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(SCENES), "own", str(blend), str(out)], check=True, capture_output=True)
    elapsed = time.perf_counter() - t0
    shutil.rmtree(out)
    return elapsed


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    frames = int(sys.argv[2]) if len(sys.argv) > 2 else 24
    samples = int(sys.argv[3]) if len(sys.argv) > 3 else 16
    w, h = (int(v) for v in (sys.argv[4] if len(sys.argv) > 4 else "320x240").split("x"))
    print(f"machine: {os.cpu_count()} cores; {frames} frames at {w}x{h}, {samples} samples")
    tmp = Path(tempfile.mkdtemp(prefix="distren-bench-blender-"))
    try:
        subprocess.run([sys.executable, str(SCENES), "make", str(tmp / "scene")], check=True, capture_output=True)
        blend = tmp / "scene" / "anim.blend"
        subprocess.run([sys.executable, "-c", SETUP, str(blend), str(w), str(h), str(samples), str(frames)],
                       check=True, capture_output=True)
        alone = median([blender_alone(blend) for _ in range(rounds)])
        print(f"Blender alone, one process: {alone:.2f} s ({alone / frames:.2f} s a frame)")
        for slots in (1, 2):
            with server(f"blender{slots}", "--slots", str(slots)) as (client, work):
                t = median([distren_run(client, blend, None, None, None, work) for _ in range(rounds)])
            print(f"distren --slots {slots}: {t:.2f} s ({t / frames:.2f} s a frame), {t / alone:.2f}x Blender alone")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
