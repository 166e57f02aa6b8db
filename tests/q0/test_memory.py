"""The per-GPU memory estimate: its per-token terms against what autograd really saves, its static terms
by hand, and `slowrun plan` refusing a microbatch that cannot fit."""

import weakref

import pytest
import torch

from harness.cli import main as slowrun
from q0_reference.capacity import capacity
from q0_reference.distill import cross_entropy
from q0_reference.errors import Q0ConfigError
from q0_reference.memory import GIB, activation_bytes_per_token, estimate_memory, largest_micro_batch, weight_cast_bytes
from q0_reference.model import GPTConfig, build_gpt
from q0_reference.plan_report import plan_report
from q0_reference.presets import get_preset


def saved_bytes(config: GPTConfig, bf16: bool, batch: int = 2) -> int:
    """Bytes of every distinct storage autograd saves in one forward (weights themselves excluded)."""
    torch.manual_seed(0)
    model = build_gpt(config.to_dict())
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in own:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    x = torch.randint(0, config.vocab_size, (batch, config.seq_len))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            cross_entropy(model(x), x)
    return sum(seen.values())


@pytest.mark.parametrize("mlp", ["swiglu", "relu2"])
@pytest.mark.parametrize("bf16", [False, True])
def test_per_token_terms_match_what_autograd_saves(mlp, bf16):
    config = GPTConfig(vocab_size=1000, seq_len=64, n_layer=3, n_head=4, d_model=128, mlp=mlp, logit_softcap=15.0)
    tokens = 2 * 64
    estimate = activation_bytes_per_token(config, bf16=bf16) * tokens + weight_cast_bytes(config, bf16=bf16)
    measured = saved_bytes(config, bf16)
    # what the formula leaves out: the token ids (8 bytes a token) and, under autocast, bf16 copies of
    # the rotary tables (a few KB)
    assert measured - estimate == pytest.approx(8 * tokens, abs=0.01 * measured)


def test_static_terms_of_the_fineweb_preset_by_hand():
    config = get_preset("fineweb").model
    e = estimate_memory(config, optimizer="muon", micro_batch=4, bf16=True, teacher=True)
    params = 1_723_858_944
    matrices = 30 * (4 * 2048 * 2048 + 3 * 2048 * 5504)  # the hidden matrices, on Muon
    assert matrices == 1_517_813_760
    assert (e.weights, e.gradients, e.teacher) == (4 * params, 4 * params, 2 * params)
    assert e.optimizer == 8 * (params - matrices) + 4 * matrices  # AdamW's two moments, Muon's momentum
    assert e.weight_casts == 2 * (matrices + 50304 * 2048)
    assert e.activations == 4 * e.activations_per_sequence
    assert estimate_memory(config, teacher=False).teacher == 0
    assert estimate_memory(config, optimizer="adamw").optimizer == 8 * params


def test_the_largest_microbatch_is_the_last_that_fits():
    config = get_preset("fineweb").model
    gpu = 80 * GIB
    m = largest_micro_batch(config, gpu)
    assert estimate_memory(config, micro_batch=m).total <= gpu < estimate_memory(config, micro_batch=m + 1).total
    assert largest_micro_batch(config, 10 * GIB) == 0


def test_capacity_refuses_a_microbatch_that_cannot_fit_and_names_one_that_does():
    with pytest.raises(Q0ConfigError, match=r"needs about .* GiB per GPU.*largest microbatch that fits is 4"):
        capacity(16, "fineweb", world_size=8, gpu_memory_gib=80, micro_batch_size=8)
    layout = capacity(16, "fineweb", world_size=8, gpu_memory_gib=80)
    assert (layout.n_groups, layout.micro_batch, layout.largest_fit) == (1, 4, 4)
    assert capacity(960, "fineweb", world_size=40).n_groups == 5


def test_plan_command_prints_placement_and_memory_and_refuses_what_cannot_fit(capsys):
    text = plan_report(16, world_size=8, gpu_memory_gib=80)
    for fragment in ("q0 allocation plan", "1 of 8 rank(s)", "8 x 4 x 8", "activations (4 x 2048 tokens",
                     "teacher", "optimizer state", "(fits)"):
        assert fragment in text, fragment
    assert "per-GPU" not in plan_report(16)
    assert slowrun(["plan", "--epochs", "16", "--world-size", "8", "--gpu-memory", "80"]) == 0
    assert "per-GPU memory estimate" in capsys.readouterr().out
    assert slowrun(["plan", "--epochs", "16", "--world-size", "8", "--gpu-memory", "40", "--micro-batch-size", "4"]) == 2
    assert "does NOT fit" in capsys.readouterr().err
    # PR #90's batches of 192 and 256 sequences in microbatches of 2 on 3 GPUs: 3 groups of 1 work
    assert slowrun(["plan", "--epochs", "960", "--preset", "fineweb_pr90", "--world-size", "3"]) == 0
    assert "3 of 1, 1, 1 rank(s)" in capsys.readouterr().out
    assert slowrun(["plan", "--epochs", "16", "--world-size", "3", "--micro-batch-size", "4"]) == 2  # 256 / (4 x 3)
    assert "no split of 3 ranks" in capsys.readouterr().err


class LiveBytes:
    """The bytes of every tensor storage alive while it is active, and their peak: each storage an operator
    returns is counted once, from its creation until it is freed (the count a GPU's caching allocator
    reports as allocated), whatever the machine's allocator does with the pages."""

    def __init__(self, *inputs: torch.Tensor):
        from torch.utils._python_dispatch import TorchDispatchMode

        live, counts = set(), {"now": 0, "peak": 0}

        def track(tensor) -> None:
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key in live or storage.nbytes() == 0:
                return
            live.add(key)
            counts["now"] += storage.nbytes()
            counts["peak"] = max(counts["peak"], counts["now"])
            weakref.finalize(storage, free, key, storage.nbytes())

        def free(key, nbytes) -> None:
            live.discard(key)
            counts["now"] -= nbytes

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for item in torch.utils._pytree.tree_flatten(out)[0]:
                    if isinstance(item, torch.Tensor):
                        track(item)
                return out

        for tensor in inputs:
            track(tensor)
        self.mode, self.counts = Mode(), counts

    @property
    def peak(self) -> int:
        return self.counts["peak"]


@pytest.mark.parametrize("teacher", [False, True])
def test_the_loss_peak_counts_the_buffers_it_measures(teacher):
    """The float32 [tokens, V] buffers alive at the loss's peak (its inputs, its forward's and backward's
    buffers, the gradient it leaves), counted storage by storage, against the estimate's count for a
    model without a soft-cap."""
    from q0_reference.distill import distillation_loss
    from q0_reference.memory import LOSS_BUFFERS, LOSS_BUFFERS_TEACHER

    n, v = 512, 4096
    torch.manual_seed(0)
    student = torch.randn(n, v, requires_grad=True)  # the model's output
    other = torch.randn(n, v)
    targets = torch.randint(0, v, (n,))
    counter = LiveBytes(student, other) if teacher else LiveBytes(student)
    with counter.mode:
        loss = distillation_loss(student, other, targets) if teacher else cross_entropy(student, targets)
        loss.backward()
    measured = counter.peak / (n * v * 4)
    assert abs(measured - (LOSS_BUFFERS_TEACHER if teacher else LOSS_BUFFERS)) <= 0.5, measured
