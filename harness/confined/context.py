"""What a method may call: the RunContext, and the errors that end a run.

A method is a function `main(ctx)` in a method directory. It never opens data files: training data comes
only from `ctx.train_stream`, whose every window is metered, and held-out documents for weighting
ensembles from `ctx.fitness_windows`. What it produced reaches evaluation only as snapshots.

The context is a thin client of the harness's data server (harness/server): every call that touches
data, the meter or results is a request over the socket the worker opened before it sandboxed itself.
The meter, the clock, snapshot storage and the records live in the server, out of the method's reach,
so nothing in this process (which runs the method's code) can change a number the record reports.
"""

from __future__ import annotations

import math
import os
import random
import secrets
import sys
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np

from harness.common.distributed import RankGroup, RankInfo, make_rank_groups
from harness.errors import BudgetExhausted, ContractError, Diverged, SlowrunError, TimeExhausted
from harness.wire.limits import LOSS_KEYS, ProtocolViolation, check_metrics
from harness.wire.framing import Channel
from harness.formats.snapshots import build_spec_of
from harness.rules.tracks import Track

__all__ = ["RunContext", "BudgetExhausted", "TimeExhausted", "Diverged", "ContractError"]


_ERRORS = {"BudgetExhausted": BudgetExhausted, "TimeExhausted": TimeExhausted, "Diverged": Diverged,
           "ContractError": ContractError, "ProtocolViolation": ContractError}


class RemoteStream:
    """An endless iterator of metered (inputs, targets) batches, read from the data server.

    Each batch arrives as the split's own dtype (uint16 for GPT-2) and is widened to int64 here."""

    def __init__(self, ctx: "RunContext", stream_id: str, batch_size: int, shard: tuple[int, int] | None):
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise SlowrunError(f"batch_size must be a positive integer, got {batch_size!r}")
        if shard is not None:
            index, count = shard
            if not (isinstance(count, int) and isinstance(index, int) and 0 <= index < count):
                raise SlowrunError(f"shard must be (index, count) with 0 <= index < count, got {shard!r}")
        self._ctx = ctx
        self.stream_id = stream_id
        self.batch_size = batch_size
        self.shard = tuple(shard) if shard else (0, 1)
        self._request = {"op": "batch", "stream": stream_id, "batch_size": batch_size,
                         "shard": list(shard) if shard else None}
        self.windows_served = 0
        self.epoch = 0.0

    def next_batch(self):
        """The next (inputs, targets) batch, each [batch_size, seq_len]."""
        tokens = self.next_tokens()[0]
        return tokens[:, :-1], tokens[:, 1:]

    def next_tokens(self, n_batches: int = 1):
        """The next ``n_batches`` batches in one round trip to the data server, as one contiguous int64
        tensor of token windows [n_batches, batch_size, seq_len + 1] (batch i's inputs are
        ``[i, :, :-1]``, its targets ``[i, :, 1:]``).

        Metered exactly as ``n_batches`` calls of :meth:`next_batch`: when the budget or the clock runs
        out part-way, the batches granted before it are charged and the refusal is raised. One request
        per optimizer step instead of one per microbatch, and one block to pin and copy to the device."""
        import torch

        if isinstance(n_batches, bool) or not isinstance(n_batches, int) or n_batches < 1:
            raise SlowrunError(f"n_batches must be a positive integer, got {n_batches!r}")
        header, payload = self._ctx._call({**self._request, "count": n_batches})
        array = np.frombuffer(payload, dtype=np.dtype(header["dtype"])).reshape(header["shape"])
        # One copy, the widening itself: the payload's bytes live in the channel's buffer, which the next
        # message overwrites, so the int64 array is the method's own.
        tokens = torch.from_numpy(array.astype(np.int64))
        self.windows_served, self.epoch = header["windows_served"], header["epoch"]
        if header.get("checkpoint_requested"):
            self._ctx._checkpoint_requested = True
        return tokens

    def __iter__(self):
        return self

    def __next__(self):
        return self.next_batch()


def _cuda_rng_states():
    """The generator state of this process's GPU (its current device: a rank trains on one), or None where
    CUDA was never initialised (then nothing has drawn from it). Dropout on a GPU draws from it, so without
    it a resumed run's masks differ from an uninterrupted run's from the first step on."""
    import torch

    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    device = torch.cuda.current_device()
    return {"device": device, "state": torch.cuda.get_rng_state(device)}


def _restore_cuda_rng_states(saved) -> None:
    import torch

    if saved is None:
        return
    if not torch.cuda.is_available() or saved["device"] >= torch.cuda.device_count():
        raise ContractError(f"this checkpoint holds the random-number state of GPU {saved['device']}, which this "
                            "process does not see: resume a GPU run with the same visible devices")
    torch.cuda.set_rng_state(saved["state"], saved["device"])


class RunContext:
    """The method's whole view of the run. Attributes are read-only by convention and by construction."""

    def __init__(self, channel: Channel, run: Mapping[str, Any], rank_info: RankInfo | None = None,
                 device: str | None = None):
        self._channel = channel
        self.track = Track.from_dict(run["track"])
        self.budget = float(run["budget"])
        limit = run.get("time_limit_s")
        self.time_limit_s = float(limit) if limit is not None else None  # the compute class's training cap
        self.hparams = MappingProxyType(dict(run["hparams"]))
        self.seed = int(run["seed"])
        self.device = device or run["device"]
        info = rank_info or RankInfo()
        self.rank, self.world_size, self.local_rank = info.rank, info.world_size, info.local_rank
        self._rank_info = info
        self._rank_groups: dict[int, RankGroup] = {}
        self.seq_len = int(run["seq_len"])
        self.vocab_size = int(run["vocab_size"])
        self.bos_id = int(run["bos_id"])
        self.epoch_tokens = int(run["epoch_tokens"])
        self.scratch_dir = Path(run["scratch"])
        self._outbox = Path(run["outbox"])
        self._has_fitness = bool(run["has_fitness"])
        self._resume_file = run.get("resume_file")
        self._ensemble = run.get("ensemble")
        self._streams: dict[tuple, RemoteStream] = {}
        # The shape snapshots' graphs are exported at: the evaluation's batch of full windows.
        self.eval_batch_size = int(run.get("eval_batch_size", 16))
        self._exporter = None  # harness.confined.graph_export.GraphExporter, made at the first snapshot
        self._export_warned = False
        self._checkpoint_requested = False  # set by a batch that carries the harness's request

    # ---- the wire -------------------------------------------------------------------------------
    def _call(self, header: dict):
        try:
            self._channel.send(header)
        except (BrokenPipeError, ConnectionResetError):
            # The server closes a channel after its last word (it stops the run on a protocol violation and
            # says why first, even to a request that wanted no answer). A request sent after that close
            # meets a broken pipe; the reason is still waiting in the socket, so it is read and raised below.
            pass
        reply, payload = self._channel.recv()
        if not reply.get("ok"):
            error = reply.get("error") or {}
            raise _ERRORS.get(error.get("type"), ContractError)(error.get("message", "request refused"))
        return reply, payload

    # ---- accounting -------------------------------------------------------------------------------
    def _totals(self) -> tuple[int, int]:
        reply, _ = self._call({"op": "status"})
        return reply["total_targets"], reply["allowed_targets"]

    @property
    def epochs(self) -> float:
        """Epochs metered so far (all streams, all ranks), as the server counts them."""
        return self._totals()[0] / self.epoch_tokens

    @property
    def remaining_epochs(self) -> float:
        total, allowed = self._totals()
        return (allowed - total) / self.epoch_tokens

    @property
    def train_seconds(self) -> float:
        """Training time so far as the server's clock measures it (from the first real batch)."""
        return float(self._call({"op": "status"})[0]["train_s"])

    @property
    def remaining_seconds(self) -> float | None:
        """Training seconds left before the cap (None: the run's compute class has no cap)."""
        if self.time_limit_s is None:
            return None
        return max(0.0, self.time_limit_s - self.train_seconds)

    def windows_per_epoch(self) -> float:
        """Windows of seq_len targets in one epoch (fractional: epochs need not be whole windows)."""
        return self.epoch_tokens / self.seq_len

    # ---- ranks ----------------------------------------------------------------------------------
    def rank_groups(self, n_groups: int) -> RankGroup:
        """This rank's group when the world is split into `n_groups` contiguous groups of ranks.

        The group carries its own process group (for DDP inside it) and a leader, which is the rank that
        writes the group's snapshots. Every rank must ask for the same `n_groups` at the same point (it
        creates process groups); in a one-process run it is group 0 of one rank.
        """
        if n_groups not in self._rank_groups:
            self._rank_groups[n_groups] = make_rank_groups(self._rank_info, n_groups)
        return self._rank_groups[n_groups]

    # ---- data -----------------------------------------------------------------------------------
    def train_stream(self, stream_id: str = "main", batch_size: int = 8,
                     shard: tuple[int, int] | None = None) -> RemoteStream:
        """An endless, metered iterator of (inputs, targets) LongTensor batches of shape [batch, seq_len].

        Each stream id has its own document order (derived from the run seed and the id) and its own
        position, which continues if the stream is asked for again. Every batch is charged to the budget
        before it is sent; a batch that would pass the budget raises BudgetExhausted (in a distributed
        run the budget is the job's, summed over all ranks).

        `shard=(i, n)` reads part i of n of the stream: the ranks of a DDP group each take their own
        shard and step together, so together they read the stream's one order without overlap.
        """
        if not isinstance(stream_id, str) or not stream_id:
            raise ContractError("stream_id must be a non-empty string")
        key = (stream_id, tuple(shard) if shard else None)
        stream = self._streams.get(key)
        if stream is None or stream.batch_size != batch_size:
            stream = RemoteStream(self, stream_id, batch_size, shard)
            self._streams[key] = stream
        return stream

    def warmup_batches(self, n: int, batch_size: int = 8):
        """`n` batches of random tokens, shaped like `train_stream` batches, for compiling and warming up
        kernels before training: never metered and, before the first real batch, never timed.

        The training clock starts with the first real batch, so anything done before it (building the
        model, `torch.compile` on these batches) is outside the compute class's cap."""
        import torch

        if not isinstance(n, int) or n < 0 or not isinstance(batch_size, int) or batch_size < 1:
            raise ContractError("warmup_batches takes n >= 0 and batch_size >= 1")
        generator = torch.Generator().manual_seed(self.seed ^ 0x5EED)
        for _ in range(n):
            tokens = torch.randint(0, self.vocab_size, (batch_size, self.seq_len + 1), generator=generator)
            yield tokens[:, :-1], tokens[:, 1:]

    def fitness_windows(self):
        """The held-out training documents as a LongTensor [n, seq_len + 1] of disjoint windows.

        Identical for every stream and never served by them; reads are counted, but not as epochs.
        """
        import torch

        if not self._has_fitness:
            raise ContractError(f"track {self.track.name!r} carves no fitness documents (fitness_tokens = 0)")
        header, payload = self._call({"op": "fitness"})
        array = np.frombuffer(payload, dtype=np.dtype(header["dtype"])).reshape(header["shape"])
        return torch.from_numpy(array.astype(np.int64))

    # ---- results --------------------------------------------------------------------------------
    def _outbox_path(self, kind: str) -> Path:
        self._outbox.mkdir(parents=True, exist_ok=True)
        return self._outbox / f"{kind}-r{self.rank}-{os.getpid()}-{secrets.token_hex(6)}"

    def save_snapshot(self, model, tag: str, meta: Mapping[str, Any] | None = None, spec: dict | None = None,
                      group: RankGroup | None = None, graph=True) -> dict | None:
        """Hand the model's weights and build spec to the harness, which stamps them with its metered epochs.

        The weights are written into the run's outbox and moved into harness storage by the server, which
        hashes them. With `group` (DDP inside a rank group) only the group's leader hands them over; the
        other ranks get None.

        `graph`: the forward pass is exported (`torch.export`, once per build spec) and handed over too, so
        the harness evaluates the snapshot from the graph without running the method's code (see
        harness/confined/graph_export.py). True exports `model` (which must then be a torch module: compiled and DDP wrappers
        are looked through); a module exports that one instead (when `model` is a view of one); False
        hands over the weights alone. A forward that cannot be exported is said once on stderr, and the
        snapshot is evaluated by its own code in the sandboxed worker; its record says which.
        """
        if group is not None and not group.is_leader:
            return None
        from safetensors.torch import save_file

        build = build_spec_of(model, spec)
        meta = dict(meta or {})
        if self.world_size > 1:
            meta["rank"] = self.rank
        try:
            meta = _finite(meta)
        except ValueError as exc:
            raise ContractError(f"snapshot {tag!r}: meta must be JSON-able with finite numbers ({exc})") from None
        path = self._outbox_path("snapshot").with_suffix(".safetensors")
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(path))
        header = {"op": "snapshot", "tag": tag, "spec": build, "meta": meta, "file": path.name}
        written = [path]
        if graph is not False:
            header.update(self._export_graph(model if graph is True else graph, build, tag, written))
        try:
            reply, _ = self._call(header)
        finally:
            for item in written:
                item.unlink(missing_ok=True)  # gone already when the server took it
        return reply["snapshot"]

    def prepare_snapshot(self, model, spec: dict | None = None) -> bool:
        """Export `model`'s forward now, as `save_snapshot(model, ..., graph=True)` would at the first
        snapshot of its build spec: during warm-up, before the first real batch, that cost (seconds for a
        small model, more for a large one) is outside the training clock. Later snapshots of the same build
        spec reuse the export. True when the forward could be exported."""
        build = build_spec_of(model, spec)
        return "graph_error" not in self._exported(model, build, "(prepared)")

    def _exported(self, module, build: dict, tag: str):
        """The exported program and constants for `build` (exported once), or {"graph_error": why}."""
        from harness.confined.graph_export import GraphExporter

        if self._exporter is None:
            self._exporter = GraphExporter()
        try:
            return self._exporter.export(module, build, self.eval_batch_size, self.seq_len)
        except Exception as exc:  # noqa: BLE001 - any failure to trace means: evaluate by the method's code
            reason = f"{type(exc).__name__}: {exc}".strip()[:500]
            if not self._export_warned:
                self._export_warned = True
                print(f"slowrun: snapshot {tag!r}: the forward pass could not be exported ({reason}); snapshots "
                      "are evaluated by the method's own code in the sandboxed worker", file=sys.stderr, flush=True)
            return {"graph_error": reason}

    def _export_graph(self, module, build: dict, tag: str, written: list) -> dict:
        """The snapshot header's graph fields: the exported forward's files in the outbox, or why not."""
        from safetensors.torch import save_file

        exported = self._exported(module, build, tag)
        if isinstance(exported, dict):
            return exported
        program, constants = exported
        graph_path = self._outbox_path("graph").with_suffix(".json")
        graph_path.write_bytes(program)
        written.append(graph_path)
        constants_path = self._outbox_path("constants").with_suffix(".safetensors")
        save_file(constants, str(constants_path))
        written.append(constants_path)
        return {"graph_file": graph_path.name, "constants_file": constants_path.name}

    def snapshot_tags(self) -> list[str]:
        return list(self._call({"op": "tags"})[0]["tags"])

    def set_ensemble(self, weights: Mapping[str, float] | str) -> None:
        """The final predictor: {tag: weight} over saved snapshots, or "prior" for the harness's learned
        prior over all snapshots (fit on the fitness windows at evaluation). Default: the last snapshot."""
        if weights != "prior":
            if not isinstance(weights, Mapping) or not weights:
                raise ContractError('set_ensemble takes {tag: weight} or "prior"')
            try:
                weights = {str(tag): float(w) for tag, w in weights.items()}
            except (TypeError, ValueError):
                raise ContractError("ensemble weights must be numbers") from None
            if not all(math.isfinite(w) for w in weights.values()):
                raise ContractError("ensemble weights must be finite, non-negative, and not all zero")
        self._call({"op": "ensemble", "weights": weights})
        self._ensemble = weights

    @property
    def ensemble(self):
        return self._ensemble

    # ---- exchanging results between ranks -------------------------------------------------------------
    def gather(self, key: str, value: Any) -> list:
        """Every rank's `value` (JSON: numbers, strings, lists, mappings), in rank order, on every rank.

        The exchange goes through the harness, not a collective: it waits as long as the slowest rank
        group trains (no timeout to abort a group that finished early) and fails at once with a
        ContractError if a rank ends without taking part. Each key is used once per rank; in a one-process
        run it returns [value]."""
        if self.world_size == 1:
            return [value]
        reply, _ = self._call({"op": "gather", "key": key, "value": _finite(value)})
        return list(reply["values"])

    # ---- logging --------------------------------------------------------------------------------
    def log(self, metrics: Mapping[str, Any] | None = None, **more: Any) -> None:
        """Append metrics to the run's metrics.jsonl (the server stamps them with its tokens and epochs).

        A non-finite `loss` or `train_loss` ends the run with status "diverged".
        """
        entry = {**(metrics or {}), **more}
        for key in LOSS_KEYS:
            value = entry.get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                self._call({"op": "log", "entry": {key: str(value)}})  # the server records the divergence
                raise Diverged(f"training {key} is {value} after {self.epochs:.4f} epochs; lower the learning rate "
                               "or add warm-up / gradient clipping")
        line = _finite(entry, lenient=True)
        try:  # the server's own rules, checked here first so that a bad line is an error at the call site
            check_metrics(line)
        except ProtocolViolation as exc:
            raise ContractError(f"ctx.log: {exc}") from None
        # A finite line needs no answer: the server handles it in order before this process's next request,
        # so the method does not wait a round trip per line (a non-finite loss above still waits, and raises).
        self._channel.send({"op": "log", "entry": line, "reply": False})

    # ---- checkpoint / resume --------------------------------------------------------------------
    @property
    def checkpoint_requested(self) -> bool:
        """True once the harness has asked for a checkpoint: the scheduler will stop the job soon (Slurm's
        warning before the time limit or a pre-emption). Check it after each optimizer step and, when it is
        True, call :meth:`checkpoint` with the state to resume from; that call does not return (the harness
        stops the run and the next start resumes from it). Work not checkpointed is trained again.

        It arrives with a batch and costs no request. The ranks reading a stream in shards (a DDP group)
        all see it first on the same step of that stream, so checking it after each optimizer step makes
        the whole group checkpoint at one step without a collective."""
        return self._checkpoint_requested

    def checkpoint(self, state: Mapping[str, Any]) -> None:
        """Save the method's state with its RNG states; resume continues from here.

        The server keeps its own meter, snapshot list and ensemble beside it, so a resumed run restarts
        its accounting from the harness's numbers, not from anything in this file. After the harness has
        asked for a checkpoint (:attr:`checkpoint_requested`) this call waits for the run to be stopped."""
        import torch

        payload = {"method_state": dict(state),
                   "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                           "python": random.getstate(), "cuda": _cuda_rng_states()}}
        path = self._outbox_path("checkpoint").with_suffix(".pt")
        torch.save(payload, path)
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        try:
            reply, _ = self._call({"op": "checkpoint", "file": path.name})
        finally:
            path.unlink(missing_ok=True)
        if reply.get("hold"):
            # The run resumes from this checkpoint; anything done after it would be thrown away. The runner
            # stops this process once every rank has checkpointed (or its grace ends).
            while True:
                time.sleep(3600)

    def resume_state(self) -> Mapping[str, Any] | None:
        """The state given to the last checkpoint() of an interrupted run, or None for a fresh run.

        Calling it also restores the random number generators as they were at that checkpoint, so call it
        after building the model (whose initialisation draws random numbers the checkpoint overwrites).
        """
        if not self._resume_file:
            return None
        import torch

        payload = torch.load(self._resume_file, weights_only=False)
        rng = payload["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        _restore_cuda_rng_states(rng.get("cuda"))
        return payload["method_state"]

    def close(self) -> None:
        pass


def _finite(value, lenient: bool = False):
    """A JSON-safe copy: with `lenient`, non-finite floats and unknown objects become strings (metrics);
    otherwise they are an error (snapshot meta)."""
    if isinstance(value, Mapping):
        return {str(k): _finite(v, lenient) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v, lenient) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        if lenient:
            return str(value)
        raise ValueError(f"{value} is not finite")
    try:
        number = float(value)  # numpy and torch scalars
    except (TypeError, ValueError):
        if lenient:
            return str(value)
        raise ValueError(f"{type(value).__name__} is not JSON-able") from None
    return _finite(number, lenient)
