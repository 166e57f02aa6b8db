"""How many documents of each downstream task to score: all, the first N of every task, or N per task.

``--downstream-limit 100`` limits every task, ``--downstream-limit arc_easy=50`` one task; both may be
given, and a task's own limit wins. A limit only ever takes a task's first documents, so the record's
``n`` says how many were scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from harness.errors import SlowrunError


def _positive(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SlowrunError(f"{what} must be a positive number of documents, got {value!r}")
    return value


@dataclass(frozen=True)
class DocumentLimits:
    """``default`` documents for every task (None: all), overridden per task by ``per_task``."""

    default: int | None = None
    per_task: tuple[tuple[str, int], ...] = ()

    def __post_init__(self):
        if self.default is not None:
            _positive(self.default, "limit")
        names = [name for name, _ in self.per_task]
        for name, value in self.per_task:
            _positive(value, f"the limit for {name}")
        if len(set(names)) != len(names):
            raise SlowrunError(f"a downstream limit is given more than once for one task: {names}")

    def for_task(self, task: str) -> int | None:
        return dict(self.per_task).get(task, self.default)

    def unknown_tasks(self, tasks: Iterable[str]) -> list[str]:
        scored = set(tasks)
        return sorted(name for name, _ in self.per_task if name not in scored)

    @classmethod
    def of(cls, value: "DocumentLimits | int | Mapping | None") -> "DocumentLimits":
        """A limit in any of its forms: this class, one number for every task (the older form), None, or
        the JSON form ``{"default": N, "tasks": {task: N}}`` a run spec stores."""
        if isinstance(value, DocumentLimits):
            return value
        if value is None:
            return cls()
        if isinstance(value, Mapping):
            return cls(value.get("default"), tuple(sorted((str(k), v) for k, v in (value.get("tasks") or {}).items())))
        return cls(_positive(value, "limit"))

    @classmethod
    def parse(cls, items: Iterable[str]) -> "DocumentLimits":
        """The command line's ``--downstream-limit`` values: ``N`` (every task) or ``TASK=N`` (one task)."""
        default, per_task = None, []
        for item in items:
            name, sep, count = item.rpartition("=")
            try:
                number = int(count)
            except ValueError:
                raise SlowrunError(f"--downstream-limit {item!r}: expected N or TASK=N with N a whole number") from None
            if not sep:
                if default is not None:
                    raise SlowrunError("--downstream-limit N is given twice; give one limit for every task "
                                       "and TASK=N for single tasks")
                default = _positive(number, "--downstream-limit")
            elif not name.strip():
                raise SlowrunError(f"--downstream-limit {item!r}: expected TASK=N")
            else:
                per_task.append((name.strip(), _positive(number, f"--downstream-limit {name.strip()}")))
        return cls(default, tuple(sorted(per_task)))

    def to_json(self) -> dict | None:
        if self.default is None and not self.per_task:
            return None
        return {"default": self.default, "tasks": dict(self.per_task)}
