"""PR #90's multi-token-prediction head: its loss, and how training adds it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from q0_reference.distill import cross_entropy, distillation_loss, frozen_teacher
from q0_reference.model import GPTConfig, GPT
from q0_reference.trainer import accumulated_step

V, T = 96, 16


def tiny(mtp: bool = True, weight: float = 0.3) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=V, seq_len=T, n_layer=2, n_head=2, d_model=32, logit_softcap=15.0,
                         mtp_head=mtp, mtp_weight=weight))


def batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V, (3, T + 1), generator=g)
    return tokens[:, :-1], tokens[:, 1:]


def test_the_mtp_loss_predicts_token_t_plus_2_from_the_hidden_state_and_token_t_plus_1():
    model = tiny().double()
    inputs, targets = batch()
    seen = []
    handle = model.lm_head.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    logits, mtp = model(inputs, targets)
    handle.remove()
    hidden = seen[0]  # the primary read-out's input: the final, normalised hidden states
    # by hand: [hidden_t, norm(embedding of token t+1)] -> projection -> one more block -> lm_head, soft-cap
    emb = F.rms_norm(model.wte(targets[:, :-1]), (32,))
    combined = torch.cat([hidden[:, :-1], emb], dim=-1) @ model.mtp_proj.weight.T
    out = model.mtp_block(combined, model.rope_cos[: T - 1], model.rope_sin[: T - 1])
    raw = F.rms_norm(out, (32,)) @ model.lm_head.weight.T
    z = 15.0 * torch.tanh(raw[..., :V] / 15.0)
    expected = -torch.log_softmax(z, dim=-1).gather(-1, targets[:, 1:, None]).mean()
    assert mtp.item() == pytest.approx(expected.item(), rel=1e-10)
    assert torch.equal(model(inputs), logits)  # evaluation's call: the primary logits alone


def test_training_adds_the_weighted_mtp_loss_and_trains_every_parameter():
    model = tiny(weight=0.3)
    inputs, targets = batch()
    with torch.no_grad():
        logits, mtp = model(inputs, targets)
        expected = cross_entropy(logits, targets).item() + 0.3 * mtp.item()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    value = accumulated_step(model, optimizer, [(inputs, targets)], max_grad_norm=None)
    assert value == pytest.approx(expected, rel=1e-6)
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert missing == []  # the head's parameters get gradients: DDP has nothing to wait for


def test_in_distillation_the_mtp_loss_sits_on_the_label_side():
    model = tiny(weight=0.5)
    teacher = frozen_teacher(tiny(mtp=False))
    inputs, targets = batch(2)
    alpha, temperature = 0.45, 1.2
    with torch.no_grad():
        logits, mtp = model(inputs, targets)
        mix = distillation_loss(logits, teacher(inputs), targets, alpha=alpha, temperature=temperature).item()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    value = accumulated_step(model, optimizer, [(inputs, targets)], teacher, alpha=alpha, temperature=temperature,
                             max_grad_norm=None)
    assert value == pytest.approx(mix + (1 - alpha) * 0.5 * mtp.item(), rel=1e-6)


def test_without_the_head_nothing_changes():
    model = tiny(mtp=False)
    inputs, targets = batch()
    assert isinstance(model(inputs, targets), torch.Tensor)
    with torch.no_grad():
        expected = cross_entropy(model(inputs), targets).item()
    value = accumulated_step(model, torch.optim.SGD(model.parameters(), lr=0.0), [(inputs, targets)],
                             max_grad_norm=None)
    assert math.isclose(value, expected, rel_tol=1e-6)
