import copy
import traceback

import pytest
import torch

from q0_reference.distill import cross_entropy, distillation_loss, frozen_teacher
from q0_reference.errors import NonFiniteLossError, Q0ConfigError
from q0_reference.model import build_gpt
from q0_reference.optim import OptimizerSpec, build_optimizer, set_multipliers
from q0_reference.schedule import CyclicSchedule
from q0_reference.trainer import check_finite_loss, evaluate_loss, train_step

CONFIG = dict(vocab_size=64, seq_len=16, n_layer=2, n_head=2, d_model=32)


def setup(seed=0):
    torch.manual_seed(seed)
    model = build_gpt(CONFIG)
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randint(0, 64, (4, 16), generator=g)
    targets = torch.randint(0, 64, (4, 16), generator=g)
    return model, build_optimizer(model, OptimizerSpec(lr=3e-3)), inputs, targets


def test_plain_step_returns_the_loss_before_the_update_and_changes_weights():
    model, opt, x, y = setup()
    with torch.no_grad():
        expected = cross_entropy(model(x), y).item()
    before = copy.deepcopy(model.state_dict())
    assert train_step(model, opt, x, y) == pytest.approx(expected, rel=1e-6)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_teacher_step_optimises_the_distillation_mix_and_leaves_the_teacher_alone():
    model, opt, x, y = setup()
    for _ in range(3):
        train_step(model, opt, x, y)
    teacher = frozen_teacher(model)
    teacher_before = copy.deepcopy(teacher.state_dict())
    with torch.no_grad():
        expected = distillation_loss(model(x), teacher(x), y, alpha=0.45, temperature=1.2).item()
    got = train_step(model, opt, x, y, teacher=teacher, alpha=0.45, temperature=1.2)
    assert got == pytest.approx(expected, rel=1e-6)
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())
    assert all(p.grad is None for p in teacher.parameters())


def test_teacher_identical_to_student_costs_only_the_cross_entropy_share():
    model, opt, x, y = setup()
    teacher = frozen_teacher(model)
    with torch.no_grad():
        ce = cross_entropy(model(x), y).item()
    assert train_step(model, opt, x, y, teacher=teacher, alpha=0.45) == pytest.approx(0.55 * ce, rel=1e-6)


def test_non_finite_loss_raises_before_touching_the_weights():
    model, opt, x, y = setup()
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(NonFiniteLossError, match="step 17"):
        train_step(model, opt, x, y, step=17)
    for k, v in model.state_dict().items():
        assert torch.equal(before[k], v) or (torch.isnan(before[k]) == torch.isnan(v)).all()
    assert check_finite_loss(1.5) == 1.5
    with pytest.raises(NonFiniteLossError):
        check_finite_loss(float("inf"))


def test_mismatched_batch_is_a_clear_error():
    model, opt, x, y = setup()
    with pytest.raises(Q0ConfigError, match="same shape"):
        train_step(model, opt, x, y[:, :8])


def test_two_short_cycles_with_chain_distillation_learn_a_repeating_sequence():
    """A miniature q0 trajectory: cycle 0 alone, cycle 1 distils from cycle 0's snapshot."""
    torch.manual_seed(0)
    model = build_gpt(CONFIG)
    opt = build_optimizer(model, OptimizerSpec(lr=1e-2))
    pattern = torch.arange(17) * 5 % 64
    x, y = pattern[:-1].repeat(4, 1), pattern[1:].repeat(4, 1)
    start = evaluate_loss(model, x, y)
    schedule = CyclicSchedule(cycle_steps=15, n_cycles=2, warmup_steps=3)
    teacher, snapshots = None, []
    for step in range(schedule.total_steps):
        m = schedule.at(step)
        set_multipliers(opt, m.lr, m.weight_decay)
        train_step(model, opt, x, y, teacher=teacher, step=step)
        if schedule.is_cycle_end(step):
            snapshots.append(evaluate_loss(model, x, y))
            teacher = frozen_teacher(model)
    assert model.training
    assert len(snapshots) == 2 and snapshots[0] < start - 2.0 and snapshots[1] < start - 2.0


@pytest.mark.parametrize("n_micro", [1, 3])
def test_a_step_reads_from_the_device_once_and_only_after_every_backward(monkeypatch, n_micro):
    """A host read (``.item()``) waits for the device; one per step, after the last backward is queued, so the
    device never idles while the host queues a backward behind it. Counted, with the order of the calls."""
    from q0_reference.trainer import accumulated_step

    model, opt, x, y = setup()
    events = []
    item, backward = torch.Tensor.item, torch.Tensor.backward

    def read(self):
        # torch's Adam keeps its step counters on the host (unless capturable) and reads them there; those
        # reads wait for nothing and are not counted
        if "torch/optim/" not in traceback.extract_stack(limit=2)[0].filename:
            events.append("read")
        return item(self)

    monkeypatch.setattr(torch.Tensor, "item", read)
    monkeypatch.setattr(torch.Tensor, "backward",
                        lambda self, *a, **k: (events.append("backward"), backward(self, *a, **k))[1])
    batches = [(x[i::n_micro], y[i::n_micro]) for i in range(n_micro)] if n_micro > 1 else [(x, y)]
    for step in range(2):
        accumulated_step(model, opt, batches, step=step)
    assert events == (["backward"] * n_micro + ["read"]) * 2
