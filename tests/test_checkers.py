"""The long-lived sandboxed image checkers (distren.checkers), real bubblewrap and Pillow: one
per job and uploading peer, kept between uploads, replaced when it refuses, dies or hangs, stopped
when idle or closed, and seeing nothing but the files it is sent."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import wait_for
from distren import checkers, images, sandbox

W, H = 32, 24


def png(size=(W, H)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


def children() -> set[int]:
    """This process's child processes (a checker is one: bubblewrap)."""
    out: set[int] = set()
    for tid in os.listdir(f"/proc/{os.getpid()}/task"):
        try:
            out.update(int(p) for p in Path(f"/proc/{os.getpid()}/task/{tid}/children").read_text().split())
        except FileNotFoundError:
            pass
    return out


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "good.png").write_bytes(png())
    (tmp_path / "small.png").write_bytes(png((16, 16)))
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(300))
    return tmp_path


@pytest.fixture
def pool():
    before = children()
    p = checkers.Checkers(sandbox.Limits())
    yield p
    p.close()
    assert children() <= before, "a checker outlived close()"


def pid(pool: checkers.Checkers, key) -> int:
    return pool._idle[key].proc.pid


def test_a_checker_is_kept_for_one_peer_and_one_job(pool, folder):
    pool.check((1, "a"), folder, ["good.png"], W, H)
    first = pid(pool, (1, "a"))
    pool.check((1, "a"), folder, ["good.png", "good.png"], W, H)
    assert pid(pool, (1, "a")) == first, "the same peer's next upload for the job started a new checker"
    pool.check((1, "b"), folder, ["good.png"], W, H)
    pool.check((2, "a"), folder, ["good.png"], W, H)
    pids = {pid(pool, k) for k in [(1, "a"), (1, "b"), (2, "a")]}
    assert len(pids) == 3, "another peer's or another job's images went to the same checker"


@pytest.mark.parametrize("name,words", [("small.png", "small.png is 16x16; the job renders 32x24"),
                                        ("junk.png", "junk.png is not a readable image")])
def test_a_refused_image_retires_its_checker(pool, folder, name, words):
    pool.check((1, "a"), folder, ["good.png"], W, H)
    first = pool._idle[(1, "a")].proc
    with pytest.raises(images.ImageError) as e:
        pool.check((1, "a"), folder, ["good.png", name], W, H)
    assert str(e.value).startswith(f"frame tarball: {words}")
    assert "/" not in str(e.value).removeprefix("frame tarball: "), "a server-side path in the answer"
    assert first.poll() is not None, "the checker that refused an image was kept"
    pool.check((1, "a"), folder, ["good.png"], W, H)
    assert pid(pool, (1, "a")) != first.pid


def test_a_checker_that_died_while_idle_is_replaced(pool, folder):
    pool.check((1, "a"), folder, ["good.png"], W, H)
    proc = pool._idle[(1, "a")].proc
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    pool.check((1, "a"), folder, ["good.png"], W, H)  # not refused for the dead checker's sake
    assert pid(pool, (1, "a")) != proc.pid


def test_a_checker_that_does_not_answer_in_time_is_killed(folder):
    before = children()
    pool = checkers.Checkers(sandbox.Limits(wall=0.001))  # not even time to start
    try:
        with pytest.raises(images.ImageError, match=r"its images could not be checked \(it took longer than 0.001 s"):
            pool.check((1, "a"), folder, ["good.png"], W, H)
        assert not pool._idle
        assert children() <= before, "the checker that timed out is still running"
    finally:
        pool.close()


def test_idle_checkers_are_stopped(pool, folder, monkeypatch):
    monkeypatch.setattr(checkers, "IDLE", 0.4)
    pool.check((1, "a"), folder, ["good.png"], W, H)
    proc = pool._idle[(1, "a")].proc
    wait_for(lambda: proc.poll() is not None, "the idle checker to stop", timeout=10)
    assert not pool._idle


def test_at_most_max_idle_checkers_wait(pool, folder, monkeypatch):
    monkeypatch.setattr(checkers, "MAX_IDLE", 2)
    for peer in "abc":
        pool.check((1, peer), folder, ["good.png"], W, H)
    assert list(pool._idle) == [(1, "b"), (1, "c")], "not the least recently used one was stopped"


def test_one_peers_concurrent_uploads_each_get_a_verdict(pool, folder):
    errors: list[BaseException] = []

    def upload(name: str) -> None:
        try:
            pool.check((1, "a"), folder, [name], W, H)
        except images.ImageError as e:
            errors.append(e)

    threads = [threading.Thread(target=upload, args=(n,)) for n in ["good.png"] * 6 + ["junk.png"] * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(errors) == 2 and all("junk.png is not a readable image" in str(e) for e in errors)
    assert len(pool._idle) <= 1


def test_a_verifying_comparison_goes_to_the_checker_that_checked_the_upload(pool, folder):
    """Verification compares a block of the upload with the origin's render in the checker the
    upload's images just went through: no interpreter is started for it. A difference retires
    the checker, like a refusal; an unreadable render of the origin's own says nothing of it."""
    Image.new("RGB", (W, H), (10, 20, 31)).save(folder / "other.png")
    pool.check((1, "a"), folder, ["good.png"], W, H)
    first = pool._idle[(1, "a")].proc
    assert pool.compare((1, "a"), folder / "good.png", folder / "good.png", (0, 0, W, H)) == ("same", "")
    assert pool.compare((1, "a"), folder / "good.png", folder / "junk.png", (0, 0, 8, 8))[0] == "unknown"
    assert pid(pool, (1, "a")) == first.pid, "a comparison started a checker of its own"
    said = pool.compare((1, "a"), folder / "other.png", folder / "good.png", (8, 0, 16, 8))
    assert said == ("differ", "pixels differ in (8,0)-(15,7)")
    assert first.poll() is not None and (1, "a") not in pool._idle, "the checker that saw a difference was kept"


def test_a_comparison_that_gets_no_verdict_is_unknown_and_its_checker_killed(folder):
    before = children()
    pool = checkers.Checkers(sandbox.Limits(wall=0.001))  # not even time to start
    try:
        outcome, detail = pool.compare((1, "a"), folder / "good.png", folder / "good.png", (0, 0, W, H))
        assert outcome == "unknown" and detail.startswith("the comparison could not run (it took longer than 0.001 s")
        assert not pool._idle and children() <= before, "the checker that timed out is still running"
    finally:
        pool.close()


def test_a_malformed_request_gets_a_refusal_not_the_checkers_end(tmp_path):
    """The checker's own loop (distren.images.serve), in process: a comparison needs two files."""
    (tmp_path / "good.png").write_bytes(png())
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    t = threading.Thread(target=images.serve, args=(theirs,), daemon=True)
    t.start()
    fd = os.open(tmp_path / "good.png", os.O_RDONLY)
    try:
        for request in [b"compare 0 0 8 8", b"compare 0 0 8", b"32 24 good.png"]:
            socket.send_fds(ours, [request], [fd] if request != b"compare 0 0 8" else [fd, fd])
            answer = ours.recv(4096)
            assert answer.startswith(b"ok" if request == b"32 24 good.png" else b"refused: malformed request"), answer
    finally:
        os.close(fd)
        ours.close()
        t.join(10)
        theirs.close()
    assert not t.is_alive()


def test_the_checkers_sandbox_has_no_files_and_a_read_only_root(tmp_path):
    script = ("ls -A /work; touch /work/x && echo WROTE-WORK; touch /x && echo WROTE-ROOT; "
              "mkdir /etc2 && echo WROTE-ROOT; touch /tmp/t && echo TMP-OK")
    cmd = sandbox.command(sandbox.limited(["/bin/sh", "-c", script], sandbox.Limits()), None)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == ["TMP-OK"], (out.stdout, out.stderr)


def test_a_checker_outlives_the_thread_that_first_needed_it(pool, folder):
    """The HTTP worker threads that check uploads end when idle; bubblewrap kills a sandbox
    when the thread that started it ends. The checker must still be there for the next upload."""
    t = threading.Thread(target=pool.check, args=((1, "a"), folder, ["good.png"], W, H))
    t.start()
    t.join(60)
    proc = pool._idle[(1, "a")].proc
    time.sleep(0.5)  # a dying sandbox is gone within milliseconds of its thread
    assert proc.poll() is None, "the checker died with the thread that started it"
    pool.check((1, "a"), folder, ["good.png"], W, H)
    assert pid(pool, (1, "a")) == proc.pid
