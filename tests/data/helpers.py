"""Small builders shared by the data tests."""

from __future__ import annotations

import dataclasses

from harness.rules.tracks import SourceSpec, TokenizerSpec, Track


def local_track(paths, *, val_tokens=2_000, train_tokens=6_000, tokenizer=None, seq_len=32, fitness_tokens=0,
                name="t", text_field="text") -> Track:
    return Track(
        name=name,
        description="test track",
        source=SourceSpec(kind="local", paths=tuple(str(p) for p in paths), text_field=text_field),
        tokenizer=tokenizer or TokenizerSpec(kind="byte-bpe", vocab_size=300),
        val_tokens=val_tokens,
        train_tokens=train_tokens,
        seq_len=seq_len,
        fitness_tokens=fitness_tokens,
    )


def with_changes(track: Track, **changes) -> Track:
    return dataclasses.replace(track, **changes)
