"""distrenjob.xml: reading, writing, validation and dependency checks."""

from __future__ import annotations

import random
import string
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distren import jobfile, urls
from distren.errors import DistrenError, JobFileError
from distren.jobfile import FileEntry, Frame, JobFile, dumps, lease_xml, loads

FAST = settings(max_examples=100, deadline=None)

SHA = "0123456789abcdef" * 4

# --- strategies --------------------------------------------------------------------------------

_alnum = string.ascii_lowercase + string.digits
server_names = st.lists(
    st.text(_alnum, min_size=1, max_size=8), min_size=1, max_size=3
).map(".".join)
ids = st.integers(min_value=0, max_value=urls.MAX_ID)
small_ids = st.integers(min_value=0, max_value=10_000)
job_urls = st.builds(urls.JobURL, server_names, ids)
user_urls = st.builds(
    urls.UserURL, server_names,
    st.builds(str.__add__, st.sampled_from(_alnum), st.text(_alnum + "_.-", max_size=10)),
)

# Any character XML 1.0 can carry in an attribute value (tab, newline, CR are escaped by ET).
_xml_chars = st.characters(
    exclude_categories=("Cs",),
    exclude_characters=({chr(i) for i in range(32)} - set("\t\n\r")) | {"\ufffe", "\uffff"},
)
attr_values = st.text(_xml_chars, max_size=20)
attr_names = st.builds(
    str.__add__, st.sampled_from(string.ascii_letters + "_"),
    st.text(string.ascii_letters + string.digits + "_.-", max_size=12),
).filter(lambda n: not n.lower().startswith("xml"))  # names starting with 'xml' are reserved by XML
job_types = st.builds(
    str.__add__, st.sampled_from(string.ascii_lowercase), st.text(_alnum + "_-", max_size=31)
).filter(lambda t: t not in ("resolution", "frames"))
_segment = st.text(string.ascii_letters + string.digits + "_-. ", min_size=1, max_size=10).filter(
    lambda s: s not in (".", "..")
)
file_entries = st.builds(
    FileEntry,
    st.lists(_segment, min_size=1, max_size=3).map("/".join),
    st.integers(min_value=0, max_value=2**62),
    st.text("0123456789abcdef", min_size=64, max_size=64),
)


_maybe_job = st.none() | job_urls
_frame_ids = st.lists(small_ids | ids, min_size=1, max_size=8, unique=True)
# (own?, which own frame, other job, its frame): a dep on this job's frame or on another job's
_dep_specs = st.lists(st.tuples(st.booleans(), st.integers(0, 7), job_urls, ids), max_size=3)
_servers = st.none() | server_names.map(lambda n: str(urls.ServerURL(n)))
_file_lists = st.lists(file_entries, max_size=2)
_sides = st.integers(1, jobfile.MAX_SIDE)
_settings = st.dictionaries(attr_names, attr_values, max_size=4)
_submitters = st.none() | user_urls.map(str)


@st.composite
def jobfiles(draw):
    """Valid JobFiles in canonical form (what loads() returns)."""
    job = draw(_maybe_job)
    frame_ids = draw(_frame_ids)
    frames = []
    for fid in frame_ids:
        deps = []
        for own, which, other, other_fid in draw(_dep_specs):
            if own:
                deps.append(f"frame/{frame_ids[which % len(frame_ids)]}")
            elif other != job:
                deps.append(str(other.frame(other_fid)))
        frames.append(Frame(fid, tuple(deps), draw(_servers), tuple(draw(_file_lists))))
    return JobFile(
        type=draw(job_types),
        width=draw(_sides),
        height=draw(_sides),
        frames=tuple(frames),
        settings=draw(_settings),
        name=str(job) if job else None,
        submitter=draw(_submitters),
    )


def _job_xml(frames: str, job_attrs: str = 'type="povray"', extra: str = "") -> str:
    return (
        f'<distren version="1"><job {job_attrs}><resolution width="8" height="6"/>{extra}'
        f"<frames>{frames}</frames></job></distren>"
    )


def _error(data) -> str:
    with pytest.raises(JobFileError) as ei:
        loads(data)
    assert isinstance(ei.value, DistrenError)
    msg = str(ei.value)
    assert msg.startswith("distrenjob.xml")
    return msg


# --- round trips and determinism ---------------------------------------------------------------


@FAST
@given(jobfiles(), st.randoms(use_true_random=False))
def test_dumps_loads_round_trip_and_determinism(jf, rnd):
    data = dumps(jf)
    back = loads(data)
    assert back == jf  # loads(dumps(x)) == x
    assert dumps(back) == data  # dumps(loads(s)) == s
    assert jf.to_xml() == data
    assert loads(data.decode("utf-8")) == jf  # str and bytes alike
    # the same JobFile gives the same bytes, whatever order its settings were built in
    items = list(jf.settings.items())
    rnd.shuffle(items)
    shuffled = JobFile(jf.type, jf.width, jf.height, jf.frames, dict(items), jf.name, jf.submitter)
    assert dumps(shuffled) == data


def test_dumps_output_shape():
    jf = JobFile(
        type="povray", width=800, height=600,
        frames=(
            Frame(23),
            Frame(22, deps=("frame/23",)),
            Frame(24, server="distren://b/", files=(FileEntry("anim24.png", 1234, SHA),)),
        ),
        settings={"ini": "scene/anim.ini", "a": "1"},
        name="distren://a/job/36", submitter="distren://a/user/ann",
    )
    text = dumps(jf).decode()
    assert text.startswith("<?xml version='1.0' encoding='UTF-8'?>\n<distren version=\"1\">")
    assert text.endswith("</distren>\n")
    assert '<job name="distren://a/job/36" submitter="distren://a/user/ann" type="povray">' in text
    assert '<resolution width="800" height="600" />' in text
    assert '<povray a="1" ini="scene/anim.ini" />' in text  # attributes sorted
    # a submitted job names its frames and deps absolutely
    assert '<frame name="distren://a/job/36/frame/22">' in text
    assert '<dep name="distren://a/job/36/frame/23" />' in text
    assert f'<file name="anim24.png" size="1234" sha256="{SHA}" />' in text
    assert loads(text) == jf


def test_unsubmitted_job_uses_relative_names():
    jf = JobFile("povray", 8, 6, (Frame(1), Frame(2, deps=("frame/1",))))
    text = dumps(jf).decode()
    assert '<frame name="frame/2">' in text and '<dep name="frame/1" />' in text
    assert "distren://" not in text
    assert "<povray" not in text  # no settings element without settings


# --- reading the seed's example and canonicalisation -------------------------------------------


SEED_EXAMPLE = f"""<?xml version="1.0"?>
<distren version="1">
  <job name="distren://a/job/36" submitter="distren://a/user/ann" type="povray">
    <resolution width="800" height="600"/>
    <povray ini="scene/anim.ini"/>
    <frames>
      <frame name="distren://a/job/36/frame/23"/>
      <frame name="distren://a/job/36/frame/22">
        <dep name="distren://a/job/36/frame/23"/>
      </frame>
      <frame name="distren://a/job/36/frame/25" server="distren://b/"/>
      <frame name="distren://a/job/36/frame/24" server="distren://b/">
        <file name="anim24.png" size="1234" sha256="{SHA}"/>
      </frame>
    </frames>
  </job>
</distren>
"""


def test_reads_the_seed_example():
    jf = loads(SEED_EXAMPLE)
    assert jf.type == "povray" and (jf.width, jf.height) == (800, 600)
    assert jf.settings == {"ini": "scene/anim.ini"}
    assert jf.name == "distren://a/job/36" and jf.submitter == "distren://a/user/ann"
    assert jf.job_url == urls.JobURL("a", 36)
    assert [f.id for f in jf.frames] == [23, 22, 25, 24]
    assert jf.frame(22).deps == ("frame/23",)  # own-job deps are kept relative in memory
    assert jf.frame(25).server == "distren://b/"
    assert jf.frame(24).files == (FileEntry("anim24.png", 1234, SHA),)
    assert jf.dependency_targets(jf.frame(22)) == [23]
    jf.check_dependencies()
    with pytest.raises(JobFileError, match="job has no frame 99"):
        jf.frame(99)


def test_loads_canonicalises_names():
    jf = loads(_job_xml(
        '<frame name="DISTREN://A/job/036/frame/01" server="distren://B"/>'
        '<frame name="distren://a/job/36/frame/2"><dep name="distren://a/job/36/frame/1/"/>'
        '<dep name="distren://OTHER/job/5/frame/6"/><dep name="/frame/1/"/></frame>',
        job_attrs='name="distren://A/job/36/" submitter="distren://A/user/Ann" type="povray"',
    ))
    assert jf.name == "distren://a/job/36"
    assert jf.submitter == "distren://a/user/Ann"  # user names keep their case
    assert jf.frames[0] == Frame(1, server="distren://b/")
    assert jf.frames[1].deps == ("frame/1", "distren://other/job/5/frame/6", "frame/1")
    assert jf.dependency_targets(jf.frames[1]) == [1, urls.FrameURL("other", 5, 6), 1]


def test_bare_job_root_is_accepted():
    jf = loads('<job type="povray"><resolution width="1" height="1"/><frames><frame name="frame/0"/></frames></job>')
    assert jf.frames == (Frame(0),)


def test_absolute_names_every_reference():
    jf = JobFile("povray", 8, 6, (Frame(1), Frame(2, deps=("frame/1", "distren://b/job/9/frame/3"))))
    job, user = urls.JobURL("a", 36), urls.UserURL("a", "ann")
    named = jf.absolute(job, user)
    assert named.name == "distren://a/job/36" and named.submitter == "distren://a/user/ann"
    assert named.frames[1].deps == ("frame/1", "distren://b/job/9/frame/3")
    assert loads(dumps(named)) == named
    assert '<dep name="distren://a/job/36/frame/1" />' in dumps(named).decode()


# --- validation errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "xml, needles",
    [
        ("<other/>", ["root element is <other>"]),
        ("<distren/>", ["exactly one <job>, found 0"]),
        ('<distren><job type="povray"/><job type="povray"/></distren>', ["exactly one <job>, found 2"]),
        (_job_xml('<frame name="frame/1"/>', job_attrs=""), ["type attribute", "None"]),
        (_job_xml('<frame name="frame/1"/>', job_attrs='type="Povray"'), ["type attribute", "'Povray'"]),
        (_job_xml('<frame name="frame/1"/>', job_attrs='type="frames"'), ["type='frames' is reserved"]),
        (_job_xml('<frame name="frame/1"/>', job_attrs='type="resolution"'), ["type='resolution' is reserved"]),
        (_job_xml('<frame name="frame/1"/>', job_attrs='type="povray" name="distren://a/job/x"'),
         ["<job>", "invalid job id 'x'"]),
        (_job_xml('<frame name="frame/1"/>', job_attrs='type="povray" name="distren://a/job/1/frame/2"'),
         ["<job>", "is not a job URL"]),
        (_job_xml('<frame name="frame/1"/>', job_attrs='type="povray" submitter="distren://a/job/1"'),
         ["<job>", "is not a user URL"]),
        ('<job type="povray"><frames><frame name="frame/1"/></frames></job>', ["no <resolution"]),
        ('<job type="povray"><resolution height="1"/><frames/></job>', ["<resolution>", "'width'"]),
        ('<job type="povray"><resolution width="a" height="1"/><frames/></job>', ["width='a' is not an integer"]),
        ('<job type="povray"><resolution width="0" height="1"/><frames/></job>', ["width=0 is out of range (1..16384)"]),
        ('<job type="povray"><resolution width="1" height="16385"/><frames/></job>', ["height=16385 is out of range"]),
        ('<job type="povray"><resolution width="1" height="1"/></job>', ["no <frames>"]),
        (_job_xml(""), ["<frames> is empty"]),
        (_job_xml("<frame/>"), ["<frame> #1 has no name"]),
        (_job_xml('<frame name="frame/1"/><frame name="7"/>'), ["<frame> #2", "invalid frame reference '7'"]),
        (_job_xml('<frame name="frame/1"/><frame name="frame/1"/>'), ["frame/1 is listed twice"]),
        (_job_xml('<frame name="distren://a/job/1/frame/1"/>'), ["<frame> #1", "does not belong to job (unnamed)"]),
        (_job_xml('<frame name="distren://a/job/2/frame/1"/>', job_attrs='type="povray" name="distren://a/job/1"'),
         ["<frame> #1", "does not belong to job distren://a/job/1"]),
        (_job_xml('<frame name="frame/1"><dep/></frame>'), ["<frame> #1 has a <dep> without a name"]),
        (_job_xml('<frame name="frame/1"><dep name="distren://a/job/1"/></frame>'), ["<frame> #1", "is not a frame URL"]),
        (_job_xml('<frame name="frame/1"><dep name="frame/x"/></frame>'), ["<frame> #1", "invalid frame id 'x'"]),
        (_job_xml('<frame name="frame/1" server="distren://a/job/1"/>'), ["<frame> #1", "is not a server URL"]),
        (_job_xml(f'<frame name="frame/1"><file name="../x" size="1" sha256="{SHA}"/></frame>'),
         ["<frame> #1 <file> name='../x' goes up with '..'"]),
        (_job_xml(f'<frame name="frame/1"><file name="/etc/passwd" size="1" sha256="{SHA}"/></frame>'),
         ["<file> name='/etc/passwd' is an absolute path"]),
        (_job_xml(f'<frame name="frame/1"><file name="a&#10;b.png" size="1" sha256="{SHA}"/></frame>'),
         ["<file> name='a\\nb.png' holds a control character"]),
        (_job_xml(f'<frame name="frame/1"><file size="1" sha256="{SHA}"/></frame>'), ["<file> name='' is empty"]),
        (_job_xml('<frame name="frame/1"><file name="a.png" size="1" sha256="ABC"/></frame>'),
         ["<file name='a.png'>", "sha256 of 64 hex digits"]),
        (_job_xml(f'<frame name="frame/1"><file name="a.png" sha256="{SHA}"/></frame>'),
         ["<frame> #1 <file>", "'size'"]),
        (_job_xml(f'<frame name="frame/1"><file name="a.png" size="-1" sha256="{SHA}"/></frame>'),
         ["size=-1 is out of range"]),
        (_job_xml('<frame name="frame/' + "9" * 5000 + '"/>'), ["<frame> #1", "too large"]),
        ('<job type="povray"><resolution width="' + "9" * 5000 + '" height="1"/><frames/></job>',
         ["<resolution> width="]),
    ],
)
def test_invalid_jobs_name_the_element_at_fault(xml, needles):
    msg = _error(xml)
    for needle in needles:
        assert needle in msg


def test_too_many_frames(monkeypatch):
    monkeypatch.setattr(jobfile, "MAX_FRAMES", 3)
    frames = "".join(f'<frame name="frame/{i}"/>' for i in range(4))
    assert "4 frames; at most 3 per job" in _error(_job_xml(frames))
    loads(_job_xml("".join(f'<frame name="frame/{i}"/>' for i in range(3))))


def test_oversized_document_is_refused_before_parsing(monkeypatch):
    monkeypatch.setattr(jobfile, "MAX_XML_BYTES", 100)
    assert "larger than 100 bytes" in _error(b" " * 101)


# --- malformed and malicious XML ---------------------------------------------------------------


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<distren><job type="&lol9;"/></distren>
"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE distren [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<distren><job type="povray" name="&xxe;"/></distren>
"""

EXTERNAL_DTD = """<?xml version="1.0"?>
<!DOCTYPE distren SYSTEM "http://example.invalid/distren.dtd">
<distren/>
"""

PLAIN_DTD = """<?xml version="1.0"?>
<!DOCTYPE distren>
<distren/>
"""

PARAMETER_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE distren [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>
<distren/>
"""


@pytest.mark.parametrize("xml", [BILLION_LAUGHS, EXTERNAL_ENTITY, EXTERNAL_DTD, PLAIN_DTD, PARAMETER_ENTITY])
def test_dtds_and_entities_are_refused(xml):
    msg = _error(xml)
    assert "refused unsafe XML" in msg
    assert "remove DTDs and entities" in msg


@pytest.mark.parametrize(
    "xml, line, column, reason",
    [
        ("<distren>\n<job type='povray'>\n  <resolution>\n</job></distren>", 4, 3, "mismatched tag"),
        ("", 1, 1, "no element found"),
        ("<distren>&foo;</distren>", 1, 10, "undefined entity"),
        ("<distren>\n\n   <job type=povray/></distren>", 3, 14, "not well-formed"),
        ("<distren/>\n<distren/>", 2, 1, "junk after document element"),
        (b"<distren>\xff</distren>", 1, 10, "not well-formed"),
    ],
)
def test_malformed_xml_reports_line_and_column(xml, line, column, reason):
    msg = _error(xml)
    assert f"not well-formed XML at line {line}, column {column}: {reason}" in msg
    assert msg.count("line") == 1  # the position is stated once, 1-based


@pytest.mark.parametrize("encoding", ["TF-8", "utf-32", "rot13", "idna", "punycode", "undefined"])
def test_unusable_declared_encoding_is_a_jobfile_error(encoding):
    msg = _error(f'<?xml version="1.0" encoding="{encoding}"?><distren/>'.encode())
    assert "cannot decode it" in msg and "UTF-8" in msg


def test_latin1_declared_encoding_is_honoured():
    doc = _job_xml('<frame name="frame/1"/>', extra='<povray title="caf\xe9"/>')
    data = ('<?xml version="1.0" encoding="ISO-8859-1"?>' + doc).encode("latin-1")
    assert loads(data).settings == {"title": "caf\xe9"}


@FAST
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_loads_on_garbage_raises_only_jobfile_error(data):
    try:
        loads(data)
    except JobFileError:
        pass


@settings(max_examples=50, deadline=None)
@given(jobfiles(), st.data())
def test_loads_on_damaged_documents_raises_only_jobfile_error(jf, data):
    doc = bytearray(dumps(jf))
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(doc) - 1))
        op = data.draw(st.sampled_from(["delete", "replace", "insert"]))
        b = data.draw(st.sampled_from(b"<>/=\"'&;x0 -"))
        if op == "delete":
            del doc[i]
        elif op == "replace":
            doc[i] = b
        else:
            doc.insert(i, b)
    try:
        loads(bytes(doc))
    except JobFileError:
        pass


# --- dependencies ------------------------------------------------------------------------------


def _job(*frames: Frame, name: str | None = None) -> JobFile:
    return JobFile("povray", 8, 6, tuple(frames), name=name)


def test_valid_dependencies_pass():
    _job(Frame(1), Frame(2, ("frame/1",)), Frame(3, ("frame/1", "frame/2"))).check_dependencies()
    # deps on other jobs' frames are not this job's business
    _job(Frame(1, ("distren://b/job/1/frame/1",))).check_dependencies()


def test_self_dependency_is_refused():
    with pytest.raises(JobFileError, match=r"frame/2 depends on itself; remove that <dep>"):
        _job(Frame(1), Frame(2, ("frame/2",))).check_dependencies()


def test_self_dependency_through_absolute_own_url_is_refused():
    jf = _job(Frame(1), Frame(2, ("distren://a/job/5/frame/2",)), name="distren://a/job/5")
    with pytest.raises(JobFileError, match="frame/2 depends on itself"):
        jf.check_dependencies()


def test_unknown_target_is_refused():
    with pytest.raises(JobFileError) as ei:
        _job(Frame(1), Frame(2, ("frame/9",))).check_dependencies()
    assert isinstance(ei.value, DistrenError)
    assert "frame/2 depends on frame/9, which this job does not have" in str(ei.value)


def test_two_cycle_is_named():
    with pytest.raises(JobFileError) as ei:
        _job(Frame(1, ("frame/2",)), Frame(2, ("frame/1",))).check_dependencies()
    assert "dependency cycle frame/1 -> frame/2 -> frame/1;" in str(ei.value)


def test_longer_cycle_is_named_without_its_tail():
    jf = _job(
        Frame(0, ("frame/1",)),  # a tail leading into the cycle
        Frame(1, ("frame/2",)),
        Frame(2, ("frame/3",)),
        Frame(3, ("frame/1",)),
        Frame(4),
    )
    with pytest.raises(JobFileError) as ei:
        jf.check_dependencies()
    assert "dependency cycle frame/1 -> frame/2 -> frame/3 -> frame/1;" in str(ei.value)
    assert "frame/0" not in str(ei.value)


def test_cycle_through_absolute_own_urls_is_found():
    jf = loads(_job_xml(
        '<frame name="distren://a/job/5/frame/1"><dep name="distren://a/job/5/frame/2"/></frame>'
        '<frame name="distren://a/job/5/frame/2"><dep name="distren://a/job/5/frame/1"/></frame>',
        job_attrs='type="povray" name="distren://a/job/5"',
    ))
    with pytest.raises(JobFileError, match="frame/1 -> frame/2 -> frame/1"):
        jf.check_dependencies()


@FAST
@given(st.data())
def test_cycle_detection_agrees_with_a_reference(data):
    n = data.draw(st.integers(1, 12))
    edges = data.draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=20))
    edges = [(a, b) for a, b in edges if a != b]
    graph = {i: sorted({b for a, b in edges if a == i}) for i in range(n)}
    jf = _job(*(Frame(i, tuple(f"frame/{d}" for d in graph[i])) for i in range(n)))

    # reference: a graph is acyclic iff repeatedly removing nodes without outgoing edges empties it
    remaining = {i: set(graph[i]) for i in range(n)}
    while True:
        sinks = [i for i, out in remaining.items() if not out]
        if not sinks:
            break
        for s in sinks:
            del remaining[s]
        for out in remaining.values():
            out.difference_update(sinks)
    acyclic = not remaining

    if acyclic:
        jf.check_dependencies()
        return
    with pytest.raises(JobFileError) as ei:
        jf.check_dependencies()
    msg = str(ei.value)
    path = msg.split("dependency cycle ", 1)[1].split(";", 1)[0].split(" -> ")
    cycle = [int(p.removeprefix("frame/")) for p in path]
    # the named cycle is a real one: closed, simple, and every step an actual dependency
    assert cycle[0] == cycle[-1] and len(set(cycle[:-1])) == len(cycle) - 1 >= 2
    for a, b in zip(cycle, cycle[1:]):
        assert b in graph[a]


N_CHAIN = 50_000


def test_long_chain_does_not_hit_recursion_limits():
    frames = [Frame(i, (f"frame/{i + 1}",) if i + 1 < N_CHAIN else ()) for i in range(N_CHAIN)]
    random.Random(0).shuffle(frames)
    _job(*frames).check_dependencies()


def test_long_cycle_is_found_and_named():
    frames = [Frame(i, (f"frame/{(i + 1) % N_CHAIN}",)) for i in range(N_CHAIN)]
    with pytest.raises(JobFileError) as ei:
        _job(*frames).check_dependencies()
    msg = str(ei.value)
    assert "dependency cycle frame/0 -> frame/1 -> frame/2 -> " in msg
    assert "frame/49998 -> frame/49999 -> frame/0;" in msg


def test_xml_tree_of_dumps_is_well_formed_and_ordered():
    jf = _job(Frame(3), Frame(1), Frame(2, ("frame/3", "frame/1")))
    root = ET.fromstring(dumps(jf))
    assert [f.get("name") for f in root.iter("frame")] == ["frame/3", "frame/1", "frame/2"]
    assert [d.get("name") for d in root.iter("dep")] == ["frame/3", "frame/1"]  # order kept


@settings(max_examples=200, deadline=None)
@given(frame_id=st.integers(0, 2**40), server=st.one_of(st.none(), st.sampled_from(["distren://b/", "distren://render-1.example.org/"])),
       settings_=st.dictionaries(st.sampled_from(["ini", "x", "quality"]), st.text(alphabet="abc.<&\"'", max_size=5), max_size=3))
def test_lease_xml_is_dumps_of_the_one_frame_job(frame_id, server, settings_):
    from dataclasses import replace as _replace

    jf = JobFile(type="povray", width=64, height=48, frames=(Frame(1), Frame(2)), settings=settings_,
                 name="distren://a/job/7", submitter="distren://a/user/ann")
    frame = Frame(frame_id, server=server)
    assert lease_xml(jf, frame) == dumps(jf.with_frames([frame]))
    tile = _replace(frame, settings={"region": "0,0,32,32", "output": "t.png"}, deps=("frame/1",))
    assert lease_xml(jf, tile) == dumps(jf.with_frames([tile]))
