"""The hostile peer used by the tests of federation among strangers looks like a real server:
her hello is accepted, and the honest server syncs with her at her own address."""

from __future__ import annotations

import pytest

from conftest import accept, wait_for
from mallory import Mallory

pytestmark = pytest.mark.e2e


def test_mallory_is_a_server_the_honest_one_talks_to(start_server, tmp_path):
    alpha = start_server("alpha", "--slots", "0")
    m = Mallory("mallory", tmp_path / "m.key")
    asked: list[str] = []
    default = m.answer
    m.answer = lambda method, path: (asked.append(path), default(method, path))[1]
    try:
        r = m.introduce(alpha)
        assert r.status_code == 200, r.text
        assert r.json()["name"] == "alpha"
        accept(alpha, "mallory")  # the default policy: alpha's admin lets her in
        assert m.state(alpha).status_code == 200  # her signed requests are accepted
        wait_for(lambda: any(p.startswith("/fed/state") for p in asked), "alpha syncing with mallory", 20)
    finally:
        m.close()
