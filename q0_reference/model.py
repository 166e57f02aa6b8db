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

Optional parts, each off by default (so existing configs build the same model and weights), restate the
extras of slowrun PR #90's GPT (``unlimited/train.py`` at qlabs-eng/slowrun a200723):
- ``value_embeddings``: on every other layer (those with the last layer's parity) a d x d projection of
  the embedding stream x0 is added to the attention values, through a per-head gate 2*sigmoid(W x[:32])
  (32 input channels; W starts at zero, so the gate starts at 1).
- ``attention_gates``: each head's attention output is scaled by sigmoid(W x[:12]) (12 input channels,
  W starts at zero).
- ``head_mixing``: q, k and v of each head are learned mixtures of all heads' projections (H x H
  matrices, identity at the start), folded into the projection weights.
- ``unet_skips``: before each layer the stream is rescaled and re-mixed with x0 (per-layer scalars,
  1 and 0.1 at the start), and the output of encoder layer j is added to the input of layer n-1-j
  (per-layer scalars, 1 at the start).
- ``mtp_head``: the multi-token-prediction head (a 2d -> d projection of [final hidden state at t,
  embedding of token t+1] and one more block, read out through the same lm_head and soft-cap) that
  predicts token t+2. ``model(idx, targets)`` returns (logits, its mean cross-entropy), which training
  adds with weight ``mtp_weight`` (PR #90: 0.3; inside the distillation mix it sits on the label side,
  (1 - alpha) * (CE + w * MTP) + alpha * T^2 * KL). ``model(idx)``, what evaluation calls, returns the
  logits alone: the head only shapes the trunk during training.

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
VALUE_GATE_CHANNELS = 32  # input channels of the value-embedding gate (PR #90)
ATTENTION_GATE_CHANNELS = 12  # input channels of the attention-output gate (PR #90)


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
    value_embeddings: bool = False
    attention_gates: bool = False
    head_mixing: bool = False
    unet_skips: bool = False
    mtp_head: bool = False
    mtp_weight: float = 0.3  # the MTP head's auxiliary loss weight in training (PR #90's default)

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
        if not (isinstance(self.mtp_weight, (int, float)) and self.mtp_weight >= 0):
            raise Q0ConfigError(f"GPTConfig.mtp_weight must be >= 0, got {self.mtp_weight!r}")
        if self.logit_softcap is not None and not self.logit_softcap > 0:
            raise Q0ConfigError(f"GPTConfig.logit_softcap must be positive or None, got {self.logit_softcap!r}")
        for flag, channels in (("value_embeddings", VALUE_GATE_CHANNELS), ("attention_gates", ATTENTION_GATE_CHANNELS)):
            if getattr(self, flag) and self.d_model < channels:
                raise Q0ConfigError(f"GPTConfig.{flag} gates read {channels} channels; d_model is {self.d_model}")

    def has_value_embedding(self, layer: int) -> bool:
        """Layers with the last layer's parity (so the last layer has one), as PR #90 places them."""
        return self.value_embeddings and layer < self.n_layer and layer % 2 == (self.n_layer - 1) % 2

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
    def __init__(self, config: GPTConfig, layer: int = 0):
        super().__init__()
        d, heads = config.d_model, config.n_head
        self.n_head, self.head_dim, self.qk_norm = heads, config.head_dim, config.qk_norm
        # Separate q/k/v matrices: Muon orthogonalises each update matrix as a whole, so a fused qkv weight
        # would couple the three projections' updates.
        self.c_q = nn.Linear(d, d, bias=False)
        self.c_k = nn.Linear(d, d, bias=False)
        self.c_v = nn.Linear(d, d, bias=False)
        self.c_proj = nn.Linear(d, d, bias=False)
        self.value_gate = (nn.Linear(VALUE_GATE_CHANNELS, heads, bias=False)
                           if config.has_value_embedding(layer) else None)
        self.attention_gate = nn.Linear(ATTENTION_GATE_CHANNELS, heads, bias=False) if config.attention_gates else None
        if config.head_mixing:
            self.q_mix, self.k_mix, self.v_mix = (nn.Parameter(torch.eye(heads)) for _ in range(3))
        else:
            self.q_mix = self.k_mix = self.v_mix = None

    def _project(self, linear: nn.Linear, mix: nn.Parameter | None, x: torch.Tensor) -> torch.Tensor:
        """x's projection, [B, H, T, D]; with a head mixture, head h is sum_g mix[h, g] * head g, folded into
        the weight (an H x H product on the weight instead of one per token)."""
        B, T, _ = x.shape
        weight = linear.weight
        if mix is not None:
            weight = (mix.to(weight.dtype) @ weight.view(self.n_head, -1)).view_as(weight)
        return F.linear(x, weight).view(B, T, self.n_head, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                value_embedding: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q = self._project(self.c_q, self.q_mix, x)
        k = self._project(self.c_k, self.k_mix, x)
        v = self._project(self.c_v, self.v_mix, x)
        if self.value_gate is not None:
            gate = 2 * torch.sigmoid(self.value_gate(x[..., :VALUE_GATE_CHANNELS]))  # [B, T, H]
            v = v + gate.transpose(1, 2).unsqueeze(-1) * value_embedding.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        if self.qk_norm:
            q, k = rms_norm(q), rms_norm(k)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if self.attention_gate is not None:
            y = y * torch.sigmoid(self.attention_gate(x[..., :ATTENTION_GATE_CHANNELS])).transpose(1, 2).unsqueeze(-1)
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
    def __init__(self, config: GPTConfig, layer: int = 0):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer)
        self.mlp = ReluSquaredMLP(config) if config.mlp == "relu2" else SwiGLUMLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                value_embedding: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.dropout(self.attn(rms_norm(x), cos, sin, value_embedding))
        return x + self.dropout(self.mlp(rms_norm(x)))


class GPT(nn.Module):
    """``model(idx[B, T]) -> logits[B, T, vocab_size]`` (float32, or float64 for a float64 model), for T up to
    ``config.seq_len``."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.padded_vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config, layer) for layer in range(config.n_layer))
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False)
        d = config.d_model
        self.value_projs = nn.ModuleDict({str(layer): nn.Linear(d, d, bias=False) for layer in range(config.n_layer)
                                          if config.has_value_embedding(layer)})
        if config.unet_skips:
            self.resid_scales = nn.Parameter(torch.ones(config.n_layer))
            self.x0_scales = nn.Parameter(torch.full((config.n_layer,), 0.1))
            self.skip_scales = nn.Parameter(torch.ones(config.n_layer // 2))
        if config.mtp_head:
            self.mtp_proj = nn.Linear(2 * d, d, bias=False)
            self.mtp_block = Block(config, config.n_layer)
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
        for block in [*self.blocks, *([self.mtp_block] if cfg.mtp_head else [])]:
            for name, linear in block.named_modules():
                if not isinstance(linear, nn.Linear):
                    continue
                std = linear.in_features ** -0.5
                if name.endswith("c_proj"):
                    std *= residual_scale
                nn.init.normal_(linear.weight, mean=0.0, std=std)
        nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.1 * cfg.d_model ** -0.5)
        self._reset_optional_parts()

    @torch.no_grad()
    def _reset_optional_parts(self) -> None:
        """The optional parts start as no-ops or near them: gates at zero weight (value gate 1, attention
        gate 1/2 on every head), head mixtures at the identity, stream scalars 1 and 0.1, skip scalars 1."""
        cfg = self.config
        blocks = list(self.blocks) + ([self.mtp_block] if cfg.mtp_head else [])
        for block in blocks:
            attn = block.attn
            for gate in (attn.value_gate, attn.attention_gate):
                if gate is not None:
                    nn.init.zeros_(gate.weight)
            for mix in (attn.q_mix, attn.k_mix, attn.v_mix):
                if mix is not None:
                    nn.init.eye_(mix)
        for proj in self.value_projs.values():
            nn.init.normal_(proj.weight, mean=0.0, std=cfg.d_model ** -0.5)
        if cfg.unet_skips:
            self.resid_scales.fill_(1.0)
            self.x0_scales.fill_(0.1)
            self.skip_scales.fill_(1.0)
        if cfg.mtp_head:
            nn.init.normal_(self.mtp_proj.weight, mean=0.0, std=self.mtp_proj.in_features ** -0.5)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """Logits [B, T, V]; with ``targets`` and the MTP head on, (logits, MTP loss) for training."""
        if idx.dim() != 2:
            raise Q0ConfigError(f"GPT input must be a [batch, time] tensor of token ids, got shape {tuple(idx.shape)}")
        T = idx.size(1)
        if T > self.config.seq_len:
            raise Q0ConfigError(f"sequence of {T} tokens is longer than the model's seq_len {self.config.seq_len}")
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x = rms_norm(self.wte(idx))
        x = self._plain(x, cos, sin) if self._plain_trunk else self._trunk(x, cos, sin)
        hidden = rms_norm(x)
        logits = self._read_out(hidden)
        if targets is None or not self.config.mtp_head:
            return logits
        return logits, self._mtp_loss(hidden, targets, cos, sin)

    def _read_out(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(hidden)[..., : self.config.vocab_size]
        if logits.dtype not in (torch.float32, torch.float64):  # bf16 under autocast: the loss wants float32
            logits = logits.float()
        if self.config.logit_softcap is not None:
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        return logits

    def _mtp_loss(self, hidden: torch.Tensor, targets: torch.Tensor, cos: torch.Tensor,
                  sin: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of predicting token t+2 from the hidden state at t and token t+1's embedding."""
        combined = self.mtp_proj(torch.cat([hidden[:, :-1], rms_norm(self.wte(targets[:, :-1]))], dim=-1))
        T = combined.size(1)
        logits = self._read_out(rms_norm(self.mtp_block(combined, cos[:T], sin[:T])))
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets[:, 1:].reshape(-1))

    @property
    def _plain_trunk(self) -> bool:
        return not (self.config.unet_skips or self.config.value_embeddings)

    def _plain(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, cos, sin)
        return x

    def _trunk(self, x0: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """The blocks with value embeddings from x0 and, with ``unet_skips``, the per-layer re-mixing with x0
        and the encoder-to-decoder skips (encoder: the first n_layer // 2 layers)."""
        cfg = self.config
        encoder = cfg.n_layer // 2
        x, outputs = x0, []
        for layer, block in enumerate(self.blocks):
            if cfg.unet_skips:
                mirror = cfg.n_layer - 1 - layer
                if layer >= encoder and 0 <= mirror < encoder:
                    # decoder layers with a mirror are the last `encoder` ones (an odd stack's middle layer
                    # has none): their scalars in order, as with an even stack
                    x = x + self.skip_scales[layer - (cfg.n_layer - encoder)] * outputs[mirror]
                x = self.resid_scales[layer] * x + self.x0_scales[layer] * x0
            proj = self.value_projs[str(layer)] if cfg.has_value_embedding(layer) else None
            x = block(x, cos, sin, proj(x0) if proj is not None else None)
            if layer < encoder:
                outputs.append(x)
        return x

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
