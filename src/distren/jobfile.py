"""distrenjob.xml: what a job is, as it travels inside every bundle.

The format follows the seed's ``doc/distrenjob.xml.example``::

    <distren version="1">
      <job name="distren://a/job/36" submitter="distren://a/user/ann" type="povray">
        <resolution width="800" height="600"/>
        <povray ini="scene/anim.ini"/>            backend settings, an element named by the type
        <frames>
          <frame name="distren://a/job/36/frame/23"/>
          <frame name="distren://a/job/36/frame/22">
            <dep name="distren://a/job/36/frame/23"/>
          </frame>
          <frame name="distren://a/job/36/frame/25" server="distren://b/"/>   assigned
          <frame name="distren://a/job/36/frame/24" server="distren://b/">    finished
            <file name="anim24.png" size="1234" sha256="..."/>
          </frame>
        </frames>
      </job>
    </distren>

Before a job is submitted it has no name yet: ``job`` carries no ``name`` and frames are named
relative to the job (``frame/7``). The server makes every name absolute when it accepts the job.
Parsing always goes through defusedxml: a distrenjob.xml is untrusted input.
"""

from __future__ import annotations

import functools
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from . import names, urls
from .errors import InvalidURL, JobFileError
from .images import MAX_SIDE

FILENAME = "distrenjob.xml"
FORMAT_VERSION = "1"
MAX_FRAMES = 100_000
MAX_XML_BYTES = 16 * 1024 * 1024
_TYPE_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_RESERVED_TYPES = frozenset({"resolution", "frames", "dep", "file"})  # element names taken by the format


@dataclass(frozen=True)
class FileEntry:
    """A finished frame's output file. Its name is relative to the job (the seed: "the file's
    namespace is the job's URL")."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Frame:
    id: int
    deps: tuple[str, ...] = ()  # canonical: "frame/N" (this job) or an absolute frame URL
    server: str | None = None  # the server it is assigned to or was rendered by
    files: tuple[FileEntry, ...] = ()
    type: str | None = None  # a backend other than the job's (a stitch or movie frame)
    settings: dict[str, str] = field(default_factory=dict, compare=True)  # this frame's backend settings

    def backend(self, job_type: str) -> str:
        return self.type or job_type


@dataclass(frozen=True)
class JobFile:
    type: str
    width: int
    height: int
    frames: tuple[Frame, ...]
    settings: dict[str, str] = field(default_factory=dict)  # backend element's attributes
    name: str | None = None  # absolute job URL once submitted
    submitter: str | None = None  # absolute user URL once submitted

    @property
    def job_url(self) -> urls.JobURL | None:
        return urls.parse_job(self.name) if self.name else None

    def frame(self, frame_id: int) -> Frame:
        for f in self.frames:
            if f.id == frame_id:
                return f
        raise JobFileError(f"{FILENAME}: job has no frame {frame_id}")

    def with_frames(self, frames) -> JobFile:
        return replace(self, frames=tuple(frames))

    def dependency_targets(self, frame: Frame) -> list[urls.FrameURL | int]:
        """Each dep as a frame id of this job (int) or an absolute URL of another job's frame."""
        out: list[urls.FrameURL | int] = []
        own = self.job_url
        for dep in frame.deps:
            rel = urls.parse_relative_frame_id(dep)
            if rel is not None:
                out.append(rel)
                continue
            target = urls.parse_frame(dep)
            out.append(target.frame_id if own and target.job == own else target)
        return out

    def check_dependencies(self) -> None:
        """Refuse self-dependencies, deps on frames this job lacks, and cycles (naming the cycle)."""
        ids = {f.id for f in self.frames}
        graph: dict[int, list[int]] = {}
        for f in self.frames:
            local = []
            for target in self.dependency_targets(f):
                if isinstance(target, int):
                    if target == f.id:
                        raise JobFileError(f"{FILENAME}: frame/{f.id} depends on itself; remove that <dep>")
                    if target not in ids:
                        raise JobFileError(
                            f"{FILENAME}: frame/{f.id} depends on frame/{target}, which this job does not have"
                        )
                    local.append(target)
            graph[f.id] = local
        cycle = _find_cycle(graph)
        if cycle:
            path = " -> ".join(f"frame/{i}" for i in cycle)
            raise JobFileError(f"{FILENAME}: dependency cycle {path}; break it by removing one <dep>")

    def absolute(self, job: urls.JobURL, submitter: urls.UserURL) -> JobFile:
        """The job as its origin records it: named, with every frame reference absolute."""
        frames = tuple(replace(f, deps=tuple(_canonical_dep(d, job) for d in f.deps)) for f in self.frames)
        return replace(self, name=str(job), submitter=str(submitter), frames=frames)

    def to_xml(self) -> bytes:
        return dumps(self)


def _canonical_dep(ref: str, job: urls.JobURL | None) -> str:
    """In memory a dep on this job's own frame is ``frame/N``; any other is an absolute URL."""
    rel = urls.parse_relative_frame_id(ref)
    if rel is not None:
        return f"frame/{rel}"
    target = urls.parse_frame(ref)
    return f"frame/{target.frame_id}" if job is not None and target.job == job else str(target)


def _find_cycle(graph: dict[int, list[int]]) -> list[int] | None:
    """Iterative DFS (jobs can have 100k frames; recursion would overflow)."""
    WHITE, GREY, BLACK = 0, 1, 2
    color = dict.fromkeys(graph, WHITE)
    for root in graph:
        if color[root] != WHITE:
            continue
        stack: list[tuple[int, int]] = [(root, 0)]
        path: list[int] = []
        color[root] = GREY
        path.append(root)
        while stack:
            node, idx = stack[-1]
            children = graph[node]
            if idx < len(children):
                stack[-1] = (node, idx + 1)
                child = children[idx]
                if color[child] == GREY:
                    return path[path.index(child):] + [child]
                if color[child] == WHITE:
                    color[child] = GREY
                    path.append(child)
                    stack.append((child, 0))
            else:
                color[node] = BLACK
                path.pop()
                stack.pop()
    return None


# --- reading -------------------------------------------------------------------------------


def _int_attr(el: ET.Element, attr: str, where: str, lo: int, hi: int) -> int:
    raw = el.get(attr)
    if raw is None:
        raise JobFileError(f"{FILENAME}: {where} is missing the '{attr}' attribute")
    try:
        value = int(raw.strip())
    except ValueError:
        raise JobFileError(f"{FILENAME}: {where} {attr}={raw!r} is not an integer") from None
    if not lo <= value <= hi:
        raise JobFileError(f"{FILENAME}: {where} {attr}={value} is out of range ({lo}..{hi})")
    return value


def loads(data: bytes | str) -> JobFile:
    """Parse and validate a distrenjob.xml. Raises JobFileError naming the element at fault."""
    if isinstance(data, str):
        data = data.encode()
    if len(data) > MAX_XML_BYTES:
        raise JobFileError(f"{FILENAME} is larger than {MAX_XML_BYTES} bytes")
    try:
        root = SafeET.fromstring(data, forbid_dtd=True)
    except ET.ParseError as e:
        line, col = e.position
        # expat's text ends in its own ", line L, column C" with a 0-based column; drop it so the
        # message states the position once, 1-based.
        reason = re.sub(r":? line \d+, column \d+$", "", str(e))
        raise JobFileError(f"{FILENAME}: not well-formed XML at line {line}, column {col + 1}: {reason}") from None
    except DefusedXmlException as e:
        raise JobFileError(f"{FILENAME}: refused unsafe XML ({type(e).__name__}); remove DTDs and entities") from None
    except (LookupError, ValueError) as e:
        # <?xml encoding="..."?> naming an encoding that is unknown, not a text encoding, or one
        # expat cannot use (utf-32, idna, ...) makes the parser raise these instead of ParseError.
        raise JobFileError(f"{FILENAME}: cannot decode it ({e}); write it as UTF-8") from None

    if root.tag == "job":
        job = root
    elif root.tag == "distren":
        jobs = root.findall("job")
        if len(jobs) != 1:
            raise JobFileError(f"{FILENAME}: <distren> must hold exactly one <job>, found {len(jobs)}")
        job = jobs[0]
    else:
        raise JobFileError(f"{FILENAME}: root element is <{root.tag}>, expected <distren> or <job>")

    jtype = job.get("type")
    if not jtype or not _TYPE_RE.fullmatch(jtype):
        raise JobFileError(f"{FILENAME}: <job> needs a type attribute such as type=\"povray\" (got {jtype!r})")
    if jtype in _RESERVED_TYPES:
        # The backend's settings element is named by the type; these names are taken.
        raise JobFileError(f"{FILENAME}: <job> type={jtype!r} is reserved; use a backend name such as \"povray\"")

    name = job.get("name")
    job_url = None
    try:
        if name:
            job_url = urls.parse_job(name)
            name = str(job_url)
        submitter = job.get("submitter")
        if submitter:
            submitter = str(urls.parse_user(submitter))
    except InvalidURL as e:
        raise JobFileError(f"{FILENAME}: <job>: {e}") from None

    res = job.find("resolution")
    if res is None:
        raise JobFileError(f"{FILENAME}: <job> has no <resolution width=... height=.../>")
    width = _int_attr(res, "width", "<resolution>", 1, MAX_SIDE)
    height = _int_attr(res, "height", "<resolution>", 1, MAX_SIDE)

    backend = job.find(jtype)
    settings = dict(backend.attrib) if backend is not None else {}

    frames_el = job.find("frames")
    if frames_el is None:
        raise JobFileError(f"{FILENAME}: <job> has no <frames>")
    frame_els = frames_el.findall("frame")
    if not frame_els:
        raise JobFileError(f"{FILENAME}: <frames> is empty; a job needs at least one <frame>")
    if len(frame_els) > MAX_FRAMES:
        raise JobFileError(f"{FILENAME}: {len(frame_els)} frames; at most {MAX_FRAMES} per job")

    frames: list[Frame] = []
    seen: set[int] = set()
    for n, fel in enumerate(frame_els, 1):
        where = f"<frame> #{n}"
        fname = fel.get("name")
        if not fname:
            raise JobFileError(f"{FILENAME}: {where} has no name (use name=\"frame/ID\")")
        try:
            rel = urls.parse_relative_frame_id(fname)
            if rel is None:
                furl = urls.parse_frame(fname)
                if job_url is None or furl.job != job_url:
                    raise JobFileError(
                        f"{FILENAME}: {where} {fname!r} does not belong to job {name or '(unnamed)'}; "
                        "name frames of an unsubmitted job relatively, as 'frame/ID'"
                    )
                rel = furl.frame_id
            deps = []
            for dep in fel.findall("dep"):
                dname = dep.get("name")
                if not dname:
                    raise JobFileError(f"{FILENAME}: {where} has a <dep> without a name")
                deps.append(_canonical_dep(dname, job_url))
            server = fel.get("server")
            if server:
                server = str(urls.parse_server(server))
        except InvalidURL as e:
            raise JobFileError(f"{FILENAME}: {where}: {e}") from None
        if rel in seen:
            raise JobFileError(f"{FILENAME}: frame/{rel} is listed twice")
        seen.add(rel)
        files = []
        for fe in fel.findall("file"):
            fn = names.relative(fe.get("name", ""), f"{where} <file> name")
            sha = fe.get("sha256", "")
            if not _SHA_RE.fullmatch(sha):
                raise JobFileError(f"{FILENAME}: {where} <file name={fn!r}> needs a sha256 of 64 hex digits")
            files.append(FileEntry(fn, _int_attr(fe, "size", f"{where} <file>", 0, 2**62), sha))
        ftype = fel.get("type")
        if ftype is not None and (not _TYPE_RE.fullmatch(ftype) or ftype in _RESERVED_TYPES):
            raise JobFileError(f"{FILENAME}: {where} type={ftype!r} is not a backend name")
        fsettings = fel.find(ftype or jtype)
        frames.append(Frame(rel, tuple(deps), server, tuple(files), ftype if ftype != jtype else None,
                            dict(fsettings.attrib) if fsettings is not None else {}))

    return JobFile(
        type=jtype, width=width, height=height, frames=tuple(frames), settings=settings,
        name=name, submitter=submitter,
    )


# --- writing -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _lease_template(name: str, submitter: str | None, jtype: str, width: int, height: int,
                    settings: tuple[tuple[str, str], ...]) -> tuple[bytes, bytes]:
    """A job's one-frame document, split where its frame element stands."""
    jf = JobFile(type=jtype, width=width, height=height, frames=(Frame(0),), settings=dict(settings),
                 name=name, submitter=submitter)
    before, sep, after = dumps(jf).partition(f'<frame name="{name}/frame/0" />'.encode())
    assert sep, "dumps changed how it writes a frame"
    return before, after


def lease_xml(jf: JobFile, frame: Frame) -> bytes:
    """``dumps(jf.with_frames([frame]))``: the answer to every lease. A plain frame (no deps,
    files, type or settings: every frame of an ordinary animation) goes into a per-job template
    instead of through ElementTree, which took a fifth of a lease's time."""
    if frame.deps or frame.files or frame.type or frame.settings or not jf.name:
        return dumps(jf.with_frames([frame]))
    before, after = _lease_template(jf.name, jf.submitter, jf.type, jf.width, jf.height,
                                    tuple(sorted(jf.settings.items())))
    server = f' server="{frame.server}"' if frame.server else ""
    return before + f'<frame name="{jf.name}/frame/{frame.id}"{server} />'.encode() + after


def dumps(jf: JobFile) -> bytes:
    """Deterministic XML: the same JobFile always gives the same bytes."""
    root = ET.Element("distren", version=FORMAT_VERSION)
    attrs = {}
    if jf.name:
        attrs["name"] = jf.name
    if jf.submitter:
        attrs["submitter"] = jf.submitter
    attrs["type"] = jf.type
    job = ET.SubElement(root, "job", attrs)
    ET.SubElement(job, "resolution", width=str(jf.width), height=str(jf.height))
    if jf.settings:
        ET.SubElement(job, jf.type, dict(sorted(jf.settings.items())))
    frames = ET.SubElement(job, "frames")
    job_url = jf.job_url
    for f in jf.frames:
        fattrs = {"name": str(job_url.frame(f.id)) if job_url else f"frame/{f.id}"}
        if f.server:
            fattrs["server"] = f.server
        if f.type:
            fattrs["type"] = f.type
        fel = ET.SubElement(frames, "frame", fattrs)
        if f.settings:
            ET.SubElement(fel, f.backend(jf.type), dict(sorted(f.settings.items())))
        for d in f.deps:
            rel = urls.parse_relative_frame_id(d)
            dname = str(job_url.frame(rel)) if (rel is not None and job_url) else d
            ET.SubElement(fel, "dep", name=dname)
        for fe in f.files:
            ET.SubElement(fel, "file", name=fe.name, size=str(fe.size), sha256=fe.sha256)
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="UTF-8", xml_declaration=True) + b"\n"
