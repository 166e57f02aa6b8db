"""The data server: meter, clock, snapshot intake, checkpoints and metrics, out of the method's reach.

It runs as threads in the runner's process and listens on a socket that only the harness's worker code
connects to, before that code sandboxes itself and imports the method. Every rank of a job has one
connection. A connection first says `hello` with the run's token and its rank; after that each request
is one message and one reply, handled in the order sent (a log line may ask for no reply: the method
does not wait for it, and it is still written before the next request is handled). What the method receives is exactly what was metered: a training batch is
charged before its bytes are sent, and a refused batch is never sent.

Everything a record says about training (epochs, per-stream counts, snapshot stamps, the ensemble, the
status) is taken from this server's own state. What the method writes into its outbox (snapshot
weights, checkpoint payloads) is moved into harness storage and hashed here; nothing the method wrote
anywhere else is read back, and nothing it wrote is ever unpickled in the harness.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import socket
import sys
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.common.atomic import write_json_atomic
from harness.data.store import TokenStore
from harness.errors import BudgetExhausted, RequestError, SlowrunError, TimeExhausted
from harness.formats.run_folder import SESSIONS, STOP_FILE, RunLayout
from harness.formats.snapshots import MAX_SNAPSHOT_BYTES, SPEC, TAG_PATTERN, WEIGHTS, list_snapshots, sha256_file
from harness.rules.tracks import Track
from harness.server.checkpoint_sets import consistent_checkpoints, ledger_state
from harness.server.clock import TrainClock
from harness.server.intake import (BUILDER_PATTERN, OUTBOX_NAME, check_safetensors, finite_json, is_torch_save,
                                   outbox_file, take, take_graph)
from harness.server.ledger import Ledger, StreamRefused
from harness.server.meter import StreamReader
from harness.server.outcome import (SEVERITY, STOPS_THE_JOB, EndFacts, RankState, TrainOutcome, job_sandbox, job_status,
                                    method_error, run_error)
from harness.server.peers import in_tree, peer_pid
from harness.wire.framing import Channel, ChannelClosed, FrameRefused
from harness.wire.limits import DEFAULT_LIMITS, ProtocolLimits, ProtocolViolation, check_metrics

MAX_BATCHES_PER_REQUEST = 4096  # a whole optimizer step's microbatches in one round trip, with room to spare
# A Unix connection that arrives before the runner has named the run's process tree waits this long for it
# (the supervisor starts within a second; its ranks import torch before they connect).
TREE_WAIT_S = 60.0


@dataclass(frozen=True)
class ServerSpec:
    """What the server needs to know about the run (from run.json); the method sees `public()` only."""

    run_dir: Path
    data_dir: Path
    track: Track
    budget: float
    seed: int
    hparams: dict
    device: str
    method_dir: Path
    entry: str
    fitness_docs: int
    world_size: int = 1
    resume: bool = False
    progress: bool = True
    sandbox_read_only: tuple[str, ...] = ()  # beyond the Python installation: the method dir, --allow-read
    sandbox_list_only: tuple[str, ...] = ()
    max_snapshot_bytes: int = MAX_SNAPSHOT_BYTES
    # Every snapshot is evaluated, so their number bounds the evaluation: PR #90's q0 took 480; 4,096 leaves
    # room for any sweep while keeping a method from asking for unbounded evaluation (`--max-snapshots`).
    max_snapshots: int = 4096
    eval_batch_size: int = 16  # the batch snapshots' graphs are exported at (told to the method)
    time_limit_s: float | None = None  # the compute class's cap on training seconds (None: no cap)
    snapshot_grace_s: float = 0.0  # after the cap: time to write the final snapshot of the model at the cap
    limits: ProtocolLimits = DEFAULT_LIMITS


class DataServer:
    """Serve one run's training data to its ranks, and keep every number the record will carry."""

    def __init__(self, spec: ServerSpec):
        self.spec = spec
        self.layout = RunLayout(Path(spec.run_dir).resolve())  # absolute: the sandbox's rules need it
        for folder in (self.layout.snapshots, self.layout.checkpoints, self.layout.scratch, self.layout.outbox):
            folder.mkdir(parents=True, exist_ok=True)
        store = TokenStore.open(spec.data_dir, "train")
        self._fitness = store.documents(0, spec.fitness_docs) if spec.fitness_docs else None
        self._train = store.documents(spec.fitness_docs)
        self.epoch_tokens = self._train.n_tokens
        self.token = secrets.token_hex(24)
        self._lock = threading.RLock()
        self._ranks: dict[int, RankState] = {}
        self._readers: dict[str, StreamReader] = {}
        self._restored: dict[int, dict] = {}
        self.ensemble: Any = None
        self._diverged: dict | None = None
        self._violation: dict | None = None
        self._stop: dict | None = None  # why the job must be stopped now: {"rank", "status", "error"}
        self._incidents: list[dict] = []
        self._gathers: dict[str, dict[int, Any]] = {}  # the values of exchanges some rank has yet to read
        self._gather_readers: dict[str, set[int]] = {}  # per key, the ranks that have read its values
        self._gathers_done: set[str] = set()  # keys every rank has read: names only, a key is used once
        self._gathered = threading.Condition(self._lock)
        self._in_gather: set[int] = set()  # ranks waiting here for their peers: idle, nothing to checkpoint
        self._checkpoint_request: dict | None = None  # see request_checkpoint
        self.stop_requested = threading.Event()
        self._released = threading.Event()  # set when the job stops: ends the wait of held ranks (`_hold`)
        self._previous_train_s = 0.0
        if spec.resume:
            self._restore()
        else:
            self._clear_outbox()
        self.clock = TrainClock(spec.time_limit_s, spec.snapshot_grace_s, self._previous_train_s)
        self._allowed = int(np.floor(spec.budget * self.epoch_tokens + 1e-6))
        self.ledger = Ledger(self._allowed, self.epoch_tokens, spec.track.seq_len, spec.world_size, spec.budget,
                             self.clock)
        for rank, index in self._restored.items():
            self.ledger.restore(rank, ledger_state(index))
        initial = self.ledger.served_targets()
        self._progress = _Progress(self._allowed, initial, self.epoch_tokens, f"train {spec.track.name}",
                                   spec.progress)
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._channels: list[Channel] = []
        self._closing = False
        self._stopping = False  # the runner is stopping the method's processes: lost connections are expected
        self._snapshot_count = len(list_snapshots(self.layout.snapshots))  # after a resume's roll-back
        self._pending_tags: set[str] = set()  # snapshots being taken in (outside the lock): their tags are held
        self._tree_only = False  # serve Unix connections only from the process tree of `admit_tree`
        self._tree_root: int | None = None
        self._tree_named = threading.Event()

    # ---- lifecycle --------------------------------------------------------------------------------
    def start(self, tcp_port: int | None = None, tcp_host: str = "0.0.0.0", *, tree_only: bool = False) -> str:
        """Listen, and return the address this node's workers connect to (a Unix socket file).

        `tcp_port` also listens on TCP, for the ranks of the other nodes of a multi-node job: they cannot
        reach a Unix socket of this machine. A connection is served only after its hello names the run's
        token (48 hex digits, compared in constant time), whichever way it came in. With `tree_only`, a
        Unix connection is served only if the process that made it is in the tree named by
        `admit_tree` (see harness/server/peers.py); it waits for that name up to TREE_WAIT_S."""
        self._tree_only = tree_only
        # A socket file in a private folder, not an abstract socket: abstract sockets belong to a network
        # namespace, and the ranks run in a network of their own (only loopback); a socket file is reached
        # through the file system, so they find it there. The token still guards it.
        import tempfile

        self._socket_dir = Path(tempfile.mkdtemp(prefix="slowrun-server-"))
        name = str(self._socket_dir / "s")
        address = "unix:" + name
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(name)
        listener.listen(max(8, self.spec.world_size * 2))
        self._listener = listener
        self._listeners = [listener]
        if tcp_port is not None:
            tcp = socket.create_server((tcp_host, tcp_port), backlog=max(8, self.spec.world_size * 2),
                                       reuse_port=False)
            self._listeners.append(tcp)
        for sock in self._listeners:
            thread = threading.Thread(target=self._accept_loop, args=(sock,), name="slowrun-server", daemon=True)
            thread.start()
            self._threads.append(thread)
        self.address = address
        return address

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._closing:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            if conn.family != socket.AF_UNIX:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one request, one reply: no delay
            thread = threading.Thread(target=self._serve, args=(conn,), name="slowrun-rank", daemon=True)
            thread.start()
            self._threads.append(thread)

    def admit_tree(self, root: int) -> None:
        """Serve Unix connections from `root` (the method's supervisor) and its descendants only."""
        self._tree_root = int(root)
        self._tree_named.set()

    def _peer_refused(self, sock: socket.socket) -> bool:
        """Whether a Unix connection comes from outside the run's process tree (then it is recorded)."""
        if not self._tree_only or sock.family != socket.AF_UNIX:
            return False
        pid = peer_pid(sock)
        if not self._tree_named.wait(TREE_WAIT_S) or self._tree_root is None:
            reason = "the runner named no process tree to serve"
        elif pid is None:
            reason = "the kernel did not say which process connected"
        elif in_tree(pid, self._tree_root):
            return False
        else:
            reason = f"process {pid} is not one of this run's processes (the tree of {self._tree_root})"
        self._incident("connection-refused", None, f"a connection on the server's socket was closed unread: {reason}")
        return True

    def stop(self) -> None:
        self._closing = True
        self._released.set()
        self._tree_named.set()  # a connection waiting for the tree's name ends now
        self.clock.stop()
        for listener in getattr(self, "_listeners", []):
            try:  # shutdown wakes the accept() blocked in the server thread; close alone does not on Linux
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                listener.close()
            except OSError:
                pass
        for channel in list(self._channels):
            try:
                channel.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            channel.close()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=5)
        if getattr(self, "_socket_dir", None) is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        self._progress.close()

    # ---- one connection -----------------------------------------------------------------------------
    def _serve(self, sock: socket.socket) -> None:
        if self._peer_refused(sock):
            sock.close()
            return
        channel = Channel(sock)
        self._channels.append(channel)
        limits = self.spec.limits
        rank = None
        ended = False
        try:
            header, _ = channel.recv(limits.small_header, limits.max_payload)
            rank = self._hello(channel, header)
            if rank is None:
                return
            while True:
                header, payload = channel.recv(limits.max_header, limits.max_payload)
                op = header.get("op")
                if channel.last_header_size > limits.header_limit(op):
                    raise FrameRefused(f"a {channel.last_header_size:,}-byte {op!r} request (the limit for it is "
                                       f"{limits.header_limit(op):,} bytes)")
                stop = self._stop
                if stop is not None:  # the job is being stopped: nobody is served anything more
                    channel.send({"ok": False, "error": run_error("ContractError", f"the run is stopped: rank "
                                                               f"{stop['rank']} ended with status {stop['status']}")})
                    return
                handler = self._HANDLERS.get(op)
                if handler is None:
                    channel.send({"ok": False, "error": run_error("ContractError", f"unknown request {op!r}")})
                    continue
                quiet = op in self._NO_REPLY and header.get("reply") is False
                try:
                    reply = handler(self, rank, header, payload)
                except BudgetExhausted as exc:  # TimeExhausted too
                    channel.send({"ok": False, "error": run_error(type(exc).__name__, str(exc))})
                    continue
                except ProtocolViolation:
                    raise
                except (RequestError, SlowrunError) as exc:
                    if not quiet:
                        channel.send({"ok": False, "error": run_error(_kind(exc), str(exc))})
                    continue
                if quiet:
                    continue  # handled in order like any request; the sender is not waiting for an answer
                if isinstance(reply, tuple):
                    channel.send(*reply)
                else:
                    channel.send(reply)
                if op == "end":
                    ended = True
                    return
                if op == "checkpoint" and reply.get("hold"):
                    self._hold(rank)
                    return
        except (FrameRefused, ProtocolViolation) as exc:
            if rank is not None:
                self._violate(rank, str(exc))
                try:
                    channel.send({"ok": False, "error": run_error("ProtocolViolation", str(exc))})
                except OSError:
                    pass
        except (ChannelClosed, OSError):
            return
        except Exception:  # a bug here must not take the runner down; the rank ends as failed
            if rank is not None:
                self._rank_ended(rank, "failed", run_error("HarnessError", "the data server failed serving this rank",
                                                        traceback.format_exc()))
        finally:
            if rank is not None:
                with self._lock:
                    self._ranks[rank].connected = False
                    state = self._ranks[rank]
                    if not ended and not state.ended and not self._closing and not self._stopping:
                        # its process died or closed the channel without ending: its peers would wait for it
                        self._request_stop(rank, "failed", run_error(
                            "WorkerDied", "the method's process lost its connection to the data server before "
                            "reporting (killed, out of memory, a crash in native code, or it closed the channel)"))
                    self._gathered.notify_all()
            channel.close()

    def _hold(self, rank: int) -> None:
        """Serve this rank nothing more, until the runner stops the job: its checkpoint answered the scheduler's
        warning, and the run resumes from it.

        The client waits on its own after `hold`, but the client is the method's code: one that leaves the wait
        would otherwise be served batches until the runner stops it (in a DDP group, until the slowest rank
        checkpoints), and could keep what it made of them where a resume does not look. So the server stops
        reading the rank's channel here: a request it sends is never answered. The channel stays open, so the
        rank is not taken for a dead one; the job's stop (`processes_stopping`, `stop`, or another rank's
        failure) ends the wait."""
        while not (self._closing or self._stopping or self._stop is not None):
            self._released.wait(timeout=1.0)

    def _violate(self, rank: int, message: str) -> None:
        """A request broke the protocol's bounds: the run is invalid, and the job is stopped."""
        error = run_error("ProtocolViolation", f"{message}; the run is stopped (see docs/threat-model.md, "
                                            "'Protocol bounds')")
        with self._lock:
            if self._violation is None:  # the run's, even if this rank had already ended ok
                prefix = f"rank {rank}: " if self.spec.world_size > 1 else ""
                self._violation = {**error, "message": prefix + error["message"]}
            self._incident("violation", rank, message)
            self._rank_ended(rank, "invalid", error)

    def _rank_ended(self, rank: int, status: str, error: dict | None) -> None:
        """A rank's end, as the server knows it; a rank that failed stops the whole job at once (its peers
        may be waiting for it in a collective, and nothing they do after can change the outcome)."""
        with self._lock:
            state = self._ranks[rank]
            if not state.ended:
                state.ended, state.status, state.error = True, status, error
            if status in STOPS_THE_JOB:
                self._request_stop(rank, status, error)
            if len(self._ranks) == self.spec.world_size and all(r.ended for r in self._ranks.values()):
                self.clock.stop()  # training ends with the last rank; tearing down is not training
            self._gathered.notify_all()

    def _request_stop(self, rank: int, status: str, error: dict | None) -> None:
        with self._lock:
            if self._stop is None:
                self._stop = {"rank": rank, "status": status, "error": error}
                self._incident("stopped", rank, f"rank {rank} ended with status {status}: the job is stopped")
                if self.spec.world_size > 1:
                    try:  # the other nodes' runners stop their ranks when they see it (a shared run folder)
                        write_json_atomic(self.layout.root / STOP_FILE, self._stop)
                    except OSError as exc:
                        print(f"slowrun: could not write {STOP_FILE}: {exc}", file=sys.stderr)
            self.stop_requested.set()
            self._released.set()

    def _incident(self, kind: str, rank, message: str) -> None:
        with self._lock:
            if len(self._incidents) < 100:
                self._incidents.append({"kind": kind, "rank": rank, "message": message[:500]})
        print(f"slowrun: data server: {kind} (rank {rank}): {message[:500]}", file=sys.stderr)

    def processes_stopping(self) -> None:
        """The runner is about to stop the method's processes (an interruption, the cap, a failed rank):
        the connections that drop now are its doing, not ranks that died."""
        with self._lock:
            self._stopping = True
        self._released.set()

    def stop_reason(self) -> dict | None:
        """Why the job must be stopped now (a rank failed, or broke the protocol), or None."""
        with self._lock:
            return dict(self._stop) if self._stop else None

    def _hello(self, channel: Channel, header: dict) -> int | None:
        if header.get("op") != "hello" or not secrets.compare_digest(str(header.get("token", "")), self.token):
            self._incident("hello-refused", None, f"a connection said {str(header.get('op'))[:20]!r} without the "
                           f"run's token (claimed rank {str(header.get('rank'))[:10]})")
            channel.send({"ok": False, "error": run_error("ContractError", "bad hello")})
            return None
        rank = header.get("rank")
        with self._lock:
            if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < self.spec.world_size:
                channel.send({"ok": False, "error": run_error("ContractError", f"rank {rank!r} is not expected")})
                return None
            if rank in self._ranks:
                # A rank says hello once per session: its counts are the job's ledger's, and a second
                # connection must not look like a fresh rank (nor take over a live one's channel). Only a
                # process holding the run's token can get here, and the harness's worker never says hello
                # twice, so the run is invalid.
                message = (f"a second hello for rank {rank} (pid {str(header.get('pid'))[:20]}) was refused: each "
                           "rank connects once per session")
                self._incident("hello-refused", rank, message)
                channel.send({"ok": False, "error": run_error("ContractError", f"rank {rank} has already connected "
                                                           "in this session; a rank connects once")})
                self._violate(rank, message)
                return None
            state = self._ranks[rank] = RankState()
            state.connected = True
            self.clock.connected()
            restored = self._restored.get(rank)
            state.metrics_lines = restored["metrics_lines"] if restored else 0
            metrics = self.layout.metrics(rank)
            state.metrics_bytes = metrics.stat().st_size if metrics.exists() else 0
            # The method reads its checkpoint where the harness keeps it: that one file is added to its
            # read-only rules. Nothing is copied into scratch, where a link the method planted (at the
            # copy or at its folder) would have turned the harness's write into the method's.
            resume_file = None
            state_name = restored.get("state_file") if restored else None
            if isinstance(state_name, str) and OUTBOX_NAME.match(state_name):
                source = self.layout.checkpoints / state_name
                if source.is_file() and not source.is_symlink():
                    resume_file = str(source)
        spec = self.spec
        channel.send({"ok": True, "run": {
            "track": spec.track.public_dict(),
            "budget": spec.budget, "time_limit_s": spec.time_limit_s, "seed": spec.seed, "hparams": spec.hparams, "device": spec.device,
            "method_dir": str(spec.method_dir), "entry": spec.entry, "epoch_tokens": self.epoch_tokens,
            "seq_len": spec.track.seq_len, "vocab_size": self._train.vocab_size, "bos_id": self._train.bos_id,
            "eval_batch_size": spec.eval_batch_size,
            "has_fitness": self._fitness is not None and self._fitness.num_windows(spec.track.seq_len) > 0,
            "scratch": str(self.layout.scratch), "outbox": str(self.layout.outbox), "resume_file": resume_file,
            "ensemble": self.ensemble, "sandbox": {
                "read_only": list(spec.sandbox_read_only) + ([resume_file] if resume_file else []),
                "read_write": [str(self.layout.scratch), str(self.layout.outbox)],
                "list_only": list(spec.sandbox_list_only)}}})
        return rank

    # ---- requests ---------------------------------------------------------------------------------
    def _op_sandboxed(self, rank: int, header: dict, payload) -> dict:
        """The worker reports the sandbox it entered, before it imports the method (later reports are
        the method's and are ignored)."""
        with self._lock:
            state = self._ranks[rank]
            if state.sandbox is None:
                info = header.get("sandbox")
                state.sandbox = info if isinstance(info, dict) else {"kind": "unknown"}
        return {"ok": True}

    def _op_batch(self, rank: int, header: dict, payload):
        stream_id = header.get("stream")
        if not isinstance(stream_id, str) or not stream_id or len(stream_id) > 200:
            raise RequestError("stream_id must be a non-empty string of at most 200 characters")
        count = header.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_BATCHES_PER_REQUEST:
            raise RequestError(f"a batch request's count must be an integer from 1 to {MAX_BATCHES_PER_REQUEST}, "
                               f"got {count!r}")
        reader = self._readers.get(stream_id)
        arrays = []
        grant = None
        asked = False
        for _ in range(count):
            # one draw per batch, exactly as `count` requests would make them: a refusal after some were
            # granted leaves those charged, as it would have, and raises for the rest
            grant = self.ledger.draw(rank, stream_id, header.get("batch_size"), header.get("shard"))
            if reader is None:  # once per stream; every later batch reads the dict without the lock
                with self._lock:
                    reader = self._readers.setdefault(stream_id, StreamReader(
                        self._train, self.spec.track.seq_len, self.spec.seed, stream_id))
            arrays.append(reader.batch(grant.first_window, grant.windows))
            self._progress.advance(grant.windows * self.spec.track.seq_len)
            asked = asked or grant.checkpoint_requested
        array = arrays[0][None] if count == 1 else np.stack(arrays)  # [count, batch_size, seq_len + 1]
        reply = {"ok": True, "dtype": array.dtype.str, "shape": list(array.shape),
                 "windows_served": grant.windows_served, "epoch": grant.stream_targets / self.epoch_tokens,
                 "total_targets": grant.total_targets}
        if asked:
            reply["checkpoint_requested"] = True
        return reply, array

    def _op_fitness(self, rank: int, header: dict, payload):
        seq_len = self.spec.track.seq_len
        if self._fitness is None or self._fitness.num_windows(seq_len) == 0:
            raise RequestError(f"track {self.spec.track.name!r} carves no fitness documents (fitness_tokens = 0)")
        windows = np.ascontiguousarray(self._fitness.windows(seq_len))
        self.ledger.note_fitness(rank, windows.shape[0] * seq_len)
        return {"ok": True, "dtype": windows.dtype.str, "shape": list(windows.shape)}, windows

    def _op_status(self, rank: int, header: dict, payload) -> dict:
        return {"ok": True, "total_targets": self.ledger.served_targets(), "allowed_targets": self._allowed,
                "train_s": self.clock.seconds(), "time_limit_s": self.spec.time_limit_s}

    def _op_tags(self, rank: int, header: dict, payload) -> dict:
        return {"ok": True, "tags": [s.tag for s in list_snapshots(self.layout.snapshots)]}

    def _op_snapshot(self, rank: int, header: dict, payload) -> dict:
        tag, spec, meta = header.get("tag"), header.get("spec"), header.get("meta") or {}
        if not isinstance(tag, str) or not TAG_PATTERN.match(tag):
            raise RequestError(f"snapshot tag {tag!r} must be 1-100 letters, digits, '.', '_' or '-' (and not "
                               "start with a punctuation mark)")
        if not (isinstance(spec, dict) and isinstance(spec.get("builder"), str)
                and BUILDER_PATTERN.match(spec["builder"]) and "config" in spec):
            raise RequestError("a snapshot's build spec needs builder 'package.module:function' and a JSON config")
        if not isinstance(meta, dict) or not finite_json(meta) or not finite_json(spec["config"]):
            raise RequestError(f"snapshot {tag!r}: meta and config must be JSON with finite numbers")
        path, info = outbox_file(self.layout.outbox, header.get("file"))
        if self.clock.past_grace():
            self.clock.note_over_cap()
            path.unlink(missing_ok=True)
            raise TimeExhausted(f"snapshot {tag!r} arrived {self.clock.seconds():.1f} s into training, past the "
                                f"{self.spec.time_limit_s:g} s cap and its {self.spec.snapshot_grace_s:g} s grace "
                                "for writing the final snapshot; it does not count")
        if info.st_size > self.spec.max_snapshot_bytes:
            raise RequestError(f"snapshot {tag!r} is {info.st_size:,} bytes, over the limit")
        # The count and the tag are reserved under the lock; the heavy part (moving gigabytes, checking the
        # weights and the graph, hashing) runs outside it, so a large snapshot does not hold up the runner's
        # watch (the cap, the scheduler's warning) or the other ranks' requests for as long as it takes.
        with self._lock:
            if self._snapshot_count + len(self._pending_tags) >= self.spec.max_snapshots:
                path.unlink(missing_ok=True)
                raise RequestError(f"snapshot {tag!r} would pass the run's limit of {self.spec.max_snapshots:,} "
                                   "snapshots (every snapshot is evaluated); raise it with slowrun run "
                                   "--max-snapshots N")
            final = self.layout.snapshots / tag
            if final.exists() or tag in self._pending_tags:
                path.unlink(missing_ok=True)
                raise RequestError(f"snapshot tag {tag!r} is already used in this run; tags must be unique")
            self._pending_tags.add(tag)
        tmp = self.layout.snapshots / f".{tag}.tmp-{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
            weights = tmp / WEIGHTS
            info = take(path, info, weights)  # out of the method's reach from here on
            check_safetensors(weights, info.st_size)
            graph = take_graph(self.layout.outbox, header, tmp, self.spec.max_snapshot_bytes)
            targets = self.ledger.served_targets()
            record = {"tag": tag, "epochs": targets / self.epoch_tokens, "train_tokens": targets,
                      "builder": spec["builder"], "config": spec["config"], "meta": meta,
                      "weights_sha256": sha256_file(weights), "weights_bytes": info.st_size,
                      "train_s": self.train_seconds(), "rank": rank, "graph": graph}
            write_json_atomic(tmp / SPEC, record)
            with self._lock:
                os.replace(tmp, final)
                self._snapshot_count += 1
                self._append_metrics(rank, {"event": "snapshot", "tag": tag})
        finally:
            with self._lock:
                self._pending_tags.discard(tag)
            shutil.rmtree(tmp, ignore_errors=True)
        return {"ok": True, "snapshot": {"tag": tag, "epochs": record["epochs"], "train_tokens": targets,
                                         "meta": meta}}

    def _op_ensemble(self, rank: int, header: dict, payload) -> dict:
        weights = header.get("weights")
        if weights == "prior":
            if self._fitness is None:
                raise RequestError('set_ensemble("prior") fits the prior on fitness documents, and this run carves '
                                   "none: declare them in method.toml ([fitness] tokens = N)")
            with self._lock:
                self.ensemble = "prior"
            return {"ok": True}
        self.ensemble_check(weights)
        with self._lock:
            self.ensemble = normalise_weights(weights)
        return {"ok": True}

    def ensemble_check(self, weights) -> None:
        if not isinstance(weights, dict) or not weights:
            raise RequestError('set_ensemble takes {tag: weight} or "prior"')
        known = {s.tag for s in list_snapshots(self.layout.snapshots)}
        unknown = [t for t in weights if t not in known]
        if unknown:
            raise RequestError(f"set_ensemble names unknown snapshot(s) {unknown}; saved: {sorted(known)}")
        normalise_weights(weights)

    def _op_log(self, rank: int, header: dict, payload) -> dict:
        """One metrics line: validated against the protocol's bounds (a violation ends the run), stamped
        with the server's own counts. A loss the method reports as non-finite ends the run as diverged."""
        entry = header.get("entry")
        check = check_metrics(entry, self.spec.limits)
        if check.non_finite_loss is not None:
            key, value = check.non_finite_loss
            with self._lock:
                if self._diverged is None:
                    self._diverged = run_error("Diverged", f"training {key} is {value} after "
                                            f"{self.ledger.served_targets() / self.epoch_tokens:.4f} epochs")
        with self._lock:
            self._append_metrics(rank, entry)
            self._progress.note(entry, self.ledger.served_targets())
        return {"ok": True}

    def _append_metrics(self, rank: int, entry: dict) -> None:
        total = self.ledger.served_targets()
        line = {"tokens": total, "epochs": round(total / self.epoch_tokens, 6)}
        line.update(entry)
        text = json.dumps(line, allow_nan=False) + "\n"
        state = self._ranks[rank]
        if state.metrics_bytes + len(text) > self.spec.limits.max_metrics_bytes:
            raise ProtocolViolation(f"rank {rank}'s metrics would pass {self.spec.limits.max_metrics_bytes:,} bytes; "
                                    "log less often")
        with open(self.layout.metrics(rank), "a", encoding="utf-8") as f:
            f.write(text)
        state.metrics_lines += 1
        state.metrics_bytes += len(text)

    def _op_checkpoint(self, rank: int, header: dict, payload) -> dict:
        """Take the method's state file from the outbox and record the server's own state beside it.

        The index (`checkpoint/rank<r>.json`) is written last and names the state file it belongs to, so
        a crash at any point leaves the previous checkpoint whole."""
        path, info = outbox_file(self.layout.outbox, header.get("file"))
        if info.st_size > self.spec.max_snapshot_bytes:
            path.unlink(missing_ok=True)
            raise RequestError(f"the checkpoint is {info.st_size:,} bytes, over the limit of "
                               f"{self.spec.max_snapshot_bytes:,}")
        with self._lock:
            index_path = self.layout.checkpoint_index(rank)
            previous = json.loads(index_path.read_text()) if index_path.exists() else None
            generation = (previous or {}).get("generation", 0) + 1
            state_name = f"state-rank{rank}-{generation}.pt"
            info = take(path, info, self.layout.checkpoints / state_name)
            if not is_torch_save(self.layout.checkpoints / state_name):
                (self.layout.checkpoints / state_name).unlink(missing_ok=True)
                raise RequestError("the checkpoint is not a file written by torch.save (ctx.checkpoint writes one)")
            index = {"generation": generation, "state_file": state_name,
                     "ledger": self.ledger.rank_state(rank),
                     "snapshots": [s.tag for s in list_snapshots(self.layout.snapshots)],
                     "ensemble": self.ensemble, "metrics_lines": self._ranks[rank].metrics_lines,
                     "train_s": self.train_seconds()}
            # The rank's previous checkpoint stays until the next one: a job killed after one rank of a
            # group checkpointed and before its peer did resumes the ahead rank from it (`_restore`).
            earlier = {k: v for k, v in (previous or {}).items() if k != "previous"} or None
            index["previous"] = earlier
            write_json_atomic(index_path, index)
            dropped = (previous or {}).get("previous") or {}
            if dropped.get("state_file") and dropped["state_file"] not in (state_name, (earlier or {}).get("state_file")):
                (self.layout.checkpoints / dropped["state_file"]).unlink(missing_ok=True)
            if self._checkpoint_request is not None:
                # Asked for: this is where the run resumes. Nothing the rank does after it can count (a
                # resume rolls back to here), so it is told to wait for the runner to stop it.
                self._checkpoint_request["checkpointed"].add(rank)
                return {"ok": True, "hold": True}
        return {"ok": True}

    # ---- a checkpoint on the scheduler's warning -----------------------------------------------------
    def request_checkpoint(self) -> None:
        """Ask every rank to checkpoint now (the scheduler will stop the job soon): the request travels on
        their next batches (the ledger picks the step, the same for every shard of a stream), and a rank's
        checkpoint after it is answered with ``hold``."""
        self.ledger.request_checkpoint()
        with self._lock:
            if self._checkpoint_request is None:
                self._checkpoint_request = {"train_s": self.clock.seconds(), "checkpointed": set()}
                print(f"slowrun: asked every rank for a checkpoint at {self.clock.seconds():.1f} s of training",
                      file=sys.stderr)

    def checkpoints_settled(self) -> bool:
        """Every rank has checkpointed since the request, or has nothing left to checkpoint: it ended, or it
        waits on the server for its peers (``gather``), so stopping the job now loses no work."""
        with self._lock:
            if self._checkpoint_request is None or len(self._ranks) < self.spec.world_size:
                return False
            done = self._checkpoint_request["checkpointed"]
            return all(rank in done or state.ended or rank in self._in_gather
                       for rank, state in self._ranks.items())

    def checkpoint_request_summary(self) -> dict | None:
        """The request as the record tells it: when (training seconds), which ranks checkpointed after it."""
        with self._lock:
            request = self._checkpoint_request
            if request is None:
                return None
            return {"train_s": request["train_s"], "ranks_checkpointed": sorted(request["checkpointed"]),
                    "world_size": self.spec.world_size}

    def _op_end(self, rank: int, header: dict, payload) -> dict:
        status, error = header.get("status"), method_error(header.get("error"))
        if status not in SEVERITY or status == "timeout":
            status, error = "failed", run_error("ContractError", f"the method's process reported status {status!r}")
        self._rank_ended(rank, status, error)
        return {"ok": True}

    def _op_gather(self, rank: int, header: dict, payload) -> dict:
        """Every rank's value for `key`, in rank order, once every rank has given one: a job-wide exchange
        of small JSON values that waits on the server, not in a collective with a timeout, and fails at
        once if a rank ends or dies without taking part (so groups that finish hours apart still meet)."""
        key, value = header.get("key"), header.get("value")
        if not isinstance(key, str) or not 0 < len(key) <= 200:
            raise RequestError("gather takes a key: a string of 1-200 characters")
        if not finite_json(value):
            raise RequestError(f"gather {key!r}: the value must be JSON with finite numbers")
        with self._gathered:
            if key in self._gathers_done or rank in self._gathers.get(key, {}):
                raise RequestError(f"rank {rank} has already given a value for gather {key!r}; use a new key")
            # Every value (up to 1 MiB) stays in the runner until each rank has read it, and then goes: a
            # method that gathers under fresh keys would otherwise grow the runner by a value per request.
            # The finished keys' names are kept, to refuse a second value; their number is bounded too.
            limit = self.spec.limits.max_gather_keys
            if key not in self._gathers and len(self._gathers) + len(self._gathers_done) >= limit:
                raise ProtocolViolation(f"gather {key[:80]!r} would be the run's {limit + 1:,}th gather key; at "
                                        f"most {limit:,} are allowed (gather results once, not every step)")
            values = self._gathers.setdefault(key, {})
            values[rank] = value
            self._gathered.notify_all()
            self._in_gather.add(rank)
            try:
                while len(values) < self.spec.world_size:
                    missing = [r for r in range(self.spec.world_size) if r not in values]
                    gone = [r for r in missing if r in self._ranks and (self._ranks[r].ended or not self._ranks[r].connected)]
                    if gone or self._closing or self._stop is not None:
                        # this exchange can never complete: its values are dropped, not kept for the run
                        del values[rank]
                        if not values:
                            del self._gathers[key]
                        raise RequestError(f"gather {key!r}: rank(s) {gone or missing} ended without taking part")
                    self._gathered.wait(timeout=1.0)
            finally:
                self._in_gather.discard(rank)
            reply = {"ok": True, "values": [values[r] for r in range(self.spec.world_size)]}
            readers = self._gather_readers.setdefault(key, set())
            readers.add(rank)
            if len(readers) == self.spec.world_size:  # the last rank has its copy: nobody reads these again
                del self._gathers[key], self._gather_readers[key]
                self._gathers_done.add(key)
            return reply

    # Requests the client may send without waiting for the answer (`"reply": false`): a log line changes
    # nothing the method reads back, and it is still handled in order, before the next request.
    _NO_REPLY = frozenset({"log"})
    _HANDLERS = {"sandboxed": _op_sandboxed, "batch": _op_batch, "fitness": _op_fitness, "status": _op_status,
                 "tags": _op_tags, "snapshot": _op_snapshot, "ensemble": _op_ensemble, "log": _op_log,
                 "checkpoint": _op_checkpoint, "end": _op_end, "gather": _op_gather}

    # ---- resume -----------------------------------------------------------------------------------
    def _restore(self) -> None:
        """Roll the run back to its ranks' last checkpoints: their meter counts, the snapshots any of
        them had seen, their metrics lines. Snapshots taken after a checkpoint are removed (the resumed
        run takes them again)."""
        kept: set[str] = set()
        latest = {}
        for rank in range(self.spec.world_size):
            index_path = self.layout.checkpoint_index(rank)
            if index_path.exists():
                latest[rank] = json.loads(index_path.read_text(encoding="utf-8"))
        chosen = consistent_checkpoints(latest)
        for rank, index in latest.items():  # a checkpoint given up is forgotten: the next one follows the chosen
            if chosen.get(rank) is not index:
                if chosen.get(rank) is None:
                    self.layout.checkpoint_index(rank).unlink()
                else:
                    write_json_atomic(self.layout.checkpoint_index(rank), chosen[rank])
                (self.layout.checkpoints / index["state_file"]).unlink(missing_ok=True)
        for rank, index in chosen.items():
            self._restored[rank] = index
            kept.update(index["snapshots"])
            if index.get("ensemble") is not None and self.ensemble is None:
                self.ensemble = index["ensemble"]
            self._previous_train_s = max(self._previous_train_s, float(index.get("train_s", 0.0)))
        sessions = self.layout.root / SESSIONS
        if sessions.exists():  # every earlier session that ended under a runner, crashed or not
            earlier = json.loads(sessions.read_text(encoding="utf-8"))
            self._previous_train_s = max(self._previous_train_s, math.fsum(earlier.get("train_s", [])))
        for snap in list_snapshots(self.layout.snapshots):
            if snap.tag not in kept:
                shutil.rmtree(snap.folder)
        for leftover in self.layout.snapshots.glob(".*.tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        for rank in range(self.spec.world_size):
            metrics = self.layout.metrics(rank)
            if metrics.exists():
                keep = self._restored.get(rank, {}).get("metrics_lines", 0)
                lines = metrics.read_text(encoding="utf-8").splitlines(keepends=True)[:keep]
                metrics.write_text("".join(lines), encoding="utf-8")
        self._clear_outbox()
        self._clear_scratch()

    def _clear_outbox(self) -> None:
        for entry in self.layout.outbox.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    def _clear_scratch(self) -> None:
        """Empty scratch before a resumed session starts: the run goes back to its checkpoints, and nothing the
        method wrote after them may come back with it. Whatever it read after its last checkpoint was metered
        in that session and is forgotten by the roll-back; a model or windows kept in scratch would let the
        resumed run train on them uncounted. The method's state across sessions is what it checkpointed (the
        harness keeps that), so only caches are lost (a compile cache is rebuilt, untimed, on warm-up
        batches). A link is removed, never followed (rmtree works from descriptors); an entry that cannot be
        removed stops the resume (SlowrunError), since the roll-back would not hold."""
        failed: list[str] = []

        def note(function, path, exc_info) -> None:
            failed.append(f"{path}: {exc_info[1]}")

        scratch = self.layout.scratch
        if not scratch.is_dir():
            return
        for entry in scratch.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, onerror=note)
            else:
                try:
                    entry.unlink()
                except OSError as exc:
                    failed.append(f"{entry}: {exc}")
        if failed:
            raise SlowrunError(f"{scratch}: cannot empty the method's scratch folder before resuming ({'; '.join(failed[:3])}); "
                               "remove what is left there by hand, then resume")

    # ---- the outcome ------------------------------------------------------------------------------
    def record_session(self) -> None:
        """Add this session's training time to the run's list, so a resumed run's time includes the work
        done after the last checkpoint of a session that crashed (a runner killed outright loses only
        that: the checkpoints carry the time up to them)."""
        path = self.layout.root / SESSIONS
        earlier = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"train_s": []}
        earlier["train_s"].append(self.clock.session_seconds())
        write_json_atomic(path, earlier)

    def train_seconds(self) -> float:
        return self.clock.seconds()

    def ranks_done(self) -> bool:
        """Every rank of the job has ended or gone (a multi-node job's node 0 waits for the others)."""
        with self._lock:
            return all(state.ended or not state.connected for state in self._ranks.values()) and \
                len(self._ranks) == self.spec.world_size

    def past_deadline(self) -> bool:
        """The method is still training past the cap and its grace: the runner stops its processes."""
        with self._lock:
            done = len(self._ranks) == self.spec.world_size and all(r.ended for r in self._ranks.values())
        return not done and self.clock.past_grace()

    def outcome(self, supervised: dict | None = None, stopped_at_cap: bool = False,
                interrupted: bool = False) -> TrainOutcome:
        """The training part of the record, from the server's state alone (the status by the rules of
        :func:`harness.server.outcome.job_status`, which says what the arguments mean)."""
        with self._lock:
            facts = EndFacts(world_size=self.spec.world_size, ranks=dict(self._ranks), stop=self._stop,
                             diverged=self._diverged, violation=self._violation, over_cap_s=self.clock.over_cap_s,
                             train_s=self.clock.seconds(), time_limit_s=self.spec.time_limit_s,
                             snapshot_grace_s=self.spec.snapshot_grace_s)
            status, error = job_status(facts, supervised, stopped_at_cap, interrupted)
            merged = self.ledger.meter_state()  # what was served, job-wide: one count per stream shard
            train_tokens = sum(merged.targets.values())
            sandboxes = [self._ranks[r].sandbox for r in sorted(self._ranks) if self._ranks[r].sandbox]
            sandbox = job_sandbox(sandboxes, self.spec.world_size)
            return TrainOutcome(
                status=status, error=error, meter=merged.to_dict(), epochs=train_tokens / self.epoch_tokens,
                epoch_tokens=self.epoch_tokens, train_tokens=train_tokens, ensemble=self.ensemble,
                snapshots=[s.to_summary() for s in list_snapshots(self.layout.snapshots)],
                train_s=self.train_seconds(), resumed=self.spec.resume, world_size=self.spec.world_size,
                sandbox=sandbox, supervisor=supervised, warmup_s=self.clock.warmup_seconds(),
                time_limit_s=self.spec.time_limit_s, over_cap_s=self.clock.over_cap_s,
                incidents=list(self._incidents))


def normalise_weights(weights: dict) -> dict:
    """``{tag: weight}`` divided by their sum (harness.eval.ensemble.normalise_weights: finite, non-negative,
    not all zero, huge ones scaled before summing), as the request error a method gets."""
    from harness.eval.ensemble import normalise_weights as normalise

    try:
        values = {str(tag): float(w) for tag, w in weights.items()}
    except (TypeError, ValueError):
        raise RequestError("ensemble weights must be numbers") from None
    try:
        normalised = normalise(list(values.values()), len(values))
    except SlowrunError as exc:
        raise RequestError(f"ensemble {exc}") from None
    return {tag: float(w) for tag, w in zip(values, normalised)}


def _kind(exc: BaseException) -> str:
    return "ContractError" if isinstance(exc, (RequestError, StreamRefused)) else type(exc).__name__


class _Progress:
    """Progress over the budget's target tokens, moved by the meter, annotated by the method's logs (a tqdm
    bar on a terminal, plain lines in a log)."""

    def __init__(self, total: int, initial: int, epoch_tokens: int, label: str, enabled: bool):
        from harness.common.progress import progress

        self.epoch_tokens = epoch_tokens
        self.bar = progress(total, desc=label, unit="tok", initial=initial, enabled=enabled)
        self._lock = threading.Lock()

    def advance(self, tokens: int) -> None:
        with self._lock:
            self.bar.update(tokens)

    def note(self, metrics: dict, total: int) -> None:
        shown = {"epoch": f"{total / self.epoch_tokens:.2f}"}
        for key, value in metrics.items():
            if isinstance(value, float):
                shown[key] = f"{value:.4g}"
        self.bar.set_postfix(shown, refresh=False)

    def close(self) -> None:
        self.bar.close()
