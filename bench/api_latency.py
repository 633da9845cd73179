"""Does the origin stay responsive while it works hard? `GET /api/server` is timed every 20 ms
(p50, p99, max) on an origin A (--slots 0) three times: idle; while 8 renderers lease frames and
upload results as fast as they can (real signed leases and uploads of real frame tarballs, each
a 640x480 PNG that A decodes whole, and of which A verifies a share by rendering a block of the
frame itself); and while, on top of that, a 1 GiB bundle is submitted. The renderers are this
script's threads speaking the protocol: rendering is not what is measured, so the scene's frames
are all alike and each renderer uploads one render of it, made here once, for every frame it
leases. Everything runs on loopback on the same machine. Each phase also shows the server's CPU
(its event loop, its other threads) and the results it accepted per second.

    python bench/api_latency.py [--mib 1024] [--seconds 10] [--verify-share 0.1]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from distren import backends, bundle, jobfile, povini
from distren.errors import DistrenError
from distren.peering import hello_text as _hello_text
from distren.identity import Identity
from distren.pack import pack
from distren.sandbox import Limits
from distren.scheduling import prepare_workdir
from distren.transfer import Transport

sys.path.insert(0, str(Path(__file__).parent))
from common import cluster  # noqa: E402

W, H, FRAMES = 640, 480, 10_000
MiB = 1 << 20
INI = f"Input_File_Name=s.pov\nOutput_File_Name=f.png\nInitial_Frame=1\nFinal_Frame={FRAMES}\n"
# Every frame alike (no clock), so one render is every frame's true image: the origin's checks pass.
POV = "camera{location <0,0,-3> look_at 0}\nlight_source{<2,4,-3> rgb 1}\nsphere{0,1 pigment{rgb 0.5}}\n"


class Probe:
    """GET /api/server every 20 ms from a process of its own (this one's renderer threads would
    otherwise hold the GIL the probe needs and be measured as the server's latency); latencies
    (ms) per phase."""

    def __init__(self, address: str):
        self.phase = "idle"
        self._phases: list[tuple[float, str]] = [(time.time(), "idle")]
        self._proc = subprocess.Popen([sys.executable, __file__, "--probe", address], stdout=subprocess.PIPE,
                                      text=True)

    def __setattr__(self, name, value):
        if name == "phase" and "_phases" in self.__dict__:
            self._phases.append((time.time(), value))
        super().__setattr__(name, value)

    def stop(self) -> dict[str, list[float]]:
        self._proc.terminate()
        out, _ = self._proc.communicate(35)
        samples: dict[str, list[float]] = {}
        for line in out.splitlines():
            at, ms = (float(v) for v in line.split())
            phase = [p for t, p in self._phases if t <= at][-1:] or ["idle"]
            samples.setdefault(phase[0], []).append(ms)
        return samples


def run_probe(address: str) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with httpx.Client(timeout=30) as http:
        while True:
            time.sleep(0.02)
            at, t0 = time.time(), time.perf_counter()
            http.get(address + "/api/server").raise_for_status()
            print(f"{at:.3f} {(time.perf_counter() - t0) * 1000:.2f}", flush=True)


def render_once(bundle_tar: Path, work: Path) -> bytes:
    """Frame 1 of the bundle's job, rendered as a renderer would (in the sandbox, by its backend)."""
    unpacked = work / "unpacked"
    bundle.extract(bundle_tar, unpacked)
    jf = jobfile.loads((unpacked / jobfile.FILENAME).read_bytes())
    frame = jf.frames[0]
    out = work / "render"
    shared = prepare_workdir(unpacked / "scene", out)
    produced = backends.get(frame.backend(jf.type)).render(jf, frame, out, work / "render.log", Limits(), None, shared)
    return (out / produced[0]).read_bytes()


def signed_hello(ident: Identity, address: str) -> dict:
    ts = f"{time.time():.3f}"
    return {"name": ident.name, "address": address, "key": ident.public, "time": ts,
            "backends": backends.available(), "signature": ident.sign(_hello_text(ident.name, address, ident.public, ts))}


class OwnAddress:
    """A renderer's address: the origin confirms a hello by asking its address for the same
    hello, and syncs its state (one slot, nothing announced) from there."""

    def __init__(self, ident: Identity):
        def answer(path: str) -> dict | None:
            if path == "/fed/hello":
                return signed_hello(ident, self.address)
            if path.startswith("/fed/state"):
                return {"name": ident.name, "slots": 1, "backends": backends.available(), "rendering": [],
                        "announcements": []}
            return None

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                body = answer(self.path)
                data = json.dumps(body if body is not None else {"error": "not here"}).encode()
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.address = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def renderer(n: int, origin, job_id: int, png: bytes, work: Path, stop: threading.Event, counts: list[int],
             failures: list[str]) -> None:
    """A peer that leases frames of the job and uploads the (true) PNG for each. The origin
    accepts it by name (``--allow rN``) once its own address confirms its hello."""
    ident = Identity.load_or_create(f"r{n}", work / f"r{n}.key")
    own = OwnAddress(ident)
    resp = httpx.post(origin.address + "/fed/hello", json=signed_hello(ident, own.address), timeout=30)
    if resp.status_code != 200 or resp.json().get("peering") != "accepted":
        own.close()
        failures.append(f"renderer {n}: {origin.name} did not accept its hello: {resp.status_code} {resp.text[:300]}")
        return
    opts = povini.parse(INI)
    transport = Transport(ident)
    tar = work / f"r{n}.tar"
    try:
        while not stop.is_set():
            resp = transport.call("POST", origin.address, f"/fed/jobs/{job_id}/lease", retries=0, to="a")
            if resp.status_code == 204:
                return
            frame = int(resp.text.split("/frame/")[1].split('"')[0])
            bundle.write_tar(tar, [(opts.output_name(frame), png)])
            transport.upload(origin.address, f"/fed/jobs/{job_id}/frames/{frame}/result", tar, to="a")
            counts[n] += 1
    except DistrenError as e:
        failures.append(f"renderer {n}: {e}")
    finally:
        transport.close()
        own.close()


def cpu_seconds(pid: int) -> tuple[float, float, float]:
    """CPU seconds (user + system) a server has used so far: its main thread (the event loop),
    and its other threads (not its sandboxed children: bubblewrap does not pass their time on);
    and the whole machine's busy seconds, whoever used them (in the idle phase: other work
    sharing the machine, which the figures of a run depend on)."""
    tick = os.sysconf("SC_CLK_TCK")

    def fields(path: str) -> list[int]:  # utime, stime (fields 14, 15)
        return [int(x) for x in Path(path).read_text().rsplit(")", 1)[1].split()[11:13]]

    loop, total = fields(f"/proc/{pid}/task/{pid}/stat"), fields(f"/proc/{pid}/stat")
    cpu = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(cpu[:8]) - cpu[3] - cpu[4]  # all but idle and iowait
    return (loop[0] + loop[1]) / tick, (total[0] + total[1] - loop[0] - loop[1]) / tick, busy / tick


def summary(xs: list[float]) -> str:
    xs = sorted(xs)
    p99 = xs[min(len(xs) - 1, int(len(xs) * 0.99))]
    return f"n={len(xs):4d}  p50 {statistics.median(xs):6.1f} ms  p99 {p99:6.1f} ms  max {xs[-1]:6.1f} ms"


def main() -> None:
    if sys.argv[1:2] == ["--probe"]:
        return run_probe(sys.argv[2])
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024, help="size of the big bundle's scene file")
    ap.add_argument("--seconds", type=float, default=10, help="length of each measured phase")
    ap.add_argument("--verify-share", default="0.1", help="the share of uploads the origin verifies (0: none)")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores; 8 renderers upload {W}x{H} PNGs, {args.verify_share} of them "
          f"verified; a {args.mib} MiB bundle")
    with tempfile.TemporaryDirectory(prefix="distren-bench-latency-") as tmp, cluster("latency") as (start, _):
        work = Path(tmp)
        scene = work / "scene"
        scene.mkdir()
        (scene / "s.pov").write_text(POV)
        (scene / "s.ini").write_text(INI)
        pack(scene / "s.ini", work / "small.tar", W, H)
        png = render_once(work / "small.tar", work)
        with open(scene / "big.bin", "wb") as f:
            for _ in range(args.mib):
                f.write(os.urandom(MiB))
        pack(scene / "s.ini", work / "big.tar", W, H, "1-2")
        (scene / "big.bin").unlink()

        # Steady state: renderers past their first, always-checked frames (a share is still checked).
        a = start("a", "--slots", "0", "--verify-first", "0", "--verify-share", args.verify_share, *(f"--allow=r{n}" for n in range(8)))
        url = a.client.submit(work / "small.tar")
        job_id = int(url.rstrip("/").rsplit("/", 1)[1])
        probe = Probe(a.address)
        counts = [0] * 8
        failures: list[str] = []
        marks = [(time.perf_counter(), cpu_seconds(a.proc.pid), 0)]

        def mark(phase: str) -> None:
            marks.append((time.perf_counter(), cpu_seconds(a.proc.pid), sum(counts)))
            probe.phase = phase

        time.sleep(args.seconds)
        mark("uploads")
        stop = threading.Event()
        threads = [threading.Thread(target=renderer, args=(n, a, job_id, png, work, stop, counts, failures), daemon=True)
                   for n in range(8)]
        for t in threads:
            t.start()
        time.sleep(args.seconds)

        mark(f"uploads + {args.mib} MiB submit")
        t0 = time.perf_counter()
        a.client.submit(work / "big.tar")
        submit_s = time.perf_counter() - t0
        mark("end")
        stop.set()
        for t in threads:
            t.join(60)
        samples = probe.stop()
        print(f"results accepted: {sum(counts)}; the big submit took {submit_s:.1f} s")
    if failures or not all(counts):  # a renderer that stopped would make the load lighter than said
        sys.exit("the load was not as described:\n" + "\n".join(failures or [f"results per renderer: {counts}"]))
    phases = [p for _, p in probe._phases[:-1]]
    for phase, (t0, c0, n0), (t1, c1, n1) in zip(phases, marks, marks[1:]):
        s = t1 - t0
        loop, others, machine = (b - a for a, b in zip(c0, c1))
        print(f"GET /api/server, {phase:24s} {summary(samples.get(phase, [0.0]))}")
        print(f"    server CPU per second: event loop {loop / s:.2f}, other threads {others / s:.2f}; "
              f"{(n1 - n0) / s:.1f} results accepted per second; machine {machine / s:.2f} of "
              f"{os.cpu_count()} cores busy")


if __name__ == "__main__":
    main()
