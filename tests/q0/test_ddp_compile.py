"""Compiling a DDP model: how many graphs Dynamo's DDP optimizer cuts it into, counted on two real gloo
processes with a backend that only counts (each partition is handed to the backend once).

With DDP's default 25 MB buckets a model of ~600 MB of gradients compiles as 20 graphs (and the
1.72B preset as hundreds); with the buckets :func:`q0_reference.placement.ddp_bucket_cap_mb` sizes for a
compiled model it stays within ``COMPILED_DDP_BUCKETS + 1``, whatever the model's size. The step still
computes what the eager, unpartitioned model computes."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from harness.common.distributed import RankGroup
from q0_reference.model import build_gpt
from q0_reference.placement import COMPILED_DDP_BUCKETS, Placement, ddp_bucket_cap_mb

WORLD = 2
# ~152M parameters, ~580 MiB of float32 gradients: 24 default buckets plus DDP's small first one, or
# COMPILED_DDP_BUCKETS sized ones.
CONFIG = dict(vocab_size=512, seq_len=16, n_layer=12, n_head=8, d_model=1024, mlp="relu2")


@functools.cache
def _grad_mb() -> float:
    with torch.device("meta"):
        model = build_gpt(CONFIG)
    return sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch._dynamo

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        placement = Placement(0, 1, RankGroup(0, (0, 1), rank, dist.group.WORLD))
        idx = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(1 + rank))
        seen = {}
        for which, sized in (("default", False), ("sized", True)):
            torch.manual_seed(0)
            model = build_gpt(CONFIG)
            graphs = []

            def counting_backend(gm, example_inputs, graphs=graphs):
                graphs.append(len(gm.graph.nodes))
                return gm.forward

            compiled = torch.compile(placement.wrap(model, "cpu", compiled=sized), backend=counting_backend,
                                     dynamic=False)
            loss = compiled(idx).float().logsumexp(-1).mean()
            loss.backward()
            grad = torch.cat([p.grad.flatten() for p in model.parameters()])
            seen[which] = {"graphs": graphs, "loss": loss.detach(), "grad": grad,
                           "bucket_cap_mb": ddp_bucket_cap_mb(model, sized)}
            del compiled, model
            torch._dynamo.reset()
        torch.save(seen, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _eager_losses() -> list[torch.Tensor]:
    """Each rank's loss, computed in this process by the model alone (no DDP, no compile)."""
    torch.manual_seed(0)
    model = build_gpt(CONFIG)
    with torch.no_grad():
        return [model(torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(1 + rank)))
                .float().logsumexp(-1).mean() for rank in range(WORLD)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp-compile")
    mp.spawn(_worker, args=(str(folder / "init"), str(folder)), nprocs=WORLD, join=True)
    ranks = [torch.load(folder / f"rank{r}.pt") for r in range(WORLD)]
    return {which: [rank[which] for rank in ranks] for which in ("default", "sized")}


def test_default_buckets_cut_the_compiled_graph_at_every_bucket(runs):
    mb = _grad_mb()
    for rank in runs["default"]:
        assert rank["bucket_cap_mb"] == 25.0
        # a bucket closes at the first graph node that takes it past 25 MB; this model's nodes bring 4 to
        # 16 MB each, so a bucket holds 25 to 41 MB: 14 to 23 graphs, plus the first bucket's
        assert mb / 41 <= len(rank["graphs"]) <= mb / 25 + 2
        print(f"default buckets: {len(rank['graphs'])} graphs for {mb:.0f} MiB of gradients")


def test_sized_buckets_keep_the_compiled_model_in_a_handful_of_graphs(runs):
    mb = _grad_mb()
    for rank in runs["sized"]:
        assert rank["bucket_cap_mb"] == pytest.approx(mb / COMPILED_DDP_BUCKETS)
        assert 2 <= len(rank["graphs"]) <= COMPILED_DDP_BUCKETS + 1
        print(f"sized buckets ({rank['bucket_cap_mb']:.1f} MB): {len(rank['graphs'])} graphs")
    # a model whose eighth is under DDP's default keeps the default (smaller buckets would mean more graphs)
    small = torch.nn.Linear(1024, 1024, bias=False, device="meta")  # 4 MiB of float32 gradients
    assert ddp_bucket_cap_mb(small, compiled=True) == 25.0


def test_the_partitioned_step_computes_what_the_whole_graph_computes(runs):
    """Same losses as the eager model; after the all-reduce every rank holds the same gradient, whether
    the graph was cut in 20 places or in 9 (only the grouping of the all-reduces differs)."""
    losses = _eager_losses()
    for which in ("default", "sized"):
        for rank, got in enumerate(runs[which]):
            torch.testing.assert_close(got["loss"], losses[rank], rtol=1e-5, atol=1e-6)
    reference = runs["default"][0]["grad"]
    assert reference.abs().max() > 0
    for got in runs["default"][1:] + runs["sized"]:
        assert torch.equal(got["grad"], reference)
