"""One mapping between errors and HTTP statuses, shared by the API, the client and transfers."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from distren import errors
from distren.client import Client
from distren.identity import Identity
from distren.transfer import Transport

RAISED = [errors.JobFileError, errors.BundleError, errors.Unauthorized, errors.SignatureError, errors.Forbidden,
          errors.NotFound, errors.Conflict, errors.Gone, errors.TooLarge, errors.RemoteError,
          errors.ServerUnreachable, errors.SandboxUnavailable]
# What the receiving side gets back: the same class, or the nearest one an HTTP status can carry.
COMES_BACK_AS = {errors.JobFileError: errors.DistrenError, errors.BundleError: errors.DistrenError,
                 errors.SignatureError: errors.Unauthorized, errors.SandboxUnavailable: errors.ServerUnreachable}


@pytest.mark.parametrize("cls", RAISED, ids=lambda c: c.__name__)
def test_round_trip_through_http(cls):
    got = errors.from_status(cls.status, "it broke")
    assert type(got) is COMES_BACK_AS.get(cls, cls)
    assert str(got) == "it broke" and got.status == cls.status


def test_a_peers_5xx_is_not_the_askers_fault():
    for status in (500, 502, 504):
        e = errors.from_status(status, "boom")
        assert isinstance(e, errors.RemoteError) and e.status == 502 and not e.final
    assert errors.from_status(503, "down").status == 503


def test_refusals_are_final_outages_are_not():
    assert errors.from_status(404, "x").final and errors.from_status(409, "x").final
    assert not errors.ServerUnreachable("x").final and not errors.RemoteError("x").final


def test_unknown_4xx_and_validation_answers():
    assert type(errors.from_status(418, "teapot")) is errors.DistrenError
    e = errors.from_status(422, "job_id: not an integer")
    assert e.status == 400 and "did not understand" in str(e)


def _app(exc: errors.DistrenError) -> FastAPI:
    from distren import api

    app = FastAPI()
    app.add_exception_handler(errors.DistrenError, api.error_answer)

    @app.get("/boom")
    def boom():
        raise exc
    return app


@pytest.mark.parametrize("cls", [errors.NotFound, errors.Gone, errors.Forbidden, errors.Conflict],
                         ids=lambda c: c.__name__)
def test_client_and_transport_raise_what_the_server_raised(cls, tmp_path):
    """In process: the API's own handler answers, the client and the signed transport read it."""
    app = _app(cls("job 7 is not here"))
    assert TestClient(app).get("/boom").status_code == cls.status
    client = Client("http://t", token="x")
    client.http = TestClient(app, base_url="http://t")
    with pytest.raises(cls, match="job 7 is not here"):
        client._request("GET", "/boom")
    transport = Transport(Identity.load_or_create("me", tmp_path / "k"))
    transport.http = TestClient(app, base_url="http://t")
    with pytest.raises(cls, match="job 7 is not here"):
        transport.call("GET", "http://t", "/boom", to="them", retries=0)


def test_transport_retries_a_5xx_then_says_remote_error(tmp_path):
    calls = []

    def handler(request):
        calls.append(request)
        return httpx.Response(500, json={"error": "internal"})

    transport = Transport(Identity.load_or_create("me", tmp_path / "k"))
    transport.http = httpx.Client(transport=httpx.MockTransport(handler))
    with pytest.raises(errors.RemoteError) as info:
        transport.call("GET", "http://t", "/x", to="them", retries=2)
    assert len(calls) == 3 and info.value.status == 502
