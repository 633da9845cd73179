"""Running job data's programs in an OS sandbox, within limits.

A POV-Ray scene is a program, and POV-Ray 3.7 on Unix ignores its own file I/O restrictions
(upstream issue #158): a scene can read and write anything the process can. ffmpeg reads URLs
(``file:``, ``http:``) wherever it is given a name, and an image decoder is a large attack surface
fed with whatever a peer uploaded. So every program that touches a job's data runs here: under
bubblewrap with nothing but the system's read-only /usr, POV-Ray's configuration, the few
read-only files it needs, and one writable working folder. No network, no other processes, no
home folder, a small empty /tmp.

Every run is also bounded (:class:`Limits`): memory and processes and file size by rlimits
applied inside the sandbox (cgroups are not dependable everywhere), wall time, printed output
and the number of files written by the watching side here. The output is streamed into the log,
which keeps only a bounded tail; it is never held whole in memory.

One concern, a little over 400 lines: the bubblewrap command, the limits and the watch that
enforces them and names the limit a run hit need each other's details.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import DistrenError, SandboxUnavailable

WORKDIR = "/work"
PRLIMIT = "/usr/bin/prlimit"
NICE = "/usr/bin/nice"
LOG_TAIL_BYTES = 1 << 20  # what a run leaves in its log at most
TEXT_TAIL_BYTES = 64 << 10  # what a run's Outcome carries for error messages
WATCH_INTERVAL = 0.25  # seconds between looks at the sandbox's memory, threads and files
PY_ROOT = "/opt/distren"
SANDBOX_PROCESSES = 2  # bubblewrap and its init process, which the watch counts too

GiB, MiB = 1 << 30, 1 << 20


@dataclass(frozen=True)
class Limits:
    """What one run may use. Each field has a ``distren serve`` option (see OPTIONS)."""

    memory: int = 4 * GiB  # address space of each process (RLIMIT_AS)
    processes: int = 256  # processes and threads (RLIMIT_NPROC; the kernel exempts root)
    wall: float = 3600.0  # seconds
    output: int = 64 * MiB  # bytes printed (stdout and stderr) before the run is stopped
    file_bytes: int = 1 * GiB  # size of any one file written (RLIMIT_FSIZE), and of all of them
    files: int = 1000  # files and folders the run may add to its working folder
    tmp: int = 64 * MiB  # size of the sandbox's /tmp (memory-backed)
    threads: int = 0  # render threads a program that can choose should use (0: its own choice)


# Which serve option raises each limit: every failure reason names it.
OPTIONS = {"memory": "--max-memory", "processes": "--max-processes", "wall": "--frame-timeout",
           "output": "--max-output", "file_bytes": "--max-file-bytes", "written": "--max-file-bytes",
           "files": "--max-files"}


def size_text(n: float) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", 1 << 10)):
        if n >= scale:
            v = n / scale
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{int(n)} bytes"


def parse_size(text: str, what: str) -> int:
    """``4G``, ``64M``, ``512k``, ``1000`` (bytes) or ``1.5GiB``: binary units."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.I)
    if not m:
        raise DistrenError(f"{what} {text!r}: use a size such as 4G, 64M, 512K or a number of bytes")
    value = int(float(m.group(1)) * (1 << (10 * " kmgt".index(m.group(2).lower() or " "))))
    if value < 1:
        raise DistrenError(f"{what} {text!r}: must be at least 1 byte")
    return value


@dataclass
class Outcome:
    returncode: int  # the command's exit status; 128+N when it was killed by signal N
    elapsed: float  # seconds
    output_bytes: int  # everything it printed, though the log keeps only a tail
    tail: str  # the last TEXT_TAIL_BYTES of what it printed
    peak_memory: int = 0  # the largest address space seen of any of its processes
    peak_threads: int = 0  # the most processes and threads seen at once
    limit: str | None = None  # the Limits field that stopped it, if one did
    reason: str | None = None  # says which limit, and the serve option that raises it

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.limit is None


def _reason(limit: str, limits: Limits) -> str:
    what = {
        "memory": f"used more than {size_text(limits.memory)} of memory",
        "processes": f"tried to run more than {limits.processes} processes or threads",
        "wall": f"took longer than {limits.wall:g} s",
        "output": f"printed more than {size_text(limits.output)} of output",
        "file_bytes": f"wrote a file larger than {size_text(limits.file_bytes)}",
        "written": f"wrote more than {size_text(limits.file_bytes)} of files",
        "files": f"wrote more than {limits.files} files",
    }[limit]
    return f"the render {what}; it was stopped (the server's {OPTIONS[limit]} raises the limit)"


@functools.cache
def bwrap() -> str:
    path = shutil.which("bwrap")
    if path is None:
        raise SandboxUnavailable(
            "bubblewrap (bwrap) is not installed; scenes are code and distren renders them only "
            "inside a sandbox. Install it with `sudo apt-get install bubblewrap` (or `make setup`)."
        )
    return path


def command(argv: list[str], workdir: Path | None, shared: dict[str, Path] | None = None,
            binds: dict[str, Path] | None = None, tmp_bytes: int = Limits.tmp, info_fd: int | None = None
            ) -> list[str]:
    """``argv`` wrapped to run in the sandbox with ``workdir`` as its only writable folder,
    mounted at /work and used as the current directory. ``shared`` maps paths below /work to
    files mounted read-only there (large scene files, which are not copied for every frame);
    ``binds`` maps absolute paths in the sandbox to host files or folders mounted read-only.
    Without a ``workdir``, /work is empty and the whole root is read-only: for a process that is
    handed open files and needs to write none (:mod:`distren.checkers`)."""
    cmd = [
        # Renders and checks are batch work: under load, the server itself (leases, renewals,
        # every HTTP answer) goes first.
        NICE, "-n", "10",
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
        "--size", str(tmp_bytes), "--tmpfs", "/tmp",
        # POV-Ray complains on every start when $HOME has no povray.conf; give it the system's.
        "--ro-bind-try", "/etc/povray/3.7/povray.conf", "/tmp/home/.povray/3.7/povray.conf",
        *(["--bind", str(Path(workdir).resolve()), WORKDIR] if workdir is not None else ["--dir", WORKDIR]),
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
    for inside, src in sorted((binds or {}).items()):
        cmd += ["--ro-bind", str(Path(src).resolve()), inside]
    if workdir is None:  # bubblewrap's root is a tmpfs the size of half the memory
        cmd += ["--remount-ro", "/"]
    if info_fd is not None:  # bubblewrap writes {"child-pid": N} there: the sandbox's first process
        cmd += ["--info-fd", str(info_fd)]
    return cmd + ["--"] + argv


def limited(argv: list[str], limits: Limits) -> list[str]:
    # prlimit inside the sandbox: the limits bind the command, not bubblewrap, and no preexec
    # function has to run in this multi-threaded server between fork and exec.
    return [PRLIMIT, f"--as={limits.memory}", f"--nproc={limits.processes}",
            f"--fsize={limits.file_bytes}", "--core=0", "--"] + argv


# --- Python modules of distren, sandboxed ----------------------------------------------------


@functools.cache
def _python_parts() -> tuple[str, tuple[tuple[str, str], ...]]:
    """The interpreter's path inside the sandbox, and (inside, host) pairs to mount read-only:
    the folders that hold distren and the packages it imports (Pillow, defusedxml, and bpy,
    Blender as a module, where it is installed)."""
    binds: dict[str, str] = {}
    exe = os.path.realpath(sys.executable)
    base = os.path.realpath(sys.base_prefix)
    if not exe.startswith("/usr/"):
        binds[f"{PY_ROOT}/python"] = base
        exe = f"{PY_ROOT}/python/{os.path.relpath(exe, base)}"
    dirs: list[str] = []
    for mod in ("distren", "PIL", "defusedxml", "bpy"):
        spec = importlib.util.find_spec(mod)
        if spec is None or not spec.submodule_search_locations:
            continue
        parent = os.path.dirname(os.path.realpath(list(spec.submodule_search_locations)[0]))
        if parent not in dirs and not parent.startswith("/usr/"):
            dirs.append(parent)
    for n, d in enumerate(dirs):
        binds[f"{PY_ROOT}/path{n}"] = d
    return exe, tuple(sorted(binds.items()))


def python_command(module: str, args: list[str]) -> tuple[list[str], dict[str, Path]]:
    """``python -m MODULE ARGS`` as an argv and the ``binds`` for :func:`run`. The working
    folder (job data) is never on sys.path (-P), nor are user site-packages or environment."""
    exe, binds = _python_parts()
    paths = [inside for inside, _ in binds if inside.startswith(f"{PY_ROOT}/path")]
    boot = (f"import sys, runpy; sys.path[:0] = {paths!r}; sys.argv[0] = {module!r}; "
            f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)")
    return [exe, "-P", "-s", "-E", "-B", "-c", boot, *args], {k: Path(v) for k, v in binds}


# --- running -----------------------------------------------------------------------------------


def run(argv: list[str], workdir: Path, limits: Limits, log: Path, *, shared: dict[str, Path] | None = None,
        binds: dict[str, Path] | None = None, on_start=None) -> Outcome:
    """Run ``argv`` in the sandbox (see :func:`command`) within ``limits``, appending what it
    prints to the file ``log``, of which this run keeps at most LOG_TAIL_BYTES. ``on_start``
    gets the process (its group is the sandbox: kill it with ``os.killpg``)."""
    workdir = Path(workdir)
    before = tree_size(workdir)
    info_r, info_w = os.pipe()
    cmd = command(limited(argv, limits), workdir, shared, binds, limits.tmp, info_w)
    started = time.monotonic()
    deadline = started + limits.wall
    hit: str | None = None
    peak = {"memory": 0, "threads": 0}
    total = 0
    tail = bytearray()
    with open(log, "ab") as logf:
        writer = _TailWriter(logf, LOG_TAIL_BYTES)
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, pass_fds=(info_w,))
        finally:
            os.close(info_w)
        killed = False
        try:
            if on_start:
                on_start(proc)
            fd = proc.stdout.fileno()
            poller = select.poll()
            poller.register(fd, select.POLLIN | select.POLLHUP)
            eof = False
            next_watch = started + WATCH_INTERVAL
            while hit is None:
                now = time.monotonic()
                if now >= deadline:
                    hit = "wall"
                    break
                if eof:
                    try:
                        proc.wait(timeout=min(deadline - now, WATCH_INTERVAL))
                        break
                    except subprocess.TimeoutExpired:
                        pass
                elif poller.poll(max(0.0, min(deadline - now, next_watch - now)) * 1000):
                    chunk = os.read(fd, 1 << 16)
                    if not chunk:
                        eof = True
                        continue
                    total += len(chunk)
                    writer.write(chunk)
                    tail += chunk
                    del tail[:-TEXT_TAIL_BYTES]
                    if total > limits.output:
                        hit = "output"
                if time.monotonic() >= next_watch:
                    next_watch = time.monotonic() + WATCH_INTERVAL
                    _watch(proc.pid, peak)
                    if peak["threads"] > limits.processes + SANDBOX_PROCESSES:
                        hit = "processes"  # the rlimit's backstop: the kernel exempts root from it
                    else:
                        hit = _over(workdir, before, limits)
        finally:
            if proc.poll() is None:
                _kill(proc)
                killed = True
            proc.wait()
            proc.stdout.close()
            writer.close()
            info = _read_all(info_r)
            if killed:
                _wait_gone(info)
    if hit is None:
        hit = _over(workdir, before, limits)
    out = Outcome(proc.returncode, time.monotonic() - started, total, tail.decode(errors="replace"),
                  peak["memory"], peak["threads"])
    if hit is None and proc.returncode != 0:
        hit = diagnose(out, limits)
    if hit:
        out.limit, out.reason = hit, _reason(hit, limits)
    return out


_OOM = re.compile(r"bad_alloc|out of memory|cannot allocate memory|MemoryError|memory exhausted|"
                  r"failed to map segment", re.I)  # the last: the dynamic loader, short of address space
_NO_THREAD = re.compile(r"thread_resource_error|Resource temporarily unavailable|can't start new thread|"
                        r"Cannot fork|fork: retry", re.I)


def diagnose(out: Outcome, limits: Limits) -> str | None:
    """Which limit, if any, made a failed run fail. An rlimit makes a call fail inside the
    program, which then says so in its own words: SIGXFSZ for file size, allocation errors for
    memory. (A run that exits 0 is diagnosed only when its caller knows it failed.)"""
    if out.returncode == 128 + signal.SIGXFSZ or "File too large" in out.tail:
        return "file_bytes"
    if _OOM.search(out.tail) or out.peak_memory >= 0.9 * limits.memory:
        return "memory"
    if _NO_THREAD.search(out.tail):
        # Both limits make thread creation fail with EAGAIN: say the one that was near.
        return "processes" if out.peak_threads >= 0.9 * limits.processes else "memory"
    return None


def explain(out: Outcome, limits: Limits) -> str | None:
    """The failure reason of a run its caller found failed, when a limit caused it."""
    if out.reason:
        return out.reason
    hit = diagnose(out, limits)
    return _reason(hit, limits) if hit else None


def _watch(pid: int, peak: dict) -> None:
    """Record the largest address space of any process in the sandbox, and its thread count."""
    todo, threads = [pid], 0
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            for tid in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{tid}/children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
        m = re.search(r"^VmPeak:\s+(\d+) kB", status, re.M)
        if m:
            peak["memory"] = max(peak["memory"], int(m.group(1)) * 1024)
        m = re.search(r"^Threads:\s+(\d+)", status, re.M)
        threads += int(m.group(1)) if m else 0
    peak["threads"] = max(peak["threads"], threads)


def tree_size(root: Path) -> tuple[int, int]:
    """Files, folders and links below ``root`` (links not followed), and their bytes."""
    n = size = 0
    stack = [str(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for e in it:
                    n += 1
                    try:
                        if e.is_dir(follow_symlinks=False):
                            stack.append(e.path)
                        else:
                            size += e.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        pass
        except (FileNotFoundError, NotADirectoryError):
            pass
    return n, size


def _over(workdir: Path, before: tuple[int, int], limits: Limits) -> str | None:
    """The file count or total size a run added to its folder, if over its limit. (The
    rlimit bounds each file; this bounds them all, so 1000 files of 1 GiB cannot fill a disk.)"""
    n, size = tree_size(workdir)
    if n - before[0] > limits.files:
        return "files"
    if size - before[1] > limits.file_bytes:
        return "written"
    return None


def _read_all(fd: int) -> bytes:
    try:
        chunks = []
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _wait_gone(info: bytes, timeout: float = 10.0) -> None:
    """After a kill: wait until the sandbox's first process, and so its whole PID namespace,
    is gone. Killing bubblewrap kills it (--die-with-parent), but not before bubblewrap is
    reaped here: without this wait a dying render could still write into a working folder
    that is being removed."""
    found = re.search(rb'"child-pid"\s*:\s*(\d+)', info)
    if not found:
        return  # bubblewrap died before it started anything
    stat = Path(f"/proc/{found.group(1).decode()}/stat")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            # A zombie's namespace is empty: the kernel kills and waits for the rest first.
            if stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return
        time.sleep(0.01)


def _kill(proc: subprocess.Popen) -> None:
    # bwrap leads its own process group; when it dies, --die-with-parent takes the sandbox's
    # first process with it, and with it the whole PID namespace.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class _TailWriter:
    """Appends to a log file, keeping at most ``keep`` bytes (plus a note) of this run: when the
    run's part reaches twice that, its last ``keep`` bytes are moved to its start. Memory use
    is bounded by ``keep``, however much is written."""

    def __init__(self, f, keep: int):
        self.f = f
        self.keep = keep
        self.start = f.seek(0, os.SEEK_END)
        self.size = 0
        self.dropped = 0

    def write(self, data: bytes) -> None:
        self.f.write(data)
        self.size += len(data)
        if self.size >= 2 * self.keep:
            self._compact()

    def _compact(self) -> None:
        self.f.flush()
        end = self.start + self.size
        with open(self.f.name, "rb") as r:
            r.seek(end - self.keep)
            last = r.read(self.keep)
        self.dropped += self.size - len(last)
        note = f"[distren: {self.dropped} bytes of output dropped; the last {len(last)} follow]\n".encode()
        os.truncate(self.f.name, self.start)
        self.f.write(note + last)
        self.f.flush()
        self.size = len(note) + len(last)

    def close(self) -> None:
        self.f.flush()


@functools.cache
def check() -> None:
    """Fail early, with advice, when bubblewrap cannot create a sandbox on this machine."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(command([PRLIMIT, "--as=1073741824", "--", "/usr/bin/true"], Path(tmp)),
                              capture_output=True, text=True)
    if proc.returncode != 0:
        raise SandboxUnavailable(
            f"bubblewrap cannot create a sandbox here: {proc.stderr.strip()}. Unprivileged user "
            "namespaces must be enabled (sysctl kernel.unprivileged_userns_clone=1), or run the "
            "server with `--slots 0` so that it only coordinates and renders nothing."
        )
