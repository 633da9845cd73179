"""A made-up second backend, known only to servers started with ``--plugin fakeray`` (the tests
put this folder on PYTHONPATH). It "renders" frame N by copying the scene's frame.png to
fakeN.png, inside the sandbox like any backend. It is the whole of what a backend needs: one
module and one register() call."""

from __future__ import annotations

from pathlib import Path

from distren import backends, sandbox
from distren.errors import JobFileError, RenderError


class FakeRay:
    name = "fakeray"
    scene = True
    deterministic = True

    def version(self) -> str | None:
        return "1.0"

    def check_scene(self, jf, scene_dir: Path) -> None:
        if not (Path(scene_dir) / "frame.png").is_file():
            raise JobFileError("distrenjob.xml: a fakeray job needs scene/frame.png")

    def check_frame(self, jf, frame) -> None:
        pass

    def expected_files(self, jf, frame, scene_dir) -> list[str]:
        return [f"fake{frame.id}.png"]

    def render(self, jf, frame, workdir, log, limits, on_start=None, shared=None) -> list[str]:
        out = sandbox.run(["/usr/bin/cp", "frame.png", f"fake{frame.id}.png"], Path(workdir), limits, log,
                          shared=shared, on_start=on_start)
        if out.returncode != 0:
            raise RenderError(f"fakeray: cp exited with {out.returncode}")
        return [f"fake{frame.id}.png"]


    def blocks(self, jf, frame, scene_dir) -> list[tuple[int, int, int, int]]:
        return [(0, 0, jf.width, jf.height)]  # a copy is all or nothing: the whole image is its one block

    def render_region(self, jf, frame, workdir, log, limits, box, shared=None) -> str:
        return self.render(jf, frame, workdir, log, limits, shared=shared)[0]


backends.register(FakeRay())
