"""q0, hyper-epoch pretraining, as a library.

A q0 run trains a few independent trajectories. Each trajectory cycles its learning rate (falling inside
a cycle) and weight decay (rising in anti-phase), takes a snapshot at the end of every cycle, and, after
a few warm-up cycles, distils each cycle from the previous cycle's snapshot. The harness then weights
the snapshots with its learned prior.

Modules: ``model`` (the GPT and its build spec), ``optim`` (AdamW or Muon with schedule multipliers),
``schedule`` (cyclic and baseline schedules), ``distill`` (chain-distillation loss), ``perturb``
(optional noise at cycle boundaries), ``planner`` (epochs -> trajectories and cycles), ``presets`` and
``trainer`` (one training step).
"""
