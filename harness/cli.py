"""The `slowrun` command: argument parsing only; every command calls one function elsewhere."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness import __version__
from harness.errors import SlowrunError


def default_prepared_dir(track: str) -> Path:
    return Path("prepared") / track


def _cmd_prepare(args) -> int:
    from harness.data.prepare import prepare_track
    from harness.tracks import get_track

    track = get_track(args.track, args.tracks)
    out = Path(args.out) if args.out else default_prepared_dir(track.name)
    prepare_track(track, out, source_override=args.source, text_field=args.text_field,
                  gpt2_ranks=args.gpt2_ranks, force=args.force, progress=not args.quiet)
    print(out)
    return 0


def _cmd_data_info(args) -> int:
    from harness.data.manifest import format_manifest, read_manifest, verify_prepared

    print(format_manifest(read_manifest(args.dir)))
    problems = verify_prepared(args.dir)
    if problems:
        print("verification FAILED:\n  " + "\n  ".join(problems))
        return 1
    print("verification ok: every array matches its sha256")
    return 0


def _cmd_tracks(args) -> int:
    from harness.tracks import DEFAULT_TRACK, available_tracks

    for name, track in sorted(available_tracks(args.tracks).items()):
        marker = " (default)" if name == DEFAULT_TRACK else ""
        print(f"{name}{marker}: {track.val_tokens:,} val + {track.train_tokens:,} train tokens, "
              f"seq {track.seq_len}, {track.tokenizer.kind} tokenizer, {track.source.kind} source")
        print(f"    {track.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slowrun", description=__doc__)
    parser.add_argument("--version", action="version", version=f"slowrun {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    tracks_help = "extra track definitions (TOML); may repeat"
    p = sub.add_parser("prepare", help="tokenize and split a track's data")
    p.add_argument("--track", default="synthetic", help="track name (default: synthetic, offline)")
    p.add_argument("--tracks", action="append", default=[], metavar="FILE.toml", help=tracks_help)
    p.add_argument("--source", nargs="+", metavar="FILE", help="read documents from these files instead")
    p.add_argument("--text-field", help="JSON/parquet field holding the text (default: text)")
    p.add_argument("--gpt2-ranks", metavar="FILE", help="GPT-2 r50k_base.tiktoken ranks file")
    p.add_argument("--out", help="output folder (default: prepared/TRACK)")
    p.add_argument("--force", action="store_true", help="replace an output folder that holds other data")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("data", help="inspect prepared data")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    q = data_sub.add_parser("info", help="print a prepared track's manifest and re-verify its hashes")
    q.add_argument("dir")
    q.set_defaults(func=_cmd_data_info)

    p = sub.add_parser("tracks", help="list the known tracks")
    p.add_argument("--tracks", action="append", default=[], metavar="FILE.toml", help=tracks_help)
    p.set_defaults(func=_cmd_tracks)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SlowrunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
