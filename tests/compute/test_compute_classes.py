"""Compute classes as rules: caps, reference hardware, and the reasons a run is left unranked."""

from __future__ import annotations

import pytest

from harness.rules.compute import (COMPUTE_CLASSES, ComputeClassError, Hardware, check_time_limit, default_compute_class,
                             get_compute_class, hardware_of, snapshot_grace_s, unranked_reasons)
from harness.rules.tracks import get_track

H100_NODE = Hardware("NVIDIA H100 80GB HBM3", 8, 1)


def test_the_classes_caps_are_slowruns():
    assert {n: c.time_limit_s for n, c in COMPUTE_CLASSES.items()} == {
        "tiny": 900.0, "limited": 3600.0, "two-hour": 7200.0, "unlimited": None, "cpu": None}
    # unlimited: 64 H100s for 7 days, spread over the GPUs a run has
    assert get_compute_class("unlimited").effective_time_limit(H100_NODE) == 64 * 7 * 24 * 3600 / 8
    assert get_compute_class("cpu").effective_time_limit(Hardware(None, 0, 1)) is None


def test_an_unknown_class_names_the_known_ones():
    with pytest.raises(ComputeClassError, match="tiny, limited, two-hour, unlimited, cpu"):
        get_compute_class("huge")


@pytest.mark.parametrize("name", ["tiny", "limited", "two-hour"])
def test_the_timed_classes_reference_one_node_of_eight_h100s(name):
    klass = get_compute_class(name)
    assert klass.hardware_problems(H100_NODE) == []
    assert klass.hardware_problems(Hardware("NVIDIA H200", 8, 1))  # a faster GPU is another class of result
    assert klass.hardware_problems(Hardware("NVIDIA H100 80GB HBM3", 4, 1))
    assert klass.hardware_problems(Hardware("NVIDIA H100 80GB HBM3", 8, 2))
    assert klass.hardware_problems(Hardware(None, 0, 1))


def test_the_cpu_class_refuses_gpus_and_takes_any_cpu():
    klass = get_compute_class("cpu")
    assert klass.hardware_problems(Hardware(None, 0, 1)) == []
    assert klass.hardware_problems(Hardware("NVIDIA H100 80GB HBM3", 1, 1))


def test_hardware_of_a_cpu_run_has_no_gpus_and_no_gpu_hours():
    cpu = hardware_of("cpu", 2, 1, None)
    assert (cpu.gpu_model, cpu.gpus, cpu.gpu_hours(3600.0)) == (None, 0, None)
    gpu = hardware_of("cuda", 8, 1, "NVIDIA H100 80GB HBM3")
    assert gpu.gpu_hours(1800.0) == pytest.approx(4.0)  # 8 GPUs for half an hour


def test_a_run_within_its_class_is_ranked():
    assert unranked_reasons(get_compute_class("tiny"), H100_NODE, 900.0, 899.0, None) == []


def test_reasons_for_leaving_a_run_unranked():
    tiny = get_compute_class("tiny")
    custom = unranked_reasons(tiny, H100_NODE, 5.0, 5.0, None)
    assert len(custom) == 1 and "5.0 s time limit" in custom[0] and "15.0 min cap" in custom[0]
    over = unranked_reasons(tiny, H100_NODE, 900.0, 972.0, 72.0)
    assert over == ["trained 16.2 min, past the 15.0 min cap"]
    wrong = unranked_reasons(tiny, Hardware(None, 0, 1), 900.0, 100.0, None)
    assert len(wrong) == 1 and "CPU" in wrong[0] and "8x H100 on one node" in wrong[0]
    # the GPU-hours bound of the unlimited class
    big = Hardware("NVIDIA H100 80GB HBM3", 8, 8)
    hours = unranked_reasons(get_compute_class("unlimited"), big, None, 11_000 / 64 * 3600, None)
    assert hours == ["used 11,000 GPU-hours, over the unlimited class's 10,752"]


def test_the_default_class_follows_the_device_and_the_tracks_rules():
    assert default_compute_class("cpu") == "cpu"
    assert default_compute_class("cuda") == "unlimited"
    fineweb = get_track("fineweb")
    assert not fineweb.allows_class("cpu")
    assert default_compute_class("cpu", fineweb.compute_classes) == "unlimited"


def test_time_limits_and_the_snapshot_grace():
    assert check_time_limit(None) is None and check_time_limit(5) == 5.0
    for bad in (0, -1, float("nan")):
        with pytest.raises(ComputeClassError, match="positive"):
            check_time_limit(bad)
    assert snapshot_grace_s(2.0) == 5.0  # at least the time to write a snapshot
    assert snapshot_grace_s(7200.0) == 72.0  # 1% of a long cap
