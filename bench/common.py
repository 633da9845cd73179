"""Shared by the benchmarks: a real server subprocess and timing helpers."""

from __future__ import annotations

import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
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


def distren_run(client: Client, scene_ini: Path, width: int | None, height: int | None, frames: str | None,
                work: Path) -> float:
    """Submit to download, as a user would: pack, upload, wait, fetch the frames (None: the
    scene's own size or range)."""
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


# --- several servers at once (federation benchmarks) --------------------------------------------


@dataclass
class Running:
    name: str
    address: str
    data: Path
    proc: subprocess.Popen
    client: Client


@contextmanager
def cluster(prefix: str = "cluster"):
    """Yields ``start(name, *serve_args) -> Running``. Every server started through it is stopped
    (by its own PID: other people's servers run on this machine too) and its folder removed."""
    tmp = Path(tempfile.mkdtemp(prefix=f"distren-bench-{prefix}-"))
    running: list[Running] = []

    def start(name: str, *args: str) -> Running:
        port = free_port()
        proc = start_server(name, tmp / name, port, *args, log=tmp / f"{name}.log")
        token = (tmp / name / "admin.token").read_text().strip()
        r = Running(name, f"http://127.0.0.1:{port}", tmp / name, proc, Client(f"http://127.0.0.1:{port}", token))
        running.append(r)
        return r

    failed = False
    try:
        yield start, tmp
    except BaseException:
        failed = True
        raise
    finally:
        for r in running:
            r.client.close()
            r.proc.terminate()
        for r in running:
            try:
                r.proc.wait(10)
            except subprocess.TimeoutExpired:
                r.proc.kill()
                r.proc.wait(5)
            if failed or r.proc.returncode not in (0, -15):
                log = (tmp / f"{r.name}.log").read_text(errors="replace").splitlines()
                print(f"--- last lines of {r.name}'s log (exit {r.proc.returncode}):", *log[-15:], sep="\n", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)


def wait_peered(a: Running, b: Running, timeout: float = 30) -> None:
    """Until ``a`` has pinned ``b`` (``b`` says hello on its first sync, at start-up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(s["name"] == b.name for s in a.client.servers()):
            return
        time.sleep(0.1)
    raise TimeoutError(f"{b.name} did not peer with {a.name} in {timeout:.0f} s")


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")
