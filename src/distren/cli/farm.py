"""The commands for the farm: servers, peers, users (most are for admins)."""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from .common import ServerOpt, TokenOpt, _ask, _client, app, err, out, peers_app, user_app


@app.command()
def servers(server: Optional[str] = ServerOpt, token: Optional[str] = TokenOpt,
            as_json: bool = typer.Option(False, "--json")):
    """List this server and its peers: slots, what they render now, when last heard from, and
    whether this server trusts their results."""
    import time

    rows = _ask(server, token, lambda c: c.servers(), as_json)
    if rows is None:
        return
    table = Table("server", "address", "slots", "rendering now", "last heard", "trust")
    for r in rows:
        ago = "this server" if r["self"] else (f"{time.time() - r['last_heard']:.0f} s ago" if r["last_heard"] else "never")
        table.add_row(r["url"], r["address"], "" if r["slots"] is None else str(r["slots"]),
                      "\n".join(r["rendering"]) or "-", ago, r["trust"])
    out.print(table)


@peers_app.command("add")
def peers_add(address: str = typer.Argument(..., help="The other server's HTTP address."),
              server: Optional[str] = ServerOpt, token: Optional[str] = TokenOpt):
    """Peer with another server now (admin only): both learn and pin each other's key."""
    with _client(server, token) as c:
        res = c.add_peer(address)
    err.print(f"peered with {res['peer']} at {res['address']}")


@peers_app.command("remove")
def peers_remove(name: str = typer.Argument(..., help="The peer's server name."),
                 server: Optional[str] = ServerOpt, token: Optional[str] = TokenOpt):
    """Forget a peer and its pinned key (admin only), e.g. after it really changed its key."""
    with _client(server, token) as c:
        c.remove_peer(name)
    err.print(f"removed distren://{name}/")


@peers_app.command("trust")
def peers_trust(name: str = typer.Argument(..., help="The peer's server name."),
                server: Optional[str] = ServerOpt, token: Optional[str] = TokenOpt):
    """Trust a peer's results again (admin only), after it was caught returning wrong pixels:
    it gets leases again, and its next frames are all checked, as a new peer's."""
    with _client(server, token) as c:
        res = c.trust_peer(name)
    err.print(f"{res['trusted']} is trusted again" if res["again"] else f"{res['trusted']} was not untrusted")


@user_app.command("add")
def user_add(name: str = typer.Argument(...),
             admin: bool = typer.Option(False, "--admin", help="The new user may manage users and peers, and "
                                        "sees every job."),
             server: Optional[str] = ServerOpt, token: Optional[str] = TokenOpt):
    """Create a user (admin only); prints the new user's token."""
    with _client(server, token) as c:
        res = c.add_user(name, admin)
    err.print(f"created {res['user']}" + (" (admin)" if res.get("admin") else ""))
    print(res["token"])


@user_app.command("list")
def user_list(server: Optional[str] = ServerOpt, token: Optional[str] = TokenOpt,
              as_json: bool = typer.Option(False, "--json")):
    """List the server's users (admin only): admin or not, revoked or not, how many jobs."""
    rows = _ask(server, token, lambda c: c.users(), as_json)
    if rows is None:
        return
    table = Table("user", "admin", "revoked", "jobs")
    for u in rows:
        table.add_row(u["name"], "yes" if u["admin"] else "", "revoked" if u["revoked"] else "", str(u["jobs"]))
    out.print(table)


@user_app.command("revoke")
def user_revoke(name: str = typer.Argument(...), server: Optional[str] = ServerOpt,
                token: Optional[str] = TokenOpt):
    """Revoke a user (admin only): their token stops working at once; their jobs go on."""
    with _client(server, token) as c:
        res = c.revoke_user(name)
    err.print(f"{res['revoked']} was revoked already" if res["already"] else f"revoked {res['revoked']}")

