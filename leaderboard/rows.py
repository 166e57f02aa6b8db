"""One run as the board shows it: numbers, compute, provenance and, where it cannot rank, why not.

Records written before a field existed are read with the field's documented default: no `sandbox` is
an unconfined run, no `timings.wall_s` is an unknown wall time, no `compute.hardware` is hardware the
record does not state, no `unranked_reasons` is a run that may rank.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from harness.formats.records import evaluated_by, parse_created
from leaderboard.collect import LoadedRecord
from leaderboard.holdout import HeldOutGap, run_test_gap

_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")

MEASURED, RE_EVALUATED, REPRODUCED, REPORTED = "measured", "re-evaluated", "reproduced", "reported"


@dataclass(frozen=True)
class TaskScore:
    acc: float | None
    acc_norm: float | None


@dataclass(frozen=True)
class TaskProvenance:
    """How one downstream task was scored, as its record says (None where an older record does not say)."""

    lm_eval: str | None = None
    config_sha256: str | None = None
    num_fewshot: int | None = None
    fewshot_seed: int | None = None
    split: str | None = None
    rows: int | None = None
    padding_side: str | None = None

    @property
    def known(self) -> bool:
        return any(value is not None for value in vars(self).values())

    @property
    def config_short(self) -> str | None:
        """The config digest's first 12 hex digits, for a table cell (the whole digest goes in its title)."""
        return self.config_sha256[:12] if self.config_sha256 else None


@dataclass(frozen=True)
class Efficiency:
    """Data efficiency as shown: a multiplier, or a bound string when the curve cannot tell, plus a flag."""

    text: str
    sort_value: float | None
    note: str | None
    multiplier: float | None = None


@dataclass(frozen=True)
class Provenance:
    """What was done to a number: measured by this harness, its snapshots re-evaluated, or published elsewhere.

    `reproduced` (training re-run independently and matched within a stated tolerance over seeds) is a
    kind of its own and never the same as `re-evaluated`; nothing in this harness re-runs training yet,
    so no record earns it (see `provenance_of`).
    """

    kind: str  # measured | re-evaluated | reproduced | reported
    sandboxed: bool

    @property
    def text(self) -> str:
        if self.kind == REPORTED:
            return "reported"
        return f"{self.kind}, {'sandboxed' if self.sandboxed else 'not sandboxed'}"

    @property
    def title(self) -> str:
        return PROVENANCE_TITLES[self.kind]


PROVENANCE_TITLES = {
    MEASURED: "measured by this harness: the run's own record, as the harness wrote it; nobody has checked it since",
    RE_EVALUATED: "re-evaluated: a maintainer scored this run's snapshots again in the sandbox (slowrun leaderboard "
                  "add --verify) and got the record's losses within 1e-4 nats, so the numbers follow from the "
                  "weights. Training was not re-run: this says nothing about how the weights were trained",
    REPRODUCED: "reproduced: the training was re-run independently and matched the record within the stated "
                "tolerance over seeds",
    REPORTED: "published elsewhere and copied as published; not measured by this harness",
}


@dataclass(frozen=True)
class Row:
    rank: int | None
    relpath: str
    page: str  # stem of the record's page and JSON copy under r/
    run_id: str
    method: str
    status: str
    val_loss: float | None
    val_bpb: float | None
    efficiency: Efficiency
    epochs: float
    ensemble_size: int | None
    downstream_avg: float | None
    downstream: dict[str, TaskScore] = field(default_factory=dict)
    compute_class: str = ""
    created: str = ""  # normalised UTC stamp, sorts as text
    date: str = ""
    sandbox: str = "none"  # the sandbox the method ran in; records from before the sandbox carry none
    isolation_gaps: tuple[str, ...] = ()  # guarantees of the closed sandbox the kernel could not give
    by_method_code: bool = True  # a snapshot was scored by the method's own code (not its exported graph)
    seed: int = 0
    provenance: Provenance = Provenance(MEASURED, False)
    unranked_reasons: tuple[str, ...] = ()
    train_s: float | None = None
    wall_s: float | None = None
    hardware: str = "—"  # spelled out, GPU-hours included: the entry and record pages
    hardware_short: str = "—"  # one line for the board table
    sequence: int = 0  # order among rows of the same instant (a published table's row number)
    reported: dict | None = None  # the published row, for records of kind `reported`
    downstream_provenance: dict[str, TaskProvenance] = field(default_factory=dict)  # by task, sorted
    test: HeldOutGap | None = None  # the held-out test split's loss and its gap to val (leaderboard/holdout.py)

    @property
    def rankable(self) -> bool:
        return self.status == "ok" and self.val_loss is not None and not self.unranked_reasons


# What an efficiency flag means, for the board table's ⚑ tooltip (the flags come from harness.eval.efficiency).
EFFICIENCY_NOTES = {
    "below-table": "the loss is below the reference curve's lowest point, so the multiplier is at least the bound",
    "above-table": "the loss is above the reference curve's highest point, so the multiplier is at most the bound",
    "bound": "a bound, not a multiplier read off the reference curve",
}


def efficiency_of(result: dict | None) -> Efficiency:
    if not result:
        return Efficiency("—", None, None)
    efficiency = result["data_efficiency"]
    multiplier, bound, flag = efficiency["multiplier"], efficiency["bound"], efficiency["flag"]
    if multiplier is not None:
        return Efficiency(f"{multiplier:.2f}×", float(multiplier), flag, float(multiplier))
    if bound:
        match = _NUMBER.search(bound)
        return Efficiency(bound, float(match.group()) if match else None, flag or "bound")
    return Efficiency("—", None, flag)


def downstream_of(record: dict) -> tuple[dict[str, TaskScore], float | None]:
    scores = {task: TaskScore(s["acc"], s["acc_norm"]) for task, s in sorted((record["downstream"] or {}).items())}
    accs = [s.acc for s in scores.values() if s.acc is not None]
    return scores, (math.fsum(accs) / len(accs) if accs else None)


def _text(value) -> str | None:
    return value if isinstance(value, str) and value else None


def _whole(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def downstream_provenance_of(record: dict) -> dict[str, TaskProvenance]:
    """Each downstream task's `provenance` (lm-eval version, config digest, shots, few-shot seed, padding side)
    beside its `split` and `split_rows`; records from before these keys give None for what they lack."""
    out = {}
    for task, score in sorted((record.get("downstream") or {}).items()):
        score = score if isinstance(score, dict) else {}
        made = score.get("provenance") if isinstance(score.get("provenance"), dict) else {}
        out[task] = TaskProvenance(
            lm_eval=_text(made.get("lm_eval")), config_sha256=_text(made.get("config_sha256")),
            num_fewshot=_whole(made.get("num_fewshot")), fewshot_seed=_whole(made.get("fewshot_seed")),
            split=_text(score.get("split")), rows=_whole(score.get("split_rows")),
            padding_side=_text(made.get("padding_side")))
    return out


def sandbox_kind(record: dict) -> str:
    """`landlock` when the method's process was confined, else `none` (older records have no field)."""
    sandbox = record.get("sandbox")
    return str(sandbox.get("kind", "none")) if isinstance(sandbox, dict) else "none"


# What each gap means, for the board's badges: a record says `host` where the supervisor could not make the
# namespace (the kernel refused it, or a multi-node run, which must reach the other nodes).
ISOLATION_GAPS = {
    "host network": "the method's processes had the machine's network: the kernel gave no network namespace, or "
                    "the run spanned several nodes",
    "host processes": "the method's processes saw every process of the machine in /proc: the kernel gave no PID "
                      "namespace",
}


def isolation_gaps_of(record: dict) -> tuple[str, ...]:
    """The closed sandbox's guarantees a sandboxed run went without, from its record's `sandbox.network`
    (records from before the network was recorded say nothing, and get no badge)."""
    sandbox = record.get("sandbox")
    network = sandbox.get("network") if isinstance(sandbox, dict) else None
    if not isinstance(network, dict) or sandbox.get("kind") != "landlock":
        return ()
    gaps = []
    if network.get("kind") != "private":
        gaps.append("host network")
    if network.get("processes") != "private":
        gaps.append("host processes")
    return tuple(gaps)


def provenance_of(record: dict) -> Provenance:
    """What was done to the record's numbers, decided by these rules, in order:

    - `reported`: the record declares `provenance.kind = "reported"`. Only the board's own reader of
      Slowrun's published tables (leaderboard/published.py) makes such records; `leaderboard build` and
      `add` refuse a records-folder file that declares it (leaderboard/verify.py, `claim_problems`).
    - `re-evaluated`: the record carries `verified` with `ok: true`, which `leaderboard add --verify`
      writes once every snapshot, scored again in the sandbox, matched the record. That shows the
      numbers follow from the weights, not how the weights were made: weights trained on validation
      data and swapped into an honest run pass it, so it is never called reproduced or verified.
    - `reproduced` is never given here: it needs training re-run independently and matched within a
      stated tolerance over seeds, and no part of the harness produces that evidence. A `verified` that
      claims more than a re-evaluation is still read as one.
    - `measured`: anything else; the record as the harness wrote it.
    Sandboxing is stated beside the kind (records from before the sandbox count as unconfined).
    """
    declared = record.get("provenance")
    if isinstance(declared, dict) and declared.get("kind") == REPORTED:
        return Provenance(REPORTED, False)
    sandboxed = sandbox_kind(record) == "landlock"
    verified = record.get("verified")
    re_evaluated = isinstance(verified, dict) and verified.get("ok") is True
    return Provenance(RE_EVALUATED if re_evaluated else MEASURED, sandboxed)


def _finite(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _hardware_words(record: dict, times: str) -> str:
    """``8{times}H100`` or ``2 nodes × 8{times}H100`` (``2×8×H100`` when `times` has no space), else the
    device the record states (``1{times}CPU``), else `—`."""
    compute = record["compute"]
    hardware = compute.get("hardware")
    if not isinstance(hardware, dict):
        device = str(compute.get("device") or "")
        return f"{compute.get('world_size', 1)}{times}{device.upper()}" if device else "—"
    model = hardware.get("gpu_model") or "CPU"
    per_node = hardware.get("gpus_per_node") or 1
    nodes = hardware.get("nodes") or 1
    if nodes == 1:
        return f"{per_node}{times}{model}"
    return f"{nodes} nodes × {per_node}{times}{model}" if times.endswith(" ") else f"{nodes}×{per_node}×{model}"


def hardware_text(record: dict) -> str:
    """`8× H100`, `2 nodes × 8× H100`, `1× CPU`; what the record states, `—` where it states nothing."""
    text = _hardware_words(record, "× ")
    hardware = record["compute"].get("hardware")
    gpu_hours = _finite(hardware.get("gpu_hours")) if isinstance(hardware, dict) else None
    return text + (f" · {gpu_hours:.1f} GPU-h" if gpu_hours is not None else "")


def hardware_short_text(record: dict) -> str:
    """The board table's one-line form, `8×H100`, `2×8×H100` (nodes × GPUs per node), `1×CPU`; GPU-hours
    and the spelled-out form stay on the entry page (`hardware_text`)."""
    return _hardware_words(record, "×")


def unranked_reasons_of(record: dict) -> tuple[str, ...]:
    """The harness's reasons why a run may not rank in its class (empty or absent: it may)."""
    reasons = record.get("unranked_reasons")
    if not isinstance(reasons, list):
        return ()
    return tuple(str(reason) for reason in reasons if str(reason).strip())


def status_reason(record: dict) -> str | None:
    if record["status"] != "ok":
        return f"status {record['status']}"
    if record["result"] is None:
        return "no result"
    return None


def make_row(loaded: LoadedRecord, page: str, rank: int | None = None) -> Row:
    record = loaded.record
    result = record["result"]
    created = parse_created(record["created"])
    scores, average = downstream_of(record)
    reported = record.get("reported") if isinstance(record.get("reported"), dict) else None
    return Row(
        rank=rank,
        relpath=loaded.relpath,
        page=page,
        run_id=record["run_id"],
        method=record["method"]["name"],
        status=record["status"],
        val_loss=result["val_loss"] if result else None,
        val_bpb=result["val_bpb"] if result else None,
        efficiency=efficiency_of(result),
        epochs=record["metered"]["epochs"],
        ensemble_size=result["ensemble_size"] if result else (len(record["ensemble"]["members"]) or None),
        downstream_avg=average,
        downstream=scores,
        compute_class=record["compute"]["class"],
        created=created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        date=created.strftime("%Y-%m-%d"),
        sandbox=sandbox_kind(record),
        isolation_gaps=isolation_gaps_of(record),
        by_method_code=any(evaluated_by(row) == "method code" for row in record["snapshots"]),
        seed=record["seed"],
        provenance=provenance_of(record),
        unranked_reasons=unranked_reasons_of(record),
        train_s=_finite(record["timings"].get("train_s")),
        wall_s=_finite(record["timings"].get("wall_s")),
        hardware=(reported or {}).get("hardware") or hardware_text(record),
        hardware_short=(reported or {}).get("hardware_short") or hardware_short_text(record),
        sequence=int((reported or {}).get("number", 0)),
        reported=reported,
        downstream_provenance=downstream_provenance_of(record),
        test=run_test_gap(record),
    )
