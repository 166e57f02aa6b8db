"""The global batch: accumulated microbatches give the full batch's gradient, and the number of steps
depends on the global batch only, not on how many processes share it."""

import pytest
import torch

from q0_reference.batching import BatchPlan, auto_micro_batch, steps_per_epoch
from q0_reference.distill import Teacher
from q0_reference.errors import Q0ConfigError
from q0_reference.model import build_gpt
from q0_reference.recipes import Q0Settings, Recipe, q0_layout
from q0_reference.trainer import accumulated_step
from tests.q0.fakes import FakeContext
from tests.q0.fakes import GradientRecorder as Recorder

CONFIG = dict(vocab_size=64, seq_len=16, n_layer=2, n_head=2, d_model=32, mlp="swiglu", logit_softcap=10.0)




def float64_model(seed=0):
    torch.manual_seed(seed)
    return build_gpt(CONFIG).double()


@pytest.mark.parametrize("distil", [False, True])
def test_accumulated_microbatch_gradients_equal_the_full_batch_gradient_in_float64(distil):
    model = float64_model()
    teacher = None
    if distil:
        other = float64_model(seed=1)
        teacher = Teacher(other)  # float64 weights: a deep copy of another model
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 64, (8, 16), generator=g)
    y = torch.randint(0, 64, (8, 16), generator=g)
    full = Recorder(model)
    loss_full = accumulated_step(model, full, [(x, y)], teacher, max_grad_norm=None)
    micro = Recorder(model)
    loss_micro = accumulated_step(model, micro, [(x[i:i + 2], y[i:i + 2]) for i in range(0, 8, 2)], teacher,
                                  max_grad_norm=None)
    assert loss_micro == pytest.approx(loss_full, rel=1e-12)
    assert set(full.grads) == set(micro.grads)
    for name, grad in full.grads.items():
        assert grad.dtype == torch.float64
        torch.testing.assert_close(micro.grads[name], grad, rtol=1e-10, atol=1e-14, msg=name)
        assert grad.abs().max() > 0, name


def test_gradient_clipping_sees_the_accumulated_gradient():
    """Clipping happens once, on the sum over microbatches: the clipped update equals the full batch's."""
    results = []
    for split in (1, 4):
        model = float64_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        g = torch.Generator().manual_seed(5)
        x, y = torch.randint(0, 64, (8, 16), generator=g), torch.randint(0, 64, (8, 16), generator=g)
        size = 8 // split
        accumulated_step(model, opt, [(x[i:i + size], y[i:i + size]) for i in range(0, 8, size)], max_grad_norm=0.05)
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("global_batch, micro, group, accumulation", [
    (256, 4, 8, 8), (256, 4, 1, 64), (192, 4, 8, 6), (192, 2, 8, 12), (8, 2, 2, 2), (8, 8, 1, 1)])
def test_accumulation_is_global_over_micro_times_group(global_batch, micro, group, accumulation):
    plan = BatchPlan(global_batch, micro, group)
    assert plan.accumulation == accumulation
    assert plan.micro_batch * plan.group_size * plan.accumulation == global_batch


def test_a_batch_that_does_not_divide_is_refused_with_the_arithmetic():
    with pytest.raises(Q0ConfigError, match=r"256 / \(4 x 3\) = 21.33.*multiple of 3"):
        BatchPlan(256, 4, 3)
    with pytest.raises(Q0ConfigError, match="divides the per-rank share 32"):
        BatchPlan(256, 3, 8)
    with pytest.raises(Q0ConfigError, match="multiple of 3"):
        BatchPlan.resolve(256, 0, 3)
    assert BatchPlan.resolve(256, 0, 8).micro_batch == 32  # 0: the whole share, no accumulation
    assert auto_micro_batch([256, 192], 8) == 8  # gcd of the shares 32 and 24
    with pytest.raises(Q0ConfigError):
        BatchPlan(0, 1)


def test_steps_per_epoch_depend_on_the_global_batch_only():
    assert steps_per_epoch(1_000_000, 256, 2048) == pytest.approx(1_000_000 / 524_288)
    recipe = Recipe.from_hparams({"batch_size": 8, "micro_batch_size": 2, "d_model": 32, "n_layer": 1, "n_head": 2})
    settings = Q0Settings(n_trajectories=1)
    layouts = {}
    for world in (1, 2, 4):
        ctx = FakeContext(budget=8.0, world_size=world, epoch_tokens=16 * 8 * 10)
        layouts[world] = q0_layout(ctx, recipe, settings)
    steps = {w: layout.schedule.total_steps for w, layout in layouts.items()}
    assert steps == {1: 80, 2: 80, 4: 80}  # 8 epochs x 10 steps of 8 x 16 tokens, however many ranks
    assert [layouts[w].batches[0].accumulation for w in (1, 2, 4)] == [4, 2, 1]
    assert layouts[1].schedule == layouts[2].schedule == layouts[4].schedule


def test_every_trajectory_trains_with_the_same_global_batch_on_uneven_groups():
    recipe = Recipe.from_hparams({"batch_size": 12, "micro_batch_size": 2, "d_model": 32, "n_layer": 1, "n_head": 2,
                                  "rank_groups": 2})
    settings = Q0Settings(n_trajectories=2)
    per_rank = {}
    for rank in range(3):  # 3 ranks in 2 groups: (0, 1) and (2,)
        ctx = FakeContext(budget=300.0, world_size=3, rank=rank, epoch_tokens=16 * 12 * 4)
        layout = q0_layout(ctx, recipe, settings)
        per_rank[rank] = (layout.placement.index, layout.placement.size, layout.batches[0].accumulation,
                          layout.schedule.total_steps)
    assert per_rank[0] == per_rank[1] == (0, 2, 3, per_rank[2][3])
    assert per_rank[2] == (1, 1, 6, per_rank[0][3])


def test_a_step_is_one_request_and_one_copy_to_the_device_whatever_the_accumulation():
    """The step's microbatches come from one ``next_tokens`` request and cross to the device as one block; each
    microbatch is a view of it (what one request per microbatch and two pinned views each used to cost)."""
    from q0_reference.batching import microbatches

    ctx = FakeContext(seq_len=16)
    stream = ctx.train_stream("main", 2)
    requests, copies = [], []
    next_tokens = stream.next_tokens
    stream.next_tokens = lambda n: (requests.append(n), next_tokens(n))[1]
    plan = BatchPlan(6, 2)  # accumulation 3

    def to_device(tensor):
        copies.append((tuple(tensor.shape), tensor.is_contiguous()))
        return tensor.clone()

    batches = microbatches(stream, plan, to_device)
    assert requests == [3] and copies == [((3, 2, 17), True)]
    assert len(batches) == 3 and {b[0].untyped_storage().data_ptr() for b in batches} == {
        batches[0][1].untyped_storage().data_ptr()}
    # the same windows, in the same order, as three single-batch reads of a fresh stream
    fresh = FakeContext(seq_len=16).train_stream("main", 2)
    for inputs, targets in batches:
        want_inputs, want_targets = next(fresh)
        assert torch.equal(inputs, want_inputs) and torch.equal(targets, want_targets)
    assert ctx.served_targets == 3 * 2 * 16
