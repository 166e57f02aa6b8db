"""Evaluate a run from its snapshots: per-token caches, then every number of the record by arithmetic.

Runs in the harness's process after training (the method's process never holds validation data). Each
snapshot is run once over the validation windows and once over the fitness windows; the caches
(`eval/<tag>.val.npy`, `eval/<tag>.fit.npy`, float32) make re-evaluation free, and everything else (the
final ensemble, the learned prior, the K sweep, the curve against epochs, data efficiency) is computed
from them. Choices (prior weights, which K, which snapshot) are made on fitness data only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from harness.data.manifest import read_manifest
from harness.data.store import TokenStore
from harness.efficiency import ReferenceCurveError, curve_path, data_efficiency, load_reference_curve
from harness.ensemble import bits_per_byte, mean_nll, mixture_logp
from harness.logprobs import load_logprobs, save_logprobs, token_logprobs
from harness.prior import default_ks, fit_prior, k_sweep, loss_curve
from harness.threads import apply_thread_setting
from harness.snapshots import Snapshot, list_snapshots, load_snapshot_model

MIN_PRIOR_WEIGHT = 1e-4  # prior members below this weight are dropped from the final ensemble


@dataclass(frozen=True)
class EvalData:
    val_windows: np.ndarray  # (n, T + 1), zero-copy view of the validation split
    fit_windows: np.ndarray  # (m, T + 1), the fitness documents' windows
    val_target_bytes: np.ndarray | None  # UTF-8 bytes of every validation target (BOS = 0), or None


def open_eval_data(data_dir: Path, seq_len: int) -> EvalData:
    manifest = read_manifest(data_dir)
    val = TokenStore.open(data_dir, "val")
    train = TokenStore.open(data_dir, "train")
    fitness_docs = manifest["fitness"]["documents"]
    fit = train.documents(0, fitness_docs).windows(seq_len) if fitness_docs else np.empty((0, seq_len + 1), np.uint16)
    windows = val.windows(seq_len)
    target_bytes = None
    bytes_file = Path(data_dir) / "token_bytes.bin"
    if bytes_file.exists():
        table = np.fromfile(bytes_file, dtype=np.int32)
        target_bytes = table[np.asarray(windows[:, 1:]).reshape(-1)]
    return EvalData(windows, fit, target_bytes)


def snapshot_logprobs(snapshot: Snapshot, data: EvalData, cache: Path, batch_size: int, device: str,
                      progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(fitness, validation) log p(target), flattened; computed once per snapshot and cached."""
    cache.mkdir(parents=True, exist_ok=True)
    fit_path, val_path = cache / f"{snapshot.tag}.fit.npy", cache / f"{snapshot.tag}.val.npy"
    if not (fit_path.exists() and val_path.exists()):
        model = load_snapshot_model(snapshot, device)
        save_logprobs(val_path, token_logprobs(model, data.val_windows, batch_size, device, progress=progress))
        fit = (token_logprobs(model, data.fit_windows, batch_size, device) if len(data.fit_windows)
               else np.empty((0, data.val_windows.shape[1] - 1), np.float32))
        save_logprobs(fit_path, fit)
        del model
    return np.asarray(load_logprobs(fit_path)).reshape(-1), np.asarray(load_logprobs(val_path)).reshape(-1)


def _bpb(logp: np.ndarray, data: EvalData) -> float | None:
    return None if data.val_target_bytes is None else float(bits_per_byte(logp, data.val_target_bytes))


def _members(tags: list[str], weights) -> list[dict]:
    return [{"tag": tags[i], "weight": float(w)} for i, w in enumerate(weights) if w > 0]


def evaluate_run(run_dir: Path, data_dir: Path, seq_len: int, ensemble_choice: Mapping[str, float] | str | None,
                 reference_curve: str | None, batch_size: int = 16, device: str = "cpu",
                 progress: bool = True) -> dict:
    """The evaluation parts of a record: snapshots, ensemble, result, k_sweep, curve."""
    snapshots = list_snapshots(Path(run_dir) / "snapshots")
    empty = {"snapshots": [], "ensemble": {"members": [], "source": "last"}, "result": None, "k_sweep": [],
             "curve": [], "prior": None}
    if not snapshots:
        return empty
    apply_thread_setting()
    data = open_eval_data(data_dir, seq_len)
    cache = Path(run_dir) / "eval"
    tags = [s.tag for s in snapshots]
    fits, vals = [], []
    for i, snap in enumerate(snapshots):
        if progress:
            print(f"evaluating snapshot {snap.tag} ({i + 1}/{len(snapshots)})", flush=True)
        fit, val = snapshot_logprobs(snap, data, cache, batch_size, device, progress=progress)
        fits.append(fit)
        vals.append(val)
    fit_m, val_m = np.stack(fits), np.stack(vals)
    has_fitness = fit_m.shape[1] > 0

    snapshot_rows = [
        {"tag": s.tag, "epochs": s.epochs, "val_loss": mean_nll(v), "val_bpb": _bpb(v, data), "meta": s.meta,
         "fitness_loss": mean_nll(f) if has_fitness else None}
        for s, f, v in zip(snapshots, fits, vals)
    ]
    prior = fit_prior(fit_m) if has_fitness else None

    if isinstance(ensemble_choice, Mapping) and ensemble_choice:
        weights = np.array([float(ensemble_choice.get(t, 0.0)) for t in tags])
        source = "method"
    elif ensemble_choice == "prior" and prior is not None:
        weights = np.where(prior.weights >= MIN_PRIOR_WEIGHT, prior.weights, 0.0)
        source = "prior"
    else:
        weights = np.zeros(len(tags))
        weights[-1] = 1.0
        source = "last"
    weights = weights / weights.sum()
    final_val = mixture_logp(val_m, weights)
    result = {
        "val_loss": mean_nll(final_val),
        "val_bpb": _bpb(final_val, data),
        "ensemble_size": int(np.count_nonzero(weights)),
        "data_efficiency": efficiency_of(mean_nll(final_val), reference_curve),
    }

    sweep, curve = [], []
    if prior is not None:
        for point in k_sweep(fit_m, val_m, default_ks(len(tags)), prior=prior):
            mixed = mixture_logp(val_m[list(point.members)], np.array(point.weights))
            sweep.append({"k": point.k, "val_loss": point.val_nll, "val_bpb": _bpb(mixed, data),
                          "fitness_loss": point.fitness_nll,
                          "members": [{"tag": tags[m], "weight": float(w)} for m, w in zip(point.members, point.weights)]})
        for point in loss_curve([s.epochs for s in snapshots], fit_m, val_m):
            curve.append({"epochs": point.epochs, "val_loss": point.val_nll, "choice": point.choice,
                          "members": [tags[m] for m in point.members]})
    else:  # no fitness data: the curve is each snapshot alone, in order
        curve = [{"epochs": r["epochs"], "val_loss": r["val_loss"], "choice": "single", "members": [r["tag"]]}
                 for r in snapshot_rows]
    return {
        "snapshots": snapshot_rows,
        "ensemble": {"members": _members(tags, weights), "source": source},
        "result": result,
        "k_sweep": sweep,
        "curve": curve,
        "prior": None if prior is None else {
            "weights": {t: float(w) for t, w in zip(tags, prior.weights)}, "fitness_loss": prior.nll,
            "iterations": prior.iterations, "converged": prior.converged, "method": "EM"},
    }


def efficiency_of(loss: float, reference_curve: str | None) -> dict:
    if not reference_curve or not curve_path(reference_curve).exists():
        return {"multiplier": None, "bound": None, "flag": "no-reference-curve"}
    try:
        eff = data_efficiency(loss, load_reference_curve(reference_curve))
    except ReferenceCurveError as exc:
        return {"multiplier": None, "bound": None, "flag": f"reference-curve-error: {exc}"}
    return {"multiplier": eff.multiplier, "bound": eff.bound, "flag": eff.flag}
