"""Which checkpoint each rank of a job resumes from, so that the ranks agree on where training stands."""

from __future__ import annotations

from harness.errors import SlowrunError

def consistent_checkpoints(latest: dict[int, dict]) -> dict[int, dict]:
    """The checkpoint each rank resumes from: its latest, unless that puts it ahead of a rank it reads a
    stream with in shards (a DDP group steps together); then its previous one, or none.

    The ranks of a group checkpoint at the same steps, but each writes its own file: a job killed between
    two ranks' writes leaves one a checkpoint ahead. Resumed as they are, the two would disagree on the step
    and on the stream's position. Ranks ahead fall back until every sharded stream's shards stand at one
    step (a shard no checkpoint holds stands at step 0)."""
    chosen: dict[int, dict | None] = dict(latest)
    for _ in range(2 * len(chosen) + 2):
        steps: dict[str, dict[int, tuple[int, int]]] = {}  # stream -> shard -> (step, rank)
        shards_of: dict[str, int] = {}
        for rank, index in chosen.items():
            if index is None:
                continue
            for stream, raw in ledger_state(index).get("streams", {}).items():
                if int(raw["shards"]) > 1:
                    shards_of[stream] = int(raw["shards"])
                    for shard, windows in raw["windows"].items():
                        steps.setdefault(stream, {})[int(shard)] = (int(windows) // int(raw["batch_size"]), rank)
        ahead: set[int] = set()
        for stream, count in shards_of.items():
            at = steps.get(stream, {})
            low = 0 if len(at) < count else min(step for step, _ in at.values())
            ahead.update(rank for step, rank in at.values() if step > low)
        if not ahead:
            return {rank: index for rank, index in chosen.items() if index is not None}
        for rank in ahead:
            chosen[rank] = (chosen[rank] or {}).get("previous")
    raise SlowrunError("the ranks' checkpoints cannot be brought to one step; start the run again")


def ledger_state(index: dict) -> dict:
    """A rank's ledger state from its checkpoint index."""
    if "ledger" not in index:
        raise SlowrunError("this run's checkpoints were written by an older harness, without the job's ledger; "
                           "resume it with the version that started it, or start it again")
    return index["ledger"]
