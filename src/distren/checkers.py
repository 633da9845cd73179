"""Sandboxed image checkers that stay up between uploads, one per job and uploading peer.

Decoding a peer's image is parsing hostile data, so it happens in the sandbox
(:mod:`distren.images`). Starting a sandboxed interpreter with Pillow costs about 60 ms of CPU,
thirty times the decode of a 640x480 PNG: with one start per upload, checks were most of what
an origin did while renderers uploaded, and its answers to everyone slowed down. So a checker
is started once and kept: each image is sent to it as an open read-only file over a socket, and
it answers with a verdict.

Who may share a checker: only the uploads of one peer for one job. A peer whose image took over
a checker (through a bug in a decoder) can then bend the verdicts on its own later uploads for
that job, which it could fill with any decodable picture anyway; it never sees or judges
another peer's images, nor another job's. The same checker compares, when the origin verifies
an upload (:mod:`distren.verification`), a block of it with the origin's own render of that
frame (:mod:`distren.pixels`): a checker taken over could then also call its peer's later
uploads for the job right, but so could an exploit that peer put in every upload against a
fresh interpreter per comparison (it cannot tell which uploads are verified), and what the
checker is sent of the origin is that job's frame, which the peer renders anyway. A checker
sees nothing but the files it is sent: its /work is empty, its root read-only, it has no
network. It is bounded like every sandboxed run (memory, processes, file size, a small /tmp)
and, being long-lived, also so: each image must be answered within the wall limit (or the
checker is killed), a checker retires after MAX_IMAGES images, one idle for IDLE seconds is
stopped, and at most MAX_IDLE wait idle.

Checkers run at nice 10, like renders: under load the server's own work (leases, renewals,
answers) goes first.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from . import images, pixels, sandbox

IDLE = 30.0  # seconds a checker waits for its peer's next upload
MAX_IDLE = 16  # checkers kept waiting (each an interpreter with Pillow: 20 MB, 9 MB of it its own)
MAX_IMAGES = 1000  # images one checker judges before a fresh one takes over
MAX_WALL = 600.0  # seconds for one image, at most (the render's --frame-timeout may be longer)
MAX_ANSWER = 2048

Key = tuple[int, str]  # (job id, the uploading server)


class CheckerFailed(Exception):
    """The checker did not give a verdict: it died, hung, or said something else."""


class Checker:
    """One sandboxed ``python -m distren.images``, talking over a SOCK_SEQPACKET socket."""

    def __init__(self, limits: sandbox.Limits):
        self.limits = limits
        self.images = 0
        self.used = time.monotonic()
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            argv, binds = sandbox.python_command("distren.images", [])
            cmd = sandbox.command(sandbox.limited(argv, limits), None, binds=binds, tmp_bytes=limits.tmp)
            # Its own session: killing the group kills bubblewrap, which takes the sandbox along.
            self.proc = subprocess.Popen(cmd, stdin=theirs, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True)
        except BaseException:
            self.sock.close()
            raise
        finally:
            theirs.close()

    def _ask(self, request: bytes, paths: list[Path]) -> bytes:
        """Send ``request`` with ``paths`` as open read-only files; its answer."""
        self.images += len(paths)
        fds: list[int] = []
        try:
            for path in paths:
                fds.append(os.open(path, os.O_RDONLY | os.O_NOFOLLOW))
            self.sock.settimeout(self.limits.wall)
            socket.send_fds(self.sock, [request], fds)
            answer = self.sock.recv(MAX_ANSWER)
        except TimeoutError:
            raise CheckerFailed(f"it took longer than {self.limits.wall:g} s; the server's --frame-timeout, "
                                f"up to {MAX_WALL:g} s, bounds it") from None
        except OSError as e:  # the checker is gone: EPIPE, ECONNRESET
            raise CheckerFailed(self._exit(f"{type(e).__name__}")) from None
        finally:
            for fd in fds:
                os.close(fd)
        self.used = time.monotonic()
        if not answer:
            raise CheckerFailed(self._exit("no verdict"))
        return answer

    def check(self, path: Path, width: int, height: int, name: str) -> str | None:
        """None if the image at ``path`` is good, else what is wrong with it."""
        answer = self._ask(f"{width} {height} {name}".encode(), [path])
        if answer == images.OK:
            return None
        if answer.startswith(images.REFUSED):
            return _line(answer[len(images.REFUSED):])  # its words go back to the peer
        raise CheckerFailed("it answered something else than a verdict")

    def compare(self, got: Path, want: Path, box: tuple[int, int, int, int]) -> tuple[str, str]:
        """("same" | "differ" | "unknown", what differs or why it is not known): the pixels of
        ``box`` in the upload ``got`` and in the origin's own render ``want``."""
        answer = self._ask(images.COMPARE + " ".join(map(str, box)).encode(), [got, want])
        for outcome in (pixels.SAME, pixels.DIFFER, pixels.UNKNOWN):
            if answer.startswith(outcome.encode()):
                return outcome.removesuffix(": "), _line(answer[len(outcome):])
        raise CheckerFailed("it answered something else than a verdict")

    def _exit(self, what: str) -> str:
        try:
            code = self.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            return what
        return f"the checker exited ({'signal ' + str(-code) if code < 0 else 'status ' + str(code)})"

    def stop(self) -> None:
        self.sock.close()  # a healthy checker ends by itself on the closed socket
        try:
            self.proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait()


def _line(said: bytes) -> str:
    """A checker's words, which go back to the peer: one printable line."""
    text = said.decode(errors="replace")
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())[:500]


class Checkers:
    """The checkers of one server, by (job, peer): :meth:`check` takes an idle one or starts one."""

    def __init__(self, limits: sandbox.Limits):
        self.limits = replace(limits, wall=min(limits.wall, MAX_WALL))
        self._idle: OrderedDict[Key, Checker] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._sweeper: threading.Thread | None = None
        # bubblewrap --die-with-parent kills a sandbox when the *thread* that started it ends,
        # and the HTTP worker threads that check uploads end when idle: checkers are started
        # from this thread, which lives as long as they may.
        self._starter = ThreadPoolExecutor(1, thread_name_prefix="checkers-start")

    def check(self, key: Key, folder: Path, names: list[str], width: int, height: int) -> None:
        """Decode each image ``folder``/NAME completely in the sandbox, at ``width`` x ``height``;
        raise :class:`images.ImageError` saying what is wrong with the first bad one."""
        if not names:
            return
        sandbox.check()  # an origin with --slots 0 may have none: then it takes no images (503)
        checker = self._take(key)
        try:
            for n in names:
                problem = checker.check(folder / n, width, height, n)
                if problem is not None:
                    raise images.ImageError(f"frame tarball: {problem}")
        except CheckerFailed as e:
            checker.stop()
            raise images.ImageError(f"frame tarball: its images could not be checked ({e})") from None
        except BaseException:
            checker.stop()  # a refusal too: the image that was refused may have done more
            raise
        self._give_back(key, checker)

    def compare(self, key: Key, got: Path, want: Path, box: tuple[int, int, int, int]) -> tuple[str, str]:
        """:meth:`Checker.compare` in the checker of ``key``, the peer that uploaded ``got``
        (it has just checked its images): ("same" | "differ" | "unknown", details)."""
        sandbox.check()
        checker = self._take(key)
        try:
            outcome, detail = checker.compare(got, want, box)
        except CheckerFailed as e:
            checker.stop()
            return "unknown", f"the comparison could not run ({e})"
        except BaseException:
            checker.stop()
            raise
        if outcome == "differ":
            checker.stop()  # as after a refusal: the image that differs may have done more
        else:
            self._give_back(key, checker)
        return outcome, detail

    def _take(self, key: Key) -> Checker:
        with self._lock:
            if self._closed.is_set():
                raise RuntimeError("the image checkers are closed")
            checker = self._idle.pop(key, None)
            if self._sweeper is None:
                self._sweeper = threading.Thread(target=self._sweep, name="checkers", daemon=True)
                self._sweeper.start()
        if checker is not None and checker.proc.poll() is not None:  # ended while it waited
            checker.stop()
            checker = None
        return checker or self._starter.submit(Checker, self.limits).result()

    def _give_back(self, key: Key, checker: Checker) -> None:
        done = []
        with self._lock:
            if checker.images >= MAX_IMAGES or key in self._idle or self._closed.is_set():
                done.append(checker)  # retired, or the same peer's other upload was quicker
            else:
                self._idle[key] = checker
            while len(self._idle) > MAX_IDLE:
                done.append(self._idle.popitem(last=False)[1])
        for c in done:
            c.stop()

    def _sweep(self) -> None:
        while not self._closed.wait(IDLE / 4):
            now = time.monotonic()
            with self._lock:
                old = [k for k, c in self._idle.items() if now - c.used > IDLE]
                done = [self._idle.pop(k) for k in old]
            for c in done:
                c.stop()

    def close(self) -> None:
        with self._lock:
            self._closed.set()
            done = list(self._idle.values())
            self._idle.clear()
        for c in done:
            c.stop()
        self._starter.shutdown(wait=False)
