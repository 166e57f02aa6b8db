"""What one GPU holds while training a GPT: an itemised estimate, and the largest microbatch that fits.

Static, for the model one rank trains (every rank of a DDP group holds all of it):

- weights: float32 master copy, 4 bytes per parameter (bf16 autocast casts them per use);
- gradients: 4 bytes per parameter (DDP's buckets hold them, ``gradient_as_bucket_view``: no second copy);
- optimizer state: AdamW's two moments, 8 bytes per AdamW parameter; Muon's momentum, 4 bytes per matrix
  weight (replicated in a group, see q0_reference.muon);
- teacher (q0, distilled cycles): a frozen copy, 2 bytes per parameter in bf16, 4 in float32.

Per microbatch, what autograd saves for the backward pass, per token (d = width, h = MLP width, H =
heads, V = vocabulary, e = 2 bytes under bf16 autocast and 4 in float32; the residual stream stays
float32):

- per layer: the input of each norm (4d, twice) and of the q/k norms (4d each, computed in float32),
  with their reciprocal RMS (4 bytes per row); the bf16 casts the linear maps save (three for q, k, v and
  two or one for the MLP: 3ed + 2ed or ed; in float32 the maps of one input share it: 4d + 4d); flash
  attention's q, k, v and output (4ed) and its log-sum-exp (4H; no T x T matrix); the output
  projection's input (ed); the MLP's hidden activations (SwiGLU: gate, its SiLU, up and product, 4eh;
  ReLU^2: the ReLU's output, which the square also uses, and the square, 2eh);
- per model: the embedding's and the final norm's inputs (4d each), the head's input (ed), and the
  float32 [tokens, V] buffers live at the loss's peak (4V each): the model's output and, with a logit
  soft-cap, the tanh output its backward keeps; then cross-entropy's log-softmax, its gradient and a
  transient (3), or with a teacher the teacher's logits and the fused loss's five (its scaled input, both
  log-softmaxes, the teacher's probabilities and the gradient). Counted storage by storage on a CPU
  (tests/q0/test_memory.py) the peak is 4.0 buffers without a teacher and 7.0 with one (peak resident
  memory says 4.03 and 7.07); with a soft-cap, one more: eight, as the GPU review found. What
  autograd keeps of them for the backward is 8V (12V with a teacher), the rest is the loss's transient
  (`loss_transient_bytes_per_token`), counted with the activations since both peak at the loss;
- per forward, not per token: under bf16 autocast the bf16 copies of every weight matrix the forward
  used (2 bytes per matrix weight), kept for the backward pass.

tests/q0/test_memory.py checks these terms against the tensors autograd actually saves on a CPU.
This is an eager-mode upper bound: ``torch.compile`` fuses norms and elementwise chains and recomputes
cheap ones in the backward instead of saving them, typically saving a third or more; the GPU check's
probe (benchmarks/probe_memory.py) measures the real peak beside this estimate. A fixed reserve (CUDA
context, NCCL buffers, allocator fragmentation, compile workspace) of 3 GiB plus 5% is added.
"""

from __future__ import annotations

from dataclasses import dataclass

from q0_reference.errors import Q0ConfigError
from q0_reference.model import GPTConfig

GIB = 1 << 30
RESERVE_BYTES = 3 * GIB
RESERVE_FRACTION = 0.05
# float32 [tokens, V] buffers live at the loss's peak besides a soft-cap's saved output (see the docstring):
# the model's output and cross-entropy's three; or the output, the teacher's logits and the fused loss's five.
LOSS_BUFFERS = 4
LOSS_BUFFERS_TEACHER = 7


def parameter_counts(config: GPTConfig) -> dict[str, int]:
    """Parameters by optimizer role, by formula (no model is built): embedding, head, matrix."""
    d, h, vp = config.d_model, config.mlp_hidden, config.padded_vocab_size
    mlp = (3 if config.mlp == "swiglu" else 2) * d * h
    return {"embedding": vp * d, "head": vp * d, "matrix": config.n_layer * (4 * d * d + mlp)}


def activation_bytes_per_token(config: GPTConfig, *, bf16: bool = True, teacher: bool = False) -> int:
    """Bytes autograd keeps per training token (all layers, head and loss), eager mode."""
    d, h, v, heads = config.d_model, config.mlp_hidden, config.vocab_size, config.n_head
    e = 2 if bf16 else 4
    norm = 4 * d + 4  # a float32 input row and its reciprocal RMS
    casts_qkv = 3 * e * d if bf16 else 4 * d  # in float32 the three maps share one saved input
    casts_mlp = (2 if config.mlp == "swiglu" else 1) * e * d if bf16 else 4 * d
    hidden = (4 if config.mlp == "swiglu" else 2) * e * h  # ReLU^2: relu's output (square's input) and square's
    qk_norm = 2 * (4 * d + 4 * heads) if config.qk_norm else 0
    attention = 4 * e * d + 4 * heads
    per_layer = norm + casts_qkv + qk_norm + attention + e * d + norm + casts_mlp + hidden
    loss = (12 if teacher else 8) * v
    return config.n_layer * per_layer + 2 * norm + e * d + loss


def loss_transient_bytes_per_token(config: GPTConfig, *, teacher: bool = False) -> int:
    """What the loss holds at its peak beyond the activations autograd saves for it: its buffers live at
    once (LOSS_BUFFERS or LOSS_BUFFERS_TEACHER, plus a soft-cap's saved output), less the saved ones
    counted in activation_bytes_per_token (8V, or 12V with a teacher)."""
    v = config.vocab_size
    peak = 4 * v * (LOSS_BUFFERS_TEACHER if teacher else LOSS_BUFFERS) + (4 * v if config.logit_softcap else 0)
    return max(0, peak - (12 if teacher else 8) * v)


def weight_cast_bytes(config: GPTConfig, *, bf16: bool = True) -> int:
    """The bf16 copies of the weight matrices an autocast forward saves for its backward (0 in float32)."""
    if not bf16:
        return 0
    counts = parameter_counts(config)
    return 2 * (counts["matrix"] + counts["head"])


@dataclass(frozen=True)
class MemoryEstimate:
    micro_batch: int
    seq_len: int
    weights: int
    gradients: int
    optimizer: int
    teacher: int
    weight_casts: int  # bf16 weight copies saved by an autocast forward
    activations: int  # for the whole microbatch
    activations_per_sequence: int

    @property
    def static(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.teacher

    @property
    def per_microbatch(self) -> int:
        return self.weight_casts + self.activations

    @property
    def reserve(self) -> int:
        return int(RESERVE_BYTES + RESERVE_FRACTION * (self.static + self.per_microbatch))

    @property
    def total(self) -> int:
        return self.static + self.per_microbatch + self.reserve

    def rows(self) -> list[tuple[str, int]]:
        return [("weights (fp32)", self.weights), ("gradients (fp32)", self.gradients),
                ("optimizer state", self.optimizer), ("teacher", self.teacher),
                ("bf16 weight copies of a forward", self.weight_casts),
                (f"activations ({self.micro_batch} x {self.seq_len} tokens, "
                 f"{self.activations_per_sequence / GIB:.2f} GiB/sequence)", self.activations),
                ("reserve (context, buffers, fragmentation)", self.reserve), ("total", self.total)]


def estimate_memory(config: GPTConfig, *, optimizer: str = "muon", micro_batch: int = 1, bf16: bool = True,
                    teacher: bool = True, teacher_bf16: bool | None = None) -> MemoryEstimate:
    """Per-GPU memory of one training rank at ``micro_batch`` sequences per forward."""
    if micro_batch < 1:
        raise Q0ConfigError(f"micro_batch must be >= 1, got {micro_batch}")
    counts = parameter_counts(config)
    total = sum(counts.values())
    adam = total - counts["matrix"] if optimizer == "muon" else total
    muon = counts["matrix"] if optimizer == "muon" else 0
    teacher_bytes = (2 if (bf16 if teacher_bf16 is None else teacher_bf16) else 4) * total if teacher else 0
    per_sequence = (activation_bytes_per_token(config, bf16=bf16, teacher=teacher)
                    + loss_transient_bytes_per_token(config, teacher=teacher)) * config.seq_len
    return MemoryEstimate(micro_batch=micro_batch, seq_len=config.seq_len, weights=4 * total, gradients=4 * total,
                          optimizer=8 * adam + 4 * muon, teacher=teacher_bytes,
                          weight_casts=weight_cast_bytes(config, bf16=bf16),
                          activations=micro_batch * per_sequence, activations_per_sequence=per_sequence)


def largest_micro_batch(config: GPTConfig, gpu_bytes: int, **kwargs) -> int:
    """The largest microbatch whose estimate fits in ``gpu_bytes`` (0 when not even one sequence fits)."""
    micro = 0
    while estimate_memory(config, micro_batch=micro + 1, **kwargs).total <= gpu_bytes:
        micro += 1
        if micro >= 4096:
            break
    return micro


def format_estimate(estimate: MemoryEstimate, gpu_bytes: int | None = None) -> str:
    lines = ["per-GPU memory estimate (eager upper bound; compile needs less)"]
    width = max(len(name) for name, _ in estimate.rows())
    for name, value in estimate.rows():
        lines.append(f"  {name:<{width}}  {value / GIB:8.2f} GiB")
    if gpu_bytes is not None:
        verdict = "fits" if estimate.total <= gpu_bytes else "does NOT fit"
        lines.append(f"  {'GPU memory':<{width}}  {gpu_bytes / GIB:8.2f} GiB  ({verdict})")
    return "\n".join(lines)
