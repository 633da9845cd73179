"""What a lease renewal costs the origin. With the default 20 s lease a renderer renews every
~6.7 s per frame it holds, so an origin lending F frames at once answers F / 6.7 renewals a second.

A load client introduces itself, leases one frame, then renews it N times in a row (each a fresh
signed request, as a renderer sends). Printed: the client's round-trip per renewal, and the
origin process's CPU time per renewal (from /proc), median of three runs.

    python bench/renewals.py [--renewals 2000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from nacl.signing import SigningKey

from distren.identity import Identity

sys.path.insert(0, str(Path(__file__).parent))
from common import server  # noqa: E402
from leases import LOAD, ORIGIN, hello, make_bundle  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def origin_pid(port: int) -> int:
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"serve" in cmd and f"127.0.0.1:{port}".encode() in cmd:
                return int(p.name)
    raise RuntimeError("origin process not found")


def run(n: int) -> tuple[float, float]:
    with server(ORIGIN, "--slots", "0", "--lease-timeout", "600") as (client, tmp):
        address = client.base
        key = SigningKey.generate()
        hello(address, key)
        ident = Identity(LOAD, key)
        url = client.submit(make_bundle(Path(tempfile.mkdtemp(dir=tmp)), 4))
        job = int(url.rsplit("/", 1)[1])
        with httpx.Client(base_url=address, timeout=30) as http:
            path = f"/fed/jobs/{job}/lease?slots=1&request=bench"
            r = http.post(path, headers=ident.sign_request("POST", path, to=ORIGIN))
            r.raise_for_status()
            frame = int(r.content.split(b"/frame/")[1].split(b'"')[0])
            pid = origin_pid(int(address.rsplit(":", 1)[1]))
            path = f"/fed/jobs/{job}/frames/{frame}/renew"
            cpu0, t0 = cpu_seconds(pid), time.perf_counter()
            for _ in range(n):
                http.post(path, headers=ident.sign_request("POST", path, to=ORIGIN)).raise_for_status()
            wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    return wall / n * 1e6, cpu / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--renewals", type=int, default=2000)
    n = ap.parse_args().renewals
    runs = [run(n) for _ in range(3)]
    rt, cpu = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
    print(f"renewal: {rt:.0f} us round trip, {cpu:.0f} us origin CPU (median of 3 x {n})")
    print(f"an origin lending 1,000 frames at once (renewed every 6.7 s): {1000 / 6.7 * cpu / 1e4:.1f} % of one core")


if __name__ == "__main__":
    main()
