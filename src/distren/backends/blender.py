"""The Blender backend: Blender 5.0 as a Python module (PyPI's ``bpy``), Cycles on the CPU.

One frame is one sandboxed Python process that imports ``bpy``, opens the job's .blend with its
scripts off and renders the frame (:mod:`distren.backends.blender_run`). The job's
distrenjob.xml fixes what makes the pixels: the size, the sample count and the seed (``distren
pack`` reads them from the .blend), and the renderer forces Cycles on the CPU and no time limit.
With those, a frame is the same pixels as Blender's own render of it, whatever the number of
threads (measured: see the README).

Output files are named as Blender names them: the .blend's output path (relative to its
folder; an absolute one keeps only its file name part), its ``#`` run replaced by the frame
number, or four digits appended, and the format's extension. The name is worked out here,
without Blender, because an origin that checks uploads need not have Blender installed.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import re
from pathlib import Path, PurePosixPath

from .. import names, sandbox
from ..errors import JobFileError, LimitExceeded, RenderError
from ..jobfile import Frame, JobFile
from .povray import parse_region, produced_since, snapshot

NAME = "blender"
RUNNER = "distren.backends.blender_run"
MAX_SAMPLES = 1 << 20
MAX_SUMMARY = 600
BLOCK_SIZE = 32
# Image formats Blender writes, by its name, with the extension it gives them. Movies are not
# frames: pack renders PNG frames and encodes them with --movie instead.
EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TARGA": ".tga", "TARGA_RAW": ".tga",
              "TIFF": ".tif", "OPEN_EXR": ".exr", "OPEN_EXR_MULTILAYER": ".exr", "HDR": ".hdr",
              "WEBP": ".webp", "IRIS": ".rgb", "JPEG2000": ".jp2", "CINEON": ".cin", "DPX": ".dpx"}

# What Blender takes for an image file's extension, and replaces with the format's.
IMAGE_EXTENSIONS = set(EXTENSIONS.values()) | {".jpeg", ".tiff", ".j2c", ".sgi", ".bw", ".rgba", ".psd", ".pdd",
                                               ".psb", ".avif", ".dds"}


def frame_name(output: str, frame: int, fmt: str) -> str:
    """Blender's name for ``frame``'s image (``RenderSettings.frame_path``): the last run of
    ``#`` in ``output`` becomes the frame number padded to its length, or, with no ``#``, four
    digits are appended; then the format's extension, unless the name already ends with it."""
    runs = list(re.finditer(r"#+", output))
    if runs:
        m = runs[-1]
        name = output[:m.start()] + f"{frame:0{len(m.group())}d}" + output[m.end():]
    else:
        name = f"{output}{frame:04d}"
    ext = EXTENSIONS[fmt]
    if fmt == "JPEG" and name.lower().endswith(".jpeg"):
        return name
    stem, dot, old = name.rpartition(".")
    if dot and "/" not in old and f".{old.lower()}" in IMAGE_EXTENSIONS:
        name = stem  # an image extension is replaced by the format's own
    return name + ext


def output_pattern(blend_filepath: str) -> str:
    """The output setting for a .blend's ``render.filepath``: relative to the .blend's folder
    (``//``), or, for an absolute path such as Blender's default ``/tmp/``, its last part."""
    if blend_filepath.startswith("//"):
        return blend_filepath[2:]
    return blend_filepath.replace("\\", "/").rsplit("/", 1)[-1]


def _int(jf: JobFile, key: str, lo: int, hi: int) -> int:
    return int(names.number(jf.settings.get(key, ""), f"<blender {key}>", lo, hi, "a whole number"))


def _flag(jf: JobFile, key: str) -> bool:
    return jf.settings.get(key, "0") == "1"


def error_summary(log_text: str) -> str:
    """Blender's own words out of its log: its errors, and the last line of a Python traceback."""
    lines = [ln.strip() for ln in log_text.splitlines() if ln.strip()]
    picked = [ln for ln in lines if re.search(r"error|cannot|can't|failed|not found|exception|out of memory", ln, re.I)
              and not ln.startswith(("File ", "Traceback"))]
    text = " | ".join(dict.fromkeys(picked[-6:] or lines[-3:]))
    return text if len(text) <= MAX_SUMMARY else text[:MAX_SUMMARY - 3] + "..."


class BlenderBackend:
    name = NAME
    scene = True
    deterministic = True  # Cycles, CPU, fixed samples and seed: measured exact (README)

    def version(self) -> str | None:
        return _version()

    def blend(self, jf: JobFile) -> str:
        name = jf.settings.get("blend", "")
        if not name:
            raise JobFileError('distrenjob.xml: <blender> needs a blend="NAME.blend" attribute naming the scene')
        names.plain(name, "<blender blend>")
        if len(PurePosixPath(name).parts) != 1 or not name.lower().endswith(".blend"):
            raise JobFileError(f"distrenjob.xml: <blender blend={name!r}> must name a .blend file at the top of scene/")
        return name

    def check_scene(self, jf: JobFile, scene_dir: Path) -> None:
        name = self.blend(jf)
        if not (Path(scene_dir) / name).is_file():
            raise JobFileError(f"distrenjob.xml: <blender blend={name!r}>: the bundle has no scene/{name}")
        for f in jf.frames:
            if f.backend(jf.type) == NAME:
                self.check_frame(jf, f)

    def check_frame(self, jf: JobFile, frame: Frame) -> None:
        self.blend(jf)
        _int(jf, "samples", 1, MAX_SAMPLES)
        _int(jf, "seed", 0, (1 << 31) - 1)
        fmt = jf.settings.get("format", "")
        if fmt not in EXTENSIONS:
            raise JobFileError(f"distrenjob.xml: <blender format={fmt!r}> is not an image format Blender writes "
                               f"({', '.join(EXTENSIONS)})")
        if frame.settings.get("region"):
            parse_region(frame.settings["region"], jf.width, jf.height, f"tile frame/{frame.id} region")
            if not frame.settings.get("output"):
                raise JobFileError(f"distrenjob.xml: tile frame/{frame.id} needs an output=\"NAME.png\" setting")
            _int(jf, "still", 0, 1 << 30)
        self.expected_files(jf, frame, None)

    def scene_frame(self, jf: JobFile, frame: Frame) -> int:
        """The .blend's frame number a distren frame renders: its own, or for a tile the still's."""
        return _int(jf, "still", 0, 1 << 30) if frame.settings.get("region") else frame.id

    def expected_files(self, jf: JobFile, frame: Frame, scene_dir: Path | None) -> list[str]:
        if frame.settings.get("output"):
            return [names.plain(frame.settings["output"], f"tile frame/{frame.id} output")]
        name = frame_name(jf.settings.get("output", ""), frame.id, jf.settings.get("format", "PNG"))
        return [names.plain(name, f"<blender output> of frame/{frame.id}")]

    def blocks(self, jf: JobFile, frame: Frame, scene_dir: Path) -> list[tuple[int, int, int, int]]:
        """Square blocks of the image: Cycles renders each pixel alone, so a border render of a
        block is exactly those pixels of the whole, unless denoising or the compositor mixes
        neighbours (then the frame is not checked by part)."""
        if _flag(jf, "denoise") or _flag(jf, "compositing"):
            return []
        x0, y0, x1, y1 = (parse_region(frame.settings["region"], jf.width, jf.height)
                          if frame.settings.get("region") else (0, 0, jf.width, jf.height))
        return [(x, y, min(x + BLOCK_SIZE, x1), min(y + BLOCK_SIZE, y1))
                for y in range(y0, y1, BLOCK_SIZE) for x in range(x0, x1, BLOCK_SIZE)]

    def render(self, jf: JobFile, frame: Frame, workdir: Path, log: Path, limits: sandbox.Limits,
               on_start=None, shared: dict[str, Path] | None = None) -> list[str]:
        box = parse_region(frame.settings["region"], jf.width, jf.height) if frame.settings.get("region") else None
        self._run(jf, frame, workdir, log, limits, on_start, shared, box)
        return self.expected_files(jf, frame, None)

    def render_region(self, jf: JobFile, frame: Frame, workdir: Path, log: Path, limits: sandbox.Limits,
                      box: tuple[int, int, int, int], shared: dict[str, Path] | None = None) -> str:
        self._run(jf, frame, workdir, log, limits, None, shared, box)
        return self.expected_files(jf, frame, None)[0]

    def _run(self, jf: JobFile, frame: Frame, workdir: Path, log: Path, limits: sandbox.Limits,
             on_start, shared: dict[str, Path] | None, box: tuple[int, int, int, int] | None) -> None:
        workdir = Path(workdir)
        self.check_frame(jf, frame)  # again: on a peer, the origin's settings are untrusted too
        expected = self.expected_files(jf, frame, None)[0]
        args = ["render", self.blend(jf), str(self.scene_frame(jf, frame)), str(jf.width), str(jf.height),
                str(_int(jf, "samples", 1, MAX_SAMPLES)), str(_int(jf, "seed", 0, (1 << 31) - 1)),
                jf.settings.get("output", ""), jf.settings["format"],
                expected if frame.settings.get("output") else "-",
                ",".join(map(str, box)) if box else "-"]
        argv, binds = sandbox.python_command(RUNNER, args)
        with open(log, "ab") as logf:
            logf.write(f"==== distren: blender {' '.join(args)}\n".encode())
        before = snapshot(workdir)
        out = sandbox.run(argv, workdir, limits, log, shared=shared, binds=binds, on_start=on_start)
        with open(log, "ab") as logf:
            logf.write(f"==== distren: exit {out.returncode} after {out.elapsed:.2f} s\n".encode())
        said = error_summary(out.tail)
        if out.limit:
            raise LimitExceeded(out.reason + (f" (Blender: {said})" if said else ""))
        if out.returncode < 0:
            raise RenderError(f"Blender was stopped by signal {-out.returncode}")
        if out.returncode != 0 or expected not in produced_since(workdir, before):
            limit = sandbox.explain(out, limits)
            if limit:
                raise LimitExceeded(limit + (f" (Blender: {said})" if said else ""))
            if out.returncode == 0:
                said = f"Blender wrote no {expected}" + (f" ({said})" if said else "")
            raise RenderError(said or f"Blender exited with status {out.returncode}")


@functools.cache
def _version() -> str | None:
    """The installed bpy's version ("5.0.1"), or None when this Python has no Blender. Read
    from the package's metadata: importing bpy costs a second and half a gigabyte."""
    if importlib.util.find_spec("bpy") is None:
        return None
    try:
        return importlib.metadata.version("bpy")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
