import json
import math

import pytest
import torch

from q0_reference.errors import Q0ConfigError
from q0_reference.model import BUILDER, GPT, GPTConfig, build_gpt, count_parameters

SMALL = dict(vocab_size=100, seq_len=16, n_layer=2, n_head=2, d_model=32)


def make(seed=0, **overrides):
    torch.manual_seed(seed)
    return build_gpt({**SMALL, **overrides})


def reference_forward(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """The same architecture written out naively in float64: explicit masks, complex-number rotations."""
    cfg = model.config
    w = {k: v.double() for k, v in model.state_dict().items()}
    hd, H = cfg.d_model // cfg.n_head, cfg.n_head

    def norm(x):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True))

    def rotate(x):  # x [B, H, T, hd]: pair channel i with channel i + hd/2 as a complex number
        T = x.size(2)
        freqs = torch.tensor([cfg.rope_base ** (-2 * i / hd) for i in range(hd // 2)], dtype=torch.float64)
        phase = torch.polar(torch.ones(T, hd // 2, dtype=torch.float64), torch.arange(T).double()[:, None] * freqs)
        z = torch.complex(x[..., : hd // 2], x[..., hd // 2:]) * phase
        return torch.cat([z.real, z.imag], -1)

    B, T = idx.shape
    x = norm(w["wte.weight"][idx])
    mask = torch.ones(T, T).tril().bool()
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        h = norm(x)
        q, k, v = (
            (h @ w[p + f"attn.c_{n}.weight"].T).reshape(B, T, H, hd).permute(0, 2, 1, 3) for n in "qkv"
        )
        if cfg.qk_norm:
            q, k = norm(q), norm(k)
        q, k = rotate(q), rotate(k)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        scores = scores.masked_fill(~mask, float("-inf"))
        y = (scores.softmax(-1) @ v).permute(0, 2, 1, 3).reshape(B, T, cfg.d_model)
        x = x + y @ w[p + "attn.c_proj.weight"].T
        h = norm(x)
        if cfg.mlp == "relu2":
            a = torch.clamp(h @ w[p + "mlp.c_fc.weight"].T, min=0) ** 2
        else:
            g = h @ w[p + "mlp.c_gate.weight"].T
            a = g * torch.sigmoid(g) * (h @ w[p + "mlp.c_fc.weight"].T)
        x = x + a @ w[p + "mlp.c_proj.weight"].T
    logits = (norm(x) @ w["lm_head.weight"].T)[..., : cfg.vocab_size]
    if cfg.logit_softcap:
        logits = cfg.logit_softcap * torch.tanh(logits / cfg.logit_softcap)
    return logits


@pytest.mark.parametrize("overrides", [{}, {"mlp": "swiglu"}, {"qk_norm": False}, {"logit_softcap": 3.0}])
def test_forward_matches_float64_reference(overrides):
    model = make(**overrides).eval()
    idx = torch.randint(0, SMALL["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(1))
    logits = model(idx)
    assert logits.dtype == torch.float32 and logits.shape == (2, 12, SMALL["vocab_size"])
    expected = reference_forward(model, idx)
    torch.testing.assert_close(logits.double(), expected, rtol=1e-4, atol=1e-4)


def test_padded_rows_exist_but_never_get_probability_mass():
    model = make().eval()
    assert model.wte.weight.shape[0] == 128 and model.lm_head.weight.shape[0] == 128  # 100 -> next multiple of 64
    idx = torch.randint(0, 100, (1, 8))
    before = model(idx)
    with torch.no_grad():
        model.lm_head.weight[100:] = 1e4  # would dominate a softmax over the padded table
    after = model(idx)
    assert after.shape[-1] == 100
    torch.testing.assert_close(before, after, rtol=0, atol=0)
    assert torch.allclose(after.softmax(-1).sum(-1), torch.ones(1, 8))


def test_future_tokens_do_not_change_past_logits():
    model = make().eval()
    idx = torch.randint(0, 100, (1, 16))
    changed = idx.clone()
    changed[0, 10:] = (changed[0, 10:] + 7) % 100
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10], rtol=0, atol=0)
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_same_seed_same_weights_different_seed_different_weights():
    a, b, c = make(seed=3), make(seed=3), make(seed=4)
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), name
        assert not torch.equal(pa, pc), name


def test_build_spec_survives_json_and_rebuilds_identical_model():
    model = make(mlp="swiglu", dropout=0.1, logit_softcap=10.0).eval()
    spec = json.loads(json.dumps(model.build_spec()))
    assert spec["builder"] == BUILDER == "q0_reference.model:build_gpt"
    module_name, function_name = spec["builder"].split(":")
    builder = getattr(__import__(module_name, fromlist=[function_name]), function_name)
    torch.manual_seed(123)  # different init: only the loaded weights may make them agree
    rebuilt = builder(spec["config"])
    assert rebuilt.config == model.config
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    rebuilt.eval()
    idx = torch.randint(0, 100, (2, 16))
    torch.testing.assert_close(rebuilt(idx), model(idx), rtol=0, atol=0)


def test_state_dict_holds_only_weights_and_every_weight_is_a_matrix():
    model = make()
    assert set(model.state_dict()) == {name for name, _ in model.named_parameters()}
    assert all(p.dim() == 2 for p in model.parameters())


@pytest.mark.parametrize("mlp", ["relu2", "swiglu"])
def test_parameter_count_matches_hand_formula(mlp):
    model = make(mlp=mlp)
    d, L, Vp = 32, 2, 128
    hidden = 4 * d if mlp == "relu2" else 128  # swiglu: 2/3 * 128 = 85.3 -> rounded up to a multiple of 64
    mlp_params = (2 if mlp == "relu2" else 3) * d * hidden
    assert count_parameters(model) == 2 * Vp * d + L * (4 * d * d + mlp_params)
    model.wte.weight.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == Vp * d + L * (4 * d * d + mlp_params)


def test_initial_loss_is_close_to_uniform():
    model = make(vocab_size=512)
    idx = torch.randint(0, 512, (4, 16))
    loss = torch.nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.flatten())
    assert abs(loss.item() - math.log(512)) < 0.1


def test_dropout_only_in_train_mode():
    model = make(dropout=0.5)
    idx = torch.randint(0, 100, (1, 16))
    model.eval()
    torch.testing.assert_close(model(idx), model(idx), rtol=0, atol=0)
    model.train()
    assert not torch.equal(model(idx), model(idx))


def test_builds_on_meta_device_without_allocating():
    with torch.device("meta"):
        model = build_gpt({**SMALL, "d_model": 4096, "n_head": 32, "vocab_size": 50257})
    assert model.lm_head.weight.is_meta
    assert count_parameters(model) > 0


@pytest.mark.parametrize("bad, message", [
    ({"d_model": 30, "n_head": 4}, "divisible"),
    ({"d_model": 30, "n_head": 10}, "even"),
    ({"mlp": "gelu"}, "mlp"),
    ({"vocab_size": 0}, "vocab_size"),
    ({"n_layer": 2.0}, "n_layer"),
    ({"dropout": 1.0}, "dropout"),
    ({"width": 3}, "unknown"),
])
def test_bad_config_says_what_to_fix(bad, message):
    with pytest.raises(Q0ConfigError, match=message):
        build_gpt({**SMALL, **bad})


def test_missing_key_and_too_long_input_are_clear_errors():
    with pytest.raises(Q0ConfigError, match="missing.*seq_len"):
        build_gpt({k: v for k, v in SMALL.items() if k != "seq_len"})
    with pytest.raises(Q0ConfigError, match="longer than"):
        make()(torch.zeros(1, 17, dtype=torch.long))
    assert GPTConfig.from_dict(SMALL).padded_vocab_size == 128
