import pytest
import torch
import torch.nn.functional as F

from q0_reference.errors import Q0ConfigError
from q0_reference.model import build_gpt
from q0_reference.optim import OptimizerSpec, build_optimizer, set_multipliers

SMALL = dict(vocab_size=64, seq_len=16, n_layer=2, n_head=2, d_model=32)


def make_model(seed=0):
    torch.manual_seed(seed)
    return build_gpt(SMALL)


def ids(params):
    return {id(p) for p in params}


def test_adamw_puts_every_parameter_in_exactly_one_group_with_base_values():
    model = make_model()
    opt = build_optimizer(model, OptimizerSpec(lr=1e-3, embedding_lr=2e-3, weight_decay=0.2))
    assert [type(o).__name__ for o in opt.optimizers] == ["AdamW"]
    grouped = [p for g in opt.param_groups for p in g["params"]]
    assert len(grouped) == len(ids(grouped)) and ids(grouped) == ids(model.parameters())
    by_role = {g["role"]: g for g in opt.param_groups}
    assert by_role["embedding"]["base_lr"] == 2e-3 and by_role["head"]["base_lr"] == 1e-3
    assert by_role["matrix"]["base_lr"] == 1e-3
    assert all(g["base_weight_decay"] == 0.2 for g in opt.param_groups)


def test_muon_takes_hidden_matrices_and_adamw_the_embedding_and_head():
    model = make_model()
    opt = build_optimizer(model, OptimizerSpec(kind="muon", matrix_lr=0.05, lr=0.01, head_lr=0.002))
    adamw, muon = opt.optimizers
    assert isinstance(adamw, torch.optim.AdamW) and isinstance(muon, torch.optim.Muon)
    block_params = ids(p for b in model.blocks for p in b.parameters())
    assert ids(p for g in muon.param_groups for p in g["params"]) == block_params
    assert ids(p for g in adamw.param_groups for p in g["params"]) == ids([model.wte.weight, model.lm_head.weight])
    assert muon.param_groups[0]["base_lr"] == 0.05
    assert {g["role"]: g["base_lr"] for g in adamw.param_groups} == {"embedding": 0.01, "head": 0.002}


@pytest.mark.parametrize("kind", ["adamw", "muon"])
def test_multipliers_reach_the_update_as_decoupled_decay(kind):
    """With zero gradients both optimizers' updates vanish, leaving w <- w * (1 - lr * wd), so the
    decay actually applied reveals the lr and wd the multipliers set."""
    model = make_model()
    spec = OptimizerSpec(kind=kind, lr=0.01, matrix_lr=0.03, weight_decay=0.5)
    opt = build_optimizer(model, spec)
    set_multipliers(opt, lr_mult=0.4, wd_mult=0.8)
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(g["base_lr"] * 0.4) and g["weight_decay"] == pytest.approx(0.5 * 0.8)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for name, p in model.named_parameters():
        base_lr = 0.03 if (kind == "muon" and name.startswith("blocks.")) else 0.01
        factor = 1 - (base_lr * 0.4) * (0.5 * 0.8)
        torch.testing.assert_close(p.detach(), before[name] * factor, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["adamw", "muon"])
def test_zero_lr_multiplier_freezes_weights_and_training_lowers_loss(kind):
    model = make_model()
    opt = build_optimizer(model, OptimizerSpec(kind=kind, lr=3e-3, matrix_lr=0.02))
    x = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    y = torch.roll(x, -1, dims=1)

    def step():
        opt.zero_grad()
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        return loss.item()

    set_multipliers(opt, 0.0, 1.0)
    before = [p.detach().clone() for p in model.parameters()]
    step()
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    set_multipliers(opt, 1.0, 1.0)
    first = step()
    for _ in range(15):
        last = step()
    assert last < first - 0.5


def test_state_dict_round_trip_restores_moments():
    model = make_model()
    opt = build_optimizer(model, OptimizerSpec(kind="muon"))
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    clone = build_optimizer(model, OptimizerSpec(kind="muon"))
    clone.load_state_dict(opt.state_dict())
    a = opt.optimizers[1].state_dict()["state"][0]["momentum_buffer"]
    b = clone.optimizers[1].state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(a, b)
    with pytest.raises(Q0ConfigError, match="optimizer kind"):
        build_optimizer(model, OptimizerSpec(kind="adamw")).load_state_dict(opt.state_dict())


def test_bad_settings_are_clear_errors():
    with pytest.raises(Q0ConfigError, match="kind"):
        OptimizerSpec(kind="sgd")
    with pytest.raises(Q0ConfigError, match="lr"):
        OptimizerSpec(lr=-1.0)
    with pytest.raises(Q0ConfigError, match="unknown optimizer settings"):
        OptimizerSpec.from_dict({"learning_rate": 1.0})
    assert OptimizerSpec.from_dict({"betas": [0.8, 0.9]}).betas == (0.8, 0.9)
    opt = build_optimizer(make_model())
    with pytest.raises(Q0ConfigError, match="multipliers"):
        set_multipliers(opt, -0.1)
    plain = torch.optim.SGD(make_model().parameters(), lr=0.1)
    with pytest.raises(Q0ConfigError, match="base_lr"):
        set_multipliers(plain, 1.0)


def test_batched_muon_is_torch_muon_bit_for_bit_on_cpu():
    """Stacking same-shape matrices changes how the work is laid out, not the numbers."""
    from q0_reference.muon import BatchedMuon

    def run(cls):
        g = torch.Generator().manual_seed(0)
        shapes = [(32, 32), (32, 32), (96, 32), (32, 96), (96, 32)]  # square, tall and wide, interleaved
        params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
        opt = cls(params, lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True)
        for _ in range(4):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
        return params, opt

    ours, ours_opt = run(BatchedMuon)
    theirs, theirs_opt = run(torch.optim.Muon)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    for a, b in zip(ours, theirs):
        assert torch.equal(ours_opt.state[a]["momentum_buffer"], theirs_opt.state[b]["momentum_buffer"])


def test_adamw_runs_foreach_on_cpu_and_is_bitwise_the_per_tensor_loop():
    model = make_model()
    opt = build_optimizer(model, OptimizerSpec())
    assert opt.optimizers[0].defaults["foreach"] is True
    reference_model = make_model()
    reference = torch.optim.AdamW([{"params": [p for _, p in sorted(reference_model.named_parameters())]}], lr=3e-3,
                                  betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, foreach=False)
    x = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    for m, o in ((model, opt), (reference_model, reference)):
        for _ in range(3):
            o.zero_grad()
            F.cross_entropy(m(x).flatten(0, 1), x.flatten()).backward()
            o.step()
    for (_, a), (_, b) in zip(sorted(model.named_parameters()), sorted(reference_model.named_parameters())):
        assert torch.equal(a, b)
