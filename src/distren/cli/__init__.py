"""The ``distren`` command line: one Typer app, its commands grouped by audience in
:mod:`.serving` (serve, demo), :mod:`.jobs` and :mod:`.farm` (servers, peers, users);
:mod:`.steering` changes a job under way (priority, pause, resume, retry)."""

from __future__ import annotations

import sys

import typer

from ..errors import DistrenError, Forbidden, Unauthorized
# Importing them registers their commands, in this order (the order of `distren --help`).
from . import serving, jobs, steering, farm  # noqa: F401,I001
from .common import app, err

# The server's answers describe the problem; what to do about it from a shell is the CLI's to say.
_ADVICE = {
    Unauthorized: "Pass --token or set DISTREN_TOKEN. A server's first admin token is in its DATA/admin.token; "
                  "`distren user add NAME` (run by an admin) makes more.",
    Forbidden: "Ask the server's admin to do this.",
}


def main() -> None:
    try:
        # Without standalone mode click returns typer.Exit's code instead of exiting with it.
        rc = app(standalone_mode=False)
        sys.exit(rc if isinstance(rc, int) else 0)
    except DistrenError as e:
        err.print(f"[red]error:[/] {e}", highlight=False)
        if advice := _ADVICE.get(type(e)):
            err.print(advice, highlight=False)
        sys.exit(1)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:
        # Usage errors. Typer carries its own copy of click, so recognise them by their shape.
        show, code = getattr(e, "show", None), getattr(e, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            sys.exit(code)
        raise
