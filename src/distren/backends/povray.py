"""The POV-Ray backend.

One frame is one ``povray`` process: the job's own INI, then ``+Wn +Hn`` from distrenjob.xml,
``+SFn +EFn`` for the frame and ``-D``. Options later on the command line win, so the clock and
the output file name are exactly those of ``povray SCENE.ini`` rendering the whole animation,
and the pixels are identical.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path, PurePosixPath

from .. import povini, sandbox
from ..errors import JobFileError, RenderError
from ..jobfile import Frame, JobFile

NAME = "povray"
POVRAY = "/usr/bin/povray"
STILL_FRAME = 0  # a still image is a job of one frame, number 0
MAX_LOG_BYTES = 1 << 20


def read_ini(scene_dir: Path, ini_name: str) -> povini.IniOptions:
    """Parse the job's INI and any INI files it includes, relative to the scene folder."""
    p = PurePosixPath(ini_name)
    if p.is_absolute() or ".." in p.parts or len(p.parts) != 1:
        raise JobFileError(f"distrenjob.xml: <povray ini={ini_name!r}> must name an INI file at the top of scene/")
    path = Path(scene_dir) / ini_name
    if not path.is_file():
        raise JobFileError(f"distrenjob.xml: <povray ini={ini_name!r}>: the bundle has no scene/{ini_name}")
    opts = povini.parse(path.read_text(errors="replace"), ini_name)
    seen = {ini_name}
    queue = list(opts.include_ini)
    while queue:
        inc = queue.pop(0)
        if inc in seen or len(seen) > 32:
            continue
        seen.add(inc)
        inc_path = Path(scene_dir) / inc
        if inc_path.is_file() and inc_path.resolve().is_relative_to(Path(scene_dir).resolve()):
            before = len(opts.include_ini)
            povini.parse(inc_path.read_text(errors="replace"), inc, opts)
            queue.extend(opts.include_ini[before:])
    return opts


def parse_region(text: str, width: int, height: int) -> tuple[int, int, int, int]:
    """``x0,y0,x1,y1`` in pixels, x1/y1 exclusive, inside the image."""
    try:
        x0, y0, x1, y1 = (int(v) for v in text.split(","))
    except ValueError:
        raise JobFileError(f"distrenjob.xml: region={text!r}: expected x0,y0,x1,y1 in pixels") from None
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise JobFileError(f"distrenjob.xml: region={text!r} is not inside the {width}x{height} image")
    return x0, y0, x1, y1


def error_summary(log_text: str) -> str:
    """POV-Ray's own error message out of its log: the 'File ... line N: ... Error' lines."""
    lines: list[str] = []
    wrapped = False
    for raw in log_text.splitlines():
        # POV-Ray hard-wraps messages at 80 columns, mid-word or before a space.
        if lines and (wrapped or (raw.startswith(" ") and not raw.startswith("  "))):
            lines[-1] += raw if wrapped else " " + raw.strip()
        else:
            lines.append(raw.rstrip())
        wrapped = len(raw) >= 79
    picked = [ln for ln in lines if re.search(r"error|cannot|fatal|not found", ln, re.I)
              and not ln.lstrip().startswith(("Fatal Stream", "Debug Stream", "Warning Stream"))
              and "Stream to console" not in ln]
    if not picked:
        picked = [ln for ln in lines[-5:] if ln.strip()]
    return " | ".join(dict.fromkeys(p.strip() for p in picked[:6]))


class PovrayBackend:
    name = NAME

    def frame_ids(self, jf: JobFile) -> list[int]:
        return [f.id for f in jf.frames]

    def check_scene(self, jf: JobFile, scene_dir: Path) -> None:
        """Refuse at submit what can never render: no INI, an INI that does not parse, frames
        outside the animation."""
        ini = jf.settings.get("ini")
        if not ini:
            raise JobFileError('distrenjob.xml: <povray> needs an ini="NAME.ini" attribute naming the scene\'s INI')
        opts = read_ini(scene_dir, ini)
        own = [f for f in jf.frames if f.backend(jf.type) == NAME]
        if not opts.animated and not all(f.settings.get("region") for f in own):
            if [f.id for f in own] != [STILL_FRAME]:
                raise JobFileError(
                    f"distrenjob.xml: scene/{ini} renders a still image (it sets no Initial_Frame/Final_Frame), "
                    f"so the job must have exactly one frame, frame/{STILL_FRAME}, or tiles"
                )
        for f in own:
            if f.settings.get("region"):
                parse_region(f.settings["region"], jf.width, jf.height)
                if not f.settings.get("output"):
                    raise JobFileError(f"distrenjob.xml: tile frame/{f.id} needs an output=\"NAME.png\" setting")

    def expected_files(self, jf: JobFile, frame: Frame, scene_dir: Path) -> list[str]:
        """The files a frame's tarball must hold: the image POV-Ray writes for it."""
        if frame.settings.get("output"):
            return [frame.settings["output"]]
        opts = read_ini(scene_dir, jf.settings.get("ini", ""))
        return [opts.output_name(frame.id if opts.animated else None)]

    def command(self, jf: JobFile, frame: Frame, opts: povini.IniOptions) -> list[str]:
        argv = [POVRAY, jf.settings["ini"], f"+W{jf.width}", f"+H{jf.height}"]
        if opts.animated:
            argv += [f"+SF{frame.id}", f"+EF{frame.id}"]
        if frame.settings.get("region"):
            # A tile: POV-Ray's partial render writes the full-size image, black outside the
            # region, under the tile's own name so that tiles do not collide.
            x0, y0, x1, y1 = parse_region(frame.settings["region"], jf.width, jf.height)
            argv += [f"+SC{x0 + 1}", f"+EC{x1}", f"+SR{y0 + 1}", f"+ER{y1}", f"+O{frame.settings['output']}", "+FN"]
        return argv + ["-D", "-P"]

    def render(self, jf: JobFile, frame: Frame, workdir: Path, log: Path, timeout: float,
               on_start=None, shared: dict[str, Path] | None = None) -> list[str]:
        workdir = Path(workdir)
        opts = read_ini(workdir, jf.settings.get("ini", ""))
        before = _snapshot(workdir)
        argv = sandbox.command(self.command(jf, frame, opts), workdir, shared)
        started = time.monotonic()
        with open(log, "ab") as logf:
            logf.write(f"==== distren: {' '.join(self.command(jf, frame, opts))}\n".encode())
            logf.flush()
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            if on_start:
                on_start(proc)
            try:
                out, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
                logf.write(out[-MAX_LOG_BYTES:])
                raise RenderError(f"POV-Ray took longer than {timeout:.0f} s; the frame was stopped") from None
            logf.write(out[-MAX_LOG_BYTES:])
            logf.write(f"==== distren: exit {proc.returncode} after {time.monotonic() - started:.2f} s\n".encode())
        text = out.decode(errors="replace")
        if proc.returncode < 0:
            raise RenderError(f"POV-Ray was stopped by signal {-proc.returncode}")
        produced = [name for name, stamp in _snapshot(workdir).items() if before.get(name) != stamp]
        expected = frame.settings.get("output") or opts.output_name(frame.id if opts.animated else None)
        # POV-Ray 3.7 can exit 0 after "Render failed"; the image is the truth.
        if proc.returncode != 0 or "Render failed" in text or expected not in produced:
            summary = error_summary(text)
            if proc.returncode == 0 and "Render failed" not in text:
                summary = f"POV-Ray wrote no {expected}" + (f" ({summary})" if summary else "")
            raise RenderError(summary or f"POV-Ray exited with status {proc.returncode}")
        return sorted(produced)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for fn in filenames:
            p = Path(dirpath) / fn
            try:
                st = p.lstat()
            except FileNotFoundError:
                continue
            if p.is_file() and not p.is_symlink():
                out[p.relative_to(root).as_posix()] = (st.st_mtime_ns, st.st_size)
    return out
