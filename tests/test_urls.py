"""distren:// URLs: parsing, formatting, validation and job-relative frame references."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distren import urls
from distren.errors import DistrenError, InvalidURL
from distren.urls import FrameURL, JobURL, ServerURL, UserURL

FAST = settings(max_examples=100, deadline=None)

# --- strategies --------------------------------------------------------------------------------

_ALNUM = string.ascii_lowercase + string.digits
_label = st.builds(
    lambda first, mid, last: first + mid + last if mid or last else first,
    st.sampled_from(_ALNUM), st.text(_ALNUM + "-", max_size=61), st.text(_ALNUM, max_size=1),
).filter(lambda lab: not lab.endswith("-"))
server_names = st.lists(_label, min_size=1, max_size=4).map(".".join).filter(lambda n: len(n) <= 253)
user_names = st.builds(
    str.__add__, st.sampled_from(string.ascii_letters + string.digits),
    st.text(string.ascii_letters + string.digits + "_.-", max_size=63),
)
ids = st.integers(min_value=0, max_value=urls.MAX_ID)

server_urls = st.builds(ServerURL, server_names)
user_urls = st.builds(UserURL, server_names, user_names)
job_urls = st.builds(JobURL, server_names, ids)
frame_urls = st.builds(FrameURL, server_names, ids, ids)
any_urls = st.one_of(server_urls, user_urls, job_urls, frame_urls)


def _case_variants(name: str) -> st.SearchStrategy[str]:
    return st.lists(st.booleans(), min_size=len(name), max_size=len(name)).map(
        lambda flips: "".join(c.upper() if f else c for c, f in zip(name, flips))
    )


# --- round trips -------------------------------------------------------------------------------


@FAST
@given(any_urls)
def test_parse_and_format_round_trip(u):
    text = str(u)
    assert urls.parse(text) == u  # parse(format(x)) == x
    assert str(urls.parse(text)) == text  # format(parse(s)) == s for canonical s
    # a trailing slash is accepted everywhere and changes nothing
    with_slash = text if text.endswith("/") else text + "/"
    assert urls.parse(with_slash) == u


@FAST
@given(server_names.flatmap(lambda n: st.tuples(st.just(n), _case_variants(n))), ids)
def test_server_names_are_case_insensitive_and_lowercased(pair, job_id):
    name, variant = pair
    parsed = urls.parse(f"distren://{variant}/job/{job_id}")
    assert parsed == JobURL(name, job_id)
    assert parsed.server == name == name.lower()
    assert urls.check_server_name(variant) == name


@FAST
@given(frame_urls)
def test_typed_parsers_accept_their_own_kind(f):
    assert urls.parse_frame(str(f)) == f
    assert urls.parse_job(str(f.job)) == f.job
    assert urls.parse_server(str(f.job.origin)) == f.job.origin
    assert f.job.frame(f.frame_id) == f
    assert f.job.origin.job(f.job_id) == f.job


@FAST
@given(job_urls, ids)
def test_relative_frame_refs_resolve_against_the_job(job, fid):
    assert urls.resolve_frame(f"frame/{fid}", job) == job.frame(fid)
    assert urls.parse_relative_frame_id(f"frame/{fid}") == fid
    # an absolute reference is returned as such, whatever job it is resolved against
    absolute = str(job.frame(fid))
    assert urls.resolve_frame(absolute, JobURL("elsewhere", 1)) == job.frame(fid)
    assert urls.parse_relative_frame_id(absolute) is None


# --- concrete examples -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("distren://a/", ServerURL("a")),
        ("distren://a", ServerURL("a")),
        ("distren://render1/", ServerURL("render1")),
        ("distren://OhnoPub.NET/", ServerURL("ohnopub.net")),
        ("DISTREN://a/job/3", JobURL("a", 3)),
        ("distren://a/user/Ann_B.c-d", UserURL("a", "Ann_B.c-d")),
        ("distren://a/job/36/frame/23", FrameURL("a", 36, 23)),
        ("distren://a/job/36/frame/23/", FrameURL("a", 36, 23)),
        ("distren://a/job/0/frame/0", FrameURL("a", 0, 0)),
        ("distren://a/job/007", JobURL("a", 7)),
        (f"distren://a/job/{2**63 - 1}", JobURL("a", 2**63 - 1)),
        ("distren://1-2.x/", ServerURL("1-2.x")),
    ],
)
def test_parse_examples(text, expected):
    assert urls.parse(text) == expected


def test_str_forms():
    assert str(ServerURL("a")) == "distren://a/"
    assert str(UserURL("a", "ann")) == "distren://a/user/ann"
    assert str(JobURL("a", 36)) == "distren://a/job/36"
    assert str(FrameURL("a", 36, 23)) == "distren://a/job/36/frame/23"
    assert str(ServerURL("a").user("ann")) == "distren://a/user/ann"


def test_urls_order_by_fields():
    assert sorted([FrameURL("a", 2, 1), FrameURL("a", 1, 10), FrameURL("a", 1, 2)]) == [
        FrameURL("a", 1, 2), FrameURL("a", 1, 10), FrameURL("a", 2, 1),
    ]


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, needle",
    [
        ("http://a/job/1", "not a distren URL"),
        ("distren:/a/job/1", "not a distren URL"),
        ("", "not a distren URL"),
        ("distren:///job/1", "invalid server name ''"),
        ("distren://-a/", "invalid server name '-a'"),
        ("distren://a-/", "invalid server name 'a-'"),
        ("distren://a..b/", "invalid server name 'a..b'"),
        ("distren://a.b./", "invalid server name 'a.b.'"),
        ("distren://a_b/", "invalid server name 'a_b'"),
        ("distren://a:8080/", "invalid server name 'a:8080'"),
        ("distren://" + "x" * 64 + "/", "invalid server name"),
        ("distren://ünï/", "invalid server name"),
        ("distren://\u212a/", "invalid server name"),  # Kelvin sign: lower() would make it 'k'
        ("distren://a\n/", "invalid server name"),
        ("distren://a/job/-1", "invalid job id '-1'"),
        ("distren://a/job/+1", "invalid job id '+1'"),
        ("distren://a/job/1.0", "invalid job id '1.0'"),
        ("distren://a/job/ 1", "invalid job id ' 1'"),
        ("distren://a/job/\u0661", "invalid job id"),  # Arabic-Indic digit one
        ("distren://a/job/x/frame/1", "invalid job id 'x'"),
        ("distren://a/job/1/frame/y", "invalid frame id 'y'"),
        ("distren://a/job/1\n", "invalid job id"),
        (f"distren://a/job/{2**63}", "too large"),
        (f"distren://a/job/1/frame/{2**63}", "frame id"),
        ("distren://a/job/" + "9" * 5000, "too large"),  # int() refuses > 4300 digits
        ("distren://a/user/", "unrecognised distren URL"),
        ("distren://a/user/_ann", "invalid user name '_ann'"),
        ("distren://a/user/" + "u" * 65, "invalid user name"),
        ("distren://a/user/a b", "invalid user name 'a b'"),
        ("distren://a/job", "unrecognised distren URL"),
        ("distren://a/job/1/frame", "unrecognised distren URL"),
        ("distren://a/job/1/frame/2/x", "unrecognised distren URL"),
        ("distren://a//job/1", "unrecognised distren URL"),
        ("distren://a/job/1//", "unrecognised distren URL"),
        ("distren://a/frame/1", "unrecognised distren URL"),
    ],
)
def test_invalid_urls_are_refused_with_a_message_naming_the_problem(text, needle):
    with pytest.raises(InvalidURL) as ei:
        urls.parse(text)
    assert isinstance(ei.value, DistrenError)
    assert needle in str(ei.value)


@pytest.mark.parametrize("value", [None, 7, b"distren://a/"])
def test_non_strings_are_invalid_urls(value):
    with pytest.raises(InvalidURL, match="not a distren URL"):
        urls.parse(value)


def test_server_name_length_limits():
    label = "a" * 63
    assert urls.check_server_name(label) == label
    long_name = ".".join([label] * 3 + ["b" * 61])  # 253 characters
    assert len(long_name) == 253
    assert urls.check_server_name(long_name) == long_name
    with pytest.raises(InvalidURL, match="invalid server name"):
        urls.check_server_name(long_name + "b")


def test_user_name_length_limit():
    assert urls.check_user_name("u" * 64) == "u" * 64
    with pytest.raises(InvalidURL, match="1-64"):
        urls.check_user_name("u" * 65)
    with pytest.raises(InvalidURL):
        ServerURL("a").user("")


@pytest.mark.parametrize(
    "text, parser, kind, example",
    [
        ("distren://a/", urls.parse_job, "job", "distren://NAME/job/ID"),
        ("distren://a/job/1", urls.parse_frame, "frame", "distren://NAME/job/ID/frame/FID"),
        ("distren://a/job/1/frame/2", urls.parse_job, "job", "distren://NAME/job/ID"),
        ("distren://a/job/1", urls.parse_server, "server", "distren://NAME/"),
        ("distren://a/job/1", urls.parse_user, "user", "distren://NAME/user/USER"),
    ],
)
def test_typed_parsers_refuse_other_kinds(text, parser, kind, example):
    with pytest.raises(InvalidURL) as ei:
        parser(text)
    msg = str(ei.value)
    assert f"is not a {kind} URL" in msg
    assert text in msg and example in msg


@pytest.mark.parametrize(
    "ref, expected",
    [
        ("frame/7", 7),
        ("/frame/7/", 7),
        ("frame/0", 0),
        ("frame/007", 7),
    ],
)
def test_relative_frame_ids(ref, expected):
    assert urls.parse_relative_frame_id(ref) == expected
    assert urls.resolve_frame(ref, JobURL("srv", 5)) == FrameURL("srv", 5, expected)


@pytest.mark.parametrize(
    "ref, needle",
    [
        ("7", "invalid frame reference '7'"),
        ("frames/7", "invalid frame reference"),
        ("Frame/7", "invalid frame reference"),
        ("job/1/frame/7", "invalid frame reference"),
        ("frame/7/x", "invalid frame reference"),
        ("", "invalid frame reference"),
        ("frame/-1", "invalid frame id '-1'"),
        ("frame/x", "invalid frame id 'x'"),
        ("frame/" + "9" * 5000, "too large"),
        ("distren://a/job/1", "is not a frame URL"),
    ],
)
def test_bad_frame_references(ref, needle):
    with pytest.raises(InvalidURL) as ei:
        urls.resolve_frame(ref, JobURL("a", 1))
    assert needle in str(ei.value)
    if ref.startswith("distren://"):
        assert urls.parse_relative_frame_id(ref) is None  # absolute: not a relative reference
    else:
        with pytest.raises(InvalidURL):
            urls.parse_relative_frame_id(ref)


@FAST
@given(st.text(max_size=40))
def test_parse_either_returns_a_url_or_raises_invalid_url(text):
    try:
        parsed = urls.parse(text)
    except InvalidURL as e:
        assert str(e)
    else:
        # whatever was accepted has a canonical form that parses back to itself
        assert urls.parse(str(parsed)) == parsed


@FAST
@given(st.text(alphabet="distren:/abcjobfrmeuUSER0129.-_ ", max_size=40))
def test_parse_on_near_urls_never_crashes(text):
    for fn in (urls.parse, lambda t: urls.resolve_frame(t, JobURL("a", 1))):
        try:
            fn(text)
        except InvalidURL:
            pass
