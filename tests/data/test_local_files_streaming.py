"""The local-files reader streams: the documents of a whole-file reading, without holding the file.

Expected documents come from reading each file whole here, with json/gzip/pyarrow directly, not from
the reader under test.
"""

from __future__ import annotations

import gzip
import json
import tracemalloc
from pathlib import Path

import pytest

from harness.data.local_files import LocalFilesSource
from harness.errors import DataError
from tests.conftest import shared_path


def whole_file_documents(path: Path, text_field: str = "text") -> list[tuple[str, str]]:
    """(text, origin) of every document, from the whole file read at once: the reference."""
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        raw = gzip.decompress(raw)
    text = raw.decode("utf-8")
    if text.lstrip().startswith("["):
        return [(row[text_field], f"{path}[{i}]") for i, row in enumerate(json.loads(text))]
    return [(json.loads(line)[text_field], f"{path}:{number}")
            for number, line in enumerate(text.split("\n"), start=1) if line.strip()]


def read(path: Path, text_field: str = "text") -> list[tuple[str, str]]:
    return [(d.content, d.origin) for d in LocalFilesSource((path,), text_field)]


@pytest.mark.parametrize("parts,field", [
    (("webtext", "webtext.test.jsonl"), "text"),
    (("webtext", "webtext.valid.jsonl"), "text"),
    (("c4", "olmo_c4-sample.01.json.gz"), "text"),
    (("c4", "dolma_cc_en_head-0091.jsonl"), "text"),
    (("downstream", "arc_easy", "ARC-Easy-test.jsonl"), "question"),
    (("downstream", "sciq", "sciq_test.json"), "question"),  # a JSON array: read whole, as before
])
def test_shared_files_give_the_whole_file_documents(parts, field):
    path = shared_path(*parts)
    expected = whole_file_documents(path, field)
    assert len(expected) >= 10
    assert read(path, field) == expected


ODD_TEXTS = ["plain", "", "line\nbreaks\r\nand\rreturns", "unicode \u2028 separator \u00e9\u4e2d\U0001f600",
             "  leading and trailing spaces  ", "x" * 70_000]


def write_lines(path: Path, texts, *, newline="\n", blank_every=0, compress=False) -> Path:
    lines = []
    for i, text in enumerate(texts):
        lines.append(json.dumps({"id": i, "text": text}, ensure_ascii=False))
        if blank_every and i % blank_every == 0:
            lines.append("   ")
    data = (newline.join(lines) + newline).encode("utf-8")
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.mark.parametrize("name,kwargs", [
    ("a.jsonl", {}),
    ("crlf.jsonl", {"newline": "\r\n"}),
    ("blanks.jsonl", {"blank_every": 2}),
    ("lines.json", {}),  # a .json file that is not an array is read as lines
    ("a.jsonl.gz", {"compress": True}),
    ("a.json.gz", {"compress": True, "blank_every": 3}),
])
def test_generated_line_files_give_the_whole_file_documents(tmp_path, name, kwargs):
    texts = ODD_TEXTS + [f"document {i} " * (i % 7) for i in range(300)]
    path = write_lines(tmp_path / name, texts, **kwargs)
    expected = whole_file_documents(path)
    assert [t for t, _ in expected] == texts
    assert read(path) == expected


@pytest.mark.parametrize("compress", [False, True])
def test_generated_json_array_is_read_whole_as_before(tmp_path, compress):
    data = ("\n  " + json.dumps([{"text": t} for t in ODD_TEXTS], ensure_ascii=False, indent=1)).encode()
    path = tmp_path / ("arr.json.gz" if compress else "arr.json")
    path.write_bytes(gzip.compress(data) if compress else data)
    assert read(path) == whole_file_documents(path) == [(t, f"{path}[{i}]") for i, t in enumerate(ODD_TEXTS)]


def test_generated_parquet_gives_every_row_in_order_across_row_groups(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [f"row {i} " + "w" * (i % 13) for i in range(5_000)] + ODD_TEXTS
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"id": list(range(len(texts))), "body": texts}), path, row_group_size=1_700)
    assert pq.ParquetFile(path).num_row_groups == 3  # groups straddle the reader's batches of rows
    assert read(path, "body") == [(t, f"{path}[row {i}]") for i, t in enumerate(texts)]


def test_invalid_utf8_names_the_line_and_the_byte_of_the_file(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [f"doc {i}" for i in range(20)])
    raw = bytearray(path.read_bytes())
    at = raw.index(b"doc 7")  # line 8
    raw[at] = 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=rf"bad\.jsonl:8: invalid UTF-8 \(byte {at}\)"):
        read(path)


def test_truncated_or_fake_gzip_is_named(tmp_path):
    good = gzip.compress(write_lines(tmp_path / "x.jsonl", [f"doc {i} " * 50 for i in range(2_000)]).read_bytes())
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"cut\.jsonl\.gz: not a valid gzip file"):
        read(cut)
    fake = tmp_path / "fake.jsonl.gz"
    fake.write_bytes(b'{"text": "not gzip"}\n')
    with pytest.raises(DataError, match=r"fake\.jsonl\.gz: not a valid gzip file"):
        read(fake)


# ---- memory: the file is never held ----------------------------------------------------------------
# Reading a file whole kept about six times its size (bytes, decoded text, a line buffer, the rows);
# reading it as a stream keeps one document. The bound, half the file, leaves room for neither.

def write_big_lines(path: Path, target_bytes: int, compress: bool = False) -> int:
    """About `target_bytes` of JSON lines (documents of a few KB); returns the uncompressed size."""
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    base = [" ".join(words[(i * 5 + j) % len(words)] for j in range(200 + 37 * i)) for i in range(8)]
    opener = gzip.open(path, "wb", compresslevel=1) if compress else open(path, "wb")
    written = 0
    with opener as handle:
        i = 0
        while written < target_bytes:
            line = (json.dumps({"id": i, "text": f"{i} {base[i % 8]}"}) + "\n").encode()
            handle.write(line)
            written += len(line)
            i += 1
    return written


def peak_python_memory_while_reading(path: Path) -> tuple[int, int]:
    tracemalloc.start()
    try:
        count = sum(1 for _ in LocalFilesSource((path,)))
        return count, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("name", ["big.jsonl", "big.jsonl.gz"])
def test_reading_a_50mb_line_file_holds_far_less_than_the_file(tmp_path, name):
    path = tmp_path / name
    size = write_big_lines(path, 50_000_000, compress=name.endswith(".gz"))
    count, peak = peak_python_memory_while_reading(path)
    assert count > 10_000
    assert peak < 0.5 * size, f"peak {peak / 1e6:.1f} MB while reading {size / 1e6:.1f} MB"


def test_reading_a_50mb_parquet_file_holds_one_row_group_not_the_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [f"{i} " + "lorem ipsum dolor sit amet " * (20 + i % 50) for i in range(60_000)]
    size = sum(len(t) for t in texts)
    path = tmp_path / "big.parquet"
    pq.write_table(pa.table({"text": texts}), path, row_group_size=2_000, compression="none")
    del texts
    assert size > 40_000_000 and pq.ParquetFile(path).num_row_groups == 30
    before = pa.total_allocated_bytes()
    peak = count = 0
    for _ in LocalFilesSource((path,)):
        peak = max(peak, pa.total_allocated_bytes() - before)
        count += 1
    assert count == 60_000
    assert peak < 0.5 * size, f"arrow held {peak / 1e6:.1f} MB while reading {size / 1e6:.1f} MB of text"
