"""Independent jobs on rank groups: how many groups, which ranks, and refusals when the batch arithmetic
cannot be whole. Expected values are worked by hand from the rule in q0_reference.placement."""

from fractions import Fraction

import pytest

from q0_reference.errors import Q0ConfigError
from q0_reference.placement import choose_group_count, group_sizes, makespan, place
from tests.q0.fakes import FakeContext


def test_group_sizes_are_contiguous_even_and_larger_first():
    assert group_sizes(8, 5) == [2, 2, 2, 1, 1]
    assert group_sizes(8, 3) == [3, 3, 2]
    assert group_sizes(2, 5) == [1, 1]


def test_makespan_counts_round_robin_jobs_over_group_size():
    assert makespan(5, [8]) == Fraction(5, 8)
    assert makespan(5, [4, 4]) == Fraction(3, 4)
    assert makespan(5, [3, 3, 2]) == Fraction(2, 3)
    assert makespan(5, [2, 2, 2, 1, 1]) == 1


@pytest.mark.parametrize("jobs, world, expected", [
    (5, 8, 1),    # one group of 8 running the five in turn: 5/8, sooner than 3/4, 2/3, 1
    (5, 40, 5),   # 1/8 either way: the tie goes to five groups of 8 (the published layout)
    (2, 2, 2),    # one trajectory per rank
    (1, 8, 1),    # a single model uses every rank
    (4, 8, 4),    # 4 groups of 2: 1/2, tied with 1 group (4/8)
    (3, 4, 1),    # 3/4 beats 2 groups of 2 (2/2) and 3 groups of 2,1,1 (1)
])
def test_the_fastest_layout_wins_and_ties_go_to_more_groups(jobs, world, expected):
    assert choose_group_count(jobs, world, [256], micro_batch=4) == expected


def test_layouts_whose_batch_arithmetic_is_not_whole_are_skipped():
    # 6 ranks, global batch 256, microbatch 4: a group of 6 or 3 cannot reach 256 in whole microbatches
    # (256 / 24 and 256 / 12), groups of 2 and 1 can. g=3 (2,2,2): 1; g=4 (2,2,1,1): 1; g=5: 1 -> g=5
    assert choose_group_count(5, 6, [256], micro_batch=4) == 5
    # both batch sizes of a schedule must divide: 192 on 8 ranks x 4 is 6, 256 is 8 -> one group of 8
    assert choose_group_count(5, 8, [192, 256], micro_batch=4) == 1
    # microbatch 16: g=1 (8) fails on 192 / 128; g=2 (4,4) takes 3/4; g=3 (3,3,2) fails on 256 / 48;
    # g=4 (2,2,2,2) takes 2/2 -> g=2
    assert choose_group_count(5, 8, [192, 256], micro_batch=16) == 2


def test_a_requested_layout_is_refused_with_the_arithmetic():
    with pytest.raises(Q0ConfigError, match=r"256 / \(4 x 3\)"):
        choose_group_count(2, 6, [256], micro_batch=4, requested=2)
    assert choose_group_count(2, 4, [256], micro_batch=4, requested=9) == 2  # capped at min(jobs, ranks)
    with pytest.raises(Q0ConfigError, match="no split of 6 ranks"):
        choose_group_count(5, 6, [255], micro_batch=4)


def test_place_asks_the_context_for_the_chosen_groups():
    ctx = FakeContext(world_size=8, rank=5)
    placement = place(ctx, 5, [256], micro_batch=4)
    assert ctx.groups_asked == [1] and placement.size == 8 and placement.shard == (5, 8)
    assert placement.jobs(5) == [0, 1, 2, 3, 4] and not placement.is_leader
    ctx = FakeContext(world_size=8, rank=6)
    placement = place(ctx, 4, [256], micro_batch=4)
    assert (placement.index, placement.size, placement.rank_in_group, placement.jobs(4)) == (3, 2, 0, [3])
    assert place(FakeContext(), 5, [8]).size == 1  # one process: group 0 of 1, no DDP


def test_naive_ensemble_members_and_the_single_model_are_placed_like_trajectories():
    from q0_reference.recipes import Recipe, train_naive_ensemble

    recipe = Recipe.from_hparams(dict(d_model=32, n_layer=1, n_head=2, batch_size=4, compile="off", autocast="fp32"))
    for rank, members in ((0, {"member0", "member2"}), (1, {"member1", "member3"})):
        ctx = FakeContext(world_size=2, rank=rank, budget=4.0, epoch_tokens=16 * 4 * 2)
        train_naive_ensemble(ctx, recipe, members=4, ema_decay=0.9)
        assert {stream for stream, _ in ctx.streams} == members  # 4 members on 2 groups of one rank
        assert all(shard is None for _, shard in ctx.streams)
    # one model on both ranks (DDP; run for real in tests/runner/test_distributed.py): this rank's shard
    placement = place(FakeContext(world_size=2, rank=1), 1, [4])
    assert placement.shard == (1, 2) and placement.batch_plan(4, 0).micro_batch == 2
