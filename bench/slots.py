"""Fixed --slots against the default (adaptive): 12 fractalzoom frames at 160x120 per setting.

POV-Ray idles about half a second at every start and a small frame does not keep all cores
busy, so more processes than cores can win; the default follows the machine's idle CPU.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import FRACTALZOOM, distren_run, median, server  # noqa: E402


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    print(f"machine: {os.cpu_count()} cores")
    results = {}
    for slots in ("1", "2", "3", "4", "6", None):
        args = ("--slots", slots) if slots else ()
        with server(f"slots{slots or 'adaptive'}", *args) as (client, tmp):
            times = [distren_run(client, FRACTALZOOM / "fractalzoom.ini", 160, 120, "1-12", tmp) for _ in range(rounds)]
        results[" ".join(args) or "adaptive"] = median(times)
        print(f"{' '.join(args) or 'adaptive (default)'}: {median(times):.2f} s (median of {rounds})")
    print(f"fastest: {min(results, key=results.get)}")


if __name__ == "__main__":
    main()
