"""Run a method directory: check it, give it the training data in its own process, evaluate, record.

    run_method(RunRequest(...))  ->  RUN_DIR/record.json
    resume_run(RUN_DIR)          continue a run that was killed, from its last checkpoint
    evaluate_existing(RUN_DIR)   recompute the evaluation and the record from the snapshots

Training runs behind the trust boundary (docs/threat-model.md): the runner starts the data server (the
meter, the clock, snapshot intake, checkpoints, metrics) in its own process, and the method's process
tree under the sandbox supervisor, which enforces `--timeout` and kills every process the method
started when it ends. The method's process reaches the server only through its socket.

The record itself is assembled in harness/run/record.py. The run folder holds harness storage: `run.json` (the full spec: harness/formats/run_spec.py), `snapshots/`, `metrics.jsonl`,
`checkpoint/`, `train_result.json` (the server's account of training), `eval/` (per-token caches) and
`record.json`; and `sandbox/scratch`, `sandbox/outbox`, the only places the method may write.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from harness.rules.allow_read import env_allow_read
from harness.data.fitness import carve_fitness
from harness.data.manifest import MANIFEST, read_manifest
from harness.common.distributed import LaunchSpec
from harness.errors import SlowrunError
from harness.common.gpu_nodes import open_gpus_or_warn
from harness.formats.method_toml import MethodError, MethodSpec, method_hash, read_method
from harness.common.paths import PROJECT_ROOT
from harness.common.atomic import write_text_atomic
from harness.formats.records import MAX_BUDGET_EPOCHS, utc_timestamp, write_record_atomic
from harness.formats.run_spec import RUN_SPEC, RunSpec, as_json, read_run_spec, write_run_spec
from harness.sandbox.environment import check_pass_env
from harness.rules.tracks import Track, get_track
from harness.run.preemption import WARNING, SchedulerWarning
from harness.run.record import EMPTY_EVALUATION, assemble_record, print_summary
from harness.run.tracking import TrackingOptions, open_tracking
from harness.formats.run_folder import STOP_FILE, RunLayout
from harness.server.outcome import TrainOutcome, preempted_error

if TYPE_CHECKING:  # the downstream package is imported only when scoring starts
    from harness.eval.downstream.limits import DocumentLimits
    from harness.eval.downstream.splits import SplitFile

RECORD = "record.json"
TRAIN_RESULT = "train_result.json"
SUPERVISOR_STATUS = "supervisor.json"
SERVER_FILE = "server.json"  # node 0's data server address and token, for the other nodes' runners
CONNECT_FILE = "connect.json"  # this node's data server address and the token, read by each rank's worker
STOP_GRACE_S = 2.0  # after the server asks for a stop: time for a dying tree to end on its own
JOIN_WAIT_S = 600.0  # how long another node waits for node 0's server, and node 0 for the other nodes' ranks


class RunInterrupted(SlowrunError):
    """slowrun run got SIGTERM or SIGINT: the method's processes were stopped and a record was written."""


@dataclass(frozen=True)
class RunRequest:
    method_dir: Path
    track: str = "synthetic"
    epochs: float = 4.0
    seed: int = 0
    overrides: tuple[tuple[str, str], ...] = ()
    out: Path | None = None
    data_dir: Path | None = None
    device: str = "cpu"
    progress: bool = True
    track_files: tuple[str, ...] = ()
    compute_class: str | None = None
    eval_batch_size: int = 16
    eval_dtype: str = "auto"  # float32, bfloat16 (autocast), or auto: bf16 on CUDA, float32 elsewhere
    eval_workers: int | None = None  # snapshots scored side by side: None = the job's GPUs, or 1 on a CPU
    runs_root: Path = field(default=Path("runs"))
    track_spec: Track | None = None  # a track object instead of a name (calibration's larger variants)
    downstream: bool = False  # also score ARC-Easy, PIQA and SciQ with the final predictor
    downstream_data: Path | None = None  # local copies of the three tasks' data (else the Hub)
    downstream_limit: DocumentLimits | int | None = None  # documents per task, None for all (the record says n)
    downstream_files: tuple[SplitFile, ...] = ()  # a local file of any split per task (before downstream_data)
    launch: LaunchSpec = field(default_factory=LaunchSpec)  # torchrun placement (one process by default)
    timeout_s: float | None = None  # wall-clock limit of the method's processes (None: no limit)
    time_limit_s: float | None = None  # cap on training time instead of the class's own (runs unranked)
    allow_read: tuple[Path, ...] = ()  # more read-only folders for the method (shared code, not data)
    gpt2_ranks: Path | None = None  # GPT-2 ranks file for downstream scoring (else the track's ranks_path)
    pass_env: tuple[str, ...] = ()  # environment variables passed to the method beyond the allow-list
    max_snapshots: int = 4096  # snapshots a run may hand over (each is evaluated)
    eval_timeout_s: float | None = None  # limit on the whole evaluation (each snapshot has its rule's own)
    eval_graphs: bool = True  # run snapshots from their exported graphs where they have one
    wandb: str | None = None  # a W&B project to send metrics and the record's summary to
    wandb_mode: str = "online"  # or "offline": W&B's files in RUN_DIR/tracking, for `wandb sync` later
    wandb_entity: str | None = None
    tensorboard: Path | None = None  # a folder for TensorBoard event files (RUN_ID below it)


def default_data_dir(track: str) -> Path:
    return Path("prepared") / track


def ensure_prepared(track: Track, data_dir: Path | None, progress: bool) -> Path:
    """The prepared data folder for `track`, preparing it first when it does not exist yet."""
    from harness.data.prepare import prepare_track

    folder = Path(data_dir) if data_dir else default_data_dir(track.name)
    if not (folder / MANIFEST).exists():
        print(f"preparing track {track.name!r} into {folder}", file=sys.stderr)
        prepare_track(track, folder, progress=progress)
    manifest = read_manifest(folder)
    if manifest["track"]["name"] != track.name or manifest["seq_len"] != track.seq_len:
        raise SlowrunError(f"{folder}: holds track {manifest['track']['name']!r} (seq_len {manifest['seq_len']}), "
                           f"not {track.name!r}; pass the right --data folder")
    return folder


def _run_id(spec: MethodSpec, track: str, epochs: float, seed: int) -> str:
    stamp = utc_timestamp().replace(":", "").replace("-", "")
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", spec.name)
    return f"{safe}-{track}-e{epochs:g}-s{seed}-{stamp}"


def prepare_run(req: RunRequest) -> Path:
    """Check the method, resolve data and hyperparameters, and lay out a new run folder."""
    # The entry point is imported in the method's own process, which reports a failed import as an
    # `invalid` record; importing it here too would put a second torch import before training starts.
    spec, problems = read_method(req.method_dir, req.track_files)
    if problems:
        raise MethodError(Path(req.method_dir), problems)
    track = req.track_spec or get_track(req.track, req.track_files)
    if not spec.supports(track.name):
        raise SlowrunError(f"method {spec.name!r} does not list track {track.name!r} (it lists "
                           f"{', '.join(spec.tracks)}); add it to [method].tracks in method.toml")
    if not (0 < req.epochs <= MAX_BUDGET_EPOCHS):
        raise SlowrunError(f"--epochs must be above 0 and at most {MAX_BUDGET_EPOCHS:g}, got {req.epochs}")
    max_snapshots = _positive(req.max_snapshots, "--max-snapshots")
    tracking = TrackingOptions.requested(req.wandb, req.wandb_mode, req.tensorboard, req.wandb_entity)
    eval_timeout_s = _eval_timeout(req.eval_timeout_s)
    hparams = spec.resolved_hparams(track.name, dict(req.overrides))
    rules = compute_rules(track, req)
    data_dir = ensure_prepared(track, req.data_dir, req.progress).resolve()
    manifest = read_manifest(data_dir)
    carve = carve_fitness(data_dir, spec.fitness_tokens(track.name), track.seq_len)
    run_id = _run_id(spec, track.name, req.epochs, req.seed)
    run_dir = Path(req.out) if req.out else Path(req.runs_root) / run_id
    if run_dir.exists() and any(run_dir.iterdir()):
        raise SlowrunError(f"{run_dir}: already exists; choose another --out or use --resume {run_dir}")
    allow_read = [str(Path(p).resolve()) for p in (*req.allow_read, *env_allow_read())]
    check_allow_read(allow_read, {"the prepared data": data_dir, "the run folder": run_dir.resolve()})
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_spec(run_dir, RunSpec.from_json({
        "track": track.to_dict(), "budget": float(req.epochs), "seed": int(req.seed), "hparams": hparams,
        "device": req.device, "method_dir": str(spec.folder.resolve()), "entry": spec.entry,
        "fitness_docs": carve.documents, "fitness_carve": carve.to_dict(),
        "run_id": run_dir.name if req.out else run_id, "created": utc_timestamp(),
        "data_dir": str(data_dir), "data_hash": manifest["data_hash"],
        "method": {"name": spec.name, "description": spec.description, "authors": list(spec.authors),
                   "entry": spec.entry, "hash": method_hash(spec.folder)},
        "tokenizer": manifest["tokenizer"]["kind"], "vocab_size": manifest["tokenizer"]["vocab_size"],
        "val_tokens": manifest["splits"]["val"]["tokens"], "train_tokens": manifest["splits"]["train"]["tokens"],
        "compute_class": rules["class"], "hardware": rules["hardware"], "time_limit_s": rules["time_limit_s"],
        "eval_batch_size": req.eval_batch_size,
        "eval_dtype": req.eval_dtype,
        "eval_workers": req.eval_workers or (req.launch.nproc_per_node if req.device.startswith("cuda") else 1),
        "launch": req.launch.to_dict(),
        "timeout_s": req.timeout_s,
        "allow_read": allow_read,
        "pass_env": list(check_pass_env(req.pass_env)),
        "max_snapshots": max_snapshots,
        "eval_timeout_s": eval_timeout_s,
        "eval_graphs": bool(req.eval_graphs),
        "gpt2_ranks": str(Path(req.gpt2_ranks).resolve()) if req.gpt2_ranks else None,
        "downstream": downstream_spec(req.downstream, req.downstream_data, req.downstream_files, req.downstream_limit),
        "tracking": tracking.to_json() if tracking else None,
    }))
    return run_dir


def _eval_timeout(seconds: float | None) -> float | None:
    if seconds is None:
        return None
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
        raise SlowrunError(f"--eval-timeout must be a positive number of seconds, got {seconds!r}")
    return float(seconds)


def compute_rules(track: Track, req: RunRequest) -> dict:
    """The run's compute class, the hardware it will train on, and its cap on training seconds."""
    from harness.rules.compute import (ComputeClassError, check_time_limit, default_compute_class, get_compute_class,
                                 hardware_of)

    name = req.compute_class or default_compute_class(req.device, track.compute_classes)
    klass = get_compute_class(name)
    if not track.allows_class(klass.name):
        raise ComputeClassError(f"track {track.name!r} is run in the compute classes "
                                f"{', '.join(track.compute_classes)}, not {klass.name!r}; pass --compute-class")
    gpu = _gpu_name(req.device)
    hardware = hardware_of(req.device, req.launch.nproc_per_node, req.launch.nnodes, gpu)
    limit = check_time_limit(req.time_limit_s)
    return {"class": klass.name, "hardware": {"gpu_model": hardware.gpu_model,
                                              "gpus_per_node": hardware.gpus_per_node, "nodes": hardware.nodes},
            "time_limit_s": limit if limit is not None else klass.effective_time_limit(hardware)}


def _gpu_name(device: str) -> str | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def _write_json(path: Path, obj: dict) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _positive(value, flag: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SlowrunError(f"{flag} must be a positive whole number, got {value!r}")
    return value


def check_allow_read(folders: list[str], protected: dict[str, Path]) -> None:
    """Refuse an --allow-read folder that is, holds or lies inside the prepared data or the run folder:
    naming one (or `/`, or a parent of either) would make validation or the run's records readable."""
    problems = []
    for folder in folders:
        path = Path(folder)
        for what, guarded in protected.items():
            guarded = Path(guarded).resolve()
            if path == guarded or path in guarded.parents or guarded in path.parents:
                problems.append(f"--allow-read {folder} would let the method read {what} ({guarded})")
    if problems:
        raise SlowrunError("; ".join(problems) + ": --allow-read is for code folders (shared modules), never data "
                           "or runs; name a folder that holds neither")


def _sandbox_paths(spec: RunSpec) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(read-only, list-only) folders the method needs beyond the Python installation: its own directory
    and any --allow-read folder; the parents of those are listable (names only) so that their packages
    import through PYTHONPATH."""
    read_only = spec.read_only_paths
    list_only = tuple(sorted({str(Path(p).parent) for p in read_only} | {str(PROJECT_ROOT)}))
    return read_only, list_only


def _builder_roots(spec: RunSpec) -> tuple[Path, ...]:
    """Where a snapshot's builder may live besides the method directory: the --allow-read folders (the
    harness adds its own model packages)."""
    return tuple(Path(p) for p in spec.allow_read)


def server_spec(run_dir: Path, spec: RunSpec, resume: bool, progress: bool):
    from harness.rules.compute import snapshot_grace_s
    from harness.server import ServerSpec

    read_only, list_only = _sandbox_paths(spec)
    limit = spec.time_limit_s
    return ServerSpec(run_dir=run_dir, data_dir=Path(spec.data_dir), track=spec.track_spec,
                      budget=spec.budget, seed=spec.seed, hparams=as_json(spec.hparams), device=spec.device,
                      method_dir=Path(spec.method_dir), entry=spec.entry, fitness_docs=spec.fitness_docs,
                      world_size=spec.launch_spec.world_size, resume=resume, progress=progress,
                      sandbox_read_only=read_only, sandbox_list_only=list_only, time_limit_s=limit,
                      snapshot_grace_s=snapshot_grace_s(limit) if limit else 0.0,
                      max_snapshots=int(spec.max_snapshots), eval_batch_size=int(spec.eval_batch_size))


def _worker_env(connect_file: Path, scratch: Path, launch: LaunchSpec, pass_env: tuple[str, ...] = (),
                private_network: bool = False) -> dict:
    """The method's environment: the allow-list (harness.sandbox.environment) and `--pass-env` names, the
    harness on the path, caches in scratch, and where to find the server (not the token itself)."""
    from harness.sandbox import sandbox_env
    from harness.sandbox.environment import CONNECT_ENV, allowed_environment

    env = allowed_environment(pass_env)
    project_root = str(PROJECT_ROOT)
    env["PYTHONPATH"] = project_root + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    env.update(sandbox_env(scratch))
    env[CONNECT_ENV] = str(connect_file)
    if private_network:  # loopback is the only interface: the collectives' sockets must use it
        env["GLOO_SOCKET_IFNAME"] = env["NCCL_SOCKET_IFNAME"] = "lo"
    if launch.is_distributed:
        # every rank is a full process on a shared machine: one intra-op thread each unless told otherwise
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


class _Signals:
    """SIGTERM and SIGINT to `slowrun run` become an exception in the waiting runner, which then stops
    the method's whole process tree and writes a record; the previous handlers come back afterwards.
    SIGUSR1 is the scheduler's warning (harness/run/preemption.py): while the method trains, the runner
    first asks it for a checkpoint; at any other time it stops the run as SIGTERM does."""

    class Received(BaseException):
        pass

    def __enter__(self):
        import threading

        self._saved = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._saved[sig] = signal.signal(sig, self._raise)
            self._saved[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, self._warning)
        return self

    def _raise(self, signum, frame):
        raise self.Received(signum)

    def _warning(self, signum, frame):
        if not WARNING.warn():
            raise self.Received(signum)

    def __exit__(self, *exc):
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        return False


def train(run_dir: Path, resume: bool, progress: bool, on_started=None) -> tuple[TrainOutcome, bool]:
    """Train behind the trust boundary: the data server here, the method's process tree under the
    supervisor. Returns the server's account of training and whether the runner was interrupted."""
    from dataclasses import asdict

    from harness.sandbox.supervisor import Supervisor
    from harness.server import DataServer

    run_dir = Path(run_dir).resolve()
    spec = read_run_spec(run_dir)
    launch = spec.launch_spec
    _warn_if_root()
    open_gpus_or_warn(spec.device)  # before the method's processes are sandboxed (harness/common/gpu_nodes.py)
    server = DataServer(server_spec(run_dir, spec, resume, progress))
    (run_dir / STOP_FILE).unlink(missing_ok=True)  # a stop of an earlier session is not this one's
    if launch.nnodes > 1:  # the other nodes' ranks reach the server over TCP, at master_port + 1 of node 0
        address = server.start(tcp_port=launch.master_port + 1, tree_only=True)
        write_text_atomic(run_dir / SERVER_FILE, json.dumps({"address": f"tcp:{launch.master_addr}:"
                                                             f"{launch.master_port + 1}", "token": server.token}))
    else:
        address = server.start(tree_only=True)
    # This node's ranks are the supervisor's processes: its Unix socket serves nobody else (admit_tree below).
    # write_text_atomic creates its file with mode 0600 (tempfile's): the token is never readable by others
    write_text_atomic(run_dir / CONNECT_FILE, json.dumps({"address": address, "token": server.token}))
    command = (launch.torchrun_command("harness.confined.method_process", []) if launch.is_distributed
               else [sys.executable, "-m", "harness.confined.method_process"])
    layout = RunLayout(run_dir)
    private = launch.nnodes == 1  # one node: the method's tree gets a network of its own (only loopback)
    supervisor = Supervisor(command, env=_worker_env(run_dir / CONNECT_FILE, layout.scratch, launch,
                                                     spec.pass_env, private),
                            private_network=private, private_pids=True,
                            timeout_s=spec.timeout_s, status_file=run_dir / SUPERVISOR_STATUS,
                            cwd=layout.scratch)
    interrupted = stopped_at_cap = False
    try:
        supervisor.start()
        server.admit_tree(supervisor.pid)
        try:
            # Evaluation needs torch in this process; importing it while the method's process starts up
            # overlaps the two imports instead of putting one after the other.
            import harness.eval.evaluation  # noqa: F401
            if on_started is not None:
                on_started()
            with WARNING.armed() as warning:
                stopped_at_cap = _wait_watching_server(supervisor, server, warning)
            result = supervisor.wait()
            if launch.nnodes > 1:
                _wait_for_other_nodes(server)
        except _Signals.Received:
            interrupted = True
            server.processes_stopping()
            if launch.nnodes > 1:  # the other nodes' runners stop their ranks when they see it (join_run)
                write_text_atomic(run_dir / STOP_FILE, json.dumps({"rank": None, "status": "interrupted"}))
            result = supervisor.terminate()
    except BaseException:
        server.processes_stopping()
        if supervisor.started:  # (one that never started has nothing to stop)
            try:
                supervisor.terminate()
            except Exception as exc:  # the error being raised is the one that counts; this one is said
                print(f"slowrun: stopping the method's processes failed too ({type(exc).__name__}: {exc})",
                      file=sys.stderr)
        server.stop()
        for name in (SERVER_FILE, CONNECT_FILE):
            (run_dir / name).unlink(missing_ok=True)
        raise
    server.stop()
    for name in (SERVER_FILE, CONNECT_FILE):
        (run_dir / name).unlink(missing_ok=True)
    server.record_session()
    outcome = server.outcome(asdict(result), stopped_at_cap=stopped_at_cap, interrupted=interrupted)
    if interrupted and WARNING.result is not None and (outcome.error or {}).get("type") == "Interrupted":
        outcome = dataclasses.replace(outcome, error=preempted_error(WARNING.result))
    _write_json(run_dir / TRAIN_RESULT, outcome.to_dict())
    return outcome, interrupted


def _warn_if_root() -> None:
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        print("slowrun: WARNING: running as root. The method's processes drop every capability and run under "
              "Landlock, but keep uid 0: files that root owns and Landlock does not cover stay theirs to read. "
              "Run slowrun as an unprivileged user where you can.", file=sys.stderr)


def _wait_watching_server(supervisor, server, warning: SchedulerWarning | None = None, poll_s: float = 0.1) -> bool:
    """Wait for the method's processes, stopping them at once when the data server says the job must end:
    a rank failed or broke the protocol (its peers may be waiting for it in a collective, for ever), or
    they train past the cap and its grace (a method that ignores TimeExhausted and trains on data it
    kept). True when they were stopped at the cap.

    After the scheduler's warning (harness/run/preemption.py) it asks the ranks for a checkpoint and, once
    every rank has one or the wait runs out, interrupts the run as a signal would."""
    asked = False  # whether the ranks were asked for a checkpoint
    while supervisor.running():
        if warning is not None and warning.asked:
            if not asked:
                server.request_checkpoint()
                asked = True
            settled = server.checkpoints_settled()
            if settled or warning.past_deadline():
                warning.result = {**server.checkpoint_request_summary(), "settled": settled,
                                  "waited_s": round(warning.waited_s(), 3)}
                raise _Signals.Received(signal.SIGUSR1)
        if server.stop_requested.wait(poll_s):
            # A rank that died takes its process tree down by itself a moment later, and the supervisor's
            # account of it (killed by which signal) says more than a stop would: let it end first, then
            # stop whatever is still waiting (peers blocked in a collective).
            deadline = time.monotonic() + STOP_GRACE_S
            while supervisor.running() and time.monotonic() < deadline:
                time.sleep(0.05)
            server.processes_stopping()
            if supervisor.running():
                supervisor.terminate()
            return False
        if server.past_deadline():
            server.clock.note_over_cap()
            server.processes_stopping()
            supervisor.terminate()
            return True
    return False


def _wait_for_other_nodes(server, poll_s: float = 0.2) -> None:
    """Node 0's processes have ended; the other nodes' ranks end at about the same time (they step
    together), and their outcome is the server's to record, so wait for them (at most JOIN_WAIT_S)."""
    deadline = time.monotonic() + JOIN_WAIT_S
    while not server.ranks_done() and time.monotonic() < deadline:
        time.sleep(poll_s)


def join_run(req: RunRequest) -> Path:
    """Node `node_rank` > 0 of a multi-node job: start this node's ranks against node 0's data server.

    Node 0 (`slowrun run ... --node-rank 0 --out RUN_DIR`) prepares the run, holds the data, the meter and
    the records, and writes the server's TCP address and the run's token into RUN_DIR/server.json; the
    other nodes are given the same RUN_DIR on a shared file system, wait for that file, and run their
    ranks under their own supervisor. They never read the data: every batch comes from node 0's server."""
    from harness.sandbox.supervisor import Supervisor

    if req.out is None:
        raise SlowrunError("a node other than node 0 needs --out RUN_DIR: the run folder node 0 was given, on a "
                           "file system every node shares")
    run_dir = Path(req.out).resolve()
    server_file = run_dir / SERVER_FILE
    open_gpus_or_warn(req.device)  # before this node's ranks are sandboxed (harness/common/gpu_nodes.py)
    deadline = time.monotonic() + JOIN_WAIT_S
    print(f"node {req.launch.node_rank}: waiting for node 0's data server ({server_file})", file=sys.stderr)
    while not server_file.exists():
        if time.monotonic() > deadline:
            raise SlowrunError(f"{server_file} did not appear within {JOIN_WAIT_S:.0f} s: start node 0 with the "
                               "same --out, --nnodes and --master-addr first")
        time.sleep(0.5)
    spec = read_run_spec(run_dir)
    planned = spec.launch_spec
    if (planned.nnodes, planned.nproc_per_node) != (req.launch.nnodes, req.launch.nproc_per_node):
        raise SlowrunError(f"node 0 started {planned.nnodes} node(s) x {planned.nproc_per_node} process(es); this "
                           f"node was given {req.launch.nnodes} x {req.launch.nproc_per_node}")
    layout = RunLayout(run_dir)
    command = req.launch.torchrun_command("harness.confined.method_process", [])
    supervisor = Supervisor(command, env=_worker_env(server_file, layout.scratch, req.launch, spec.pass_env),
                            private_pids=True, timeout_s=spec.timeout_s,
                            status_file=run_dir / f"supervisor-node{req.launch.node_rank}.json", cwd=layout.scratch)
    stop_file = run_dir / STOP_FILE
    with _Signals():
        supervisor.start()
        try:
            while supervisor.running():  # node 0 stops the job (a rank failed): this node's ranks stop too
                if stop_file.exists():
                    print(f"node {req.launch.node_rank}: node 0 stopped the job ({stop_file}); stopping this "
                          "node's ranks", file=sys.stderr)
                    supervisor.terminate()
                    break
                time.sleep(0.2)
            result = supervisor.wait()
        except _Signals.Received:
            result = supervisor.terminate()
            raise RunInterrupted(f"node {req.launch.node_rank}: interrupted; its processes were stopped") from None
    print(f"node {req.launch.node_rank}: its ranks ended ({result.reason}, exit code {result.exit_code}); node 0 "
          f"writes the record in {run_dir}", file=sys.stderr)
    return run_dir


def run_method(req: RunRequest) -> Path:
    if req.launch.nnodes > 1 and req.launch.node_rank > 0:
        return join_run(req)
    run_dir = prepare_run(req)
    print(f"run folder: {run_dir}", file=sys.stderr)
    _train_and_finish(run_dir, resume=False, progress=req.progress)
    return run_dir


def run_state(run_dir: Path) -> str:
    """'new' (prepared, never started), 'started' (to resume: it was interrupted, or died without a record)
    or 'final' (its record is final)."""
    run_dir = Path(run_dir)
    record_path = run_dir / RECORD
    if record_path.exists():
        record = json.loads(record_path.read_text(encoding="utf-8"))
        return "started" if (record.get("error") or {}).get("type") == "Interrupted" else "final"
    if any((run_dir / name).exists() for name in ("metrics.jsonl", "checkpoint", "snapshots")):
        return "started"
    return "new"


def run_or_resume(req: RunRequest) -> Path:
    """`slowrun run DIR --out RUN_DIR --resume auto`: one command for every start of a job. It starts the run
    in a new RUN_DIR, resumes it where an earlier start was interrupted (or killed), trains it where it was
    only prepared, and leaves a finished one as it is; so a scheduler's script may simply run it again after
    a requeue, a pre-emption or a node failure. RUN_DIR must hold this very run (method, track, budget, seed,
    hyperparameters): continuing another one under this command line would record what was not asked for."""
    if req.out is None:
        raise SlowrunError("--resume auto needs --out RUN_DIR: the folder that every start of the run shares")
    if req.launch.nnodes > 1 and req.launch.node_rank > 0:
        return join_run(req)  # another node: node 0 decides whether the run starts, resumes or is finished
    run_dir = Path(req.out)
    if not (run_dir / RUN_SPEC).exists():
        return run_method(req)
    _check_same_run(run_dir, req)
    state = run_state(run_dir)
    if state == "final":
        print(f"slowrun: {run_dir} is finished (its record is final); nothing to do", file=sys.stderr)
        return run_dir
    print(f"run folder: {run_dir} ({'resumed' if state == 'started' else 'prepared earlier'})", file=sys.stderr)
    _train_and_finish(run_dir, resume=state == "started", progress=req.progress)
    return run_dir


def _check_same_run(run_dir: Path, req: RunRequest) -> None:
    spec = read_run_spec(run_dir)
    method, problems = read_method(req.method_dir, req.track_files)
    if problems:
        raise MethodError(Path(req.method_dir), problems)
    track = req.track_spec or get_track(req.track, req.track_files)
    asked = {"method": method_hash(method.folder), "track": track.name, "epochs": float(req.epochs),
             "seed": int(req.seed), "hyperparameters": method.resolved_hparams(track.name, dict(req.overrides))}
    held = {"method": spec.method.get("hash"), "track": spec.track.get("name"), "epochs": spec.budget,
            "seed": spec.seed, "hyperparameters": as_json(spec.hparams)}
    differ = [key for key in asked if as_json(asked[key]) != held[key]]
    if differ:
        raise SlowrunError(f"{run_dir} holds another run (its {', '.join(differ)} "
                           f"{'differ' if len(differ) > 1 else 'differs'} from this command's); "
                           "--resume auto continues only the same run: choose another --out")


def open_run_tracking(spec: RunSpec, run_dir: Path):
    """The run's trackers (none unless it was started with --wandb or --tensorboard), configured with what
    the run is: method, track, budget, seed, hyperparameters."""
    config = {"run_id": spec.run_id, "method": spec.method.get("name"), "method_hash": spec.method.get("hash"),
              "track": spec.track.get("name"), "budget_epochs": spec.budget, "seed": spec.seed,
              "compute_class": spec.compute_class, "hparams": as_json(spec.hparams)}
    return open_tracking(TrackingOptions.from_json(spec.tracking), run_dir, config)


def _train_and_finish(run_dir: Path, resume: bool, progress: bool) -> dict:
    """Train, evaluate, record. SIGTERM or SIGINT at any point stops the method's processes (or the
    evaluation) and still writes a record, then raises RunInterrupted."""
    started = time.monotonic()
    spec = read_run_spec(run_dir)
    tracking = open_run_tracking(spec, run_dir)
    try:
        return _train_and_record(run_dir, spec, resume, progress, started, tracking)
    finally:
        tracking.close()


def _train_and_record(run_dir: Path, spec: RunSpec, resume: bool, progress: bool, started: float, tracking) -> dict:
    first_worker = []

    def start_first_worker():
        """The first evaluation worker starts (Python, torch) while the method trains, off evaluation's clock."""
        from harness.eval.evaluation import start_worker

        try:
            first_worker.append(start_worker(spec.device, spec.vocab_size, method_dir=Path(spec.method_dir),
                                             builder_roots=_builder_roots(spec)))
        except Exception as exc:  # evaluation starts its own workers; this one is only a head start
            print(f"slowrun: the first evaluation worker did not start ahead ({type(exc).__name__}: {exc}); "
                  "evaluation will start its own", file=sys.stderr)

    def close_first_worker():
        for worker in first_worker:
            worker.close()
        first_worker.clear()

    with _Signals():
        try:
            outcome, interrupted = train(run_dir, resume=resume, progress=progress,
                                         on_started=lambda: (tracking.follow(), start_first_worker()))
            tracking.stop_following()
            train_result = outcome.to_dict()
        except BaseException as exc:
            close_first_worker()
            if isinstance(exc, (_Signals.Received, KeyboardInterrupt)) or not isinstance(exc, Exception):
                raise
            import traceback  # the harness itself failed (bad data folder, no sandbox tools): still a record

            finish_run(run_dir, _harness_failure(exc, traceback.format_exc(), resume), wall_s=time.monotonic() - started,
                       progress=progress, evaluate=False, tracking=tracking)
            raise
        record = None
        if interrupted:
            close_first_worker()
        else:
            try:
                record = finish_run(run_dir, train_result, wall_s=time.monotonic() - started, progress=progress,
                                    first_worker=first_worker[0] if first_worker else None, tracking=tracking)
            except _Signals.Received:
                interrupted = True
                train_result = {**train_result, "status": "failed", "error": {
                    "type": "Interrupted", "message": "interrupted during evaluation; slowrun eval RUN_DIR evaluates "
                    "the snapshots again", "traceback": ""}}
        if record is None:
            record = finish_run(run_dir, train_result, wall_s=time.monotonic() - started, progress=progress,
                                evaluate=False, tracking=tracking)
    if interrupted:
        raise RunInterrupted(f"interrupted: the method's processes were stopped and {run_dir / RECORD} records "
                             f"status {record['status']}; continue with slowrun run --resume {run_dir}")
    return record


def train_prepared(run_dir: Path, progress: bool = True) -> Path:
    """Train, evaluate and record a run folder that prepare_run made (a scheduler's job runs this on the
    compute node; the folder was prepared where the job was submitted)."""
    _train_and_finish(Path(run_dir), resume=False, progress=progress)
    return Path(run_dir)


def _harness_failure(exc: BaseException, tb: str, resume: bool) -> dict:
    return {"status": "failed", "error": {"type": "HarnessError", "message": f"the harness could not train this run: "
                                          f"{type(exc).__name__}: {exc}", "traceback": tb},
            "meter": {"targets": {}, "windows": {}, "fitness_tokens": 0}, "epochs": 0.0, "epoch_tokens": None,
            "train_tokens": 0, "ensemble": None, "snapshots": [], "train_s": 0.0, "resumed": resume,
            "sandbox": {"kind": "none", "reason": "training never started"}}


def resume_run(run_dir: Path, progress: bool = True) -> Path:
    run_dir = Path(run_dir)
    read_run_spec(run_dir)  # a clear error before anything of the folder is touched
    (run_dir / TRAIN_RESULT).unlink(missing_ok=True)
    (run_dir / RECORD).unlink(missing_ok=True)
    _train_and_finish(run_dir, resume=True, progress=progress)
    return run_dir


def evaluate_existing(run_dir: Path, progress: bool = True, downstream: bool | None = None,
                      downstream_data: Path | None = None, downstream_limit: DocumentLimits | int | None = None,
                      gpt2_ranks: Path | None = None, downstream_files: tuple[SplitFile, ...] = (),
                      eval_dtype: str | None = None, eval_workers: int | None = None,
                      eval_timeout_s: float | None = None, eval_graphs: bool | None = None) -> Path:
    """Recompute the evaluation and rewrite the record from the snapshots, without re-training.

    `downstream=True` (with optional local data and a document limit) adds or refreshes the downstream
    scores; None keeps whatever the run was started with."""
    run_dir = Path(run_dir)
    if not (run_dir / TRAIN_RESULT).exists():
        raise SlowrunError(f"{run_dir}: no {TRAIN_RESULT}; the run never finished training (use --resume)")
    spec = read_run_spec(run_dir)
    changes = {}
    if eval_graphs is not None:
        changes["eval_graphs"] = bool(eval_graphs)
    if eval_timeout_s:
        changes["eval_timeout_s"] = _eval_timeout(eval_timeout_s)
    if eval_dtype:
        changes["eval_dtype"] = eval_dtype
    if eval_workers:
        changes["eval_workers"] = eval_workers
    if downstream is not None:
        changes["downstream"] = downstream_spec(downstream, downstream_data, downstream_files, downstream_limit)
    if gpt2_ranks is not None:
        changes["gpt2_ranks"] = str(Path(gpt2_ranks).resolve())
    if changes:
        spec = spec.replace(**changes)
        write_run_spec(run_dir, spec)
    train_result = json.loads((run_dir / TRAIN_RESULT).read_text(encoding="utf-8"))
    open_gpus_or_warn(spec.device)
    tracking = open_run_tracking(spec, run_dir)
    try:
        finish_run(run_dir, train_result, wall_s=None, progress=progress, tracking=tracking)
    finally:
        tracking.close()
    return run_dir


def downstream_spec(enabled: bool, data_dir: Path | None, files, limit) -> dict:
    """The run spec's downstream options: paths made absolute, limits in their JSON form."""
    from harness.eval.downstream.limits import DocumentLimits
    from harness.eval.downstream.splits import SplitFile

    return {"enabled": enabled, "data_dir": str(Path(data_dir).resolve()) if data_dir else None,
            "files": [SplitFile(f.task, f.split, Path(f.path).resolve()).to_json() for f in files],
            "limit": DocumentLimits.of(limit).to_json()}


def downstream_gpt2_ranks(spec: RunSpec) -> str | None:
    """The GPT-2 ranks file scoring uses: --gpt2-ranks of `slowrun run`/`eval`, else the track's own
    `ranks_path` (what preparing it used), else None ($SLOWRUN_GPT2_RANKS, then tiktoken's cache)."""
    return spec.gpt2_ranks or (spec.track.get("tokenizer") or {}).get("ranks_path")


def score_final_predictor(run_dir: Path, spec: RunSpec, evaluation: dict, progress: bool) -> tuple[dict | None, str | None]:
    """Downstream scores of the run's final ensemble, or (None, why not)."""
    from harness.eval.downstream import DownstreamNotApplicable, score_snapshots, track_tokenizer
    from harness.eval.downstream.splits import DownstreamData, SplitFile
    from harness.formats.snapshots import list_snapshots

    options = as_json(spec.downstream) or {}
    if not options.get("enabled") or not evaluation["ensemble"]["members"]:
        return None, None
    try:
        tokenizer, seq_len = track_tokenizer(Path(spec.data_dir), downstream_gpt2_ranks(spec))
    except DownstreamNotApplicable as exc:
        return None, str(exc)
    by_tag = {s.tag: s for s in list_snapshots(run_dir / "snapshots")}
    members = evaluation["ensemble"]["members"]
    scores = score_snapshots([by_tag[m["tag"]] for m in members], [m["weight"] for m in members],
                             tokenizer=tokenizer, seq_len=seq_len, device=spec.device,
                             method_dir=Path(spec.method_dir), builder_roots=_builder_roots(spec),
                             data_dir=DownstreamData(Path(options["data_dir"]) if options.get("data_dir") else None,
                                                     tuple(SplitFile.from_json(f) for f in options.get("files", ()))),
                             limit=options.get("limit"), progress=progress)
    return scores, None


def finish_run(run_dir: Path, train: dict, wall_s: float | None, progress: bool, evaluate: bool = True,
               first_worker=None, tracking=None) -> dict:
    """Evaluate the run's snapshots and write its record; whatever goes wrong, a record is written.

    `evaluate=False` (an interrupted run) records the training outcome without scoring anything."""
    spec = read_run_spec(run_dir)
    track = spec.track_spec
    eval_started = time.monotonic()
    evaluation, downstream, downstream_note = EMPTY_EVALUATION, None, None
    if evaluate:
        try:
            from harness.eval.evaluation import evaluate_run

            evaluation = evaluate_run(run_dir, Path(spec.data_dir), track.seq_len, train.get("ensemble"),
                                      track.reference_curve, evaluation_options(spec, progress),
                                      first_worker=first_worker, fitness_docs=spec.fitness_docs)
            downstream, downstream_note = score_final_predictor(run_dir, spec, evaluation, progress)
        except Exception as exc:  # the record says what failed instead of there being no record
            import traceback

            train = {**train, "status": "failed", "error": {
                "type": "EvaluationFailed", "message": f"evaluation failed: {type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc()}}
            evaluation = EMPTY_EVALUATION
    eval_s = time.monotonic() - eval_started
    record = assemble_record(spec, run_dir, train, evaluation, eval_s, wall_s, downstream, downstream_note)
    write_record_atomic(run_dir / RECORD, record)
    if tracking is not None:
        tracking.publish(record)
    print_summary(run_dir / RECORD, record)
    return record


def evaluation_options(spec: RunSpec, progress: bool):
    """How the run's snapshots are scored: its device (every one of the job's GPUs at once), dtype, batch,
    limits and builders, as the run was started (or `slowrun eval` changed them)."""
    from harness.eval.evaluation import EvaluationOptions, eval_devices

    return EvaluationOptions(batch_size=int(spec.eval_batch_size), device=spec.device,
                             devices=eval_devices(spec.device, int(spec.eval_workers)), eval_dtype=spec.eval_dtype,
                             graphs=bool(spec.eval_graphs), eval_timeout_s=spec.eval_timeout_s,
                             method_dir=Path(spec.method_dir), builder_roots=_builder_roots(spec), progress=progress)


