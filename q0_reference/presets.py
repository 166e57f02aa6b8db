"""Named configurations: the q0 paper's FineWeb setting, slowrun PR #90's run, and a laptop setting.

``fineweb`` is the paper-faithful q0 setting: a 30-layer, 2048-wide GPT with 16 heads (head size 128),
SwiGLU MLP, GPT-2 vocabulary (50,257 ids, padded to 50,304 rows), sequences of 2,048 tokens, batches of
524,288 tokens (256 sequences), Muon for hidden matrices and AdamW for the embedding and head, weight
decay 1.3, cycles of 2 epochs, and 5 trajectories for a budget of 960 epochs. This GPT counts 1.72B
parameters. The submissions use it on the ``fineweb`` track (their ``[track_hparams.fineweb]`` tables
spell out its values; ``python -m q0_reference.presets fineweb`` prints them).

``fineweb_pr90`` mirrors the q0 run of slowrun PR #90 ("Snapshot ensemble + chain distillation +
gradient based model selection", ``unlimited/train.py`` and ``unlimited/gradient_select.py`` of
qlabs-eng/slowrun at a200723) as far as this GPT can express it: five trajectories (one per 8-GPU node)
of 96 cycles of 2 epochs; the learning rate a sawtooth from 1 to 0.08 of its base inside each cycle and
the weight decay in anti-phase from 0.7 to 1.0 of its base 1.3; chain distillation from the cycle-end
snapshot before perturbation, from the 9th cycle on, alpha 0.45, T 1.2; weights perturbed after each
cycle by 0.25 -> 0.05 of each tensor's std on a per-trajectory cosine; batches of 393,216 tokens for the
first and last quarter of the cycles and 524,288 for the middle half; a 132,000-token fitness slice and
a final predictor of the 256 snapshots of largest fitted weight. Its learning rates are PR #90's base
rates times its ``--lr_multiplier`` 0.25.

``cpu_small`` is the laptop setting: d=128, 4 layers, sequences of 128, a ~2K vocabulary (replace it by
the track's), batches of 8 x 128 tokens, AdamW.

Differences, preset by preset (PR #90 column: its code defaults, with which it published 2.987):

| setting | ``fineweb`` (paper) | ``fineweb_pr90`` here | PR #90 itself |
|---|---|---|---|
| model | 30 x 2048, 16 heads, SwiGLU 5504 | 30 x 2048, 16 heads, SwiGLU 5632, value embeddings on alternate layers, attention and value gates, U-Net skips with residual/x0 scalars, cross-head mixing (IHA) | the same, plus a multi-token-prediction head (weight 0.3), sliding windows (SSSL), layers 15-24 run 5 times |
| parameters | 1,723,858,944 | 1,870,172,811 (1,810,403,019 of them used at evaluation: the MTP head trains only) | 1,870,172,811, as its ``train.py`` prints it ("Parameters: ...") |
| dropout / logit cap | 0 / 15 | 0.1 / 15 | 0.1 / 15 |
| Muon | torch's Muon, lr 0.02 | torch's Muon, lr 0.01 | NorMuon (row-normalised, Polar Express coefficients, second-moment scaling, cautious weight decay), lr 0.01 |
| AdamW lr embedding / head | 0.075 / 0.001 | 0.0375 / 0.0005 | 0.0375 / 0.0005, plus scalars 0.025 and IHA 0.02 |
| AdamW betas / eps | (0.8, 0.95) / 1e-10 | (0.8, 0.95) / 1e-10 | same |
| weight decay | 1.3, x 0.7 -> 1.0 | 1.3, x 0.7 -> 1.0 | same |
| batch (tokens) | 524,288 | 393,216 / 524,288 / 393,216 by quarter-half-quarter of the cycles | same |
| cycle LR | 1 -> 0.08, the last step at 0.08 | 1 -> 0.08 in steps of 0.92/L (last step 0.08 + 0.92/L) | same as here |
| steps per cycle | floor(2 epochs / batch) | floor, per cycle | round(2 epochs / batch) (the same 381 and 508 on 100M tokens) |
| trajectories x cycles | 5 x 96 (planner) | 5 x 96 | 5 nodes x 96 |
| warm-up cycles | 8 | 8 | 8 |
| perturbation | none | 0.25 -> 0.05, per trajectory | same |
| final predictor | harness prior over all snapshots | top 256 by weight fitted on 131,072 fitness tokens | top 256 (of K in 8..256) by weights from 300 AdamW steps |
| data order | the harness's seeded stream | the harness's seeded stream | per-epoch document reshuffle |

Parameter counts are checked on the meta device in tests/q0/test_presets.py; the PR #90 count was
obtained by building its ``GPT`` class with its defaults on the meta device and is restated there as a
sum of its parts. The MTP head's 59,769,792 parameters (the 2d -> d projection, 8,388,608, and one more
block, 51,381,184) serve PR #90's auxiliary next-next-token loss (weight 0.3), which training adds
(q0_reference.trainer); evaluation reads the primary logits only. Also not built: the sliding-window pattern and the
layer repetition, which add no parameters. The model flags are not method hyperparameters yet, so
``--set`` flags (``preset_hparams``) run PR #90's widths without these parts, and ``slowrun plan``'s memory
estimate counts the preset without them (3.6% fewer parameters).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Any

from q0_reference.distill import DistillSpec
from q0_reference.errors import Q0ConfigError
from q0_reference.model import GPTConfig
from q0_reference.optim import OptimizerSpec
from q0_reference.perturb import PerturbationSchedule
from q0_reference.planner import PlannerThresholds
from q0_reference.schedule import block_triangular_batches

PERTURB_PROGRESS = ("run", "trajectory")


@dataclass(frozen=True)
class Preset:
    name: str
    model: GPTConfig
    optimizer: OptimizerSpec
    batch_size: int  # sequences per optimizer step (the global batch; the peak of a batch schedule)
    epochs: float  # the reference budget
    batch_floor: int = 0  # > 0: PR #90's block-triangular batch schedule between this and batch_size
    micro_batch_size: int = 0  # sequences per GPU per forward (0: the whole share)
    lr_floor: float = 0.08
    wd_floor: float = 0.7
    lr_endpoint: bool = True  # the last step of a cycle runs at lr_floor (False: PR #90's convention)
    warmup_steps: int = 0  # learning-rate warm-up at the very start of each trajectory
    grad_clip: float = 1.0
    distill: DistillSpec = DistillSpec()
    planner: PlannerThresholds = PlannerThresholds()
    perturbation: PerturbationSchedule | None = None
    perturb_progress: str = "run"
    fitness_tokens: int = 0  # > 0: score this many fitness tokens per snapshot for the final selection
    final_top_k: int = 0  # > 0: predict with the K snapshots of largest fitted weight

    def __post_init__(self):
        if self.perturb_progress not in PERTURB_PROGRESS:
            raise Q0ConfigError(f"perturb_progress must be one of {', '.join(PERTURB_PROGRESS)}, "
                                f"got {self.perturb_progress!r}")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.model.seq_len

    def cycle_batches(self, n_cycles: int) -> tuple[int, ...]:
        """The global batch (sequences) of every cycle of a trajectory of ``n_cycles``."""
        if not self.batch_floor:
            return (self.batch_size,) * n_cycles
        return block_triangular_batches(n_cycles, self.batch_size, self.batch_floor)

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
    micro_batch_size=4,
    epochs=960.0,
)

FINEWEB_PR90 = Preset(
    name="fineweb_pr90",
    model=GPTConfig(vocab_size=50257, seq_len=2048, n_layer=30, n_head=16, d_model=2048, mlp="swiglu",
                    mlp_ratio=4.0, mlp_multiple=256, padded_vocab_multiple=64, qk_norm=True, dropout=0.1,
                    logit_softcap=15.0, value_embeddings=True, attention_gates=True, head_mixing=True,
                    unet_skips=True, mtp_head=True, mtp_weight=0.3),
    # PR #90's base rates 0.04 (matrices), 0.15 (embedding), 0.002 (head) times its lr_multiplier 0.25
    optimizer=OptimizerSpec(kind="muon", matrix_lr=0.01, embedding_lr=0.0375, head_lr=0.0005, lr=0.0375,
                            weight_decay=1.3, betas=(0.8, 0.95), eps=1e-10, momentum=0.95),
    batch_size=524_288 // 2048,
    batch_floor=393_216 // 2048,
    micro_batch_size=2,
    epochs=960.0,
    lr_endpoint=False,
    perturbation=PerturbationSchedule(0.25, 0.05),
    perturb_progress="trajectory",
    fitness_tokens=132_000,
    final_top_k=256,
)

CPU_SMALL = Preset(
    name="cpu_small",
    model=GPTConfig(vocab_size=2048, seq_len=128, n_layer=4, n_head=4, d_model=128, mlp="relu2"),
    optimizer=OptimizerSpec(kind="adamw", lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95)),
    batch_size=8,
    epochs=16.0,
    warmup_steps=20,
)

PRESETS: dict[str, Preset] = {p.name: p for p in (FINEWEB, FINEWEB_PR90, CPU_SMALL)}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise Q0ConfigError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}") from None


def preset_hparams(preset: Preset) -> dict[str, Any]:
    """The method hyperparameters (the keys of the submissions' ``[hparams]``) that reproduce ``preset``.

    A method uses the keys it declares; the q0-only keys (cycles, distillation, perturbation, selection)
    are ignored by the single model and the naive ensemble. Runtime keys (autocast, compile, checkpoint
    policy, snapshot dtype) are not part of a preset."""
    m, o = preset.model, preset.optimizer
    return {
        "d_model": m.d_model, "n_layer": m.n_layer, "n_head": m.n_head, "mlp": m.mlp, "mlp_multiple": m.mlp_multiple,
        "dropout": m.dropout, "logit_softcap": m.logit_softcap or 0.0,
        "optimizer": o.kind, "lr": o.lr, "embedding_lr": o.embedding_lr or 0.0, "head_lr": o.head_lr or 0.0,
        "matrix_lr": o.matrix_lr, "weight_decay": o.weight_decay, "beta1": o.betas[0], "beta2": o.betas[1],
        "adam_eps": o.eps, "momentum": o.momentum,
        "batch_size": preset.batch_size, "micro_batch_size": preset.micro_batch_size,
        "warmup_steps": preset.warmup_steps, "grad_clip": preset.grad_clip,
        "lr_floor": preset.lr_floor, "wd_floor": preset.wd_floor, "lr_reaches_floor": preset.lr_endpoint,
        "alpha": preset.distill.alpha, "temperature": preset.distill.temperature,
        "cycle_epochs": preset.planner.cycle_epochs, "warmup_cycles": preset.planner.warmup_cycles,
        "perturb_start": preset.perturbation.start if preset.perturbation else 0.0,
        "perturb_end": preset.perturbation.end if preset.perturbation else 0.05,
        "perturb_progress": preset.perturb_progress, "batch_floor": preset.batch_floor,
        "fitness_tokens": preset.fitness_tokens, "final_top_k": preset.final_top_k,
    }


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, float):
        return repr(value)
    return str(value)


def main(argv: list[str] | None = None) -> int:
    """``python -m q0_reference.presets NAME [--set]``: the preset as a TOML table, or as ``--set`` flags
    for ``slowrun run`` (to run, say, PR #90's configuration with submissions/q0 on the fineweb track)."""
    args = list(sys.argv[1:] if argv is None else argv)
    as_flags = "--set" in args
    names = [a for a in args if not a.startswith("--")]
    if len(names) != 1:
        print(f"usage: python -m q0_reference.presets NAME [--set]   (NAME: {', '.join(sorted(PRESETS))})",
              file=sys.stderr)
        return 2
    values = preset_hparams(get_preset(names[0]))
    if as_flags:
        print(" ".join(f"--set {k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in values.items()))
    else:
        print("\n".join(f"{k} = {_toml_value(v)}" for k, v in values.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
