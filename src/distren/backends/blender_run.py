"""What runs inside the sandbox for the Blender backend: ``python -m distren.backends.blender_run``.

A .blend is a stranger's file: it may hold Python (text blocks registered to run at load,
drivers with Python expressions, handlers). It is opened with scripts off whatever the file
says (``use_scripts=False``), and Blender says when it blocked something
(``bpy.app.autoexec_fail``), which goes to the log. The sandbox does the rest: no network, no
host files but the system's, bounded memory, processes and time.

Two commands:

* ``info BLEND`` prints one JSON line: what ``distren pack`` reads from the file (frame range,
  resolution, output format, camera, samples, seed, and every external file it uses);
* ``render BLEND FRAME WIDTH HEIGHT SAMPLES SEED OUTPUT FORMAT TILE BOX`` renders one frame
  with Cycles on the CPU, writing the image where Blender's own ``blender -b BLEND -f FRAME``
  would (``OUTPUT`` is the output path pattern, relative to the .blend's folder; ``TILE``, unless
  ``-``, a tile's own name instead), and with ``BOX`` ``X0,Y0,X1,Y1`` (unless ``-``) only that
  part: a border render, full size, empty outside the box.
"""

from __future__ import annotations

import json
import os
import sys

INFO_PREFIX = "distren-blender-info: "


def _open(path: str):
    import bpy

    bpy.ops.wm.open_mainfile(filepath=os.path.abspath(path), load_ui=False, use_scripts=False)
    if bpy.app.autoexec_fail:
        print(f"distren: scripts in the .blend were not run ({bpy.app.autoexec_fail_message or 'auto-run is off'})",
              flush=True)
    return bpy


def info(path: str) -> None:
    bpy = _open(path)
    scene = bpy.context.scene
    r = scene.render
    pct = r.resolution_percentage / 100
    cycles = getattr(scene, "cycles", None)
    out = {
        "scene": scene.name,
        "engine": r.engine,
        "frame_start": scene.frame_start,
        "frame_end": scene.frame_end,
        "frame_step": scene.frame_step,
        "width": max(1, int(r.resolution_x * pct)),
        "height": max(1, int(r.resolution_y * pct)),
        "format": r.image_settings.file_format,
        "extension": r.file_extension,
        "filepath": r.filepath,
        "use_file_extension": r.use_file_extension,
        "camera": scene.camera.name if scene.camera else None,
        "samples": cycles.samples if cycles else None,
        "seed": cycles.seed if cycles else None,
        "animated_seed": bool(cycles.use_animated_seed) if cycles else False,
        "denoise": bool(cycles.use_denoising) if cycles else False,
        "compositing": bool(r.use_compositing and scene.compositing_node_group is not None)
        if hasattr(scene, "compositing_node_group") else bool(r.use_compositing and scene.use_nodes),
        "frame_current": scene.frame_current,
        "fps": round(r.fps / r.fps_base, 3),
        "frame_path": os.path.relpath(r.frame_path(frame=scene.frame_start), os.path.dirname(os.path.abspath(path))),
        "paths": sorted(bpy.utils.blend_paths(absolute=True, packed=False, local=False)),
        "raw_paths": sorted(bpy.utils.blend_paths(absolute=False, packed=False, local=False)),
        "packed": sorted(i.name for i in bpy.data.images if i.packed_file is not None),
        "libraries": sorted(lib.filepath for lib in bpy.data.libraries),
        "missing": sorted(lib.filepath for lib in bpy.data.libraries if lib.is_missing),
        "autoexec_blocked": bool(bpy.app.autoexec_fail),
    }
    print(INFO_PREFIX + json.dumps(out), flush=True)


def render(path: str, frame: int, width: int, height: int, samples: int, seed: int, output: str, fmt: str,
           tile: str | None, box: tuple[int, int, int, int] | None) -> None:
    bpy = _open(path)
    scene = bpy.context.scene
    r = scene.render
    if r.engine != "CYCLES":
        print(f"distren: the scene renders with {r.engine}; distren renders with Cycles", flush=True)
        r.engine = "CYCLES"
    c = scene.cycles
    c.device = "CPU"  # the same pixels everywhere: no GPU, whatever the file asks
    c.samples = samples
    c.seed = seed
    c.time_limit = 0.0  # a time limit makes the sample count, and so the pixels, depend on the machine
    r.resolution_x, r.resolution_y, r.resolution_percentage = width, height, 100
    r.filepath = "//" + output
    if r.image_settings.file_format != fmt:
        r.image_settings.file_format = fmt
    if box is not None:
        # Blender's border is in fractions of the image, from the bottom left, and it truncates
        # fraction x size to whole pixels: half a pixel in keeps float error off the edges.
        x0, y0, x1, y1 = box
        r.use_border, r.use_crop_to_border = True, False
        r.border_min_x, r.border_max_x = (x0 + 0.5) / width, (x1 + 0.5) / width
        r.border_min_y, r.border_max_y = (height - y1 + 0.5) / height, (height - y0 + 0.5) / height
    else:
        r.use_border = False
    scene.frame_set(frame)
    name = tile or os.path.relpath(r.frame_path(frame=frame), os.path.dirname(os.path.abspath(path)))
    print(f"distren: rendering frame {frame} of {os.path.basename(path)} to {name}", flush=True)
    # A still is written to the output path as it is: give it the name Blender gives the frame.
    r.filepath, r.use_file_extension = "//" + name, False
    bpy.ops.render.render(write_still=True)
    if not os.path.isfile(name):
        raise SystemExit(f"distren: Blender wrote no {name}")
    print(f"distren: wrote {name}", flush=True)


def main(argv: list[str]) -> None:
    if argv[:1] == ["info"] and len(argv) == 2:
        info(argv[1])
    elif argv[:1] == ["render"] and len(argv) == 11:
        tile = None if argv[9] == "-" else argv[9]
        box = None if argv[10] == "-" else tuple(int(v) for v in argv[10].split(","))
        render(argv[1], int(argv[2]), int(argv[3]), int(argv[4]), int(argv[5]), int(argv[6]), argv[7], argv[8],
               tile, box)
    else:
        raise SystemExit("usage: info BLEND | render BLEND FRAME WIDTH HEIGHT SAMPLES SEED OUTPUT FORMAT TILE BOX")


if __name__ == "__main__":
    main(sys.argv[1:])
