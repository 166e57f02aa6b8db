"""The closed sandbox, attacked: a method that plants links where the harness writes, reads secrets from its
environment, reaches for the network or for root's powers, or names the data as a folder to read. Each
test is an attack that worked against an earlier harness and must now end with the harness's files and
numbers intact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.errors import SlowrunError
from harness.run.runner import RunRequest, run_method
from tests.trust.runs import METHODS, metrics, run


def test_resume_writes_nothing_where_the_method_could_point_it(synthetic_data, tmp_path):
    from harness.run.runner import resume_run

    victim = tmp_path / "outside" / "victim.pth"
    victim.parent.mkdir()
    victim.write_text("original\n")
    run_dir, first = run("plant_resume_link", synthetic_data, tmp_path, target=str(victim))
    assert first["status"] == "failed" and first["error"]["type"] == "WorkerDied"
    resume_run(run_dir, progress=False)
    record = json.loads((run_dir / "record.json").read_text())
    assert record["status"] == "ok", record["error"]
    assert victim.read_text() == "original\n"  # the harness wrote nothing through the link
    assert sorted(p.name for p in victim.parent.iterdir()) == ["victim.pth"]  # nor made folders through one
    assert not (run_dir / "sandbox" / "scratch" / "cache").is_symlink()  # a folder again, the harness's own
    resumed = [line for line in metrics(run_dir) if "resumed_payload" in line]
    assert [line["resumed_payload"] for line in resumed] == [
        "import os; os.system('echo owned')"]  # the state came back, read from harness storage
    # ...and nothing else did: the batch read after the checkpoint (rolled back from the meter) and the folder
    # with a link in it are gone; scratch holds only what the harness made for the new session
    assert not {"read_after_checkpoint.txt", "kept", ".resume", ".resume-dir"} & set(resumed[0]["scratch_found"])


def test_shared_memory_is_the_sessions_own(synthetic_data, tmp_path, needs_namespaces):
    """/dev/shm is writable in the sandbox, and was the machine's: a file left there outlived the run, for
    another run's method or a resumed session of the same run to read. Each session now has its own."""
    import uuid

    planted = Path("/dev/shm") / f"slowrun-host-{uuid.uuid4().hex}"
    stash = f"slowrun-stash-{uuid.uuid4().hex}"
    planted.write_text("the machine's")
    try:
        run_dir, record = run("stash_shared_memory", synthetic_data, tmp_path, target=stash)
    finally:
        planted.unlink()
    assert record["status"] == "ok", record["error"]
    logged = next(line for line in metrics(run_dir) if "shm_wrote" in line)
    assert logged["shm_wrote"] == stash  # it could write there (DataLoader and NCCL need that)...
    assert planted.name not in logged["shm_seen"].split(",")  # ...but saw nothing of the machine's
    assert not (Path("/dev/shm") / stash).exists()  # and left nothing behind


@pytest.mark.parametrize("which", ["data", "data_parent", "root", "inside_data", "run_parent"])
def test_allow_read_refuses_the_data_and_the_run_folder(which, synthetic_data, tmp_path):
    """Naming the prepared data folder or one of its parents as --allow-read made validation readable."""
    folder = {"data": synthetic_data, "data_parent": synthetic_data.parent, "root": Path("/"),
              "inside_data": synthetic_data / "val.tokens.bin", "run_parent": tmp_path}[which]
    with pytest.raises(SlowrunError, match="--allow-read .* would let the method read"):
        run_method(RunRequest(method_dir=METHODS / "read_files", track="synthetic", epochs=1.0,
                              data_dir=synthetic_data, out=tmp_path / "run", progress=False,
                              overrides=(("target", str(synthetic_data / "val.tokens.bin")),),
                              allow_read=(folder,)))
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize("ranks", [1, 2])
def test_the_method_finds_no_secret_and_no_token(ranks, synthetic_data, tmp_path, monkeypatch):
    from harness.common.distributed import LaunchSpec

    monkeypatch.setenv("HF_TOKEN", "hf_not_for_the_method")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws_not_for_the_method")
    monkeypatch.setenv("SLOWRUN_NUM_THREADS", "1")
    extra = {"launch": LaunchSpec(nproc_per_node=2), "timeout_s": 120} if ranks == 2 else {}
    run_dir, record = run("find_token", synthetic_data, tmp_path, **extra)
    assert record["status"] == "ok", record["error"]
    found = next(line for line in metrics(run_dir) if "environ_names" in line)
    names = set(found["environ_names"].split(","))
    assert not names & {"HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "SLOWRUN_SERVER", "SLOWRUN_TOKEN"}, names
    assert found["token_in_environ"] is False
    assert found["connect_file"] == "PermissionError"  # the run folder is closed to the method
    assert found["token_on_stack"] is False and found["token_on_heap"] is False


def test_root_powers_are_dropped(synthetic_data, tmp_path):
    run_dir, record = run("root_powers", synthetic_data, tmp_path)
    assert record["status"] == "ok", record["error"]
    tried = next(line for line in metrics(run_dir) if "mknod" in line)
    assert tried["mknod"] != "allowed" and tried["mount"] != "allowed" and tried["ptrace"] != "allowed", tried
    assert int(tried["cap_eff"], 16) == 0 and int(tried["cap_bnd"], 16) == 0
    assert not (run_dir / "sandbox" / "scratch" / "kmsg").exists()
    if tried["uid"] == 0:  # as root the sandbox says what it took away
        assert int(record["sandbox"]["capabilities"]["held_before"], 16) != 0


@pytest.mark.parametrize("ranks", [1, 2])
def test_the_method_has_no_network(ranks, synthetic_data, tmp_path, monkeypatch, needs_namespaces):
    """A listener on the host's loopback hears nothing: the method's tree has a network of its own with only
    loopback (the ranks of a distributed run share it), and raw sockets need a capability it dropped."""
    import socket

    from harness.common.distributed import LaunchSpec

    monkeypatch.setenv("SLOWRUN_NUM_THREADS", "1")
    tcp = socket.create_server(("127.0.0.1", 0))
    port = tcp.getsockname()[1]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", port))
    tcp.settimeout(0.0)
    udp.settimeout(0.0)
    extra = {"launch": LaunchSpec(nproc_per_node=2), "timeout_s": 120} if ranks == 2 else {}
    try:
        run_dir, record = run("reach_network", synthetic_data, tmp_path, target=str(port), **extra)
        heard = []
        for receive in (lambda: tcp.accept(), lambda: udp.recvfrom(100)):
            try:
                heard.append(receive())
            except BlockingIOError:
                pass
    finally:
        tcp.close()
        udp.close()
    assert record["status"] == "ok", record["error"]
    assert heard == []
    tried = next(line for line in metrics(run_dir) if "tcp" in line)
    assert all(tried[k] != "allowed" for k in ("raw", "packet", "outside")), tried
    assert tried["tcp"] != "allowed" and tried["interfaces"] == "lo", tried
    assert record["sandbox"]["network"]["kind"] == "private"
    assert record["sandbox"]["network"]["processes"] == "private"


def test_other_processes_environments_and_runs_tokens_are_out_of_reach(synthetic_data, tmp_path, needs_namespaces):
    """Another process of the same user holds a secret in its environment (as a concurrent run's processes
    hold where their token is): the method cannot read it, nor any run's connect file."""
    import os
    import subprocess
    import uuid

    secret = f"secret-{uuid.uuid4().hex}"
    victim = subprocess.Popen(["sleep", "120"], env={**os.environ, "VICTIM_SECRET": secret,
                                                     "SLOWRUN_CONNECT": str(tmp_path / "victim-connect.json")})
    (tmp_path / "victim-connect.json").write_text('{"address": "unix:/nowhere", "token": "0"}')
    try:
        run_dir, record = run("scan_proc", synthetic_data, tmp_path, target=secret)
    finally:
        victim.kill()
        victim.wait()
    assert record["status"] == "ok", record["error"]
    seen = next(line for line in metrics(run_dir) if "secret_seen" in line)
    assert seen["secret_seen"] is False
    assert seen["connect_files_opened"] == 0
    # its own PID namespace: the victim, the runner and pytest are not even listed
    assert not any(c.startswith("sleep") or "pytest" in c for c in seen["commands_seen"]), seen["commands_seen"]
    assert any("harness.confined.method_process" in c for c in seen["commands_seen"])


def test_another_runs_server_serves_no_stranger(synthetic_data, tmp_path):
    """A method holding another run's socket path and token (here handed to it, as a leak would) cannot
    say hello there: that server serves only its own run's processes, and says what it closed."""
    import subprocess
    import sys

    from harness.server import DataServer, ServerSpec
    from harness.rules.tracks import get_track

    victim = DataServer(ServerSpec(run_dir=tmp_path / "victim", data_dir=synthetic_data,
                                   track=get_track("synthetic"), budget=4.0, seed=3, hparams={}, device="cpu",
                                   method_dir=tmp_path, entry="train:main", fitness_docs=0, progress=False))
    address = victim.start(tree_only=True)
    victims_tree = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        victim.admit_tree(victims_tree.pid)
        run_dir, record = run("take_over_run", synthetic_data, tmp_path,
                              target=json.dumps({"address": address, "token": victim.token}))
        assert record["status"] == "ok", record["error"]
        outcome = next(line for line in metrics(run_dir) if "take_over" in line)["take_over"]
        assert outcome in ("ChannelClosed", "ConnectionResetError", "BrokenPipeError"), outcome
        assert [i["kind"] for i in victim._incidents] == ["connection-refused"]
        assert victim.ledger.served_targets() == 0
    finally:
        victims_tree.kill()
        victims_tree.wait()
        victim.stop()


def test_a_slow_model_cannot_hold_the_evaluation(synthetic_data, tmp_path):
    """Eight snapshots whose forward sleeps ten minutes: the whole evaluation ends at --eval-timeout, the
    record is written, and every snapshot is listed with the reason it was not scored."""
    import time

    started = time.monotonic()
    run_dir, record = run("slow_model", synthetic_data, tmp_path, eval_timeout_s=5.0)
    assert time.monotonic() - started < 120  # a single forward sleeps 600 s
    assert record["result"] is None and record["snapshots"] == []
    reasons = {row["tag"]: row["reason"] for row in record["invalid_snapshots"]}
    assert sorted(reasons) == [f"slow{i}" for i in range(8)]
    assert "timed out" in reasons["slow0"]
    assert all("--eval-timeout" in reasons[f"slow{i}"] for i in range(1, 8)), reasons
    assert json.loads((run_dir / "run.json").read_text())["eval_timeout_s"] == 5.0


def test_eval_timeout_must_be_a_positive_number(synthetic_data, tmp_path):
    with pytest.raises(SlowrunError, match="--eval-timeout must be a positive number of seconds"):
        run_method(RunRequest(method_dir=METHODS / "own_model", track="synthetic", epochs=1.0, data_dir=synthetic_data,
                              out=tmp_path / "run", progress=False, eval_timeout_s=-1.0))
    assert not (tmp_path / "run").exists()
