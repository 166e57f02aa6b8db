"""A small decoder-only GPT shared by the single-model baseline and q0.

Design choices, and why:
- RMSNorm has no learnable gain. Every norm here sits directly in front of a linear map (pre-norm blocks,
  the final norm before the head), so a gain could be folded into that map's weights and adds nothing the
  model cannot already express. Leaving it out also means every trainable tensor is a matrix: Muon can
  take all hidden weights without special cases, weight decay needs no exclusions, and snapshots are
  smaller.
- Rotary position embeddings, so there is no position table to over-fit in the small-data regime.
- Optional QK-norm (on by default) keeps attention logits bounded, which lets the cyclic schedule restart
  at its peak learning rate every cycle without attention blow-ups.
- Input and output embeddings are untied: in multi-epoch training the two roles pull apart.
- The embedding table and head are padded to a multiple of ``padded_vocab_multiple`` rows because
  matrix kernels prefer round sizes; the logits are sliced back to ``vocab_size`` so no probability mass
  ever lands on a padded id.

A model is rebuilt from a plain dict (its build spec) with :func:`build_gpt`, so the harness can store
weights beside ``{"builder": "q0_reference.model:build_gpt", "config": {...}}`` and reload them later.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from q0_reference.errors import Q0ConfigError

BUILDER = "q0_reference.model:build_gpt"
MLP_KINDS = ("relu2", "swiglu")


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    seq_len: int
    n_layer: int
    n_head: int
    d_model: int
    mlp: str = "relu2"
    mlp_ratio: float = 4.0
    mlp_multiple: int = 64
    padded_vocab_multiple: int = 64
    qk_norm: bool = True
    dropout: float = 0.0
    rope_base: float = 10000.0
    logit_softcap: float | None = None

    def __post_init__(self):
        for name in ("vocab_size", "seq_len", "n_layer", "n_head", "d_model", "mlp_multiple", "padded_vocab_multiple"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise Q0ConfigError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.mlp not in MLP_KINDS:
            raise Q0ConfigError(f"GPTConfig.mlp must be one of {', '.join(MLP_KINDS)}, got {self.mlp!r}")
        if self.d_model % self.n_head:
            raise Q0ConfigError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if self.head_dim % 2:
            raise Q0ConfigError(f"head size d_model/n_head = {self.head_dim} must be even for rotary embeddings")
        if not self.mlp_ratio > 0:
            raise Q0ConfigError(f"GPTConfig.mlp_ratio must be positive, got {self.mlp_ratio!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise Q0ConfigError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.logit_softcap is not None and not self.logit_softcap > 0:
            raise Q0ConfigError(f"GPTConfig.logit_softcap must be positive or None, got {self.logit_softcap!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        m = self.padded_vocab_multiple
        return -(-self.vocab_size // m) * m

    @property
    def mlp_hidden(self) -> int:
        """Hidden width of the MLP. SwiGLU has three matrices instead of two, so its width is 2/3 of the
        ReLU-squared one (rounded up to a multiple of ``mlp_multiple``, 64 by default; PR #90 rounds to 256)
        to keep the parameter count about the same."""
        if self.mlp == "relu2":
            return int(round(self.mlp_ratio * self.d_model))
        m = self.mlp_multiple
        return -(-int(round(2 * self.mlp_ratio * self.d_model / 3)) // m) * m

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> "GPTConfig":
        if not isinstance(config, Mapping):
            raise Q0ConfigError(f"a GPT config must be a mapping of field names to values, got {type(config).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise Q0ConfigError(f"unknown GPT config keys {unknown}; known keys are {sorted(known)}")
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.default is dataclasses.MISSING and f.name not in config)
        if missing:
            raise Q0ConfigError(f"GPT config is missing required keys {missing}")
        return cls(**config)


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(seq_len: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position × frequency, shaped [seq_len, head_dim/2]."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (first-half, second-half) channel pair of x [B, H, T, D] by its position's angle.

    The tables are cast to x's dtype (a no-op in float32), so under bf16 autocast q and k stay bf16 and
    reach attention in the same dtype as v, which the flash kernel needs."""
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        d = config.d_model
        self.n_head, self.head_dim, self.qk_norm = config.n_head, config.head_dim, config.qk_norm
        # Separate q/k/v matrices: Muon orthogonalises each update matrix as a whole, so a fused qkv weight
        # would couple the three projections' updates.
        self.c_q = nn.Linear(d, d, bias=False)
        self.c_k = nn.Linear(d, d, bias=False)
        self.c_v = nn.Linear(d, d, bias=False)
        self.c_proj = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (lin(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
                   for lin in (self.c_q, self.c_k, self.c_v))
        if self.qk_norm:
            q, k = rms_norm(q), rms_norm(k)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class ReluSquaredMLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.d_model, config.mlp_hidden, bias=False)
        self.c_proj = nn.Linear(config.mlp_hidden, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.relu(self.c_fc(x)).square())


class SwiGLUMLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_gate = nn.Linear(config.d_model, config.mlp_hidden, bias=False)
        self.c_fc = nn.Linear(config.d_model, config.mlp_hidden, bias=False)
        self.c_proj = nn.Linear(config.mlp_hidden, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.silu(self.c_gate(x)) * self.c_fc(x))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.attn = CausalSelfAttention(config)
        self.mlp = ReluSquaredMLP(config) if config.mlp == "relu2" else SwiGLUMLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attn(rms_norm(x), cos, sin))
        return x + self.dropout(self.mlp(rms_norm(x)))


class GPT(nn.Module):
    """``model(idx[B, T]) -> logits[B, T, vocab_size]`` (float32, or float64 for a float64 model), for T up to
    ``config.seq_len``."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.padded_vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False)
        cos, sin = rotary_tables(config.seq_len, config.head_dim, config.rope_base)
        # Not persistent: they are a function of the config, so snapshots hold only the weights.
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def materialize(self, device: str | torch.device) -> "GPT":
        """Give a model built on the meta device real storage on ``device`` and initialise it there.

        Building on meta allocates nothing, so a 1.8B model is never initialised on the CPU only to be
        copied to a GPU. The initialisation replays what eager construction does, in the same order: every
        submodule's own ``reset_parameters`` (the draws ``nn.Linear``/``nn.Embedding`` make when built), then
        :meth:`reset_parameters`. Construction on meta draws nothing from the generators, so with the same
        seed the weights equal those of ``GPT(config)`` built directly on ``device``, bit for bit.
        """
        self.to_empty(device=device)
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        self.reset_parameters()
        cos, sin = rotary_tables(self.config.seq_len, self.config.head_dim, self.config.rope_base)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)
        return self

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise from torch's global RNG, in a fixed order, so a seed fixes the weights.

        Input projections get std 1/sqrt(fan_in) (unit-variance outputs for unit-RMS inputs); the two
        projections that write into the residual stream are shrunk by 1/sqrt(2 * n_layer) so the stream's
        scale does not grow with depth; the head starts small so the first loss is close to log(vocab).
        """
        cfg = self.config
        nn.init.normal_(self.wte.weight, mean=0.0, std=1.0)
        residual_scale = 1.0 / math.sqrt(2 * cfg.n_layer)
        for block in self.blocks:
            for name, linear in block.named_modules():
                if not isinstance(linear, nn.Linear):
                    continue
                std = linear.in_features ** -0.5
                if name.endswith("c_proj"):
                    std *= residual_scale
                nn.init.normal_(linear.weight, mean=0.0, std=std)
        nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.1 * cfg.d_model ** -0.5)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.dim() != 2:
            raise Q0ConfigError(f"GPT input must be a [batch, time] tensor of token ids, got shape {tuple(idx.shape)}")
        T = idx.size(1)
        if T > self.config.seq_len:
            raise Q0ConfigError(f"sequence of {T} tokens is longer than the model's seq_len {self.config.seq_len}")
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x = rms_norm(self.wte(idx))
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.lm_head(rms_norm(x))[..., : self.config.vocab_size]
        if logits.dtype not in (torch.float32, torch.float64):  # bf16 under autocast: the loss wants float32
            logits = logits.float()
        if self.config.logit_softcap is not None:
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        return logits

    def build_spec(self) -> dict[str, Any]:
        """What the harness stores beside the weights to rebuild this architecture."""
        return {"builder": BUILDER, "config": self.config.to_dict()}


def build_gpt(config: Mapping[str, Any]) -> GPT:
    """Build a GPT from a plain JSON-able dict of :class:`GPTConfig` fields (the stored build spec)."""
    return GPT(GPTConfig.from_dict(config))


def build_on_device(config: GPTConfig, device: str | torch.device) -> GPT:
    """A GPT built on the meta device and materialised on ``device`` (see :meth:`GPT.materialize`); on
    "meta" it stays a shape-only model. Seed torch's generators first: the weights come from them."""
    with torch.device("meta"):
        model = GPT(config)
    if torch.device(device).type == "meta":
        return model
    return model.materialize(device)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (padded vocabulary rows included); works on the meta device."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
