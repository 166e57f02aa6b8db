"""The entry and record pages show how each downstream task was scored; records from before these fields
still build, and show a dash (or no table) where they say nothing."""

from __future__ import annotations

import hashlib
from html.parser import HTMLParser
from pathlib import Path

from leaderboard.site import build_site
from tests.leaderboard.factory import make_record, write_board

DIGEST = {"piqa": hashlib.sha256(b"piqa config").hexdigest(), "sciq": hashlib.sha256(b"sciq config").hexdigest()}


class _Tables(HTMLParser):
    """Rows of the table that follows the heading `Downstream provenance`: cell texts and each cell's
    `title` attributes."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.rows: list[list[str]] = []
        self.titles: list[list[str]] = []
        self.headers: list[str] = []
        self._heading: list[str] | None = None
        self._armed = False
        self._in_table = False
        self._cell: list[str] | None = None
        self._titles: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("h2", "h3"):
            self._heading = []
        elif tag == "table" and self._armed:
            self._in_table, self._armed = True, False
        elif self._in_table and tag == "tr":
            self._row, self._row_titles = [], []
        elif self._in_table and tag in ("td", "th"):
            self._cell, self._titles = [], []
        if self._cell is not None and "title" in attrs:
            self._titles.append(attrs["title"])

    def handle_endtag(self, tag):
        if tag in ("h2", "h3") and self._heading is not None:
            self._armed = "".join(self._heading).strip() == "Downstream provenance"
            self._heading = None
        elif tag == "table" and self._in_table:
            self._in_table = False
        elif self._in_table and tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._row_titles.append(" ".join(self._titles))
            self._cell = None
        elif self._in_table and tag == "tr":
            if self._row and not self.headers:
                self.headers = self._row
            else:
                self.rows.append(self._row)
                self.titles.append(self._row_titles)

    def handle_data(self, data):
        if self._heading is not None:
            self._heading.append(data)
        if self._cell is not None:
            self._cell.append(data)


def provenance_table(page: Path) -> _Tables:
    parser = _Tables()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def with_provenance(record: dict, lm_eval: str = "0.4.13", shots: int = 0, seed=None) -> dict:
    record["downstream"]["piqa"].update(split="validation", split_rows=1838, published_rows=1838,
                                        source={"file": "piqa_validation.jsonl", "sha256": "sha256:" + "c" * 64})
    record["downstream"]["sciq"].update(split="test", split_rows=1000, published_rows=1000,
                                        source={"hub": "allenai/sciq", "name": None})
    for task in ("piqa", "sciq"):
        record["downstream"][task]["provenance"] = {"lm_eval": lm_eval, "config_sha256": DIGEST[task],
                                                    "num_fewshot": shots, "fewshot_seed": seed,
                                                    "padding_side": "right"}
    return record


def build(tmp_path, records) -> tuple[list[Path], list[Path]]:
    write_board(tmp_path / "records", records)
    report = build_site(tmp_path / "records", tmp_path / "site", workers=1)
    assert report.refused == () and report.skipped == (), report
    site = tmp_path / "site"
    return sorted((site / "e").glob("*.html")), sorted((site / "r").glob("*.html"))


HEADERS = ["Task", "lm_eval", "Config hash", "Shots", "Split", "Rows", "Padding side"]


def test_a_record_with_provenance_shows_it_on_its_entry_and_record_pages(tmp_path):
    entries, records = build(tmp_path, [with_provenance(make_record(0))])
    assert len(entries) == len(records) == 1
    for page in (entries[0], records[0]):
        table = provenance_table(page)
        assert table.headers == HEADERS, page
        assert table.rows == [
            ["piqa", "0.4.13", DIGEST["piqa"][:12], "0", "validation", "1,838", "right"],
            ["sciq", "0.4.13", DIGEST["sciq"][:12], "0", "test", "1,000", "right"],
        ]
        assert [titles[2] for titles in table.titles] == [DIGEST["piqa"], DIGEST["sciq"]]  # the whole digest


def test_an_old_record_without_provenance_still_builds_and_shows_no_table(tmp_path):
    record = make_record(0)  # downstream scores only: no split, no provenance
    assert all("provenance" not in s and "split" not in s for s in record["downstream"].values())
    entries, records = build(tmp_path, [record])
    for page in (entries[0], records[0]):
        text = page.read_text(encoding="utf-8")
        assert "Downstream provenance" not in text
        assert "piqa" in text  # its scores are still shown
    assert provenance_table(entries[0]).rows == []


def test_a_record_with_split_facts_but_no_provenance_shows_dashes(tmp_path):
    record = with_provenance(make_record(0))
    for score in record["downstream"].values():
        del score["provenance"]
    entries, records = build(tmp_path, [record])
    for page in (entries[0], records[0]):
        assert provenance_table(page).rows == [["piqa", "—", "—", "—", "validation", "1,838", "—"],
                                               ["sciq", "—", "—", "—", "test", "1,000", "—"]]


def test_seeds_scored_differently_are_told_apart_with_their_share_of_runs(tmp_path):
    first = with_provenance(make_record(0))
    second = with_provenance(make_record(1, method=first["method"], hparams=first["hparams"]), lm_eval="0.4.14",
                             shots=5, seed=1234)
    third = with_provenance(make_record(2, method=first["method"], hparams=first["hparams"]))
    entries, _ = build(tmp_path, [first, second, third])
    assert len(entries) == 1  # one entry of three seeds
    table = provenance_table(entries[0])
    assert table.headers == HEADERS + ["Runs"]
    assert table.rows == [
        ["piqa", "0.4.13", DIGEST["piqa"][:12], "0", "validation", "1,838", "right", "2 of 3"],
        ["piqa", "0.4.14", DIGEST["piqa"][:12], "5 (seed 1234)", "validation", "1,838", "right", "1 of 3"],
        ["sciq", "0.4.13", DIGEST["sciq"][:12], "0", "test", "1,000", "right", "2 of 3"],
        ["sciq", "0.4.14", DIGEST["sciq"][:12], "5 (seed 1234)", "test", "1,000", "right", "1 of 3"],
    ]


def test_the_record_pages_heading_says_how_many_shots_the_tasks_used(tmp_path):
    """The heading follows the record's provenance: a 5-shot run does not read "zero-shot"; a record without
    provenance was scored by the pinned zero-shot configurations."""
    _, zero = build(tmp_path / "zero", [with_provenance(make_record(0))])
    _, five = build(tmp_path / "five", [with_provenance(make_record(0), shots=5, seed=1234)])
    _, old = build(tmp_path / "old", [make_record(0)])
    assert "<h2>Downstream (zero-shot)</h2>" in zero[0].read_text(encoding="utf-8")
    assert "<h2>Downstream (5-shot)</h2>" in five[0].read_text(encoding="utf-8")
    assert "<h2>Downstream (zero-shot)</h2>" in old[0].read_text(encoding="utf-8")
