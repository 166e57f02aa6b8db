"""Training runs where the context says: on the meta device every tensor a step touches is on meta.

A recipe that built its model on the CPU, left a batch on the CPU, or kept a teacher or optimizer state
there would fail here: meta tensors cannot mix with CPU tensors, and the checks below look at every
parameter, buffer, optimizer state, batch and teacher weight the training step receives.
"""

import pytest
import torch

from q0_reference import recipes
from q0_reference.distill import Teacher
from q0_reference.model import GPT, GPTConfig, build_gpt, build_on_device
from q0_reference.recipes import Q0Settings, Recipe, train_q0, train_single
from tests.q0.fakes import FakeContext

SMALL = dict(d_model=32, n_layer=1, n_head=2, batch_size=4, micro_batch_size=2, warmup_steps=2, log_every=5,
             compile="off", autocast="fp32")


def tensors_of_optimizer(optimizer):
    for inner in optimizer.optimizers:
        for state in inner.state.values():
            for name, value in state.items():
                # torch keeps AdamW's step counter as a 0-d CPU tensor unless it runs fused or capturable;
                # it is a Python-side count, not a tensor the step computes with on the device
                if torch.is_tensor(value) and not (name == "step" and value.dim() == 0):
                    yield name, value


@pytest.fixture
def seen(monkeypatch):
    """Wrap the recipes' training step to record the device of everything it is handed."""
    record = {"steps": 0, "teachers": 0, "devices": set(), "off_meta": []}
    real = recipes.accumulated_step

    def checking(model, optimizer, batches, teacher=None, **kwargs):
        record["steps"] += 1
        named = [(f"param {n}", p) for n, p in model.named_parameters()]
        named += [(f"buffer {n}", b) for n, b in model.named_buffers()]
        named += [(f"optimizer {n}", t) for n, t in tensors_of_optimizer(optimizer)]
        for i, (x, y) in enumerate(batches):
            named += [(f"inputs {i}", x), (f"targets {i}", y)]
        if teacher is not None:
            record["teachers"] += 1
            named += [(f"teacher {n}", p) for n, p in teacher.module.state_dict().items()]
        for name, tensor in named:
            record["devices"].add(tensor.device.type)
            if tensor.device.type != "meta":
                record["off_meta"].append(name)
        loss = real(model, optimizer, batches, teacher, **kwargs)
        for name, tensor in tensors_of_optimizer(optimizer):  # states created by this very step
            if tensor.device.type != "meta":
                record["off_meta"].append(f"optimizer {name} after the step")
        return loss

    monkeypatch.setattr(recipes, "accumulated_step", checking)
    return record


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_single_model_trains_on_meta_when_the_context_says_meta(seen, optimizer):
    ctx = FakeContext(device="meta", budget=1.0)
    train_single(ctx, Recipe.from_hparams({**SMALL, "optimizer": optimizer}), epochs=1.0, snapshot_every_epochs=0)
    assert seen["steps"] == 8  # 512 tokens per epoch / (4 x 16 tokens per step)
    assert seen["off_meta"] == [] and seen["devices"] == {"meta"}
    assert ctx.snapshots and all(t.is_meta for t in ctx.snapshots[-1][1].values())


def test_q0_trains_and_distils_on_meta(seen):
    ctx = FakeContext(device="meta", budget=4.0)
    train_q0(ctx, Recipe.from_hparams({**SMALL, "optimizer": "muon"}), Q0Settings())
    # 4 epochs of 8 steps: 16 steps of plain training, then 4 packed cycles of 4 steps; cycles 1-3 distil
    assert seen["steps"] == 32 and seen["teachers"] == 12
    assert seen["off_meta"] == [] and seen["devices"] == {"meta"}


def test_materialised_model_equals_eager_construction_bit_for_bit():
    config = GPTConfig(vocab_size=100, seq_len=16, n_layer=2, n_head=2, d_model=32, mlp="swiglu")
    torch.manual_seed(7)
    eager = GPT(config)
    torch.manual_seed(7)
    built = build_on_device(config, "cpu")
    for (name, a), b in zip(eager.state_dict().items(), built.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(eager.buffers(), built.buffers()):
        assert torch.equal(a, b)
    assert torch.equal(torch.rand(3), (torch.manual_seed(7), GPT(config), torch.rand(3))[2])  # same draws after


def test_meta_build_allocates_nothing_and_draws_no_random_numbers():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    model = build_on_device(GPTConfig(vocab_size=50257, seq_len=2048, n_layer=30, n_head=16, d_model=2048), "meta")
    assert all(p.is_meta for p in model.parameters())
    assert torch.equal(before, torch.get_rng_state())


def test_teacher_is_a_frozen_copy_on_the_students_device_in_its_own_dtype():
    torch.manual_seed(0)
    student = build_gpt(dict(vocab_size=64, seq_len=16, n_layer=1, n_head=2, d_model=32))
    teacher = Teacher(student, dtype=torch.bfloat16)
    assert {p.dtype for p in teacher.parameters()} == {torch.bfloat16}
    assert all(not p.requires_grad for p in teacher.parameters()) and not teacher.module.training
    x = torch.randint(0, 64, (2, 16))
    out = teacher(x)
    assert out.dtype == torch.float32 and out.is_inference()
    with torch.no_grad():
        student.lm_head.weight.add_(1.0)
    assert not torch.equal(teacher.module.lm_head.weight.float(), student.lm_head.weight.bfloat16().float())
    teacher.load_from(student)
    assert torch.equal(teacher.module.lm_head.weight, student.lm_head.weight.bfloat16())
    exact = Teacher(student)  # float32: the same numbers as a deep copy
    with torch.no_grad():
        assert torch.equal(exact(x), student.eval()(x))


def test_q0_draws_its_perturbation_noise_on_the_run_device(seen, monkeypatch):
    devices = []
    real = recipes.seeded_generator
    monkeypatch.setattr(recipes, "seeded_generator", lambda seed, device="cpu": (devices.append(str(device)),
                                                                                 real(seed, device))[1])
    ctx = FakeContext(device="meta", budget=4.0, hparams={"perturb_start": 0.25})
    train_q0(ctx, Recipe.from_hparams({**SMALL, "optimizer": "muon"}), Q0Settings.from_hparams(ctx.hparams))
    assert devices and set(devices) == {"meta"}
    assert seen["off_meta"] == [] and seen["devices"] == {"meta"}
