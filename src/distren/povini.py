"""POV-Ray INI files, read the way POV-Ray reads them, for what distren needs to know.

distren never rewrites a scene's INI: every frame renders with the job's own INI plus a few
switches appended (``+SFn +EFn +Wn +Hn -D``), because options later on POV-Ray's command line
win. This module only *reads* an INI to learn the frame range, resolution, input file and
output name, whether they are written as ``Key=value`` lines or as switches on a line
(``+kf0.1666 +kff20 +kc declare=fp=0`` in POV-Ray's splinefollow example).

Only the lines before the first ``[section]`` count, as when POV-Ray is given the file alone.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from .errors import SceneError

# Long option names (lower-case) -> our canonical keys.
_KEYS = {
    "input_file_name": "input",
    "output_file_name": "output",
    "width": "width",
    "height": "height",
    "initial_frame": "initial_frame",
    "final_frame": "final_frame",
    "initial_clock": "initial_clock",
    "final_clock": "final_clock",
    "subset_start_frame": "subset_start",
    "subset_end_frame": "subset_end",
    "cyclic_animation": "cyclic",
    "output_file_type": "file_type",
    "library_path": "library_path",
    "include_ini": "include_ini",
    "antialias": "antialias",
    "render_block_size": "block_size",
}

# Switches, longest prefix first; value kind: "int", "float", "str", "bool" (no value).
_SWITCHES = [
    ("kfi", "initial_frame", "int"),
    ("kff", "final_frame", "int"),
    ("ki", "initial_clock", "float"),
    ("kf", "final_clock", "float"),
    ("kc", "cyclic", "bool"),
    ("sf", "subset_start", "num"),
    ("ef", "subset_end", "num"),
    ("bs", "block_size", "int"),
    ("w", "width", "int"),
    ("h", "height", "int"),
    ("i", "input", "str"),
    ("o", "output", "str"),
    ("l", "library_path", "str"),
    ("f", "file_type", "str"),
    ("a", "antialias", "bool"),
]

_TRUE = {"on", "true", "yes", "1"}
_FALSE = {"off", "false", "no", "0"}


@dataclass
class IniOptions:
    """What an INI says. Unset options are None; ``library_path`` accumulates, as in POV-Ray."""

    input: str | None = None
    output: str | None = None
    width: int | None = None
    height: int | None = None
    initial_frame: int | None = None
    final_frame: int | None = None
    initial_clock: float | None = None
    final_clock: float | None = None
    subset_start: int | None = None
    subset_end: int | None = None
    cyclic: bool | None = None
    file_type: str | None = None
    antialias: bool | None = None
    block_size: int | None = None
    library_path: list[str] = field(default_factory=list)
    include_ini: list[str] = field(default_factory=list)

    @property
    def animated(self) -> bool:
        # Measured with POV-Ray 3.7: setting either frame bound numbers the output file.
        return self.initial_frame is not None or self.final_frame is not None

    def animation_bounds(self) -> tuple[int, int] | None:
        """Initial_Frame and Final_Frame as POV-Ray takes them (None for a still): the frames
        that exist at all. distren's +SF/+EF override the subset, never these."""
        if not self.animated:
            return None
        first = 1 if self.initial_frame is None else self.initial_frame
        last = 1 if self.final_frame is None else self.final_frame
        return first, max(first, last)

    def frame_bounds(self) -> tuple[int, int] | None:
        """First and last of the frames ``povray THIS.ini`` renders (subset applied), without
        listing them (an INI may say Final_Frame=1000000000); None for a still, and for an
        animation whose subset leaves no frame."""
        bounds = self.animation_bounds()
        if bounds is None:
            return None
        first, last = bounds
        lo = first if self.subset_start is None else max(first, self.subset_start)
        hi = last if self.subset_end is None else min(last, self.subset_end)
        return (lo, hi) if lo <= hi else None

    def frame_range(self) -> list[int]:
        """The frames ``povray THIS.ini`` renders (subset applied); [] for a still."""
        bounds = self.frame_bounds()
        return list(range(bounds[0], bounds[1] + 1)) if bounds else []

    def output_name(self, frame: int | None) -> str:
        """The file POV-Ray writes for ``frame`` (None for a still): the output or input stem,
        the frame number zero-padded to the digits of Final_Frame, then the type's extension."""
        ext = {"n": ".png", "t": ".tga", "c": ".tga", "p": ".ppm", "e": ".exr", "h": ".hdr",
               "j": ".jpg", "b": ".bmp"}.get((self.file_type or "n")[:1].lower(), ".png")
        if self.output and not self.output.endswith("/"):
            # Measured with POV-Ray 3.7: only the type's own extension is replaced; any other
            # suffix stays part of the name (+Ofoo.tga with PNG output writes foo.tga.png).
            stem = self.output[: -len(ext)] if self.output.endswith(ext) else self.output
        else:
            base = PurePosixPath(self.input or "object.pov").stem
            stem = (self.output or "") + base
        if frame is None or not self.animated:
            return stem + ext
        final = self.final_frame if self.final_frame is not None else 1
        digits = len(str(max(final, frame)))
        return f"{stem}{frame:0{digits}d}{ext}"


def _strip_comment(line: str) -> str:
    # ';' starts a comment except inside quotes.
    out, quote = [], None
    for ch in line:
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == ";":
            break
        out.append(ch)
    return "".join(out).strip()


def _unquote(v: str) -> str:
    v = v.strip()
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
        return v[1:-1]
    return v


def _convert(key: str, kind: str, raw: str, where: str):
    raw = _unquote(raw)
    try:
        if kind == "int":
            return int(float(raw)) if re.fullmatch(r"[-+]?\d+(\.0*)?", raw) else int(raw)
        if kind == "float":
            return float(raw)
        if kind == "num":
            value = float(raw)
            if 0.0 < value < 1.0:
                raise SceneError(f"{where}: fractional subset {raw!r} is not supported; give frame numbers")
            return int(value)
        if kind == "bool":
            low = raw.lower()
            if low in _TRUE or low == "":
                return True
            if low in _FALSE:
                return False
            raise ValueError(raw)
    except ValueError:
        raise SceneError(f"{where}: {key}={raw!r} is not a valid {kind}") from None
    return raw


def _kind_of(key: str) -> str:
    for _, k, kind in _SWITCHES:
        if k == key:
            return kind
    return "str"


def _apply(opts: IniOptions, key: str, value) -> None:
    if key in ("library_path", "include_ini"):
        getattr(opts, key).append(value)
    else:
        setattr(opts, key, value)


def _apply_switch(opts: IniOptions, token: str, where: str) -> None:
    sign, body = token[0], token[1:]
    low = body.lower()
    for prefix, key, kind in _SWITCHES:
        if not low.startswith(prefix):
            continue
        rest = body[len(prefix):]
        if kind == "bool":
            if rest == "":
                _apply(opts, key, sign == "+")
                return
            continue  # e.g. +A0.3 is antialias with threshold: still on
        if kind in ("int", "float", "num") and not re.fullmatch(r"[-+]?[0-9.]+", rest):
            continue  # +WT2 (threads) is not +W; +HI (header) is not +H
        if rest == "":
            continue
        _apply(opts, key, _convert(token, kind, rest, where))
        return
    if low.startswith("a") and re.fullmatch(r"[0-9.]+", body[1:]):
        opts.antialias = sign == "+"  # +A0.3 / -A0.3: on / off with a threshold; +AM2 etc. are other options
    # Other switches do not change what distren needs to know.


def parse(text: str, name: str = "scene.ini", opts: IniOptions | None = None) -> IniOptions:
    """Parse INI text (``name`` is used in messages). Unknown options are left to POV-Ray."""
    opts = opts or IniOptions()
    for lineno, line in enumerate(text.splitlines(), 1):
        where = f"{name}, line {lineno}"
        line = _strip_comment(line)
        if not line:
            continue
        if line.startswith("["):
            break
        if line[0] in "+-" or " " in line.split("=", 1)[0].strip():
            # A line of command-line switches, possibly mixed with Key=value tokens.
            try:
                tokens = shlex.split(line, posix=True)
            except ValueError as e:
                raise SceneError(f"{where}: cannot split switches ({e})") from None
            for tok in tokens:
                if not tok:  # a quoted empty word ('') says nothing
                    continue
                if tok[0] in "+-" and len(tok) > 1:
                    _apply_switch(opts, tok, where)
                elif "=" in tok:
                    _key_value(opts, tok, where)
            continue
        if "=" in line:
            _key_value(opts, line, where)
        else:
            opts.include_ini.append(_unquote(line))  # a bare file name includes another INI
    return opts


def _key_value(opts: IniOptions, line: str, where: str) -> None:
    k, _, v = line.partition("=")
    key = _KEYS.get(k.strip().lower())
    if key is None:
        return
    _apply(opts, key, _convert(k.strip(), _kind_of(key), v, where))
