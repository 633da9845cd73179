"""distren:// URLs: servers, users, jobs and frames, as the seed names them.

    distren://NAME/                    a server
    distren://NAME/user/USER           a user on that server
    distren://NAME/job/ID              a job, ID a non-negative integer never reused by NAME
    distren://NAME/job/ID/frame/FID    a frame of that job

Server names are alphanumeric identifiers or DNS names (``ohnopub.net``); they compare
case-insensitively, so they are kept in lower case.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidURL

SCHEME = "distren://"
MAX_ID = 2**63 - 1  # ids live in SQLite INTEGER columns

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_NAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_USER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ID_RE = re.compile(r"[0-9]+")


def check_server_name(name: str) -> str:
    """Return ``name`` normalised (lower case), or raise InvalidURL saying what a name may be."""
    low = name.lower()
    # isascii(): str.lower() maps e.g. the Kelvin sign U+212A to 'k'; such a name is not ASCII.
    if not name.isascii() or len(low) > 253 or not _NAME_RE.fullmatch(low):
        raise InvalidURL(
            f"invalid server name {name!r}: use letters, digits and hyphens, "
            "optionally dot-separated like a DNS name (e.g. 'render1' or 'ohnopub.net')"
        )
    return low


def check_user_name(user: str) -> str:
    if not _USER_RE.fullmatch(user):
        raise InvalidURL(
            f"invalid user name {user!r}: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return user


def _parse_id(text: str, what: str, url: str) -> int:
    if not _ID_RE.fullmatch(text):
        raise InvalidURL(f"invalid {what} id {text!r} in {url!r}: ids are non-negative integers")
    # Checked before int(): Python refuses to convert strings of more than 4300 digits.
    value = int(text) if len(text.lstrip("0")) <= len(str(MAX_ID)) else MAX_ID + 1
    if value > MAX_ID:
        raise InvalidURL(f"{what} id {text} in {url!r} is too large (at most {MAX_ID})")
    return value


@dataclass(frozen=True, order=True)
class ServerURL:
    name: str

    def __str__(self) -> str:
        return f"{SCHEME}{self.name}/"

    def job(self, job_id: int) -> JobURL:
        return JobURL(self.name, job_id)

    def user(self, user: str) -> UserURL:
        return UserURL(self.name, check_user_name(user))


@dataclass(frozen=True, order=True)
class UserURL:
    server: str
    user: str

    def __str__(self) -> str:
        return f"{SCHEME}{self.server}/user/{self.user}"


@dataclass(frozen=True, order=True)
class JobURL:
    server: str
    job_id: int

    def __str__(self) -> str:
        return f"{SCHEME}{self.server}/job/{self.job_id}"

    @property
    def origin(self) -> ServerURL:
        return ServerURL(self.server)

    def frame(self, frame_id: int) -> FrameURL:
        return FrameURL(self.server, self.job_id, frame_id)


@dataclass(frozen=True, order=True)
class FrameURL:
    server: str
    job_id: int
    frame_id: int

    def __str__(self) -> str:
        return f"{SCHEME}{self.server}/job/{self.job_id}/frame/{self.frame_id}"

    @property
    def job(self) -> JobURL:
        return JobURL(self.server, self.job_id)


AnyURL = ServerURL | UserURL | JobURL | FrameURL


def parse(url: str) -> AnyURL:
    """Parse any distren:// URL. A trailing slash is accepted everywhere."""
    if not isinstance(url, str) or not url.lower().startswith(SCHEME):
        raise InvalidURL(f"not a distren URL: {url!r} (expected 'distren://NAME/...')")
    rest = url[len(SCHEME):]
    name, _, path = rest.partition("/")
    name = check_server_name(name)
    parts = [p for p in path.split("/")] if path else []
    if parts and parts[-1] == "":
        parts.pop()
    if not parts:
        return ServerURL(name)
    if parts[0] == "user" and len(parts) == 2:
        return UserURL(name, check_user_name(parts[1]))
    if parts[0] == "job" and len(parts) == 2:
        return JobURL(name, _parse_id(parts[1], "job", url))
    if parts[0] == "job" and len(parts) == 4 and parts[2] == "frame":
        return FrameURL(name, _parse_id(parts[1], "job", url), _parse_id(parts[3], "frame", url))
    raise InvalidURL(
        f"unrecognised distren URL {url!r}: expected distren://NAME/, distren://NAME/user/USER, "
        "distren://NAME/job/ID or distren://NAME/job/ID/frame/FID"
    )


def _parse_as(url: str, kind: type, what: str):
    parsed = parse(url)
    if not isinstance(parsed, kind):
        raise InvalidURL(f"{url!r} is not a {what} URL (expected {_EXAMPLES[kind]})")
    return parsed


_EXAMPLES = {
    ServerURL: "distren://NAME/",
    UserURL: "distren://NAME/user/USER",
    JobURL: "distren://NAME/job/ID",
    FrameURL: "distren://NAME/job/ID/frame/FID",
}


def parse_server(url: str) -> ServerURL:
    return _parse_as(url, ServerURL, "server")


def parse_user(url: str) -> UserURL:
    return _parse_as(url, UserURL, "user")


def parse_job(url: str) -> JobURL:
    return _parse_as(url, JobURL, "job")


def parse_frame(url: str) -> FrameURL:
    return _parse_as(url, FrameURL, "frame")


def resolve_frame(ref: str, job: JobURL) -> FrameURL:
    """Resolve a frame reference as it may stand in an unsubmitted bundle: either absolute, or
    relative to the job (``frame/7``)."""
    if ref.lower().startswith(SCHEME):
        return parse_frame(ref)
    parts = ref.strip("/").split("/")
    if len(parts) != 2 or parts[0] != "frame":
        raise InvalidURL(
            f"invalid frame reference {ref!r}: use 'frame/FID' for a frame of this job "
            "or a full 'distren://NAME/job/ID/frame/FID'"
        )
    return job.frame(_parse_id(parts[1], "frame", ref))


def parse_relative_frame_id(ref: str) -> int | None:
    """The frame id of a job-relative reference ``frame/N``; None if ``ref`` is absolute."""
    if ref.lower().startswith(SCHEME):
        return None
    return resolve_frame(ref, JobURL("x", 0)).frame_id
