"""Bundles: deterministic tar writing and defensive reading/extraction."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import string
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distren import bundle
from distren.bundle import BundleError, Limits
from distren.errors import DistrenError

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# --- helpers -----------------------------------------------------------------------------------


def make_tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w") -> Path:
    """Write a tarball exactly as given (tarfile itself, not the code under test)."""
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tar.addfile(m)
            else:
                name, data = m
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def special(name: str, type_: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = linkname
    if type_ in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3  # /dev/null
    return info


def directory(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info


def snapshot(root: Path) -> set[str]:
    """Every path below root (hidden ones included), relative."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            out.add(os.path.relpath(os.path.join(dirpath, n), root))
    return out


def files_below(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture
def box(tmp_path):
    """tmp_path/in holds the bundle, tmp_path/out/dest is where it unpacks."""
    (tmp_path / "in").mkdir()
    return tmp_path


def assert_refused(box: Path, tarpath: Path, needle: str, limits: Limits = Limits()) -> str:
    before = snapshot(box)
    dest = box / "out" / "dest"
    with pytest.raises(BundleError) as ei:
        bundle.extract(tarpath, dest, limits)
    assert isinstance(ei.value, DistrenError)
    msg = str(ei.value)
    assert needle in msg
    assert msg.startswith("bundle: ")  # says which bundle, not where the server keeps it
    assert str(box) not in msg
    assert not dest.exists()
    assert os.listdir(box / "out") == []  # no temporary folder left behind either
    assert snapshot(box) - before == {"out"}  # nothing written anywhere else
    # listing validates the same way
    with pytest.raises(BundleError):
        bundle.list_members(tarpath, limits)
    return msg


# --- writing -----------------------------------------------------------------------------------


def test_write_tar_is_deterministic(tmp_path):
    src = tmp_path / "scene.pov"
    src.write_bytes(b"sphere{0,1}")
    a, b = tmp_path / "a.tar", tmp_path / "b.tar"
    bundle.write_tar(a, [("scene/scene.pov", src), ("distrenjob.xml", b"<x/>"), ("scene/z.inc", b"z")])
    os.utime(src, (1_000_000, 1_000_000))  # source mtimes do not matter
    bundle.write_tar(b, [("scene/z.inc", b"z"), ("./distrenjob.xml", b"<x/>"), ("scene/scene.pov", b"sphere{0,1}")])
    assert a.read_bytes() == b.read_bytes()
    with tarfile.open(a) as tar:
        infos = tar.getmembers()
    assert [m.name for m in infos] == ["distrenjob.xml", "scene/scene.pov", "scene/z.inc"]  # sorted
    for m in infos:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644)
        assert m.isfile()


@FAST
@given(
    st.dictionaries(
        st.lists(st.text(string.ascii_letters + string.digits + "_-", min_size=1, max_size=8), min_size=1, max_size=3)
        .map("/".join),
        st.binary(max_size=300),
        min_size=1, max_size=6,
    ).filter(
        # a name may not be both a file and a folder
        lambda d: not any(o.startswith(n + "/") for n in d for o in d)
    ),
    st.randoms(use_true_random=False),
)
def test_write_list_read_extract_round_trip(tmp_path_factory, content, rnd):
    tmp = tmp_path_factory.mktemp("rt")
    items = list(content.items())
    rnd.shuffle(items)
    path = tmp / "b.tar"
    bundle.write_tar(path, items)
    assert bundle.list_members(path) == {n: len(d) for n, d in content.items()}
    for n, d in content.items():
        assert bundle.read_member(path, n) == d
    names = bundle.extract(path, tmp / "dest")
    assert names == sorted(content)
    assert files_below(tmp / "dest") == content
    # writing again in another order gives the same bytes
    again = tmp / "again.tar"
    bundle.write_tar(again, sorted(items))
    assert again.read_bytes() == path.read_bytes()


@pytest.mark.parametrize(
    "name, needle",
    [
        ("../evil", "climbs out of the bundle"),
        ("a/../../evil", "climbs out of the bundle"),
        ("/abs", "absolute path"),
        ("a\\b", "absolute path"),
        ("", "empty name"),
        ("./", "empty name"),
    ],
)
def test_write_tar_refuses_unsafe_names_and_writes_nothing(tmp_path, name, needle):
    dest = tmp_path / "b.tar"
    with pytest.raises(BundleError, match=needle):
        bundle.write_tar(dest, [("ok", b"1"), (name, b"2")])
    assert os.listdir(tmp_path) == []


def test_a_tar_of_a_folder_made_with_dot_unpacks(box):
    """`tar -cf b.tar -C dir .` writes the folder itself as `.`, then `./NAME`: the root is
    dropped and the names normalised, as docs/protocol.md says."""
    src = box / "src"
    (src / "scene" / "inc").mkdir(parents=True)
    (src / "distrenjob.xml").write_text("<x/>")
    (src / "scene" / "inc" / "a.inc").write_text("#declare A = 1;")
    path = box / "in" / "b.tar"
    subprocess.run(["tar", "-cf", str(path), "-C", str(src), "."], check=True)
    assert bundle.list_members(path) == {"distrenjob.xml": 4, "scene/inc/a.inc": 15}
    names = bundle.extract(path, box / "out" / "dest")
    assert names == ["distrenjob.xml", "scene/inc/a.inc"]
    assert files_below(box / "out" / "dest") == {"distrenjob.xml": b"<x/>", "scene/inc/a.inc": b"#declare A = 1;"}
    assert bundle.read_member(path, "distrenjob.xml") == b"<x/>"


def test_a_vast_extended_header_is_refused_without_reading_it(box):
    """A PAX header claiming 1.6 GB, gzip-compressed to about 1.5 MiB: tarfile would read it whole
    into memory; it is refused from its size."""
    import gzip
    import resource

    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = 1_600_000_000
    block = gzip.compress(b"\0" * (16 << 20), 9)
    path = box / "in" / "b.tgz"
    path.write_bytes(gzip.compress(info.tobuf(tarfile.USTAR_FORMAT), 9) + block * 96)
    assert path.stat().st_size < 2 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    msg = assert_refused(box, path, "extended header of 1600000000 bytes")
    assert "bundle: " in msg
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 200_000, f"the process grew by {grown_kib} KiB"


def test_write_tar_replaces_atomically(tmp_path):
    dest = tmp_path / "b.tar"
    bundle.write_tar(dest, [("a", b"1")])
    with pytest.raises(FileNotFoundError):
        bundle.write_tar(dest, [("a", b"2"), ("b", tmp_path / "missing")])
    assert bundle.read_member(dest, "a") == b"1"  # the old bundle is intact
    assert os.listdir(tmp_path) == ["b.tar"]  # no temporary file left


@pytest.mark.parametrize(
    "name, expected",
    [("a", "a"), ("./a//b/", "a/b"), ("a/./b", "a/b"), ("scene/x.pov", "scene/x.pov")],
)
def test_safe_name_normalises(name, expected):
    assert bundle.safe_name(name) == expected


def test_safe_name_message_names_member_and_place():
    with pytest.raises(BundleError) as ei:
        bundle.safe_name("../x", "job.tar")
    assert str(ei.value) == "job.tar: member '../x' climbs out of the bundle with '..'; refused"


# --- tree_members ------------------------------------------------------------------------------


def test_tree_members_follows_only_inside_links(tmp_path):
    root = tmp_path / "scene"
    (root / "inc").mkdir(parents=True)
    (root / "scene.pov").write_text("x")
    (root / "inc" / "a.inc").write_text("a")
    (tmp_path / "secret").write_text("s")
    (root / "inside-link.inc").symlink_to(root / "inc" / "a.inc")
    (root / "outside-link").symlink_to(tmp_path / "secret")
    (root / "dangling").symlink_to(root / "nowhere")
    (root / "linkdir").symlink_to(tmp_path)  # a link to a folder outside is not walked
    members = bundle.tree_members(root, prefix="scene/")
    assert sorted(n for n, _ in members) == ["scene/inc/a.inc", "scene/inside-link.inc", "scene/scene.pov"]
    out = tmp_path / "b.tar"
    bundle.write_tar(out, members)
    assert bundle.read_member(out, "scene/inside-link.inc") == b"a"


# --- unsafe members are refused ----------------------------------------------------------------


@pytest.mark.parametrize(
    "member, needle",
    [
        (("../evil", b"x"), "member '../evil' climbs out of the bundle"),
        (("../../evil", b"x"), "member '../../evil' climbs out"),
        (("a/../../evil", b"x"), "climbs out"),
        (("/abs", b"x"), "member '/abs' has an absolute path"),
        (("/tmp/evil", b"x"), "absolute path"),
        (special("link", tarfile.SYMTYPE, "/etc/passwd"), "member 'link' is a link"),
        (special("link", tarfile.SYMTYPE, "ok"), "member 'link' is a link"),  # even pointing inside
        (special("hard", tarfile.LNKTYPE, "ok"), "member 'hard' is a link"),
        (special("fifo", tarfile.FIFOTYPE), "member 'fifo' is a special file"),
        (special("null", tarfile.CHRTYPE), "member 'null' is a special file"),
        (special("disk", tarfile.BLKTYPE), "member 'disk' is a special file"),
        (("", b"x"), "file without a name"),
        (("./", b"x"), "file without a name"),
        (("a" * 256, b"x"), "longer than 255 bytes"),
        (("a/" * 600 + "x", b"x"), "longer than 1024 bytes"),
        (("\u00e9\x00b", b"x"), "control character"),  # non-ASCII: a PAX path header, NUL and all
        (("a\nb", b"x"), "control character"),
    ],
)
def test_unsafe_members_are_refused_and_nothing_is_written(box, member, needle):
    path = make_tar(box / "in" / "b.tar", [("ok", b"fine"), member, ("zz", b"after")])
    assert_refused(box, path, needle)
    assert not (box / "evil").exists() and not (box / "out" / "evil").exists()


def test_symlink_then_file_through_it_is_refused(box):
    # the classic: a link to outside, then a file written "into" the link
    path = make_tar(box / "in" / "b.tar", [special("d", tarfile.SYMTYPE, str(box)), ("d/evil", b"x")])
    assert_refused(box, path, "is a link")
    assert not (box / "evil").exists()


@pytest.mark.parametrize(
    "members, needle",
    [
        ([("a", b"1"), ("a", b"2")], "member 'a' appears twice"),
        ([("a", b"1"), ("./a", b"2")], "member 'a' appears twice"),
        ([("a", b"1"), ("a/b", b"2")], "member 'a/b' appears twice or as both a file and a folder"),
        ([("a/b", b"1"), ("a", b"2")], "member 'a' appears twice or as both a file and a folder"),
        ([("a", b"1"), directory("a")], "member 'a' appears twice"),
    ],
)
def test_duplicate_and_conflicting_members_are_refused(box, members, needle):
    path = make_tar(box / "in" / "b.tar", members)
    assert_refused(box, path, needle)


def test_repeated_directories_are_fine(box):
    path = make_tar(box / "in" / "b.tar", [directory("d"), ("d/x", b"1"), directory("d"), directory("d/e")])
    assert bundle.extract(path, box / "out" / "dest") == ["d/x"]
    assert (box / "out" / "dest" / "d" / "e").is_dir()
    assert bundle.list_members(path) == {"d/x": 1}


def test_too_many_members(box):
    path = make_tar(box / "in" / "b.tar", [("a", b""), ("b", b""), ("c", b""), ("d", b"")])
    assert_refused(box, path, "more than 3 members", Limits(members=3))
    # exactly at the limit is fine
    ok = make_tar(box / "in" / "ok.tar", [("a", b""), ("b", b""), ("c", b"")])
    assert bundle.extract(ok, box / "out" / "dest", Limits(members=3)) == ["a", "b", "c"]


def test_too_large(box):
    path = make_tar(box / "in" / "b.tar", [("a", b"x" * 600), ("b", b"y" * 500)])
    assert_refused(box, path, "unpacks to more than 1000 bytes", Limits(total_bytes=1000))
    assert bundle.list_members(path, Limits(total_bytes=1100)) == {"a": 600, "b": 500}
    assert bundle.extract(path, box / "out" / "dest", Limits(total_bytes=1100)) == ["a", "b"]


def test_size_limit_uses_declared_sizes_not_compressed_size(box):
    # 2 MB of zeros compresses to almost nothing; the limit is on what it unpacks to
    path = make_tar(box / "in" / "b.tgz", [("zeros", bytes(2_000_000))], mode="w:gz")
    assert path.stat().st_size < 50_000
    assert_refused(box, path, "unpacks to more than 1000000 bytes", Limits(total_bytes=1_000_000))


# --- unreadable and damaged tarballs -----------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"not a tarball at all" * 50, b"\x1f\x8b" + b"\x00" * 100])
def test_not_a_tarball(box, data):
    path = box / "in" / "b.tar"
    path.write_bytes(data)
    assert_refused(box, path, "not a readable tarball")
    with pytest.raises(BundleError, match="not a readable tarball"):
        bundle.read_member(path, "x")


def test_missing_file_is_a_bundle_error(box):
    with pytest.raises(BundleError, match="not a readable tarball"):
        bundle.extract(box / "in" / "missing.tar", box / "out" / "dest")
    assert not (box / "out" / "dest").exists()


@pytest.mark.parametrize("mode", ["w:gz", "w:bz2", "w:xz"])
def test_compressed_bundles_are_read(box, mode):
    path = make_tar(box / "in" / "b.tar.x", [("a", b"A" * 1000), directory("d"), ("d/b", b"B")], mode=mode)
    assert bundle.list_members(path) == {"a": 1000, "d/b": 1}
    assert bundle.read_member(path, "d/b") == b"B"
    assert bundle.extract(path, box / "out" / "dest") == ["a", "d/b"]
    assert files_below(box / "out" / "dest") == {"a": b"A" * 1000, "d/b": b"B"}


CONTENT = {f"f{i}": b"hello world %d " % i * 3000 for i in range(4)}


def _compressible_tgz(path: Path) -> bytes:
    make_tar(path, list(CONTENT.items()), mode="w:gz")
    return path.read_bytes()


def test_truncated_compressed_bundle_is_refused(box):
    path = box / "in" / "b.tgz"
    data = _compressible_tgz(path)
    path.write_bytes(data[: len(data) // 2])
    assert_refused(box, path, "bundle: ")


def test_corrupt_gzip_crc_is_a_bundle_error(box):
    # tarfile stops before the gzip trailer; the bundle is read to its end so the CRC is checked
    path = box / "in" / "b.tgz"
    data = bytearray(_compressible_tgz(path))
    data[-6] ^= 0xFF  # the CRC32 in the gzip trailer
    path.write_bytes(bytes(data))
    assert_refused(box, path, "CRC check failed")


def test_damaged_compressed_data_is_not_unpacked_short(box):
    path = box / "in" / "b.tgz"
    data = bytearray(_compressible_tgz(path))
    data[100] ^= 0xFF  # inside the deflate stream: the archive would otherwise end after f0
    path.write_bytes(bytes(data))
    assert_refused(box, path, "bundle: ")


def test_damaged_header_in_plain_tar_is_refused(box):
    path = make_tar(box / "in" / "b.tar", list(CONTENT.items()))
    data = bytearray(path.read_bytes())
    with tarfile.open(path) as tar:
        second = tar.getmembers()[1].offset
    data[second + 10] ^= 0xFF  # breaks the header checksum: tarfile alone would stop at f0
    path.write_bytes(bytes(data))
    assert_refused(box, path, "data after the end of the archive")


def test_trailing_garbage_is_refused(box):
    path = make_tar(box / "in" / "b.tar", list(CONTENT.items()))
    with open(path, "ab") as f:
        f.write(b"garbage")
    assert_refused(box, path, "data after the end of the archive")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_damaged_bundles_raise_only_bundle_error(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("dmg")
    path = tmp / "b.tgz"
    good = bytearray(_compressible_tgz(path))
    for _ in range(data.draw(st.integers(1, 3))):
        good[data.draw(st.integers(0, len(good) - 1))] ^= data.draw(st.integers(1, 255))
    path.write_bytes(bytes(good))
    dest = tmp / "out" / "dest"
    try:
        bundle.list_members(path)
        bundle.read_member(path, "f3")
    except BundleError:
        pass
    try:
        names = bundle.extract(path, dest)
    except BundleError:
        assert not dest.exists()
        assert os.listdir(tmp / "out") == []
    else:
        # only damage the checksums cannot see (gzip header fields) may pass, and changes nothing
        assert names == sorted(CONTENT)
        assert files_below(dest) == CONTENT


# --- read_member -------------------------------------------------------------------------------


def test_read_member(box):
    path = make_tar(box / "in" / "b.tar", [directory("scene"), ("scene/x.pov", b"pov"), ("./distrenjob.xml", b"<x/>")])
    assert bundle.read_member(path, "distrenjob.xml") == b"<x/>"
    assert bundle.read_member(path, "scene/x.pov") == b"pov"
    with pytest.raises(BundleError, match=r"has no missing\.xml at its root"):
        bundle.read_member(path, "missing.xml")
    with pytest.raises(BundleError, match="has no scene at its root"):
        bundle.read_member(path, "scene")  # a folder is not a member to read
    with pytest.raises(BundleError, match=r"scene/x\.pov is larger than 2 bytes"):
        bundle.read_member(path, "scene/x.pov", max_bytes=2)


def test_read_member_refuses_unsafe_names_on_the_way(box):
    path = make_tar(box / "in" / "b.tar", [("../distrenjob.xml", b"evil"), ("distrenjob.xml", b"ok")])
    with pytest.raises(BundleError, match="climbs out"):
        bundle.read_member(path, "distrenjob.xml")


def test_extract_content_and_modes(box):
    info = tarfile.TarInfo("run.sh")
    payload = b"#!/bin/sh\n"
    info.size = len(payload)
    info.mode = 0o4777  # setuid, world-writable: the data filter tames it
    path = box / "in" / "b.tar"
    with tarfile.open(path, "w") as tar:
        tar.addfile(info, io.BytesIO(payload))
    dest = box / "out" / "dest"
    assert bundle.extract(path, dest) == ["run.sh"]
    mode = (dest / "run.sh").stat().st_mode
    assert not mode & 0o4000 and not mode & 0o002
    assert hashlib.sha256((dest / "run.sh").read_bytes()).digest() == hashlib.sha256(payload).digest()
