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


def test_preset_command_prints_a_toml_table_and_set_flags(capsys):
    from q0_reference.presets import main

    assert main(["fineweb"]) == 0
    table = capsys.readouterr().out
    assert 'mlp = "swiglu"' in table and "batch_size = 256" in table and "lr_reaches_floor = true" in table
    assert main(["fineweb_pr90", "--set"]) == 0
    flags = capsys.readouterr().out
    assert "--set batch_floor=192" in flags and "--set final_top_k=256" in flags and "--set dropout=0.1" in flags
    assert main([]) == 2


# ---- slowrun PR #90 (unlimited/train.py at a200723): numbers derived by hand from its code ----------

def test_pr90_preset_builds_on_meta_with_its_widths_and_the_published_count_is_its_parts():
    preset = get_preset("fineweb_pr90")
    with torch.device("meta"):
        model = build_gpt(preset.model.to_dict())
    d, layers, vocab = 2048, 30, 50304
    hidden = 256 * ((8 * d // 3 + 255) // 256)  # PR #90's MLP: 256 * ceil(5461 / 256) = 5632
    assert hidden == 5632 == preset.model.mlp_hidden
    trunk = layers * (4 * d * d + 3 * d * hidden)
    # PR #90's extras, per its GPT class (counted by building it on the meta device with its defaults):
    value_embeddings = 15 * d * d  # ve_projs on the 15 layers i with i % 2 == 29 % 2
    gates = 30 * 12 * 16 + 15 * 32 * 16  # attn_gate (12 -> heads) on every layer, ve_gate (32 -> heads) on 15
    head_mixing = 30 * 3 * 16 * 16  # IHA q/k/v mixing matrices
    scalars = 30 + 30 + 15  # resid_lambdas, x0_lambdas, skip_weights
    mtp = 2 * d * d + (4 * d * d + 3 * d * hidden + 12 * 16 + 3 * 16 * 16)  # mtp_proj and one more block
    published = trunk + 2 * vocab * d + value_embeddings + gates + head_mixing + scalars + mtp
    assert published == 1_870_172_811  # "1.8B" in its title; what its train.py prints as "Parameters"
    assert mtp == 59_769_792
    assert count_parameters(model) == published == 1_870_172_811  # the preset, as PR #90's train.py prints it
    assert next(model.parameters()).device.type == "meta"
    with torch.device("meta"):
        without_mtp = build_gpt({**preset.model.to_dict(), "mtp_head": False})
    assert count_parameters(without_mtp) == published - mtp == 1_810_403_019  # what evaluation runs
    plain = {**preset.model.to_dict(), "value_embeddings": False, "attention_gates": False, "head_mixing": False,
             "unet_skips": False, "mtp_head": False}
    with torch.device("meta"):
        assert count_parameters(build_gpt(plain)) == trunk + 2 * vocab * d == 1_747_451_904


def test_pr90_preset_training_settings():
    preset = get_preset("fineweb_pr90")
    o = preset.optimizer
    # base rates 0.04 / 0.15 / 0.002 times --lr_multiplier 0.25
    assert (o.matrix_lr, o.embedding_lr, o.head_lr) == (0.01, 0.0375, 0.0005)
    assert (o.weight_decay, o.betas, o.eps, o.momentum) == (1.3, (0.8, 0.95), 1e-10, 0.95)
    assert (preset.model.dropout, preset.model.logit_softcap) == (0.1, 15.0)
    p = plan(preset.epochs, preset.planner)
    assert (p.n_trajectories, p.cycles_per_trajectory, p.cycle_epochs, p.warmup_cycles) == (5, 96, 2.0, 8)
    assert not p.has_teacher(7) and p.has_teacher(8)  # distillation after 8 cycles
    assert (preset.distill.alpha, preset.distill.temperature) == (0.45, 1.2)
    assert (preset.fitness_tokens, preset.final_top_k) == (132_000, 256)


def test_pr90_batch_schedule_is_floor_for_the_first_and_last_quarter():
    preset = get_preset("fineweb_pr90")
    batches = preset.cycle_batches(96)
    # amp(c) = 1 - |2c/95 - 1| >= 0.5  <=>  23.75 <= c <= 71.25: cycles 24..71 at the peak
    assert [c for c in range(96) if batches[c] == 256] == list(range(24, 72))
    assert batches[0] * 2048 == batches[23] * 2048 == batches[95] * 2048 == 393_216
    assert batches[24] * 2048 == batches[71] * 2048 == 524_288
    # on 100M tokens per epoch a 2-epoch cycle is 2e8 / 393216 = 508.6 -> 508 steps, 2e8 / 524288 = 381.5 -> 381
    # (PR #90 rounds 199.6M / bs: 507.7 -> 508 and 380.8 -> 381, the same)
    s = plan(960, preset.planner).trajectory_schedule(100_000_000, [b * 2048 for b in batches], endpoint=False)
    assert s.cycle_lengths[0] == 508 and s.cycle_lengths[24] == 381 and s.cycle_lengths[95] == 508
    assert s.total_steps == 48 * 508 + 48 * 381 == 42_672


def test_pr90_lr_and_weight_decay_at_start_middle_and_end_of_a_cycle():
    preset = get_preset("fineweb_pr90")
    batches = preset.cycle_batches(96)
    s = plan(960, preset.planner).trajectory_schedule(100_000_000, [b * 2048 for b in batches], lr_floor=0.08,
                                                      wd_floor=0.7, endpoint=False)
    start = s.cycle_start(24)  # a peak-batch cycle of L = 381 steps
    # PR #90: lrm = floor + (1 - floor)(1 - i / L); wdm = wd_floor + (1 - wd_floor)(1 - lrm) / (1 - floor)
    cases = {0: (1.0, 0.7), 190: (1 - 0.92 * 190 / 381, 0.7 + 0.3 * 190 / 381),
             380: (0.08 + 0.92 / 381, 0.7 + 0.3 * 380 / 381)}
    for i, (lr, wd) in cases.items():
        m = s.at(start + i)
        assert m.lr == pytest.approx(lr, abs=1e-12) and m.weight_decay == pytest.approx(wd, abs=1e-12)
    assert s.at(start + 380).lr == pytest.approx(0.0824147, abs=1e-7)  # by hand: 0.08 + 0.92/381
    assert 1.3 * s.at(start + 380).weight_decay == pytest.approx(1.29898, abs=1e-5)  # the absolute WD, 1.3 x 0.99921
    assert 0.01 * s.at(start + 190).lr == pytest.approx(0.00541207, abs=1e-8)  # Muon's rate mid-cycle
    assert s.is_cycle_end(start + 380) and s.at(start + 381).lr == 1.0


def test_pr90_perturbation_scale_per_trajectory():
    from q0_reference.perturb import cycle_progress

    preset = get_preset("fineweb_pr90")
    scale = preset.perturbation.scale
    # PR #90: progress = (current_cycle - 1) / (num_cycles - 2) after cycle current_cycle (1-based)
    assert scale(cycle_progress(0, 96)) == pytest.approx(0.25)  # after the first cycle
    assert scale(cycle_progress(47, 96)) == pytest.approx(0.15)  # 47 / 94 = 0.5: 0.05 + 0.2 * (1 + 0) / 2
    assert scale(cycle_progress(94, 96)) == pytest.approx(0.05)  # before the last cycle
    assert preset.perturb_progress == "trajectory"


def test_submissions_pick_the_fineweb_preset_on_the_fineweb_track():
    from pathlib import Path

    from harness.run.entry_check import check_method
    from q0_reference.presets import preset_hparams
    from q0_reference.recipes import Q0Settings, Recipe

    fineweb = get_preset("fineweb")
    expected = preset_hparams(fineweb)
    root = Path(__file__).resolve().parents[2] / "submissions"
    for method in ("single_model", "naive_ensemble", "q0"):
        spec, problems = check_method(root / method, import_check=False)
        assert not problems, problems
        hp = spec.resolved_hparams("fineweb")
        assert {k: hp[k] for k in expected if k in hp} == {k: v for k, v in expected.items() if k in hp}, method

        class Track:
            vocab_size, seq_len = 50257, 2048

        recipe = Recipe.from_hparams(hp)
        assert recipe.model_config(Track) == fineweb.model
        assert recipe.optimizer == fineweb.optimizer
        assert (recipe.batch_size, recipe.micro_batch_size, recipe.warmup_steps) == (256, 4, 0)
        if method == "q0":
            settings = Q0Settings.from_hparams(hp)
            assert (settings.lr_floor, settings.wd_floor, settings.distill) == (0.08, 0.7, fineweb.distill)
            assert settings.thresholds == fineweb.planner and settings.perturbation is None
        assert spec.resolved_hparams("synthetic")["d_model"] == 128  # other tracks keep the small defaults
