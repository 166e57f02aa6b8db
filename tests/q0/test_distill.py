import math

import pytest
import torch

from q0_reference.distill import DistillSpec, distillation_loss, frozen_teacher, tempered_kl
from q0_reference.errors import Q0ConfigError
from q0_reference.model import build_gpt


def reference_loss(student, teacher, targets, alpha, T):
    """Plain float64 loops over tokens, written from the formula."""
    s, t = student.double().reshape(-1, student.size(-1)), teacher.double().reshape(-1, teacher.size(-1))
    y = targets.reshape(-1)
    total_ce, total_kl = 0.0, 0.0
    for i in range(s.size(0)):
        log_z = math.log(sum(math.exp(v) for v in s[i].tolist()))
        total_ce += log_z - s[i, y[i]].item()
        pt = [math.exp(v / T) for v in t[i].tolist()]
        ps = [math.exp(v / T) for v in s[i].tolist()]
        pt = [v / sum(pt) for v in pt]
        ps = [v / sum(ps) for v in ps]
        total_kl += sum(p * (math.log(p) - math.log(q)) for p, q in zip(pt, ps))
    n = s.size(0)
    return (1 - alpha) * total_ce / n + alpha * T * T * total_kl / n


@pytest.mark.parametrize("alpha, T", [(0.45, 1.2), (0.0, 1.0), (1.0, 2.5), (0.3, 0.7)])
def test_matches_float64_reference(alpha, T):
    g = torch.Generator().manual_seed(0)
    student = torch.randn(2, 5, 11, generator=g) * 3
    teacher = torch.randn(2, 5, 11, generator=g) * 3
    targets = torch.randint(0, 11, (2, 5), generator=g)
    got = distillation_loss(student, teacher, targets, alpha=alpha, temperature=T)
    assert got.item() == pytest.approx(reference_loss(student, teacher, targets, alpha, T), rel=1e-5)


def test_two_token_example_by_hand():
    # teacher softmax(0, log 3) = (1/4, 3/4); student uniform (1/2, 1/2); T = 1
    teacher = torch.tensor([[0.0, math.log(3.0)]])
    student = torch.tensor([[0.0, 0.0]])
    kl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert tempered_kl(teacher, student, 1.0).item() == pytest.approx(kl)
    loss = distillation_loss(student, teacher, torch.tensor([1]), alpha=0.5, temperature=1.0)
    assert loss.item() == pytest.approx(0.5 * math.log(2) + 0.5 * kl)


def test_kl_is_exactly_zero_when_student_equals_teacher_and_positive_otherwise():
    logits = torch.randn(3, 7, 50) * 4
    assert tempered_kl(logits, logits.clone(), 1.2).item() == 0.0
    assert tempered_kl(logits, logits + torch.randn_like(logits), 1.2).item() > 0.0


def test_gradient_flows_to_student_only():
    student = torch.randn(4, 9, requires_grad=True)
    teacher = torch.randn(4, 9, requires_grad=True)
    distillation_loss(student, teacher, torch.randint(0, 9, (4,))).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_frozen_teacher_is_an_independent_eval_copy():
    torch.manual_seed(0)
    student = build_gpt(dict(vocab_size=32, seq_len=8, n_layer=1, n_head=2, d_model=16, dropout=0.2))
    teacher = frozen_teacher(student)
    assert not teacher.training and student.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    with torch.no_grad():
        student.lm_head.weight.add_(1.0)
    assert not torch.equal(student.lm_head.weight, teacher.lm_head.weight)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(Q0ConfigError, match="alpha"):
        DistillSpec(alpha=1.5)
    with pytest.raises(Q0ConfigError, match="temperature"):
        DistillSpec(temperature=0.0)
    with pytest.raises(Q0ConfigError, match="shape"):
        distillation_loss(torch.zeros(2, 5), torch.zeros(2, 6), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("alpha, T", [(0.45, 1.2), (1.0, 0.8), (0.2, 3.0)])
def test_gradient_matches_autograd_of_the_float64_formula(alpha, T):
    g = torch.Generator().manual_seed(3)
    student = (torch.randn(3, 4, 13, generator=g) * 2).requires_grad_()
    teacher = torch.randn(3, 4, 13, generator=g) * 2
    targets = torch.randint(0, 13, (3, 4), generator=g)
    distillation_loss(student, teacher, targets, alpha=alpha, temperature=T).backward()

    s64 = student.detach().double().requires_grad_()
    log_q = torch.log(torch.exp(s64 / T) / torch.exp(s64 / T).sum(-1, keepdim=True))
    p = torch.exp(teacher.double() / T) / torch.exp(teacher.double() / T).sum(-1, keepdim=True)
    log_s = torch.log(torch.exp(s64) / torch.exp(s64).sum(-1, keepdim=True))
    ce = -log_s.gather(-1, targets[..., None]).mean()
    kl = (p * (torch.log(p) - log_q)).sum(-1).mean()
    ((1 - alpha) * ce + alpha * T * T * kl).backward()
    torch.testing.assert_close(student.grad.double(), s64.grad, rtol=1e-5, atol=1e-7)


def test_pure_distillation_of_an_identical_student_is_exactly_zero():
    logits = torch.randn(2, 6, 40) * 5
    loss = distillation_loss(logits.clone().requires_grad_(), logits, torch.zeros(2, 6, dtype=torch.long), alpha=1.0)
    assert loss.item() == 0.0
