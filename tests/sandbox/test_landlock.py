"""The sandbox as the method sees it: each test confines a fresh child process and reports what it could do."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from harness.sandbox import SandboxError, SandboxPolicy, landlock_abi, sandbox_env
from tests.sandbox.helpers import denied, require_landlock, run_sandboxed

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tree(tmp_path):
    """ro/ (readable), rw/ (writable), secret/ (not granted), listed/ (list-only), each with a file."""
    for name in ("ro", "rw", "secret", "listed"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "file.txt").write_text(f"{name} content")
    return tmp_path


def test_read_only_reads_and_nothing_else(tree):
    require_landlock()
    repo_file, harness_file = str(REPO_ROOT / "pyproject.toml"), str(REPO_ROOT / "harness" / "__init__.py")
    out = run_sandboxed(
        f"""
        ro = spec["read_only"][0]
        attempt("ro", lambda: read(ro + "/file.txt"))
        attempt("secret", lambda: read(ro + "/../secret/file.txt"))
        attempt("secret_dir", lambda: os.listdir(ro + "/../secret"))
        attempt("repo_file", lambda: read({repo_file!r}))
        attempt("harness_file", lambda: read({harness_file!r}))
        """,
        cwd=tree, read_only=[tree / "ro"],
    )
    assert out["sandbox"]["kind"] == "landlock"
    r = out["results"]
    assert r["ro"] == {"ok": True, "value": "ro content"}
    assert denied(r["secret"]) and denied(r["secret_dir"])
    # The trusted package is readable, the project folder around it (run folders, data) is not.
    assert r["harness_file"]["ok"]
    assert denied(r["repo_file"])


def test_read_only_is_not_writable_and_read_write_is(tree):
    require_landlock()
    out = run_sandboxed(
        """
        ro, rw = spec["read_only"][0], spec["read_write"][0]
        attempt("ro_new", lambda: write(ro + "/new.txt"))
        attempt("ro_overwrite", lambda: write(ro + "/file.txt"))
        attempt("ro_remove", lambda: os.remove(ro + "/file.txt"))
        attempt("rw_new", lambda: write(rw + "/new.txt", "hello"))
        attempt("rw_mkdir", lambda: os.makedirs(rw + "/a/b"))
        attempt("rw_rename", lambda: os.replace(rw + "/new.txt", rw + "/a/b/moved.txt"))
        attempt("rw_remove", lambda: os.remove(rw + "/file.txt"))
        """,
        cwd=tree, read_only=[tree / "ro"], read_write=[tree / "rw"],
    )
    r = out["results"]
    assert denied(r["ro_new"]) and denied(r["ro_overwrite"]) and denied(r["ro_remove"])
    assert all(r[k]["ok"] for k in ("rw_new", "rw_mkdir", "rw_rename", "rw_remove")), r
    assert (tree / "rw" / "a" / "b" / "moved.txt").read_text() == "hello"
    assert (tree / "ro" / "file.txt").read_text() == "ro content"


def test_file_rule_grants_that_file_only(tree):
    require_landlock()
    (tree / "ro" / "other.txt").write_text("other")
    out = run_sandboxed(
        """
        attempt("file", lambda: read(spec["read_only"][0]))
        attempt("sibling", lambda: read(os.path.join(os.path.dirname(spec["read_only"][0]), "other.txt")))
        """,
        cwd=tree, read_only=[tree / "ro" / "file.txt"],
    )
    assert out["results"]["file"]["ok"]
    assert denied(out["results"]["sibling"])


def test_list_only_lists_but_does_not_open(tree):
    require_landlock()
    out = run_sandboxed(
        """
        listed = spec["list_only"][0]
        attempt("list", lambda: sorted(os.listdir(listed)))
        attempt("open", lambda: read(listed + "/file.txt"))
        """,
        cwd=tree, list_only=[tree / "listed"],
    )
    assert out["results"]["list"] == {"ok": True, "value": ["file.txt"]}
    assert denied(out["results"]["open"])
    assert str(tree / "listed") in out["sandbox"]["list_only"]


def test_description_names_rules_and_skips_missing_paths(tree):
    abi = require_landlock()
    missing = tree / "does-not-exist"
    out = run_sandboxed(
        """
        import resource
        results["nofile"] = resource.getrlimit(resource.RLIMIT_NOFILE)
        results["fsize"] = resource.getrlimit(resource.RLIMIT_FSIZE)
        """,
        cwd=tree, read_only=[tree / "ro", missing], read_write=[tree / "rw"],
    )
    sandbox = out["sandbox"]
    assert sandbox["abi"] == abi
    assert str(tree / "ro") in sandbox["read_only"] and str(tree / "rw") in sandbox["read_write"]
    assert str(missing) in sandbox["skipped"] and str(missing) not in sandbox["read_only"]
    assert sandbox["rlimits"]["max_file_bytes"] == 1 << 30
    assert ("signal" in sandbox["scopes"]) == (abi >= 6)
    # Hard limits too, so the method cannot raise them back.
    assert out["results"]["fsize"] == [1 << 30, 1 << 30]
    nofile = out["results"]["nofile"]
    assert nofile[0] == nofile[1] == sandbox["rlimits"]["max_open_files"] <= 4096


def test_devices_and_shared_memory(tree):
    require_landlock()
    # A device not in the policy, which this process can open: the sandbox must refuse it.
    outside = next((p for p in ("/dev/kmsg", "/dev/vda", "/dev/sda", "/dev/nvme0n1", "/dev/loop0", "/dev/tty")
                    if _openable(p)), None)
    name = f"slowrun-test-{uuid.uuid4().hex}"
    out = run_sandboxed(
        f"""
        attempt("null", lambda: write("/dev/null", "discarded"))
        attempt("urandom", lambda: len(open("/dev/urandom", "rb").read(8)))
        attempt("outside", lambda: os.close(os.open({outside!r}, os.O_RDONLY | os.O_NONBLOCK)) if {outside!r} else None)
        attempt("shm_file", lambda: (write("/dev/shm/{name}"), os.remove("/dev/shm/{name}")))
        attempt("shm_node", lambda: os.mknod("/dev/shm/{name}.node", 0o600 | __import__("stat").S_IFCHR,
                                                os.makedev(1, 3)))
        """,
        cwd=tree,
    )
    r = out["results"]
    assert r["null"]["ok"] and r["urandom"] == {"ok": True, "value": 8}
    assert r["shm_file"]["ok"], r["shm_file"]
    if outside:
        assert denied(r["outside"]), (outside, r["outside"])
    node = Path(f"/dev/shm/{name}.node")
    made = node.exists()
    node.unlink(missing_ok=True)
    if os.geteuid() == 0:  # only root may mknod at all; the sandbox must still refuse device nodes in /dev/shm
        assert denied(r["shm_node"]), r["shm_node"]
    assert not made


def _openable(path: str) -> bool:
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY))
        return True
    except OSError:
        return False


def test_signals_outside_the_sandbox_are_refused(tree):
    require_landlock(6)
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        out = run_sandboxed(
            f"""
            import signal, subprocess
            attempt("parent_probe", lambda: os.kill(os.getppid(), 0))
            attempt("bystander_term", lambda: os.kill({bystander.pid}, signal.SIGTERM))
            own = subprocess.Popen(["sleep", "30"])
            attempt("own_child_term", lambda: os.kill(own.pid, signal.SIGTERM))
            results["own_child_code"] = own.wait()
            """,
            cwd=tree,
        )
        r = out["results"]
        assert not r["parent_probe"]["ok"] and r["parent_probe"]["errno"] == errno.EPERM
        assert not r["bystander_term"]["ok"] and r["bystander_term"]["errno"] == errno.EPERM
        assert bystander.poll() is None, "the sandboxed child managed to signal a process outside the sandbox"
        # Its own children are inside its domain: signalling them still works.
        assert r["own_child_term"]["ok"] and r["own_child_code"] == -signal.SIGTERM
    finally:
        bystander.kill()
        bystander.wait()


def test_abstract_sockets_outside_the_sandbox_are_unreachable(tree):
    require_landlock(6)
    address = f"\0slowrun-test-{uuid.uuid4().hex}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(address)
        server.listen(1)
        out = run_sandboxed(
            f"""
            import socket
            def connect(address):
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.connect(address)
            attempt("outside", lambda: connect({address!r}))
            inner = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            inner.bind({address + "-inner"!r})
            inner.listen(1)
            attempt("inside", lambda: connect({address + "-inner"!r}))
            """,
            cwd=tree,
        )
    finally:
        server.close()
    r = out["results"]
    assert not r["outside"]["ok"] and r["outside"]["errno"] == errno.EPERM, r["outside"]
    assert r["inside"]["ok"], r["inside"]


def test_file_size_limit_stops_large_writes(tree):
    require_landlock()
    out = run_sandboxed(
        """
        import signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        rw = spec["read_write"][0]
        attempt("small", lambda: write(rw + "/small.bin", "a" * 500))
        attempt("large", lambda: write(rw + "/large.bin", "a" * 5000))
        """,
        cwd=tree, read_write=[tree / "rw"], max_file_bytes=1000,
    )
    r = out["results"]
    assert r["small"]["ok"]
    assert not r["large"]["ok"] and r["large"]["errno"] == errno.EFBIG, r["large"]
    assert (tree / "rw" / "large.bin").stat().st_size <= 1000


def test_torch_works_inside_the_default_policy(tree):
    require_landlock()
    scratch = tree / "scratch"
    out = run_sandboxed(
        """
        import tempfile
        import torch
        torch.set_num_threads(1)
        t = torch.arange(6.0).reshape(2, 3)
        results["matmul"] = float((t @ t.T).sum())
        results["shared"] = float(torch.ones(4).share_memory_().sum())
        fd, path = tempfile.mkstemp()
        os.close(fd)
        results["tmp_in_scratch"] = path.startswith(os.environ["TMPDIR"])
        attempt("secret", lambda: read(os.path.join(os.path.dirname(spec["read_write"][0]), "secret", "file.txt")))
        """,
        cwd=tree, read_write=[scratch], env=sandbox_env(scratch), timeout=120,
    )
    r = out["results"]
    assert r["matmul"] == 83.0 and r["shared"] == 4.0
    assert r["tmp_in_scratch"] is True
    assert denied(r["secret"])


def test_switch_off_runs_unsandboxed_with_a_warning(tree):
    out = run_sandboxed(
        """attempt("secret", lambda: read(spec["read_write"][0] + "/../secret/file.txt"))""",
        cwd=tree, read_write=[tree / "rw"], env={"SLOWRUN_SANDBOX": "off"}, expect_ok=False,
    )
    assert out.returncode == 0, out.stderr
    assert "UNSANDBOXED" in out.stderr and "sandbox: none" in out.stderr
    assert '"kind": "none"' in out.stdout and "disabled by SLOWRUN_SANDBOX=off" in out.stdout
    assert '"secret": {"ok": true' in out.stdout


def test_switch_off_with_required_is_an_error(tree):
    out = run_sandboxed("", cwd=tree, env={"SLOWRUN_SANDBOX": "off"}, required=True, expect_ok=False)
    assert out.returncode != 0
    assert "SandboxError" in out.stderr and "SLOWRUN_SANDBOX=off" in out.stderr


def test_without_landlock_the_run_proceeds_marked_unsandboxed(tree):
    code = (
        "import harness.sandbox.enter as enter\n"
        "enter.probe = lambda: (0, 'this kernel has no Landlock (simulated)')\n"
        "from harness.sandbox import SandboxPolicy, SandboxError\n"
        "policy = SandboxPolicy(read_only=(), read_write=())\n"
        "print(enter.enter_sandbox(policy))\n"
        "try:\n"
        "    enter.enter_sandbox(policy, required=True)\n"
        "except SandboxError as exc:\n"
        "    print('REFUSED', exc)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "SLOWRUN_SANDBOX"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "'kind': 'none'" in proc.stdout and "simulated" in proc.stdout
    assert "UNSANDBOXED: this kernel has no Landlock (simulated)" in proc.stderr
    assert "REFUSED a sandbox is required but Landlock is unavailable" in proc.stdout


def test_threads_are_refused(tree):
    code = (
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(5,), daemon=True).start()\n"
        "from harness.sandbox import SandboxPolicy, enter_sandbox, SandboxError\n"
        "try:\n"
        "    enter_sandbox(SandboxPolicy(read_only=(), read_write=()))\n"
        "except SandboxError as exc:\n"
        "    print('REFUSED', exc)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "SLOWRUN_SANDBOX"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "REFUSED" in proc.stdout and "2 threads" in proc.stdout


def test_policy_rejects_bad_paths_and_limits():
    with pytest.raises(SandboxError, match="absolute"):
        SandboxPolicy(read_only=("relative/dir",), read_write=())
    with pytest.raises(SandboxError, match="sequence of paths"):
        SandboxPolicy(read_only="/usr", read_write=())
    with pytest.raises(SandboxError, match="max_file_bytes"):
        SandboxPolicy(read_only=(), read_write=(), max_file_bytes=0)
    policy = SandboxPolicy(read_only=[Path("/usr")], read_write=[])
    assert policy.read_only == ("/usr",) and policy.read_write == ()


def test_sandbox_env_points_into_scratch(tmp_path):
    env = sandbox_env(tmp_path / "scratch")
    scratch = str((tmp_path / "scratch").resolve())
    assert env["HOME"] == scratch
    for name in ("TMPDIR", "TEMP", "TMP", "XDG_CACHE_HOME", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR",
                 "MPLCONFIGDIR", "HF_HOME", "TORCH_HOME", "CUDA_CACHE_PATH"):
        assert env[name].startswith(scratch + os.sep) and os.path.isdir(env[name]), name
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and "PYTHONPYCACHEPREFIX" not in env
    redirected = sandbox_env(tmp_path / "scratch", pycache_prefix=True)
    assert redirected["PYTHONPYCACHEPREFIX"].startswith(scratch) and os.path.isdir(redirected["PYTHONPYCACHEPREFIX"])


def test_landlock_abi_is_a_version_number():
    abi = landlock_abi()
    assert isinstance(abi, int) and abi >= 0
