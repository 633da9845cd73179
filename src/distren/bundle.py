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
from collections.abc import Iterable, Mapping
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
    #: If set, the only regular files allowed, each name with its largest size: a frame's
    #: upload may carry just the files its backend makes, and no other frame's.
    only: Mapping[str, int] | None = None


MAX_NAME_BYTES = 255  # a component, as on every common file system
MAX_PATH_BYTES = 1024  # a whole name: deep enough for any scene, short enough for any folder


def safe_name(name: str, where: str = "bundle") -> str:
    """Normalise a member name (``.`` and empty components dropped), refusing absolute paths,
    ``..``, control characters and names no file system takes. Returns "" for the bundle's
    root folder itself (``.``, as ``tar -C dir .`` writes it)."""
    shown = name if len(name) <= 120 else name[:120] + "..."
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise BundleError(f"{where}: member {shown!r} has a control character in its name; refused")
    p = PurePosixPath(name)
    if p.is_absolute() or name.startswith("/") or "\\" in name:
        raise BundleError(f"{where}: member {shown!r} has an absolute path; bundles hold relative paths only")
    parts = [x for x in p.parts if x not in ("", ".")]
    if ".." in parts:
        raise BundleError(f"{where}: member {shown!r} climbs out of the bundle with '..'; refused")
    if any(len(x.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES for x in parts):
        raise BundleError(f"{where}: member {shown!r} has a name component longer than {MAX_NAME_BYTES} bytes; refused")
    out = "/".join(parts)
    if len(out.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise BundleError(f"{where}: member {shown!r} has a name longer than {MAX_PATH_BYTES} bytes; refused")
    return out


def write_tar(dest: Path, members: Iterable[tuple[str, Path | bytes]]) -> None:
    """Write a tarball atomically and deterministically (sorted names, zero times and owners), so
    that the same content always hashes the same."""
    items = sorted(((safe_name(n, "frame tarball"), src) for n, src in members), key=lambda m: m[0])
    if any(not name for name, _ in items):
        raise BundleError("frame tarball: a member has an empty name")
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
    """Every member checked, from its header alone (before its data is read or unpacked):
    kind, name, count, sizes. The bundle's root folder (``.``) is left out."""
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
            raise BundleError(f"{where}: member {name!r} is a {kind}; bundles hold regular files only")
        if not name:
            if m.isfile():
                raise BundleError(f"{where}: member {m.name!r} is a file without a name; refused")
            continue  # the root folder itself: `tar -C dir .` writes it first
        # A name given twice, or used both as a file and as a folder, would make what is read
        # (the first copy) differ from what is unpacked (the last), or fail half-way through.
        parents = ["/".join(name.split("/")[:i]) for i in range(1, name.count("/") + 1)]
        if name in files or (m.isfile() and name in dirs) or any(p in files for p in parents):
            raise BundleError(f"{where}: member {name!r} appears twice or as both a file and a folder; refused")
        if m.isfile() and limits.only is not None:
            if name not in limits.only:
                raise BundleError(f"{where}: member {name!r} is not a file this frame makes "
                                  f"(it makes {', '.join(sorted(limits.only))}); refused")
            if m.size > limits.only[name]:
                raise BundleError(f"{where}: {name} is {m.size} bytes; at most {limits.only[name]} are possible "
                                  "for it; refused")
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


MAX_HEADER_BYTES = 1 << 20  # a PAX or GNU long-name header: names of 1024 bytes need far less


class _CheckedInfo(tarfile.TarInfo):
    """tarfile reads a PAX or GNU long-name header's data whole into memory, as long as its
    header says: a small gzip upload could make it allocate gigabytes. Refuse large ones."""

    def _proc_pax(self, tarfile_):
        _header_size(self)
        return super()._proc_pax(tarfile_)

    def _proc_gnulong(self, tarfile_):
        _header_size(self)
        return super()._proc_gnulong(tarfile_)


def _header_size(info: tarfile.TarInfo) -> None:
    if info.size > MAX_HEADER_BYTES:
        # SubsequentHeaderError: tarfile turns it into a ReadError wherever it occurs, rather
        # than taking it for the end of the archive.
        raise tarfile.SubsequentHeaderError(f"an extended header of {info.size} bytes (at most {MAX_HEADER_BYTES})")


def _open(path: Path, where: str) -> tarfile.TarFile:
    try:
        return tarfile.open(path, mode="r:*", tarinfo=_CheckedInfo)
    except (*_CORRUPT, OSError) as e:  # a damaged gzip header raises EOFError here
        raise BundleError(f"{where}: not a readable tarball ({' '.join(str(e).split())})") from None


def list_members(path: Path, limits: Limits = Limits(), where: str = "bundle") -> dict[str, int]:
    """Validate a bundle and return {name: size} of its regular files. ``where`` names the
    bundle in messages (never its path here: answers show no server-side path)."""
    with _open(path, where) as tar:
        try:
            return {safe_name(m.name): m.size for m in check_members(tar, where, limits) if m.isfile()}
        except Exception as e:
            if not _is_corrupt(e):
                raise
            raise BundleError(f"{where}: corrupt tarball ({e})") from None


def read_member(path: Path, name: str, max_bytes: int = 16 * 1024 * 1024, where: str = "bundle") -> bytes:
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


def extract(path: Path, dest: Path, limits: Limits = Limits(), where: str = "bundle") -> list[str]:
    """Safely unpack ``path`` into the new folder ``dest``; return the regular files' names.

    Every header is checked first (:func:`check_members`); then only regular files and folders
    are made, under their checked names, counting the bytes written against the limit as they
    are written. Everything is unpacked into a temporary sibling first and renamed into place,
    so a refused bundle leaves ``dest`` absent."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        with _open(path, where) as tar:
            try:
                members = check_members(tar, where, limits)
                names = _unpack(tar, members, tmp, limits, where)
            except Exception as e:
                if not _is_corrupt(e):
                    raise
                raise BundleError(f"{where}: refused ({e})") from None
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return names


def _unpack(tar: tarfile.TarFile, members: list[tarfile.TarInfo], root: Path, limits: Limits,
            where: str) -> list[str]:
    written = 0
    names = []
    for m in members:
        name = safe_name(m.name, where)
        target = root / name
        if m.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        src = tar.extractfile(m)
        assert src is not None
        with open(target, "xb") as out:
            while chunk := src.read(1 << 20):
                written += len(chunk)
                if written > limits.total_bytes:
                    raise BundleError(f"{where}: unpacks to more than {limits.total_bytes} bytes; refused")
                out.write(chunk)
        if m.mtime > 0:  # a result's frames carry their render time; bundles carry none
            os.utime(target, (m.mtime, m.mtime))
        names.append(name)
    return sorted(names)
