"""``distren pack``: turn a POV-Ray scene (an INI, a .pov or a folder) into a job bundle.

The bundle holds ``distrenjob.xml`` at its root and the scene's whole folder under ``scene/``,
so nested includes and image maps in subfolders travel along. The frame list comes from the INI
(``Key=value`` lines or switches); ``--frames A-B`` keeps a part of it without changing any
frame's clock or file name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from . import bundle, jobfile, povini
from .plan import movie_stem, parse_frames, tile_frames_for
from .backends import povray
from .errors import SceneError

# Debian's /etc/povray/3.7/povray.ini; renderers always pass the job's size explicitly anyway.
DEFAULT_WIDTH, DEFAULT_HEIGHT = 800, 600
GENERATED_INI = "distren-generated.ini"
DEFAULT_BLOCK = 32  # POV-Ray's render block size when the INI sets no +BS
SKIP_DIRS = {".git", ".hg", ".svn", "__pycache__"}
MAX_SCENE_BYTES = 2 * 1024**3
MAX_SCENE_FILES = 10_000


@dataclass(frozen=True)
class Packed:
    jobfile: jobfile.JobFile
    scene_dir: Path
    extra: dict[str, bytes]  # generated scene files (an INI for a bare .pov)


def _pick(folder: Path) -> Path:
    inis = sorted(p for p in folder.glob("*.ini") if p.is_file())
    if len(inis) == 1:
        return inis[0]
    if len(inis) > 1:
        names = ", ".join(p.name for p in inis)
        raise SceneError(f"{folder} holds several INI files ({names}); name the one to render")
    povs = sorted(p for p in folder.glob("*.pov") if p.is_file())
    if len(povs) == 1:
        return povs[0]
    if not povs:
        blends = sorted(p for p in folder.glob("*.blend") if p.is_file())
        if len(blends) == 1:
            return blends[0]
        if blends:
            raise SceneError(f"{folder} holds several .blend files ({', '.join(p.name for p in blends)}); "
                             "name the one to render")
        raise SceneError(f"{folder} holds no .ini or .pov file (nor a .blend); point distren at a POV-Ray "
                         "or Blender scene")
    names = ", ".join(p.name for p in povs)
    raise SceneError(f"{folder} holds several .pov files ({names}) and no INI; name the one to render")


def prepare(source: Path, width: int | None = None, height: int | None = None,
            frames: str | None = None, tiles: str | None = None, movie: bool = False,
            chain: bool = False) -> Packed:
    source = Path(source)
    if not source.exists():
        raise SceneError(f"{source}: no such file or folder")
    if source.is_dir():
        source = _pick(source)
    scene_dir = source.parent.resolve()
    extra: dict[str, bytes] = {}
    if source.suffix.lower() == ".ini":
        ini_name = source.name
        opts = povray.read_ini(scene_dir, ini_name)
        if not opts.input:
            raise SceneError(f"{source}: sets no Input_File_Name (or +I); distren cannot tell which scene to render")
        if not (scene_dir / opts.input).is_file():
            raise SceneError(f"{source}: Input_File_Name={opts.input} does not exist in {scene_dir}")
    elif source.suffix.lower() == ".pov":
        ini_name = GENERATED_INI
        text = f"; written by distren pack for {source.name}\nInput_File_Name={source.name}\n"
        if frames:
            a, b = parse_frames(frames)
            text += f"Initial_Frame={a}\nFinal_Frame={b}\nInitial_Clock=0\nFinal_Clock=1\n"
        extra[ini_name] = text.encode()
        opts = povini.parse(text, ini_name)
    else:
        raise SceneError(f"{source}: expected a .ini, a .pov or a folder")

    bounds = opts.frame_bounds()
    if frames and opts.animated:
        a, b = parse_frames(frames)
        if bounds is None or max(a, bounds[0]) > min(b, bounds[1]):
            shown = f"frames {bounds[0]}-{bounds[1]}" if bounds else "no frames"
            raise SceneError(f"--frames {frames}: {source.name} animates {shown}; pick frames in that range")
        bounds = max(a, bounds[0]), min(b, bounds[1])
    elif frames and not opts.animated:
        raise SceneError(f"--frames {frames}: {source.name} renders a still image, not an animation")
    if bounds is not None and bounds[1] - bounds[0] + 1 > jobfile.MAX_FRAMES:
        raise SceneError(
            f"{source.name} animates {bounds[1] - bounds[0] + 1} frames ({bounds[0]}-{bounds[1]}); a job holds at "
            f"most {jobfile.MAX_FRAMES}: pack a part of it with --frames A-B"
        )
    ids = list(range(bounds[0], bounds[1] + 1)) if bounds else [povray.STILL_FRAME]
    if any(i < 0 for i in ids):
        raise SceneError(f"{source.name}: distren frame numbers must not be negative (Initial_Frame={ids[0]})")

    base_w, base_h = opts.width or DEFAULT_WIDTH, opts.height or DEFAULT_HEIGHT
    w = width if width is not None else base_w
    h = height if height is not None else base_h
    # One side given: the other follows the scene's aspect ratio (never the INI's other side
    # unchanged, which would stretch the image).
    if width is not None and height is None:
        h = max(1, round(width * base_h / base_w))
    elif height is not None and width is None:
        w = max(1, round(height * base_w / base_h))
    for label, v in (("width", w), ("height", h)):
        if not 1 <= v <= jobfile.MAX_SIDE:
            raise SceneError(f"--{label} {v}: must be between 1 and {jobfile.MAX_SIDE}")
    frames = [jobfile.Frame(i) for i in ids]
    if tiles:
        if opts.animated:
            raise SceneError(f"--tiles {tiles}: {source.name} is an animation; tiles split one still image")
        frames = tile_frames(tiles, w, h, opts)
    if chain:
        frames = [replace(f, deps=(f"frame/{prev.id}",)) if prev else f
                  for prev, f in zip([None] + frames[:-1], frames)]
    if movie:
        if not opts.animated:
            raise SceneError(f"--movie: {source.name} renders a still image; a movie needs an animation")
        frames.append(movie_frame(frames, opts))
    jf = jobfile.JobFile(type=povray.NAME, width=w, height=h, frames=tuple(frames), settings={"ini": ini_name})
    return Packed(jf, scene_dir, extra)


def tile_frames(spec: str, width: int, height: int, opts: povini.IniOptions) -> list[jobfile.Frame]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", spec)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise SceneError(f"--tiles {spec!r}: use COLUMNSxROWS, e.g. 3x2")
    cols, rows = int(m.group(1)), int(m.group(2))
    if (opts.file_type or "n")[:1].lower() != "n":
        raise SceneError(f"--tiles: the INI writes {opts.file_type!r} images; tiles are stitched into PNG only "
                         "(remove Output_File_Type / +F from the INI)")
    return tile_frames_for(spec, width, height, opts.block_size or DEFAULT_BLOCK, opts.output_name(None))


def movie_frame(frames: list[jobfile.Frame], opts: povini.IniOptions, fps: int = 24) -> jobfile.Frame:
    stem = movie_stem(opts.output_name(None))
    return jobfile.Frame(
        max(f.id for f in frames) + 1, deps=tuple(f"frame/{f.id}" for f in frames), type="movie",
        settings={"output": f"{stem}.mp4", "fps": str(fps),
                  "inputs": ";".join(opts.output_name(f.id) for f in frames)})


def scene_members(packed: Packed) -> list[tuple[str, Path | bytes]]:
    """The scene folder's files, minus version-control folders and the animation's own earlier
    output images (a folder where the scene was rendered before holds them)."""
    opts = povray.read_ini(packed.scene_dir, packed.jobfile.settings["ini"]) if not packed.extra else None
    outputs = set()
    if opts is not None:
        outputs = {opts.output_name(f.id if opts.animated else None) for f in packed.jobfile.frames}
        bounds = opts.frame_bounds()
        if bounds and bounds[1] - bounds[0] < jobfile.MAX_FRAMES:  # a part of a vast animation: its own frames only
            outputs |= {opts.output_name(i) for i in range(bounds[0], bounds[1] + 1)}
    members: list[tuple[str, Path | bytes]] = []
    total = 0
    for name, path in bundle.tree_members(packed.scene_dir):
        if SKIP_DIRS & set(name.split("/")[:-1]) or name in outputs or name in packed.extra:
            continue
        total += path.stat().st_size
        members.append((f"scene/{name}", path))
        if len(members) > MAX_SCENE_FILES or total > MAX_SCENE_BYTES:
            raise SceneError(
                f"{packed.scene_dir} holds more than {MAX_SCENE_FILES} files or {MAX_SCENE_BYTES} bytes; "
                "put the scene in a folder of its own"
            )
    members += [(f"scene/{n}", data) for n, data in packed.extra.items()]
    return members


def pack(source: Path, output: Path, width: int | None = None, height: int | None = None,
         frames: str | None = None, tiles: str | None = None, movie: bool = False,
         chain: bool = False) -> jobfile.JobFile:
    """Write a bundle. ``tiles="CxR"`` splits a still into tile frames plus a stitch frame;
    ``movie`` adds a frame that encodes the animation as an MP4; ``chain`` makes each frame
    depend on the one before (for scenes that read the previous frame's image). A .blend is
    Blender's (:mod:`distren.pack_blend`)."""
    source = _pick(Path(source)) if Path(source).is_dir() else Path(source)
    if source.suffix.lower() == ".blend" and source.is_file():
        from . import pack_blend

        jf, members = pack_blend.prepare(source, width, height, frames, tiles, movie, chain)
    else:
        packed = prepare(source, width, height, frames, tiles, movie, chain)
        jf, members = packed.jobfile, scene_members(packed)
    members.append((jobfile.FILENAME, jf.to_xml()))
    bundle.write_tar(Path(output), members)
    return jf
