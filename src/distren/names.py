"""Names from a job's settings that become paths or program arguments.

A movie's output and inputs, a stitch's tile names, a tile's output: each is handed to ffmpeg,
the stitcher or POV-Ray, programs that read ``file:`` and ``http:`` URLs, take anything starting
with ``-`` or ``+`` as an option, and resolve ``..``. So such a name must be plain: relative,
inside the frame's folder, made of letters, digits and ``_ . - + = , # ~ ( )`` in components that
start with a letter, digit or ``_``. Every check of such a name is :func:`plain`, which says
which field is wrong and why; names of files a renderer produced, which no program is given,
are checked by the looser :func:`relative`.
"""

from __future__ import annotations

import re
import unicodedata

from .errors import JobFileError

MAX_NAME = 255  # a component, as on every common file system
MAX_PATH = 1024
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_COMPONENT = re.compile(r"\w[\w.+=,#~()-]*")
_NUMBER = re.compile(r"\d{1,9}(?:\.\d{1,6})?")
_REGION = re.compile(r"\d{1,5},\d{1,5},\d{1,5},\d{1,5}")


def _relative_problem(value: str) -> str | None:
    if not value:
        return "is empty"
    if len(value.encode("utf-8", "surrogatepass")) > MAX_PATH:
        return f"is longer than {MAX_PATH} bytes"
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in value):
        return "holds a control character"
    if value.startswith("/"):
        return "is an absolute path"
    if ".." in value.split("/"):
        return "goes up with '..'"
    return None


def _problem(value: str) -> str | None:
    problem = _relative_problem(value)
    if problem:
        return problem
    if _SCHEME.match(value):
        return "is a URL (file:, http: and other schemes are not allowed)"
    if any(q in value for q in "'\"`"):
        return "holds a quote"
    if value.startswith("/"):
        return "is an absolute path"
    if value.startswith(("-", "+")):
        return "starts with '-' or '+' (it would be read as an option)"
    parts = value.split("/")
    if ".." in parts:
        return "goes up with '..'"
    for part in parts:
        if not part or part == ".":
            return "has an empty or '.' component"
        if len(part.encode()) > MAX_NAME:
            return f"has a component longer than {MAX_NAME} bytes"
        if not _COMPONENT.fullmatch(part):
            bad = sorted({c for c in part if not (c.isalnum() or c in "_.+=,#~()-")})
            if bad:
                return f"holds {', '.join(repr(c) for c in bad)}; use letters, digits and _ . - + = , # ~ ( )"
            return f"has a component {part!r} that does not start with a letter, digit or '_'"
    return None


def plain(value: str, field: str) -> str:
    """``value`` if it is a plain relative name inside the frame's folder; else JobFileError
    naming ``field`` (e.g. ``movie frame/9 output``) and the problem."""
    problem = _problem(value)
    if problem:
        raise JobFileError(f"distrenjob.xml: {field}={value!r} {problem}; it must be a plain relative "
                           "file name inside the frame's folder, such as frames/anim01.png")
    return value


def relative(value: str, field: str) -> str:
    """A file name a renderer produced (POV-Ray names its images after the INI, spaces and
    all), which no program is given: relative, inside the job, no control characters."""
    problem = _relative_problem(value)
    if problem:
        raise JobFileError(f"distrenjob.xml: {field}={value!r} {problem}; it must be a relative file name "
                           "inside the job")
    return value


def plain_list(value: str, field: str, sep: str = ";") -> list[str]:
    return [plain(n, field) for n in value.split(sep)]


def number(value: str, field: str, lo: float, hi: float, what: str) -> float:
    """A decimal number written plainly (no exponent, sign, spaces, inf or nan) in (lo, hi]."""
    if not _NUMBER.fullmatch(value) or not lo < float(value) <= hi:
        raise JobFileError(f"distrenjob.xml: {field}={value!r} must be {what}, above {lo:g} and at most {hi:g}")
    return float(value)


def region(value: str, field: str) -> tuple[int, int, int, int]:
    if not _REGION.fullmatch(value):
        raise JobFileError(f"distrenjob.xml: {field}={value!r}: expected x0,y0,x1,y1 in pixels")
    x0, y0, x1, y1 = (int(v) for v in value.split(","))
    return x0, y0, x1, y1
