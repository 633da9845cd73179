"""Frames that are made from other frames' files rather than rendered from the scene:

* ``stitch`` assembles tiles (POV-Ray partial renders, full-size and black outside their
  region) into the image the full render would have written;
* ``movie`` encodes a job's frames into an MP4 with the ffmpeg bundled in imageio-ffmpeg.

Their inputs are the files of the frames they depend on, which the server places in the
working folder before calling :meth:`render`. Those files are job data (a peer made them), and
the names come from distrenjob.xml, so both run in the sandbox like a scene, within the same
limits and without network: the stitcher as ``python -m distren.backends.stitch`` (Pillow's
decoders never see job data in the server's process), ffmpeg read-only mounted, allowed only
the ``file`` protocol, and given only names that :func:`distren.names.plain` accepts.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
from pathlib import Path, PurePosixPath

from .. import names, sandbox
from ..errors import JobFileError, LimitExceeded, RenderError
from ..jobfile import Frame, JobFile
from .povray import parse_region, produced_since, snapshot

FFMPEG = f"{sandbox.PY_ROOT}/ffmpeg"
MAX_FPS = 240
MOVIE_INPUTS = (".png", ".tga", ".ppm", ".bmp", ".jpg", ".jpeg", ".exr", ".hdr")  # images POV-Ray writes


def tiles_of(frame: Frame, jf: JobFile) -> list[tuple[str, tuple[int, int, int, int]]]:
    """The stitch frame's ``tiles`` setting: ``NAME@x0,y0,x1,y1`` entries separated by ``;``."""
    field = f"stitch frame/{frame.id} tiles"
    out = []
    for entry in frame.settings.get("tiles", "").split(";"):
        name, sep, region = entry.partition("@")
        if not sep:
            raise JobFileError(f"distrenjob.xml: {field}: entry {entry!r} is not NAME@x0,y0,x1,y1")
        out.append((names.plain(name, field), parse_region(region, jf.width, jf.height, field)))
    return out


def _fail(outcome: sandbox.Outcome, limits: sandbox.Limits, what: str) -> RenderError:
    limit = sandbox.explain(outcome, limits)
    if limit:
        return LimitExceeded(limit)
    last = [ln.strip()[:300] for ln in outcome.tail.splitlines() if ln.strip()][-3:]
    return RenderError(f"{what} failed: {' | '.join(last) or f'exit {outcome.returncode}'}")


def _outputs(workdir: Path, before, output: str, outcome, limits, what: str) -> list[str]:
    if not outcome.ok:
        raise _fail(outcome, limits, what)
    if output not in produced_since(workdir, before):
        raise RenderError(f"{what} wrote no {output}")
    return [output]


class _NotByPart:
    """Frames made from other frames' files: an origin would first have to place those files
    to render part of one, so they are not checked by part (a quorum of two is left to do)."""

    def blocks(self, jf: JobFile, frame: Frame, scene_dir: Path) -> list[tuple[int, int, int, int]]:
        return []

    def render_region(self, jf, frame, workdir, log, limits, box, shared=None) -> str:
        raise RenderError(f"{self.name} frames are not rendered by part")  # type: ignore[attr-defined]


class StitchBackend(_NotByPart):
    name = "stitch"
    scene = False
    deterministic = True  # pixels copied from the tiles

    def version(self) -> str | None:
        import PIL

        return f"Pillow {PIL.__version__}"

    def check_scene(self, jf: JobFile, scene_dir: Path) -> None:
        pass  # never a job's type: see backends.for_job

    def check_frame(self, jf: JobFile, frame: Frame) -> None:
        if not self.expected_files(jf, frame, None)[0].lower().endswith(".png"):
            raise JobFileError(f"distrenjob.xml: stitch frame/{frame.id}: output must be a .png file")
        tiles_of(frame, jf)

    def expected_files(self, jf: JobFile, frame: Frame, scene_dir) -> list[str]:
        return [names.plain(frame.settings.get("output", ""), f"stitch frame/{frame.id} output")]

    def render(self, jf: JobFile, frame: Frame, workdir: Path, log: Path, limits: sandbox.Limits,
               on_start=None, shared=None) -> list[str]:
        self.check_frame(jf, frame)  # again: on a peer, the origin's settings are untrusted too
        output = self.expected_files(jf, frame, None)[0]
        args = [str(jf.width), str(jf.height), output] + [f"{n}@{','.join(map(str, box))}" for n, box in tiles_of(frame, jf)]
        argv, binds = sandbox.python_command(__name__, args)
        before = snapshot(workdir)
        with open(log, "ab") as f:
            f.write(f"==== distren: stitch {' '.join(args)}\n".encode())
        outcome = sandbox.run(argv, workdir, limits, log, shared=shared, binds=binds, on_start=on_start)
        return _outputs(Path(workdir), before, output, outcome, limits, "stitch")


def stitch(width: int, height: int, output: str, tiles: list[tuple[str, tuple[int, int, int, int]]]) -> None:
    """In the sandbox: paste each tile's region onto one canvas and write it as PNG."""
    from PIL import Image

    # Opening reads only the header: the size is checked before any pixel is decoded, so the
    # job's size, not Pillow's default, is the bound (a job may be 16384x16384).
    Image.MAX_IMAGE_PIXELS = None
    canvas = None
    for name, box in tiles:
        if not os.path.isfile(name):
            raise SystemExit(f"stitch: tile {name} is missing from the frame's inputs")
        with Image.open(name) as tile:
            if tile.size != (width, height):
                raise SystemExit(f"stitch: tile {name} is {tile.size[0]}x{tile.size[1]}, not {width}x{height}")
            if canvas is None:
                canvas = Image.new(tile.mode, tile.size)
            canvas.paste(tile.crop(box), box[:2])
        print(f"stitch: {name} -> {box}")
    if canvas is None:
        raise SystemExit("stitch: no tiles")
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(output, format="PNG")
    print(f"stitch: wrote {output}")


def main(args: list[str]) -> None:
    width, height, output, *entries = args
    tiles = []
    for entry in entries:
        name, _, region = entry.partition("@")
        tiles.append((names.plain(name, "tile"), parse_region(region, int(width), int(height), "tile")))
    stitch(int(width), int(height), names.plain(output, "output"), tiles)


class MovieBackend(_NotByPart):
    name = "movie"
    scene = False
    deterministic = False  # an encoder's bytes may differ from run to run

    def version(self) -> str | None:
        import imageio_ffmpeg

        try:
            return f"ffmpeg {imageio_ffmpeg.get_ffmpeg_version()}"
        except (OSError, RuntimeError):
            return None

    def check_scene(self, jf: JobFile, scene_dir: Path) -> None:
        pass  # never a job's type: see backends.for_job

    def check_frame(self, jf: JobFile, frame: Frame) -> None:
        self.expected_files(jf, frame, None)
        self._fps(frame)
        self._inputs(frame)

    def _fps(self, frame: Frame) -> str:
        fps = frame.settings.get("fps", "24")
        names.number(fps, f"movie frame/{frame.id} fps", 0, MAX_FPS, "a number of frames per second")
        return fps

    def _inputs(self, frame: Frame) -> list[str]:
        field = f"movie frame/{frame.id} inputs"
        if not frame.settings.get("inputs"):
            raise JobFileError(f"distrenjob.xml: movie frame/{frame.id} lists no inputs")
        inputs = names.plain_list(frame.settings["inputs"], field)
        kinds = {PurePosixPath(n).suffix.lower() for n in inputs}
        if len(kinds) != 1 or not kinds <= set(MOVIE_INPUTS):
            raise JobFileError(f"distrenjob.xml: {field}: the images must all be of one type, named with its "
                               f"suffix, one of {' '.join(MOVIE_INPUTS)} "
                               f"(got {', '.join(sorted(k or 'no suffix' for k in kinds))})")
        return inputs

    def expected_files(self, jf: JobFile, frame: Frame, scene_dir) -> list[str]:
        return [names.plain(frame.settings.get("output", ""), f"movie frame/{frame.id} output")]

    def render(self, jf: JobFile, frame: Frame, workdir: Path, log: Path, limits: sandbox.Limits,
               on_start=None, shared=None) -> list[str]:
        import imageio_ffmpeg

        self.check_frame(jf, frame)  # again: on a peer, the origin's settings are untrusted too
        workdir = Path(workdir)
        output = self.expected_files(jf, frame, None)[0]
        inputs = self._inputs(frame)
        missing = [n for n in inputs if not (workdir / n).is_file()]
        if missing:
            raise RenderError(f"movie: input frames missing: {', '.join(missing)}")
        # ffmpeg reads the frames as a numbered sequence of links made here, so that no name
        # from the job reaches its command line but the output's, as ./NAME.
        seq = workdir / f".distren-movie-{secrets.token_hex(4)}"
        seq.mkdir()
        suffix = PurePosixPath(inputs[0]).suffix.lower()
        for i, name in enumerate(inputs):
            os.symlink(os.path.join("..", name), seq / f"{i:06d}{suffix}")
        argv = [FFMPEG, "-nostdin", "-y", "-loglevel", "error", "-protocol_whitelist", "file",
                "-f", "image2", "-framerate", self._fps(frame), "-i", f"{seq.name}/%06d{suffix}",
                # yuv420p (what players expect) needs even sides: pad odd ones by a pixel.
                "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                "-frames:v", str(len(inputs)), f"./{output}"]
        with open(log, "ab") as f:
            f.write(f"==== distren: ffmpeg {' '.join(argv[1:])}\n".encode())
        (workdir / output).parent.mkdir(parents=True, exist_ok=True)
        before = snapshot(workdir)
        try:
            outcome = sandbox.run(argv, workdir, limits, log, shared=shared, on_start=on_start,
                                  binds={FFMPEG: Path(imageio_ffmpeg.get_ffmpeg_exe())})
        finally:
            shutil.rmtree(seq, ignore_errors=True)
        return _outputs(workdir, before, output, outcome, limits, "movie: ffmpeg")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except JobFileError as e:
        raise SystemExit(f"stitch: {e}") from None
