"""The supervisor owns the process tree: nothing the command starts survives it, whichever way the run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from harness.sandbox import SandboxError, Supervisor
from harness.sandbox import supervise

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the supervisor needs Linux /proc")

SUPERVISE = [sys.executable, "-m", "harness.sandbox.supervise"]
QUICK_PYTHON = [sys.executable, "-I", "-S"]  # starts in ~10 ms: no site-packages needed by these commands

# A daemon the way a careless (or hostile) method makes one: fork, setsid, fork again, parent exits.
DAEMONIZE = textwrap.dedent("""
    import os, sys
    marker = sys.argv[1]
    r, w = os.pipe()
    os.set_inheritable(w, True)
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execv(sys.executable, [sys.executable, "-I", "-S", "-c",
                     "import os, sys, time; os.write(int(sys.argv[1]), b'1'); time.sleep(1000)", str(w), marker])
        os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1"  # the daemon runs
    os.wait()
""")

# A small tree: the command starts two children that sleep, and sleeps itself.
TREE = textwrap.dedent("""
    import subprocess, sys, time
    marker = sys.argv[1]
    for _ in range(2):
        subprocess.Popen([sys.executable, "-I", "-S", "-c", "import time; time.sleep(1000)", marker])
    time.sleep(1000)
""")


def sleeper(marker: str) -> list[str]:
    return [*QUICK_PYTHON, "-c", "import time; time.sleep(1000)", marker]


def marked(marker: str) -> list[int]:
    """Live processes of the supervised tree tagged with the marker as their last argument (the supervisor's
    own command line ends with the command's, so it is left out by name)."""
    needle = marker.encode()
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                args = f.read().split(b"\0")[:-1]
        except OSError:
            continue
        if args and args[-1] == needle and not any(b"supervise" in arg for arg in args):
            pids.append(int(name))
    return pids


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def marker():
    value = f"slowrun-test-{uuid.uuid4().hex}"
    yield value
    for pid in marked(value):  # never leave a stray sleeper behind, even when a test fails
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_timeout_stops_the_command(tmp_path, marker):
    status = tmp_path / "status.json"
    proc = subprocess.run([*SUPERVISE, "--timeout", "0.5", "--status-file", str(status), "--", *sleeper(marker)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 124, proc.stderr
    result = json.loads(status.read_text())
    assert result["reason"] == "timeout" and result["signal"] == signal.SIGKILL and result["exit_code"] is None
    assert 0.5 <= result["elapsed_s"] < 5
    assert result["killed"] == 1 and result["leftover"] == []
    assert marked(marker) == []


def test_detached_daemon_does_not_outlive_the_run(tmp_path, marker):
    status = tmp_path / "status.json"
    proc = subprocess.run([*SUPERVISE, "--status-file", str(status), "--", *QUICK_PYTHON, "-c", DAEMONIZE, marker],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(status.read_text())
    assert result == {**result, "reason": "exited", "exit_code": 0, "signal": None, "leftover": []}
    assert result["killed"] == 1  # the daemon, found through /proc: it left the command's session
    assert marked(marker) == []


def test_exit_code_signal_and_passed_fd(tmp_path):
    r, w = os.pipe()
    try:
        supervisor = Supervisor([*QUICK_PYTHON, "-c", f"import os, sys; os.write({w}, b'hello'); sys.exit(3)"],
                                env=dict(os.environ), timeout_s=None, status_file=tmp_path / "a.json", pass_fds=(w,))
        supervisor.start()
        result = supervisor.wait()
        os.close(w)
        w = -1
        assert os.read(r, 100) == b"hello"
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    assert (result.exit_code, result.signal, result.reason, result.killed) == (3, None, "exited", 0)
    assert supervisor._proc.returncode == 3

    killed = Supervisor([*QUICK_PYTHON, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"],
                        env=dict(os.environ), timeout_s=10, status_file=tmp_path / "b.json", cwd=tmp_path)
    killed.start()
    result = killed.wait()
    assert (result.exit_code, result.signal, result.reason) == (None, signal.SIGKILL, "exited")
    assert killed._proc.returncode == 128 + signal.SIGKILL


def test_terminate_kills_the_whole_tree(tmp_path, marker):
    supervisor = Supervisor([*QUICK_PYTHON, "-c", TREE, marker], env=dict(os.environ), timeout_s=None,
                            status_file=tmp_path / "status.json")
    supervisor.start()
    assert wait_for(lambda: len(marked(marker)) == 3), "the command's tree did not start"
    result = supervisor.terminate()
    assert result.reason == "terminated" and result.killed == 3 and result.leftover == ()
    assert supervisor._proc.returncode == 143
    assert marked(marker) == []


def test_terminate_right_after_start_still_cleans_up(tmp_path, marker):
    supervisor = Supervisor(sleeper(marker), env=dict(os.environ), timeout_s=None, status_file=tmp_path / "s.json")
    supervisor.start()
    result = supervisor.terminate()  # before the supervisor has even finished importing
    assert result.reason == "terminated"
    assert wait_for(lambda: marked(marker) == [], timeout=2)


def test_parent_death_makes_the_supervisor_clean_up(tmp_path, marker):
    status = tmp_path / "status.json"
    parent_code = textwrap.dedent(f"""
        import os, time
        from pathlib import Path
        from harness.sandbox.supervisor import Supervisor
        s = Supervisor({sleeper(marker)!r}, env=dict(os.environ), timeout_s=None, status_file=Path({str(status)!r}))
        s.start()
        print(s.pid, flush=True)
        time.sleep(1000)
    """)
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True)
    try:
        supervisor_pid = int(parent.stdout.readline())
        assert wait_for(lambda: len(marked(marker)) == 1), "the supervised command did not start"
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
    assert wait_for(status.exists), "the orphaned supervisor did not clean up and report"
    assert json.loads(status.read_text())["reason"] == "terminated"
    assert wait_for(lambda: marked(marker) == [], timeout=2)
    assert wait_for(lambda: not os.path.exists(f"/proc/{supervisor_pid}"), timeout=5)


def test_wait_without_a_status_is_an_error(tmp_path):
    supervisor = Supervisor([*QUICK_PYTHON, "-c", "pass"], env=dict(os.environ), timeout_s=None,
                            status_file=tmp_path / "status.json")
    supervisor.start()
    supervisor._proc.wait()
    (tmp_path / "status.json").unlink()  # as if the supervisor had been SIGKILLed before writing it
    with pytest.raises(SandboxError, match="without a readable status"):
        supervisor.wait()


def test_supervisor_is_light(tmp_path):
    """It imports neither torch nor numpy and runs a command to its end; how long its start takes is measured
    in tests/bench/test_bench_sandbox_startup.py (`supervisor_ratio`), not asserted here."""
    probe = "import sys, harness.sandbox.supervise; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "[]", out.stderr
    subprocess.run([*QUICK_PYTHON, supervise.__file__, "--status-file", str(tmp_path / "s.json"), "--", "true"],
                   check=True, timeout=30)
    status = json.loads((tmp_path / "s.json").read_text())
    assert (status["exit_code"], status["reason"]) == (0, "exited")


_PROBE = """
import json, os
print(json.dumps({"uid": os.getuid(),
                  "interfaces": [l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:]],
                  "processes": sorted(int(p) for p in os.listdir("/proc") if p.isdigit())}))
"""


def test_namespaces_without_root(tmp_path):
    """Where the harness does not run as root, the supervisor gets its namespaces through a user namespace
    that maps only its own user: the command still sees only loopback and only its own processes. Run here
    as the unprivileged `nobody` (uid 65534), with a system Python that user can execute."""
    import shutil
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("switching to an unprivileged user needs root (this run is already unprivileged)")
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 that an unprivileged user can execute")
    folder = Path(tempfile.mkdtemp(prefix="slowrun-nonroot-"))
    try:
        folder.chmod(0o777)
        script = folder / "supervise.py"  # the supervisor runs as a lone script (-I -S): a copy works the same
        shutil.copyfile(supervise.__file__, script)
        script.chmod(0o644)

        def become_nobody():
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)

        status = folder / "status.json"
        done = subprocess.run([python, "-I", "-S", str(script), "--timeout", "60", "--status-file", str(status),
                               "--private-network", "--private-pids", "--", python, "-I", "-c", _PROBE],
                              preexec_fn=become_nobody, cwd=folder, capture_output=True, text=True, timeout=120)
        if done.returncode != 0 and "Permission denied" in done.stderr:
            pytest.skip(f"the unprivileged user cannot run {python}: {done.stderr.strip()[-200:]}")
        outcome = json.loads(status.read_text())
        if outcome["network"] != "private" or outcome["pids"] != "private":
            pytest.skip(f"this kernel gives unprivileged users no namespaces: {outcome}")
        seen = json.loads(done.stdout.strip().splitlines()[-1])
        assert seen["uid"] == 65534  # (mapped to itself: the user namespace grants nothing it did not have)
        assert seen["interfaces"] == ["lo"]
        assert seen["processes"] == [1, 2]  # the namespace's init and the command itself
    finally:
        shutil.rmtree(folder, ignore_errors=True)
