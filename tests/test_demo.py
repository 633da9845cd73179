"""`distren demo` (what `make demo` runs): three real servers, the bundled scene, a preview."""

from __future__ import annotations

import subprocess
import sys

import imageio_ffmpeg
import pytest
from PIL import Image

pytestmark = pytest.mark.e2e


def test_demo_renders_across_three_servers_and_writes_previews(tmp_path):
    out = tmp_path / "demo"
    res = subprocess.run([sys.executable, "-m", "distren", "demo", "-o", str(out)], capture_output=True, text=True,
                         timeout=120, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    frames = sorted(out.glob("demo*.png"))
    assert [p.name for p in frames] == [f"demo{i:02d}.png" for i in range(1, 25)]
    assert all(Image.open(p).size == (160, 120) for p in frames)
    for name in ("alpha", "beta", "gamma"):
        assert f"distren://{name}/" in res.stderr
    n, _ = imageio_ffmpeg.count_frames_and_secs(str(out / "preview.mp4"))
    assert n == 24
    assert Image.open(out / "preview.gif").n_frames == 24
