"""Render backends. Each has the same shape: given a job's scene folder, its distrenjob.xml and
one frame, produce that frame's files in a working folder (see :class:`Backend`)."""

from __future__ import annotations

from typing import Protocol

from ..errors import JobFileError
from ..jobfile import Frame, JobFile
from ..sandbox import Limits


class Backend(Protocol):
    name: str

    def frame_ids(self, jf: JobFile) -> list[int]: ...

    def expected_files(self, jf: JobFile, frame: Frame, scene_dir) -> list[str]: ...

    def render(self, jf: JobFile, frame: Frame, workdir, log, limits: Limits,
               on_start=None, shared=None) -> list[str]:
        """Render ``frame`` in ``workdir`` (a private copy of the scene, except for the large
        files in ``shared``, which are to be mounted read-only at their places) with
        :func:`distren.sandbox.run` within ``limits``; append the renderer's output to the text
        file ``log``; return the names (relative to ``workdir``) of the files the frame
        produced. Raise RenderError with the renderer's own message, or the limit it hit."""
        ...


def for_job(name: str):
    """The backend a whole job is of: one that renders a scene (not a stitcher or encoder)."""
    backend = get(name)
    if not hasattr(backend, "check_scene"):
        raise JobFileError(f"distrenjob.xml: <job type={name!r}>: a job's type is its scene renderer (povray); "
                           f"{name} is a type for single frames")
    return backend


def get(name: str) -> Backend:
    from . import povray, stitch

    backends = {povray.NAME: povray.PovrayBackend(), "stitch": stitch.StitchBackend(), "movie": stitch.MovieBackend()}
    try:
        return backends[name]
    except KeyError:
        raise JobFileError(
            f"distrenjob.xml: job type {name!r} is not supported by this server "
            f"(it renders: {', '.join(sorted(backends))})"
        ) from None
