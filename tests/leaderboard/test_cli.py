"""The `leaderboard` commands: wiring on any argparse parser, output, and exit codes on bad input."""

from __future__ import annotations

import argparse

from harness.formats.records import write_record_atomic
from leaderboard.cli import add_subcommands, main
from tests.leaderboard.factory import make_record


def test_commands_register_on_a_host_parser():
    parser = argparse.ArgumentParser(prog="slowrun")
    add_subcommands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["leaderboard", "publish", "--to", "hf-space", "a/b", "--dry-run"])
    assert args.to == ["hf-space", "a/b"] and args.dry_run and callable(args.func)
    args = parser.parse_args(["leaderboard", "add", "runs/x", "--known-tracks", "t=1", "u=2", "--new-track"])
    assert args.known_tracks == ["t=1", "u=2"] and args.new_track and args.run_dir == "runs/x"
    args = parser.parse_args(["leaderboard", "build"])
    assert args.records.endswith("records") and args.out == "site" and not args.no_plot_cache


def test_add_build_publish_round_trip(tmp_path, capsys):
    write_record_atomic(tmp_path / "run" / "record.json", make_record(0, track__name="lab"))  # no official data
    records, site, pages = tmp_path / "records", tmp_path / "site", tmp_path / "pages"
    assert main(["leaderboard", "add", str(tmp_path / "run"), "--records", str(records), "--new-track"]) == 0
    assert capsys.readouterr().out.strip().endswith("method-0-run-00000.json")
    assert main(["leaderboard", "build", "--records", str(records), "--out", str(site), "--no-plot-cache",
                 "--workers", "1"]) == 0
    assert "1 records and 52 published results in 5 tables" in capsys.readouterr().out  # published by default
    assert main(["leaderboard", "build", "--records", str(records), "--out", str(site), "--no-plot-cache",
                 "--workers", "1", "--no-published"]) == 0
    assert "1 records in 1 tables" in capsys.readouterr().out
    assert main(["leaderboard", "publish", "--site", str(site), "--to", str(pages), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("would publish ") and "index.html" in out and not pages.exists()
    assert main(["leaderboard", "publish", "--site", str(site), "--to", str(pages)]) == 0
    assert (pages / ".nojekyll").exists()


def test_errors_exit_2_with_the_message(tmp_path, capsys):
    assert main(["leaderboard", "add", str(tmp_path / "missing"), "--records", str(tmp_path / "r")]) == 2
    assert "record.json" in capsys.readouterr().err
    assert main(["leaderboard", "publish", "--site", str(tmp_path), "--to", "hf-space"]) == 2
    assert "error:" in capsys.readouterr().err
