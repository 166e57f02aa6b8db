"""The manifest of a prepared track: what was prepared, how, and the hashes that identify it.

The data hash covers what makes results comparable (token arrays, document index, tokenizer content,
sequence length, fitness carve) and nothing incidental (paths, timestamps, the tool's version), so
preparing the same data twice, anywhere, gives the same hash.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from harness.errors import DataError

MANIFEST = "manifest.json"
FORMAT = "slowrun-prepared/1"
SPLITS = ("val", "train")


def sha256_array(array: np.ndarray) -> str:
    """Hash of the array's values in little-endian layout (the file bytes, without reading them twice)."""
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    digest = hashlib.sha256()
    flat = array.reshape(-1).view(np.uint8)
    step = 1 << 24
    for start in range(0, flat.size, step):
        digest.update(flat[start : start + step])
    return digest.hexdigest()


def token_identity(manifest: dict) -> dict:
    """What every hash of tokens must cover besides the arrays: the manifest's format, the tokenizer (the same
    ids mean other text under another one) and the window length."""
    return {"format": manifest["format"], "tokenizer": manifest["tokenizer"]["hash"],
            "vocab_size": manifest["tokenizer"]["vocab_size"], "bos_id": manifest["tokenizer"]["bos_id"],
            "seq_len": manifest["seq_len"]}


def compute_data_hash(manifest: dict) -> str:
    identity = {
        **token_identity(manifest),
        "fitness": manifest["fitness"],
        "splits": {
            name: {k: manifest["splits"][name][k] for k in ("tokens", "documents", "tokens_sha256", "docs_sha256")}
            for name in SPLITS
        },
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


_PUBLIC_SPLIT_KEYS = ("tokens", "documents", "tokens_file", "docs_file", "tokens_sha256", "docs_sha256")


def public_manifest(manifest: dict) -> dict:
    """The manifest as the method's process may see it beside the training split: a copy of the few
    fields reading that split needs, and nothing else.

    Kept by name rather than dropped by name, so a field added to manifests later stays out until someone
    decides the method may see it. Left out: the validation split and the best loss (what is scored);
    `source` and `request` (the synthetic language's seed and parameters regenerate the validation split
    token for token; file paths lead to the raw validation documents); the tokenizer's hash (for the
    synthetic source a hash of those same parameters, which a guessed seed can be checked against) and
    the data hash (it covers the validation split); the training split's first and last document
    origins (a synthetic origin names the seed, a file origin its path).
    """
    tokenizer, train = manifest["tokenizer"], manifest["splits"]["train"]
    return {
        "format": manifest["format"],
        "harness_version": manifest.get("harness_version"),
        "track": {"name": manifest["track"]["name"], "description": manifest["track"].get("description", "")},
        "tokenizer": {key: tokenizer[key] for key in ("kind", "vocab_size", "bos_id")},
        "dtype": manifest["dtype"],
        "seq_len": manifest["seq_len"],
        "splits": {"train": {key: train[key] for key in _PUBLIC_SPLIT_KEYS}},
        "fitness": dict(manifest["fitness"]),
    }


def write_manifest(folder: Path, manifest: dict) -> None:
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    (Path(folder) / MANIFEST).write_text(text, encoding="utf-8")


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: no manifest; {folder} is not a prepared track (run slowrun prepare)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: manifest is not valid JSON ({exc.msg}); re-run slowrun prepare") from None
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path}: format {manifest.get('format')!r} is not {FORMAT!r}; re-run slowrun prepare")
    return manifest


def verify_prepared(folder: str | Path) -> list[str]:
    """Re-hash every array against the manifest; return the problems (empty when all is well)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    problems = []
    for name in SPLITS:
        split = manifest["splits"][name]
        for kind, dtype, count in (
            ("tokens", manifest["dtype"], split["tokens"]),
            ("docs", "int64", split["documents"]),
        ):
            path = folder / split[f"{kind}_file"]
            if not path.is_file():
                problems.append(f"{path}: missing")
                continue
            expected_size = count * np.dtype(dtype).itemsize
            if path.stat().st_size != expected_size:
                problems.append(f"{path}: {path.stat().st_size} bytes, expected {expected_size}")
                continue
            actual = sha256_array(np.memmap(path, dtype=dtype, mode="r")) if count else hashlib.sha256().hexdigest()
            if actual != split[f"{kind}_sha256"]:
                problems.append(f"{path}: sha256 {actual[:16]}… does not match the manifest's {split[f'{kind}_sha256'][:16]}…")
    if not problems and compute_data_hash(manifest) != manifest.get("data_hash"):
        problems.append(f"{folder / MANIFEST}: data_hash does not match its contents")
    return problems


def format_manifest(manifest: dict) -> str:
    """A human summary for `slowrun data info`."""
    lines = [
        f"track        {manifest['track']['name']}",
        f"data hash    {manifest['data_hash']}",
        f"tokenizer    {manifest['tokenizer']['kind']} (vocab {manifest['tokenizer']['vocab_size']}, "
        f"BOS {manifest['tokenizer']['bos_id']}, hash {manifest['tokenizer']['hash'][:16]}…)",
        f"source       {json.dumps(manifest['source'], sort_keys=True)}",
        f"seq_len      {manifest['seq_len']} (windows of {manifest['seq_len'] + 1})",
    ]
    for name in SPLITS:
        split = manifest["splits"][name]
        lines.append(
            f"{name:<12} {split['tokens']:,} tokens in {split['documents']:,} documents "
            f"({split['tokens_file']}, sha256 {split['tokens_sha256'][:16]}…)"
        )
    fitness = manifest["fitness"]
    lines.append(f"fitness      first {fitness['documents']:,} training documents, {fitness['tokens']:,} tokens")
    if "best_val_loss" in manifest:
        lines.append(f"best loss    {manifest['best_val_loss']:.4f} nats/token on the validation windows "
                     "(the true language's probabilities)")
    return "\n".join(lines)
