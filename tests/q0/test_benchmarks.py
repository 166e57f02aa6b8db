"""CPU smoke runs of the GPU check's Python parts at tiny sizes (benchmarks/gpu_check.sh needs a GPU):
the bare loop, the memory probe and the summary table, each asserting what it reports."""

import json

import pytest
import torch

from benchmarks import bare_loop, probe_memory, summary
from q0_reference.model import GPTConfig
from q0_reference.presets import get_preset
from q0_reference.throughput import training_flops_per_token

TINY = GPTConfig(vocab_size=256, seq_len=32, n_layer=2, n_head=2, d_model=32)


def test_bare_loop_trains_and_reports_speed(tmp_path, monkeypatch):
    monkeypatch.setenv("SLOWRUN_PEAK_TFLOPS", "1")  # a made-up CPU peak, so MFU is reported
    result = bare_loop.run(TINY, batch_size=8, micro_batch_size=4, steps=3, warmup=1, device="cpu",
                           autocast="bf16", compile="off")
    assert result["tokens_per_s"] > 0 and result["step_s"] > 0
    assert result["flops_per_token"] == training_flops_per_token(TINY)
    assert result["mfu"] == pytest.approx(result["flops_per_token"] * result["tokens_per_s"] / 1e12)
    assert result["peak_mem_gib"] is None  # no device counter on a CPU
    out = tmp_path / "bare.json"
    assert bare_loop.main(["--vocab-size", "256", "--seq-len", "32", "--d-model", "32", "--n-layer", "1",
                           "--n-head", "2", "--batch-size", "4", "--micro-batch-size", "2", "--steps", "2",
                           "--warmup", "1", "--device", "cpu", "--compile", "off", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["batch_size"] == 4


def test_probe_runs_a_distilled_step_per_microbatch_and_judges_the_estimate():
    preset = get_preset("fineweb")
    rows = probe_memory.probe(TINY, preset.optimizer, micro_batches=(1, 2), device="cpu", global_batch=8, gpus=2)
    assert [r["micro_batch"] for r in rows] == [1, 2]
    for r in rows:
        assert not r["out_of_memory"] and r["tokens_per_s"] > 0
        assert r["accumulation"] == 8 // (r["micro_batch"] * 2)
        assert r["projected_step_s"] == pytest.approx(r["accumulation"] * r["fwd_bwd_s"] + r["update_s"])
    assert rows[1]["estimate_gib"] > rows[0]["estimate_gib"]
    assert probe_memory.verdicts(rows, None) == []
    oom = [{"micro_batch": 4, "estimate_gib": 1.0, "out_of_memory": True, "measured_gib": None}]
    assert "says it fits" in probe_memory.verdicts(oom, 2 << 30)[0]
    assert probe_memory.verdicts(oom, 1 << 29) == []  # the estimate said it would not fit: no surprise
    over = [{"micro_batch": 1, "estimate_gib": 1.0, "out_of_memory": False, "measured_gib": 1.5}]
    assert "above the estimate" in probe_memory.verdicts(over, None)[0]
    assert "micro" in probe_memory.format_rows(rows)


def test_probe_command_on_a_tiny_preset(capsys):
    assert probe_memory.main(["--preset", "fineweb", "--tiny", "--micro", "1", "--device", "cpu"]) == 0
    assert "one q0 step of preset fineweb (tiny)" in capsys.readouterr().out


def write_run(folder, status="ok", val_loss=3.5, speeds=(100.0, 200.0, 300.0)):
    folder.mkdir()
    record = {"status": status, "result": {"val_loss": val_loss}, "method": {"name": "single_model"},
              "hparams": {"d_model": 32, "n_layer": 2, "n_head": 2, "mlp": "relu2"},
              "track": {"vocab_size": 256, "seq_len": 32}, "snapshots": [{}, {}]}
    (folder / "record.json").write_text(json.dumps(record))
    lines = [{"event": "plan"}] + [{"stream": "main", "loss": 1.0, "tokens_per_s": s, "peak_mem_gib": 2.0}
                                   for s in speeds]
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    return folder


def test_summary_leaves_out_the_compiling_point_and_compares_with_the_bare_loop(tmp_path, capsys):
    run = write_run(tmp_path / "run", speeds=(1.0, 200.0, 300.0, 400.0))  # the first point includes compilation
    stats = summary.run_stats(run, peak_flops=1e12)
    assert stats["tokens_per_s"] == 300.0 and stats["peak_mem_gib"] == 2.0
    assert stats["mfu"] == pytest.approx(training_flops_per_token(TINY) * 300.0 / 1e12)
    bare = {"tokens_per_s": 600.0, "mfu": 0.5, "flops_per_token": 10.0, "peak_mem_gib": None}
    (tmp_path / "bare.json").write_text(json.dumps(bare))
    assert summary.main(["--bare", str(tmp_path / "bare.json"), str(run)]) == 0
    table = capsys.readouterr().out
    assert "bare loop" in table and "0.500" in table  # 300 / 600 tokens/s


@pytest.mark.parametrize("change, message", [
    ({"status": "failed"}, "not ok"), ({"val_loss": None}, "no evaluated"), ({"speeds": (5.0,)}, "no tokens_per_s")])
def test_summary_fails_loudly_on_a_run_that_did_not_train_and_evaluate(tmp_path, capsys, change, message):
    run = write_run(tmp_path / "run", **change)
    assert summary.main([str(run)]) == 1
    assert message in capsys.readouterr().err


def test_the_doctor_passes_a_cpu_and_refuses_cuda_on_a_cpu_build(monkeypatch, capsys):
    from benchmarks import doctor

    monkeypatch.setattr(torch.version, "cuda", None)
    assert doctor.main(["--device", "cpu"]) == 0
    assert doctor.main(["--device", "cuda"]) == 1
    out = capsys.readouterr().out
    torch_line = next(line for line in out.splitlines() if "[FAIL] torch" in line)
    assert "CPU only" in torch_line
    assert doctor.CUDA_INSTALL in out and "--index-url https://download.pytorch.org/whl/cu" in doctor.CUDA_INSTALL


def test_the_doctor_wants_the_uvm_node_and_explains_landlock(tmp_path, monkeypatch):
    from benchmarks import doctor

    (tmp_path / "nvidia0").touch()
    (tmp_path / "nvidiactl").touch()
    missing = doctor._device_node_finding("cuda", str(tmp_path))
    assert missing.verdict == "FAIL" and "nvidia-uvm" in missing.advice
    (tmp_path / "nvidia-uvm").touch()
    assert doctor._device_node_finding("cuda", str(tmp_path)).verdict == "ok"
    assert doctor._device_node_finding("cpu", str(tmp_path)) is None
    import harness.sandbox.landlock as landlock

    monkeypatch.setattr(landlock, "probe", lambda: (1, ""))
    assert "triton_cache" in doctor._landlock_finding().advice
    monkeypatch.setattr(landlock, "probe", lambda: (0, "disabled at boot"))
    finding = doctor._landlock_finding()
    assert finding.verdict == "note" and "disabled at boot" in finding.value


def _ranked_record(shards: dict, epochs: float = 0.9, budget: float = 1.0) -> dict:
    return {"budget_epochs": budget, "metered": {"epochs": epochs, "per_stream": shards,
                                                 "train_tokens": sum(shards.values())}}


def test_rank_shards_accepts_balanced_groups_and_names_what_is_wrong():
    from benchmarks.rank_shards import ShardsDoNotAddUp, check_shards

    two_groups = {"trajectory0[0/2]": 96, "trajectory0[1/2]": 96, "trajectory1[0/2]": 64, "trajectory1[1/2]": 64}
    assert "4 shard(s)" in check_shards(_ranked_record(two_groups), 4, streams=2)
    with pytest.raises(ShardsDoNotAddUp, match="2 stream"):
        check_shards(_ranked_record(two_groups), 4, streams=3)
    with pytest.raises(ShardsDoNotAddUp, match="unequal"):
        check_shards(_ranked_record({**two_groups, "trajectory1[1/2]": 80}), 4)
    with pytest.raises(ShardsDoNotAddUp, match="past the budget"):
        check_shards(_ranked_record(two_groups, epochs=1.01), 4)
    with pytest.raises(ShardsDoNotAddUp, match="a rank read nothing"):
        check_shards(_ranked_record({"trajectory0[0/2]": 96, "trajectory0[1/2]": 96}), 4)
    record = _ranked_record(two_groups)
    record["metered"]["train_tokens"] += 1
    with pytest.raises(ShardsDoNotAddUp, match="sum to"):
        check_shards(record, 4)
