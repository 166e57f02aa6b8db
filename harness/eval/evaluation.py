"""Evaluate a run from its snapshots: per-token caches, then every number of the record by arithmetic.

Runs in the harness's process after training (the method's process never holds validation data). Each
snapshot's model runs in an evaluation worker of its own (:mod:`harness.eval.remote_model`: a sandboxed process
that never sees the data files, only the windows it is asked about), is probed for causality and
statelessness (:mod:`harness.eval.probes`), and is run once over the validation windows and once over the
fitness windows; the log-probabilities are computed here, from the logits it returns. A snapshot that
cannot be scored (refused builder, failed probe, non-finite output, weights that do not match their
hash, a crash or timeout) is listed as invalid with its reason and left out of everything else.

The caches (`eval/<tag>.val.npy`, `eval/<tag>.fit.npy`, float32) make re-evaluation free. A cache is
used only if `eval/<tag>.sha256` (written with it) matches both the cache files and the snapshot's
current weights: a cache that was placed there by anything else, or that belongs to other weights, is
recomputed. Everything else (the final ensemble, the learned prior, the K sweep, the curve against epochs,
data efficiency) is computed from the caches. Choices (prior weights, which K, which snapshot) are made on
fitness data only.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from harness.data.manifest import read_manifest
from harness.data.store import TokenStore
from harness.eval.efficiency import ReferenceCurveError, curve_path, data_efficiency, load_reference_curve
from harness.common.atomic import write_json_atomic
from harness.eval.ensemble import bits_per_byte, mean_nll, mixture_logp
from harness.errors import SlowrunError
from harness.eval.remote_model import InvalidSnapshot, RemoteModel, read_weights
from harness.eval.limits import EvalClock, EvalLimits
from harness.eval.fork_server import FORK_AVAILABLE, ForkServer
from harness.eval.logprobs import load_logprobs, save_logprobs, token_logprobs
from harness.eval.prior import curve_stamps, default_ks, fit_prior, k_sweep, loss_curve
from harness.eval.probes import CausalityProbe, ProbedModel, ProbeSettings, statelessness_probe
from harness.formats.snapshots import GRAPH, GRAPH_CONSTANTS, WEIGHTS, Snapshot, list_snapshots, sha256_file
from harness.common.threads import apply_thread_setting
from harness.eval.timed_subset import subset_summary

MIN_PRIOR_WEIGHT = 1e-4  # prior members below this weight are dropped from the final ensemble
PREFETCH = True  # start the next snapshot's worker while the current one is scored (see _score_all)
FORK_SERVER = True  # fork each snapshot's worker from one zygote per evaluation (see harness.eval.fork_server)


@dataclass(frozen=True)
class EvalData:
    val_windows: np.ndarray  # (n, T + 1), zero-copy view of the validation split
    fit_windows: np.ndarray  # (m, T + 1), the fitness documents' windows
    val_target_bytes: np.ndarray | None  # UTF-8 bytes of every validation target (BOS = 0), or None
    vocab_size: int | None = None  # the track's vocabulary: a model must give at least this many logits


def open_eval_data(data_dir: Path, seq_len: int, fitness_docs: int | None = None) -> EvalData:
    """The windows evaluation scores. `fitness_docs` is the run's own carve (the documents its method
    declared, from the front of the training split); None means the prepared data's default carve (runs
    from before methods declared theirs)."""
    manifest = read_manifest(data_dir)
    val = TokenStore.open(data_dir, "val")
    train = TokenStore.open(data_dir, "train")
    if fitness_docs is None:
        fitness_docs = manifest["fitness"]["documents"]
    fit = train.documents(0, fitness_docs).windows(seq_len) if fitness_docs else np.empty((0, seq_len + 1), np.uint16)
    windows = val.windows(seq_len)
    target_bytes = None
    bytes_file = Path(data_dir) / "token_bytes.bin"
    if bytes_file.exists():
        table = np.fromfile(bytes_file, dtype=np.int32)
        target_bytes = table[np.asarray(windows[:, 1:]).reshape(-1)]
    vocab = manifest.get("tokenizer", {}).get("vocab_size")
    return EvalData(windows, fit, target_bytes, int(vocab) if vocab else None)


@dataclass(frozen=True)
class WorkerOptions:
    """How snapshots' models are run: where their code may come from, and the worker's limits."""

    method_dir: Path | None = None  # the method's directory: builders like 'mymodel:build' live there
    builder_roots: tuple[Path, ...] | None = None  # more trusted folders; None: $SLOWRUN_ALLOW_READ's
    clock: EvalClock = EvalClock(EvalLimits(), None)  # each snapshot's time limit (harness/eval/limits.py)
    probes: ProbeSettings = ProbeSettings()
    require_sandbox: bool = False
    autocast: str | None = None  # "bfloat16": forwards under bf16 autocast (EVAL_DTYPES)
    graphs: bool = True  # snapshots with an exported graph are run from it, here (False: always the worker)
    graph_templates: dict = field(default_factory=dict, compare=False)  # programs built in this evaluation
    fork_server: bool = FORK_SERVER  # workers forked from a zygote (False: a fresh process each)

    @property
    def eval_dtype(self) -> str:
        return self.autocast or "float32"

    def remote(self, snapshot: Snapshot | None, device: str, vocab_size: int | None,
               server: ForkServer | None = None) -> RemoteModel:
        return RemoteModel(snapshot, method_dir=self.method_dir, builder_roots=self.builder_roots, device=device,
                           vocab_size=vocab_size, timeout_s=None, require_sandbox=self.require_sandbox,
                           autocast=self.autocast, fork_server=server)

    def scored_by(self, snapshot: Snapshot) -> str:
        """How these options score the snapshot: from its graph where it has one and graphs are on."""
        return GRAPH_EVALUATED if self.graphs and snapshot.has_graph else METHOD_CODE

    def arm(self, model: RemoteModel, weights: bytes, data: "EvalData", device: str) -> None:
        """Give `model` its snapshot's time limit, by the rule for these weights and this data, before it
        is sent them (the limit counts from the load)."""
        model.timeout_s = self.snapshot_s(weights, data, device)

    def snapshot_s(self, weights: bytes, data: "EvalData", device: str) -> float:
        """The time limit of one snapshot with these weights on this data: a worker's, or a graph's."""
        windows = int(data.val_windows.shape[0]) + int(data.fit_windows.shape[0])
        return self.clock.snapshot_s(weights, windows * (int(data.val_windows.shape[1]) - 1), device)

    def new_fork_server(self) -> ForkServer | None:
        """A started fork server for these options, or None when they ask for fresh processes or the
        system cannot fork workers (then every worker is a fresh process, as before)."""
        if not self.fork_server or not FORK_AVAILABLE:
            return None
        return ForkServer(method_dir=self.method_dir, builder_roots=self.builder_roots,
                          require_sandbox=self.require_sandbox).start()


# How a snapshot's log-probabilities were computed (the record's `evaluated_by`): from its exported graph,
# in a harness process, or by its own code in the sandboxed worker.
GRAPH_EVALUATED = "graph"
METHOD_CODE = "method code"

EVAL_DTYPES = ("float32", "bfloat16")


def resolve_eval_dtype(eval_dtype: str, device: str) -> str:
    """`auto` is bf16 autocast on CUDA (where it is how models are run, and twice as fast) and float32
    elsewhere (exact, and CPUs gain little from bf16)."""
    if eval_dtype == "auto":
        return "bfloat16" if str(device).startswith("cuda") else "float32"
    if eval_dtype not in EVAL_DTYPES:
        raise SlowrunError(f"the evaluation dtype must be auto, {' or '.join(EVAL_DTYPES)}, got {eval_dtype!r}")
    return eval_dtype


def eval_devices(device: str, workers: int) -> tuple[str, ...]:
    """The devices evaluation runs its workers on, one worker each at a time: `workers` CUDA devices
    (cuda:0 ... cuda:N-1; a job's ranks have the node's GPUs), or `workers` CPU workers side by side."""
    if workers < 1:
        raise SlowrunError(f"evaluation needs at least one worker, got {workers}")
    base = str(device).split(":")[0]
    if base == "cuda":
        return tuple(f"cuda:{i}" for i in range(workers))
    return (str(device),) * workers


def _cache_paths(cache: Path, tag: str) -> tuple[Path, Path, Path]:
    return cache / f"{tag}.fit.npy", cache / f"{tag}.val.npy", cache / f"{tag}.sha256"


def cache_is_trusted(cache: Path, tag: str, weights_sha256: str, eval_dtype: str = "float32",
                     by: str | None = None) -> bool:
    """Whether eval/<tag>.{fit,val}.npy were written by the harness for these very weights at this
    precision: the sidecar eval/<tag>.sha256 must name the weights' hash, the evaluation dtype (caches
    from before it was recorded are float32's), how they were computed when `by` is given (GRAPH_EVALUATED
    or METHOD_CODE; caches from before graphs are the method code's) and the hash of each cache file as
    it is now."""
    fit_path, val_path, sidecar = _cache_paths(cache, tag)
    try:
        stamp = json.loads(sidecar.read_text(encoding="utf-8"))
        return (isinstance(stamp, dict) and stamp.get("weights_sha256") == weights_sha256
                and stamp.get("eval_dtype", "float32") == eval_dtype
                and (by is None or stamp.get("evaluated_by", METHOD_CODE) == by)
                and stamp.get("fit_sha256") == sha256_file(fit_path)
                and stamp.get("val_sha256") == sha256_file(val_path))
    except (OSError, ValueError):
        return False


def _write_cache(cache: Path, tag: str, fit: np.ndarray, val: np.ndarray, weights_sha256: str,
                 eval_dtype: str = "float32", evaluated_by: str = METHOD_CODE) -> None:
    fit_path, val_path, sidecar = _cache_paths(cache, tag)
    sidecar.unlink(missing_ok=True)  # never a sidecar that vouches for half-replaced caches
    save_logprobs(val_path, val)
    save_logprobs(fit_path, fit)
    stamp = {"weights_sha256": weights_sha256, "fit_sha256": sha256_file(fit_path),
             "val_sha256": sha256_file(val_path), "eval_dtype": eval_dtype, "evaluated_by": evaluated_by}
    write_json_atomic(sidecar, stamp, indent=None)


def evaluated_by(cache: Path, tag: str) -> str:
    """How the snapshot's cached log-probabilities were computed (caches from before graphs: its code)."""
    try:
        stamp = json.loads(_cache_paths(cache, tag)[2].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return METHOD_CODE
    return GRAPH_EVALUATED if isinstance(stamp, dict) and stamp.get("evaluated_by") == GRAPH_EVALUATED else METHOD_CODE


def graph_forward(snapshot: Snapshot, device: str, autocast: str | None, templates: dict | None = None,
                  weights_bytes: bytes | None = None):
    """The snapshot's exported forward, checked, bounded and built here (GraphRefused says why not).
    `templates` keeps each program built once per evaluation (by its hash, device and precision): the
    snapshots of one architecture share it, and only their weights are bound anew. `weights_bytes`: the
    weights file as already read (and hashed) by the caller."""
    import hashlib

    from safetensors.torch import load, load_file

    from harness.eval.graph_check import GraphRefused
    from harness.eval.graph_load import build_graph

    folder = Path(snapshot.folder)
    try:
        data = (folder / GRAPH).read_bytes()
        constants_sha256 = sha256_file(folder / GRAPH_CONSTANTS)
    except OSError as exc:  # e.g. a bundle packed without them
        raise GraphRefused(f"the graph's files cannot be read ({exc})") from None
    if hashlib.sha256(data).hexdigest() != snapshot.graph.get("sha256") or constants_sha256 != snapshot.graph.get(
            "constants_sha256"):
        raise GraphRefused("the graph's files changed after the snapshot was taken in")
    try:
        weights = load(weights_bytes) if weights_bytes is not None else load_file(str(folder / WEIGHTS))
        constants = load_file(str(folder / GRAPH_CONSTANTS))
    except Exception as exc:  # safetensors' own errors: a file the check passed but torch cannot read
        raise GraphRefused(f"the weights or constants cannot be read ({type(exc).__name__}: {exc})") from None
    key = (snapshot.graph["sha256"], str(device), autocast)
    template = None if templates is None else templates.get(key)
    if template is None:
        template = build_graph(data, weights, constants, device, autocast)
        if templates is not None:
            templates[key] = template
    return template.bind(weights, constants)


def _load_cache(cache: Path, tag: str) -> tuple[np.ndarray, np.ndarray]:
    fit_path, val_path, _ = _cache_paths(cache, tag)
    return np.asarray(load_logprobs(fit_path)).reshape(-1), np.asarray(load_logprobs(val_path)).reshape(-1)


def score_remote(model, data: EvalData, batch_size: int, device: str, probes: ProbeSettings, stream: int = 0,
                 progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(fitness, validation) log p(target) of ``model``, shapes (m, T) and (n, T), with both probes passed.

    The causality probe's batches run between the validation scoring calls; the statelessness probe runs
    after scoring. An exported graph gets both: a pure function has no memory to find, but a batch's rows
    are inputs of one call, and a forward that mixes them (a window's last prediction reading the first
    token of the next row, the next stretch of the same text) is only seen when its windows are scored
    again beside others. Raises InvalidSnapshot (ProbeFailed for a probe) when the snapshot cannot be scored.
    """
    causal_rng, stateless_rng = probes.rng(stream, 1), probes.rng(stream, 2)
    probe = CausalityProbe(data.val_windows, batch_size, probes, causal_rng)
    calls = -(-len(data.val_windows) // batch_size)
    probed = ProbedModel(model, probe, calls, device, causal_rng)
    try:
        val = token_logprobs(probed, data.val_windows, batch_size, device, progress=progress)
        fit = (token_logprobs(model, data.fit_windows, batch_size, device) if len(data.fit_windows)
               else np.empty((0, data.val_windows.shape[1] - 1), np.float32))
    except InvalidSnapshot:
        raise
    except SlowrunError as exc:  # wrong shapes, a vocabulary too small, non-finite log-probabilities
        raise InvalidSnapshot(str(exc)) from None
    probed.finish()
    statelessness_probe(model, data.val_windows, val, batch_size, device, probes, stateless_rng)
    return fit, val


def snapshot_logprobs(snapshot: Snapshot, data: EvalData, cache: Path, batch_size: int, device: str,
                      progress: bool = False, *, options: WorkerOptions | None = None,
                      worker: RemoteModel | None = None, stream: int = 0,
                      weights: tuple[bytes, str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(fitness, validation) log p(target), flattened; computed once per snapshot and cached.

    The model runs in an evaluation worker (``worker`` if one was started ahead for this snapshot, else a
    new one built from ``options``) and must pass the probes. ``weights``: ``read_weights(snapshot)``
    when the caller has read them already (to load them ahead). Raises InvalidSnapshot with the reason
    the snapshot cannot be scored; nothing is cached then.
    """
    options = options or WorkerOptions()
    cache.mkdir(parents=True, exist_ok=True)
    model = worker
    by = METHOD_CODE
    try:
        weights = weights or read_weights(snapshot)
        if cache_is_trusted(cache, snapshot.tag, weights[1], options.eval_dtype, options.scored_by(snapshot)):
            return _load_cache(cache, snapshot.tag)
        if options.clock.passed():
            raise InvalidSnapshot(options.clock.passed_reason())
        graph = _graph_or_none(snapshot, device, options, weights[0])
        if graph is not None:
            by = GRAPH_EVALUATED
            if model is not None:  # a worker started ahead for this snapshot is not needed
                model.close()
                model = None
            graph.deadline = time.monotonic() + options.snapshot_s(weights[0], data, device)  # as a worker's
            fit, val = score_remote(graph, data, graph.batch_size, device, options.probes, stream, progress)
        else:
            model = model or options.remote(snapshot, device, data.vocab_size)
            if model.vocab_size is None:
                model.vocab_size = data.vocab_size
            options.arm(model, weights[0], data, device)  # (a worker loaded ahead starts its limit again here)
            model.load(weights, snapshot)
            fit, val = score_remote(model, data, batch_size, device, options.probes, stream, progress)
    finally:
        if model is not None:
            model.close()
    _write_cache(cache, snapshot.tag, fit, val, weights[1], options.eval_dtype, by)
    return fit.reshape(-1), val.reshape(-1)


def _graph_or_none(snapshot: Snapshot, device: str, options: WorkerOptions, weights_bytes: bytes):
    """The snapshot's graph, built here, or None: no graph, graphs turned off, or one refused now (then its
    own code is run in the worker, and the reason is said)."""
    from harness.eval.graph_check import GraphRefused

    if not (options.graphs and snapshot.has_graph):
        return None
    try:
        return graph_forward(snapshot, device, options.autocast, options.graph_templates, weights_bytes)
    except GraphRefused as exc:
        print(f"snapshot {snapshot.tag}: its graph is refused ({exc}); it is evaluated by its own code instead",
              file=sys.stderr, flush=True)
        return None


def load_ahead(worker: RemoteModel, snapshot: Snapshot, cache: Path, options: WorkerOptions, data: EvalData,
               device: str) -> tuple[RemoteModel | None, tuple[bytes, str] | None]:
    """Send ``snapshot``'s weights to the worker started ahead for it, without waiting: it builds the
    model while the snapshot before is scored (unless its cache will be used). Returns (the worker, the
    weights read, which its turn reuses) or, when that failed, (None, None): the snapshot then gets a
    worker at its turn, which finds the reason again."""
    try:
        weights = read_weights(snapshot)
        if not cache_is_trusted(cache, snapshot.tag, weights[1], options.eval_dtype, options.scored_by(snapshot)):
            options.arm(worker, weights[0], data, device)
            worker.load(weights, snapshot, wait=False)
    except InvalidSnapshot:
        worker.close()
        return None, None
    return worker, weights


def _bpb(logp: np.ndarray, data: EvalData) -> float | None:
    return None if data.val_target_bytes is None else float(bits_per_byte(logp, data.val_target_bytes))


def _members(tags: list[str], weights) -> list[dict]:
    return [{"tag": tags[i], "weight": float(w)} for i, w in enumerate(weights) if w > 0]


def _score_all(snapshots: list[Snapshot], data: EvalData, cache: Path, batch_size: int, device: str,
               options: WorkerOptions, prefetch: bool, progress: bool, first_worker: RemoteModel | None = None,
               server: ForkServer | None = None):
    """Score every snapshot; returns (valid snapshots, their fits, their vals, invalid rows).

    Each snapshot that needs scoring gets the worker started ahead for it (``first_worker`` for the first;
    with ``prefetch``, the next is started while the current one is scored, so its sandbox set-up and
    torch import, or its fork from ``server``, overlap the scoring) or else a new one. Snapshots with a
    trusted cache need none."""
    valid, fits, vals, invalid = [], [], [], []
    cached = [not _needs_worker(s, cache, options) for s in snapshots]  # (a cache or a graph: no worker)
    ahead, ahead_weights = first_worker, None
    try:
        for i, snap in enumerate(snapshots):
            if progress:
                print(f"evaluating snapshot {snap.tag} ({i + 1}/{len(snapshots)})", flush=True)
            worker, weights = None, None
            if not cached[i]:
                worker, weights, ahead, ahead_weights = ahead, ahead_weights, None, None
                worker = worker or options.remote(snap, device, data.vocab_size, server)
                following = next((j for j in range(i + 1, len(snapshots)) if not cached[j]), None)
                if prefetch and following is not None:
                    ahead = options.remote(None, device, data.vocab_size, server).start()
                    if ahead.forked:  # (a fresh worker still imports torch: the weights would wait for it)
                        ahead, ahead_weights = load_ahead(ahead, snapshots[following], cache, options, data, device)
            try:
                fit, val = snapshot_logprobs(snap, data, cache, batch_size, device, progress=progress,
                                             options=options, worker=worker, stream=i, weights=weights)
            except InvalidSnapshot as exc:
                reason = str(exc)
                invalid.append({"tag": snap.tag, "epochs": snap.epochs, "reason": reason})
                if progress:
                    print(f"snapshot {snap.tag} is invalid and will not be scored: {reason}", flush=True)
                continue
            valid.append(snap)
            fits.append(fit)
            vals.append(val)
    finally:
        if ahead is not None:
            ahead.close()
    return valid, fits, vals, invalid


def _score_lanes(snapshots: list[Snapshot], data: EvalData, cache: Path, batch_size: int, devices: Sequence[str],
                 options: WorkerOptions, prefetch: bool, progress: bool, first_worker: RemoteModel | None = None,
                 server: ForkServer | None = None):
    """`_score_all` with one lane per device: each lane takes the next snapshot nobody has taken, so a slow
    snapshot does not hold the others up (one ahead: its worker loads it while the lane scores the one
    before). A snapshot's numbers do not depend on its lane (it is scored
    whole, its probes seeded by its index), and the results come back in the snapshots' order.

    Each lane starts its workers from its own thread and outlives them (a worker's supervisor is tied to
    the thread that started it); ``first_worker`` goes to the first lane. With ``server``, every lane's
    workers are forked from that one zygote (started by the calling thread, which outlives the lanes)."""
    import threading

    results: list[tuple | None] = [None] * len(snapshots)
    lock = threading.Lock()
    queue = iter(range(len(snapshots)))
    failures: list[BaseException] = []

    def take() -> int | None:
        with lock:
            return next(queue, None)

    def lane(device: str, worker: RemoteModel | None) -> None:
        ahead, weights, ahead_weights = None, None, None
        try:
            i = take()
            while i is not None:
                following = take()  # this lane's next snapshot, taken now so its worker can load it ahead
                snap = snapshots[i]
                if progress:
                    print(f"evaluating snapshot {snap.tag} ({i + 1}/{len(snapshots)}) on {device}", flush=True)
                if prefetch and following is not None:  # its worker starts while this snapshot is scored
                    ahead = options.remote(None, device, data.vocab_size, server).start()
                    if ahead.forked:
                        ahead, ahead_weights = load_ahead(ahead, snapshots[following], cache, options, data, device)
                worker = worker or options.remote(snap, device, data.vocab_size, server)
                try:
                    fit, val = snapshot_logprobs(snap, data, cache, batch_size, device, options=options,
                                                 worker=worker, stream=i, weights=weights)
                    results[i] = ("ok", fit, val)
                except InvalidSnapshot as exc:
                    results[i] = ("invalid", str(exc))
                worker, weights, ahead, ahead_weights = ahead, ahead_weights, None, None
                i = following
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            failures.append(exc)
        finally:
            for left in (worker, ahead):
                if left is not None:
                    left.close()

    threads = [threading.Thread(target=lane, args=(d, first_worker if k == 0 else None), name=f"eval-{d}")
               for k, d in enumerate(devices)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    valid, fits, vals, invalid = [], [], [], []
    for snap, outcome in zip(snapshots, results):
        if outcome[0] == "ok":
            valid.append(snap)
            fits.append(outcome[1])
            vals.append(outcome[2])
        else:
            invalid.append({"tag": snap.tag, "epochs": snap.epochs, "reason": outcome[1]})
            if progress:
                print(f"snapshot {snap.tag} is invalid and will not be scored: {outcome[1]}", flush=True)
    return valid, fits, vals, invalid


def start_worker(device: str = "cpu", vocab_size: int | None = None, *, method_dir: Path | None = None,
                 builder_roots: Sequence[Path] | None = None, require_sandbox: bool = False,
                 fork_server: bool = FORK_SERVER) -> RemoteModel:
    """An evaluation worker started now for the first snapshot evaluate_run will score (``first_worker``);
    give it the ``device``, ``method_dir`` and ``builder_roots`` that evaluate_run will be given.

    A fresh worker spends ~1.5 s (CPU) starting Python and importing torch; started while the method
    trains, that is off the evaluation's clock. With ``fork_server`` (where the system allows it) what
    starts is the evaluation's fork server, whose zygote imports torch meanwhile: the returned worker owns
    it, forks from it when it is loaded, and hands it to evaluate_run, whose every worker then forks from
    it. Until given a snapshot it runs harness code only, sandboxed, and holds no data. Call from the
    thread that will call evaluate_run (the supervisor is tied to it), and close() it if evaluate_run is
    not called. Its time limit is set by evaluate_run when it is given its snapshot."""
    options = WorkerOptions(Path(method_dir) if method_dir is not None else None,
                            None if builder_roots is None else tuple(Path(r) for r in builder_roots),
                            require_sandbox=require_sandbox, fork_server=fork_server)
    server = options.new_fork_server()
    if server is None or not server.usable:
        if server is not None:
            server.close()
        return options.remote(None, device, vocab_size).start()
    return RemoteModel(None, method_dir=options.method_dir, builder_roots=options.builder_roots, device=device,
                       vocab_size=vocab_size, timeout_s=None, require_sandbox=require_sandbox,
                       fork_server=server, owns_fork_server=True)


def _fork_server_for(options: WorkerOptions, first_worker: RemoteModel | None) -> ForkServer | None:
    """The fork server of ``first_worker`` when it brought one made for these options (the evaluation's
    to close now), else a new one (None: fresh processes)."""
    if first_worker is not None and first_worker.fork_server is not None and first_worker.fork_server.matches(
            options.method_dir, options.builder_roots, options.require_sandbox) and options.fork_server:
        server = first_worker.take_fork_server()
        if server is not None:
            return server
    return options.new_fork_server()


def _cached(snapshot: Snapshot, cache: Path, eval_dtype: str = "float32", by: str | None = None) -> bool:
    """Whether the snapshot's cache will be used (so no worker is needed for it). The hash stamped at
    intake stands for the weights here (this only plans workers; scoring hashes the file it reads)."""
    try:
        digest = snapshot.weights_sha256 or sha256_file(Path(snapshot.folder) / WEIGHTS)
        return cache_is_trusted(cache, snapshot.tag, digest, eval_dtype, by)
    except OSError:
        return False


def _needs_worker(snapshot: Snapshot, cache: Path, options: WorkerOptions) -> bool:
    """Whether scoring the snapshot will start a worker: not when its cache is used or its graph is run."""
    by = options.scored_by(snapshot)  # (a graph needs no worker: no cache file is hashed to know it)
    return by != GRAPH_EVALUATED and not _cached(snapshot, cache, options.eval_dtype, by)


@dataclass(frozen=True)
class EvaluationOptions:
    """How a run's snapshots are scored; what is scored (the run, its data, its ensemble) are arguments.

    ``method_dir`` is the method's directory (builders defined there, e.g. 'mymodel:build'),
    ``builder_roots`` more trusted folders a builder may come from besides the method directory and
    ``q0_reference`` (the run's --allow-read folders; the test suite's ``tests``; None: those in
    $SLOWRUN_ALLOW_READ). ``timeout_s`` is a fixed limit per snapshot (None: the rule of
    harness/eval/limits.py, from its size and the windows), ``eval_timeout_s`` a limit on the whole
    evaluation (a snapshot whose turn comes after it is listed as not scored). ``eval_dtype`` is float32
    (exact) or bfloat16 (forwards under bf16 autocast; the probes then allow bf16's tolerance).
    ``devices`` shares the snapshots out over several workers at once, one per device (every GPU of the
    job; or several CPU workers): each snapshot is scored whole by one worker, so the numbers are the same
    as with one device; None: ``device`` alone. ``fork_server``: each snapshot's worker is forked from one
    zygote started for this evaluation (or the one a first worker brought), which imported torch once,
    instead of being a fresh process (the same numbers, bit for bit). ``graphs``: a snapshot handed over
    with its exported forward is run from it here (its row says ``evaluated_by: graph``); False runs every
    snapshot by its own code in the worker."""

    batch_size: int = 16
    device: str = "cpu"
    devices: tuple[str, ...] | None = None
    eval_dtype: str = "float32"
    graphs: bool = True
    method_dir: Path | None = None
    builder_roots: tuple[Path, ...] | None = None
    timeout_s: float | None = None
    eval_timeout_s: float | None = None
    probes: ProbeSettings | None = None
    prefetch: bool = PREFETCH
    require_sandbox: bool = False
    fork_server: bool = FORK_SERVER
    progress: bool = True

    def worker_options(self, eval_dtype: str, *, total_s: float | None = None,
                       fork_server: bool | None = None) -> WorkerOptions:
        """How each snapshot's worker scores it, for an evaluation in `eval_dtype` (resolved for the device):
        one place, so a later scoring of the same run (a test split at verification) runs as evaluation did."""
        return WorkerOptions(Path(self.method_dir) if self.method_dir is not None else None,
                             None if self.builder_roots is None else tuple(Path(r) for r in self.builder_roots),
                             EvalLimits(per_snapshot_s=self.timeout_s, total_s=total_s).start(),
                             replace(self.probes or ProbeSettings(), eval_dtype=eval_dtype), self.require_sandbox,
                             autocast=None if eval_dtype == "float32" else eval_dtype,
                             fork_server=self.fork_server if fork_server is None else fork_server, graphs=self.graphs)


def evaluate_run(run_dir: Path, data_dir: Path, seq_len: int, ensemble_choice: Mapping[str, float] | str | None,
                 reference_curve: str | None, options: EvaluationOptions = EvaluationOptions(), *,
                 fitness_docs: int | None = None, first_worker: RemoteModel | None = None) -> dict:
    """The evaluation parts of a record: snapshots, ensemble, result, k_sweep, curve, invalid_snapshots.

    ``options`` says how snapshots are scored (:class:`EvaluationOptions`). Invalid snapshots are listed with
    their reason and left out of everything else; a method ensemble naming one is renormalised over the
    rest (no valid member left: result None). ``fitness_docs`` is the run's fitness carve in documents
    (None: the prepared data's default, for runs from before methods declared their carve).
    ``first_worker`` (from :func:`start_worker`, e.g. started while the method trained) is used for the
    first snapshot to score, and closed in any case.
    """
    o = options
    batch_size, device, progress, prefetch = o.batch_size, o.device, o.progress, o.prefetch
    snapshots = list_snapshots(Path(run_dir) / "snapshots")
    empty = {"snapshots": [], "ensemble": {"members": [], "source": "last"}, "result": None, "k_sweep": [],
             "curve": [], "prior": None, "invalid_snapshots": []}
    if not snapshots:
        if first_worker is not None:
            first_worker.close()
        return empty
    apply_thread_setting()
    data = open_eval_data(data_dir, seq_len, fitness_docs)
    eval_dtype = resolve_eval_dtype(o.eval_dtype, device)
    options = o.worker_options(eval_dtype, total_s=o.eval_timeout_s)
    devices = tuple(o.devices) if o.devices else (device,)
    setup = {"dtype": eval_dtype, "devices": list(devices),
             "limits": {"per_snapshot_s": o.timeout_s if o.timeout_s is not None else "rule",
                        "total_s": o.eval_timeout_s}}
    empty["evaluation"] = setup
    cache = Path(run_dir) / "eval"
    server = None
    try:
        if any(_needs_worker(s, cache, options) for s in snapshots):
            server = _fork_server_for(options, first_worker)
        if len(devices) > 1:
            snapshots, fits, vals, invalid = _score_lanes(snapshots, data, cache, batch_size, devices, options,
                                                          prefetch, progress, first_worker, server)
        else:
            snapshots, fits, vals, invalid = _score_all(snapshots, data, cache, batch_size, device, options,
                                                        prefetch, progress, first_worker, server)
    finally:
        if server is not None:  # the zygote and every worker still below it end with the scoring
            server.close()
        if first_worker is not None:
            first_worker.close()
    if not snapshots:
        return {**empty, "invalid_snapshots": invalid}
    tags = [s.tag for s in snapshots]
    fit_m, val_m = np.stack(fits), np.stack(vals)
    has_fitness = fit_m.shape[1] > 0

    snapshot_rows = [
        {"tag": s.tag, "epochs": s.epochs, "val_loss": mean_nll(v), "val_bpb": _bpb(v, data), "meta": s.meta,
         "fitness_loss": mean_nll(f) if has_fitness else None, "evaluated_by": evaluated_by(cache, s.tag)}
        for s, f, v in zip(snapshots, fits, vals)
    ]
    prior = fit_prior(fit_m) if has_fitness else None

    if isinstance(ensemble_choice, Mapping) and ensemble_choice:
        weights = np.array([float(ensemble_choice.get(t, 0.0)) for t in tags])  # invalid members drop out
        source = "method"
    elif ensemble_choice == "prior" and prior is not None:
        weights = np.where(prior.weights >= MIN_PRIOR_WEIGHT, prior.weights, 0.0)
        source = "prior"
    else:
        weights = np.zeros(len(tags))
        weights[-1] = 1.0
        source = "last"
    result = None
    if weights.sum() > 0:
        weights = weights / weights.sum()
        final_val = mixture_logp(val_m, weights)
        result = {
            "val_loss": mean_nll(final_val),
            "val_bpb": _bpb(final_val, data),
            "ensemble_size": int(np.count_nonzero(weights)),
            "data_efficiency": efficiency_of(mean_nll(final_val), reference_curve),
            "timed_subset": subset_summary(final_val, data.val_target_bytes, len(data.val_windows), seq_len),
        }
    else:
        weights = np.zeros(len(tags))

    sweep, curve = [], []
    if prior is not None:
        for point in k_sweep(fit_m, val_m, default_ks(len(tags)), prior=prior):
            mixed = mixture_logp(val_m[list(point.members)], np.array(point.weights))
            sweep.append({"k": point.k, "val_loss": point.val_nll, "val_bpb": _bpb(mixed, data),
                          "fitness_loss": point.fitness_nll,
                          "members": [{"tag": tags[m], "weight": float(w)} for m, w in zip(point.members, point.weights)]})
        epochs = [s.epochs for s in snapshots]
        for point in loss_curve(epochs, fit_m, val_m, stamps=curve_stamps(epochs)):
            curve.append({"epochs": point.epochs, "val_loss": point.val_nll, "choice": point.choice,
                          "members": [tags[m] for m in point.members]})
    else:  # no fitness data: the curve is each snapshot alone, in order
        shown = set(curve_stamps([r["epochs"] for r in snapshot_rows]))
        curve = [{"epochs": r["epochs"], "val_loss": r["val_loss"], "choice": "single", "members": [r["tag"]]}
                 for r in snapshot_rows if r["epochs"] in shown]
    return {
        "snapshots": snapshot_rows,
        "ensemble": {"members": _members(tags, weights), "source": source},
        "result": result,
        "k_sweep": sweep,
        "curve": curve,
        "prior": None if prior is None else {
            "weights": {t: float(w) for t, w in zip(tags, prior.weights)}, "fitness_loss": prior.nll,
            "iterations": prior.iterations, "converged": prior.converged, "method": prior.method,
            "passes": prior.passes, "gap": float(prior.gap), "fallback": prior.fallback},
        "invalid_snapshots": invalid,
        "evaluation": setup,
    }


def efficiency_of(loss: float, reference_curve: str | None) -> dict:
    if not reference_curve or not curve_path(reference_curve).exists():
        return {"multiplier": None, "bound": None, "flag": "no-reference-curve"}
    try:
        eff = data_efficiency(loss, load_reference_curve(reference_curve))
    except ReferenceCurveError as exc:
        return {"multiplier": None, "bound": None, "flag": f"reference-curve-error: {exc}"}
    return {"multiplier": eff.multiplier, "bound": eff.bound, "flag": eff.flag}
