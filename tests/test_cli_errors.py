"""The command line's own refusals: one clear line on stderr, exit 1, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import SCENES


def distren(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distren", *args], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, COLUMNS="200", **env))


@pytest.mark.parametrize("args, message", [
    (("jobs", "--server", "http://127.0.0.1:9", "--token", "x"), "cannot reach the distren server at http://127.0.0.1:9"),
    (("status", "distren://a/jobs/1", "--server", "http://127.0.0.1:9", "--token", "x"), "unrecognised distren URL"),
    (("serve", "--name", "a", "--listen", "nowhere"), "--listen 'nowhere': use HOST:PORT"),
    (("serve", "--name", "bad name!", "--listen", "127.0.0.1:9"), "invalid server name 'bad name!'"),
    (("serve", "--name", "a", "--listen", "0.0.0.0:9"), "say which one peers use with --advertise"),
    (("pack", str(SCENES / "textured"), "-o", "x.tar", "--frames", "9-12"), "animates frames 1-6"),
    (("pack", str(SCENES / "textured"), "-o", "x.tar", "--tiles", "2x2"), "tiles split one still image"),
    (("pack", str(SCENES / "nothing-here"), "-o", "x.tar"), "no such file or folder"),
    (("pack", str(SCENES / "broken"), "-o", "x.tar"), "holds no .ini or .pov file"),
])
def test_refusals(tmp_path, args, message):
    res = subprocess.run([sys.executable, "-m", "distren", *args], capture_output=True, text=True, timeout=60,
                         cwd=tmp_path, env=dict(os.environ, COLUMNS="200"))
    assert res.returncode == 1, res.stderr
    assert message in res.stderr.replace("\n", " "), res.stderr
    assert list(tmp_path.iterdir()) == []  # no bundle, no data folder


def test_usage_errors_exit_2():
    res = distren("submit")
    assert res.returncode == 2 and "Missing argument" in res.stderr
