"""Cost of a small-preset training step compiled (inductor) under bf16 autocast, relative to the eager
float32 step of the same model on the same batch, measured in the same run; eager bf16 and compiled
float32 are measured too, to show which of the two changes the time.

A CPU gains from bf16 only where it has bf16 matrix instructions (AMX, AVX512-BF16); elsewhere the casts
cost more than they save, so the ratio is reported, not asserted: the GPU check
(benchmarks/gpu_check.sh) measures the case these settings are for. Run with
    pytest tests/bench/test_bench_q0_compile.py -m bench -s
"""

import statistics
import time

import pytest
import torch

from q0_reference.model import build_on_device
from q0_reference.optim import build_optimizer
from q0_reference.presets import get_preset
from q0_reference.runtime import Runtime
from q0_reference.trainer import accumulated_step
from tests.bench.timing import report

ROUNDS, WARMUP_ROUNDS = 10, 2
VARIANTS = {"eager_fp32": ("fp32", "off"), "eager_bf16": ("bf16", "off"), "compiled_fp32": ("fp32", "on"),
            "compiled_bf16": ("bf16", "on")}


def small_setup(autocast: str, compile: str):
    preset = get_preset("cpu_small")
    runtime = Runtime.resolve("cpu", autocast, compile)
    torch.manual_seed(0)
    model = build_on_device(preset.model, "cpu")
    optimizer = build_optimizer(model, preset.optimizer)
    forward = runtime.compiled(model)
    g = torch.Generator().manual_seed(0)
    shape = (preset.batch_size, preset.model.seq_len)
    batch = [(torch.randint(0, preset.model.vocab_size, shape, generator=g),
              torch.randint(0, preset.model.vocab_size, shape, generator=g))]

    def step():
        return accumulated_step(forward, optimizer, batch, autocast=runtime.autocast)

    started = time.perf_counter()
    step()  # compiles, when compiling
    return step, time.perf_counter() - started


@pytest.fixture(scope="module")
def steps():
    return {name: small_setup(*choice) for name, choice in VARIANTS.items()}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_step(benchmark, steps, name):
    step, first = steps[name]
    benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS)
    benchmark.extra_info["first_step_s"] = first  # includes compilation
    benchmark.extra_info["tokens_per_second"] = 8 * 128 / benchmark.stats.stats.median


def test_compiled_bf16_ratio(benchmark, steps):
    """Median over back-to-back rounds of each variant's step time over the eager float32 step's."""
    ratios = {name: [] for name in VARIANTS if name != "eager_fp32"}
    for i in range(ROUNDS + 2):
        times = {}
        for name, (step, _) in steps.items():
            start = time.perf_counter()
            step()
            times[name] = time.perf_counter() - start
        if i >= 2:
            for name in ratios:
                ratios[name].append(times[name] / times["eager_fp32"])
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    for name, values in ratios.items():
        report(benchmark, f"{name}_over_eager_fp32", statistics.median(values))
    print("first step (compilation included): " +
          ", ".join(f"{name} {first:.1f} s" for name, (_, first) in steps.items()))
