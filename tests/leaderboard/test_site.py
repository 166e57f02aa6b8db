"""Building the static site: rankings, separate data hashes, skipped files, escaping, identical bytes."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import shutil
from pathlib import Path

import pytest

from harness.errors import LeaderboardError
from leaderboard import plots
from leaderboard.site import build_site
from tests.leaderboard.factory import DATA_HASH, OTHER_DATA_HASH, failed_record, make_record, write_board
from tests.leaderboard.html_tables import parse_boards

XSS = "<script>alert(1)</script>"


def tree_digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def shuffled_losses(count: int, seed: int = 0) -> list[float]:
    losses = [3.0 + 0.0137 * i for i in range(count)]
    random.Random(seed).shuffle(losses)
    return losses


def board_records() -> list[dict]:
    """Five ok runs in shuffled loss order, a failed and a diverged run, and one run on other data."""
    records = []
    for index, loss in enumerate(shuffled_losses(5)):
        records.append(make_record(index, result__val_loss=loss, method__name=f"m{index}"))
    records.append(failed_record(10, method__name="crashed"))
    records.append(failed_record(11, status="diverged", method__name="blew-up"))
    records.append(make_record(12, method__name="elsewhere", track__data_hash=OTHER_DATA_HASH))
    return records


def test_tables_rank_by_val_loss_and_list_other_statuses_below(tmp_path):
    records = board_records()
    write_board(tmp_path / "records", records)
    report = build_site(tmp_path / "records", tmp_path / "site", workers=1)
    assert report.record_count == len(records) and report.skipped == ()

    boards = parse_boards((tmp_path / "site" / "index.html").read_text(encoding="utf-8"))
    main = next(b for b in boards if DATA_HASH[:12] in b.title)
    expected = [r["method"]["name"] for r in sorted(records[:5], key=lambda r: r["result"]["val_loss"])]
    assert main.column("Method") == expected
    assert main.column("Rank") == ["1", "2", "3", "4", "5"]
    assert main.column("Val loss") == [f"{r['result']['val_loss']:.4f}" for r in
                                                    sorted(records[:5], key=lambda r: r["result"]["val_loss"])]
    # failed / diverged rows: below, unranked, badged
    assert sorted(main.column("Method", "unranked")) == ["blew-up", "crashed"]
    assert main.column("Rank", "unranked") == ["—", "—"]
    assert sorted(main.column("Status", "unranked")) == ["diverged", "failed"]


def test_different_data_hashes_are_separate_tables_with_hash_in_title(tmp_path):
    write_board(tmp_path / "records", board_records())
    build_site(tmp_path / "records", tmp_path / "site", workers=1)
    boards = parse_boards((tmp_path / "site" / "index.html").read_text(encoding="utf-8"))
    assert len(boards) == 2
    titles = sorted(b.title for b in boards)
    assert titles == [f"synthetic · tiny data {DATA_HASH[:12]}", f"synthetic · tiny data {OTHER_DATA_HASH[:12]}"]
    other = next(b for b in boards if OTHER_DATA_HASH[:12] in b.title)
    assert other.column("Method") == ["elsewhere"] and other.column("Rank") == ["1"]


def test_equal_losses_share_a_rank(tmp_path):
    records = [make_record(i, result__val_loss=loss) for i, loss in enumerate([3.2, 3.1, 3.2, 3.3])]
    write_board(tmp_path / "records", records)
    build_site(tmp_path / "records", tmp_path / "site", workers=1)
    board = parse_boards((tmp_path / "site" / "index.html").read_text(encoding="utf-8"))[0]
    assert board.column("Rank") == ["1", "2", "2", "4"]


def test_columns_show_efficiency_bounds_and_compute_and_the_rest_is_on_the_entry_page(tmp_path):
    records = [
        make_record(0, result__data_efficiency={"multiplier": None, "bound": ">20×", "flag": "below-table"}),
        make_record(1, downstream=None),
    ]
    write_board(tmp_path / "records", records)
    build_site(tmp_path / "records", tmp_path / "site", workers=1)
    board = parse_boards((tmp_path / "site" / "index.html").read_text(encoding="utf-8"))[0]
    # single runs: no interval column; sandboxed runs scored from graphs: no status column; the rest moved
    assert board.headers == ["Rank", "Method", "Val loss", "n", "Data efficiency", "Epochs", "Training time",
                             "Hardware", "Date", "Provenance"]
    assert board.column("Data efficiency") == [">20× ⚑", "2.49×"]
    assert board.column("n") == ["1", "1"]  # not "1 (n=1)"
    assert board.column("Hardware") == ["1×CPU", "1×CPU"]  # old records: world size × device
    assert board.column("Training time") == ["2.0 min", "2.0 min"]
    assert board.column("Epochs") == ["8.00", "8.00"]
    assert board.column("Date") == ["2025-01-01", "2025-01-01"]

    entry_page = next(p for p in (tmp_path / "site" / "e").glob("*.html")
                      if "method-0" in p.read_text(encoding="utf-8"))
    text = entry_page.read_text(encoding="utf-8")
    average = (records[0]["downstream"]["piqa"]["acc"] + records[0]["downstream"]["sciq"]["acc"]) / 2
    assert f"<td>{average * 100:.1f}</td>" in text  # downstream average acc, percent
    piqa = records[0]["downstream"]["piqa"]
    assert f"<td>{piqa['acc'] * 100:.1f} / {piqa['acc_norm'] * 100:.1f}</td>" in text
    assert "<td>2</td>" in text  # ensemble K
    assert f"<td>{records[0]['result']['val_bpb']:.4f}</td>" in text
    assert "at least the bound" in (tmp_path / "site" / "index.html").read_text(encoding="utf-8")  # the ⚑ tooltip


def test_bad_files_are_reported_and_skipped_without_breaking_the_build(tmp_path):
    records_dir = tmp_path / "records"
    write_board(records_dir, [make_record(0), make_record(1)])
    (records_dir / "synthetic" / "truncated.json").write_text('{"schema_version": 1, "run_id": ')
    (records_dir / "synthetic" / "binary.json").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    (records_dir / "synthetic" / "wrong.json").write_text(json.dumps(make_record(2, seed="x")))
    duplicate = make_record(1)
    (records_dir / "zz-duplicate.json").write_text(json.dumps(duplicate))

    report = build_site(records_dir, tmp_path / "site", workers=1)
    assert report.record_count == 2
    skipped = {item.relpath for item in report.skipped}
    assert skipped == {"synthetic/truncated.json", "synthetic/binary.json", "synthetic/wrong.json",
                       "zz-duplicate.json"}
    text = (tmp_path / "site" / "build-report.txt").read_text(encoding="utf-8")
    for name in skipped:
        assert f"- {name}" in text
    assert "seed: expected an integer" in text and "not valid JSON" in text and "already on the board" in text
    assert str(tmp_path) not in text  # paths are relative: the report does not depend on where records live
    index = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert "4 files skipped" in index and "synthetic/wrong.json" in index


def test_banner_shows_newest_record_time_not_the_clock(tmp_path):
    records = [make_record(i) for i in (3, 40, 7)]
    write_board(tmp_path / "records", records)
    report = build_site(tmp_path / "records", tmp_path / "site", workers=1)
    newest = max(r["created"] for r in records)  # same format throughout, so text order is time order
    assert report.last_update == newest
    index = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert f"Last update: {newest}" in index and "Record schema v3" in index


def test_same_records_give_identical_bytes(tmp_path, monkeypatch):
    records = board_records()
    write_board(tmp_path / "a", records)
    # same content, written in another order, in another place
    write_board(tmp_path / "elsewhere" / "b", list(reversed(records)))
    build_site(tmp_path / "a", tmp_path / "site1", workers=1)
    build_site(tmp_path / "elsewhere" / "b", tmp_path / "site2", workers=1, plot_cache=tmp_path / "cache")
    build_site(tmp_path / "a", tmp_path / "site3", workers=1, plot_cache=tmp_path / "cache")  # from cache
    monkeypatch.setattr(plots, "PARALLEL_MIN_PLOTS", 1)
    build_site(tmp_path / "a", tmp_path / "site4", workers=2)  # in worker processes
    build_site(tmp_path / "a", tmp_path / "site1", workers=1)  # rebuild in place
    first = tree_digest(tmp_path / "site1")
    assert len(first) > 10
    for other in ("site2", "site3", "site4"):
        assert tree_digest(tmp_path / other) == first, other


def test_record_strings_are_escaped_everywhere(tmp_path):
    record = make_record(0, method__name=XSS, method__description=f'"{XSS}', run_id=f"../../{XSS}",
                         track__name=f"t{XSS}", hparams={XSS: XSS}, status="failed", result=None,
                         error={"type": XSS, "message": XSS, "traceback": XSS})
    record["snapshots"][0]["tag"] = XSS
    record["snapshots"][0]["meta"] = {"note": XSS}
    record["ensemble"]["members"] = [{"tag": XSS, "weight": 1.0}]
    record["compute"].update({"class": XSS, "hardware": {"gpu_model": XSS, "gpus_per_node": 8, "nodes": 1,
                                                         "gpu_hours": None}})
    record["unranked_reasons"] = [XSS]
    write_board(tmp_path / "records", [record, make_record(1)], track_folder="t")
    report = build_site(tmp_path / "records", tmp_path / "site", workers=1)
    assert report.skipped == ()
    html_files = list((tmp_path / "site").rglob("*.html"))
    assert len(html_files) == 7  # index, 2 table pages, 2 entry pages, 2 record pages
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    for path in html_files:
        text = path.read_text(encoding="utf-8")
        assert "<script>alert" not in text, path
        assert text.count("<script") == 1  # only the site's own sorter
    index = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert escaped in index
    page = next(p for p in html_files if p.parent.name == "r" and escaped in p.read_text(encoding="utf-8"))
    assert page.resolve().parent == (tmp_path / "site" / "r").resolve()  # the run id did not escape r/
    assert all(p.resolve().is_relative_to((tmp_path / "site").resolve()) for p in (tmp_path / "site").rglob("*"))


def test_record_page_has_configuration_plots_and_provenance(tmp_path):
    record = make_record(0, hparams={"lr": 0.0123, "width": 96})
    write_board(tmp_path / "records", [record])
    build_site(tmp_path / "records", tmp_path / "site", workers=1)
    pages = list((tmp_path / "site" / "r").glob("*.html"))
    assert len(pages) == 1
    page = pages[0].read_text(encoding="utf-8")
    assert page.count("<svg") == 2 and "<?xml" not in page
    assert "&#34;lr&#34;: 0.0123" in page and record["method"]["hash"] in page and DATA_HASH in page
    for snapshot in record["snapshots"]:
        assert f"<td>{snapshot['tag']}</td>" in page
    assert record["environment"]["git_commit"] in page and "synthetic/run-00000.json" in page
    published = json.loads(pages[0].with_suffix(".json").read_text(encoding="utf-8"))
    assert published == record


def test_record_without_curves_gets_no_plots(tmp_path):
    record = failed_record(0, curve=[], snapshots=[], ensemble={"members": [], "source": "last"})
    write_board(tmp_path / "records", [record])
    build_site(tmp_path / "records", tmp_path / "site", workers=1)
    page = next((tmp_path / "site" / "r").glob("*.html")).read_text(encoding="utf-8")
    assert "<svg" not in page and "No validation losses against epochs" in page


def test_downloads_hold_every_record_in_board_order(tmp_path):
    records = board_records()
    write_board(tmp_path / "records", records)
    build_site(tmp_path / "records", tmp_path / "site", workers=1)
    rows = list(csv.DictReader(io.StringIO((tmp_path / "site" / "records.csv").read_text(encoding="utf-8"))))
    assert len(rows) == len(records)
    by_run = {r["run_id"]: r for r in records}
    for row in rows:
        source = by_run[row["run_id"]]
        if source["result"]:
            assert float(row["val_loss"]) == source["result"]["val_loss"]
        else:
            assert row["val_loss"] == "" and row["rank"] == ""
    ranked = [row for row in rows if row["track"] == "synthetic" and row["data_hash"] == DATA_HASH and row["rank"]]
    assert [int(r["rank"]) for r in ranked] == [1, 2, 3, 4, 5]
    document = json.loads((tmp_path / "site" / "records.json").read_text(encoding="utf-8"))
    assert document["schema_version"] == 3  # the harness's version; the records inside keep their own
    assert sorted(e["record"]["run_id"] for e in document["records"]) == sorted(by_run)
    assert all(e["record"] == by_run[e["record"]["run_id"]] for e in document["records"])


def test_build_refuses_to_replace_a_folder_it_did_not_make(tmp_path):
    write_board(tmp_path / "records", [make_record(0)])
    precious = tmp_path / "docs"
    precious.mkdir()
    (precious / "thesis.tex").write_text("keep me")
    with pytest.raises(LeaderboardError, match="did not make"):
        build_site(tmp_path / "records", precious, workers=1)
    assert [p.name for p in precious.iterdir()] == ["thesis.tex"]


def test_missing_records_folder_is_a_clear_error(tmp_path):
    with pytest.raises(LeaderboardError, match="does not exist"):
        build_site(tmp_path / "nowhere", tmp_path / "site", workers=1)


def test_a_failed_build_keeps_the_previous_site(tmp_path, monkeypatch):
    write_board(tmp_path / "records", [make_record(0)])
    build_site(tmp_path / "records", tmp_path / "site", workers=1)
    before = tree_digest(tmp_path / "site")
    write_board(tmp_path / "records", [make_record(1)])

    def broken(*args, **kwargs):
        raise RuntimeError("disk trouble")

    monkeypatch.setattr("leaderboard.site.records_csv", broken)
    with pytest.raises(RuntimeError):
        build_site(tmp_path / "records", tmp_path / "site", workers=1)
    assert tree_digest(tmp_path / "site") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["records", "site"]  # no staging left behind


def test_empty_board_builds(tmp_path):
    (tmp_path / "records").mkdir()
    report = build_site(tmp_path / "records", tmp_path / "site", workers=1)
    assert report.record_count == 0
    assert "No valid records yet" in (tmp_path / "site" / "index.html").read_text(encoding="utf-8")


def test_static_assets_are_shipped(tmp_path):
    (tmp_path / "records").mkdir()
    build_site(tmp_path / "records", tmp_path / "site", workers=1)
    from leaderboard.render import STATIC_DIR

    for asset in STATIC_DIR.iterdir():
        assert (tmp_path / "site" / "static" / asset.name).read_bytes() == asset.read_bytes()
    shutil.rmtree(tmp_path / "site")


@pytest.mark.parametrize("out", ["records/site", "."])
def test_output_and_records_folders_must_not_overlap(tmp_path, out):
    write_board(tmp_path / "records", [make_record(0)])
    with pytest.raises(LeaderboardError, match="overlap"):
        build_site(tmp_path / "records", tmp_path / out, workers=1)
    assert sorted(p.name for p in (tmp_path / "records").rglob("*")) == ["run-00000.json", "synthetic"]


def test_tracks_whose_names_clean_up_alike_get_distinct_anchors(tmp_path):
    write_board(tmp_path / "records", [make_record(0, track__name="a b"), make_record(1, track__name="a_b")])
    build_site(tmp_path / "records", tmp_path / "site", workers=1)
    boards = parse_boards((tmp_path / "site" / "index.html").read_text(encoding="utf-8"))
    assert len(boards) == 2 and boards[0].section_id != boards[1].section_id


def test_record_page_shows_downstream_data_efficiency(tmp_path):
    record = make_record(0)
    record["downstream_efficiency"] = {
        "piqa/acc": {"score": 0.55, "multiplier": 3.0, "bound": None, "flag": None},
        "sciq/acc": {"score": 0.9, "multiplier": None, "bound": ">4x", "flag": "below-table"}}
    write_board(tmp_path / "records", [record])
    build_site(tmp_path / "records", tmp_path / "site", workers=1)
    page = next((tmp_path / "site" / "r").glob("*.html")).read_text(encoding="utf-8")
    assert "Downstream data efficiency" in page
    assert "<td>piqa/acc</td>" in page and ">3.00x<" in page and "&gt;4x" in page


def test_runs_without_the_sandbox_carry_a_badge(tmp_path):
    records = [make_record(0, sandbox={"kind": "landlock", "abi": 7}),
               make_record(1, sandbox={"kind": "none", "reason": "Landlock is unavailable"}),
               make_record(2)]
    del records[2]["sandbox"]  # a record from before the sandbox: no field, so it ran unconfined
    write_board(tmp_path / "records", records)
    build_site(tmp_path / "records", tmp_path / "site", workers=1)
    board = parse_boards((tmp_path / "site" / "index.html").read_text(encoding="utf-8"))[0]
    assert board.column("Status") == ["", "unsandboxed", "unsandboxed"]
    assert board.column("Provenance") == ["measured"] * 3
    pages = sorted((tmp_path / "site" / "r").glob("*.html"))
    badges = sorted("unsandboxed" in page.read_text(encoding="utf-8") for page in pages)
    assert badges == [False, True, True]


def test_runs_missing_a_closed_sandbox_guarantee_say_which(tmp_path):
    """Where the kernel gave no network or PID namespace (or the run spanned nodes) the record says `host`,
    and the board names the guarantee the run went without; a record from before the network was
    recorded gets no such badge."""
    closed = {"kind": "landlock", "abi": 7, "network": {"kind": "private", "interfaces": ["lo"], "processes": "private"}}
    open_net = {"kind": "landlock", "abi": 7, "network": {"kind": "host", "interfaces": ["lo", "eth0"],
                                                          "processes": "private"}}
    neither = {"kind": "landlock", "abi": 7, "network": {"kind": "host", "interfaces": ["lo", "eth0"],
                                                         "processes": "host"}}
    records = [make_record(0, sandbox=closed), make_record(1, sandbox=open_net), make_record(2, sandbox=neither),
               make_record(3, sandbox={"kind": "landlock", "abi": 7})]
    write_board(tmp_path / "records", records)
    build_site(tmp_path / "records", tmp_path / "site", workers=1)
    board = parse_boards((tmp_path / "site" / "index.html").read_text(encoding="utf-8"))[0]
    assert sorted(board.column("Status")) == sorted(["", "host network", "host network host processes", ""])
    pages = {page.read_text(encoding="utf-8").count('class="badge sandbox-gap"') for page in
             (tmp_path / "site" / "r").glob("*.html")}
    assert pages == {0, 1, 2}


def test_runs_scored_by_method_code_say_so(tmp_path):
    """A record whose snapshots were scored by the method's own code (every version 1 record, and a
    snapshot without a graph) carries a *method code* badge; one scored from exported graphs does not."""
    graph = make_record(0)
    mixed = make_record(1)
    mixed["snapshots"][2]["evaluated_by"] = "method code"
    old = make_record(2, schema_version=1)
    for row in old["snapshots"]:
        del row["evaluated_by"]
    write_board(tmp_path / "records", [graph, mixed, old])
    build_site(tmp_path / "records", tmp_path / "site", workers=1)
    board = parse_boards((tmp_path / "site" / "index.html").read_text(encoding="utf-8"))[0]
    assert board.column("Status") == ["", "method code", "method code"]


def test_the_board_can_show_only_entries_evaluated_from_graphs(tmp_path):
    """Rows scored by method code carry a marker that the checkbox's stylesheet rule hides; a board whose
    entries were all scored from graphs offers no such view."""
    graph, mixed = make_record(0, method__name="graphs"), make_record(1, method__name="mixed")
    mixed["snapshots"][0]["evaluated_by"] = "method code"
    write_board(tmp_path / "records", [graph, mixed])
    build_site(tmp_path / "records", tmp_path / "site", workers=1)
    html = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    rows = {row.split('href="e/')[1].split(".html")[0]: row for row in html.split("<tr")[1:] if 'href="e/' in row}
    assert len(rows) == 2
    marked = [page for page, row in rows.items() if "data-method-code" in row.split(">")[0]]
    assert len(marked) == 1 and "mixed" in rows[marked[0]] and "method code" in rows[marked[0]]
    assert 'id="graph-only"' in html
    css = (tmp_path / "site" / "static" / "style.css").read_text(encoding="utf-8")
    assert "body:has(#graph-only:checked) tr[data-method-code] { display: none; }" in css

    write_board(tmp_path / "only-graphs", [make_record(0, method__name="graphs")])
    build_site(tmp_path / "only-graphs", tmp_path / "site2", workers=1)
    assert 'id="graph-only"' not in (tmp_path / "site2" / "index.html").read_text(encoding="utf-8")
