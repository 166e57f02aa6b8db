"""Whether a preset's run fits a machine: placement, batch arithmetic and per-GPU memory, for `slowrun plan`.

Given an epoch budget, a preset, the number of processes (GPUs) and the memory of one GPU, it says how
the trajectories are placed on rank groups (q0_reference.placement), how each optimizer step's global
batch is reached (microbatch x group size x accumulation), and what one GPU holds at the chosen
microbatch (q0_reference.memory). A microbatch whose estimate exceeds the GPU's memory is refused with
the largest one that fits. Steps are counted for the ``fineweb`` split: 100M training tokens less the
1M-token fitness carve.
"""

from __future__ import annotations

from dataclasses import dataclass

from q0_reference.batching import BatchPlan, auto_micro_batch
from q0_reference.errors import Q0ConfigError
from q0_reference.memory import GIB, MemoryEstimate, estimate_memory, format_estimate, largest_micro_batch
from q0_reference.placement import choose_group_count, group_sizes
from q0_reference.planner import Plan, plan
from q0_reference.presets import Preset, get_preset
from q0_reference.throughput import training_flops_per_token

FINEWEB_EPOCH_TOKENS = 99_000_000


@dataclass(frozen=True)
class Capacity:
    preset: Preset
    allocation: Plan
    world_size: int
    n_groups: int
    micro_batch: int
    memory: MemoryEstimate
    gpu_bytes: int | None
    largest_fit: int | None


def capacity(epochs: float, preset_name: str = "fineweb", world_size: int = 1, gpu_memory_gib: float | None = None,
             micro_batch_size: int | None = None) -> Capacity:
    preset = get_preset(preset_name)
    if world_size < 1:
        raise Q0ConfigError(f"--world-size must be at least 1, got {world_size}")
    allocation = plan(epochs, preset.planner)
    batches = preset.cycle_batches(allocation.cycles_per_trajectory)
    micro = preset.micro_batch_size if micro_batch_size is None else micro_batch_size
    n_groups = choose_group_count(allocation.n_trajectories, world_size, batches, micro)
    if not micro:
        micro = min(auto_micro_batch(batches, size) for size in group_sizes(world_size, n_groups))
    distills = allocation.cycles_per_trajectory > allocation.warmup_cycles
    memory = estimate_memory(preset.model, optimizer=preset.optimizer.kind, micro_batch=micro, bf16=True,
                             teacher=distills)
    gpu_bytes = None if gpu_memory_gib is None else int(gpu_memory_gib * GIB)
    largest = None
    if gpu_bytes is not None:
        fits = largest_micro_batch(preset.model, gpu_bytes, optimizer=preset.optimizer.kind, bf16=True,
                                   teacher=distills)
        largest = _largest_whole(fits, batches, group_sizes(world_size, n_groups))
        if memory.total > gpu_bytes:
            hint = (f"the largest microbatch that fits is {largest} (--micro-batch-size {largest})" if largest
                    else "not even one sequence fits: use GPUs with more memory")
            raise Q0ConfigError(
                f"a microbatch of {micro} sequence(s) of {preset.model.seq_len} tokens needs about "
                f"{memory.total / GIB:.1f} GiB per GPU for preset {preset.name!r}, more than the "
                f"{gpu_memory_gib:g} GiB given; {hint}\n{format_estimate(memory, gpu_bytes)}")
    return Capacity(preset, allocation, world_size, n_groups, micro, memory, gpu_bytes, largest)


def _largest_whole(limit: int, batches, sizes) -> int:
    """The largest microbatch up to ``limit`` that every global batch splits into whole on every group."""
    for micro in range(limit, 0, -1):
        try:
            for batch in set(batches):
                for size in set(sizes):
                    BatchPlan(batch, micro, size)
        except Q0ConfigError:
            continue
        return micro
    return 0


def format_capacity(c: Capacity) -> str:
    p, a = c.preset, c.allocation
    sizes = group_sizes(c.world_size, c.n_groups)
    batches = p.cycle_batches(a.cycles_per_trajectory)
    lines = [f"preset {p.name} on {c.world_size} process(es)"]
    groups = ", ".join(str(s) for s in sizes)
    per_group = [len(range(g, a.n_trajectories, c.n_groups)) for g in range(c.n_groups)]
    lines.append(f"  rank groups             {c.n_groups} of {groups} rank(s); trajectories per group "
                 f"{', '.join(str(n) for n in per_group)} (trajectory t on group t mod {c.n_groups})")
    for batch in sorted(set(batches)):
        cycles = sum(1 for b in batches if b == batch)
        ways = "; ".join(f"group of {s}: {BatchPlan(batch, c.micro_batch, s).accumulation} x {c.micro_batch} x {s}"
                         for s in sorted(set(sizes)))
        lines.append(f"  global batch            {batch} sequences = {batch * p.model.seq_len:,} tokens "
                     f"({cycles} cycle(s)); accumulation x microbatch x ranks: {ways}")
    tokens = [b * p.model.seq_len for b in batches]
    schedule = a.trajectory_schedule(FINEWEB_EPOCH_TOKENS, tokens[0] if len(set(tokens)) == 1 else tokens)
    trained = sum(n * t for n, t in zip(schedule.cycle_lengths, tokens)) + schedule.lead_in_steps * tokens[0]
    lines.append(f"  steps per trajectory    {schedule.total_steps:,} on the fineweb split "
                 f"({trained / 1e9:.2f}B tokens each)")
    flops = training_flops_per_token(p.model) * trained * a.n_trajectories
    lines.append(f"  training FLOPs          {flops:.3g} (6N + 12LdT per token, the teacher's forwards not counted)")
    lines.append(format_estimate(c.memory, c.gpu_bytes))
    if c.largest_fit is not None:
        lines.append(f"  largest microbatch that fits (and divides the batch): {c.largest_fit}")
    return "\n".join(lines)
