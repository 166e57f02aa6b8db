#!/usr/bin/env bash
# The training stack on one GPU, offline, in under 8 minutes:
#   1. prepare a GPT-2 track from the shared WebText (benchmarks/gpt2_webtext.toml; the text is repeated);
#   2. train a GPT-2-small-shaped model (d 768, 12 layers, 12 heads; 162M parameters with untied
#      embeddings, GPT-2's "124M" with tied ones) with single_model and with q0, compiled, bf16, with
#      gradient accumulation (batch 32 x 1024 tokens in microbatches of 16), each run evaluated;
#   3. a bare PyTorch loop of the same model and batch; the table: tokens/s, MFU, peak memory, val loss
#      and each run's speed as a fraction of the bare loop's;
#   4. a one-step memory and throughput probe of the 1.8B `fineweb` preset at microbatches 1 to 4,
#      measured beside the estimate `slowrun plan` uses;
#   5. the same for PR #90's preset;
#   6. evaluation from exported graphs: every snapshot of step 2 was scored from its graph on the GPU,
#      and one 1.8B `fineweb` snapshot's graph is exported, built, bounded and timed against the eager
#      forward (the estimate per fineweb snapshot on this GPU is printed);
#   7. with more than one GPU (or GPU_CHECK_RANKS > 1; 2 on a CPU, over gloo): q0 by torchrun on every
#      rank, inside the sandbox: one trajectory over all ranks (DDP, compiled, 3 microbatches per step
#      with no_sync, Muon's orthogonalisation sharded over the group), then two trajectories on two rank
#      groups; each run's metered tokens must be its ranks' shards, none past the budget.
# It begins with a doctor (benchmarks/doctor.py: torch and its CUDA, driver, GPUs, NCCL, device nodes,
# Landlock ABI; a CPU-only torch asked for CUDA is refused with the install command). Any failure, and
# any run whose status is not ok, stops the check with a non-zero status; nothing is skipped. Each stage
# prints how long it took.
#
#   benchmarks/gpu_check.sh                  # from the repository root, with the venv active
#
# Settings (environment): SLOWRUN_DATA_ROOT (default ../shared/data), SLOWRUN_GPT2_RANKS (default
# $SLOWRUN_DATA_ROOT/gpt2/r50k_base.tiktoken), GPU_CHECK_OUT (default gpu-check, replaced),
# GPU_CHECK_DEVICE (default cuda), GPU_CHECK_TINY=1 (a tiny model on a tiny track, in float32: a CPU
# dry run of this script, about 3 minutes on two cores; CPUs without bf16 instructions emulate bf16
# slowly), SLOWRUN_PEAK_TFLOPS (the GPU's dense bf16 peak, when its name is not in benchmarks/hardware.py).
set -euo pipefail

cd "$(dirname "$0")/.."
DATA_ROOT=${SLOWRUN_DATA_ROOT:-../shared/data}
RANKS=${SLOWRUN_GPT2_RANKS:-$DATA_ROOT/gpt2/r50k_base.tiktoken}
OUT=${GPU_CHECK_OUT:-gpu-check}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
TINY=${GPU_CHECK_TINY:-0}
TRACKS=benchmarks/gpt2_webtext.toml
started=$(date +%s)

fail() { echo "GPU CHECK FAILED: $*" >&2; exit 1; }
stage_started=$started
stage_name=""
stage_done() {
  [[ -n "$stage_name" ]] && echo "-- stage ${stage_name%%.*} took $(( $(date +%s) - stage_started )) s"
  return 0
}
step() { stage_done; stage_name="$*"; stage_started=$(date +%s); echo; echo "== $* ($(( stage_started - started )) s)"; }
# A run that did not end `ok` stops the check here, with the record's error.
check_ok() {
  python - "$1" <<'PY' || fail "run $1 did not end ok"
import json, sys
record = json.load(open(f"{sys.argv[1]}/record.json"))
if record["status"] != "ok":
    raise SystemExit(f"{sys.argv[1]}: status {record['status']}: {record.get('error')}")
PY
}

for file in "$RANKS" "$DATA_ROOT/webtext/webtext.valid.jsonl" "$DATA_ROOT/webtext/webtext.test.jsonl"; do
  [[ -f "$file" ]] || fail "$file not found (set SLOWRUN_DATA_ROOT or SLOWRUN_GPT2_RANKS)"
done
command -v slowrun >/dev/null || fail "slowrun is not on PATH (activate the venv: . .venv/bin/activate)"
step "0. doctor"
python -m benchmarks.doctor --device "$DEVICE" || fail "the doctor found a problem (above)"
if [[ -z "${GPU_CHECK_RANKS:-}" ]]; then
  if [[ "$DEVICE" == cuda* ]]; then
    GPU_CHECK_RANKS=$(python -c "import torch; print(torch.cuda.device_count())")
  else
    GPU_CHECK_RANKS=2
  fi
fi

if [[ "$TINY" == 1 ]]; then
  TRACK=webtext_gpt2_tiny; COPIES=1; EPOCHS=1; AUTOCAST=fp32
  MODEL=(--set d_model=64 --set n_layer=2 --set n_head=2)
  BATCH=(--set batch_size=8 --set micro_batch_size=4)
  BARE=(--seq-len 128 --d-model 64 --n-layer 2 --n-head 2 --batch-size 8 --micro-batch-size 4 --steps 5)
  PROBE=(--tiny --micro 1 2)
  PROBE_PR90=(--tiny --micro 1)
  GRAPH=(--tiny --windows 32 --batch 8)
  LEG_MICRO=2
else
  TRACK=webtext_gpt2; COPIES=3; EPOCHS=8; AUTOCAST=bf16
  MODEL=(--set d_model=768 --set n_layer=12 --set n_head=12)
  BATCH=(--set batch_size=32 --set micro_batch_size=16)
  BARE=(--seq-len 1024 --d-model 768 --n-layer 12 --n-head 12 --batch-size 32 --micro-batch-size 16 --steps 30)
  PROBE=(--micro 1 2 3 4)
  PROBE_PR90=(--micro 1)
  GRAPH=(--windows 64 --batch 16)
  LEG_MICRO=8
fi
rm -rf "$OUT"
mkdir -p "$OUT"

step "1. prepare $TRACK from the shared WebText under GPT-2 BPE"
SOURCES=()
for _ in $(seq "$COPIES"); do
  SOURCES+=("$DATA_ROOT/webtext/webtext.valid.jsonl" "$DATA_ROOT/webtext/webtext.test.jsonl")
done
slowrun prepare --track "$TRACK" --tracks "$TRACKS" --source "${SOURCES[@]}" --gpt2-ranks "$RANKS" \
  --out "$OUT/data" --quiet

COMMON=(--track "$TRACK" --tracks "$TRACKS" --data "$OUT/data" --epochs "$EPOCHS" --device "$DEVICE" --quiet
        "${MODEL[@]}" "${BATCH[@]}" --set compile=on --set "autocast=$AUTOCAST" --set log_every=5 --set lr=0.001)
for method in single_model q0; do
  step "2. $method: train $EPOCHS epoch(s) compiled, autocast $AUTOCAST, then evaluate"
  slowrun run "submissions/$method" "${COMMON[@]}" --out "$OUT/$method"
  check_ok "$OUT/$method"
done

step "3. bare PyTorch loop of the same model and batch"
python -m benchmarks.bare_loop "${BARE[@]}" --vocab-size 50257 --device "$DEVICE" --autocast "$AUTOCAST" --compile on \
  --out "$OUT/bare.json" > /dev/null
python -m benchmarks.summary --bare "$OUT/bare.json" "$OUT/single_model" "$OUT/q0"

step "4. one q0 step of the 1.8B fineweb preset (probe ${PROBE[*]}), then what slowrun plan makes of 8 x 80 GB"
python -m benchmarks.probe_memory --preset fineweb "${PROBE[@]}" --device "$DEVICE" --json "$OUT/probe.json"
slowrun plan --epochs 16 --world-size 8 --gpu-memory 80

step "5. one q0 step of slowrun PR #90's preset (its extras and the trained MTP head; probe ${PROBE_PR90[*]})"
python -m benchmarks.probe_memory --preset fineweb_pr90 "${PROBE_PR90[@]}" --device "$DEVICE" --json "$OUT/probe_pr90.json"

step "6. evaluation from exported graphs: the runs of step 2, then one fineweb snapshot's graph (${GRAPH[*]})"
python - "$OUT/single_model" "$OUT/q0" <<'EOF' || fail "a snapshot of step 2 was not evaluated from its graph"
import json, sys
for run in sys.argv[1:]:
    record = json.load(open(f"{run}/record.json"))
    by = sorted({row["evaluated_by"] for row in record["snapshots"]})
    print(f"{run}: {len(record['snapshots'])} snapshot(s) evaluated by {by}, on {record['evaluation']['devices']}")
    assert by == ["graph"], by
EOF
python -m benchmarks.graph_eval --preset fineweb "${GRAPH[@]}" --device "$DEVICE" --json "$OUT/graph_eval.json"

if (( GPU_CHECK_RANKS > 1 )); then
  LEG=(--track "$TRACK" --tracks "$TRACKS" --data "$OUT/data" --epochs 1 --device "$DEVICE" --quiet
       --nproc-per-node "$GPU_CHECK_RANKS" "${MODEL[@]}" --set compile=on --set "autocast=$AUTOCAST"
       --set log_every=5 --set optimizer=muon --set "micro_batch_size=$LEG_MICRO")
  for trajectories in 1 2; do
    groups=$(( trajectories < GPU_CHECK_RANKS ? trajectories : GPU_CHECK_RANKS ))
    batch=$(( GPU_CHECK_RANKS * LEG_MICRO * 3 ))  # at least 3 microbatches a step on every rank of a group
    step "7. $GPU_CHECK_RANKS ranks: q0, $trajectories trajectory(ies) on $groups rank group(s), batch $batch in microbatches of $LEG_MICRO"
    slowrun run submissions/q0 "${LEG[@]}" --set "batch_size=$batch" --set "n_trajectories=$trajectories" \
      --set small_budget_epochs=0 \
      --out "$OUT/q0_ranks_t$trajectories"
    check_ok "$OUT/q0_ranks_t$trajectories"
    python -m benchmarks.rank_shards "$OUT/q0_ranks_t$trajectories" --ranks "$GPU_CHECK_RANKS" --streams "$trajectories" \
      || fail "the ranks' metered data do not add up"
  done
fi

step "8. the scheduler's warning on the device: q0 sent SIGUSR1 while it trains, then started again with --resume auto"
WARNED=(submissions/q0 "${COMMON[@]}" --epochs 1 --out "$OUT/q0_warned" --resume auto)
slowrun run "${WARNED[@]}" & runner=$!
for _ in $(seq 600); do  # the fifth step's metrics line: compiled, training, not near the end
  [[ $(grep -c '"loss"' "$OUT/q0_warned/metrics.jsonl" 2>/dev/null || true) -ge 5 ]] && break
  kill -0 $runner 2>/dev/null || break
  sleep 0.5
done
kill -USR1 $runner 2>/dev/null || fail "the q0 run of step 8 ended before it could be warned"
wait $runner && fail "the warned run did not stop"
python - "$OUT/q0_warned" <<'PY' || fail "the warned run did not checkpoint on the warning"
import json, sys
error = json.load(open(f"{sys.argv[1]}/record.json"))["error"]
print(f"warned: {error['message']}")
assert error["type"] == "Interrupted" and "every rank checkpointed" in error["message"], error
PY
slowrun run "${WARNED[@]}"
check_ok "$OUT/q0_warned"
stage_done

elapsed=$(( $(date +%s) - started ))
echo
echo "GPU check passed in ${elapsed} s (results in $OUT/)"
if [[ "$TINY" != 1 && $elapsed -gt 480 ]]; then
  echo "note: over the 8-minute target" >&2
fi
