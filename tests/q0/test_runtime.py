"""Device, precision and compilation: what "auto" resolves to, and the bf16 and compiled paths running a
training step of the small preset on a CPU."""

import pytest
import torch

from q0_reference.errors import Q0ConfigError
from q0_reference.model import build_on_device
from q0_reference.optim import build_optimizer
from q0_reference.presets import get_preset
from q0_reference.runtime import Runtime
from q0_reference.trainer import accumulated_step


@pytest.mark.parametrize("device, autocast, compile, expected", [
    ("cpu", "auto", "auto", (False, False)),
    ("cuda", "auto", "auto", (True, True)),
    ("cuda:3", "fp32", "off", (False, False)),
    ("cpu", "bf16", "on", (True, True)),
    ("cpu", True, "true", (True, True)),
    ("meta", "auto", "auto", (False, False)),
])
def test_auto_means_bf16_and_compile_on_cuda_only(device, autocast, compile, expected):
    runtime = Runtime.resolve(device, autocast, compile)
    assert (runtime.bf16, runtime.compile) == expected and runtime.device == device


def test_bad_choices_are_clear_errors():
    with pytest.raises(Q0ConfigError, match="autocast"):
        Runtime.resolve("cpu", "fp16")
    with pytest.raises(Q0ConfigError, match="compile"):
        Runtime.resolve("cpu", "auto", "maybe")
    with pytest.raises(Q0ConfigError, match="device"):
        Runtime.resolve("gpu0")


def small_step(runtime: Runtime, seed: int = 0):
    preset = get_preset("cpu_small")
    torch.manual_seed(seed)
    model = build_on_device(preset.model, "cpu")
    optimizer = build_optimizer(model, preset.optimizer)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 2048, (8, 128), generator=g)
    y = torch.randint(0, 2048, (8, 128), generator=g)
    loss = accumulated_step(runtime.compiled(model), optimizer, [(x, y)], autocast=runtime.autocast)
    return loss, model


def test_bf16_autocast_step_runs_on_cpu_with_float32_master_weights():
    fp32_loss, _ = small_step(Runtime.resolve("cpu", "fp32", "off"))
    bf16_loss, model = small_step(Runtime.resolve("cpu", "bf16", "off"))
    assert bf16_loss == pytest.approx(fp32_loss, abs=2e-2) and bf16_loss != fp32_loss
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    with Runtime.resolve("cpu", "bf16", "off").autocast():
        logits = model(torch.randint(0, 2048, (1, 16)))
        hidden = model.blocks[0].attn.c_q(torch.randn(1, 128))
    assert logits.dtype == torch.float32 and hidden.dtype == torch.bfloat16


def test_compile_switch_wraps_the_model_only_when_asked():
    model = torch.nn.Linear(2, 2)
    assert Runtime.resolve("cpu", "fp32", "off").compiled(model) is model
    assert isinstance(Runtime.resolve("cpu", "fp32", "on").compiled(model), torch._dynamo.eval_frame.OptimizedModule)
    assert Runtime.resolve("meta", "fp32", "on").compiled(model) is model  # nothing to compile on meta


def test_batches_move_to_the_device():
    x = torch.arange(6).reshape(2, 3)
    assert Runtime.resolve("cpu").to_device(x) is x
    assert Runtime.resolve("meta").to_device(x).is_meta


@pytest.mark.slow
def test_compiled_bf16_step_of_the_small_preset_runs_with_inductor_on_cpu():
    """About 50 s with a cold inductor cache on two cores (a few seconds warm), hence slow."""
    eager_loss, eager = small_step(Runtime.resolve("cpu", "bf16", "off"))
    compiled_loss, compiled = small_step(Runtime.resolve("cpu", "bf16", "on"))
    assert compiled_loss == pytest.approx(eager_loss, abs=2e-2)
    for a, b in zip(eager.parameters(), compiled.parameters()):
        assert (a - b).abs().max() < 1e-2  # one AdamW step of lr 3e-3 apart at most
