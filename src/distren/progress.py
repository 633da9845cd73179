"""A job's progress as a Rich bar on stderr (stdout stays for URLs and data)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from .client import Client

err = Console(stderr=True)


def follow(client: Client, url: str, timeout: float | None = None) -> dict:
    """Show a bar until the job ends; return its final status. Raises TimeoutError."""
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[state]}"),
                  TimeElapsedColumn(), console=err) as bar:
        task = bar.add_task(url, total=None, state="")

        def update(st: dict) -> None:
            bar.update(task, total=len(st["frames"]), completed=st["counts"].get("done", 0), state=line(st))

        return client.wait(url, timeout=timeout, on_update=update)


def line(st: dict) -> str:
    """How far a job is, in words: "5/8 done, 2 rendering on 2 servers, 1 failed"."""
    counts, total = st["counts"], len(st["frames"])
    servers = {f["server"] for f in st["frames"] if f["state"] == "rendering" and f["server"]}
    text = f"{counts.get('done', 0)}/{total} done"
    if counts.get("rendering"):
        text += f", {counts['rendering']} rendering" + (f" on {len(servers)} servers" if len(servers) > 1 else "")
    for state in ("failed", "blocked"):
        if counts.get(state):
            text += f", {counts[state]} {state}"
    if st["state"] in ("paused", "failed", "cancelled"):
        text += f" (job {st['state']})"
    return text


def report(st: dict) -> bool:
    """Print how the job ended; True when it is done."""
    if st["state"] == "done":
        err.print(f"[green]{st['url']} done[/]: {len(st['frames'])} frame(s)")
        return True
    err.print(f"[red]{st['url']} {st['state']}[/]: {st['reason']}", highlight=False)
    for f in st["frames"]:
        if f["state"] == "failed":
            err.print(f"  {f['url']}: {f['reason']}", highlight=False)
    return False
