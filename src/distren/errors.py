"""One exception hierarchy. Every message says what went wrong and what to do about it."""

from __future__ import annotations


class DistrenError(Exception):
    """Base of every error distren raises on purpose. ``str(err)`` is meant for the user."""

    #: HTTP status the API answers with when this error escapes a request handler.
    status = 400


class InvalidURL(DistrenError):
    """A distren:// URL that does not parse, or names the wrong kind of thing."""


class JobFileError(DistrenError):
    """A distrenjob.xml that cannot be read or does not describe a valid job."""


class BundleError(DistrenError):
    """A tarball that is unsafe or malformed (links, ``../`` members, too large, missing files)."""


class SceneError(DistrenError):
    """A scene source (INI, .pov, folder) that cannot be packed."""


class NotFound(DistrenError):
    status = 404


class Unauthorized(DistrenError):
    status = 401


class Forbidden(DistrenError):
    """A valid token whose user may not do this (not an admin)."""

    status = 403


class Replayed(Unauthorized):
    """A signed request seen before."""


class Conflict(DistrenError):
    """The request is valid but the thing is in a state that does not allow it."""

    status = 409


class TooLarge(DistrenError):
    status = 413


class RenderError(DistrenError):
    """A backend failed to render a frame; the message carries the renderer's own words."""


class ServerUnreachable(DistrenError):
    status = 503
