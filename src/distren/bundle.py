"""Tarballs: the seed's packaging for jobs (distrenjob.xml + scene) and for frames (their files).

Bundles come from other people's machines, so extraction is defensive: only regular files and
folders, no absolute or ``..`` names, bounded member count and size, and tarfile's ``data``
filter on top. A bad bundle is refused before anything is written where the caller asked.
"""

from __future__ import annotations

import io
import lzma
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import BundleError
from .fsutil import atomic_open

MAX_MEMBERS = 20_000
MAX_TOTAL_BYTES = 4 * 1024**3

# What reading a damaged (compressed) tarball raises besides TarError: gzip's BadGzipFile and
# bz2's "Invalid data stream" are OSErrors without an errno; zlib and lzma have their own.
_CORRUPT = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError)


def _is_corrupt(e: BaseException) -> bool:
    return isinstance(e, _CORRUPT) or (isinstance(e, OSError) and e.errno is None)


@dataclass(frozen=True)
class Limits:
    members: int = MAX_MEMBERS
    total_bytes: int = MAX_TOTAL_BYTES


def safe_name(name: str, where: str = "bundle") -> str:
    """Normalise a member name, refusing absolute paths and ``..``."""
    p = PurePosixPath(name)
    if p.is_absolute() or name.startswith("/") or "\\" in name:
        raise BundleError(f"{where}: member {name!r} has an absolute path; bundles hold relative paths only")
    parts = [x for x in p.parts if x not in ("", ".")]
    if ".." in parts:
        raise BundleError(f"{where}: member {name!r} climbs out of the bundle with '..'; refused")
    if not parts:
        raise BundleError(f"{where}: member {name!r} has an empty name")
    return "/".join(parts)


def write_tar(dest: Path, members: Iterable[tuple[str, Path | bytes]]) -> None:
    """Write a tarball atomically and deterministically (sorted names, zero times and owners), so
    that the same content always hashes the same."""
    items = sorted(((safe_name(n, str(dest)), src) for n, src in members), key=lambda m: m[0])
    with atomic_open(Path(dest)) as raw:
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, src in items:
                info = tarfile.TarInfo(name)
                info.mtime = 0
                info.mode = 0o644
                if isinstance(src, bytes):
                    info.size = len(src)
                    tar.addfile(info, io.BytesIO(src))
                else:
                    info.size = os.path.getsize(src)
                    with open(src, "rb") as f:
                        tar.addfile(info, f)


def tree_members(root: Path, prefix: str = "") -> list[tuple[str, Path]]:
    """Every regular file below ``root`` as (arcname, path). Symlinks are followed only when they
    stay inside ``root``: a scene folder may link its own files, not the rest of the machine."""
    root = Path(root).resolve()
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in sorted(filenames):
            p = Path(dirpath) / fn
            real = p.resolve()
            if not real.is_relative_to(root) or not real.is_file():
                continue
            rel = p.relative_to(root).as_posix()
            out.append((f"{prefix}{rel}", p))
    return out


def check_members(tar: tarfile.TarFile, where: str, limits: Limits) -> list[tarfile.TarInfo]:
    members = []
    total = 0
    files: set[str] = set()
    dirs: set[str] = set()
    for m in tar:
        if len(members) >= limits.members:
            raise BundleError(f"{where}: more than {limits.members} members; split the job or remove files")
        name = safe_name(m.name, where)
        if not (m.isfile() or m.isdir()):
            kind = "link" if (m.issym() or m.islnk()) else "special file"
            raise BundleError(f"{where}: member {m.name!r} is a {kind}; bundles hold regular files only")
        # A name given twice, or used both as a file and as a folder, would make what is read
        # (the first copy) differ from what is unpacked (the last), or fail half-way through.
        parents = ["/".join(name.split("/")[:i]) for i in range(1, name.count("/") + 1)]
        if name in files or (m.isfile() and name in dirs) or any(p in files for p in parents):
            raise BundleError(f"{where}: member {m.name!r} appears twice or as both a file and a folder; refused")
        (files if m.isfile() else dirs).add(name)
        dirs.update(parents)
        total += m.size
        if total > limits.total_bytes:
            raise BundleError(f"{where}: unpacks to more than {limits.total_bytes} bytes; refused")
        members.append(m)
    _check_end(tar, where)
    return members


def _check_end(tar: tarfile.TarFile, where: str) -> None:
    """tarfile takes a damaged header for the end of the archive, and stops reading a compressed
    stream before its checksum: either way a damaged bundle would unpack short or corrupt without
    a word. So read on to the end: only zero padding may follow the last member, and reaching the
    end makes gzip/bz2/xz verify their checksums."""
    while chunk := tar.fileobj.read(1 << 16):
        if chunk.count(0) != len(chunk):
            raise BundleError(f"{where}: data after the end of the archive (a damaged header?); refused")


def _open(path: Path, where: str) -> tarfile.TarFile:
    try:
        return tarfile.open(path, mode="r:*")
    except (*_CORRUPT, OSError) as e:  # a damaged gzip header raises EOFError here
        raise BundleError(f"{where}: not a readable tarball ({e})") from None


def list_members(path: Path, limits: Limits = Limits()) -> dict[str, int]:
    """Validate a bundle and return {name: size} of its regular files."""
    where = str(path)
    with _open(path, where) as tar:
        try:
            return {safe_name(m.name): m.size for m in check_members(tar, where, limits) if m.isfile()}
        except Exception as e:
            if not _is_corrupt(e):
                raise
            raise BundleError(f"{where}: corrupt tarball ({e})") from None


def read_member(path: Path, name: str, max_bytes: int = 16 * 1024 * 1024) -> bytes:
    where = str(path)
    with _open(path, where) as tar:
        try:
            for m in tar:
                if m.isfile() and safe_name(m.name, where) == name:
                    if m.size > max_bytes:
                        raise BundleError(f"{where}: {name} is larger than {max_bytes} bytes")
                    f = tar.extractfile(m)
                    assert f is not None
                    return f.read()
        except Exception as e:
            if not _is_corrupt(e):
                raise
            raise BundleError(f"{where}: corrupt tarball ({e})") from None
    raise BundleError(f"{where}: has no {name} at its root")


def extract(path: Path, dest: Path, limits: Limits = Limits()) -> list[str]:
    """Safely unpack ``path`` into the new folder ``dest``; return the regular files' names.

    Everything is unpacked into a temporary sibling first and renamed into place, so a refused
    bundle leaves ``dest`` absent."""
    where = str(path)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        with _open(path, where) as tar:
            try:
                members = check_members(tar, where, limits)
                tar.extractall(tmp, members=members, filter="data")
            except Exception as e:
                if not _is_corrupt(e):
                    raise
                raise BundleError(f"{where}: refused ({e})") from None
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sorted(safe_name(m.name) for m in members if m.isfile())
