"""A job's progress as a Rich bar on stderr (stdout stays for URLs and data)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .client import Client

err = Console(stderr=True)


def follow(client: Client, url: str, timeout: float | None = None) -> dict:
    """Show a bar until the job ends; return its final status. Raises TimeoutError."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[state]}"), TimeElapsedColumn(), console=err) as bar:
        task = bar.add_task(url, total=None, state="")

        def update(st: dict) -> None:
            counts = st["counts"]
            servers = sorted({f["server"] for f in st["frames"] if f["server"]})
            state = st["state"]
            if counts.get("rendering"):
                state += f", {counts['rendering']} rendering"
            if counts.get("failed"):
                state += f", {counts['failed']} failed"
            if len(servers) > 1:
                state += f" on {len(servers)} servers"
            bar.update(task, total=len(st["frames"]), completed=counts.get("done", 0), state=state)

        return client.wait(url, timeout=timeout, on_update=update)


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
