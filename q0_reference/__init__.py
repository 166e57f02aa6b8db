"""q0, hyper-epoch pretraining, as a library.

A q0 run trains a few independent trajectories. Each trajectory cycles its learning rate (falling inside
a cycle) and weight decay (rising in anti-phase), takes a snapshot at the end of every cycle, and, after
a few warm-up cycles, distils each cycle from the previous cycle's snapshot. The harness then weights
the snapshots with its learned prior.

Modules: ``model`` (the GPT, its build spec, building on the meta device), ``optim`` and ``muon`` (AdamW
or batched Muon with schedule multipliers), ``schedule`` (cyclic and baseline schedules), ``distill``
(chain-distillation loss, the teacher), ``perturb`` (optional noise at cycle boundaries), ``planner``
(epochs -> trajectories and cycles), ``presets``, ``trainer`` (one step over microbatches), ``runtime``
(device, bf16, compile), ``batching`` (global batch and accumulation), ``placement`` (jobs on rank
groups), ``checkpointing`` (policy, writers, resume), ``selection`` (top-K final predictor), ``memory``
and ``capacity`` (per-GPU memory, `slowrun plan`), ``throughput`` (tokens/s, FLOPs) and ``recipes``.
"""
