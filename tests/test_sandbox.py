"""sandbox.run: every limit, when hit, stops the run with a reason naming the limit and the serve
option that raises it; the log keeps a bounded tail; nothing outside the working folder is
visible, and there is no network. Real bubblewrap, real POV-Ray."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from distren import sandbox
from distren.errors import DistrenError

GiB, MiB = 1 << 30, 1 << 20
SMALL = sandbox.Limits(memory=1 * GiB, processes=64, wall=20, output=4 * MiB, file_bytes=1 * MiB, files=50)


def run(tmp_path: Path, argv: list[str], limits: sandbox.Limits = SMALL, **kw) -> sandbox.Outcome:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return sandbox.run(argv, work, limits, tmp_path / "log", **kw)


def sh(tmp_path: Path, script: str, limits: sandbox.Limits = SMALL) -> sandbox.Outcome:
    return run(tmp_path, ["/bin/sh", "-c", script], limits)


def test_a_plain_run_succeeds_and_is_logged(tmp_path):
    out = sh(tmp_path, "echo hello; echo oops >&2; echo made > made.txt")
    assert out.ok and out.limit is None and out.reason is None
    assert out.tail == "hello\noops\n"
    assert (tmp_path / "log").read_text() == "hello\noops\n"
    assert (tmp_path / "work" / "made.txt").read_text() == "made\n"


def test_unbounded_allocation_is_stopped_naming_memory(tmp_path):
    """6 GiB of pointers in one POV-Ray array, as the issue's scene did."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "hog.pov").write_text("#declare A = array[800000000];\nsphere { 0, 1 pigment { rgb 1 } }\n")
    started = time.monotonic()
    out = run(tmp_path, ["/usr/bin/povray", "hog.pov", "+W32", "+H24", "-D"])
    assert out.limit == "memory", out
    assert "more than 1 GiB of memory" in out.reason and "--max-memory" in out.reason
    assert time.monotonic() - started < 10


def test_growing_allocation_is_stopped_naming_memory(tmp_path):
    """A scene that grows a union object by object fails without saying why; the watch sees
    its address space reach the limit."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "grow.pov").write_text(
        "#declare N = 0;\n#declare U = union { #while (N < 100000000) sphere { <N, 0, 0>, 1 } "
        "#declare N = N + 1; #end }\nobject { U pigment { rgb 1 } }\ncamera { location -5*z look_at 0 }\n")
    out = run(tmp_path, ["/usr/bin/povray", "grow.pov", "+W32", "+H24", "-D"])
    assert out.limit == "memory", out
    assert "--max-memory" in out.reason


def test_endless_output_is_stopped_and_the_log_keeps_a_bounded_tail(tmp_path):
    out = sh(tmp_path, "yes 'all work and no play'")
    assert out.limit == "output"
    assert "printed more than 4 MiB of output" in out.reason and "--max-output" in out.reason
    assert out.output_bytes > 4 * MiB
    size = (tmp_path / "log").stat().st_size
    assert size <= 2 * sandbox.LOG_TAIL_BYTES + 200, size
    assert len(out.tail) <= sandbox.TEXT_TAIL_BYTES


def test_output_below_the_limit_is_kept_as_its_last_part(tmp_path):
    (tmp_path / "log").write_bytes(b"earlier attempt\n")
    # 3 MiB of numbered lines: more than the log keeps, less than the output limit.
    out = sh(tmp_path, "seq 1 400000")
    assert out.ok, out
    text = (tmp_path / "log").read_text()
    assert text.startswith("earlier attempt\n[distren: ")  # the earlier run is untouched
    assert "bytes of output dropped" in text
    assert text.endswith("399999\n400000\n")
    assert len(text) <= 2 * sandbox.LOG_TAIL_BYTES + 200
    assert out.output_bytes == sum(len(f"{i}\n") for i in range(1, 400001))


def test_wall_time_is_enforced_on_the_whole_sandbox(tmp_path):
    started = time.monotonic()
    out = sh(tmp_path, "sleep 300 & sleep 300; echo never", sandbox.Limits(wall=1.0))
    assert out.limit == "wall"
    assert "took longer than 1 s" in out.reason and "--frame-timeout" in out.reason
    assert time.monotonic() - started < 5


def _sandboxed(marker: str) -> list[int]:
    """Processes on this machine whose command line holds ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                found.append(int(entry))
        except OSError:
            pass
    return found


@pytest.mark.parametrize("attempt", range(5))
def test_nothing_of_a_stopped_sandbox_outlives_its_run(tmp_path, attempt):
    """A run that is stopped returns only once every process in the sandbox is gone: a dying
    render must not write into a working folder its server is already removing."""
    marker = f"987.{os.getpid()}{attempt}"
    out = sh(tmp_path, f"sleep {marker} & sleep {marker} & i=0; while :; do : > f$i; i=$((i+1)); done",
             sandbox.Limits(wall=0.5))
    assert out.limit in ("wall", "files")
    assert _sandboxed(marker) == []


def test_wall_time_holds_when_the_program_closes_its_output(tmp_path):
    out = sh(tmp_path, "exec >/dev/null 2>&1; sleep 300", sandbox.Limits(wall=1.0))
    assert out.limit == "wall"


def test_a_huge_file_fails_naming_file_size(tmp_path):
    out = sh(tmp_path, "head -c 5000000 /dev/zero > big.bin")
    assert out.limit == "file_bytes"
    assert "wrote a file larger than 1 MiB" in out.reason and "--max-file-bytes" in out.reason
    assert (tmp_path / "work" / "big.bin").stat().st_size <= 1 * MiB


def test_many_files_below_the_size_limit_fail_naming_their_total(tmp_path):
    out = sh(tmp_path, "for i in 1 2 3 4 5 6 7 8; do head -c 500000 /dev/zero > f$i; done; sleep 1")
    assert out.limit == "written"
    assert "wrote more than 1 MiB of files" in out.reason and "--max-file-bytes" in out.reason


def test_many_files_fail_naming_file_count(tmp_path):
    out = sh(tmp_path, "i=0; while [ $i -lt 3000 ]; do : > f$i; i=$((i+1)); done")
    assert out.limit == "files"
    assert "wrote more than 50 files" in out.reason and "--max-files" in out.reason


def test_endless_files_are_stopped_while_running(tmp_path):
    started = time.monotonic()
    out = sh(tmp_path, "i=0; while :; do : > f$i; i=$((i+1)); done")
    assert out.limit == "files"
    assert time.monotonic() - started < 10
    assert len(os.listdir(tmp_path / "work")) < 100_000


def test_files_already_there_do_not_count(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    for i in range(200):
        (work / f"scene{i}.inc").write_text("x" * 10000)  # 2 MB: more than the 1 MiB limit
    out = sh(tmp_path, "i=0; while [ $i -lt 40 ]; do : > out$i; i=$((i+1)); done")
    assert out.ok, out


def test_too_many_processes_are_stopped_naming_processes(tmp_path):
    """As an ordinary user the rlimit makes the 65th fork fail; as root, which the kernel
    exempts from it, the watch stops the sandbox. Either way the reason names the limit."""
    started = time.monotonic()
    out = sh(tmp_path, "i=0; while [ $i -lt 300 ]; do sleep 30 & i=$((i+1)); done; wait")
    assert out.limit == "processes", out
    assert "more than 64 processes or threads" in out.reason and "--max-processes" in out.reason
    assert time.monotonic() - started < 10


def test_no_network(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(3)
    port = listener.getsockname()[1]
    got = []
    t = threading.Thread(target=lambda: got.append(_accept(listener)))
    t.start()
    out = run(tmp_path, ["/bin/bash", "-c", f"echo hi > /dev/tcp/127.0.0.1/{port} && echo CONNECTED"])
    t.join()
    listener.close()
    assert "CONNECTED" not in out.tail and out.returncode != 0
    assert got == [None], "the sandbox reached a host socket"


def _accept(listener):
    try:
        return listener.accept()
    except OSError:
        return None


def test_host_files_are_out_of_reach(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    out = sh(tmp_path, f"cat /etc/passwd /etc/shadow {secret} /root/.bashrc; echo x > /usr/x; "
                       f"echo y > {tmp_path}/y; echo ===; ls /")
    assert "host secret" not in out.tail and "root:" not in out.tail
    assert not (tmp_path / "y").exists()
    top = set(out.tail.split("===\n")[1].split())
    assert top <= {"bin", "dev", "etc", "lib", "lib64", "proc", "sbin", "tmp", "usr", "work"}, top
    assert "No such file" in out.tail and "Read-only file system" in out.tail


def test_python_modules_run_sandboxed_and_never_import_job_files(tmp_path):
    """python_command runs distren's own code with the interpreter and packages mounted
    read-only; a job's folder holding PIL/ or distren/ cannot replace them."""
    work = tmp_path / "work"
    for pkg in ("PIL", "distren"):
        (work / pkg).mkdir(parents=True)
        (work / pkg / "__init__.py").write_text("open('/work/HIJACKED', 'w').write('x')\n")
    (work / "probe.png").write_bytes(b"")
    argv, binds = sandbox.python_command("PIL", [])
    out = sandbox.run(argv, work, SMALL, tmp_path / "log", binds=binds)
    assert out.ok, out
    assert "Pillow " in out.tail and "/opt/distren/" in out.tail  # its report names where it runs from
    assert not (work / "HIJACKED").exists()


def test_python_command_is_stable():
    argv, binds = sandbox.python_command("distren.backends.stitch", ["a", "b"])
    assert argv[-2:] == ["a", "b"]
    assert all(inside.startswith("/opt/distren/") for inside in binds)
    assert all(Path(src).is_dir() for src in binds.values())


@pytest.mark.parametrize("text,value", [("4G", 4 * GiB), ("64M", 64 * MiB), ("512k", 512 << 10),
                                        ("1000", 1000), ("1.5GiB", 3 * GiB // 2), ("2gb", 2 * GiB)])
def test_sizes_parse(text, value):
    assert sandbox.parse_size(text, "--max-memory") == value


@pytest.mark.parametrize("text", ["", "lots", "-1G", "4X", "0", "1e9"])
def test_bad_sizes_are_refused_clearly(text):
    with pytest.raises(DistrenError, match="--max-memory .*use a size such as 4G|at least 1 byte"):
        sandbox.parse_size(text, "--max-memory")


def test_a_large_image_renders_within_small_limits(tmp_path):
    """POV-Ray stores the image it renders in a file of 20 bytes a pixel: 80 MB at 2000x2000,
    more than the sandbox's /tmp and the 16 MiB file limit here. The backend gives it room on
    disk for the job's own size, so the limits bound the scene, not the resolution."""
    from distren import jobfile
    from distren.backends.povray import PovrayBackend

    work = tmp_path / "work"
    work.mkdir()
    (work / "big.ini").write_text("Input_File_Name=big.pov\nOutput_File_Name=big.png\n")
    (work / "big.pov").write_text("camera { location -4*z look_at 0 }\nsphere { 0, 1 pigment { rgb 1 } }\n")
    jf = jobfile.JobFile("povray", 2000, 2000, (jobfile.Frame(0),), {"ini": "big.ini"})
    limits = sandbox.Limits(file_bytes=16 * MiB, files=20, tmp=16 * MiB)
    assert PovrayBackend().render(jf, jf.frames[0], work, tmp_path / "log", limits) == ["big.png"]
    assert sorted(p.name for p in work.iterdir()) == ["big.ini", "big.png", "big.pov"]
