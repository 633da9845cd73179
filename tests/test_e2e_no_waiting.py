"""No one waits on a stranger: a paused, dead or hung peer costs other servers' own jobs little,
measured against real servers on loopback (tiny frames, so a second's wait shows)."""

from __future__ import annotations

import signal
import time

import pytest

from conftest import POV_ANIM, last_line, status, wait_for
from mallory import Mallory, Tarpit

pytestmark = pytest.mark.e2e
FZ = POV_ANIM / "fractalzoom"


def own_job_seconds(server, frames: str = "1-10") -> float:
    """How long ``server``'s own small job takes, from submit to done, as its user sees it."""
    t = time.monotonic()
    server.cli("submit", str(FZ / "fractalzoom.ini"), "--width", "32", "--height", "24", "--frames", frames,
               "--wait", timeout=240)
    return time.monotonic() - t


def test_a_paused_or_dead_origin_hardly_changes_a_servers_own_job_time(start_server):
    a = start_server("a", "--slots", "0")
    b = start_server("b", "--slots", "2", "--peer", a.http)
    wait_for(lambda: "b" in a.cli("servers").stdout, "a and b to peer")
    normal = own_job_seconds(b)
    theirs = last_line(a.cli("submit", str(FZ / "fractalzoom.ini"), "--width", "64", "--height", "48",
                             "--frames", "1-40"))
    wait_for(lambda: status(a, theirs)["counts"]["rendering"], "b to render a frame of a's")
    a.proc.send_signal(signal.SIGSTOP)  # a hangs with b's leases, its job announced, connections open
    try:
        paused = own_job_seconds(b)
    finally:
        a.kill()
    dead = own_job_seconds(b)
    print(f"b's own 10-frame job: {normal:.1f} s with a well, {paused:.1f} s with a paused, {dead:.1f} s with a dead")
    assert paused < 2 * normal, (normal, paused)
    assert dead < 2 * normal, (normal, dead)


def test_origins_at_tarpit_addresses_do_not_stall_a_job(start_server, tmp_path):
    """Mallory announces 15 jobs of made-up origins whose addresses accept connections and never
    answer: the server asks them (and backs off), and its own job takes about as long as ever."""
    b = start_server("b", "--slots", "2")
    normal = own_job_seconds(b)
    m = Mallory("mallory", tmp_path / "m.key")
    pits = [Tarpit() for _ in range(15)]
    try:
        assert m.introduce(b).status_code == 200
        for i, pit in enumerate(pits):
            r = m.announce(b, m.announcement(f"distren://pit{i}/job/1", origin=f"pit{i}", address=pit.address))
            assert r.status_code == 200, r.text
        wait_for(lambda: all(p.accepted for p in pits), "b to call every tarpit", 30)
        stalled = own_job_seconds(b)
        print(f"b's own 10-frame job: {normal:.1f} s alone, {stalled:.1f} s with 15 tarpit origins announced")
        assert stalled < 2 * normal, (normal, stalled)
    finally:
        m.close()
        for p in pits:
            p.close()
