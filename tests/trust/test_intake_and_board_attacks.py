"""What a submitter's bundle can put in front of `leaderboard add`, and what a record can put in
front of the board. Each is an attack that must be refused (or shown as the record says) without the
maintainer's tools hanging, crashing or reading outside the bundle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fsspec")

from harness.errors import LeaderboardError  # noqa: E402
from leaderboard.bundle import create_bundle, read_bundle  # noqa: E402


@pytest.fixture(autouse=True)
def needs_landlock():
    """(tests/trust's autouse fixture skips without Landlock; nothing here runs a method)"""


def _bundle(tmp_path: Path) -> Path:
    from tests.leaderboard.test_bundle import make_run

    method = tmp_path / "my_method"
    method.mkdir()
    (method / "method.toml").write_text('name = "my_method"\nentry = "train:main"\n')
    (method / "train.py").write_text("def main(ctx):\n    pass\n")
    runs = [make_run(tmp_path / "runs", method, 0, 3.01)]
    return create_bundle(runs, tmp_path / "bundle", weights_up_to=10**9).root


def test_a_fifo_in_a_bundles_method_folder_is_refused_before_anything_reads_it(tmp_path):
    """A FIFO (or a device node a tar archive extracted as root made) in the bundle's method folder: opening
    it to hash the folder would wait for ever and hang the maintainer's `add`. It is refused by lstat, never
    opened. Run in a child with a deadline so the suite does not hang if it is."""
    bundle = _bundle(tmp_path)
    os.mkfifo(bundle / "method" / "data.bin")
    try:
        read_bundle(bundle)
    except LeaderboardError:
        return  # refused: the guarantee holds
    code = ("import sys; from harness.formats.method_toml import method_hash; "
            f"print(method_hash(__import__('pathlib').Path({str(bundle / 'method')!r})))")
    try:
        subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2], timeout=20, capture_output=True)
    except subprocess.TimeoutExpired:
        pytest.fail("a bundle with a FIFO in its method folder was read as valid, and hashing its method folder "
                    "(what `leaderboard add BUNDLE` does) hung")


@pytest.mark.parametrize("files", [[], "x", 5, None], ids=["list", "string", "number", "null"])
def test_a_malformed_manifest_is_a_refusal_not_a_crash(tmp_path, files):
    bundle = _bundle(tmp_path)
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["files"] = files
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    try:
        read_bundle(bundle)
    except LeaderboardError:
        return
    pytest.fail("a manifest with malformed `files` was read as valid")


@pytest.mark.parametrize("path", ["../outside.txt", "/etc/passwd", "method/../../outside.txt"])
def test_a_listed_path_outside_the_bundle_is_refused_unread(tmp_path, path):
    bundle = _bundle(tmp_path)
    (tmp_path / "outside.txt").write_text("secret")
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["files"][path] = "sha256:" + "0" * 64
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(LeaderboardError, match="outside the bundle"):
        read_bundle(bundle)


def test_a_hidden_file_in_the_bundle_is_listed_or_refused(tmp_path):
    """Files the manifest does not list are refused, hidden ones too (they are what a method's hash skips)."""
    bundle = _bundle(tmp_path)
    (bundle / "method" / ".sneaky.py").write_text("import os\n")
    with pytest.raises(LeaderboardError, match="not listed"):
        read_bundle(bundle)


# ---------------------------------------------------------------- records on the board

XSS = '"><img src=x onerror=alert(1)>'


def test_hostile_record_text_cannot_leave_its_attribute_or_element(tmp_path):
    """Quotes, angle brackets and javascript: in every text a record carries end up as text: no raw
    `onerror=`, no `<img`, no `javascript:` link, in any page."""
    from leaderboard.site import build_site
    from tests.leaderboard.factory import make_record, write_board

    record = make_record(0, method__name=XSS, method__description="javascript:alert(1)", run_id="r-'\"<x>",
                         method__authors=[XSS, "javascript:alert(1)"])
    record["snapshots"][0]["tag"] = "javascript:alert(1)"
    record["snapshots"][0]["meta"] = {XSS: XSS, "url": "javascript:alert(1)"}
    write_board(tmp_path / "records", [record, make_record(1)], track_folder="t")
    build_site(tmp_path / "records", tmp_path / "site", workers=1)
    for page in (tmp_path / "site").rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert "<img" not in text and "onerror=alert" not in text.replace("onerror=alert(1)&gt;", ""), page
        assert 'href="javascript:' not in text and "href='javascript:" not in text, page


@pytest.mark.parametrize("name", ["=1+1", " =1+1", "\n=1+1", "＝1+1", "+1", "-1+1", "@SUM(1)", "\t=1", "\r=1",
                                  "=HYPERLINK(\"http://x\",\"y\")"])
def test_method_names_reach_the_csv_as_text(name):
    """records.csv: every name a spreadsheet could run is escaped; the ones it treats as text are unchanged."""
    import csv
    import io

    from harness.formats.records import record_to_json
    from leaderboard.collect import LoadedRecord
    from leaderboard.downloads import records_csv
    from leaderboard.naming import page_names
    from leaderboard.tables import build_tables
    from tests.leaderboard.factory import make_record

    record = make_record(0, method__name=name)
    loaded = [LoadedRecord(f"synthetic/{record['run_id']}.json", record, record_to_json(record))]
    rows = list(csv.DictReader(io.StringIO(records_csv(build_tables(loaded, page_names([loaded[0].relpath]))))))
    cell = rows[0]["method"]
    assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
