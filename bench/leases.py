"""How many leases per second does one origin grant? A load client that introduced itself with
POST /fed/hello sends signed POST /fed/jobs/ID/lease requests (fresh nonce and time each, as a
renderer does) as fast as it can for a fixed time, and counts the 200s.

The origin has --slots 0 (it renders nothing itself) and --lease-timeout 600 (granted frames
stay leased). Two workloads:
  big    one job of 20,000 frames, as the brief asks;
  small  many 25-frame jobs (the client rotates over them), which isolates what a lease costs
         apart from the size of its job.
Every client configuration gets a fresh origin. A run of GET /api/server (no lease work) shows
what uvicorn + FastAPI answer at most. Then py-spy samples the origin under load (skipped without
py-spy) and the script prints where its event-loop thread spends its (wall-clock) time.

    python bench/leases.py [--seconds 10] [--no-profile]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import multiprocessing as mp
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
from nacl.signing import SigningKey

from distren.identity import Identity
from distren.pack import pack

sys.path.insert(0, str(Path(__file__).parent))
from common import cluster  # noqa: E402
from stubs import HelloStubs  # noqa: E402

LOAD, ORIGIN = "load", "a"  # the client's and the origin's server names (signatures name the recipient)
# An origin lends one renderer at most its slots (at most 1024), so every connection of the load
# is a renderer of its own (load-P-C, one key), each saying it has the most slots allowed.
SLOTS = 1024
POV = "camera{location <0,0,-3> look_at 0}\nlight_source{<2,4,-3> rgb 1}\nsphere{0,1 pigment{rgb clock}}\n"
WORKLOADS = {"big": (1, 20000), "small": (400, 25)}  # jobs, frames per job
# (label, mode, processes, connections per process)
CONFIGS = [("httpx.Client, 8 threads", "httpx", 1, 8),
           ("http.client, 8 threads", "httpclient", 1, 8),
           ("asyncio raw HTTP/1.1, 16 conns", "raw", 1, 16),
           ("asyncio raw HTTP/1.1, 2 procs x 8 conns", "raw", 2, 8)]
CEILING = ("GET /api/server, asyncio raw, 2 procs x 8 conns", "ceiling", 2, 8)
CLK = os.sysconf("SC_CLK_TCK")
PY_SPY = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))


# --- the load client (runs in child processes) -----------------------------------------------


def _note(counts: Counter, status: int, body: bytes, jobs: list[int], job: int, deadline: float) -> None:
    # Answers that arrive after the deadline are kept apart: they do not count for the rate.
    counts[status if time.time() <= deadline else f"{status} late"] += 1
    if status >= 400 and not any(isinstance(k, tuple) for k in counts):  # keep the first error's text
        counts[("first error", status, body[:200].decode(errors="replace"))] = 1
    if status == 204 and job in jobs:  # that job has no queued frame left
        jobs.remove(job)


async def _raw_conn(port: int, ident: Identity | None, jobs: list[int], k: int, deadline: float, counts: Counter):
    """Hand-written HTTP/1.1 on one keep-alive connection: the cheapest client Python offers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(10**7):
            if not jobs or time.time() > deadline:
                break
            if ident is None:  # the HTTP stack's ceiling: an unsigned request that does next to nothing
                job = None
                writer.write(b"GET /api/server HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            else:
                job = jobs[k % len(jobs)]
                k += 1
                path = f"/fed/jobs/{job}/lease?slots={SLOTS}"
                head = "".join(f"{n}: {v}\r\n" for n, v in ident.sign_request("POST", path, to=ORIGIN).items())
                writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n{head}\r\n".encode())
            resp = await reader.readuntil(b"\r\n\r\n")
            m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", resp)
            body = await reader.readexactly(int(m.group(1))) if m else b""
            _note(counts, int(resp[9:12]), body, jobs, job, deadline)
    finally:
        writer.close()


def _thread_conn(mode: str, port: int, ident: Identity, jobs: list[int], k: int, deadline: float, counts: Counter):
    if mode == "httpx":
        conn = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for _ in range(10**7):
            if not jobs or time.time() > deadline:
                break
            job = jobs[k % len(jobs)]
            k += 1
            path = f"/fed/jobs/{job}/lease?slots={SLOTS}"
            headers = ident.sign_request("POST", path, to=ORIGIN)
            if mode == "httpx":
                r = conn.post(path, headers=headers)
                status, body = r.status_code, r.content
            else:
                conn.request("POST", path, headers=headers)
                r = conn.getresponse()
                status, body = r.status, r.read()
            _note(counts, status, body, jobs, job, deadline)
    finally:
        conn.close()


def load_worker(mode: str, port: int, seed: bytes, jobs: list[int], conns: int, start: float, seconds: float, out,
                index: int = 0):
    idents = [None if mode == "ceiling" else Identity(load_name(index, i), SigningKey(seed)) for i in range(conns)]
    counts: Counter = Counter()
    deadline = start + seconds
    time.sleep(max(0.0, start - time.time()))
    cpu0 = sum(os.times()[:2])
    # Each connection starts at a different job so that they do not all drain the same one.
    if mode in ("raw", "ceiling"):
        async def run():
            await asyncio.gather(*(_raw_conn(port, idents[i], jobs, i * 7, deadline, counts) for i in range(conns)))
        asyncio.run(run())
    else:
        threads = [threading.Thread(target=_thread_conn, args=(mode, port, idents[i], jobs, i * 7, deadline, counts))
                   for i in range(conns)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 60)
    out.put((dict(counts), min(time.time(), deadline), sum(os.times()[:2]) - cpu0))


# --- the benchmark ---------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its threads so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def load_name(proc: int, conn: int) -> str:
    return f"{LOAD}-{proc}-{conn}"


def make_bundle(work: Path, frames: int) -> Path:
    scene = work / f"scene{frames}"
    scene.mkdir()
    (scene / "s.pov").write_text(POV)
    (scene / "s.ini").write_text(f"Input_File_Name=s.pov\nInitial_Frame=1\nFinal_Frame={frames}\n"
                                 "Initial_Clock=0\nFinal_Clock=1\n")
    pack(scene / "s.ini", work / f"job{frames}.tar", 32, 24)
    return work / f"job{frames}.tar"


def run_load(workload: str, config: tuple, bundle: Path, seconds: float, profile: Path | None = None) -> dict:
    label, mode, procs, conns = config
    njobs, _ = WORKLOADS[workload]
    key = SigningKey.generate()
    with cluster("leases") as (start, tmp):
        origin = start(ORIGIN, "--slots", "0", "--lease-timeout", "600", "--peering", "open")
        t0 = time.perf_counter()
        jobs = [origin.client.job_id(origin.client.submit(bundle)) for _ in range(njobs)]
        submit_s = time.perf_counter() - t0
        HelloStubs(key, [load_name(p, i) for p in range(procs) for i in range(conns)]).say_hellos(origin.address)
        port = int(origin.address.rsplit(":", 1)[1])
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        begin = time.time() + 3  # time for the children to start and import
        workers = [ctx.Process(target=load_worker, args=(mode, port, bytes(key), jobs, conns, begin, seconds, out, p))
                   for p in range(procs)]
        for w in workers:
            w.start()
        time.sleep(max(0.0, begin - time.time()))
        cpu0 = cpu_seconds(origin.proc.pid)
        spy = None
        if profile:
            spy = subprocess.Popen([PY_SPY, "record", "--pid", str(origin.proc.pid), "--rate", "100",
                                    "--duration", str(int(seconds)), "--format", "raw", "--output", str(profile)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        results = []
        for _ in range(int(seconds) + 120):  # bounded: a client that dies must not hang us
            try:
                results.append(out.get(timeout=1))
            except queue.Empty:
                if not any(w.is_alive() for w in workers):
                    raise RuntimeError("a load client died; its error is above") from None
            if len(results) == len(workers):
                break
        cpu = cpu_seconds(origin.proc.pid) - cpu0
        for w in workers:
            w.join(30)
        if spy:
            spy.wait(seconds + 60)
        counts = sum((Counter(c) for c, _, _ in results), Counter())
        elapsed = max(end for _, end, _ in results) - begin
        leased = sum(origin.client.status(j)["counts"]["rendering"] for j in jobs)
    granted = counts.get(200, 0)
    served = max(1, granted + counts.get("200 late", 0))  # the CPU figures include the late ones
    return {"label": label, "granted": granted, "rate": granted / elapsed, "elapsed": elapsed,
            "other": {s: n for s, n in counts.items() if s != 200}, "leased": leased, "submit_s": submit_s,
            "server_us": 1e6 * cpu / served, "client_us": 1e6 * sum(c for _, _, c in results) / served}


# Where a lease's time goes: samples of the event-loop thread (which runs the lease handler)
# whose stack holds the first pattern and none of the others. The buckets overlap a little.
BUCKETS = [
    ("jobfile.loads of the job's whole distrenjob.xml", r"^loads \(distren/jobfile", ()),
    ("JobFile.with_frames + to_xml (the answer)", r"JobFile\.(to_xml|with_frames)", ()),
    ("Lifecycle.lease (SQLite write transaction)", r"Lifecycle\.(lease|_claim)", ()),
    ("Store.seen_nonce (its own SQLite write transaction)", r"Store\.seen_nonce", ()),
    ("Store.peer_key (SQLite read)", r"Store\.peer_key", ()),
    ("Store.get_job (SELECT * with the jobfile)", r"Store\.get_job", ()),
    ("Ed25519 verify (PyNaCl)", r"VerifyKey\.verify", ()),
    ("uvicorn/h11: parse the request", r"H11Protocol\.data_received", ()),
    ("uvicorn/h11: write the response (socket sends)", r"RequestResponseCycle\.send", ()),
    ("FastAPI/Starlette middleware + routing, outside the handler", r"FastAPI\.__call__",
     (r"run_endpoint_function", r"RequestResponseCycle\.send")),
]


def summarize_profile(raw: Path, us_per_lease: float) -> None:
    samples = []
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if "distren/__main__.py" in stack:  # the main thread: uvicorn's event loop
            samples.append(([re.sub(r":\d+\)$", ")", f) for f in stack.split(";")], int(n)))
    total = sum(n for _, n in samples)
    if not total:
        print("  (py-spy recorded nothing)")
        return
    print(f"  {total} samples of the event-loop thread; share, and us per lease of the origin's "
          f"{us_per_lease:.0f} us CPU per lease:")
    for label, want, unless in BUCKETS:
        n = sum(k for fs, k in samples if any(re.search(want, f) for f in fs)
                and not any(re.search(u, f) for u in unless for f in fs))
        print(f"    {100 * n / total:5.1f} %  {us_per_lease * n / total:6.0f} us  {label}")
    own = Counter()
    for fs, k in samples:
        own[fs[-1]] += k
    print("  innermost frames:", "; ".join(f"{f} {100 * n / total:.1f} %" for f, n in own.most_common(6)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--no-profile", action="store_true")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} cores (load average {load:.2f} at start); {args.seconds:.0f} s per run")
    best = {}
    with tempfile.TemporaryDirectory(prefix="distren-bench-leases-") as work:
        bundles = {w: make_bundle(Path(work), frames) for w, (_, frames) in WORKLOADS.items()}
        for workload, (njobs, frames) in WORKLOADS.items():
            print(f"\n{workload}: {njobs} job(s) x {frames} frames")
            for config in CONFIGS:
                r = run_load(workload, config, bundles[workload], args.seconds)
                print(f"  {r['label']:42s} {r['rate']:7.1f} leases/s  ({r['granted']} in {r['elapsed']:.1f} s; "
                      f"origin CPU {r['server_us']:.0f} us/lease, client CPU {r['client_us']:.0f} us/lease; "
                      f"other answers {r['other'] or 'none'}; frames leased per origin {r['leased']}; "
                      f"submit took {r['submit_s']:.1f} s)")
                if r["leased"] != r["granted"] + r["other"].get("200 late", 0):  # each 200 leased one frame
                    print("    WRONG: the origin holds a different number of leased frames than it granted")
                if r["rate"] > best.get(workload, (0, None))[0]:
                    best[workload] = (r["rate"], config)
        ceiling = run_load("big", CEILING, bundles["big"], args.seconds)["rate"]
        print(f"\nHTTP ceiling: {CEILING[0]}: {ceiling:.0f} requests/s")
        if not args.no_profile and PY_SPY:
            for workload in WORKLOADS:
                config = best[workload][1]
                raw = Path(work) / f"{workload}.txt"
                r = run_load(workload, config, bundles[workload], args.seconds, profile=raw)
                print(f"\nprofile of the origin, {workload} workload, {config[0]}: {r['rate']:.1f} leases/s under py-spy")
                summarize_profile(raw, r["server_us"])
        elif not args.no_profile:
            print("\n(no py-spy: pip install py-spy to profile the origin)")
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f} (other work on this machine skews the figures)")
    print(f"requests/s of the HTTP stack alone (GET /api/server): {ceiling:.0f}")
    for workload, (rate, config) in best.items():
        print(f"leases/s {workload} ({WORKLOADS[workload][0]} job(s) x {WORKLOADS[workload][1]} frames), "
              f"best client [{config[0]}]: {rate:.1f} (goal >= 2000)")


if __name__ == "__main__":
    main()
