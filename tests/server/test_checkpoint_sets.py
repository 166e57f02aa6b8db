"""Which checkpoint each rank resumes from, when a job was killed between two ranks' checkpoint writes."""

from __future__ import annotations

from harness.server.checkpoint_sets import consistent_checkpoints


def index(generation: int, windows: dict, previous=None, shards: int = 2, stream: str = "main") -> dict:
    return {"generation": generation, "state_file": f"state-{generation}.pt", "previous": previous,
            "ledger": {"streams": {stream: {"batch_size": 2, "shards": shards,
                                            "windows": {str(k): v for k, v in windows.items()}}}}}


def test_ranks_that_agree_resume_from_their_latest():
    latest = {0: index(3, {0: 20}, index(2, {0: 16})), 1: index(3, {1: 20}, index(2, {1: 16}))}
    assert consistent_checkpoints(latest) == latest


def test_a_rank_one_checkpoint_ahead_of_its_peer_falls_back_to_its_previous():
    """Killed after rank 0 wrote generation 3 and before rank 1 did: both resume at step 8."""
    behind = index(2, {1: 16}, index(1, {1: 12}))
    latest = {0: index(3, {0: 20}, index(2, {0: 16})), 1: behind}
    chosen = consistent_checkpoints(latest)
    assert chosen[0]["generation"] == 2 and chosen[0]["state_file"] == "state-2.pt"
    assert chosen[1] is behind


def test_a_rank_whose_peer_never_checkpointed_starts_over_with_it():
    latest = {0: index(1, {0: 4})}  # rank 1, reading shard 1, holds no checkpoint: its shard stands at step 0
    assert consistent_checkpoints(latest) == {}


def test_streams_read_whole_constrain_nothing():
    latest = {0: index(5, {0: 40}, shards=1, stream="trajectory0"), 1: index(2, {0: 8}, shards=1, stream="trajectory1")}
    assert consistent_checkpoints(latest) == latest


def test_checkpoints_that_never_meet_start_the_run_over():
    """Rank 0 at steps 10 and 9, rank 1 at 8 and 7: no pair agrees, so both fall back to nothing (a fresh
    start; the run's snapshots and metrics are rolled back with them)."""
    latest = {0: index(3, {0: 20}, index(2, {0: 18})), 1: index(3, {1: 16}, index(2, {1: 14}))}
    assert consistent_checkpoints(latest) == {}
