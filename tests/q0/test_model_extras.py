"""The optional parts of the GPT that restate slowrun PR #90's extras, each checked against a hand computation."""

from __future__ import annotations

import pytest
import torch

from q0_reference.model import GPTConfig, build_gpt, build_on_device, count_parameters, rms_norm

BASE = dict(vocab_size=40, seq_len=12, n_layer=4, n_head=2, d_model=32, mlp="swiglu", mlp_multiple=16)
ALL = dict(value_embeddings=True, attention_gates=True, head_mixing=True, unet_skips=True, mtp_head=True)


def built(**flags):
    torch.manual_seed(0)
    return build_gpt({**BASE, **flags}).eval()


def test_everything_is_off_by_default_and_old_specs_still_build():
    plain = built()
    leaves = {name if name.count(".") < 2 else ".".join(name.split(".")[2:]) for name, _ in plain.named_parameters()}
    assert leaves == {"wte.weight", "lm_head.weight", "attn.c_q.weight", "attn.c_k.weight", "attn.c_v.weight",
                      "attn.c_proj.weight", "mlp.c_gate.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"}
    assert GPTConfig(**BASE).to_dict()["unet_skips"] is False


def test_parameter_count_of_each_part_by_hand():
    d, heads, layers = 32, 2, 4
    hidden = 96  # SwiGLU width: 2 * 4 * 32 / 3 = 85.3, rounded up to a multiple of 16
    assert GPTConfig(**BASE).mlp_hidden == hidden
    plain = count_parameters(built())
    with_ve = layers // 2 * (d * d + 32 * heads)  # layers 1 and 3 (the last layer's parity)
    assert count_parameters(built(value_embeddings=True)) - plain == with_ve
    assert count_parameters(built(attention_gates=True)) - plain == layers * 12 * heads
    assert count_parameters(built(head_mixing=True)) - plain == layers * 3 * heads * heads
    assert count_parameters(built(unet_skips=True)) - plain == layers + layers + layers // 2
    assert count_parameters(built(mtp_head=True)) - plain == 2 * d * d + 4 * d * d + 3 * d * hidden


def test_identity_head_mixing_is_the_plain_model_and_a_mixture_mixes_heads():
    plain, mixed = built(), built(head_mixing=True)
    mixed.load_state_dict(plain.state_dict(), strict=False)
    idx = torch.randint(0, 40, (2, 12))
    torch.testing.assert_close(mixed(idx), plain(idx), rtol=0, atol=0)
    attn = mixed.blocks[0].attn
    with torch.no_grad():
        attn.q_mix.copy_(torch.tensor([[0.3, 0.7], [-1.0, 2.0]]))
    x = torch.randn(2, 5, 32)
    heads = attn.c_q(x).view(2, 5, 2, 16)  # unmixed heads, [B, T, H, D]
    expected = torch.stack([0.3 * heads[:, :, 0] + 0.7 * heads[:, :, 1], -heads[:, :, 0] + 2 * heads[:, :, 1]], dim=1)
    torch.testing.assert_close(attn._project(attn.c_q, attn.q_mix, x), expected)


def test_attention_gate_at_its_start_halves_every_head():
    plain, gated = built(), built(attention_gates=True)
    gated.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(2, 6, 32)
    cos, sin = plain.rope_cos[:6], plain.rope_sin[:6]
    with torch.no_grad():
        torch.testing.assert_close(gated.blocks[1].attn(x, cos, sin), 0.5 * plain.blocks[1].attn(x, cos, sin))


def test_trunk_wiring_equals_a_hand_written_pass():
    """Value embeddings from x0 on layers 1 and 3, every layer's input s_l * x + t_l * x0, and encoder layer j's
    output added before layer 3 - j for the decoder layers 2 and 3 (scalars set to arbitrary values)."""
    model = built(value_embeddings=True, unet_skips=True, attention_gates=True)
    with torch.no_grad():
        model.resid_scales.copy_(torch.tensor([0.9, 1.1, 0.8, 1.2]))
        model.x0_scales.copy_(torch.tensor([0.1, -0.2, 0.3, 0.05]))
        model.skip_scales.copy_(torch.tensor([0.5, -0.7]))
    idx = torch.randint(0, 40, (2, 12))
    cos, sin = model.rope_cos[:12], model.rope_sin[:12]
    with torch.no_grad():
        x0 = rms_norm(model.wte(idx))
        s, t, k = model.resid_scales, model.x0_scales, model.skip_scales
        b = model.blocks
        out0 = b[0](s[0] * x0 + t[0] * x0, cos, sin)
        out1 = b[1](s[1] * out0 + t[1] * x0, cos, sin, model.value_projs["1"](x0))
        x = out1 + k[0] * out1  # layer 2 mirrors encoder layer 1
        out2 = b[2](s[2] * x + t[2] * x0, cos, sin)
        x = out2 + k[1] * out0  # layer 3 mirrors encoder layer 0
        out3 = b[3](s[3] * x + t[3] * x0, cos, sin, model.value_projs["3"](x0))
        expected = model.lm_head(rms_norm(out3))[..., :40]
        torch.testing.assert_close(model(idx), expected)


def test_an_odd_stack_skips_around_its_middle_layer():
    """Five layers: encoder layers 0 and 1, a middle layer 2 with no skip, and layers 3 and 4 taking encoder
    layers 1 and 0 with the first and second skip scalar (it used to index past the two scalars)."""
    torch.manual_seed(0)
    model = build_gpt({**BASE, "n_layer": 5, "unet_skips": True}).eval()
    s, t = torch.tensor([0.9, 1.1, 0.8, 1.2, 1.05]), torch.tensor([0.1, -0.2, 0.3, 0.05, -0.1])
    k = torch.tensor([0.5, -0.7])
    with torch.no_grad():
        for parameter, value in ((model.resid_scales, s), (model.x0_scales, t), (model.skip_scales, k)):
            parameter.copy_(value)
        idx = torch.randint(0, 40, (2, 12))
        cos, sin, x0 = model.rope_cos[:12], model.rope_sin[:12], rms_norm(model.wte(idx))
        outputs, x = [], x0
        for layer, added in enumerate([None, None, None, (0, 1), (1, 0)]):  # (skip scalar, encoder layer)
            if added is not None:
                x = x + k[added[0]] * outputs[added[1]]
            x = model.blocks[layer](s[layer] * x + t[layer] * x0, cos, sin)
            outputs.append(x)
        torch.testing.assert_close(model(idx), model.lm_head(rms_norm(x))[..., :40])


def test_every_part_keeps_the_model_causal():
    model = built(**ALL)
    idx = torch.randint(0, 40, (1, 12))
    changed = idx.clone()
    changed[0, 7:] = (changed[0, 7:] + 1) % 40
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[:, :7], model(changed)[:, :7])
        assert not torch.equal(model(idx)[:, 7:], model(changed)[:, 7:])


def test_materialised_from_meta_equals_eager_bit_for_bit():
    config = GPTConfig(**BASE, **ALL)
    torch.manual_seed(3)
    eager = build_gpt(config.to_dict())
    torch.manual_seed(3)
    lazy = build_on_device(config, "cpu")
    for (name, a), (_, b) in zip(eager.state_dict().items(), lazy.state_dict().items()):
        assert torch.equal(a, b), name
    assert torch.equal(eager.blocks[0].attn.k_mix, torch.eye(2)) and eager.x0_scales.detach()[0].item() == pytest.approx(0.1)


def test_gates_need_their_input_channels():
    from q0_reference.errors import Q0ConfigError

    with pytest.raises(Q0ConfigError, match="value_embeddings gates read 32 channels"):
        GPTConfig(**{**BASE, "d_model": 16, "n_head": 2}, value_embeddings=True)
