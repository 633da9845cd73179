"""The POV-Ray backend.

One frame is one ``povray`` process: the job's own INI, then ``+Wn +Hn`` from distrenjob.xml,
``+SFn +EFn`` for the frame and ``-D``. Options later on the command line win, so the clock and
the output file name are exactly those of ``povray SCENE.ini`` rendering the whole animation,
and the pixels are identical.
"""

from __future__ import annotations

import functools
import os
import re
import secrets
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path, PurePosixPath

from .. import names, povini, sandbox
from ..errors import JobFileError, LimitExceeded, RenderError
from ..jobfile import Frame, JobFile

NAME = "povray"
POVRAY = "/usr/bin/povray"
STILL_FRAME = 0  # a still image is a job of one frame, number 0
MAX_SUMMARY = 600  # characters of POV-Ray's messages in a failure reason
# POV-Ray keeps the image being rendered in a file under $TMPDIR (20 bytes a pixel) and its
# render state beside the scene; with the image itself, 32 bytes a pixel is what a render of
# the job's size writes of its own accord.
STORE_BYTES_PER_PIXEL = 32
# POV-Ray renders in square blocks (Render_Block_Size) on a grid from the corner of the region it
# renders. Measured with POV-Ray 3.7 and antialiasing: a block of that grid rendered alone has
# exactly the pixels of the whole render; one off the grid, or a render with another block
# size, does not.
BLOCK_SIZE = 32
MIN_BLOCK_SIZE = 4


def read_ini(scene_dir: Path, ini_name: str) -> povini.IniOptions:
    """Parse the job's INI and any INI files it includes, relative to the scene folder."""
    names.plain(ini_name, "<povray> ini")
    if len(PurePosixPath(ini_name).parts) != 1:
        raise JobFileError(f"distrenjob.xml: <povray ini={ini_name!r}> must name an INI file at the top of scene/")
    path = Path(scene_dir) / ini_name
    if not path.is_file():
        raise JobFileError(f"distrenjob.xml: <povray ini={ini_name!r}>: the bundle has no scene/{ini_name}")
    opts = povini.parse(path.read_text(errors="replace"), ini_name)
    _read_includes(Path(scene_dir), [ini_name], opts, 0, {ini_name})
    return opts


MAX_INCLUDED_INIS = 32


def _read_includes(scene_dir: Path, chain: list[str], opts: povini.IniOptions, start: int, seen: set[str]) -> None:
    """Depth first, as POV-Ray reads them, the INI files that the last of ``chain`` includes
    (``opts.include_ini[start:]``). An INI that includes itself, directly or through others,
    makes POV-Ray recurse until it crashes (status 139): it is refused, naming the cycle."""
    for inc in opts.include_ini[start:]:
        key = os.path.normpath(inc)
        if key in chain:
            cycle = " -> ".join(chain[chain.index(key):] + [key])
            raise JobFileError(f"scene/{chain[0]}: its INI files include each other in a cycle ({cycle}); "
                               "POV-Ray would crash on it: remove the Include_INI that closes the cycle")
        if key in seen or len(seen) > MAX_INCLUDED_INIS:
            continue
        seen.add(key)
        inc_path = scene_dir / key
        if inc_path.is_file() and inc_path.resolve().is_relative_to(scene_dir.resolve()):
            before = len(opts.include_ini)
            povini.parse(inc_path.read_text(errors="replace"), key, opts)
            _read_includes(scene_dir, chain + [key], opts, before, seen)


def parse_region(text: str, width: int, height: int, field: str = "region") -> tuple[int, int, int, int]:
    """``x0,y0,x1,y1`` in pixels, x1/y1 exclusive, inside the image."""
    x0, y0, x1, y1 = names.region(text, field)
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise JobFileError(f"distrenjob.xml: {field}={text!r} is not inside the {width}x{height} image")
    return x0, y0, x1, y1


def error_summary(log_text: str, fallback: bool = True) -> str:
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
    if not picked and fallback:
        picked = [ln for ln in lines[-5:] if ln.strip()]
    text = " | ".join(dict.fromkeys(p.strip() for p in picked[:6]))
    return text if len(text) <= MAX_SUMMARY else text[:MAX_SUMMARY - 3] + "..."


class PovrayBackend:
    name = NAME
    scene = True
    deterministic = True

    def version(self) -> str | None:
        return _version()

    def check_scene(self, jf: JobFile, scene_dir: Path) -> None:
        """Refuse at submit what can never render: no INI, an INI that does not parse, frames
        outside the animation, INI files that include each other in a cycle, an image sent to
        standard output."""
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
            self.check_frame(jf, f)
        bounds = opts.animation_bounds()
        if bounds:
            outside = [f.id for f in own if not f.settings.get("region") and not bounds[0] <= f.id <= bounds[1]]
            if outside:
                more = f" (and {len(outside) - 1} more)" if len(outside) > 1 else ""
                raise JobFileError(
                    f"distrenjob.xml: frame/{outside[0]}{more} is outside the animation of scene/{ini}, frames "
                    f"{bounds[0]}-{bounds[1]} (its Initial_Frame to Final_Frame); POV-Ray cannot render it"
                )
        if opts.output is not None and (opts.output == "-" or opts.output.startswith("-")):
            raise JobFileError(f"scene/{ini}: Output_File_Name={opts.output!r} sends the image to standard output; "
                               "distren keeps the image file POV-Ray writes: name a file, or remove the option")
        if any(not f.settings.get("output") for f in own):
            name = opts.output_name(bounds[0] if bounds else None)
            parts = PurePosixPath(name).parts
            if name.startswith("/") or ".." in parts or any(ord(c) < 32 for c in name):
                raise JobFileError(f"scene/{ini}: Output_File_Name={opts.output!r} makes POV-Ray write {name!r}; "
                                   "it must be a relative file name inside the scene's folder, such as frames/anim.png")

    def check_frame(self, jf: JobFile, frame: Frame) -> None:
        """A tile's region and output reach POV-Ray's command line: both must be plain."""
        if "output" in frame.settings:
            names.plain(frame.settings["output"], f"tile frame/{frame.id} output")
        if frame.settings.get("region"):
            parse_region(frame.settings["region"], jf.width, jf.height, f"tile frame/{frame.id} region")
            if not frame.settings.get("output"):
                raise JobFileError(f"distrenjob.xml: tile frame/{frame.id} needs an output=\"NAME.png\" setting")

    def expected_files(self, jf: JobFile, frame: Frame, scene_dir: Path) -> list[str]:
        """The files a frame's tarball must hold: the image POV-Ray writes for it."""
        if frame.settings.get("output"):
            return [names.plain(frame.settings["output"], f"tile frame/{frame.id} output")]
        opts = read_ini(scene_dir, jf.settings.get("ini", ""))
        return [opts.output_name(frame.id if opts.animated else None)]

    def command(self, jf: JobFile, frame: Frame, opts: povini.IniOptions,
                box: tuple[int, int, int, int] | None = None, threads: int = 0) -> list[str]:
        """``box``: render only that part (see :meth:`blocks`), else the frame (or its tile);
        ``threads``: POV-Ray's render threads (0: one per core), which change no pixel."""
        argv = [POVRAY, jf.settings["ini"], f"+W{jf.width}", f"+H{jf.height}"]
        if opts.animated:
            argv += [f"+SF{frame.id}", f"+EF{frame.id}"]
        if frame.settings.get("region") and box is None:
            box = parse_region(frame.settings["region"], jf.width, jf.height)
        if box is not None:
            # POV-Ray's partial render writes the full-size image, black outside the region.
            x0, y0, x1, y1 = box
            argv += [f"+SC{x0 + 1}", f"+EC{x1}", f"+SR{y0 + 1}", f"+ER{y1}"]
        if frame.settings.get("region"):  # a tile, under its own name so that tiles do not collide
            argv += [f"+O{frame.settings['output']}", "+FN"]
        if threads > 0:
            argv.append(f"+WT{threads}")
        return argv + ["-D", "-P"]

    def blocks(self, jf: JobFile, frame: Frame, scene_dir: Path) -> list[tuple[int, int, int, int]]:
        """POV-Ray's own blocks of the frame (of its tile's region, for a tile)."""
        opts = read_ini(scene_dir, jf.settings.get("ini", ""))
        side = opts.block_size if opts.block_size and opts.block_size >= MIN_BLOCK_SIZE else BLOCK_SIZE
        x0, y0, x1, y1 = (parse_region(frame.settings["region"], jf.width, jf.height)
                          if frame.settings.get("region") else (0, 0, jf.width, jf.height))
        return [(x, y, min(x + side, x1), min(y + side, y1)) for y in range(y0, y1, side) for x in range(x0, x1, side)]

    def render_region(self, jf: JobFile, frame: Frame, workdir: Path, log: Path, limits: sandbox.Limits,
                      box: tuple[int, int, int, int], shared: dict[str, Path] | None = None) -> str:
        name = self.expected_files(jf, frame, workdir)[0]  # before the scene can rewrite its INI
        self._run(jf, frame, workdir, log, limits, None, shared, box)
        return name

    @staticmethod
    def limits_for(jf: JobFile, limits: sandbox.Limits) -> sandbox.Limits:
        """The server's limits, with room on disk for POV-Ray's own image storage at the job's
        size (the resolution is bounded by the job file), which is not the scene's doing."""
        need = jf.width * jf.height * STORE_BYTES_PER_PIXEL
        return replace(limits, file_bytes=max(limits.file_bytes, need))

    def render(self, jf: JobFile, frame: Frame, workdir: Path, log: Path, limits: sandbox.Limits,
               on_start=None, shared: dict[str, Path] | None = None) -> list[str]:
        return self._run(jf, frame, workdir, log, limits, on_start, shared, None)

    def _run(self, jf: JobFile, frame: Frame, workdir: Path, log: Path, limits: sandbox.Limits,
             on_start, shared: dict[str, Path] | None, box: tuple[int, int, int, int] | None) -> list[str]:
        workdir = Path(workdir)
        self.check_frame(jf, frame)  # again: on a peer, the origin's settings are untrusted too
        opts = read_ini(workdir, jf.settings.get("ini", ""))
        limits = self.limits_for(jf, limits)
        # Its image store goes to the working folder on disk, not the sandbox's small /tmp in memory.
        store = workdir / f".distren-tmp-{secrets.token_hex(4)}"
        store.mkdir()
        before = snapshot(workdir)
        argv = self.command(jf, frame, opts, box, limits.threads)
        with open(log, "ab") as logf:
            logf.write(f"==== distren: {' '.join(argv)}\n".encode())
        try:
            out = sandbox.run(["/usr/bin/env", f"TMPDIR={sandbox.WORKDIR}/{store.name}"] + argv, workdir, limits,
                              log, shared=shared, on_start=on_start)
        finally:
            shutil.rmtree(store, ignore_errors=True)
        with open(log, "ab") as logf:
            logf.write(f"==== distren: exit {out.returncode} after {out.elapsed:.2f} s\n".encode())
        if out.limit:
            said = error_summary(out.tail, fallback=False)
            raise LimitExceeded(out.reason + (f" (POV-Ray: {said})" if said else ""))
        summary = error_summary(out.tail)
        if out.returncode < 0:  # bubblewrap itself: the server stopped the frame
            raise RenderError(f"POV-Ray was stopped by signal {-out.returncode}")
        produced = produced_since(workdir, before)
        expected = frame.settings.get("output") or opts.output_name(frame.id if opts.animated else None)
        # POV-Ray 3.7 can exit 0 after "Render failed"; the image is the truth.
        if out.returncode != 0 or "Render failed" in out.tail or expected not in produced:
            limit = sandbox.explain(out, limits)
            if limit:
                said = error_summary(out.tail, fallback=False)
                raise LimitExceeded(limit + (f" (POV-Ray: {said})" if said else ""))
            if out.returncode == 0 and "Render failed" not in out.tail:
                summary = f"POV-Ray wrote no {expected}" + (f" ({summary})" if summary else "")
            if out.returncode > 128 and not summary:
                summary = f"POV-Ray was stopped by signal {out.returncode - 128}"
            raise RenderError(summary or f"POV-Ray exited with status {out.returncode}")
        return produced


@functools.cache
def _version() -> str | None:
    """POV-Ray's version ("3.7.0.10"), or None when it is not installed."""
    if not os.access(POVRAY, os.X_OK):
        return None
    try:
        proc = subprocess.run([POVRAY, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"POV-Ray (\d+(?:\.\d+)+)", proc.stdout + proc.stderr)
    return found.group(1) if found else "unknown"


def produced_since(root: Path, before: dict[str, tuple[int, int]]) -> list[str]:
    """Regular files below ``root`` that are new or changed since ``before``; links (which a
    sandboxed program may plant, pointing anywhere on the host) are never followed."""
    return sorted(name for name, stamp in snapshot(root).items() if before.get(name) != stamp)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
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
