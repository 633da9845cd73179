"""Verified results: the origin checks a share of every renderer's frames by rendering part of
each itself, and stops trusting a renderer whose pixels are wrong.

A peer's upload that passed :mod:`distren.uploads` is checked before the frame is marked done
(:meth:`Verifier.check`, called by :mod:`distren.origin`): every one of a renderer's first
``first`` frames, then each with probability ``share`` (a renderer cannot tell which). The
origin renders one block of the frame, picked at random among those its backend can render
alone with exactly the pixels of a whole render (POV-Ray: its own render blocks, see
``backends.povray.BLOCK_SIZE``), in the sandbox, and compares that block of the upload with
its own byte for byte, also in the sandbox: in the image checker that has just checked the
upload (:mod:`distren.checkers`, :mod:`distren.pixels`; the upload is hostile data).

A block that differs is not yet a verdict: some scenes render a part differently from the whole
(radiosity's pretrace looks at what is rendered). So the origin renders the whole frame and
compares that; only when the whole differs too is the renderer found wrong. Then, in one
transaction (:meth:`distren.lifecycle.Lifecycle.distrust`), it is marked untrusted and every
frame it holds or rendered for jobs under way goes back to the queue, with a reason in each
frame's events; it gets no more leases here until an admin runs ``distren peers trust NAME``.

A frame that cannot be checked (a backend that is not deterministic or that this server cannot
run, no image to compare, a check that fails for the origin's own reasons) is accepted, and its
log says it was not checked. Frames rendered by this server's own slots are not checked.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from . import backends, images, sandbox, urls
from .errors import DistrenError, Untrusted
from .scheduling import prepare_workdir

if TYPE_CHECKING:
    from .jobfile import Frame, JobFile
    from .jobs import JobFiles
    from .lifecycle import Lifecycle
    from .store import Store

log = logging.getLogger("distren.verification")

FIRST = 3  # a new renderer's frames checked, all of them
SHARE = 0.1  # then this share of its frames
Box = tuple[int, int, int, int]
Compare = Callable[[Path, Path, Box], tuple[str, str]]
_random = secrets.SystemRandom()  # a renderer must not be able to tell which frames are checked


class Verifier:
    def __init__(self, url: urls.ServerURL, store: Store, life: Lifecycle, jobfiles: JobFiles,
                 limits: sandbox.Limits, work: Path, first: int, share: float,
                 place_dependencies: Callable[[JobFile, Frame, Path], list[str]]):
        """``limits``: what a check's render may use (the server's); ``work``: where it renders;
        ``place_dependencies(jf, frame, workdir)``: put the files of the frames ``frame``
        depends on into ``workdir``, as for a render here."""
        self.url = url
        self.store = store
        self.life = life
        self.jobfiles = jobfiles
        self.limits = limits
        self.work = work
        self.first = first
        self.share = share
        self.place_dependencies = place_dependencies
        # Asked on every lease: kept in memory, written through.
        self._untrusted = {n: t["reason"] for n, t in store.trust().items() if t["untrusted"] is not None}
        # A check renders on this server's cores: a bounded number at once, whoever uploads.
        self._renders = threading.BoundedSemaphore(max(1, (os.cpu_count() or 1) // 2))

    # --- trust ---------------------------------------------------------------------------

    def may_lease(self, sender: str) -> None:
        reason = self._untrusted.get(sender)
        if reason is not None:
            raise Untrusted(f"{self.url} does not trust {sender}: it {reason}; its admin may "
                            f"`distren peers trust {sender}` again")

    def trust_again(self, name: str) -> bool:
        """An admin's call: ``name`` gets leases again, and its next ``first`` frames are checked."""
        again = self.store.set_trusted(name)
        self._untrusted.pop(name, None)
        return again

    def trust(self, name: str) -> str:
        """How this server regards a renderer, in words, for ``distren servers``."""
        t = self.store.trust(name).get(name)
        if t and t["untrusted"] is not None:
            return f"untrusted: {t['reason']}"
        checked = t["checked"] if t else 0
        if checked < self.first:
            return f"new: {checked} of its first {self.first} frames checked"
        return f"trusted: {checked} frames checked"

    # --- checks --------------------------------------------------------------------------

    def check(self, sender: str, job_id: int, jf: JobFile, frame: Frame, files: Path, compare: Compare) -> None:
        """Check ``sender``'s upload of ``frame`` (its files unpacked in ``files``), or not, as
        chance has it; ``compare(got, want, box)`` compares pixels in the sandbox (the checker
        of the job and ``sender``, :meth:`distren.checkers.Checkers.compare`). Raises
        :class:`Untrusted` when its pixels are wrong, once its frames are back in the queue."""
        self.may_lease(sender)
        t = self.store.trust(sender).get(sender)
        if (t["checked"] if t else 0) >= self.first and _random.random() >= self.share:
            return
        what = f"frame {frame.id} of {self.url.job(job_id)}"
        try:
            outcome, detail = self._verdict(job_id, jf, frame, files, compare)
        except DistrenError as e:  # the origin's own render failed: nothing is said of the peer's
            outcome, detail = "unknown", f"the check's own render failed: {e}"
        self._note(job_id, frame.id, f"checked {detail}: {outcome}" if outcome != "unknown" else
                   f"not checked: {detail}")
        if outcome == "same":
            self.store.count_checked(sender)
            return
        if outcome == "unknown":
            log.info("%s from %s was not checked: %s", what, sender, detail)
            return
        reason = f"returned wrong pixels in {what} ({detail})"
        log.warning("%s %s; it is no longer trusted here", sender, reason)
        self._untrusted[sender] = reason
        requeued = self.life.distrust(sender, str(urls.ServerURL(sender)), reason,
                                      f"re-rendered: {sender} returned wrong pixels in {what}")
        raise Untrusted(f"wrong pixels: {detail}; {self.url} no longer trusts {sender}, and "
                        f"{len(requeued)} frame(s) it rendered or held go to other servers")

    def _verdict(self, job_id: int, jf: JobFile, frame: Frame, files: Path, compare: Compare) -> tuple[str, str]:
        """("same" | "differ" | "unknown", what was compared and how it came out)."""
        backend = backends.get(frame.backend(jf.type))
        scene = self.store.scene_dir(job_id)
        if not backend.deterministic:
            return "unknown", f"{backend.name} is not deterministic"
        if backend.name not in backends.available():
            return "unknown", f"this server cannot run {backend.name}"
        blocks = backend.blocks(jf, frame, scene)
        pictures = [n for n in backend.expected_files(jf, frame, scene) if Path(n).suffix.lower() in images.SUFFIXES]
        if not blocks or not pictures:
            return "unknown", f"{backend.name} frames like this one cannot be checked by part"
        box = _random.choice(blocks)
        with self._renders:
            outcome, detail = self._compare(job_id, jf, frame, files, compare, backend, box)
            if outcome != "differ":
                return outcome, f"block {_text(box)}" + (f" ({detail})" if detail else "")
            # Some scenes render a part unlike the whole: the whole frame decides.
            whole = (min(b[0] for b in blocks), min(b[1] for b in blocks),
                     max(b[2] for b in blocks), max(b[3] for b in blocks))
            outcome, detail = self._compare(job_id, jf, frame, files, compare, backend, None, whole)
            return outcome, f"block {_text(box)} and then the whole frame" + (f": {detail}" if detail else "")

    def _compare(self, job_id: int, jf: JobFile, frame: Frame, files: Path, compare: Compare, backend,
                 box: Box | None, whole: Box | None = None) -> tuple[str, str]:
        """Render ``box`` of the frame here (the whole frame if None) and compare it, in
        ``whole`` for a whole render, with the upload."""
        work = self.work / f"verify-{job_id}-{frame.id}-{secrets.token_hex(4)}"
        render_log = self.work / f"{work.name}.log"
        try:
            shared = prepare_workdir(self.store.scene_dir(job_id), work)
            for name in self.place_dependencies(jf, frame, work):
                shared.pop(name, None)
            if box is not None:
                name = backend.render_region(jf, frame, work, render_log, self.limits, box, shared)
            else:
                produced = backend.render(jf, frame, work, render_log, self.limits, None, shared)
                name = next((n for n in produced if Path(n).suffix.lower() in images.SUFFIXES), "")
            if not (work / name).is_file() or not (files / name).is_file():
                return "unknown", f"no {name or 'image'} to compare"
            return compare(files / name, work / name, box or whole)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            render_log.unlink(missing_ok=True)

    def _note(self, job_id: int, frame_id: int, text: str) -> None:
        """A line in the frame's log: whoever reads it sees what the origin checked."""
        path = self.store.frame_log(job_id, frame_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", errors="replace") as f:
            f.write(f"==== distren: {text}\n")


def _text(box: Box) -> str:
    return f"({box[0]},{box[1]})-({box[2] - 1},{box[3] - 1})"
