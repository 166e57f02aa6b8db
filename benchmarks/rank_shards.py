"""Whether a distributed run's metered data add up: the GPU check's multi-rank leg reads its records here.

Every rank of a DDP group reads its own shard of its trajectory's stream (`trajectory0[1/4]`: part 1 of
4), in step with its peers; the harness meters each shard. Three things must hold: the shards sum to the
metered tokens, a group's shards are equal (a rank that read more or fewer batches than its peers would
have waited in an all-reduce, or trained on data its peers never saw), and no run passes its budget.

    python -m benchmarks.rank_shards RUN_DIR --ranks 8
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


class ShardsDoNotAddUp(ValueError):
    pass


def check_shards(record: dict, ranks: int, streams: int | None = None) -> str:
    """A line describing the run's shards; ShardsDoNotAddUp says what is wrong. `streams`: how many
    trajectories (streams) the run must have read, when the caller asked for that many."""
    metered = record["metered"]
    shards: dict[str, int] = metered["per_stream"]
    budget = float(record["budget_epochs"])
    line = (f"{metered['epochs']:.4f} metered epochs of a budget of {budget:g}, {len(shards)} shard(s): "
            + ", ".join(f"{k} {v:,}" for k, v in sorted(shards.items())))
    if sum(shards.values()) != metered["train_tokens"]:
        raise ShardsDoNotAddUp(f"the shards sum to {sum(shards.values()):,} tokens, the run metered "
                               f"{metered['train_tokens']:,}: {line}")
    if metered["epochs"] > budget + 1e-9:
        raise ShardsDoNotAddUp(f"past the budget: {line}")
    by_stream: dict[str, dict[str, int]] = {}
    for key, tokens in shards.items():
        by_stream.setdefault(key.split("[")[0], {})[key] = tokens
    sharded = sum(len(group) for group in by_stream.values())
    if sharded < ranks:
        raise ShardsDoNotAddUp(f"{sharded} shards for {ranks} ranks (a rank read nothing): {line}")
    if streams is not None and len(by_stream) != streams:
        raise ShardsDoNotAddUp(f"{len(by_stream)} stream(s) read where {streams} were asked for: {line}")
    for stream, group in by_stream.items():
        if len(set(group.values())) != 1:
            raise ShardsDoNotAddUp(f"the ranks of {stream} read unequal shards: {line}")
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--ranks", type=int, required=True)
    parser.add_argument("--streams", type=int, help="trajectories the run must have trained")
    args = parser.parse_args(argv)
    record = json.loads((Path(args.run_dir) / "record.json").read_text())
    try:
        print(f"{args.run_dir}: {check_shards(record, args.ranks, args.streams)}")
    except ShardsDoNotAddUp as exc:
        print(f"{args.run_dir}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
