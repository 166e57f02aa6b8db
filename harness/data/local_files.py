"""Documents from local files: `.jsonl`, `.json` (array or lines), `.jsonl.gz`/`.json.gz`, `.parquet`, `.txt`.

This is the source the tests and offline studies use, and it goes through the same tokenizer and split
code as the FineWeb stream, so every rule of the official track is exercised on real text here.
Errors name the file and, for line formats, the 1-based line.

Line formats (`.jsonl`, `.jsonl.gz`, and `.json` files that are not an array) are read one line at a time
and parquet one row group at a time, so memory holds the document being read, not the file: reading a
file whole kept about six times its size (raw bytes, decoded text, a line buffer, the parsed rows).
Preparation stops reading once its splits are full. Only a `.json` array is read whole (json cannot
parse one in pieces) and a `.txt` file, which is one document or is split by a separator.
"""

from __future__ import annotations

import glob
import gzip
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, TypeVar

from harness.data.documents import Document
from harness.errors import DataError

SUPPORTED_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".parquet", ".txt")
PARQUET_BATCH_ROWS = 1024  # rows turned into Python strings at a time, within one row group
JSON_WHITESPACE = b" \t\n\r"
_T = TypeVar("_T")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def expand_paths(patterns: tuple[str, ...] | list[str], root: Path | None = None) -> list[Path]:
    """Glob each pattern (relative ones against `root`), keeping pattern order and sorting within a pattern.

    A pattern that matches nothing is an error: silently reading fewer files would change the data.
    """
    paths: list[Path] = []
    for pattern in patterns:
        full = Path(pattern) if root is None or Path(pattern).is_absolute() else root / pattern
        matches = sorted(Path(p) for p in glob.glob(str(full)))
        if not matches:
            raise DataError(f"{full}: no such file (check the --source path or pattern)")
        for path in matches:
            if path.is_dir():
                raise DataError(f"{path}: is a folder; give the data files inside it (e.g. {path}/*.jsonl)")
            if _suffix(path) not in SUPPORTED_SUFFIXES:
                raise DataError(
                    f"{path}: unsupported file type; use one of {', '.join(SUPPORTED_SUFFIXES)}"
                )
            paths.append(path)
    return paths


@dataclass(frozen=True)
class LocalFilesSource:
    """Documents from files, in the order given; `text_field` names the JSON/parquet column with the text.

    `.txt` files are one document each unless `txt_separator` is set (e.g. "\\n\\n" for blank-line separated
    documents).
    """

    paths: tuple[Path, ...]
    text_field: str = "text"
    txt_separator: str | None = None

    def describe(self) -> dict:
        return {
            "kind": "local",
            "files": [p.name for p in self.paths],
            "text_field": self.text_field,
            "txt_separator": self.txt_separator,
        }

    def __iter__(self) -> Iterator[Document]:
        for path in self.paths:
            if not path.exists():
                raise DataError(f"{path}: no such file")
            suffix = _suffix(path)
            if suffix == ".parquet":
                yield from self._parquet(path)
            elif suffix == ".txt":
                yield from self._txt(path)
            else:
                yield from self._json(path, gz=suffix.endswith(".gz"))

    def _text_of(self, record: object, where: str) -> str:
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object with a {self.text_field!r} field")
        if self.text_field not in record:
            raise DataError(
                f"{where}: missing text field {self.text_field!r} "
                f"(fields: {', '.join(map(str, record.keys())) or 'none'}; set --text-field)"
            )
        text = record[self.text_field]
        if not isinstance(text, str):
            raise DataError(f"{where}: field {self.text_field!r} is {type(text).__name__}, not a string")
        return text

    def _json(self, path: Path, gz: bool) -> Iterator[Document]:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as handle:
            if _first_byte(handle, path, gz) == b"[":
                yield from self._json_array(_read(handle.read, path, gz), path)
            else:
                yield from self._json_lines(handle, path, gz)

    def _json_array(self, raw: bytes, path: Path) -> Iterator[Document]:
        """A JSON array, the one format read whole: json cannot parse it row by row."""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(_utf8_message(path, raw[: exc.start].count(b"\n") + 1, exc.start)) from None
        del raw
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        for index, row in enumerate(rows):
            where = f"{path}[{index}]"
            yield Document(self._text_of(row, where), where)

    def _json_lines(self, handle: BinaryIO, path: Path, gz: bool) -> Iterator[Document]:
        """One JSON object per line, read line by line (blank lines skipped)."""
        offset = 0  # bytes before this line, so a UTF-8 error names the same byte as in the whole file
        for number, raw in enumerate(iter(lambda: _read(handle.readline, path, gz), b""), start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(_utf8_message(path, number, offset + exc.start)) from None
            offset += len(raw)
            del raw
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON ({exc.msg}); every line must be one JSON object") from None
            del line
            yield Document(self._text_of(row, where), where)

    def _txt(self, path: Path) -> Iterator[Document]:
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(_utf8_message(path, raw[: exc.start].count(b"\n") + 1, exc.start)) from None
        del raw
        if self.txt_separator is None:
            if text:
                yield Document(text, str(path))
            return
        for index, part in enumerate(text.split(self.txt_separator)):
            if part.strip():
                yield Document(part, f"{path}#{index}")

    def _parquet(self, path: Path) -> Iterator[Document]:
        """The text column, one row group at a time, turned into Python strings a batch of rows at a time."""
        import pyarrow.parquet as pq

        try:
            table = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises several types for a corrupt file
            raise DataError(f"{path}: not a readable parquet file ({exc})") from None
        if self.text_field not in table.schema_arrow.names:
            raise DataError(
                f"{path}: missing text column {self.text_field!r} "
                f"(columns: {', '.join(table.schema_arrow.names)}; set --text-field)"
            )
        row = 0
        for group in range(table.num_row_groups):
            try:
                column = table.read_row_group(group, columns=[self.text_field]).column(0)
            except Exception as exc:
                raise DataError(f"{path}: row group {group} is not readable ({exc})") from None
            for start in range(0, len(column), PARQUET_BATCH_ROWS):
                for text in column.slice(start, PARQUET_BATCH_ROWS).to_pylist():
                    where = f"{path}[row {row}]"
                    if not isinstance(text, str):
                        raise DataError(f"{where}: column {self.text_field!r} is not a string")
                    yield Document(text, where)
                    row += 1
            del column


def _utf8_message(path: Path, line: int, byte: int) -> str:
    return f"{path}:{line}: invalid UTF-8 (byte {byte}); re-encode the file as UTF-8"


def _read(read: Callable[[], _T], path: Path, gz: bool) -> _T:
    """One read from a file; a gzip stream that turns out corrupt or cut short is the file's fault, named."""
    try:
        return read()
    except (OSError, EOFError, zlib.error) as exc:
        if gz:
            raise DataError(f"{path}: not a valid gzip file ({exc})") from None
        raise


def _first_byte(handle: BinaryIO, path: Path, gz: bool) -> bytes:
    """The first byte that is not JSON whitespace (b"" for none), then rewind: "[" means a JSON array."""
    while True:
        chunk = _read(lambda: handle.read(4096), path, gz)
        stripped = chunk.lstrip(JSON_WHITESPACE)
        if stripped or not chunk:
            _read(lambda: handle.seek(0), path, gz)
            return stripped[:1]
