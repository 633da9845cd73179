"""12 frames of POV-Ray's fractalzoom at 160x120: distren (submit to download, server already
running, default settings) against POV-Ray alone in one process on all cores, alternating.

    .venv/bin/python bench/fractalzoom.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import FRACTALZOOM, distren_run, median, povray_run, server  # noqa: E402

W, H, FIRST, LAST = 160, 120, 1, 12


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    d_times, p_times = [], []
    with server("bench") as (client, tmp):
        info = client.info()
        print(f"machine: {os.cpu_count()} cores; distren server with {info['slots']} slots (default)")
        for r in range(args.rounds):
            p_times.append(povray_run(FRACTALZOOM, "fractalzoom.ini", W, H, FIRST, LAST))
            d_times.append(distren_run(client, FRACTALZOOM / "fractalzoom.ini", W, H, f"{FIRST}-{LAST}", tmp))
            print(f"round {r + 1}: povray {p_times[-1]:.2f} s   distren {d_times[-1]:.2f} s")
    ratio = median(d_times) / median(p_times)
    print(f"median: povray {median(p_times):.2f} s, distren {median(d_times):.2f} s")
    print(f"ratio distren / povray = {ratio:.2f}")


if __name__ == "__main__":
    main()
