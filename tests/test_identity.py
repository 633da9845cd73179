"""Server identities and signed server-to-server requests."""

from __future__ import annotations

import hashlib
import stat

import pytest
from nacl.signing import SigningKey

from distren import identity
from distren.identity import (
    EMPTY_SHA256, H_NONCE, H_SERVER, H_SIG, H_TIME, MAX_SKEW, Identity, SignatureError, canonical,
)

NOW = 1_700_000_000.0
BODY = hashlib.sha256(b'{"frames": [1, 2, 3]}').hexdigest()


class Nonces:
    """A set-backed ``seen_nonce`` that also remembers the expiries it was given."""

    def __init__(self):
        self.seen: dict[str, float] = {}

    def __call__(self, nonce: str, expires: float) -> bool:
        if nonce in self.seen:
            return True
        self.seen[nonce] = expires
        return False


@pytest.fixture
def alpha():
    return Identity("alpha", SigningKey.generate())


@pytest.fixture
def keys(alpha):
    return {"alpha": alpha.public}.get


def verify(headers, keys, nonces=None, method="POST", path="/fed/lease?job=3", body=BODY, now=NOW):
    return identity.verify_request(headers, method, path, body, keys, nonces if nonces is not None else Nonces(),
                                   now=now)


def signed(ident, method="POST", path="/fed/lease?job=3", body=BODY, now=NOW):
    return ident.sign_request(method, path, body, now=now)


def test_round_trip(alpha, keys):
    nonces = Nonces()
    h = signed(alpha)
    assert set(h) == {H_SERVER, H_TIME, H_NONCE, H_SIG}
    assert h[H_SERVER] == "alpha"
    assert h[H_TIME] == f"{NOW:.3f}"
    assert len(h[H_NONCE]) == 32 and int(h[H_NONCE], 16) >= 0
    assert verify(h, keys, nonces) == "alpha"
    # The nonce is kept for longer than the window in which the time would still be accepted.
    assert nonces.seen[h[H_NONCE]] >= NOW + MAX_SKEW


def test_round_trip_empty_body_and_default_clock(alpha, keys):
    h = alpha.sign_request("GET", "/fed/announcements")
    assert identity.verify_request(h, "GET", "/fed/announcements", EMPTY_SHA256, keys, Nonces()) == "alpha"


def test_each_request_gets_a_fresh_nonce(alpha):
    assert len({signed(alpha)[H_NONCE] for _ in range(50)}) == 50


def test_method_case_does_not_matter(alpha, keys):
    assert verify(signed(alpha, method="post"), keys, method="POST") == "alpha"


def test_sender_name_is_case_insensitive_and_returned_lowercase(keys):
    ident = Identity("Alpha", SigningKey.generate())
    h = signed(ident)
    assert verify(h, {"alpha": ident.public}.get) == "alpha"


def test_wrong_key(alpha):
    impostor = Identity("alpha", SigningKey.generate())
    with pytest.raises(SignatureError, match="bad signature"):
        verify(signed(impostor), {"alpha": alpha.public}.get)


@pytest.mark.parametrize("field, value", [
    ("method", "PUT"),
    ("path", "/fed/lease?job=4"),
    ("path", "/fed/lease"),
    ("body", hashlib.sha256(b"something else").hexdigest()),
    ("body", EMPTY_SHA256),
])
def test_tampered_request(alpha, keys, field, value):
    h = signed(alpha)
    kw = {field: value}
    with pytest.raises(SignatureError, match="bad signature"):
        verify(h, keys, **kw)


@pytest.mark.parametrize("header, value", [
    (H_TIME, f"{NOW + 1:.3f}"),
    (H_TIME, f"{NOW:.2f}"),            # same number, different text: the text is what is signed
    (H_NONCE, "0" * 32),
    (H_NONCE, None),                  # filled in below: the nonce of another genuine request
    (H_SIG, None),                    # filled in below: the signature of another genuine request
])
def test_tampered_headers(alpha, keys, header, value):
    h = signed(alpha)
    if value is None:
        value = signed(alpha)[header]
    if header == H_TIME and value == h[H_TIME]:
        pytest.skip("the formatting happens to agree")
    with pytest.raises(SignatureError, match="bad signature"):
        verify({**h, header: value}, keys)


def test_sender_header_is_bound_to_the_key(alpha):
    """Claiming to be another known server fails: the claimed name selects the key."""
    beta = Identity("beta", SigningKey.generate())
    keys = {"alpha": alpha.public, "beta": beta.public}.get
    h = signed(alpha)
    with pytest.raises(SignatureError, match="bad signature"):
        verify({**h, H_SERVER: "beta"}, keys)


@pytest.mark.parametrize("sig", ["not base64!!", "AAAA", identity.b64(b"\x00" * 64)])
def test_garbage_signature(alpha, keys, sig):
    with pytest.raises(SignatureError):
        verify({**signed(alpha), H_SIG: sig}, keys)


@pytest.mark.parametrize("public", ["not base64!!", identity.b64(b"\x01" * 5)])
def test_garbage_pinned_key(alpha, public):
    with pytest.raises(SignatureError):
        verify(signed(alpha), {"alpha": public}.get)


def test_unknown_server(alpha):
    with pytest.raises(SignatureError, match="unknown server 'alpha'"):
        verify(signed(alpha), {}.get)


@pytest.mark.parametrize("missing", [H_SERVER, H_TIME, H_NONCE, H_SIG])
def test_unsigned(alpha, keys, missing):
    h = signed(alpha)
    del h[missing]
    with pytest.raises(SignatureError, match="unsigned request"):
        verify(h, keys)
    with pytest.raises(SignatureError, match="unsigned request"):
        verify({**signed(alpha), missing: ""}, keys)


def test_bad_time_text(alpha, keys):
    ts, nonce = "yesterday", "ab" * 16
    h = {H_SERVER: "alpha", H_TIME: ts, H_NONCE: nonce,
         H_SIG: alpha.sign(canonical("POST", "/x", BODY, ts, nonce))}
    with pytest.raises(SignatureError, match=r"(?i)bad .*time.*'yesterday'"):
        verify(h, keys, path="/x")


@pytest.mark.parametrize("offset", [MAX_SKEW + 1, -(MAX_SKEW + 1), 3600.0, -86400.0])
def test_time_skew_beyond_limit(alpha, keys, offset):
    h = signed(alpha, now=NOW + offset)
    nonces = Nonces()
    with pytest.raises(SignatureError, match="check both clocks"):
        verify(h, keys, nonces)
    assert not nonces.seen  # refused before the nonce is spent


@pytest.mark.parametrize("offset", [0.0, MAX_SKEW - 1, -(MAX_SKEW - 1), MAX_SKEW, -MAX_SKEW])
def test_time_skew_within_limit(alpha, keys, offset):
    assert verify(signed(alpha, now=NOW + offset), keys) == "alpha"


def test_replayed_nonce(alpha, keys):
    nonces = Nonces()
    h = signed(alpha)
    assert verify(h, keys, nonces) == "alpha"
    with pytest.raises(SignatureError, match="replayed"):
        verify(h, keys, nonces)
    # Later, but still inside the window: still refused.
    with pytest.raises(SignatureError, match="replayed"):
        verify(h, keys, nonces, now=NOW + MAX_SKEW)
    # Another request is fine.
    assert verify(signed(alpha), keys, nonces) == "alpha"


def test_forged_request_does_not_spend_the_nonce(alpha, keys):
    """An attacker who saw a nonce must not be able to burn it with a bad signature."""
    nonces = Nonces()
    h = signed(alpha)
    with pytest.raises(SignatureError, match="bad signature"):
        verify({**h, H_SIG: signed(alpha)[H_SIG]}, keys, nonces)
    assert h[H_NONCE] not in nonces.seen
    assert verify(h, keys, nonces) == "alpha"


def test_short_nonce_refused(alpha, keys):
    ts, nonce = f"{NOW:.3f}", "abc"
    h = {H_SERVER: "alpha", H_TIME: ts, H_NONCE: nonce,
         H_SIG: alpha.sign(canonical("POST", "/x", BODY, ts, nonce))}
    with pytest.raises(SignatureError):
        verify(h, keys, path="/x")


@pytest.mark.parametrize("ts", ["nan", "NaN", "inf", "-inf", "1e400", "-1e400"])
def test_non_finite_time_refused(alpha, keys, ts):
    """abs(now - nan) > MAX_SKEW is False: a nan time must be refused explicitly, or a signed
    request would carry no freshness bound at all (and its nonce a nan expiry)."""
    nonce = "cd" * 16
    h = {H_SERVER: "alpha", H_TIME: ts, H_NONCE: nonce,
         H_SIG: alpha.sign(canonical("POST", "/x", BODY, ts, nonce))}
    nonces = Nonces()
    with pytest.raises(SignatureError, match=r"(?i)bad .*time"):
        verify(h, keys, nonces, path="/x")
    assert not nonces.seen


def test_request_is_bound_to_its_recipient(alpha, keys):
    """A request signed for beta cannot be replayed to gamma (which shares alpha as a peer)."""
    h = alpha.sign_request("POST", "/fed/lease?job=3", BODY, now=NOW, to="beta")
    for other in ("gamma", ""):
        with pytest.raises(SignatureError, match="bad signature"):
            identity.verify_request(h, "POST", "/fed/lease?job=3", BODY, keys, Nonces(), now=NOW, me=other)
    assert identity.verify_request(h, "POST", "/fed/lease?job=3", BODY, keys, Nonces(), now=NOW, me="beta") == "alpha"
    # And one signed for nobody in particular is refused by a server that names itself.
    with pytest.raises(SignatureError, match="bad signature"):
        identity.verify_request(signed(alpha), "POST", "/fed/lease?job=3", BODY, keys, Nonces(), now=NOW, me="beta")


def test_sign_and_verify_data(alpha):
    sig = alpha.sign(b"announcement body")
    identity.verify(alpha.public, b"announcement body", sig)
    with pytest.raises(SignatureError):
        identity.verify(alpha.public, b"announcement body!", sig)
    with pytest.raises(SignatureError):
        identity.verify(Identity("x", SigningKey.generate()).public, b"announcement body", sig)


def test_canonical_string():
    assert canonical("get", "/a?b=1", "h", "1.000", "n", "beta") == b"GET\n/a?b=1\nh\n1.000\nn\nbeta"
    assert canonical("GET", "/a", "h", "1", "n") == b"GET\n/a\nh\n1\nn\n"  # no recipient: empty line


def test_load_or_create_persists_private_key(tmp_path):
    path = tmp_path / "keys" / "server.key"
    first = Identity.load_or_create("alpha", path)
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = Identity.load_or_create("alpha", path)
    assert bytes(again.key) == bytes(first.key)
    assert again.public == first.public
    assert again.name == "alpha"
    # The file holds the key in base64 and nothing else is left behind in the folder.
    assert identity.unb64(path.read_text().strip()) == bytes(first.key)
    assert [p.name for p in path.parent.iterdir()] == ["server.key"]
    # A request signed by the first instance verifies against the reloaded public key.
    h = signed(first)
    assert verify(h, {"alpha": again.public}.get) == "alpha"


def test_load_or_create_new_keys_differ(tmp_path):
    a = Identity.load_or_create("a", tmp_path / "a.key")
    b = Identity.load_or_create("b", tmp_path / "b.key")
    assert a.public != b.public


def test_load_or_create_refuses_garbage(tmp_path):
    path = tmp_path / "server.key"
    path.write_text("this is not a key\n")
    with pytest.raises(SignatureError):
        Identity.load_or_create("alpha", path)
    assert path.read_text() == "this is not a key\n"  # never silently replaced
