"""Render backends, and the registry of those this server has.

Each backend has the same shape (:class:`Backend`): given a job's scene folder, its
distrenjob.xml and one frame, it produces that frame's files in a working folder, inside the
sandbox. Adding one is one module with a class of this shape plus one registration: a line in
:data:`BUILTIN`, or, for a backend kept outside distren, a module that calls :func:`register`
and is loaded with ``distren serve --plugin MODULE``.

A server states the backends it can run (:func:`available`, name -> version) in its hello and
state; every announcement says which backends a job needs; a server asks only for jobs it can
render, says what it can render when it asks, and an origin grants only those frames.
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path
from typing import Protocol

from ..errors import DistrenError, JobFileError
from ..jobfile import Frame, JobFile
from ..sandbox import Limits

#: A rectangle of a frame's image in pixels: x0, y0, x1, y1 (x1 and y1 exclusive).
Box = tuple[int, int, int, int]


class Backend(Protocol):
    name: str
    #: True: renders a job's scene, so it can be a job's type (povray). False: makes a frame out
    #: of other frames' files (stitch, movie), so it is a type for single frames.
    scene: bool
    #: True: the same frame rendered twice, on any machine with the same version, gives the same
    #: bytes of pixels, so an origin can check a peer's frame by rendering part of it itself
    #: (:mod:`distren.verification`). A backend that is not deterministic is not checked.
    deterministic: bool

    def version(self) -> str | None:
        """This machine's version of the renderer, or None when it cannot run it here."""
        ...

    def check_scene(self, jf: JobFile, scene_dir: Path) -> None:
        """At submit (scene backends): refuse what can never render, naming the field."""
        ...

    def check_frame(self, jf: JobFile, frame: Frame) -> None:
        """A frame of this backend's settings, at submit and again before a peer renders it
        (on a peer, the origin's settings are untrusted too)."""
        ...

    def expected_files(self, jf: JobFile, frame: Frame, scene_dir: Path | None) -> list[str]:
        """The files a frame's result must hold, under these exact names."""
        ...

    def render(self, jf: JobFile, frame: Frame, workdir: Path, log: Path, limits: Limits,
               on_start=None, shared=None) -> list[str]:
        """Render ``frame`` in ``workdir`` (a private copy of the scene, except for the large
        files in ``shared``, which are to be mounted read-only at their places) with
        :func:`distren.sandbox.run` within ``limits``; append the renderer's output to the text
        file ``log``; return the names (relative to ``workdir``) of the files the frame
        produced. Raise RenderError with the renderer's own message, or the limit it hit."""
        ...

    def blocks(self, jf: JobFile, frame: Frame, scene_dir: Path) -> list[Box]:
        """The parts of ``frame``'s image that can be rendered alone (:meth:`render_region`)
        and give exactly the pixels of a whole render; [] when a frame cannot be checked by
        part (it is then not checked)."""
        ...

    def render_region(self, jf: JobFile, frame: Frame, workdir: Path, log: Path, limits: Limits, box: Box,
                      shared=None) -> str:
        """Render only ``box`` (one of :meth:`blocks`) of ``frame``, as :meth:`render` does the
        whole; return the name of the image holding it (of the frame's full size, the box's
        pixels as a whole render makes them, the rest whatever the renderer leaves there)."""
        ...


_registry: dict[str, Backend] = {}


def register(backend: Backend) -> None:
    _registry[backend.name] = backend
    available.cache_clear()


@functools.cache
def available() -> dict[str, str]:
    """name -> version of every registered backend this machine can run."""
    return {name: v for name, b in sorted(_registry.items()) if (v := b.version()) is not None}


def get(name: str) -> Backend:
    """A registered backend (this server knows its settings, whether or not it can run it)."""
    try:
        return _registry[name]
    except KeyError:
        raise JobFileError(
            f"distrenjob.xml: type {name!r} is not a backend this server knows "
            f"(it knows: {', '.join(sorted(_registry))})"
        ) from None


def for_job(name: str) -> Backend:
    """The backend a whole job is of: one that renders a scene (not a stitcher or encoder)."""
    backend = get(name)
    if not backend.scene:
        scenes = ", ".join(sorted(n for n, b in _registry.items() if b.scene))
        raise JobFileError(f"distrenjob.xml: <job type={name!r}>: a job's type is its scene renderer "
                           f"({scenes}); {name} is a type for single frames")
    return backend


def needed(jf: JobFile) -> list[str]:
    """Every backend a job's frames need."""
    return sorted({f.backend(jf.type) for f in jf.frames})


def load_plugin(module: str) -> None:
    """``distren serve --plugin MODULE``: import a module that registers more backends."""
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise DistrenError(f"--plugin {module}: cannot import it ({e}); it must be on the Python path") from None


from . import blender, povray, stitch  # noqa: E402  (they import the protocol's types from above)

BUILTIN: tuple[Backend, ...] = (povray.PovrayBackend(), blender.BlenderBackend(), stitch.StitchBackend(),
                                stitch.MovieBackend())
for _backend in BUILTIN:
    register(_backend)
