"""Documents from local files: `.jsonl`, `.json` (array or lines), `.jsonl.gz`/`.json.gz`, `.parquet`, `.txt`.

This is the source the tests and offline studies use, and it goes through the same tokenizer and split
code as the FineWeb stream, so every rule of the official track is exercised on real text here.
Errors name the file and, for line formats, the 1-based line.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from harness.data.documents import Document
from harness.errors import DataError

SUPPORTED_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".parquet", ".txt")


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
        raw = path.read_bytes()
        if gz:
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError) as exc:
                raise DataError(f"{path}: not a valid gzip file ({exc})") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise DataError(f"{path}:{line}: invalid UTF-8 (byte {exc.start}); re-encode the file as UTF-8") from None
        if text.lstrip().startswith("["):
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
            for index, row in enumerate(rows):
                where = f"{path}[{index}]"
                yield Document(self._text_of(row, where), where)
            return
        for number, line in enumerate(io.StringIO(text), start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON ({exc.msg}); every line must be one JSON object") from None
            yield Document(self._text_of(row, where), where)

    def _txt(self, path: Path) -> Iterator[Document]:
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise DataError(f"{path}:{line}: invalid UTF-8 (byte {exc.start}); re-encode the file as UTF-8") from None
        if self.txt_separator is None:
            if text:
                yield Document(text, str(path))
            return
        for index, part in enumerate(text.split(self.txt_separator)):
            if part.strip():
                yield Document(part, f"{path}#{index}")

    def _parquet(self, path: Path) -> Iterator[Document]:
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
        for batch in table.iter_batches(columns=[self.text_field], batch_size=4096):
            for text in batch.column(0).to_pylist():
                where = f"{path}[row {row}]"
                if not isinstance(text, str):
                    raise DataError(f"{where}: column {self.text_field!r} is not a string")
                yield Document(text, where)
                row += 1
