"""The governor: how many renders run at once, read from the machine through seams here."""

from __future__ import annotations

import threading
import time

import pytest

from distren.concurrency import MIN_FREE_MEMORY, Governor

WINDOW = 0.005


class Machine:
    """/proc/stat and /proc/meminfo as a test sets them: ``idle`` is the share of the CPU time
    that passes idle between two reads."""

    def __init__(self, idle: float, memory: int = 8 * MIN_FREE_MEMORY):
        self.idle, self.memory = idle, memory
        self.t_idle = self.t_total = 0.0

    def cpu(self):
        self.t_idle += 100 * self.idle
        self.t_total += 100
        return self.t_idle, self.t_total


class Slots:
    """``n`` slot threads that each take a permit, render (hold it) until told to stop."""

    def __init__(self, gov: Governor, n: int):
        self.gov, self.stop, self.done = gov, threading.Event(), threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]
        for t in self.threads:
            t.start()

    def _run(self):
        while not self.stop.is_set():
            if self.gov.acquire(self.stop, patience=0.2):
                self.gov.busy()
                self.done.wait()
                self.gov.release(rendered=True)
                return

    def close(self):
        self.stop.set()
        self.done.set()
        for t in self.threads:
            t.join(5)


def settle(gov: Governor, seconds: float = 0.4) -> int:
    """The most renders seen at once while the governor had ``seconds`` to move."""
    most, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        most = max(most, gov.rendering)
        time.sleep(0.005)
    return max(most, gov.rendering)


def governor(machine: Machine, cap: int = 12, cpus: int = 2, adaptive: bool = True) -> Governor:
    return Governor(cap, adaptive, cpus=cpus, cpu=machine.cpu, memory=lambda: machine.memory, window=WINDOW)


def test_idle_cores_let_more_renders_start_than_there_are_cores_up_to_the_cap():
    gov = governor(Machine(idle=0.9), cap=6)
    slots = Slots(gov, 10)
    try:
        assert settle(gov) == 6
        assert gov.capacity() == 6  # what lease requests state
    finally:
        slots.close()


def test_busy_cores_hold_it_to_one_render_per_core():
    gov = governor(Machine(idle=0.0), cap=12, cpus=2)
    slots = Slots(gov, 10)
    try:
        assert settle(gov) == 2
    finally:
        slots.close()


def test_the_target_falls_back_when_the_cores_become_busy():
    machine = Machine(idle=0.9)
    gov = governor(machine, cap=8)
    slots = Slots(gov, 10)
    try:
        assert settle(gov) == 8
        machine.idle = 0.0
        deadline = time.monotonic() + 2
        while gov.capacity() > 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert gov.capacity() == 2
    finally:
        slots.close()


@pytest.mark.parametrize("memory, most", [(MIN_FREE_MEMORY // 4, 1), (MIN_FREE_MEMORY * 3 // 4, 2)])
def test_short_memory_holds_renders_back_however_idle_the_cores(memory, most):
    """Below half the reserve it sheds to one render; below the reserve it adds none."""
    gov = governor(Machine(idle=1.0, memory=memory), cap=12, cpus=2)
    slots = Slots(gov, 10)
    try:
        assert settle(gov) == most
    finally:
        slots.close()


def test_permits_that_found_no_work_do_not_raise_the_target():
    """Slots that look for work and find none are not demand: an idle server stays put."""
    gov = governor(Machine(idle=1.0), cap=12)
    stop = threading.Event()
    end = time.monotonic() + 0.2
    while time.monotonic() < end:
        assert gov.acquire(stop, patience=0.05)
        gov.release(rendered=False)
    assert gov.capacity() == 2


def test_slots_n_fixes_the_number_whatever_the_machine_says():
    gov = governor(Machine(idle=1.0), cap=3, adaptive=False)
    slots = Slots(gov, 6)
    try:
        assert settle(gov, 0.2) == 3
    finally:
        slots.close()
    gov = governor(Machine(idle=0.0, memory=0), cap=3, adaptive=False)
    slots = Slots(gov, 6)
    try:
        assert settle(gov, 0.2) == 3
    finally:
        slots.close()


def test_a_render_alone_gets_every_core_and_one_beside_others_gets_one():
    gov = governor(Machine(idle=1.0), cap=4, cpus=4)
    stop = threading.Event()
    assert gov.acquire(stop)
    gov.busy()
    assert gov.threads() == 4
    assert gov.acquire(stop)
    gov.busy()
    assert gov.threads() == 2
    for _ in range(2):
        assert gov.acquire(stop)
        gov.busy()
    assert gov.threads() == 1


def test_stop_ends_a_wait_for_a_permit():
    gov = governor(Machine(idle=0.0), cap=1, adaptive=False)
    stop = threading.Event()
    assert gov.acquire(stop)
    gov.busy()
    threading.Timer(0.05, lambda: (stop.set(), gov.interrupt())).start()
    t0 = time.monotonic()
    assert not gov.acquire(stop, patience=5)
    assert time.monotonic() - t0 < 0.5


# --- a real server with default settings --------------------------------------------------------


def test_default_server_renders_light_frames_side_by_side_with_povrays_pixels(start_server, tmp_path):
    """Without --slots, frames of a light job render at once (POV-Ray told to use one thread
    each beside the others), and each frame keeps POV-Ray's own pixels."""
    from distren.client import Client

    from conftest import POV_ANIM, assert_frames_match, povray_reference

    server = start_server("adaptive")
    scene = POV_ANIM / "fractalzoom"
    url = server.cli("submit", str(scene / "fractalzoom.ini"), "--width", "32", "--height", "24",
                     "--frames", "1-6").stdout.strip().splitlines()[-1]
    most = 0
    with Client(server.http, server.token) as client:
        assert client.info()["slots"] > 2  # a cap, not the number
        while client.status(url)["state"] not in ("done", "failed"):
            me = [s for s in client.servers() if s["name"] == "adaptive"]
            most = max(most, len(me[0]["rendering"]))
        assert client.status(url)["state"] == "done"
        logs = [client.log(f"{url}/frame/{i}") for i in range(1, 7)]
    assert most >= 2
    assert any("+WT1 " in log for log in logs)
    got = tmp_path / "got"
    server.cli("download", url, "-o", str(got))
    ref = povray_reference(scene, "fractalzoom.ini", tmp_path / "ref", 32, 24, 1, 6)
    assert_frames_match(got, ref, [f"fractalzoom{i:02d}.png" for i in range(1, 7)])
