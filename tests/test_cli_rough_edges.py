"""The command line as a new user meets it (issue 10, part 3): each rough edge tried the way a
person would, with the real CLI as a subprocess against real servers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO, SCENES, ServerProc, free_port, last_line, status, wait_for
from distren.concurrency import CAP_PER_CORE
from distren.progress import line


def distren(*args: str, cwd=None, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distren", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env=dict(os.environ, COLUMNS="200", **env))


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    """a renders; b peers with a and renders nothing; idle is alone and renders nothing."""
    base = tmp_path_factory.mktemp("farm")
    a = ServerProc("a", base / "a", free_port(), ["--slots", "1", "--allow", "b"]).start()
    b = ServerProc("b", base / "b", free_port(), ["--slots", "0", "--peer", a.http]).start()
    idle = ServerProc("idle", base / "idle", free_port(), ["--slots", "0"]).start()
    yield a, b, idle
    for s in (a, b, idle):
        s.stop()


def test_version():
    from distren import __version__

    res = distren("--version")
    assert res.returncode == 0 and res.stdout == f"distren {__version__}\n"


def _commands():
    import typer.main

    from distren.cli import app

    root = typer.main.get_command(app)
    for name, cmd in root.commands.items():
        for sub, c in getattr(cmd, "commands", {name: cmd}).items():
            yield (name,) if sub == name else (name, sub), c


def test_every_option_has_help_and_no_flag_shows_a_type():
    for path, cmd in _commands():
        for p in cmd.params:
            if p.param_type_name == "option":
                assert p.help, f"distren {' '.join(path)} {p.opts[0]} has no help"
        res = distren(*path, "--help")
        assert res.returncode == 0, res.stderr
        assert "<bool>" not in res.stdout, (path, res.stdout)
    serve = distren("serve", "--help").stdout
    assert f"up to {CAP_PER_CORE} per core" in " ".join(serve.split())  # the default, adaptive
    assert "three servers" in " ".join(distren("demo", "--help").stdout.split())


def test_the_progress_line_reads_as_words():
    frames = [{"state": s, "server": srv} for s, srv in
              [("done", "x")] * 5 + [("failed", None)] * 3]
    st = {"state": "failed", "frames": frames, "counts": {"done": 5, "failed": 3}}
    assert line(st) == "5/8 done, 3 failed (job failed)"
    frames = [{"state": "rendering", "server": f"distren://{n}/"} for n in "ab"] + [{"state": "queued", "server": None}]
    st = {"state": "rendering", "frames": frames, "counts": {"rendering": 2, "queued": 1}}
    assert line(st) == "0/3 done, 2 rendering on 2 servers"


def test_server_accepts_host_port_and_explains_a_missing_scheme(farm):
    a, _, _ = farm
    res = distren("jobs", "--server", f"127.0.0.1:{a.port}", "--token", a.token)
    assert res.returncode == 0, res.stderr
    for bad, said in (("localhost", "give the server's address as http://HOST:PORT or HOST:PORT"),
                      ("ftp://127.0.0.1:1", "starts with http:// or https://")):
        res = distren("jobs", "--server", bad, "--token", "x")
        assert res.returncode == 1 and f"--server '{bad}': " in res.stderr and said in res.stderr, res.stderr
        assert "is it running" not in res.stderr


def test_serve_on_a_port_in_use_is_one_line_and_leaves_nothing(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = distren("serve", "--name", "x", "--listen", f"127.0.0.1:{port}", "--data", str(tmp_path / "d"),
                      cwd=tmp_path)
    assert res.returncode == 1
    assert res.stderr.strip().count("\n") == 0, res.stderr
    assert f"--listen 127.0.0.1:{port}: cannot listen there: the port is in use" in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_log_level_and_no_line_per_outgoing_request(farm, tmp_path):
    a, b, _ = farm
    wait_for(lambda: len(status_servers(b)) == 2, "b to know a")
    logs = (b.data.parent / f"b-{b.port}.log").read_text()
    assert "distren server distren://b/" in logs
    assert "HTTP Request" not in logs and "httpx" not in logs  # b has spoken to a: hello, sync
    res = distren("serve", "--name", "x", "--log-level", "loud", "--data", str(tmp_path / "d"), cwd=tmp_path)
    assert res.returncode == 1 and "--log-level 'loud': use debug, info, warning or error" in res.stderr
    assert list(tmp_path.iterdir()) == []


def status_servers(server: ServerProc) -> list:
    import json

    return json.loads(server.cli("servers", "--json").stdout)


def test_peers_add_speaks_cli(farm):
    a, b, _ = farm
    res = b.cli("peers", "add", "localhost", check=False)
    assert res.returncode == 1 and "peers add 'localhost': give the server's address" in res.stderr
    assert "send {" not in res.stderr
    res = b.cli("peers", "add", f"127.0.0.1:{a.port}")
    assert f"peered with distren://a/ at http://127.0.0.1:{a.port}" in res.stderr


def test_width_alone_keeps_the_aspect_ratio(tmp_path):
    res = distren("pack", str(SCENES / "textured"), "-o", str(tmp_path / "j.tar"), "--width", "64")
    assert res.returncode == 0 and "at 64x48" in res.stderr, res.stderr
    res = distren("pack", str(SCENES / "textured"), "-o", str(tmp_path / "j.tar"), "--height", "60")
    assert res.returncode == 0 and "at 80x60" in res.stderr, res.stderr


def test_a_job_on_a_peer_names_the_peer_to_ask(farm, tmp_path):
    a, b, _ = farm
    url = last_line(b.cli("submit", str(SCENES / "textured"), "--width", "32", "--height", "24", "--frames", "1"))
    res = a.cli("status", url, check=False)
    assert res.returncode == 1 and f"ask it: --server http://127.0.0.1:{b.port}" in res.stderr.replace("\n", " ")
    a.cli("wait", url, "--server", b.http, "--token", b.token, "--timeout", "60")


def test_log_before_any_attempt_and_tries_after_a_retry(farm):
    a, _, idle = farm
    url = last_line(idle.cli("submit", str(SCENES / "textured"), "--width", "32", "--height", "24", "--frames", "1"))
    res = idle.cli("log", f"{url}/frame/1")
    assert res.stdout == "" and "has no log yet: no render of it has ended (it is queued)" in res.stderr
    bad = last_line(a.cli("submit", str(SCENES / "broken" / "parse_error" / "scene.ini"), "--width", "32",
                          "--height", "24", "--frames", "1", "--wait", check=False))
    a.cli("retry", f"{bad}/frame/1")
    a.cli("wait", bad, "--timeout", "60", check=False)
    tries = status(a, bad)["frames"][0]["attempts"]
    log = a.cli("log", f"{bad}/frame/1").stdout
    before, marker, after = log.partition("==== distren: retried by admin; its tries count from here\n")
    assert marker and before.count("==== distren: exit ") == 3
    assert after.count("==== distren: exit ") == tries == 3


def test_ctrl_c_while_waiting_leaves_the_job_running_and_says_how_to_follow_it(farm):
    _, _, idle = farm
    env = dict(os.environ, DISTREN_SERVER=idle.http, DISTREN_TOKEN=idle.token, COLUMNS="200")
    proc = subprocess.Popen([sys.executable, "-m", "distren", "submit", str(SCENES / "textured"), "--width", "32",
                             "--height", "24", "--frames", "1", "--wait"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = proc.stdout.readline().strip()  # the URL comes first, then the progress
    assert url.startswith("distren://idle/job/")
    time.sleep(0.5)  # let it get into its polling loop: an interrupt before that is Python's own
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    err = " ".join(err.split())
    assert proc.returncode == 130
    assert f"{url} keeps running on the server" in err and f"distren wait {url}" in err, err
    assert status(idle, url)["state"] == "queued"


def test_event_reasons_are_not_cut_off(farm):
    a, _, _ = farm
    name = "u" + "x" * 60  # a reason then holds a word wider than its column: distren://a/user/uxx...
    token = last_line(a.cli("user", "add", name))
    url = last_line(a.cli("submit", str(SCENES / "textured"), "--width", "32", "--height", "24", "--frames", "1",
                          token=token))
    reason = f"submitted by distren://a/user/{name}"
    for columns in ("80", "200"):
        env = dict(os.environ, DISTREN_SERVER=a.http, DISTREN_TOKEN=token, COLUMNS=columns)
        out = subprocess.run([sys.executable, "-m", "distren", "events", url], env=env, capture_output=True,
                             text=True, timeout=60).stdout
        assert "…" not in out, out
        cells = [row.split("│")[4] for row in out.splitlines() if row.count("│") == 5]  # the reason column
        assert reason.replace(" ", "") in "".join(cells).replace(" ", ""), out


def test_the_readme_puts_distren_on_the_path_before_using_it():
    readme = (REPO / "README.md").read_text()
    first = readme.index("\n    distren ")
    assert 'export PATH="$PWD/.venv/bin:$PATH"' in readme[:first]
    assert (REPO / ".venv" / "bin" / "distren").exists()  # what make setup leaves
