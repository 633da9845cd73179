"""The origin's long poll: a renderer's lease request waits for work (``?wait=S``) on the event
loop, woken by the bus, instead of being answered 204 and asked again. Real servers on loopback
(Mallory signs the requests), and the waiters alone."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from conftest import SCENES, wait_for
from distren.bus import Bus, Change
from distren.longpoll import MAX_WAIT, Waiters
from mallory import Mallory
from test_e2e_leases import knows_slots, submit


def waiting(server) -> int:
    return httpx.get(f"{server.http}/api/server", timeout=10).json()["lease_requests_waiting"]


@pytest.fixture
def mallory(tmp_path):
    m = Mallory("mallory", tmp_path / "m.key", slots=3)
    yield m
    m.close()


@pytest.mark.e2e
def test_a_waiting_lease_request_gets_the_frame_that_becomes_ready(start_server, mallory):
    a = start_server("a", "--slots", "0", "--allow", "b")
    job = submit(a, SCENES / "textured", "--frames", "1-1")
    assert mallory.join(a).status_code == 200
    wait_for(lambda: knows_slots(a, "mallory", 3), "a to learn mallory's slots from her state")
    first = mallory.lease(a, job)
    assert first.status_code == 200, first.text
    frame = Mallory.leased_frame(first)

    # Nothing ready: answered at once without wait=, after the wait with it.
    assert mallory.lease(a, job).status_code == 204
    t0 = time.monotonic()
    r = mallory.call(a, "POST", f"/fed/jobs/{job}/lease?can=povray&wait=0.6")
    assert r.status_code == 204 and "X-Distren-Woken" not in r.headers
    assert time.monotonic() - t0 >= 0.6
    assert waiting(a) == 0

    answers: list[httpx.Response] = []
    polls = [threading.Thread(target=lambda: answers.append(
        mallory.call(a, "POST", f"/fed/jobs/{job}/lease?can=povray&wait=50"))) for _ in range(2)]
    for t in polls:
        t.start()
    wait_for(lambda: waiting(a) == 2, "both lease requests to wait at the origin", 20)
    t0 = time.monotonic()
    assert mallory.failed(a, job, frame).status_code == 200  # the frame is queued again
    for t in polls:
        t.join(30)
    took = time.monotonic() - t0
    assert not any(t.is_alive() for t in polls), "a waiting lease request was not woken"
    assert sorted(r.status_code for r in answers) == [200, 204], [r.text for r in answers]
    # One got the frame, the other learned that something changed (and asks again at once).
    assert [Mallory.leased_frame(r) for r in answers if r.status_code == 200] == [frame]
    assert [r.headers.get("X-Distren-Woken") for r in answers if r.status_code == 204] == ["1"]
    assert took < 10
    assert waiting(a) == 0


@pytest.mark.e2e
def test_a_waiting_lease_request_ends_with_its_job_and_bad_waits_are_refused(start_server, mallory):
    a = start_server("a", "--slots", "0", "--allow", "b")
    job = submit(a, SCENES / "textured", "--frames", "1-1")
    assert mallory.join(a).status_code == 200
    wait_for(lambda: knows_slots(a, "mallory", 3), "a to learn mallory's slots from her state")
    assert mallory.lease(a, job).status_code == 200
    r = mallory.call(a, "POST", f"/fed/jobs/{job}/lease?can=povray&wait=soon")
    assert r.status_code == 400 and "wait=" in r.json()["error"]
    answers: list[httpx.Response] = []
    poll = threading.Thread(target=lambda: answers.append(
        mallory.call(a, "POST", f"/fed/jobs/{job}/lease?can=povray&wait=50")))
    poll.start()
    wait_for(lambda: waiting(a) == 1, "the lease request to wait at the origin", 20)
    cancel = httpx.post(f"{a.http}/api/jobs/{job}/cancel", headers={"Authorization": f"Bearer {a.token}"}, timeout=30)
    assert cancel.status_code == 200, cancel.text
    poll.join(30)
    assert not poll.is_alive() and answers[0].status_code == 410, answers[0].text


def test_waiters_wake_on_ready_frames_and_job_ends_only():
    bus = Bus()
    w = Waiters()
    bus.subscribe(w.on_change)

    async def scenario():
        # The time runs out: False.
        assert await w.wait(1, w.generation, 0.05) is False
        # A change between the grant that found nothing and the wait: no sleep at all.
        g = w.generation
        bus.publish([Change(1, 3, "rendering", "queued", "lease ran out")])
        t0 = time.monotonic()
        assert await w.wait(1, g, 30) is True and time.monotonic() - t0 < 1
        # Published from another thread while three wait: a lease (queued -> rendering) wakes
        # nobody; job 2's end wakes job 2's waiter only; a queued frame of any job wakes the rest.
        tasks = {job: asyncio.create_task(w.wait(job, w.generation, 30)) for job in (1, 2, 3)}
        while len(w) < 3:
            await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, bus.publish, [Change(1, 1, "queued", "rendering", "rendering on b")])
        await loop.run_in_executor(None, bus.publish, [Change(2, None, "rendering", "cancelled", "by ann")])
        assert await asyncio.wait_for(tasks[2], 5) is True
        assert not tasks[1].done() and not tasks[3].done()
        await loop.run_in_executor(None, bus.publish, [Change(7, 1, "blocked", "queued", "dependency done")])
        assert await asyncio.wait_for(asyncio.gather(tasks[1], tasks[3]), 5) == [True, True]
        assert len(w) == 0

    asyncio.run(scenario())
    assert MAX_WAIT <= 60
