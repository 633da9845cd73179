"""Frames that are made from other frames' files rather than rendered from the scene:

* ``stitch`` assembles tiles (POV-Ray partial renders, full-size and black outside their
  region) into the image the full render would have written;
* ``movie`` encodes a job's frames into an MP4 with the ffmpeg bundled in imageio-ffmpeg.

Their inputs are the files of the frames they depend on, which the server places in the
working folder before calling :meth:`render`. Neither runs scene code, so neither needs the
sandbox.
"""

from __future__ import annotations

import subprocess
from pathlib import Path, PurePosixPath

from ..errors import JobFileError, RenderError
from ..jobfile import Frame, JobFile
from .povray import parse_region


def _name(value: str, what: str) -> str:
    p = PurePosixPath(value)
    if not value or p.is_absolute() or ".." in p.parts:
        raise JobFileError(f"distrenjob.xml: {what}={value!r} must be a relative file name")
    return value


def tiles_of(frame: Frame, jf: JobFile) -> list[tuple[str, tuple[int, int, int, int]]]:
    """The stitch frame's ``tiles`` setting: ``NAME@x0,y0,x1,y1`` entries separated by ``;``."""
    out = []
    for entry in frame.settings.get("tiles", "").split(";"):
        name, sep, region = entry.partition("@")
        if not sep:
            raise JobFileError(f"distrenjob.xml: stitch frame/{frame.id}: tile entry {entry!r} is not NAME@x0,y0,x1,y1")
        out.append((_name(name, "tile"), parse_region(region, jf.width, jf.height)))
    return out


class StitchBackend:
    name = "stitch"

    def check_frame(self, jf: JobFile, frame: Frame) -> None:
        if not self.expected_files(jf, frame, None)[0].lower().endswith(".png"):
            raise JobFileError(f"distrenjob.xml: stitch frame/{frame.id}: output must be a .png file")
        tiles_of(frame, jf)

    def expected_files(self, jf: JobFile, frame: Frame, scene_dir) -> list[str]:
        return [_name(frame.settings.get("output", ""), "output")]

    def render(self, jf: JobFile, frame: Frame, workdir: Path, log: Path, timeout: float, on_start=None,
               shared=None) -> list[str]:
        from PIL import Image

        output = self.expected_files(jf, frame, None)[0]
        canvas = None
        with open(log, "a") as logf:
            for name, box in tiles_of(frame, jf):
                path = Path(workdir) / name
                if not path.is_file():
                    raise RenderError(f"stitch: tile {name} is missing from the frame's inputs")
                with Image.open(path) as tile:
                    if tile.size != (jf.width, jf.height):
                        raise RenderError(f"stitch: tile {name} is {tile.size[0]}x{tile.size[1]}, not {jf.width}x{jf.height}")
                    if canvas is None:
                        canvas = Image.new(tile.mode, tile.size)
                    canvas.paste(tile.crop(box), box[:2])
                logf.write(f"stitch: {name} -> {box}\n")
            if canvas is None:
                raise RenderError("stitch: no tiles")
            target = Path(workdir) / output
            target.parent.mkdir(parents=True, exist_ok=True)
            canvas.save(target, format="PNG")
            logf.write(f"stitch: wrote {output}\n")
        return [output]


class MovieBackend:
    name = "movie"

    def check_frame(self, jf: JobFile, frame: Frame) -> None:
        self.expected_files(jf, frame, None)
        try:
            fps = float(frame.settings.get("fps", "24"))
        except ValueError:
            fps = 0.0
        if not 0 < fps <= 240:
            raise JobFileError(f"distrenjob.xml: movie frame/{frame.id}: fps={frame.settings.get('fps')!r} "
                               "must be a number of frames per second, above 0 and at most 240")
        if not [_name(n, "input") for n in frame.settings.get("inputs", "").split(";") if n]:
            raise JobFileError(f"distrenjob.xml: movie frame/{frame.id} lists no inputs")

    def expected_files(self, jf: JobFile, frame: Frame, scene_dir) -> list[str]:
        return [_name(frame.settings.get("output", ""), "output")]

    def render(self, jf: JobFile, frame: Frame, workdir: Path, log: Path, timeout: float, on_start=None,
               shared=None) -> list[str]:
        import imageio_ffmpeg

        output = self.expected_files(jf, frame, None)[0]
        inputs = [_name(n, "input") for n in frame.settings.get("inputs", "").split(";") if n]
        missing = [n for n in inputs if not (Path(workdir) / n).is_file()]
        if not inputs or missing:
            raise RenderError(f"movie: input frames missing: {', '.join(missing) or 'none listed'}")
        fps = frame.settings.get("fps", "24")
        listing = Path(workdir) / ".distren-movie-inputs.txt"
        listing.write_text("".join(f"file '{n}'\nduration {1 / float(fps):.6f}\n" for n in inputs))
        # yuv420p (what players expect) needs even sides: pad odd ones by a pixel.
        argv = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "concat", "-safe", "0",
                "-i", listing.name, "-r", fps, "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264",
                "-pix_fmt", "yuv420p", "-frames:v", str(len(inputs)), output]
        with open(log, "ab") as logf:
            logf.write(f"==== distren: {' '.join(argv)}\n".encode())
            logf.flush()
            proc = subprocess.run(argv, cwd=workdir, stdout=logf, stderr=subprocess.STDOUT, timeout=timeout)
        listing.unlink()
        if proc.returncode != 0 or not (Path(workdir) / output).is_file():
            raise RenderError(f"movie: ffmpeg failed (exit {proc.returncode}); see the frame's log")
        return [output]
