"""What idle renderers cost an origin. One origin (--slots 0) has a job whose only frame is leased,
so nothing is ready; N renderers (each a server name of its own, with a loopback address of its
own: bench/stubs.py) keep asking it for work on keep-alive
connections, each request freshly signed:

  long poll  ?wait=20: the origin holds the request until work appears or 20 s pass
             (what renderers do now; their starts spread over the first 20 s);
  polling    no wait: answered 204 at once, asked again a second later (what renderers did:
             IDLE_JOB_BACKOFF).

The origin's CPU (user + system, all threads, from /proc) is measured over a window once all N
are asking, and over the same window before they start (the N peers known, silent): the first
less the second is what the waiting costs. The origin's /api/server says how many requests wait.

    python bench/idle.py [--renderers 1000] [--seconds 40] [--wait 20]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import httpx
from nacl.signing import SigningKey

from distren.identity import Identity

sys.path.insert(0, str(Path(__file__).parent))
from common import cluster  # noqa: E402
from leases import ORIGIN, cpu_seconds, make_bundle  # noqa: E402
from stubs import HelloStubs  # noqa: E402

async def _renderer(port: int, ident: Identity, job: int, wait: float, until: float, counts: dict) -> None:
    await asyncio.sleep(random.uniform(0, wait or 1.0))  # renderers are not in step
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.time() < until:
            path = f"/fed/jobs/{job}/lease?can=povray&slots=4" + (f"&wait={wait:g}" if wait else "")
            head = "".join(f"{n}: {v}\r\n" for n, v in ident.sign_request("POST", path, to=ORIGIN).items())
            writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n{head}\r\n".encode())
            resp = await reader.readuntil(b"\r\n\r\n")
            m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", resp)
            if m:
                await reader.readexactly(int(m.group(1)))
            status = int(resp[9:12])
            counts[status] = counts.get(status, 0) + 1
            if not wait:
                await asyncio.sleep(1.0)
    finally:
        writer.close()


def load(port: int, seed: bytes, names: list[str], job: int, wait: float, until: float, out) -> None:
    key = SigningKey(seed)
    counts: dict = {}

    async def run():
        await asyncio.gather(*(_renderer(port, Identity(n, key), job, wait, until, counts) for n in names))
    asyncio.run(run())
    out.put(counts)


def waiting(address: str) -> int:
    return httpx.get(address + "/api/server", timeout=10).json().get("lease_requests_waiting", -1)


def measure(stubs: HelloStubs, key: SigningKey, names: list[str], seconds: float, wait: float, bundle: Path) -> dict:
    with cluster("idle") as (start, _):
        origin = start(ORIGIN, "--slots", "0", "--lease-timeout", "3600", "--peering", "open")
        job = origin.client.job_id(origin.client.submit(bundle))
        stubs.say_hellos(origin.address)
        busy = Identity("busy", key)
        path = f"/fed/jobs/{job}/lease?can=povray"
        r = httpx.post(origin.address + path, headers=busy.sign_request("POST", path, to=ORIGIN), timeout=30)
        assert r.status_code == 200, r.text  # the only frame: nothing is ready from now on
        time.sleep(5)  # let the hellos' after-effects (confirmations, first syncs) settle
        cpu0, t0 = cpu_seconds(origin.proc.pid), time.time()
        time.sleep(seconds)
        quiet = (cpu_seconds(origin.proc.pid) - cpu0) / (time.time() - t0)

        port = int(origin.address.rsplit(":", 1)[1])
        ramp = (wait or 1.0) + 3
        until = time.time() + ramp + seconds + 5
        out = mp.get_context("spawn").Queue()
        proc = mp.get_context("spawn").Process(target=load, args=(port, bytes(key), names, job, wait, until, out))
        proc.start()
        time.sleep(ramp)
        held = waiting(origin.address)
        cpu0, t0 = cpu_seconds(origin.proc.pid), time.time()
        time.sleep(seconds)
        busy_cpu = (cpu_seconds(origin.proc.pid) - cpu0) / (time.time() - t0)
        held_end = waiting(origin.address)
        counts = out.get(timeout=wait + seconds + 120)
        proc.join(30)
    return {"quiet": quiet, "asking": busy_cpu, "waiting": (held, held_end), "answers": counts}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--renderers", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=40)
    ap.add_argument("--wait", type=float, default=20)
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores (load average {os.getloadavg()[0]:.2f}); {args.renderers} idle "
          f"renderers; CPU measured over {args.seconds:.0f} s")
    with tempfile.TemporaryDirectory(prefix="distren-bench-idle-") as work:
        bundle = make_bundle(Path(work), 1)
        key = SigningKey.generate()
        names = [f"idle-{i}" for i in range(args.renderers)]
        stubs = HelloStubs(key, names + ["busy"])
        for label, wait in ((f"long poll (wait={args.wait:g} s)", args.wait), ("polling every 1 s (before)", 0.0)):
            r = measure(stubs, key, names, args.seconds, wait, bundle)
            print(f"  {label:28s} origin CPU {100 * r['asking']:5.1f} % of a core with them asking, "
                  f"{100 * r['quiet']:4.1f} % before they started: the asking costs "
                  f"{100 * (r['asking'] - r['quiet']):5.1f} %; requests waiting at the origin "
                  f"{r['waiting'][0]}..{r['waiting'][1]}; answers {r['answers']}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
