"""FineWeb streamed in order through `datasets`: the official track's source.

The Hub is the only place this data lives, so this module is deliberately thin: everything after the
stream (tokenizer, split rules, writing, hashing) is shared with the local-files source and tested there.
`data_files` streams local parquet/JSON files through the very same `datasets` streaming path, which is
how the code below is exercised without the Hub.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from harness.data.documents import Document
from harness.errors import DataError


@dataclass(frozen=True)
class FinewebSource:
    dataset: str = "HuggingFaceFW/fineweb"
    config: str = "sample-10BT"
    split: str = "train"
    text_field: str = "text"
    data_files: tuple[str, ...] = ()

    def describe(self) -> dict:
        return {
            "kind": "fineweb",
            "dataset": self.dataset,
            "config": self.config,
            "split": self.split,
            "text_field": self.text_field,
            "data_files": [str(f).rsplit("/", 1)[-1] for f in self.data_files],
        }

    def _stream(self):
        import datasets

        if self.data_files:
            builder = "parquet" if str(self.data_files[0]).endswith(".parquet") else "json"
            return datasets.load_dataset(builder, data_files=list(self.data_files), split="train", streaming=True)
        return datasets.load_dataset(self.dataset, name=self.config, split=self.split, streaming=True)

    def __iter__(self) -> Iterator[Document]:
        try:
            stream = self._stream()
        except Exception as exc:  # network, auth and missing-config errors all land here
            raise DataError(
                f"cannot stream {self.dataset} ({self.config}): {exc}. "
                "The official track needs access to the Hugging Face Hub (or pass local files with --source)."
            ) from None
        for index, row in enumerate(stream):
            where = f"{self.dataset}/{self.config}[{index}]"
            text = row.get(self.text_field)
            if not isinstance(text, str):
                raise DataError(f"{where}: missing or non-string field {self.text_field!r}")
            yield Document(text, where)
