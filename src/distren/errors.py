"""One exception hierarchy, and the one mapping between it and HTTP statuses.

Every message says what went wrong, for the person who reads it; it never shows a server-side
path. Advice that depends on how the person got here (a CLI flag, an environment variable) is
the CLI's to add (see :func:`distren.cli.main`), not the server's.

The server answers an error with ``{"error": message}`` and the error's :attr:`status`; the
client, the transfers between servers and the federation turn an answer back into the same
class with :func:`from_status`.
"""

from __future__ import annotations


class DistrenError(Exception):
    """Base of every error distren raises on purpose. ``str(err)`` is meant for the user."""

    #: HTTP status the API answers with when this error escapes a request handler.
    status = 400

    @property
    def final(self) -> bool:
        """Asking again will not help (a refusal), unlike an outage or an overloaded server."""
        return self.status < 500


class InvalidURL(DistrenError):
    """A distren:// URL that does not parse, or names the wrong kind of thing."""


class JobFileError(DistrenError):
    """A distrenjob.xml that cannot be read or does not describe a valid job."""


class BundleError(DistrenError):
    """A tarball that is unsafe or malformed (links, ``../`` members, too large, missing files)."""


class SceneError(DistrenError):
    """A scene source (INI, .pov, folder) that cannot be packed."""


class RenderError(DistrenError):
    """A backend failed to render a frame; the message carries the renderer's own words."""


class LimitExceeded(RenderError):
    """A render hit one of the server's limits; the message names it and the serve option.
    The same server would hit it again, so the frame is not retried here."""


class Unauthorized(DistrenError):
    """No credentials, or credentials this server does not accept."""

    status = 401


class SignatureError(Unauthorized):
    """A server-to-server request whose signature, key, clock or nonce does not check out."""


class Replayed(SignatureError):
    """A signed request seen before."""


class Forbidden(DistrenError):
    """Known credentials, but not allowed to do this (an admin's task)."""

    status = 403


class Untrusted(Forbidden):
    """A renderer whose results this origin found wrong: it gets no more of its frames."""


class NotFound(DistrenError):
    status = 404


class Conflict(DistrenError):
    """The request is valid but the thing is in a state that does not allow it."""

    status = 409


class Gone(DistrenError):
    """The remote job is finished, cancelled or deleted: never ask for its frames again."""

    status = 410


class TooLarge(DistrenError):
    status = 413


class TooManyRequests(DistrenError):
    """One source asked too often (e.g. hellos); it may ask again later."""

    status = 429


class RemoteError(DistrenError):
    """Another server failed to answer (it said 5xx): not the asker's fault, worth retrying."""

    status = 502


class ServerUnreachable(DistrenError):
    status = 503


class Busy(DistrenError):
    """The server is at a bound it keeps (live views open, previews being made, hellos being
    confirmed, servers awaiting approval): try again later."""

    status = 503


class SandboxUnavailable(DistrenError):
    """This machine cannot create the sandbox every render runs in."""

    status = 503


_BY_STATUS: dict[int, type[DistrenError]] = {
    cls.status: cls for cls in (DistrenError, Unauthorized, Forbidden, NotFound, Conflict, Gone, TooLarge,
                                TooManyRequests,
                                RemoteError, ServerUnreachable)
}


def from_status(status: int, message: str) -> DistrenError:
    """The error an HTTP answer with ``status`` and ``message`` stands for."""
    if status == 422:  # FastAPI's own validation, before any distren code ran
        return DistrenError(f"the server did not understand the request: {message}")
    if status >= 500:
        return _BY_STATUS.get(status, RemoteError)(message)
    return _BY_STATUS.get(status, DistrenError)(message)


def message_of(body: bytes | str, fallback: str) -> str:
    """The ``error`` of an answer's JSON body, or its text."""
    import json

    try:
        msg = json.loads(body).get("error")
    except (ValueError, AttributeError):
        msg = None
    return msg or (body.decode(errors="replace") if isinstance(body, bytes) else body) or fallback
