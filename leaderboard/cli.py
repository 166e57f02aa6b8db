"""`slowrun leaderboard build|add|publish`: argument parsing only; each command calls one function."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from pathlib import Path

from harness.errors import SlowrunError
from leaderboard.naming import DEFAULT_RECORDS_DIR, DEFAULT_SITE_DIR
from leaderboard.publish import HF_SPACE
from leaderboard.published import DEFAULT_PUBLISHED
from leaderboard.storage import default_cache_dir


def _default_plot_cache() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "slowrun" / "leaderboard-plots")


def _cmd_build(args) -> int:
    from leaderboard.site import build_site

    cache = None if args.no_plot_cache else args.plot_cache
    published = None if args.no_published else args.published
    print(build_site(args.records, args.out, plot_cache=cache, workers=args.workers, published=published).summary())
    return 0


def _cmd_add(args) -> int:
    from leaderboard.add import add_submission, parse_floors, parse_known_tracks

    verify = test_score = None
    if args.test_data and not args.verify:
        print("error: --test-data scores a run once its re-evaluation agreed: add --verify", file=sys.stderr)
        return 2
    if args.verify:
        if importlib.util.find_spec("harness.run.reverify") is None:
            print("error: --verify needs harness.run.reverify, which this installation does not have", file=sys.stderr)
            return 2
        import functools

        verify = functools.partial(importlib.import_module("harness.run.reverify").reverify_run,
                                   method_dir=args.method_dir, data_dir=args.data,
                                   allow_read=tuple(Path(p) for p in args.allow_read))
        if args.test_data:  # the same re-evaluation, then the final predictor scored on the test split
            reverifier = importlib.import_module("harness.run.reverify").Reverifier(
                method_dir=args.method_dir, data_dir=args.data, allow_read=tuple(Path(p) for p in args.allow_read),
                test_data=args.test_data)
            verify, test_score = reverifier.verify, reverifier.test_section
    paths = add_submission(args.run_dir, args.records, known_tracks=parse_known_tracks(args.known_tracks),
                           new_track=args.new_track, floors=parse_floors(args.floor), method_dir=args.method_dir,
                           verify=verify, test_score=test_score, dry_run=args.dry_run, fetch_to=args.fetch_to,
                           fetch_progress=True, fetch_local=tuple(args.fetch_local))
    for path in paths:
        print(("would file " if args.dry_run else "") + str(path))
    return 0


def _cmd_submit(args) -> int:
    from leaderboard.bundle import create_bundle, parse_size

    bundle = create_bundle(args.run_dirs, args.out, method_dir=args.method, weights_up_to=parse_size(args.weights_up_to),
                           weights_to=args.weights_to, progress=True)
    if args.weights_to:
        skipped = sum(stored.skipped for stored in bundle.uploaded)
        print(f"{len(bundle.uploaded) - skipped} file(s) uploaded to {args.weights_to}, {skipped} already there")
    print(f"{bundle.root}: {len(bundle.runs)} run(s) of {bundle.runs[0].record['method']['name']}; "
          f"edit {bundle.root / 'README.md'}, then open a pull request with the folder")
    return 0


def add_submit_command(subparsers) -> argparse.ArgumentParser:
    """Register `submit` (pack runs into a submission bundle) on an argparse subparsers object."""
    p = subparsers.add_parser("submit", help="pack a method's runs (its seeds) into a submission bundle folder")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished run folders of one method")
    p.add_argument("--out", required=True, metavar="BUNDLE", help="the bundle folder to create (new or empty)")
    p.add_argument("--method", default=None, metavar="DIR",
                   help="the method folder (default: the one the runs' run.json names); must hash as the runs' did")
    p.add_argument("--weights-up-to", default="0", metavar="SIZE",
                   help="include a snapshot's weights when no larger than this, e.g. 200MB (default 0: hashes only)")
    p.add_argument("--weights-to", default=None, metavar="URL",
                   help="upload the weights not included (and their exported graphs) under this fsspec URL: "
                        "s3://bucket/prefix, hf://datasets/OWNER/NAME (a branch per run), file:///dir or a folder; "
                        "the bundle names each file by URL and sha256 (s3:// needs s3fs: `pip install "
                        "'slowrun[storage]'`)")
    p.set_defaults(func=_cmd_submit)
    return p


def _cmd_publish(args) -> int:
    from leaderboard.publish import format_plan, publish_site

    files, destination = publish_site(args.site, args.to, dry_run=args.dry_run)
    print(("would publish " if args.dry_run else "published ") + format_plan(files, destination))
    return 0


def add_subcommands(subparsers) -> argparse.ArgumentParser:
    """Register `leaderboard` and its commands on an argparse subparsers object."""
    board = subparsers.add_parser("leaderboard", help="build, extend and publish the static leaderboard")
    commands = board.add_subparsers(dest="leaderboard_command", required=True)

    p = commands.add_parser("build", help="build the static site from the record files (each re-checked with the "
                                          "rules of `add`: one that breaks them is refused, not ranked)")
    p.add_argument("--records", default=str(DEFAULT_RECORDS_DIR), help="folder of accepted records (default: %(default)s)")
    p.add_argument("--out", default=str(DEFAULT_SITE_DIR), help="output folder (default: %(default)s)")
    p.add_argument("--plot-cache", default=_default_plot_cache(), metavar="DIR",
                   help="keep rendered plots here between builds (default: %(default)s)")
    p.add_argument("--no-plot-cache", action="store_true", help="render every plot afresh")
    p.add_argument("--workers", type=int, default=None, help="plot-rendering processes (default: one per core, up to 4)")
    p.add_argument("--published", default=str(DEFAULT_PUBLISHED), metavar="FILE",
                   help="published results shown as kind `reported`, in tables of their own (default: %(default)s)")
    p.add_argument("--no-published", action="store_true", help="leave the published results off the board")
    p.set_defaults(func=_cmd_build)

    p = commands.add_parser("add", help="accept a finished run's record into the records folder")
    p.add_argument("run_dir", metavar="RUN_DIR|BUNDLE",
                   help="run folder holding record.json, the record file, or a submission bundle (slowrun submit)")
    p.add_argument("--records", default=str(DEFAULT_RECORDS_DIR), help="folder of accepted records (default: %(default)s)")
    p.add_argument("--known-tracks", nargs="*", default=[], metavar="NAME=HASH",
                   help="data hashes the track must have (default: those of records already on the board)")
    p.add_argument("--new-track", action="store_true", help="accept a track the board has no records of yet")
    p.add_argument("--floor", action="append", default=[], metavar="NAME=LOSS",
                   help="lowest validation loss reachable on a track, beside the built-in ones (repeatable)")
    p.add_argument("--method-dir", default=None, metavar="DIR",
                   help="the method folder the run used: it must hash to the record's method.hash")
    p.add_argument("--verify", action="store_true",
                   help="re-evaluate the run folder's snapshots in the sandbox and compare with the record "
                        "(harness.run.reverify; tolerance 1e-4 nats); the board then shows it as re-evaluated, "
                        "not reproduced: training is not re-run")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="with --verify: your prepared copy of the record's track (default prepared/TRACK)")
    p.add_argument("--allow-read", action="append", default=[], metavar="DIR",
                   help="with --verify: another folder the snapshots' model code may be read from")
    p.add_argument("--test-data", default=None, metavar="DIR",
                   help="with --verify: a held-out test split of the record's data (slowrun prepare --test-split); "
                        "the final predictor is scored on it and the record files its test loss")
    p.add_argument("--fetch-to", default=None, metavar="DIR",
                   help="with --verify: where weights a bundle names by URL are fetched and kept, by sha256 "
                        f"(default {default_cache_dir()})")
    p.add_argument("--fetch-local", action="append", default=[], metavar="DIR",
                   help="with --verify: a folder on this machine (a shared disk) that a bundle's file:// URLs may "
                        "name; file:// URLs anywhere else are refused (default: none)")
    p.add_argument("--dry-run", action="store_true", help="run every check and write nothing")
    p.set_defaults(func=_cmd_add)

    p = commands.add_parser("publish", help="publish the built site to a folder or a Hugging Face Space")
    p.add_argument("--to", nargs="+", required=True, metavar="DEST",
                   help=f"a folder (GitHub Pages), or `{HF_SPACE} OWNER/NAME` for a static Space")
    p.add_argument("--site", default=str(DEFAULT_SITE_DIR), help="the built site (default: %(default)s)")
    p.add_argument("--dry-run", action="store_true", help="list the files and sizes; write and send nothing")
    p.set_defaults(func=_cmd_publish)
    return board


def main(argv: list[str] | None = None) -> int:
    """Run the leaderboard commands on their own (`python -m leaderboard.cli leaderboard build`)."""
    parser = argparse.ArgumentParser(prog="slowrun")
    commands = parser.add_subparsers(dest="command", required=True)
    add_subcommands(commands)
    add_submit_command(commands)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SlowrunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
