"""What every command shares: the Typer apps, the consoles, the --server and --token options."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from typer.core import TyperOption

from ..client import DEFAULT_SERVER, Client

# Typer 0.29 labels every option in --help with its Python type, flags included: `--wait <bool>`
# reads as if --wait took a value. A flag takes none, so it shows none.
_type_label = TyperOption.display_type_rich
TyperOption.display_type_rich = lambda self, ctx: None if self.is_flag else _type_label(self, ctx)

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="markdown",
                  help="distren: a federated distributed renderer (POV-Ray first).")
user_app = typer.Typer(no_args_is_help=True, help="Manage users on a server.")
app.add_typer(user_app, name="user")
peers_app = typer.Typer(no_args_is_help=True, help="Manage this server's peers.")
app.add_typer(peers_app, name="peers")


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        print(f"distren {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print distren's version and exit.")):
    """distren: a federated distributed renderer (POV-Ray first)."""


err = Console(stderr=True)
out = Console()

ServerOpt = typer.Option(None, "--server", envvar="DISTREN_SERVER", metavar="URL",
                         help=f"The server's address, http://HOST:PORT or HOST:PORT (default {DEFAULT_SERVER}).")
TokenOpt = typer.Option(None, "--token", envvar="DISTREN_TOKEN", metavar="TOKEN", help="Your token on that server.")
JsonOpt = typer.Option(False, "--json", help="Print JSON (for scripts) instead of a table.")

WidthOpt = typer.Option(None, "--width", metavar="PIXELS",
                        help="Image width (default: the INI's, else 320); alone, the height keeps the aspect ratio.")
HeightOpt = typer.Option(None, "--height", metavar="PIXELS",
                         help="Image height (default: the INI's, else 240); alone, the width keeps the aspect ratio.")
FramesOpt = typer.Option(None, "--frames", metavar="A-B", help="Only frames A to B of the INI's animation.")
TilesOpt = typer.Option(None, "--tiles", metavar="CxR",
                        help="Render a still as CxR tiles on many servers, then stitch them.")
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

