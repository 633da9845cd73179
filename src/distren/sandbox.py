"""Running a scene in an OS sandbox.

A POV-Ray scene is a program, and POV-Ray 3.7 on Unix ignores its own file I/O restrictions
(upstream issue #158): a scene can read and write anything the process can. So every render
runs under bubblewrap with nothing but the system's read-only /usr, POV-Ray's configuration,
and one writable working folder. No network, no other processes, no home folder, an empty /tmp.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

from .errors import SandboxUnavailable

WORKDIR = "/work"


@functools.cache
def bwrap() -> str:
    path = shutil.which("bwrap")
    if path is None:
        raise SandboxUnavailable(
            "bubblewrap (bwrap) is not installed; scenes are code and distren renders them only "
            "inside a sandbox. Install it with `sudo apt-get install bubblewrap` (or `make setup`)."
        )
    return path


def command(argv: list[str], workdir: Path, shared: dict[str, Path] | None = None) -> list[str]:
    """``argv`` wrapped to run in the sandbox with ``workdir`` as its only writable folder,
    mounted at /work and used as the current directory. ``shared`` maps paths below /work to
    files mounted read-only there (large scene files, which are not copied for every frame)."""
    cmd = [
        bwrap(),
        "--ro-bind", "/usr", "/usr",
        "--symlink", "usr/bin", "/bin",
        "--symlink", "usr/sbin", "/sbin",
        "--symlink", "usr/lib", "/lib",
        "--ro-bind-try", "/lib64", "/lib64",
        "--ro-bind-try", "/etc/povray", "/etc/povray",
        "--ro-bind-try", "/etc/alternatives", "/etc/alternatives",
        "--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache",
        "--proc", "/proc",
        "--dev", "/dev",
        "--tmpfs", "/tmp",
        # POV-Ray complains on every start when $HOME has no povray.conf; give it the system's.
        "--ro-bind-try", "/etc/povray/3.7/povray.conf", "/tmp/home/.povray/3.7/povray.conf",
        "--bind", str(Path(workdir).resolve()), WORKDIR,
        "--chdir", WORKDIR,
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
        "--setenv", "HOME", "/tmp/home",
        "--setenv", "PATH", "/usr/bin:/bin",
        "--setenv", "LANG", "C.UTF-8",
    ]
    for rel, src in sorted((shared or {}).items()):
        cmd += ["--ro-bind", str(Path(src).resolve()), f"{WORKDIR}/{rel}"]
    return cmd + ["--"] + argv


@functools.cache
def check() -> None:
    """Fail early, with advice, when bubblewrap cannot create a sandbox on this machine."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(command(["/usr/bin/true"], Path(tmp)), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SandboxUnavailable(
            f"bubblewrap cannot create a sandbox here: {proc.stderr.strip()}. Unprivileged user "
            "namespaces must be enabled (sysctl kernel.unprivileged_userns_clone=1), or run the "
            "server with `--slots 0` so that it only coordinates and renders nothing."
        )
