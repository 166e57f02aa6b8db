"""Slowrun's published record tables as board records of kind `reported`.

leaderboard/published/slowrun.json is a copy of the four World Record History tables of Slowrun's README
(limited, tiny, two-hour, unlimited), with the commit it was read at; it is the board's only source of
those numbers. Each row becomes a record in memory when the site is built: it passes the record schema
so the board can show it like any run, but it carries `provenance.kind = "reported"`, the published row
under `reported`, and nothing that only a measurement could give (no snapshots, no metered data, no
environment). Its data efficiency is computed here by the harness (harness.eval.efficiency) from the loss as
published, on the track's reference curve; where the curve cannot place the loss the bound and flag say so.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone
from pathlib import Path

from harness.eval.efficiency import data_efficiency, load_reference_curve
from harness.errors import LeaderboardError
from harness.formats.records import MAX_NAME_CHARS
from leaderboard.collect import LoadedRecord
from leaderboard.naming import PACKAGE_DIR

DEFAULT_PUBLISHED = PACKAGE_DIR / "published" / "slowrun.json"
PUBLISHED_DATA_HASH = "published:qlabs-eng/slowrun"  # never a prepared data set's hash: own tables
CAPPED_HARDWARE = "8× H100 (one node, the class's cap)"
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_ROW_FIELDS = ("number", "val_loss_text", "val_loss", "description", "date", "time", "script", "contributors")


def description_parts(markdown: str) -> list[tuple[str, str | None]]:
    """A published description as (text, link or None) pieces; the template escapes both."""
    parts: list[tuple[str, str | None]] = []
    position = 0
    for match in _LINK.finditer(markdown):
        if match.start() > position:
            parts.append((markdown[position:match.start()], None))
        url = match.group(2)
        parts.append((match.group(1), url if url.startswith("https://") else None))
        position = match.end()
    if position < len(markdown):
        parts.append((markdown[position:], None))
    return parts


def plain_description(markdown: str) -> str:
    return "".join(text for text, _ in description_parts(markdown)).strip()


def published_time_seconds(text: str) -> float | None:
    """Seconds for a published time such as `~47 mins`, `6h 44m`, `210 hours (7xH100 node)`; None if unreadable.

    Only used to sort the column; the page shows the text as published.
    """
    value = text.split("(")[0].strip().lstrip("~")
    if match := re.fullmatch(r"(\d+(?:\.\d+)?)\s*mins?", value):
        return float(match.group(1)) * 60.0
    if match := re.fullmatch(r"(\d+)h(?:\s*(\d+)m)?", value):
        return int(match.group(1)) * 3600.0 + int(match.group(2) or 0) * 60.0
    if match := re.fullmatch(r"(\d+(?:\.\d+)?)\s*hours?", value):
        return float(match.group(1)) * 3600.0
    return None


def published_hardware(compute_class: str, time_text: str) -> str:
    if compute_class != "unlimited":
        return CAPPED_HARDWARE
    match = re.search(r"\(([^)]*)\)", time_text)
    return f"as published: {match.group(1)}" if match else "not stated"


_NODES_OF_GPUS = re.compile(r"(\d+)\s*nodes?,\s*(\d+)\s*x\s*(\w+)", re.IGNORECASE)
_ONE_NODE = re.compile(r"(\d+)\s*x\s*(\w+)\s*node", re.IGNORECASE)


def published_hardware_short(compute_class: str, time_text: str) -> str:
    """The board table's one-line form of `published_hardware`: `8×H100`, `4×8×H100` (nodes × GPUs per
    node), `—` where the README states none; anything else it says is kept as written."""
    if compute_class != "unlimited":
        return "8×H100"
    match = re.search(r"\(([^)]*)\)", time_text)
    if not match:
        return "—"
    stated = match.group(1)
    if found := _NODES_OF_GPUS.search(stated):
        nodes, per_node, model = found.groups()
        return f"{per_node}×{model}" if nodes == "1" else f"{nodes}×{per_node}×{model}"
    if found := _ONE_NODE.search(stated):
        return f"{found.group(1)}×{found.group(2)}"
    return stated


def published_time_short(text: str) -> str:
    """The published time without its parenthesis (hardware or a remark, shown elsewhere): `210 hours`."""
    return text.split("(")[0].strip()


def _date(text: str, where: str) -> datetime:
    try:
        return datetime.strptime(text, "%m/%d/%y").replace(tzinfo=timezone.utc)
    except ValueError:
        raise LeaderboardError(f"{where}: date {text!r} is not MM/DD/YY as Slowrun's README writes it") from None


def load_published(path: str | Path = DEFAULT_PUBLISHED) -> dict:
    """The published data file, its shape checked, so a bad edit is a clear error and not a broken page."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LeaderboardError(f"published results {path}: not a readable JSON file ({exc})") from exc
    source = data.get("source") if isinstance(data, dict) else None
    if not isinstance(source, dict) or not re.fullmatch(r"[0-9a-f]{40}", str(source.get("commit", ""))):
        raise LeaderboardError(f"{path}: needs source.commit, the 40-digit commit of the README it copies")
    if not isinstance(data.get("tables"), list) or not isinstance(data.get("track"), str):
        raise LeaderboardError(f"{path}: needs `track` (a name) and `tables` (a list)")
    for table in data["tables"]:
        for index, row in enumerate(table.get("rows", [])):
            missing = [f for f in _ROW_FIELDS if f not in row]
            if missing:
                raise LeaderboardError(f"{path}: table {table.get('class')!r} row {index + 1} lacks "
                                       f"{', '.join(missing)}")
            urls = [row["script"]] + [c.get("url", "") for c in row["contributors"]]
            if not all(isinstance(u, str) and u.startswith("https://") for u in urls):
                raise LeaderboardError(f"{path}: table {table.get('class')!r} row {row['number']}: script and "
                                       "contributor links must be https:// addresses")
            if float(row["val_loss_text"]) != row["val_loss"]:
                raise LeaderboardError(f"{path}: table {table['class']!r} row {row['number']}: val_loss "
                                       f"{row['val_loss']} differs from the published text {row['val_loss_text']!r}")
    return data


def published_records(path: str | Path = DEFAULT_PUBLISHED) -> list[LoadedRecord]:
    """One record of kind `reported` per published row, named `published/<class>/<number>.json`."""
    data = load_published(path)
    track = data["track"]
    curve = load_reference_curve(track)
    source = data["source"]
    loaded = []
    for table in data["tables"]:
        compute_class = table["class"]
        for row in table["rows"]:
            relpath = f"published/{compute_class}/{int(row['number']):02d}.json"
            record = _record(row, compute_class, track, curve, source, f"{path}: {relpath}")
            loaded.append(LoadedRecord(relpath, record, json.dumps(record, indent=2, sort_keys=True,
                                                                   ensure_ascii=False) + "\n"))
    return loaded


def _short(name: str) -> str:
    """A table row's name within a record's limit; the whole text stays in the description."""
    name = " ".join(name.split())
    return name if len(name) <= MAX_NAME_CHARS else name[:MAX_NAME_CHARS - 1].rstrip() + "…"


def _record(row: dict, compute_class: str, track: str, curve, source: dict, where: str) -> dict:
    created = _date(row["date"], where)
    efficiency = data_efficiency(row["val_loss"], curve)
    train_s = published_time_seconds(row["time"])
    description = plain_description(row["description"])
    return {
        "schema_version": 1,
        "run_id": f"slowrun-{compute_class}-{int(row['number']):02d}",
        "created": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "status": "ok",
        "error": None,
        "method": {"name": _short(f"#{row['number']} {description}"), "description": description,
                   "authors": [c["name"] for c in row["contributors"]],
                   "hash": "sha256:" + hashlib.sha256(row["script"].encode()).hexdigest(), "entry": row["script"]},
        "track": {"name": track, "data_hash": PUBLISHED_DATA_HASH, "train_tokens": curve.train_tokens,
                  "val_tokens": 0, "seq_len": 1, "vocab_size": 1, "tokenizer": "as published"},
        "budget_epochs": 0.0,
        "seed": 0,
        "hparams": {},
        "metered": {"epochs": 0.0, "train_tokens": 0, "per_stream": {}, "fitness_tokens": 0},
        "snapshots": [],
        "ensemble": {"members": [], "source": "method"},
        "result": {"val_loss": row["val_loss"], "val_bpb": None, "ensemble_size": 0,
                   "data_efficiency": {"multiplier": efficiency.multiplier, "bound": efficiency.bound,
                                       "flag": efficiency.flag}},
        "k_sweep": [],
        "curve": [],
        "downstream": None,
        "timings": {"train_s": train_s or 0.0, "eval_s": 0.0, "other_s": 0.0},
        "compute": {"class": compute_class, "device": "as published", "world_size": 1},
        "environment": {"python": "", "torch": "", "platform": "", "cpu": "", "gpu": None,
                        "harness_version": "", "git_commit": None},
        "provenance": {"kind": "reported", "repository": source.get("repository"), "commit": source["commit"],
                       "file": source.get("file", "README.md")},
        "reported": {**row, "hardware": published_hardware(compute_class, row["time"]),
                     "hardware_short": published_hardware_short(compute_class, row["time"]),
                     "time_short": published_time_short(row["time"]),
                     "time_seconds": train_s, "description_parts": description_parts(row["description"])},
    }
