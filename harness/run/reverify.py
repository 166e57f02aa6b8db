"""`slowrun leaderboard add --verify`: re-evaluate a submitted run's snapshots and compare with its record.

The harness protects its numbers from the method's code, not from whoever ran `slowrun run` (they could
edit the record, or the harness). So a maintainer re-computes what the record claims on their own copy of
the track's prepared data: every snapshot is scored again in the sandboxed evaluation worker (with the
causality and statelessness probes), the final predictor is rebuilt from the record's ensemble, and each
loss must agree with the record within `TOLERANCE`.

TOLERANCE is 1e-4 nats per token, absolute. The same fp32 snapshot scored on different CPUs or thread
counts agrees to about 1e-6 here (summation order); 1e-4 leaves room for other hardware and is still a
twentieth of the smallest gain that has set a Slowrun record (about 2e-3 nats).

With a held-out test split (`--test-data DIR`, made by `slowrun prepare --test-split`,
harness/data/holdout.py), a run whose re-evaluation agreed is then scored on it: the record's final predictor (its
`ensemble`: the same members with the same weights) through the same evaluation code as validation
(`snapshot_logprobs` with its probes, `mixture_logp`, `mean_nll`, `bits_per_byte`), in the same copy of
the snapshots, whose validation caches give the validation side of the comparison at no cost. The result
is the record's `test` section (harness/formats/records.py); `Reverifier` keeps it for `leaderboard add`.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.data.manifest import read_manifest
from harness.errors import SlowrunError
from harness.formats.records import record_to_json

TOLERANCE = 1e-4
TEST_BY = "slowrun leaderboard add --verify --test-data"


def reverify_run(run_dir: str | Path, record: dict, *, method_dir: str | Path | None = None,
                 data_dir: str | Path | None = None, allow_read: tuple[Path, ...] = (),
                 tolerance: float = TOLERANCE, batch_size: int = 16, device: str = "cpu",
                 progress: bool = False) -> list[str]:
    """Problems found re-evaluating RUN_DIR's snapshots against `record` (empty when all agree).

    `data_dir` is the maintainer's prepared folder of the record's track (default `prepared/<track>`); its
    data hash must be the record's. `method_dir` is needed when the snapshots' builders live in the
    method's own directory."""
    return Reverifier(method_dir=method_dir, data_dir=data_dir, allow_read=tuple(allow_read), tolerance=tolerance,
                      batch_size=batch_size, device=device, progress=progress).verify(run_dir, record)


@dataclass
class Reverifier:
    """One `leaderboard add --verify [--test-data DIR]`: `verify` is add's verification hook (run folder,
    record -> problems); with `test_data`, a run that verifies is also scored on that test split, and
    `test_section` (add's test hook) gives the record's `test` section found for it."""

    method_dir: str | Path | None = None
    data_dir: str | Path | None = None
    allow_read: tuple[Path, ...] = ()
    test_data: str | Path | None = None
    tolerance: float = TOLERANCE
    batch_size: int = 16
    device: str = "cpu"
    progress: bool = False
    sections: dict = field(default_factory=dict, repr=False)  # the record's canonical text -> its test section

    def verify(self, run_dir: str | Path, record: dict) -> list[str]:
        from harness.eval.evaluation import EvaluationOptions, evaluate_run
        from harness.rules.allow_read import env_allow_read
        from harness.run.runner import default_data_dir

        run_dir = Path(run_dir)
        snapshots = run_dir / "snapshots"
        if not snapshots.is_dir():
            return [f"{run_dir}: --verify needs the run folder with its snapshots/, not only the record"]
        track = record["track"]
        data_dir = Path(self.data_dir) if self.data_dir else default_data_dir(track["name"])
        try:
            manifest = read_manifest(data_dir)
        except SlowrunError as exc:
            return [f"--verify needs the track's prepared data: {exc}"]
        if manifest["data_hash"] != track["data_hash"]:
            return [f"{data_dir} holds data {manifest['data_hash'][:12]}, the record ran on {track['data_hash'][:12]}; "
                    "prepare the record's track (slowrun prepare) and pass it"]
        test = None
        if self.test_data is not None:
            test = open_test_data(self.test_data, record, manifest)
            if isinstance(test, list):
                return test
        recorded = {s["tag"]: s for s in record["snapshots"]}
        missing = sorted(set(recorded) - {p.name for p in snapshots.iterdir() if p.is_dir()})
        if missing:
            return [f"snapshots named in the record are not in {snapshots}: {', '.join(missing[:5])}"]
        ensemble = record["ensemble"]
        choice = ({m["tag"]: m["weight"] for m in ensemble["members"]} if ensemble["source"] == "method"
                  else "prior" if ensemble["source"] == "prior" else None)
        with tempfile.TemporaryDirectory(prefix="slowrun-verify-") as tmp:
            copy = Path(tmp)
            for tag in recorded:  # only what the record claims; nothing of the submitter's caches
                _link_snapshot(snapshots / tag, copy / "snapshots" / tag)
            carve = record.get("fitness_carve") or {}
            options = EvaluationOptions(batch_size=self.batch_size, device=self.device, progress=self.progress,
                                        method_dir=Path(self.method_dir) if self.method_dir else None,
                                        builder_roots=tuple(Path(p) for p in (*self.allow_read, *env_allow_read())))
            evaluation = evaluate_run(copy, data_dir, int(track["seq_len"]), choice, None, options,
                                      fitness_docs=carve.get("documents"))
            problems = compare(record, evaluation, self.tolerance)
            if problems or test is None:
                return problems
            section = None  # a run without a result (it failed) has no final predictor to score
            if record.get("result") is not None:
                try:
                    section = score_test_split(copy, record, data_dir, *test, options, carve.get("documents"),
                                               self.tolerance, members=evaluation["ensemble"]["members"])
                except SlowrunError as exc:
                    return [f"test split: {exc}"]
        self.sections[_key(record)] = section
        return []

    def test_section(self, run_dir: str | Path, record: dict) -> dict | None:
        """The `test` section `verify` found for this record (None for a run without a result; SlowrunError if
        `verify` did not score it). The record, not the folder, is the key: a bundle's run is verified in a
        folder of fetched weights made for the call."""
        try:
            return self.sections[_key(record)]
        except KeyError:
            raise SlowrunError(f"run {record['run_id']!r} has no test score: it is scored on the test split by "
                               "--verify with --test-data") from None


def _link_snapshot(source: Path, target: Path) -> None:
    """The snapshot's files in the verification's own folder, hard-linked where the file system allows and
    copied where it does not: a submission of 480 snapshots is about 1.8 TB, and a copy would need that much
    disk again. A hard link (not a symlink) is a file of the folder itself, so the sandboxed evaluation
    worker reads it where it may read, whatever folder the original sits in (a bundle, the fetch cache).
    Evaluation only reads the weights; its caches are new files beside them, never written through a link."""
    target.mkdir(parents=True)
    for path in sorted(source.iterdir()):
        real = path.resolve()  # a bundle's fetched weights arrive as links into the cache
        if not real.is_file():
            continue
        try:
            os.link(real, target / path.name)
        except OSError:  # another file system, or one without hard links
            shutil.copyfile(real, target / path.name)


def _key(record: dict) -> str:
    return record_to_json(record)


def open_test_data(test_dir: str | Path, record: dict, manifest: dict):
    """(test manifest, its TokenStore) for a record on the prepared data of `manifest`, or the problems: a
    test split must be of the record's track, tokenizer, window length and the very data it ran on."""
    from harness.data.holdout import open_test_split

    try:
        test_manifest, store = open_test_split(test_dir)
    except SlowrunError as exc:
        return [f"--test-data: {exc}"]
    track, problems = record["track"], []
    name = test_manifest["track"]["name"]
    if name != track["name"]:
        problems.append(f"--test-data {test_dir} is a test split of track {name!r}; the record is on track "
                        f"{track['name']!r}")
    ours, theirs = test_manifest["tokenizer"], manifest["tokenizer"]
    if any(ours.get(key) != theirs.get(key) for key in ("hash", "vocab_size", "bos_id")):
        problems.append(f"--test-data {test_dir} was tokenized by another tokenizer (hash "
                        f"{str(ours.get('hash'))[:12]}, vocabulary {ours.get('vocab_size')}) than the record's data "
                        f"(hash {str(theirs.get('hash'))[:12]}, vocabulary {theirs.get('vocab_size')})")
    if test_manifest["follows"]["data_hash"] != track["data_hash"]:
        problems.append(f"--test-data {test_dir} follows data {test_manifest['follows']['data_hash'][:12]}, the record "
                        f"ran on {track['data_hash'][:12]}; prepare the test split of the record's data (slowrun "
                        f"prepare --track {track['name']} --out DATA --test-split DIR)")
    if int(test_manifest["seq_len"]) != int(track["seq_len"]):
        problems.append(f"--test-data {test_dir} is cut in windows of {test_manifest['seq_len'] + 1}, the record's "
                        f"are {int(track['seq_len']) + 1}")
    elif store.num_windows(int(track["seq_len"])) < 2:
        problems.append(f"--test-data {test_dir} holds fewer than two windows: its loss would have no standard error")
    return problems or (test_manifest, store)


def window_standard_error(logp: np.ndarray, seq_len: int) -> float:
    """The standard error of the mean loss over `logp` (one split's targets, window after window), from its
    windows' mean losses: s / sqrt(n) over the n window means (sample standard deviation s).

    The mean over every target equals the mean of the window means (every window has seq_len targets).
    Targets of one window share a document and its context, so they are not independent and the per-token
    standard error would understate how much the loss depends on which text the split happened to hold;
    windows are disjoint stretches of the stream, much closer to independent draws.
    """
    losses = -np.asarray(logp, dtype=np.float64).reshape(-1, seq_len).mean(axis=1)
    if losses.size < 2:
        raise SlowrunError("a standard error needs at least two windows")
    return float(losses.std(ddof=1) / math.sqrt(losses.size))


def score_test_split(copy: Path, record: dict, data_dir: Path, test_manifest: dict, store, options,
                     fitness_docs: int | None = None, tolerance: float = TOLERANCE, *,
                     members: list[dict] | None = None) -> dict:
    """The record's `test` section: its final predictor scored on the test split in `store`.

    `copy` is the run folder evaluate_run has just scored with `options` (its validation caches are used as
    they are). Each member is scored on the test windows by `snapshot_logprobs`, as validation was (a
    snapshot failing a probe there is an error), and mixed with `members`' weights: the re-evaluation's
    own (a learned prior refit here, or the method's stated weights), not the record's. Weights that only
    agree with the prior on the validation loss to the tolerance could otherwise have been picked on
    the test split. Without `members`, the record's are used."""
    from harness.eval.ensemble import bits_per_byte, mean_nll, mixture_logp
    from harness.eval.evaluation import EvalData, open_eval_data, resolve_eval_dtype, snapshot_logprobs
    from harness.eval.remote_model import InvalidSnapshot
    from harness.formats.snapshots import list_snapshots

    seq_len = int(record["track"]["seq_len"])
    eval_dtype = resolve_eval_dtype(options.eval_dtype, options.device)
    worker = options.worker_options(eval_dtype, fork_server=False)  # as evaluate_run's, one worker at a time
    val_data = open_eval_data(data_dir, seq_len, fitness_docs)
    windows = store.windows(seq_len)
    table_file = Path(data_dir) / "token_bytes.bin"
    target_bytes = None
    if table_file.exists():
        target_bytes = np.fromfile(table_file, dtype=np.int32)[np.asarray(windows[:, 1:]).reshape(-1)]
    test_data = EvalData(windows, np.empty((0, seq_len + 1), dtype=windows.dtype), target_bytes, val_data.vocab_size)

    snapshots = list_snapshots(copy / "snapshots")
    position = {s.tag: i for i, s in enumerate(snapshots)}
    members = record["ensemble"]["members"] if members is None else members
    vals, tests = [], []
    for member in members:
        snapshot = snapshots[position[member["tag"]]]
        stream = position[member["tag"]]  # the probes' seeds, as evaluate_run gives them
        try:
            vals.append(snapshot_logprobs(snapshot, val_data, copy / "eval", options.batch_size, options.device,
                                          options=worker, stream=stream)[1])
            tests.append(snapshot_logprobs(snapshot, test_data, copy / "test-eval", options.batch_size,
                                           options.device, options=worker, stream=stream)[1])
        except InvalidSnapshot as exc:
            raise SlowrunError(f"snapshot {member['tag']!r} of the final predictor cannot be scored: {exc}") from None
    weights = np.array([float(m["weight"]) for m in members])
    val_mix, test_mix = mixture_logp(np.stack(vals), weights), mixture_logp(np.stack(tests), weights)
    again, stated = mean_nll(val_mix), record["result"]["val_loss"]
    if abs(again - stated) > tolerance:
        raise SlowrunError(f"the final predictor, mixed again with the re-evaluation's weights, gives val loss "
                           f"{again:.6f}, the record's result says {stated} (tolerance {tolerance:g})")
    with_bpb = record["result"].get("val_bpb") is not None and target_bytes is not None
    return {
        "loss": mean_nll(test_mix),
        "bpb": float(bits_per_byte(test_mix, target_bytes)) if with_bpb else None,
        "loss_se": window_standard_error(test_mix, seq_len),
        "val_loss_se": window_standard_error(val_mix, seq_len),
        "tokens": int(test_mix.size),
        "windows": int(windows.shape[0]),
        "split_hash": test_manifest["split_hash"],
        # keyed: sampled by the maintainers' secret, so a submitter cannot rebuild it; contiguous: the next
        # tokens of the public stream (harness/data/holdout.py)
        "selection": (test_manifest.get("selection") or {}).get("kind", "contiguous"),
        "by": TEST_BY,
        "eval_dtype": eval_dtype,
    }


def compare(record: dict, evaluation: dict, tolerance: float = TOLERANCE) -> list[str]:
    """Every loss of the record against the re-evaluation's (a pure function: tested on its own)."""
    problems = []
    invalid = {s["tag"]: s["reason"] for s in evaluation.get("invalid_snapshots", [])}
    again = {s["tag"]: s for s in evaluation["snapshots"]}
    for snap in record["snapshots"]:
        tag = snap["tag"]
        if tag in invalid:
            problems.append(f"snapshot {tag!r} is invalid on re-evaluation: {invalid[tag]}")
        elif tag not in again:
            problems.append(f"snapshot {tag!r} was not re-evaluated")
        elif snap.get("val_loss") is None or abs(again[tag]["val_loss"] - snap["val_loss"]) > tolerance:
            problems.append(f"snapshot {tag!r}: the record says val loss {snap.get('val_loss')}, re-evaluation gives "
                            f"{again[tag]['val_loss']:.6f} (tolerance {tolerance:g})")
    result, redone = record.get("result"), evaluation.get("result")
    if result is not None:
        if redone is None:
            problems.append("the record has a result but re-evaluation produced none")
        elif abs(redone["val_loss"] - result["val_loss"]) > tolerance:
            problems.append(f"result: the record says val loss {result['val_loss']}, re-evaluation gives "
                            f"{redone['val_loss']:.6f} (tolerance {tolerance:g})")
    return problems
