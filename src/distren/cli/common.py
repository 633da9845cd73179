"""What every command shares: the Typer apps, the consoles, the --server and --token options."""

from __future__ import annotations

import json

import typer
from rich.console import Console

from ..client import DEFAULT_SERVER, Client

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="distren: a federated distributed renderer (POV-Ray first).")
user_app = typer.Typer(no_args_is_help=True, help="Manage users on a server.")
app.add_typer(user_app, name="user")
peers_app = typer.Typer(no_args_is_help=True, help="Manage this server's peers.")
app.add_typer(peers_app, name="peers")
err = Console(stderr=True)
out = Console()

ServerOpt = typer.Option(None, "--server", envvar="DISTREN_SERVER",
                         help=f"The server's HTTP address (default {DEFAULT_SERVER}).")
TokenOpt = typer.Option(None, "--token", envvar="DISTREN_TOKEN", help="Your token on that server.")

TilesOpt = typer.Option(None, "--tiles", help="Render a still as CxR tiles on many servers, then stitch them.")
MovieOpt = typer.Option(False, "--movie", help="Add a frame that encodes the animation as an MP4.")
ChainOpt = typer.Option(False, "--chain", help="Each frame waits for the previous one and gets its files.")

EXIT_FAILED = 1
EXIT_TIMEOUT = 3


def _client(server: str | None, token: str | None) -> Client:
    return Client(server, token)


def _ask(server: str | None, token: str | None, call, as_json: bool):
    """The server's answer to ``call(client)``; with --json it is printed instead (None)."""
    with _client(server, token) as c:
        data = call(c)
    if as_json:
        print(json.dumps(data, indent=2))
        return None
    return data

