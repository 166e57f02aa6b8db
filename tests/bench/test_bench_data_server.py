"""The data server's throughput: 256 x 2048 training batches over its socket, against serving them in-process.

The baseline is the meter's own stream read in the same process (what every method got before the trust
boundary: the ledger and the stream reader in-process, int64 tensors). The server side is the real thing: a DataServer in this
process and a client in another process (`python -m tests.bench.test_bench_data_server ADDRESS TOKEN N`)
that asks for batches through the method's RunContext and widens them to int64 tensors, as a method sees
them. Reported: tokens/s of both and their ratio; the target is >= 100M tokens/s through the server (a
1.8B model on one H100 consumes about 35K tokens/s).

Run: pytest tests/bench/test_bench_data_server.py -m bench -s
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tests.bench.timing import best_time, in_process_stream, report

SEQ_LEN = 2048
BATCH = 256
TRAIN_TOKENS = 20_000_000
BATCHES = 60


def fake_prepared(folder: Path) -> Path:
    """A prepared-format training split of random GPT-2-sized token ids in documents of ~1,000 tokens."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50257, TRAIN_TOKENS, dtype=np.uint16)
    starts = np.arange(0, TRAIN_TOKENS, 997, dtype=np.int64)
    tokens[starts] = 50256
    tokens.tofile(folder / "train.tokens.bin")
    starts.tofile(folder / "train.docs.bin")
    manifest = {"format": "slowrun-prepared/1", "dtype": "uint16",
                "tokenizer": {"kind": "gpt2", "bos_id": 50256, "vocab_size": 50257},
                "splits": {"train": {"tokens": TRAIN_TOKENS, "documents": int(starts.size),
                                     "tokens_file": "train.tokens.bin", "docs_file": "train.docs.bin"}},
                "fitness": {"documents": 0, "tokens": 0}, "seq_len": SEQ_LEN}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def client(address: str, token: str, batches: int) -> float:
    """Connect as rank 0, take `batches` batches through the RunContext, return tokens/s."""
    from harness.confined.context import RunContext
    from harness.wire.framing import Channel
    from harness.confined.method_process import connect

    channel = Channel(connect(address))
    channel.send({"op": "hello", "token": token, "rank": 0, "pid": os.getpid()})
    reply, _ = channel.recv()
    ctx = RunContext(channel, reply["run"])
    stream = ctx.train_stream("bench", BATCH)
    next(stream)  # the first epoch's document order is built here, not timed
    start = time.perf_counter()
    for _ in range(batches):
        inputs, targets = next(stream)
    elapsed = time.perf_counter() - start
    assert inputs.shape == (BATCH, SEQ_LEN)
    return batches * BATCH * SEQ_LEN / elapsed


def test_data_server_throughput(benchmark, tmp_path):
    from harness.data.store import TokenStore
    from harness.server import DataServer, ServerSpec
    from harness.rules.tracks import get_track

    data = fake_prepared(tmp_path / "data")
    track = dataclasses.replace(get_track("synthetic"), seq_len=SEQ_LEN)

    store = TokenStore.open(data, "train")
    next_batch = in_process_stream(store, SEQ_LEN, BATCH)
    next_batch()

    def in_process():
        for _ in range(BATCHES):
            next_batch()

    local = BATCHES * BATCH * SEQ_LEN / best_time(in_process)

    rates = []
    for round_ in range(3):
        server = DataServer(ServerSpec(run_dir=tmp_path / f"run{round_}", data_dir=data, track=track,
                                       budget=1000.0, seed=0, hparams={}, device="cpu",
                                       method_dir=tmp_path, entry="train:main", fitness_docs=0, progress=False))
        address = server.start()
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        out = subprocess.run([sys.executable, "-m", "tests.bench.test_bench_data_server", address, server.token,
                              str(BATCHES)], env=env, capture_output=True, text=True, check=True)
        server.stop()
        rates.append(float(out.stdout.strip().splitlines()[-1]))
    remote = max(rates)
    benchmark.pedantic(lambda: None, rounds=1)
    report(benchmark, "in-process stream (M tokens/s)", local / 1e6, unit="")
    report(benchmark, "data server, other process (M tokens/s)", remote / 1e6, target=100, unit="")
    report(benchmark, "server / in-process", remote / local)
    assert remote >= 100e6, f"the data server serves {remote / 1e6:.0f}M tokens/s, below the 100M target"


if __name__ == "__main__":
    print(client(sys.argv[1], sys.argv[2], int(sys.argv[3])))
