"""The commands for the farm: servers, peers, users (most are for admins)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .common import JsonOpt, ServerOpt, TokenOpt, _ask, _client, app, err, out, peers_app, user_app


@app.command()
def servers(server: Optional[str] = ServerOpt, token: Optional[str] = TokenOpt,
            as_json: bool = JsonOpt):
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
def peers_add(address: str = typer.Argument(..., help="The other server's address: http://HOST:PORT or HOST:PORT."),
              server: Optional[str] = ServerOpt, token: Optional[str] = TokenOpt):
    """Peer with another server now (admin only): both learn and pin each other's key."""
    from ..client import server_address

    with _client(server, token) as c:
        res = c.add_peer(server_address(address, "peers add"))
    err.print(f"peered with {res['peer']} at {res['address']}")
    if res.get("there") == "pending":
        err.print(f"{res['peer']} has this server awaiting approval: until its admin runs "
                  "`distren peers accept` there, it takes no requests from this one")


@peers_app.command("pending")
def peers_pending(server: Optional[str] = ServerOpt, token: Optional[str] = TokenOpt,
                  as_json: bool = JsonOpt):
    """List the servers that asked to peer and await an admin's decision (admin only)."""
    import time

    rows = _ask(server, token, lambda c: c.pending_peers(), as_json)
    if rows is None:
        return
    table = Table("server", "address", "key", "asked")
    for r in rows:
        table.add_row(f"distren://{r['name']}/", r["address"], r["key"], f"{time.time() - r['since']:.0f} s ago")
    out.print(table)


@peers_app.command("accept")
def peers_accept(name: str = typer.Argument(..., help="The server's name, as `distren peers pending` lists it."),
                 server: Optional[str] = ServerOpt, token: Optional[str] = TokenOpt):
    """Accept a pending server as a peer (admin only): it may then ask for work and sync."""
    with _client(server, token) as c:
        c.accept_peer(name)
    err.print(f"accepted distren://{name}/")


@peers_app.command("reject")
def peers_reject(name: str = typer.Argument(..., help="The server's name, as `distren peers pending` lists it."),
                 server: Optional[str] = ServerOpt, token: Optional[str] = TokenOpt):
    """Refuse a pending server (admin only): its hellos are refused until `distren peers accept`."""
    with _client(server, token) as c:
        c.reject_peer(name)
    err.print(f"rejected distren://{name}/")


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
              as_json: bool = JsonOpt):
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


key_app = typer.Typer(no_args_is_help=True, help="This server's key.")
app.add_typer(key_app, name="key")


@key_app.command("rotate")
def key_rotate(data: Path = typer.Option(Path("distren-data"), "--data", help="The server's data folder.")):
    """Replace the server's key by a new one, with a statement signed by the old one that peers
    check. Run it while the server is stopped, then start it: its hello tells its peers."""
    from .. import keys
    from ..errors import DistrenError
    from ..store import Store

    if not (data / "state.sqlite").is_file():
        raise DistrenError(f"--data {data}: no distren server's data there")
    store = Store(data)
    try:
        name = store.get_meta("name")
    finally:
        store.close()
    if name is None:
        raise DistrenError(f"--data {data}: the server there never started; it has no key to rotate")
    statement = keys.rotate(name, data)
    err.print(f"distren://{name}/ has a new key {statement['new_key']} (was {statement['old_key']}); start the "
              "server: its peers accept the new key on the old key's signature")
