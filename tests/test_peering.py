"""Identity among strangers, against real servers on loopback: a key is pinned only from a
server's own hello at its own address, the peering policy decides who may ask for anything, and
neither relayed squatting nor a hello flood gets anywhere."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from conftest import SCENES, accept, last_line, status, wait_for
from distren.peering import HELLO_BURST, MAX_PENDING
from mallory import Mallory, client_from, fresh_hello

pytestmark = pytest.mark.e2e


def names(server, *args: str) -> set[str]:
    return {r["name"] for r in json.loads(server.cli(*args, "--json").stdout)}


def test_a_strangers_hello_waits_for_the_admin_who_accepts_or_rejects(start_server, tmp_path):
    a = start_server("a", "--slots", "0")
    m = Mallory("mallory", tmp_path / "m.key")
    eve = Mallory("eve", tmp_path / "e.key")
    try:
        r = m.introduce(a)
        assert r.status_code == 200 and r.json()["peering"] == "pending", r.text
        # Pending: she can do nothing else, and is told why.
        for resp in (m.state(a), m.lease(a, 1), m.announce(a, m.announcement("distren://mallory/job/1"))):
            assert resp.status_code == 403, resp.text
            assert "awaiting approval by the admin of a" in resp.json()["error"]
        assert names(a, "peers", "pending") == {"mallory"}
        assert names(a, "servers") == {"a"}
        a.cli("peers", "accept", "mallory")
        assert m.state(a).status_code == 200
        assert names(a, "peers", "pending") == set() and names(a, "servers") == {"a", "mallory"}

        assert eve.introduce(a).json()["peering"] == "pending"
        res = a.cli("peers", "reject", "eve")
        assert "rejected distren://eve/" in res.stderr
        r = eve.introduce(a)
        assert r.status_code == 403 and "refused to peer with eve" in r.json()["error"]
        assert eve.state(a).status_code == 403
        res = a.cli("peers", "accept", "nobody", check=False)
        assert res.returncode == 1 and "no server named 'nobody' is waiting" in res.stderr
    finally:
        m.close()
        eve.close()


def test_a_hello_is_confirmed_at_the_address_it_claims(start_server, tmp_path):
    a = start_server("a", "--slots", "0", "--peering", "open")
    b = start_server("b", "--slots", "0")
    m = Mallory("mallory", tmp_path / "m.key")
    try:
        # She claims b's address: b answers there with its own name and key, not hers.
        r = m.introduce(a, address=b.http)
        assert r.status_code == 403 and "does not answer as 'mallory'" in r.json()["error"], r.text
        # She claims b's name at her own address: a would have to confirm b's key there; it is not.
        r = m.introduce(a, name="b")
        assert r.status_code == 403, r.text
        # An address where nothing answers.
        r = m.introduce(a, address="http://127.0.0.1:9")
        assert r.status_code == 400 and "could not confirm 'mallory' at http://127.0.0.1:9" in r.json()["error"]
        assert names(a, "servers") == {"a"}
        # Her own name at her own address: confirmed, and under --peering open, a peer at once.
        r = m.introduce(a)
        assert r.status_code == 200 and r.json()["peering"] == "accepted", r.text
        assert m.state(a).status_code == 200
        # b still peers with a: nothing she tried touched b's name.
        b.cli("peers", "add", a.http)
        assert names(a, "servers") == {"a", "b", "mallory"}
    finally:
        m.close()


def test_allow_list_accepts_only_listed_names_and_configured_addresses(start_server, tmp_path):
    a = start_server("a", "--slots", "0", "--peering", "allow-list", "--allow", "friend")
    friend = Mallory("friend", tmp_path / "f.key")
    m = Mallory("mallory", tmp_path / "m.key")
    try:
        assert friend.introduce(a).json()["peering"] == "accepted"
        r = m.introduce(a)
        assert r.status_code == 403 and "allow list" in r.json()["error"] and "--allow mallory" in r.json()["error"]
        assert names(a, "peers", "pending") == set()
        # A server whose address a's admin configured is a peer of a's, both ways.
        c = start_server("c", "--slots", "0")
        a.cli("peers", "add", c.http)
        accept(c, "a")  # c's default policy: its admin says yes too
        wait_for(lambda: "a" in names(c, "servers"), "c to list a")
        assert names(a, "servers") == {"a", "c", "friend"}
    finally:
        friend.close()
        m.close()


def test_relayed_squatting_pins_nothing_and_the_real_server_still_peers(start_server, tmp_path):
    """Mallory announces distren://victim/job/1 signed with her own key. Before, every server
    pinned her key for 'victim' and the real victim was locked out."""
    a = start_server("a", "--slots", "0", "--allow", "b", "--allow", "mallory")
    b = start_server("b", "--slots", "0", "--peer", a.http, "--allow", "mallory")
    wait_for(lambda: "b" in names(a, "servers"), "a and b to peer")
    m = m2 = Mallory("mallory", tmp_path / "m.key")
    victim = start_server("victim", "--slots", "1")  # the real one, not yet anyone's peer
    try:
        assert m.introduce(a).json()["peering"] == "accepted"
        assert m.introduce(b).json()["peering"] == "accepted"
        # 1. Her record names victim at victim's real address: asked there, victim answers with
        #    its own key, not the one in the record.
        r = m.announce(a, m.announcement("distren://victim/job/1", origin="victim", address=victim.http))
        assert r.status_code == 403 and "does not answer as 'victim'" in r.json()["error"], r.text
        # 2. Her record names victim at her own address, which answers as herself.
        r = m.announce(a, m.announcement("distren://victim/job/2", origin="victim"))
        assert r.status_code == 403, r.text
        # 3. Her own server even answers as 'victim': the record is accepted as what it is (a job
        #    someone at her address announced), relayed, and nothing is pinned anywhere.
        m2 = Mallory("mallory", tmp_path / "m.key")  # another of her servers, same key
        m2.claims = "victim"
        r = m.announce(a, m.announcement("distren://victim/job/3", origin="victim", address=m2.address))
        assert r.status_code == 200 and r.json()["news"] is True, r.text
        token = {"Authorization": f"Bearer {b.token}"}
        wait_for(lambda: m.state(b).json()["announcements"], "the record to reach b by relay")
        for s in (a, b):
            assert "victim" not in names(s, "servers") | names(s, "peers", "pending")
        # The real victim peers with both, and its jobs are theirs to render.
        for s in (a, b):
            res = victim.cli("peers", "add", s.http)
            assert "awaiting approval" in res.stderr
            accept(s, "victim")
            assert "victim" in names(s, "servers")
        assert httpx.get(f"{b.http}/api/servers", headers=token).status_code == 200
        # From now on her records for victim are refused on sight: the key is pinned.
        r = m.announce(a, m.announcement("distren://victim/job/4", origin="victim"))
        assert r.status_code == 409 and "differs from the pinned one" in r.json()["error"], r.text
    finally:
        m.close()
        m2.close()


def test_a_hello_flood_is_bounded_and_does_not_slow_honest_requests(start_server, tmp_path):
    a = start_server("a", "--slots", "1", "--allow", "b")
    start_server("b", "--slots", "1", "--peer", a.http)  # an honest peer, rendering a's job with it
    wait_for(lambda: "b" in names(a, "servers"), "a and b to peer")
    m = Mallory("mallory", tmp_path / "m.key")
    current: dict = {}
    m.answer = lambda method, path: (200, current["hello"]) if path == "/fed/hello" else (404, {})
    try:
        # 1. Confirmable strangers (her server answers as each), from ten source addresses.
        codes: dict[int, int] = {}
        for i in range(10 * HELLO_BURST):
            _, current["hello"] = fresh_hello(f"s{i}", m.address)
            with client_from(f"127.0.0.{2 + i % 10}") as c:
                code = c.post(f"{a.http}/fed/hello", json=current["hello"], timeout=30).status_code
            codes[code] = codes.get(code, 0) + 1
        assert codes.get(200) == MAX_PENDING, codes  # then "too many awaiting approval"
        assert len(json.loads(a.cli("peers", "pending", "--json").stdout)) == MAX_PENDING

        # 2. Thousands of hellos with fresh keys and names from one address, in four threads,
        #    while an honest client and an honest peer go on.
        stop = threading.Event()
        flood_codes: list[int] = []

        def flood():
            with client_from("127.0.0.50") as c:
                while not stop.is_set() and len(flood_codes) < 2000:
                    _, h = fresh_hello(f"f{len(flood_codes)}-{threading.get_ident()}", m.address)
                    flood_codes.append(c.post(f"{a.http}/fed/hello", json=h, timeout=30).status_code)

        threads = [threading.Thread(target=flood) for _ in range(4)]
        for t in threads:
            t.start()
        worst = 0.0
        try:
            url = last_line(a.cli("submit", str(SCENES / "textured"), "--width", "32", "--height", "24",
                                  "--frames", "1-2"))
            while len(flood_codes) < 1000 and not stop.is_set():
                t0 = time.monotonic()
                assert httpx.get(f"{a.http}/api/server", timeout=10).status_code == 200
                worst = max(worst, time.monotonic() - t0)
                time.sleep(0.05)
            a.cli("wait", url, "--timeout", "60")
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert flood_codes.count(200) == 0 and flood_codes.count(429) > 0.9 * len(flood_codes), \
            {c: flood_codes.count(c) for c in set(flood_codes)}
        assert worst < 1.0, f"an honest request took {worst:.2f} s during the flood"
        assert status(a, url)["state"] == "done"
        assert len(json.loads(a.cli("peers", "pending", "--json").stdout)) == MAX_PENDING
        assert names(a, "servers") == {"a", "b"}
    finally:
        m.close()


def test_a_renderer_awaiting_approval_backs_off_then_renders_once_accepted(start_server, tmp_path):
    """r hears of a's job through b, asks a for work, is told it awaits a's admin, and asks again
    only every few seconds until a's admin accepts it."""
    a = start_server("a", "--slots", "0", "--allow", "b")
    b = start_server("b", "--slots", "0", "--peer", a.http)
    r = start_server("r", "--slots", "1", "--peer", b.http, "--log-level", "debug")  # its log shows each request it sends
    accept(b, "r")
    url = last_line(a.cli("submit", str(SCENES / "textured"), "--width", "32", "--height", "24", "--frames", "1-2"))
    wait_for(lambda: "r" in names(a, "peers", "pending"), "r to ask a for work", 60)
    log = r.data.parent / f"r-{r.port}.log"

    def refused() -> int:
        return sum(1 for line in log.read_text().splitlines() if "/lease?" in line and " 403 " in line)

    first = wait_for(refused, "a's refusal", 30)
    time.sleep(6)  # a window of a set length: how often r asks while it waits is the point
    assert refused() - first <= 2, f"r asked {refused() - first} times in 6 s while awaiting approval"
    assert "awaiting approval by the admin of a" in log.read_text()
    assert status(a, url)["counts"]["done"] == 0
    a.cli("peers", "accept", "r")
    a.cli("wait", url, "--timeout", "60")
    assert {f["server"] for f in status(a, url)["frames"]} == {"distren://r/"}
