"""The text of ``slowrun plan``: q0's allocation for a budget and, given hardware, how the preset's run lays
out on it. Kept out of the planner, which the presets import: the report needs the presets and the
capacity model, and the planner must not need them."""

from __future__ import annotations

from q0_reference.capacity import capacity, format_capacity
from q0_reference.planner import PlannerThresholds, format_plan, plan
from q0_reference.presets import get_preset


def plan_report(epochs: float, thresholds: PlannerThresholds = PlannerThresholds(), *, preset: str | None = None,
                world_size: int | None = None, gpu_memory_gib: float | None = None,
                micro_batch_size: int | None = None) -> str:
    """Text for ``slowrun plan --epochs E``. With a preset, a world size, a GPU memory or a microbatch it
    also lays the preset's run out on the machine (q0_reference.capacity: placement, batch arithmetic,
    per-GPU memory) and refuses a microbatch that cannot fit."""
    hardware = (preset, world_size, gpu_memory_gib, micro_batch_size)
    if all(value is None for value in hardware):
        return format_plan(plan(epochs, thresholds))
    name = preset or "fineweb"
    layout = capacity(epochs, name, world_size or 1, gpu_memory_gib, micro_batch_size)
    return format_plan(plan(epochs, get_preset(name).planner)) + "\n" + format_capacity(layout)
