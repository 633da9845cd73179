"""Gossip's rules for cost that does not grow with N: neighbours, hops, the bound on unknown
origins, records that expire and a sync that reads only what changed; and the simulation of
bench/gossip_sim.py, which runs distren's own Gossip, at a size a test can afford."""

from __future__ import annotations

import math
import random
import sys
import time
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from distren.neighbours import FANOUT, HOP_LIMIT, NewOrigins, choose_neighbours, relay_hops
from distren.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import gossip_sim  # noqa: E402


def rows(names):
    return [{"name": n, "address": f"http://{n}.test"} for n in names]


@given(st.sets(st.from_regex(r"[a-z]{1,6}", fullmatch=True), max_size=40), st.integers(0, 3))
@settings(max_examples=100, deadline=None)
def test_neighbours_are_bounded_and_the_configured_come_first(names, n_conf):
    peers = rows(sorted(names))
    configured = [p["address"] for p in peers[:n_conf]]
    got = choose_neighbours("me", peers, configured)
    assert len(got) == max(min(FANOUT, len(peers) - ("me" in names)), min(n_conf, len(peers)))
    assert all(p in peers and p["name"] != "me" for p in got)
    assert [p["address"] for p in got[:n_conf]] == [a for a in configured if not a.startswith("http://me.")]
    assert got == choose_neighbours("me", list(reversed(peers)), configured)  # stable, whatever the order


def test_a_small_network_is_all_neighbours_and_servers_choose_differently():
    peers = rows(f"s{i}" for i in range(6))
    assert {p["name"] for p in choose_neighbours("me", peers)} == {f"s{i}" for i in range(6)}
    many = rows(f"s{i}" for i in range(100))
    picks = {tuple(p["name"] for p in choose_neighbours(me, many)) for me in ("a", "b", "c", "d")}
    assert len(picks) == 4
    # A neighbour that is backing off is replaced while others are there.
    first = choose_neighbours("a", many)
    resting = first[0]["name"]
    assert resting not in {p["name"] for p in choose_neighbours("a", many, resting=[resting])}


def test_hops_stop_at_the_limit():
    assert relay_hops(0) == 1
    assert relay_hops(HOP_LIMIT - 2) == HOP_LIMIT - 1
    assert relay_hops(HOP_LIMIT - 1) is None and relay_hops(10**6) is None and relay_hops(-1) is None


def test_unknown_origins_are_bounded_per_relaying_peer_and_hour():
    bound = NewOrigins(3)
    assert [bound.allow("m", now=t) for t in (0, 1, 2, 3, 4)] == [True, True, True, False, False]
    assert bound.allow("honest", now=5)  # another peer has its own budget
    assert bound.allow("m", now=3600.5) and not bound.allow("m", now=3600.6)


def ann(job: str, expires: float | None, active: bool = True) -> dict:
    body = {"job": job, "active": active}
    if expires is not None:
        body["expires"] = expires
    return body


def test_a_record_lives_until_it_expires_and_a_re_signed_one_replaces_it(tmp_path):
    s = Store(tmp_path / "d")
    now = time.time()
    assert s.record_announcement("distren://b/job/1", "b", ann("distren://b/job/1", now + 60), True)
    assert s.record_announcement("distren://b/job/2", "b", ann("distren://b/job/2", now - 1), True)
    assert [a["job"] for a in s.announcements()] == ["distren://b/job/1"]  # job 2 has expired
    cursor, _ = s.announcement_changes(0)
    # Re-signed: fresher, kept, not news; an older copy changes nothing.
    assert not s.record_announcement("distren://b/job/1", "b", ann("distren://b/job/1", now + 120), True)
    assert not s.record_announcement("distren://b/job/1", "b", ann("distren://b/job/1", now + 90), True)
    assert s.announcements()[0]["expires"] == now + 120
    later, changed = s.announcement_changes(cursor)
    assert later == cursor + 1 and [c for c in changed if '"expires": %r' % (now + 120) in c]
    assert s.announcement_changes(later) == (later, [])  # nothing since
    # A withdrawal is a change too, and final.
    assert s.record_announcement("distren://b/job/1", "b", ann("distren://b/job/1", None, False), False)
    assert '"active": false' in s.announcement_changes(later)[1][0]
    assert not s.record_announcement("distren://b/job/1", "b", ann("distren://b/job/1", now + 999), True)
    assert s.announcements() == []
    s.close()


def test_origins_silent_too_long_are_forgotten(tmp_path):
    s = Store(tmp_path / "d")
    now = time.time()
    for job, origin in (("distren://old/job/1", "old"), ("distren://new/job/1", "new"), ("distren://me/job/1", "me")):
        s.record_announcement(job, origin, ann(job, now + 60), True)
    with s._tx() as db:  # heard of last a day and a bit ago
        db.execute("UPDATE announcements SET heard=? WHERE origin IN ('old', 'me')", (now - 90000,))
    assert s.forget_silent_origins(now - 86400, keep="me") == ["old"]
    assert sorted(a["job"] for a in s.announcements()) == ["distren://me/job/1", "distren://new/job/1"]
    s.close()


def test_the_simulation_reaches_everyone_in_log_n_rounds_at_a_bounded_cost():
    """The acceptance line, at 300 servers (bench/gossip_sim.py runs it to 10,000)."""
    n = 300
    wire = gossip_sim.network(n, 24, random.Random(7), {})
    for job in (1, 2):
        knows, messages = gossip_sim.spread(wire, f"s{job * 17}", job)
        rounds = next(r + 1 for r, k in enumerate(knows) if k >= math.ceil(0.999 * n))
        assert rounds <= math.log2(n) + 3, knows
        assert messages / n < 2 * FANOUT
    # Up to date, a sync pass reads no record; after one new job, that one record.
    who = f"s{n - 1}"
    gossip_sim.sync_pass(wire, who)
    quiet = gossip_sim.sync_pass(wire, who)
    gossip_sim.spread(wire, "s3", 9)
    assert gossip_sim.sync_pass(wire, who) - quiet < 1000 * FANOUT
