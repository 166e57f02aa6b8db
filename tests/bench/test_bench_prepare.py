"""Preparation throughput against the floor: plain tiktoken `encode_ordinary` over the same documents.

Run: pytest tests/bench/test_bench_prepare.py -m bench -s
"""

from __future__ import annotations

import json
import shutil

from harness.data.prepare import prepare_track
from harness.rules.tracks import TokenizerSpec
from tests.bench.timing import best_time, report
from tests.conftest import shared_path
from tests.data.helpers import local_track


def test_prepare_webtext_vs_plain_tiktoken(benchmark, tmp_path):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    from tiktoken_ext.openai_public import r50k_pat_str

    files = sorted(shared_path("webtext").glob("*.jsonl"))
    ranks_path = shared_path("gpt2", "r50k_base.tiktoken")
    enc = tiktoken.Encoding("floor", pat_str=r50k_pat_str, mergeable_ranks=load_tiktoken_bpe(str(ranks_path)),
                            special_tokens={"<|endoftext|>": 50256})
    texts = [json.loads(line)["text"] for f in files for line in open(f, encoding="utf-8") if line.strip()]
    total = sum(1 + len(enc.encode_ordinary(t)) for t in texts)
    # nearly the whole corpus: 10% validation, the rest training (less a margin for the truncated
    # remainder of validation's last document, which belongs to no split)
    val = total // 10
    track = local_track(files, val_tokens=val, train_tokens=total - val - 10_000,
                        tokenizer=TokenizerSpec(kind="gpt2", ranks_path=str(ranks_path)), seq_len=1024)

    def floor():
        for text in texts:
            enc.encode_ordinary(text)

    def prepare():
        out = tmp_path / "out"
        shutil.rmtree(out, ignore_errors=True)
        prepare_track(track, out, progress=False, log=lambda _: None)

    floor_s = best_time(floor, rounds=3)
    benchmark.pedantic(prepare, rounds=3, iterations=1)
    prepare_s = benchmark.stats.stats.min
    report(benchmark, "floor_tokens_per_s", total / floor_s, unit=" tok/s")
    report(benchmark, "prepare_tokens_per_s", total / prepare_s, unit=" tok/s")
    report(benchmark, "prepare_over_floor", prepare_s / floor_s, target=1.5)
