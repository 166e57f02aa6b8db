"""Named configurations: the published FineWeb-scale q0 setting and a small one that runs on a laptop CPU.

``fineweb`` mirrors the published q0 run: a 30-layer, 2048-wide GPT with 16 heads (head size 128), SwiGLU
MLP, GPT-2 vocabulary (50,257 ids, padded to 50,304 rows), sequences of 2,048 tokens, batches of
524,288 tokens (256 sequences; the published runs used 393K-524K), Muon for hidden matrices and AdamW
for the embedding and head, weight decay 1.3, cycles of 2 epochs, and 5 trajectories for a budget of 960
epochs. This GPT counts 1.72B parameters; the published figure of about 1.8B includes small extras
(value-embedding projections and gates) that this architecture leaves out.

``cpu_small`` is the laptop setting: d=128, 4 layers, sequences of 128, a ~2K vocabulary (replace it by
the track's), batches of 8 x 128 tokens, AdamW.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from q0_reference.distill import DistillSpec
from q0_reference.errors import Q0ConfigError
from q0_reference.model import GPTConfig
from q0_reference.optim import OptimizerSpec
from q0_reference.perturb import PerturbationSchedule
from q0_reference.planner import PlannerThresholds


@dataclass(frozen=True)
class Preset:
    name: str
    model: GPTConfig
    optimizer: OptimizerSpec
    batch_size: int  # sequences per optimizer step
    epochs: float  # the reference budget
    lr_floor: float = 0.08
    wd_floor: float = 0.7
    warmup_steps: int = 0  # learning-rate warm-up at the very start of each trajectory
    distill: DistillSpec = DistillSpec()
    planner: PlannerThresholds = PlannerThresholds()
    perturbation: PerturbationSchedule | None = None

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.model.seq_len

    def model_config(self, vocab_size: int | None = None, seq_len: int | None = None) -> GPTConfig:
        """The preset's model, resized to a track's vocabulary and sequence length when given."""
        changes = {k: v for k, v in (("vocab_size", vocab_size), ("seq_len", seq_len)) if v is not None}
        return dataclasses.replace(self.model, **changes)


FINEWEB = Preset(
    name="fineweb",
    model=GPTConfig(vocab_size=50257, seq_len=2048, n_layer=30, n_head=16, d_model=2048, mlp="swiglu",
                    mlp_ratio=4.0, padded_vocab_multiple=64, qk_norm=True, logit_softcap=15.0),
    optimizer=OptimizerSpec(kind="muon", matrix_lr=0.02, embedding_lr=0.075, head_lr=0.001, lr=0.075,
                            weight_decay=1.3, betas=(0.8, 0.95), eps=1e-10, momentum=0.95),
    batch_size=256,
    epochs=960.0,
)

CPU_SMALL = Preset(
    name="cpu_small",
    model=GPTConfig(vocab_size=2048, seq_len=128, n_layer=4, n_head=4, d_model=128, mlp="relu2"),
    optimizer=OptimizerSpec(kind="adamw", lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95)),
    batch_size=8,
    epochs=16.0,
    warmup_steps=20,
)

PRESETS: dict[str, Preset] = {p.name: p for p in (FINEWEB, CPU_SMALL)}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise Q0ConfigError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}") from None
