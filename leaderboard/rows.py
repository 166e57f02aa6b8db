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

_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")

MEASURED, VERIFIED, REPORTED = "measured", "verified", "reported"


@dataclass(frozen=True)
class TaskScore:
    acc: float | None
    acc_norm: float | None


@dataclass(frozen=True)
class Efficiency:
    """Data efficiency as shown: a multiplier, or a bound string when the curve cannot tell, plus a flag."""

    text: str
    sort_value: float | None
    note: str | None
    multiplier: float | None = None


@dataclass(frozen=True)
class Provenance:
    """Where a number comes from: measured by this harness, re-evaluated by a maintainer, or published elsewhere."""

    kind: str  # measured | verified | reported
    sandboxed: bool

    @property
    def text(self) -> str:
        if self.kind == REPORTED:
            return "reported"
        return f"{self.kind}, {'sandboxed' if self.sandboxed else 'not sandboxed'}"

    @property
    def title(self) -> str:
        return {
            MEASURED: "measured by this harness",
            VERIFIED: "measured by this harness and re-evaluated by a maintainer (leaderboard add --verify)",
            REPORTED: "published elsewhere and copied as published; not measured by this harness",
        }[self.kind]


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
    hardware: str = "—"
    sequence: int = 0  # order among rows of the same instant (a published table's row number)
    reported: dict | None = None  # the published row, for records of kind `reported`

    @property
    def rankable(self) -> bool:
        return self.status == "ok" and self.val_loss is not None and not self.unranked_reasons


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
    """`reported` for published results, `verified` once a maintainer's re-evaluation agreed, else `measured`."""
    declared = record.get("provenance")
    if isinstance(declared, dict) and declared.get("kind") == REPORTED:
        return Provenance(REPORTED, False)
    sandboxed = sandbox_kind(record) == "landlock"
    verified = record.get("verified")
    return Provenance(VERIFIED if isinstance(verified, dict) and verified.get("ok") is True else MEASURED, sandboxed)


def _finite(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def hardware_text(record: dict) -> str:
    """`8× H100`, `2 nodes × 8× H100`, `1× CPU`; what the record states, `—` where it states nothing."""
    compute = record["compute"]
    hardware = compute.get("hardware")
    if not isinstance(hardware, dict):
        device = str(compute.get("device") or "")
        return f"{compute.get('world_size', 1)}× {device.upper()}" if device else "—"
    model = hardware.get("gpu_model") or "CPU"
    per_node = hardware.get("gpus_per_node") or 1
    nodes = hardware.get("nodes") or 1
    text = f"{per_node}× {model}" if nodes == 1 else f"{nodes} nodes × {per_node}× {model}"
    gpu_hours = _finite(hardware.get("gpu_hours"))
    return text + (f" · {gpu_hours:.1f} GPU-h" if gpu_hours is not None else "")


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
        sequence=int((reported or {}).get("number", 0)),
        reported=reported,
    )
