"""Shared fixtures: real distren servers as subprocesses on loopback, the real CLI, real POV-Ray."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SCENES = REPO / "tests" / "scenes"
POV_ANIM = Path("/usr/share/povray-3.7/scenes/animations")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProc:
    name: str
    data: Path
    port: int
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    preexec: Callable[[], None] | None = None  # run in the server's process before it starts
    ca: Path | None = None  # the CA its certificate is signed by, when it serves HTTPS (--tls-cert)

    @property
    def http(self) -> str:
        return f"{'https' if '--tls-cert' in self.args else 'http'}://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        return (self.data / "admin.token").read_text().strip()

    def start(self, timeout: float = 20.0) -> "ServerProc":
        self.data.mkdir(parents=True, exist_ok=True)
        log = open(self.data.parent / f"{self.name}-{self.port}.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "distren", "serve", "--name", self.name, "--data", str(self.data),
             "--listen", f"127.0.0.1:{self.port}", *self.args],
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=self.preexec)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server {self.name} exited with {self.proc.returncode}; see {log.name}")
            try:
                if httpx.get(f"{self.http}/api/server", timeout=1,
                             verify=ssl.create_default_context(cafile=self.ca) if self.ca else True).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.kill()  # not left running: no fixture will stop a server it never got
        raise RuntimeError(f"server {self.name} did not come up in {timeout} s")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when a machine dies."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def cli(self, *args: str, check: bool = True, token: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        env = dict(os.environ, DISTREN_SERVER=self.http, DISTREN_TOKEN=self.token if token is None else token,
                   COLUMNS="200", **({"SSL_CERT_FILE": str(self.ca)} if self.ca else {}))
        res = subprocess.run([sys.executable, "-m", "distren", *args], capture_output=True, text=True,
                             env=env, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"distren {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
        return res


@pytest.fixture
def start_server(tmp_path):
    started: list[ServerProc] = []

    def start(name: str = "alpha", *args: str, data: Path | None = None, port: int | None = None,
              ca: Path | None = None) -> ServerProc:
        s = ServerProc(name, data or tmp_path / f"{name}-data", port or free_port(), list(args), ca=ca)
        started.append(s.start())
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """One server for the tests of a module that do not restart it."""
    base = tmp_path_factory.mktemp("shared")
    s = ServerProc("shared", base / "data", free_port()).start()
    yield s
    s.stop()


def wait_for(predicate, what: str = "condition", timeout: float = 60):
    """Poll ``predicate`` until it returns something true (returned), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


def accept(origin: ServerProc, *names: str, timeout: float = 30) -> None:
    """What the admin of ``origin`` does under the default policy (approve) when servers ask to
    peer: wait until each is pending, then `distren peers accept` it."""
    for name in names:
        wait_for(lambda: name in {p["name"] for p in json.loads(origin.cli("peers", "pending", "--json").stdout)},
                 f"{name} to ask {origin.name} to peer", timeout)
        origin.cli("peers", "accept", name)


def last_line(res: subprocess.CompletedProcess) -> str:
    """What `distren submit` prints last: the job's URL."""
    return res.stdout.strip().splitlines()[-1]


def status(server: ServerProc, url: str) -> dict:
    return json.loads(server.cli("status", url, "--json").stdout)


def copy_scene(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def povray_reference(scene: Path, ini: str, out: Path, width: int, height: int,
                     first: int | None = None, last: int | None = None) -> Path:
    """POV-Ray alone, one process, the way a user renders the INI; returns the folder."""
    work = copy_scene(scene, out)
    argv = ["povray", ini, f"+W{width}", f"+H{height}", "-D"]
    if first is not None:
        argv += [f"+SF{first}", f"+EF{last}"]
    subprocess.run(argv, cwd=work, check=True, capture_output=True)
    return work


def same_pixels(a: Path, b: Path) -> bool:
    with Image.open(a) as ia, Image.open(b) as ib:
        return ia.mode == ib.mode and ia.size == ib.size and ia.tobytes() == ib.tobytes()


def assert_frames_match(got: Path, ref: Path, names: list[str]) -> None:
    assert names, "no frames to compare"
    for n in names:
        assert (got / n).is_file(), f"distren did not deliver {n}; got {sorted(p.name for p in got.iterdir())}"
        assert (ref / n).is_file(), f"POV-Ray did not write {n}"
        assert same_pixels(got / n, ref / n), f"{n}: pixels differ from POV-Ray's own render"
