"""HTTPS between real servers on loopback with a CA the tests make; names with a dot bound by
their well-known document over verified TLS; key rotation only by the old key's word.

Loopback has neither DNS names nor port 443, so the servers are told where NAME's well-known
document is with DISTREN_RESOLVE (NAME=127.0.0.1:PORT, like curl's --resolve): the connection
goes to that port and the certificate is still checked against NAME."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys

import httpx
import pytest

from conftest import SCENES, free_port, last_line, status
from distren import binding
from distren.identity import Identity
from distren.transfer import Transport
from mallory import Mallory
from tlsca import CA

pytestmark = pytest.mark.e2e


def names(server, *args: str) -> set[str]:
    return {r["name"] for r in json.loads(server.cli(*args, "--json").stdout)}


def tls(ca: CA, name: str, *dns: str) -> list[str]:
    cert, key = ca.issue(name, dns)
    return ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(ca.path)]


def test_servers_peer_and_render_over_https_with_a_private_ca(start_server, tmp_path):
    ca = CA(tmp_path / "ca")
    a = start_server("a", "--slots", "0", "--allow", "b", *tls(ca, "a"), ca=ca.path)
    b = start_server("b", "--slots", "1", "--peer", a.http, *tls(ca, "b"), ca=ca.path)
    assert a.http.startswith("https://")
    url = last_line(a.cli("submit", str(SCENES / "textured"), "--width", "32", "--height", "24", "--frames", "1-2",
                          "--wait"))
    assert {f["server"] for f in status(a, url)["frames"]} == {"distren://b/"}
    rows = json.loads(a.cli("servers", "--json").stdout)
    assert {r["address"] for r in rows} == {a.http, b.http}  # advertised as https:// by default
    # Plain HTTP to the TLS port gets nowhere; nor does a client that does not trust the CA.
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{a.port}/api/server", timeout=5)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{a.http}/api/server", timeout=5)
    # A server without --tls-ca does not trust a's certificate, and says so.
    c = start_server("c", "--slots", "0")
    res = c.cli("peers", "add", a.http, check=False)
    assert res.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in res.stderr, res.stderr


def test_tls_options_are_checked_before_start(tmp_path):
    ca = CA(tmp_path / "ca")
    cert, key = ca.issue("a")
    for args, expected in [(["--tls-cert", str(cert)], "--tls-cert and --tls-key go together"),
                           (["--tls-cert", str(cert), "--tls-key", str(cert)], "cannot load them")]:
        r = subprocess.run([sys.executable, "-m", "distren", "serve", "--name", "a", "--data", str(tmp_path / "d"),
                            "--listen", f"127.0.0.1:{free_port()}", "--slots", "0", *args],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and expected in " ".join(r.stderr.split()), r.stderr


def test_a_dotted_name_is_pinned_only_as_its_well_known_document_says(start_server, tmp_path, monkeypatch):
    ca = CA(tmp_path / "ca")
    port = free_port()
    monkeypatch.setenv("DISTREN_RESOLVE", f"a.example=127.0.0.1:{port}")  # the servers' resolver, and ours
    a = start_server("a.example", "--slots", "0", *tls(ca, "a", "a.example"), port=port, ca=ca.path)
    with httpx.Client(verify=ssl.create_default_context(cafile=ca.path)) as h:  # checked as a.example
        doc = h.get(f"https://127.0.0.1:{port}/.well-known/distren", headers={"Host": "a.example"},
                    extensions={"sni_hostname": "a.example"}).json()
    assert doc == {"name": "a.example", "key": Identity.load_or_create("x", a.data / "server.key").public,
                   "address": a.http}
    b = start_server("b", "--slots", "0", "--tls-ca", str(ca.path))
    c = start_server("c", "--slots", "0", "--tls-ca", str(ca.path), "--peering", "open")
    # Both directions: b dials a.example; a.example says hello to c.
    assert "peered with distren://a.example/" in b.cli("peers", "add", a.http).stderr
    assert "a.example" in names(b, "servers")
    a.cli("peers", "add", c.http)
    assert "a.example" in names(c, "servers")

    d = start_server("d", "--slots", "0", "--tls-ca", str(ca.path), "--peering", "open")
    m = Mallory("mallory", tmp_path / "m.key")
    try:
        # Her own server answers as a.example: the hello confirms at her address, but the
        # name's well-known document states another key.
        m.claims = "a.example"
        r = m.introduce(d, name="a.example")
        assert r.status_code == 403 and "does not state the key and address" in r.json()["error"], r.text
        # A dotted name whose document cannot be read at all.
        m.claims = "m.invalid"
        r = m.introduce(d, name="m.invalid")
        assert r.status_code == 403 and "https://m.invalid/.well-known/distren must state" in r.json()["error"]
        assert names(d, "servers") == {"d"}
    finally:
        m.close()


def test_a_key_changes_only_by_a_statement_the_old_key_signed(start_server, tmp_path):
    a = start_server("a", "--slots", "0", "--allow", "b")
    b = start_server("b", "--slots", "0", "--peer", a.http)
    old = Identity.load_or_create("b", b.data / "server.key")

    def state_as(ident: Identity) -> int:
        t = Transport(ident)
        try:
            return t.http.get(a.http + "/fed/state", headers=ident.sign_request("GET", "/fed/state", to="a")).status_code
        finally:
            t.close()

    from conftest import wait_for
    wait_for(lambda: state_as(old) == 200, "a to accept b")
    b.stop()
    res = subprocess.run([sys.executable, "-m", "distren", "key", "rotate", "--data", str(b.data)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "has a new key" in res.stderr, res.stderr
    new = Identity.load_or_create("b", b.data / "server.key")
    assert new.public != old.public
    statement = json.loads((b.data / "key-rotation.json").read_text())
    assert binding.check_rotation(statement, "b", old.public, new.public)
    # While b is down, someone else presents a new key for b: with no statement, or one its own
    # key signed, it is refused.
    m = Mallory("b", tmp_path / "m.key")
    try:
        forged = binding.rotation(Identity("b", Identity.load_or_create("x", tmp_path / "x.key").key), m.id)
        for extra in ({}, {"rotation": forged}, {"rotation": {**statement, "new_key": m.id.public}}):
            r = httpx.post(f"{a.http}/fed/hello", json={**m.hello(), **extra}, timeout=30)
            assert r.status_code == 409 and "different key" in r.json()["error"], r.text
    finally:
        m.close()
    assert state_as(old) == 200 and state_as(new) == 401
    b.start()  # its hello carries the statement: a takes the new key, and only it
    wait_for(lambda: state_as(new) == 200, "a to take b's new key")
    assert state_as(old) == 401
    assert names(a, "servers") == {"a", "b"}
