"""Gossip at scale: distren's own relay and sync code (distren.gossip.Gossip: receive, relay to
neighbours, GET /fed/state answers and pulls by cursor; distren.neighbours) run for 100, 1,000
and 10,000 servers in one process. Only the wire and the database are stand-ins: a call is
delivered in the next relay round, and records are kept in memory with the store's rules.

    python bench/gossip_sim.py [--sizes 100,1000,10000] [--known 24] [--seed 1]

Each server knows --known others (as if from hellos and earlier jobs), one of them its
configured --peer, and chooses its neighbours among them. It prints, per size: relay rounds
until 99.9 % of the servers know a new job (and until all do), announce messages per server per
job; then, at 1,000 servers, as the number of origins with a live job grows: messages per
server per job, and the bytes one server's sync pass reads (up to date; after one new job;
a new server's first, whole pull).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from types import SimpleNamespace

from nacl.signing import SigningKey

from distren import gossip
from distren.errors import DistrenError
from distren.identity import Identity
from distren.neighbours import FANOUT

JF = SimpleNamespace(type="povray", frames=[SimpleNamespace(backend=lambda t: t)])


class Inline:
    """The relay pool, made synchronous: a push only queues a message for the next round."""

    def submit(self, fn, *args):
        fn(*args)

    def shutdown(self, **_):
        pass


class Wire:
    def __init__(self):
        self.servers: dict[str, gossip.Gossip] = {}
        self.queue: list[tuple[str, str, dict, int]] = []  # (from, to, record, hops)
        self.messages = 0
        self.read = 0  # bytes of /fed/state answers

    def transport(self, me: str):
        wire = self

        class Transport:
            def call(self, method, base, path, body=None, retries=0, timeout=None, *, to, headers=None):
                if path.startswith("/fed/announce"):
                    wire.messages += 1
                    wire.queue.append((me, to, body, int(path.split("hops=")[1])))
                    return SimpleNamespace(status_code=200, headers={}, json=lambda: {})
                since = int(path.split("since=")[1])
                answer = wire.servers[to].state(me, since)
                wire.read += len(json.dumps(answer))
                return SimpleNamespace(status_code=200, headers={}, json=lambda: answer)  # no ETags here

        return Transport()

    def round(self) -> int:
        """Deliver every queued message; those that were news queue the next round's."""
        todo, self.queue = self.queue, []
        for sender, to, ann, hops in todo:
            try:
                self.servers[to].receive(sender, ann, hops)
            except DistrenError:
                pass
        return len(todo)


class MemoryStore:
    """What Gossip asks of distren.store.Store, in memory, by the same rules (store/announcements.py)."""

    def __init__(self, pinned: dict[str, str]):
        self.pinned = pinned  # name -> key of servers every server knows (shared: saves memory)
        self.known: list[dict] = []
        self.rows: dict[str, list] = {}  # job -> [seq, active, expires, body]
        self.seq = 0

    def peers(self):
        return self.known

    def peer_key(self, name):
        return self.pinned.get(name)

    def pin_peer(self, name, address, key):
        self.known.append({"name": name, "address": address})

    def peer_heard(self, *_):
        pass

    def record_announcement(self, job, origin, body, active):
        row = self.rows.get(job)
        if row is not None and not row[1]:
            return False
        news = row is None or not active
        if not news and body["expires"] <= row[2]:
            return False
        self.seq += 1
        self.rows[job] = [self.seq, active, body.get("expires"), json.dumps(body, sort_keys=True)]
        return news

    def announcement_changes(self, since, withdrawals=1000):
        rows = sorted(r for r in self.rows.values() if r[0] > since and r[1])
        return self.seq, [r[3] for r in rows]

    def get_job(self, job_id):
        return SimpleNamespace(created=time.time(), priority=0)

    def frames(self, job_id):
        return [0]


def network(n: int, known: int, rng: random.Random, pinned: dict[str, str]) -> Wire:
    wire = Wire()
    names = [f"s{i}" for i in range(n)]
    for i, name in enumerate(names):
        ident = Identity(name, SigningKey.generate())
        pinned[name] = ident.public
        store = MemoryStore(pinned)
        boot = names[rng.randrange(i)] if i else None  # its --peer: a server that was there before
        others = {boot} if boot else set()
        while len(others) < min(known, n - 1):
            others.add(names[rng.randrange(n)])
        others.discard(name)
        store.known = [{"name": o, "address": f"http://{o}.sim"} for o in sorted(others)]
        peering = SimpleNamespace(identity=ident, address=f"http://{name}.sim")
        jobfiles = SimpleNamespace(get=lambda job_id: (JF, None), bundle_sha256=lambda job_id: "0" * 64)
        g = gossip.Gossip(peering, [f"http://{boot}.sim"] if boot else [], store, wire.transport(name), jobfiles,
                          0, list, lambda: None, lambda: None)
        g._relay = Inline()
        wire.servers[name] = g
    return wire


def spread(wire: Wire, origin: str, job_id: int) -> tuple[list[int], int]:
    """Announce a job at ``origin``; relay rounds until no news is left. Returns how many
    servers knew it after each round, and the messages it cost."""
    before = wire.messages
    g = wire.servers[origin]
    g.announce(job_id)
    url = f"distren://{origin}/job/{job_id}"
    knows = []
    while wire.queue:
        wire.round()
        knows.append(sum(1 for s in wire.servers.values() if url in s.store.rows))
    return knows, wire.messages - before


def sync_pass(wire: Wire, who: str) -> int:
    """Bytes ``who`` reads pulling from each of its neighbours once."""
    before = wire.read
    g = wire.servers[who]
    for p in g.neighbours():
        g._pull(p["name"], p["address"])
    return wire.read - before


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--known", type=int, default=24)
    ap.add_argument("--origins", default="1,10,100,1000")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    print(f"fan-out {FANOUT}, each server knows {args.known} others\n")
    print("| servers | rounds to 99.9 % | rounds to all | log2(N) + 3 | announce messages per server per job |")
    print("|---|---|---|---|---|")
    for n in map(int, args.sizes.split(",")):
        t = time.monotonic()
        wire = network(n, args.known, rng, {})
        rounds99, rounds_all, msgs = [], [], []
        for trial in range(3):
            knows, m = spread(wire, f"s{rng.randrange(n)}", trial + 1)
            rounds99.append(next(r + 1 for r, k in enumerate(knows) if k >= math.ceil(0.999 * n)))
            rounds_all.append(next((r + 1 for r, k in enumerate(knows) if k == n), None))
            msgs.append(m / n)
        print(f"| {n:,} | {max(rounds99)} | {max(r or 0 for r in rounds_all) or 'by sync'} | "
              f"{math.log2(n) + 3:.1f} | {max(msgs):.2f} |")
        print(f"({n:,} servers: {time.monotonic() - t:.0f} s)", file=sys.stderr)
    n = 1000
    wire = network(n, args.known, rng, {})
    print(f"\n{n:,} servers, as origins grow (each origin one live job):\n")
    print("| origins | messages per server per job | sync pass, up to date | after one new job | a new server's whole pull |")
    print("|---|---|---|---|---|")
    done = 0
    for o in map(int, args.origins.split(",")):
        msgs_before = wire.messages
        for k in range(done, o):
            spread(wire, f"s{k}", 1)
        jobs = o - done
        per_job = (wire.messages - msgs_before) / n / max(1, jobs)
        done = o
        who = f"s{n - 1}"
        sync_pass(wire, who)  # catch up
        quiet = sync_pass(wire, who)
        spread(wire, f"s{n - 2}", 100 + o)
        one_new = sync_pass(wire, who)
        g = wire.servers[who]
        whole = sum(len(json.dumps(wire.servers[p["name"]].state(who, 0))) for p in g.neighbours())
        print(f"| {o:,} | {per_job:.2f} | {quiet:,} B | {one_new:,} B | {whole:,} B |")


if __name__ == "__main__":
    main()
