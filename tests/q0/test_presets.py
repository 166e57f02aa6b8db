import pytest
import torch

from q0_reference.errors import Q0ConfigError
from q0_reference.model import build_gpt, count_parameters
from q0_reference.optim import build_optimizer
from q0_reference.planner import plan
from q0_reference.presets import PRESETS, get_preset


def test_fineweb_preset_has_about_1_8b_parameters_by_the_hand_formula():
    preset = get_preset("fineweb")
    with torch.device("meta"):
        model = build_gpt(preset.model.to_dict())
    # Derived by hand for this architecture (no biases, parameter-free norms, untied embeddings):
    d, layers = 2048, 30
    padded_vocab = 50304  # 50,257 GPT-2 ids rounded up to a multiple of 64 (786 * 64)
    swiglu_hidden = 5504  # 2/3 * 4 * 2048 = 5461.3, rounded up to a multiple of 64 (86 * 64)
    attention = 4 * d * d  # q, k, v, out
    mlp = 3 * d * swiglu_hidden  # gate, up, down
    embeddings = 2 * padded_vocab * d  # input table and output head
    expected = layers * (attention + mlp) + embeddings
    assert expected == 1_723_858_944
    assert count_parameters(model) == expected
    assert 1.6e9 <= count_parameters(model) <= 1.9e9  # "about 1.8B"


def test_fineweb_preset_matches_the_published_run():
    preset = get_preset("fineweb")
    m = preset.model
    assert (m.n_layer, m.d_model, m.n_head, m.seq_len, m.padded_vocab_size) == (30, 2048, 16, 2048, 50304)
    assert 393_216 <= preset.tokens_per_step <= 524_288
    assert preset.optimizer.kind == "muon" and preset.optimizer.weight_decay == 1.3
    p = plan(preset.epochs, preset.planner)
    assert (p.n_trajectories, p.cycle_epochs, p.warmup_cycles) == (5, 2.0, 8)
    assert (preset.distill.alpha, preset.distill.temperature, preset.lr_floor, preset.wd_floor) == (0.45, 1.2, 0.08, 0.7)


def test_cpu_small_preset_builds_trains_and_resizes_to_a_track():
    preset = get_preset("cpu_small")
    assert preset.tokens_per_step == 8 * 128
    config = preset.model_config(vocab_size=2000)
    assert config.vocab_size == 2000 and config.padded_vocab_size == 2048 and config.d_model == 128
    torch.manual_seed(0)
    model = build_gpt(config.to_dict())
    # 2 * 2048 * 128 embedding rows + 4 layers of (4 + 8) * 128^2, by hand
    assert count_parameters(model) == 2 * 2048 * 128 + 4 * 12 * 128 * 128
    opt = build_optimizer(model, preset.optimizer)
    assert len(opt.param_groups) == 3


def test_every_preset_builds_on_meta_and_unknown_names_fail_clearly():
    for preset in PRESETS.values():
        with torch.device("meta"):
            build_gpt(preset.model.to_dict())
    with pytest.raises(Q0ConfigError, match="cpu_small"):
        get_preset("tiny")
