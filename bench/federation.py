"""Does federation cost anything? The same 12 fractalzoom frames at 160x120 on (a) one server with
--slots 2, and (b) two peered servers with --slots 1 each (B --peer A, the job submitted to A).
Same machine, same total slots: (b) / (a) shows what leasing, bundle fetch and result upload add.
Rounds alternate (a) and (b) so that drift in the machine's speed hits both alike.

    python bench/federation.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import FRACTALZOOM, cluster, distren_run, median, wait_peered  # noqa: E402

W, H, FRAMES = 160, 120, "1-12"
GOAL = 1.05


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores; {args.rounds} rounds of 12 frames at {W}x{H}")
    a_times, b_times, b_split = [], [], []
    with cluster("federation") as (start, tmp):
        single = start("single", "--slots", "2")
        a = start("a", "--slots", "1")
        b = start("b", "--slots", "1", "--peer", a.address)
        wait_peered(a, b)
        for r in range(args.rounds):
            a_times.append(distren_run(single.client, FRACTALZOOM / "fractalzoom.ini", W, H, FRAMES, tmp))
            b_times.append(distren_run(a.client, FRACTALZOOM / "fractalzoom.ini", W, H, FRAMES, tmp))
            # Who rendered what (read after the timing): both servers must have taken part.
            st = a.client.status(a.client.jobs()[-1]["url"])
            b_split.append(Counter(f["server"] for f in st["frames"]))
            split = ", ".join(f"{s} {n}" for s, n in sorted(b_split[-1].items()))
            print(f"round {r + 1}: (a) 1 server x 2 slots {a_times[-1]:.2f} s   "
                  f"(b) 2 servers x 1 slot {b_times[-1]:.2f} s   [frames: {split}]")
    ratio = median(b_times) / median(a_times)
    both = all(len(c) == 2 for c in b_split)
    print(f"median: (a) {median(a_times):.2f} s, (b) {median(b_times):.2f} s")
    print(f"(b) used both servers in every round: {'yes' if both else 'NO'}")
    print(f"ratio federated / single = {ratio:.3f} (goal <= {GOAL}: {'met' if ratio <= GOAL else 'NOT met'})")


if __name__ == "__main__":
    main()
