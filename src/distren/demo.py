"""``distren demo``: the product in under a minute, on this machine alone.

Starts a local server on a free port with throw-away state, renders the animation that ships
with distren, shows progress, downloads the frames and writes an animated preview.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console

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


def run(output: Path) -> None:
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="distren-demo-") as tmp:
        tmp = Path(tmp)
        port = _free_port()
        proc = start_server("demo", tmp / "data", port, log=output / "server.log")
        try:
            token = (tmp / "data" / "admin.token").read_text().strip()
            with Client(f"http://127.0.0.1:{port}", token) as client:
                err.print(f"server distren://demo/ is up on http://127.0.0.1:{port}")
                pack(SCENE, tmp / "demo.tar", WIDTH, HEIGHT)
                url = client.submit(tmp / "demo.tar")
                err.print(f"submitted the bundled animation as {url}")
                st = follow(client, url, timeout=300)
                if not report(st):
                    raise DistrenError(f"the demo job {st['state']}; see {output / 'server.log'}")
                names = client.download(url, output)
        finally:
            proc.terminate()
            proc.wait(10)
    frames = sorted(output / n for n in names if n.endswith(".png"))
    previews = write_preview(frames, output)
    err.print(f"{len(frames)} frames in {output}/, preview {previews[0]} and {previews[1]} "
              f"({time.monotonic() - started:.1f} s)")
