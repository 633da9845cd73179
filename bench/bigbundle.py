"""Does a big bundle stay out of the origin's memory, and how often does it leave the origin? A
1 GiB scene file (random, so nothing could compress it), packed, submitted to origin A (--slots 0)
with client.submit (streamed), then fetched by N renderers (B, C, ...: --slots 1 --peer A
--peering open, started one after another) that lease the job's N 32x24 frames. A's resident set
(VmRSS) is sampled every 50 ms: the baseline before, the peak during the upload, and the peak
while the renderers fetch the bundle and render. A logs each bundle it sent in full, each
renderer each bundle it got from a peer: the bench counts both. All the big files are removed
at the end.

    python bench/bigbundle.py [--mib 1024] [--renderers 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from distren.pack import pack

sys.path.insert(0, str(Path(__file__).parent))
from common import cluster, rss_kib  # noqa: E402

POV = "camera{location <0,0,-3> look_at 0}\nlight_source{<2,4,-3> rgb 1}\nsphere{0,1 pigment{rgb 1}}\n"
MiB = 1 << 20


class Sampler:
    """Peak VmRSS (KiB) of some processes, per phase, every 50 ms, in a thread."""

    def __init__(self, pids: dict[str, int]):
        self.pids, self.phase, self.peaks = pids, "baseline", {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for _ in range(40 * 60 * 20):  # at most 40 minutes
            for name, pid in list(self.pids.items()):
                try:
                    kib = rss_kib(pid)
                except (OSError, RuntimeError):  # exited
                    continue
                key = (name, self.phase)
                self.peaks[key] = max(self.peaks.get(key, 0), kib)
            if self._stop.wait(0.05):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024, help="size of the big scene file")
    ap.add_argument("--renderers", type=int, default=8)
    args = ap.parse_args()
    n = args.renderers
    print(f"machine: {os.cpu_count()} cores; a {args.mib} MiB scene file, {n} 32x24 frames, {n} renderers")
    with tempfile.TemporaryDirectory(prefix="distren-bench-bigbundle-") as work, cluster("bigbundle") as (start, tmp):
        scene = Path(work) / "scene"
        scene.mkdir()
        (scene / "s.pov").write_text(POV)
        (scene / "s.ini").write_text(f"Input_File_Name=s.pov\nInitial_Frame=1\nFinal_Frame={n}\n")
        with open(scene / "big.bin", "wb") as f:
            for _ in range(args.mib):
                f.write(os.urandom(MiB))
        t0 = time.perf_counter()
        pack(scene / "s.ini", Path(work) / "job.tar", 32, 24)
        (scene / "big.bin").unlink()  # packed: no need for two copies on disk
        size = (Path(work) / "job.tar").stat().st_size
        print(f"packed {size / MiB:.0f} MiB in {time.perf_counter() - t0:.1f} s")

        a = start("a", "--slots", "0", "--peering", "open")
        sampler = Sampler({"A": a.proc.pid})
        time.sleep(2)  # baseline: A idle, after start-up

        sampler.phase = "upload"
        t0 = time.perf_counter()
        url = a.client.submit(Path(work) / "job.tar")  # returns once A has checked and unpacked it
        upload_s = time.perf_counter() - t0
        (Path(work) / "job.tar").unlink()
        print(f"upload + A's checks: {upload_s:.1f} s ({size / MiB / upload_s:.0f} MiB/s)")

        sampler.phase = "between"
        time.sleep(2)
        sampler.phase = "fetch"
        t0 = time.perf_counter()
        names = [chr(ord("b") + i) for i in range(n)]
        for name in names:
            r = start(name, "--slots", "1", "--peer", a.address, "--peering", "open")
            sampler.pids[name.upper()] = r.proc.pid
        st = a.client.wait(url, timeout=1800, poll=0.2)
        fetch_s = time.perf_counter() - t0
        sampler.phase = "after"
        time.sleep(1)
        sampler.stop()
        assert st["state"] == "done", st
        by = sorted({f["server"] for f in st["frames"]})
        print(f"renderers' start, fetch, unpack, render, upload: {fetch_s:.1f} s; frames rendered by "
              f"{len(by)} renderers ({', '.join(by)})")
        print(f"A's RSS after everything: {rss_kib(a.proc.pid) / 1024:.0f} MiB")
        sent = (tmp / "a.log").read_text(errors="replace").count("sent bundle ")
        passed = {name: (tmp / f"{name}.log").read_text(errors="replace").count("fetched from ") for name in names}
        print(f"the bundle left the origin {sent} times (in full); renderers that got it from a peer: "
              f"{sum(passed.values())} ({', '.join(f'{k}: {v}' for k, v in passed.items() if v)})")

    peak = {k: v / 1024 for k, v in sampler.peaks.items()}
    print(f"renderers' peak RSS while fetching and rendering: "
          f"{max(v for (k, ph), v in peak.items() if k != 'A' and ph == 'fetch'):.0f} MiB")
    print(f"A baseline RSS: {peak[('A', 'baseline')]:.0f} MiB")
    print(f"A peak RSS during the {size / MiB:.0f} MiB upload: {peak[('A', 'upload')]:.0f} MiB")
    print(f"A peak RSS while the renderers fetch the bundle: {peak[('A', 'fetch')]:.0f} MiB")


if __name__ == "__main__":
    main()
