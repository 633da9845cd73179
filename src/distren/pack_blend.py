"""``distren pack scene.blend``: a Blender scene into a job bundle.

What to render comes from the .blend itself: the frame range (and step), the resolution (with
its percentage), the output path and format, the camera, the sample count and seed. Options
override the size and the frames. The .blend is read by Blender in the sandbox, like any other
stranger's file, with its folder mounted read-only: Blender lists every external file the scene
uses (images, linked libraries and the files they use in turn, caches, fonts, sounds), and the
bundle holds the .blend and those files only, at their places relative to it. A file that is
missing, or outside the .blend's folder (where no renderer could find it), is refused by name.
Files packed into the .blend travel inside it.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path, PurePosixPath

from . import bundle, jobfile, sandbox
from .plan import movie_stem, parse_frames, tile_frames_for
from .backends import available, blender
from .errors import SceneError

INSIDE = "scene"  # where the .blend's folder is mounted in the sandbox, below /work
INFO_LIMITS = sandbox.Limits(wall=120.0, processes=64)
MAX_FILES = 10_000
MAX_BYTES = 2 * 1024**3


def read(source: Path) -> dict:
    """What Blender says of the .blend (see :func:`distren.backends.blender_run.info`)."""
    from .backends import blender_run

    if blender.NAME not in available():
        raise SceneError(f"{source}: reading a .blend needs Blender here (the bpy module); "
                         "`make setup` installs it")
    folder = source.parent.resolve()
    with tempfile.TemporaryDirectory(prefix="distren-blend-") as tmp:
        argv, binds = sandbox.python_command(blender.RUNNER, ["info", f"{INSIDE}/{source.name}"])
        log = Path(tmp) / "log"
        work = Path(tmp) / "work"
        work.mkdir()
        out = sandbox.run(argv, work, INFO_LIMITS, log, shared={INSIDE: folder}, binds=binds)
    lines = [ln for ln in out.tail.splitlines() if ln.startswith(blender_run.INFO_PREFIX)]
    if out.returncode != 0 or not lines:
        said = out.reason or blender.error_summary(out.tail)
        raise SceneError(f"{source}: Blender cannot read it ({said})")
    return json.loads(lines[-1][len(blender_run.INFO_PREFIX):])


def _files(source: Path, info: dict) -> list[tuple[str, Path]]:
    """(name in the bundle, host path) of every external file the scene uses."""
    folder = source.parent.resolve()
    root = f"{sandbox.WORKDIR}/{INSIDE}/"
    out: list[tuple[str, Path]] = []
    for path, raw in zip(info["paths"], info["raw_paths"]):
        if "/datafiles/assets/" in path:
            continue  # Blender's own bundled assets (its essentials brushes): every Blender has its own
        if not path.startswith(root) or not raw.startswith("//"):
            raise SceneError(
                f"{source.name} uses {raw}, which is outside its folder {folder}: renderers get the .blend's "
                "folder only. Keep the files it uses in that folder (or below it) with relative paths "
                "(File > External Data > Make Paths Relative), or pack them into the .blend "
                "(File > External Data > Pack Resources)")
        rel = PurePosixPath(path[len(root):])
        host = folder / rel
        if ".." in rel.parts or not host.resolve().is_relative_to(folder):
            raise SceneError(f"{source.name} uses {raw}, which leads outside its folder {folder}")
        if host.is_dir():
            out += bundle.tree_members(host, f"{rel.as_posix()}/")
        elif host.is_file():
            out.append((rel.as_posix(), host))
        else:
            raise SceneError(f"{source.name} uses {raw}, which does not exist ({host}); put the file there, "
                             "or remove it from the scene (File > External Data > Report Missing Files lists them)")
    return out


def prepare(source: Path, width: int | None, height: int | None, frames: str | None, tiles: str | None,
            movie: bool, chain: bool) -> tuple[jobfile.JobFile, list[tuple[str, Path | bytes]]]:
    info = read(source)
    fmt = info["format"]
    if fmt not in blender.EXTENSIONS:
        raise SceneError(f"{source.name} writes {fmt} (a movie); distren renders frames as images: set an image "
                         "format such as PNG in Output Properties, and pack with --movie to encode them")
    output = blender.output_pattern(info["filepath"])
    start, end, step = info["frame_start"], info["frame_end"], max(1, info["frame_step"])
    said = info["frame_path"] if info["filepath"].startswith("//") else PurePosixPath(info["frame_path"]).name
    if not info["use_file_extension"] or blender.frame_name(output, start, fmt) != said:
        raise SceneError(f"{source.name}: Blender names frame {start} {said!r}, which distren cannot work out; "
                         "use an output path such as //render/frame_#### with File Extensions on")
    if frames:
        a, b = parse_frames(frames)
        if max(a, start) > min(b, end):
            raise SceneError(f"--frames {frames}: {source.name} animates frames {start}-{end}; pick frames in that range")
        start, end = max(a, start), min(b, end)
    ids = list(range(start, end + 1, step))
    if len(ids) > jobfile.MAX_FRAMES:
        raise SceneError(f"{source.name} animates {len(ids)} frames; a job holds at most {jobfile.MAX_FRAMES}: "
                         "pack a part of it with --frames A-B")
    if ids[0] < 0:
        raise SceneError(f"{source.name}: distren frame numbers must not be negative (frame_start={ids[0]})")
    w, h = width or info["width"], height or info["height"]
    for label, v in (("width", w), ("height", h)):
        if not 1 <= v <= jobfile.MAX_SIDE:
            raise SceneError(f"--{label} {v}: must be between 1 and {jobfile.MAX_SIDE}")
    if info["camera"] is None:
        raise SceneError(f"{source.name}: its scene {info['scene']!r} has no camera; Blender cannot render it")
    settings = {"blend": source.name, "output": output, "format": fmt, "samples": str(info["samples"] or 1),
                "seed": str(info["seed"] or 0), "denoise": "1" if info["denoise"] else "0",
                "compositing": "1" if info["compositing"] else "0"}
    job_frames = [jobfile.Frame(i) for i in ids]
    if tiles:
        if info["denoise"] or info["compositing"]:
            raise SceneError(f"--tiles {tiles}: {source.name} uses denoising or the compositor, which mix "
                             "neighbouring pixels, so tiles would not stitch into the full render: turn them off")
        still = info["frame_current"]
        settings["still"] = str(still)
        final = blender.frame_name(output, still, fmt)
        if fmt != "PNG":
            raise SceneError(f"--tiles: {source.name} writes {fmt} images; tiles are stitched into PNG only")
        job_frames = tile_frames_for(tiles, w, h, 1, final)  # Cycles renders each pixel alone: any edge will do
    if chain:
        job_frames = [replace(f, deps=(f"frame/{prev.id}",)) if prev else f
                      for prev, f in zip([None] + job_frames[:-1], job_frames)]
    if movie:
        if tiles:
            raise SceneError("--movie: tiles make one still image; a movie needs an animation")
        names = [blender.frame_name(output, f.id, fmt) for f in job_frames]
        job_frames.append(jobfile.Frame(
            max(f.id for f in job_frames) + 1, deps=tuple(f"frame/{f.id}" for f in job_frames), type="movie",
            settings={"output": f"{movie_stem(names[0])}.mp4", "fps": f"{info['fps']:g}", "inputs": ";".join(names)}))
    jf = jobfile.JobFile(type=blender.NAME, width=w, height=h, frames=tuple(job_frames), settings=settings)
    members: list[tuple[str, Path | bytes]] = [(f"scene/{source.name}", source)]
    total = source.stat().st_size
    for name, path in _files(source, info):
        members.append((f"scene/{name}", path))
        total += path.stat().st_size
        if len(members) > MAX_FILES or total > MAX_BYTES:
            raise SceneError(f"{source.name} uses more than {MAX_FILES} files or {MAX_BYTES} bytes")
    return jf, list(dict(members).items())
