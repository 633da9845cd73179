"""``distren demo``: the product in under a minute, on this machine alone.

Starts three federated servers on loopback with throw-away state (``alpha`` takes the job,
``beta`` and ``gamma`` peer with it), renders the animation that ships with distren across all
three, shows progress, downloads the frames and writes an animated preview.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from .client import Client
from .errors import DistrenError
from .pack import pack
from .progress import follow, report

SCENE = Path(__file__).parent / "demo_scene" / "demo.ini"
WIDTH, HEIGHT = 160, 120
FPS = 12
err = Console(stderr=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(name: str, data: Path, port: int, *extra: str, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "distren", "serve", "--name", name, "--data", str(data),
         "--listen", f"127.0.0.1:{port}", *extra],
        stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DistrenError(f"the demo server {name} exited; its log is {log}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/server", timeout=1)
            return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise DistrenError(f"the demo server {name} did not start in 30 s; its log is {log}")


def write_preview(frames: list[Path], output: Path) -> list[Path]:
    """An MP4 (H.264 through the ffmpeg bundled with imageio-ffmpeg) and a GIF for the README."""
    import imageio_ffmpeg
    from PIL import Image

    images = [Image.open(p).convert("RGB") for p in frames]
    w, h = images[0].size
    mp4 = output / "preview.mp4"
    writer = imageio_ffmpeg.write_frames(str(mp4), (w, h), fps=FPS, codec="libx264", pix_fmt_out="yuv420p",
                                         macro_block_size=8, ffmpeg_log_level="error")
    writer.send(None)
    for im in images:
        writer.send(im.tobytes())
    writer.close()
    gif = output / "preview.gif"
    images[0].save(gif, save_all=True, append_images=images[1:], duration=int(1000 / FPS), loop=0)
    return [mp4, gif]


SERVERS = ("alpha", "beta", "gamma")
SLOTS_EACH = "2"


def run(output: Path) -> None:
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    procs = []
    with tempfile.TemporaryDirectory(prefix="distren-demo-") as tmp:
        tmp = Path(tmp)
        try:
            ports = {name: _free_port() for name in SERVERS}
            origin = f"http://127.0.0.1:{ports['alpha']}"
            for name in SERVERS:
                # One person runs all three: alpha accepts the other two by name (--allow); under the
                # default policy it would hold them for its admin's approval.
                peer = tuple(a for n in SERVERS if n != "alpha" for a in ("--allow", n)) if name == "alpha" \
                    else ("--peer", origin)
                procs.append(start_server(name, tmp / name, ports[name], "--slots", SLOTS_EACH, *peer,
                                          log=output / f"{name}.log"))
                err.print(f"server distren://{name}/ is up on http://127.0.0.1:{ports[name]}"
                          + (", peered with distren://alpha/" if peer else ""))
            token = (tmp / "alpha" / "admin.token").read_text().strip()
            with Client(origin, token) as client:
                _wait_for_peers(client, len(SERVERS))
                pack(SCENE, tmp / "demo.tar", WIDTH, HEIGHT)
                url = client.submit(tmp / "demo.tar")
                err.print(f"submitted the bundled animation ({WIDTH}x{HEIGHT}) to alpha as {url}")
                st = follow(client, url, timeout=300)
                if not report(st):
                    raise DistrenError(f"the demo job {st['state']}; see the logs in {output}")
                names = client.download(url, output)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(10)
    spread = Counter(f["server"] for f in st["frames"])
    table = Table("server", "frames rendered")
    for server, n in sorted(spread.items()):
        table.add_row(server, str(n))
    err.print(table)
    frames = sorted(output / n for n in names if n.endswith(".png"))
    previews = write_preview(frames, output)
    err.print(f"{len(frames)} frames in {output}/, preview {previews[0]} and {previews[1]} "
              f"({time.monotonic() - started:.1f} s)")


def _wait_for_peers(client: Client, n: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(client.servers()) < n:
        time.sleep(0.1)
