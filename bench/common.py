"""Shared by the benchmarks: a real server subprocess and timing helpers."""

from __future__ import annotations

import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from distren.client import Client
from distren.demo import start_server
from distren.pack import pack

FRACTALZOOM = Path("/usr/share/povray-3.7/scenes/animations/fractalzoom")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(name: str, *args: str):
    tmp = Path(tempfile.mkdtemp(prefix=f"distren-bench-{name}-"))
    port = free_port()
    proc = start_server(name, tmp / "data", port, *args, log=tmp / "server.log")
    try:
        token = (tmp / "data" / "admin.token").read_text().strip()
        with Client(f"http://127.0.0.1:{port}", token) as client:
            yield client, tmp
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def distren_run(client: Client, scene_ini: Path, width: int, height: int, frames: str, work: Path) -> float:
    """Submit to download, as a user would: pack, upload, wait, fetch the frames."""
    out = Path(tempfile.mkdtemp(dir=work))
    t0 = time.perf_counter()
    pack(scene_ini, out / "job.tar", width, height, frames)
    url = client.submit(out / "job.tar")
    st = client.wait(url, poll=0.05)
    assert st["state"] == "done", st
    client.download(url, out / "frames")
    elapsed = time.perf_counter() - t0
    shutil.rmtree(out)
    return elapsed


def povray_run(scene: Path, ini: str, width: int, height: int, first: int, last: int) -> float:
    """POV-Ray alone: one process renders the frames, on all cores (its default)."""
    work = Path(tempfile.mkdtemp())
    shutil.copytree(scene, work / "s")
    t0 = time.perf_counter()
    subprocess.run(["povray", ini, f"+W{width}", f"+H{height}", f"+SF{first}", f"+EF{last}", "-D"],
                   cwd=work / "s", check=True, capture_output=True)
    elapsed = time.perf_counter() - t0
    shutil.rmtree(work)
    return elapsed


def median(xs: list[float]) -> float:
    return statistics.median(xs)
