"""Downstream scores for a snapshot or an ensemble: the `downstream` field of a run record.

Each task reports accuracy (``acc``: the choice with the highest total log-likelihood is the gold one) and
normalised accuracy (``acc_norm``: the same with each log-likelihood divided by the choice's length in
characters, lm-eval's definition), both labelled, with their standard errors, the number of documents
scored, and the split they were drawn from (its name, rows and source; see :mod:`harness.eval.downstream.splits`).
Each task also carries a ``provenance`` object saying how the scores were made, so two records can be told
apart when they would not compare (see :func:`task_provenance`).
"""

from __future__ import annotations

import math
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Sequence

from harness.data.manifest import read_manifest
from harness.data.tokenizers import ByteBpeTokenizer, Gpt2Tokenizer
from harness.eval.downstream.limits import DocumentLimits
from harness.eval.downstream.splits import DownstreamData, split_facts
from harness.eval.downstream.tasks import DEFAULT_TASKS, config_sha256, load_tasks, quiet_lm_eval, task_config
from harness.errors import DataError, SlowrunError

METRICS = ("acc", "acc_norm")
FEWSHOT_SEED = 1234  # lm-eval's default; the configs are zero-shot, so it only keeps runs reproducible
# Requests the three tasks make of a model, rounded up: ARC-Easy's test 2,376 questions x 4 choices, PIQA's
# validation 1,838 x 2, SciQ's test 1,000 x 4 (17,180). Counted as full windows for the time limit.
DOWNSTREAM_REQUESTS = 20_000


class DownstreamNotApplicable(SlowrunError):
    """The track's token ids do not spell text, so text benchmarks cannot be put to its models."""


def track_tokenizer(track_folder: str | Path, gpt2_ranks: str | Path | None = None):
    """The prepared track's tokenizer and sequence length, checked against the manifest's tokenizer hash."""
    folder = Path(track_folder)
    manifest = read_manifest(folder)
    spec = manifest["tokenizer"]
    kind = spec["kind"]
    if kind == "identity":
        raise DownstreamNotApplicable(
            f"track {manifest['track']['name']!r} is synthetic: its tokens are ids of a generated language, not "
            "text, so ARC-Easy, PIQA and SciQ cannot be scored on it (downstream scores need a text track)")
    if kind == "gpt2":
        tokenizer = Gpt2Tokenizer(gpt2_ranks)
    elif kind == "byte-bpe":
        tokenizer = ByteBpeTokenizer.load(folder)
    else:
        raise DataError(f"{folder}: tokenizer kind {kind!r} is unknown to downstream scoring")
    if tokenizer.identity()["hash"] != spec["hash"]:
        raise DataError(f"{folder}: the tokenizer found does not match the one the track was prepared with "
                        "(hash differs); point to the same tokenizer files")
    return tokenizer, int(manifest["seq_len"])


def _task_scores(results: dict, task: str) -> dict:
    row = results["results"][task]
    scores = {}
    for metric in METRICS:
        scores[metric] = float(row[f"{metric},none"])
        stderr = row.get(f"{metric}_stderr,none")
        scores[f"{metric}_stderr"] = float(stderr) if isinstance(stderr, (int, float)) else None
    scores["n"] = int(results["n-samples"][task]["effective"])
    return scores


def lm_eval_version() -> str | None:
    """The installed lm-eval's version string, as its package metadata says (None if it is not installed)."""
    try:
        return version("lm_eval")
    except PackageNotFoundError:
        return None


def padding_side_of(lm) -> str | None:
    """Which side the model pads a batch on: ``"left"`` or ``"right"``, None when the model does not say.

    :class:`harness.eval.downstream.lm.MixtureLM` says ``padding_side``; lm-eval's Hugging Face models say it
    through their tokenizer.
    """
    for owner in (lm, getattr(lm, "tokenizer", None)):
        side = getattr(owner, "padding_side", None)
        if side in ("left", "right"):
            return side
    return None


def task_provenance(config: dict, num_fewshot, padding_side: str | None) -> dict:
    """How one task was scored, beside the split facts (``split``, ``split_rows``) already in its scores.

    ``lm_eval``: the installed lm-eval version; ``config_sha256``: the digest of the pinned task config
    (:func:`harness.eval.downstream.tasks.config_sha256`, over its canonical JSON); ``num_fewshot``: the shots
    lm-eval used (its ``n-shot``); ``fewshot_seed``: the seed of the few-shot sampler, null when no shot is
    drawn (zero-shot: no example is sampled, so no seed applies); ``padding_side``: where the model padded its
    batches (null when the model does not say).
    """
    shots = int(num_fewshot) if isinstance(num_fewshot, int) and not isinstance(num_fewshot, bool) else None
    return {"lm_eval": lm_eval_version(), "config_sha256": config_sha256(config), "num_fewshot": shots,
            "fewshot_seed": FEWSHOT_SEED if shots else None, "padding_side": padding_side}


def run_tasks(lm, tasks: Sequence[str] = DEFAULT_TASKS, data: DownstreamData | str | Path | None = None,
              limit: DocumentLimits | int | None = None) -> dict[str, dict]:
    """Score any lm-eval ``LM`` on the project's task configs; returns the per-task score table.

    ``data`` says where each task's documents come from (a :class:`DownstreamData`, a local folder, or None
    for the Hub); ``limit`` how many of each task's first documents to score (one number for every task or
    a :class:`DocumentLimits`). Each task's scores name the split scored and its row count, and carry its
    ``provenance`` (:func:`task_provenance`).
    """
    from lm_eval.evaluator import evaluate

    limits = DocumentLimits.of(limit)
    tasks = list(tasks)
    if len(set(tasks)) != len(tasks):
        raise SlowrunError(f"downstream tasks are listed more than once: {tasks}")
    unknown = limits.unknown_tasks(tasks)
    if unknown:
        raise SlowrunError(f"a downstream limit is given for {', '.join(unknown)}, which is not scored "
                           f"(scored: {', '.join(tasks)})")
    data = DownstreamData.of(data)
    loaded = load_tasks(tasks, data)
    rows = {name: len(loaded["tasks"][name].eval_docs) for name in tasks}
    # lm-eval takes one limit for all tasks, or the exact documents per task; per-task limits need the latter.
    samples = {name: list(range(min(limits.for_task(name), rows[name]))) for name in tasks
               if limits.for_task(name) is not None}
    with quiet_lm_eval():
        # lm-eval's `evaluate`, not `simple_evaluate`: the latter adds nothing for zero-shot tasks with a
        # ready-made model but probes the whole environment (torch's collect_env) on every call, ~6 s.
        for task in loaded["tasks"].values():
            task.set_fewshot_seed(seed=FEWSHOT_SEED)
        results = evaluate(lm=lm, task_dict=loaded, samples=samples or None, log_samples=False)
    padding_side = padding_side_of(lm)
    scores = {}
    for name in tasks:
        config = task_config(name)
        scores[name] = {**_task_scores(results, name),
                        **split_facts(config, data.split_file(name, config), rows[name]),
                        "provenance": task_provenance(config, results["n-shot"].get(name), padding_side)}
    return scores


def score_downstream(models: Sequence, weights: Sequence[float] | None = None, *, tokenizer, seq_len: int,
                     tasks: Sequence[str] = DEFAULT_TASKS, data_dir: DownstreamData | str | Path | None = None,
                     limit: DocumentLimits | int | None = None, batch_size: int = 32, device: str = "cpu",
                     progress: bool = False) -> dict[str, dict]:
    """Zero-shot scores of the mixture of ``models`` (uniform when ``weights`` is None).

    Returns ``{task: {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n", "split", "split_rows",
    "published_rows", "source", "provenance"}}``. Data comes from the Hub unless ``data_dir`` names local data
    (a folder or a :class:`DownstreamData`); ``limit`` scores only each task's first documents (see
    :func:`run_tasks`).
    """
    from harness.eval.downstream.lm import MixtureLM

    lm = MixtureLM(models, weights, tokenizer=tokenizer, seq_len=seq_len, batch_size=batch_size, device=device,
                   progress=progress)
    return run_tasks(lm, tasks, data_dir, limit)


class SnapshotMember:
    """A stored snapshot as an ensemble member: its model runs in an evaluation worker of its own, started by
    ``prepare`` (a process importing torch, no weights), loaded by ``open`` and stopped by ``close``."""

    def __init__(self, snapshot, tokens: int | None = None, **worker_options):
        self.snapshot = snapshot
        self.tokens = tokens  # what it will score: its time limit follows the rule of harness/eval/limits.py
        self.worker_options = worker_options
        self._remote = None

    def prepare(self) -> None:
        from harness.eval.remote_model import RemoteModel

        if self._remote is None:
            self._remote = RemoteModel(self.snapshot, **self.worker_options).start()

    def open(self):
        from harness.eval.remote_model import read_weights
        from harness.eval.limits import EvalLimits

        self.prepare()
        weights = read_weights(self.snapshot)
        if self.tokens is not None:
            self._remote.timeout_s = EvalLimits().start().snapshot_s(weights[0], self.tokens, self._remote.device)
        return self._remote.load(weights)

    def close(self) -> None:
        if self._remote is not None:
            self._remote.close()
            self._remote = None


def score_snapshots(snapshots: Sequence, weights: Sequence[float] | None = None, *, tokenizer, seq_len: int,
                    device: str = "cpu", method_dir: str | Path | None = None,
                    builder_roots: Sequence[str | Path] | None = None, timeout_s: float | None = None,
                    **options) -> dict[str, dict]:
    """:func:`score_downstream` for stored snapshots (``harness.formats.snapshots.Snapshot``), run on ``device``.

    Each snapshot's model runs in an evaluation worker of its own (see :mod:`harness.eval.remote_model`), never in
    this process, and one at a time: a member's worker is stopped before the next one loads its weights
    (the next worker's process is started ahead, so its torch import overlaps). ``method_dir`` and
    ``builder_roots`` say where its builder may come from (see :class:`harness.eval.remote_model.RemoteModel`),
    ``timeout_s`` bounds each worker (default: the evaluation's rule for the snapshot's size and
    DOWNSTREAM_REQUESTS full windows). A snapshot that cannot be run raises
    :class:`harness.eval.remote_model.InvalidSnapshot`.
    """
    members = [SnapshotMember(snapshot, tokens=None if timeout_s is not None else DOWNSTREAM_REQUESTS * seq_len,
                              method_dir=method_dir, builder_roots=builder_roots, device=device,
                              vocab_size=getattr(tokenizer, "vocab_size", None), timeout_s=timeout_s)
               for snapshot in snapshots]
    try:
        return score_downstream(members, weights, tokenizer=tokenizer, seq_len=seq_len, device=device, **options)
    finally:
        for member in members:  # a worker prepared ahead of a failure must not outlive it
            member.close()


def downstream_average(scores: dict[str, dict]) -> dict[str, float]:
    """Unweighted mean over tasks of ``acc`` and of ``acc_norm`` (each task counts once, whatever its size)."""
    if not scores:
        raise SlowrunError("no downstream scores to average")
    average = {}
    for metric in METRICS:
        values = [float(task[metric]) for task in scores.values()]
        if not all(math.isfinite(v) for v in values):
            raise SlowrunError(f"a downstream {metric} is not a finite number: {values}")
        average[metric] = sum(values) / len(values)
    return average
