"""Atomic file writes."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distren import fsutil


def test_atomic_write_creates_file_and_parents(tmp_path):
    target = tmp_path / "a" / "b" / "c.bin"
    fsutil.atomic_write(target, b"hello")
    assert target.read_bytes() == b"hello"
    assert os.listdir(target.parent) == ["c.bin"]  # no temporary file left


def test_atomic_write_replaces_existing_file(tmp_path):
    target = tmp_path / "f"
    target.write_bytes(b"old content that is longer")
    fsutil.atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["f"]


def test_atomic_write_mode(tmp_path):
    fsutil.atomic_write(tmp_path / "default", b"x")
    fsutil.atomic_write(tmp_path / "private", b"x", mode=0o600)
    assert stat.S_IMODE((tmp_path / "default").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o600


def test_atomic_write_accepts_str_paths(tmp_path):
    fsutil.atomic_write(str(tmp_path / "s"), b"1")
    assert (tmp_path / "s").read_bytes() == b"1"


def test_old_file_is_kept_intact_until_the_new_one_is_complete(tmp_path):
    target = tmp_path / "f"
    target.write_bytes(b"old")
    with fsutil.atomic_open(target) as f:
        f.write(b"new, half")
        # while writing, readers still see the whole old file
        assert target.read_bytes() == b"old"
        f.write(b" and the rest")
    assert target.read_bytes() == b"new, half and the rest"


def test_failure_inside_atomic_open_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "f"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with fsutil.atomic_open(target) as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]


def test_failure_inside_atomic_open_creates_nothing(tmp_path):
    target = tmp_path / "new"
    with pytest.raises(KeyboardInterrupt):
        with fsutil.atomic_open(target) as f:
            f.write(b"partial")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_temp_file_is_hidden_and_in_the_same_folder(tmp_path):
    target = tmp_path / "f.txt"
    with fsutil.atomic_open(target) as f:
        f.write(b"x")
        names = os.listdir(tmp_path)
        assert len(names) == 1
        assert names[0].startswith(".f.txt.") and names[0].endswith(".tmp")
    assert os.listdir(tmp_path) == ["f.txt"]


def _chunks(data: bytes, sizes: list[int]):
    i = 0
    for s in sizes:
        yield data[i:i + s]
        i += s
    yield data[i:]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=5000), st.lists(st.integers(0, 700), max_size=10))
def test_atomic_write_stream_hash_and_size(tmp_path, data, sizes):
    target = tmp_path / "stream"
    digest, size = fsutil.atomic_write_stream(target, _chunks(data, sizes))
    assert (digest, size) == (hashlib.sha256(data).hexdigest(), len(data))
    assert target.read_bytes() == data
    assert fsutil.sha256_file(target) == digest


def test_atomic_write_stream_limit(tmp_path):
    target = tmp_path / "f"
    target.write_bytes(b"old")
    # exactly at the limit is fine
    assert fsutil.atomic_write_stream(target, [b"12", b"345"], limit=5)[1] == 5
    assert target.read_bytes() == b"12345"
    with pytest.raises(ValueError, match="more than 5 bytes"):
        fsutil.atomic_write_stream(target, [b"123", b"456"], limit=5)
    assert target.read_bytes() == b"12345"  # the previous content survives
    assert os.listdir(tmp_path) == ["f"]
    with pytest.raises(ValueError):
        fsutil.atomic_write_stream(tmp_path / "fresh", iter([b"x" * 10]), limit=9)
    assert not (tmp_path / "fresh").exists()
    assert os.listdir(tmp_path) == ["f"]


def test_atomic_write_stream_generator_failure_leaves_nothing(tmp_path):
    def chunks():
        yield b"abc"
        raise OSError("connection reset")

    with pytest.raises(OSError, match="connection reset"):
        fsutil.atomic_write_stream(tmp_path / "dl", chunks())
    assert os.listdir(tmp_path) == []


def test_sha256_file_large(tmp_path):
    data = os.urandom(3 * (1 << 20) + 17)  # crosses the 1 MiB read size
    p = tmp_path / "big"
    p.write_bytes(data)
    assert fsutil.sha256_file(p) == hashlib.sha256(data).hexdigest()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert fsutil.sha256_file(empty) == hashlib.sha256(b"").hexdigest()


def test_fsync_dir(tmp_path):
    fsutil.fsync_dir(tmp_path)
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        fsutil.fsync_dir(tmp_path / "f")


def test_stale_temps_of_cut_writes_are_removed_and_nothing_else(tmp_path):
    from distren.fsutil import remove_stale_temps

    keep = [tmp_path / "1" / "frames" / "0003.tar", tmp_path / "1" / "bundle.tar", tmp_path / "x.tmp",
            tmp_path / "1" / ".hidden", tmp_path / "1" / ".a.b.tmp"]
    for p in keep:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"k")
    stale = tmp_path / "1" / "frames" / ".0004.tar.ab_cd123.tmp"  # as atomic_open names it
    stale.write_bytes(b"half")  # what a SIGKILL inside atomic_open leaves
    assert remove_stale_temps(tmp_path) == [stale]
    assert not stale.exists() and all(p.read_bytes() == b"k" for p in keep)
