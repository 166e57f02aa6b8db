"""The `slowrun` command: argument parsing only; every command calls one function elsewhere."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from harness import __version__
from harness.errors import SlowrunError


def default_prepared_dir(track: str) -> Path:
    return Path("prepared") / track


def _cmd_prepare(args) -> int:
    from harness.data.prepare import prepare_track
    from harness.rules.tracks import get_track

    track = get_track(args.track, args.tracks)
    out = Path(args.out) if args.out else default_prepared_dir(track.name)
    for flag, value in (("--test-tokens sizes", args.test_tokens), ("--test-key keys", args.test_key),
                        ("--test-sample-rate samples", args.test_sample_rate)):
        if value is not None and not args.test_split:
            raise SlowrunError(f"{flag} a test split: add --test-split DIR")
    if args.test_split:
        from harness.data.holdout import format_test_manifest, prepare_test_split

        if args.from_slowrun:
            raise SlowrunError("--test-split continues the source's stream after training; drop --from-slowrun "
                               "(slowrun's files hold no more than the two splits)")
        result = prepare_test_split(track, out, args.test_split, test_tokens=args.test_tokens,
                                    source_override=args.source, text_field=args.text_field,
                                    gpt2_ranks=args.gpt2_ranks, force=args.force, test_key=args.test_key,
                                    sample_rate=args.test_sample_rate, progress=not args.quiet)
        print(format_test_manifest(result.manifest), file=sys.stderr)
        print(args.test_split)
        return 0
    if args.from_slowrun:
        from harness.data.slowrun_files import import_slowrun_files

        if args.source or args.text_field:
            raise SlowrunError("--from-slowrun reads slowrun's own files; drop --source and --text-field")
        import_slowrun_files(track, args.from_slowrun, out, gpt2_ranks=args.gpt2_ranks, force=args.force)
    else:
        prepare_track(track, out, source_override=args.source, text_field=args.text_field,
                      gpt2_ranks=args.gpt2_ranks, force=args.force, progress=not args.quiet)
    print(out)
    return 0


def _cmd_export(args) -> int:
    from harness.data.slowrun_files import export_slowrun_files

    if not args.slowrun_format:
        raise SlowrunError("say which format to export: --slowrun-format (slowrun's fineweb_*.pt files)")
    for path in export_slowrun_files(args.data, args.out, force=args.force):
        print(path)
    return 0


def _cmd_data_info(args) -> int:
    from harness.data.holdout import format_test_manifest, is_test_split, read_test_manifest, verify_test_split
    from harness.data.manifest import format_manifest, read_manifest, verify_prepared

    if is_test_split(args.dir):  # a held-out test split has a manifest of its own format
        print(format_test_manifest(read_test_manifest(args.dir)))
        problems = verify_test_split(args.dir)
    else:
        print(format_manifest(read_manifest(args.dir)))
        problems = verify_prepared(args.dir)
    if problems:
        print("verification FAILED:\n  " + "\n  ".join(problems))
        return 1
    print("verification ok: every array matches its sha256")
    return 0


def _cmd_tracks(args) -> int:
    from harness.rules.tracks import DEFAULT_TRACK, available_tracks

    for name, track in sorted(available_tracks(args.tracks).items()):
        marker = " (default)" if name == DEFAULT_TRACK else ""
        print(f"{name}{marker}: {track.val_tokens:,} val + {track.train_tokens:,} train tokens, "
              f"seq {track.seq_len}, {track.tokenizer.kind} tokenizer, {track.source.kind} source")
        print(f"    {track.description}")
    return 0


def _cmd_check(args) -> int:
    from harness.run.entry_check import check_method

    spec, problems = check_method(args.dir, args.tracks)
    if problems:
        print(f"{args.dir}: {len(problems)} problem(s):", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print(f"{spec.name}: ok (entry {spec.entry}, tracks {', '.join(spec.tracks)}, "
          f"{len(spec.hparams)} hyperparameters)")
    return 0


def _parse_sets(items: list[str]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SlowrunError(f"--set {item!r}: expected KEY=VALUE")
        pairs.append((key.strip(), value.strip()))
    return tuple(pairs)


def _run_request(args, launch):
    from harness.run.runner import RunRequest

    return RunRequest(
        method_dir=Path(args.dir), track=args.track, epochs=args.epochs, seed=args.seed,
        overrides=_parse_sets(args.set), out=Path(args.out) if args.out else None,
        data_dir=Path(args.data) if args.data else None, device=args.device, progress=not args.quiet,
        track_files=tuple(args.tracks), compute_class=args.compute_class, eval_batch_size=args.eval_batch_size,
        eval_dtype=args.eval_dtype, eval_workers=args.eval_workers,
        downstream=args.downstream, downstream_data=Path(args.downstream_data) if args.downstream_data else None,
        downstream_limit=_downstream_limits(args), downstream_files=_downstream_files(args), launch=launch,
        timeout_s=args.timeout if args.timeout and args.timeout > 0 else None, time_limit_s=args.time_limit,
        allow_read=tuple(Path(p) for p in args.allow_read),
        pass_env=tuple(args.pass_env),
        max_snapshots=args.max_snapshots, eval_timeout_s=args.eval_timeout, eval_graphs=not args.no_graphs,
        gpt2_ranks=Path(args.gpt2_ranks) if args.gpt2_ranks else None,
        wandb=args.wandb, wandb_mode=args.wandb_mode, wandb_entity=args.wandb_entity,
        tensorboard=Path(args.tensorboard) if args.tensorboard else None)


def _cmd_run(args) -> int:
    from harness.common.distributed import LaunchSpec
    from harness.run.runner import resume_run, run_method, run_or_resume

    launch = LaunchSpec(nproc_per_node=args.nproc_per_node, nnodes=args.nnodes, node_rank=args.node_rank,
                        master_addr=args.master_addr, master_port=args.master_port)
    if args.slurm:
        return _submit_to_slurm(args, launch)
    if args.resume == "auto":
        if not args.dir:
            raise SlowrunError("--resume auto goes with the method directory and --out: slowrun run DIR --out "
                               "RUN_DIR --resume auto starts the run, or continues it where it stopped")
        run_dir = run_or_resume(_run_request(args, launch))
    elif args.resume:
        run_dir = resume_run(Path(args.resume), progress=not args.quiet)
    else:
        if not args.dir:
            raise SlowrunError("give a method directory (slowrun run DIR) or --resume RUN_DIR")
        run_dir = run_method(_run_request(args, launch))
    print(run_dir)
    if launch.nnodes > 1 and launch.node_rank > 0 and args.resume in (None, "auto"):
        return 0  # another node: node 0 writes the record, and its exit code is the run's
    return _status_code(run_dir)


def _submit_to_slurm(args, launch) -> int:
    """Prepare the run folder here and hand its training to Slurm (harness.cluster)."""
    from harness.cluster.slurm import SlurmOptions, submit
    from harness.common.paths import PROJECT_ROOT
    from harness.run.runner import prepare_run

    if launch.nnodes > 1 or launch.node_rank:
        raise SlowrunError("--slurm places the nodes itself: ask for them with --nodes N (not --nnodes/--node-rank)")
    nodes = args.nodes
    if args.resume:  # the run keeps the nodes it was prepared for
        from harness.formats.run_spec import read_run_spec

        nodes = read_run_spec(Path(args.resume)).launch_spec.nnodes
        launch = dataclasses.replace(launch, nproc_per_node=read_run_spec(Path(args.resume)).launch_spec.nproc_per_node)
    options = SlurmOptions(partition=args.partition, nodes=nodes, gpus_per_node=args.gpus_per_node,
                           time=args.time, account=args.account, grace_s=args.grace)
    launch = dataclasses.replace(launch, nnodes=options.nodes)  # node 0's address is set when the job starts
    if args.resume:
        run_dir = Path(args.resume).resolve()
    else:
        if not args.dir:
            raise SlowrunError("give a method directory (slowrun run DIR --slurm) or --resume RUN_DIR")
        run_dir = prepare_run(_run_request(args, launch)).resolve()
    job_id = submit(run_dir, options, launch.nproc_per_node, pythonpath=str(PROJECT_ROOT))
    print(f"submitted Slurm job {job_id} for {run_dir}; follow it with: slowrun status {run_dir}", file=sys.stderr)
    print(run_dir)
    return 0


def _cmd_status(args) -> int:
    from harness.cluster.slurm import status

    state = status(Path(args.run_dir))
    print(json.dumps(state, indent=2))
    return 0


def _cmd_cancel(args) -> int:
    from harness.cluster.slurm import cancel

    print(f"cancelled Slurm job {cancel(Path(args.run_dir))}", file=sys.stderr)
    return 0


def _status_code(run_dir: Path) -> int:
    """The run's status as the exit code (harness.formats.records.EXIT_CODES), told on stderr when it is not ok."""
    from harness.formats.records import exit_code, load_record

    record = load_record(Path(run_dir) / "record.json")
    code = exit_code(record["status"])
    if code:
        error = record.get("error") or {}
        print(f"run ended with status {record['status']}: {error.get('type', '')}: {error.get('message', '')}"
              f" (exit code {code})", file=sys.stderr)
    return code


def _evaluation_options(p) -> None:
    """How evaluation is bounded and what it runs: the same for `slowrun run` and `slowrun eval`."""
    p.add_argument("--eval-timeout", type=float, metavar="SECONDS",
                   help="limit on the whole evaluation; snapshots whose turn comes after it are listed as not scored "
                   "(default: none; each snapshot has its own limit by the rule of harness/eval/limits.py)")
    p.add_argument("--no-graphs", action="store_true",
                   help="run every snapshot by its own code in the sandboxed worker, even one handed over with its "
                   "exported graph (default: graphs are run by the harness)")


def _cmd_eval(args) -> int:
    from harness.run.runner import evaluate_existing

    print(evaluate_existing(Path(args.run_dir), progress=not args.quiet, downstream=True if args.downstream else None,
                            downstream_data=Path(args.downstream_data) if args.downstream_data else None,
                            downstream_limit=_downstream_limits(args), downstream_files=_downstream_files(args),
                            gpt2_ranks=Path(args.gpt2_ranks) if args.gpt2_ranks else None,
                            eval_dtype=args.eval_dtype, eval_workers=args.eval_workers,
                            eval_timeout_s=args.eval_timeout, eval_graphs=False if args.no_graphs else None))
    return _status_code(Path(args.run_dir))


def _cmd_calibrate(args) -> int:
    from harness.run.calibrate import CalibrationRequest, calibrate

    factors = tuple(int(f) for f in args.factors.split(","))
    calibrate(CalibrationRequest(
        track=args.track, factors=factors, epochs=args.epochs, method_dir=Path(args.method), seed=args.seed,
        overrides=_parse_sets(args.set), data_dir=Path(args.data) if args.data else None,
        work_dir=Path(args.work_dir), out=Path(args.out) if args.out else None, track_files=tuple(args.tracks),
        progress=not args.quiet, downstream=args.downstream,
        downstream_data=Path(args.downstream_data) if args.downstream_data else None))
    return 0


def _cmd_demo(args) -> int:
    from harness.run.demo import DemoRequest, run_demo

    print(run_demo(DemoRequest(out=Path(args.out), epochs=args.epochs, seed=args.seed, progress=not args.quiet)))
    return 0


def _cmd_plan(args) -> int:
    from q0_reference.plan_report import plan_report

    print(plan_report(args.epochs, preset=args.preset, world_size=args.world_size, gpu_memory_gib=args.gpu_memory,
                    micro_batch_size=args.micro_batch_size))
    return 0


def _downstream_limits(args):
    from harness.eval.downstream.limits import DocumentLimits

    return DocumentLimits.parse(args.downstream_limit)


def _downstream_files(args) -> tuple:
    from harness.eval.downstream.splits import SplitFile

    return tuple(SplitFile.parse(item) for item in args.downstream_file)


def _downstream_options(p) -> None:
    p.add_argument("--downstream", action="store_true", help="also score ARC-Easy, PIQA and SciQ (text tracks)")
    p.add_argument("--downstream-data", metavar="DIR", help="local task data (arc_easy/, piqa/, sciq/); else the Hub")
    p.add_argument("--downstream-file", action="append", default=[], metavar="TASK:SPLIT=FILE",
                   help="score TASK on this local file of SPLIT (any split; repeatable; before --downstream-data)")
    p.add_argument("--downstream-limit", action="append", default=[], metavar="N|TASK=N",
                   help="score only the first N documents of every task, or of TASK (repeatable)")
    p.add_argument("--gpt2-ranks", metavar="FILE",
                   help="GPT-2 r50k_base.tiktoken ranks file for downstream scoring (default: the track's own)")


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
    p.add_argument("--from-slowrun", metavar="DIR",
                   help="import slowrun's fineweb_val.pt and fineweb_train.pt from DIR (either layout) instead")
    p.add_argument("--out", help="output folder (default: prepared/TRACK); with --test-split, the prepared folder "
                                 "the test split continues (only read)")
    p.add_argument("--test-split", metavar="DIR",
                   help="instead, write the held-out test split: documents of the stream after training (all "
                        "of them, or a keyed sample with --test-key), cut by the same rules, into DIR (outside the "
                        "prepared folder; keep it private)")
    p.add_argument("--test-tokens", type=int, metavar="N",
                   help="with --test-split: its size in tokens (default: the validation split's)")
    p.add_argument("--test-key", metavar="KEYFILE",
                   help="with --test-split: take a secret sample of the documents after training, chosen by the "
                        "key in KEYFILE (at least 32 bytes; created, mode 0600, if missing). Without it the split "
                        "is the contiguous next tokens, which anyone can rebuild")
    p.add_argument("--test-sample-rate", type=float, metavar="R",
                   help="with --test-key: the share of documents after training the test split keeps, in (0, 1] "
                        "(default: 1/8)")
    p.add_argument("--force", action="store_true", help="replace an output folder that holds other data")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("export", help="write a prepared track in another program's format")
    p.add_argument("--slowrun-format", action="store_true",
                   help="slowrun's fineweb_val.pt and fineweb_train.pt, readable by its train.py")
    p.add_argument("--data", required=True, metavar="DIR", help="the prepared folder (e.g. prepared/fineweb)")
    p.add_argument("--out", default="fineweb_data", help="output folder (default: fineweb_data, slowrun's)")
    p.add_argument("--force", action="store_true", help="replace files already there")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("data", help="inspect prepared data")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    q = data_sub.add_parser("info", help="print a prepared track's (or a test split's) manifest and re-verify "
                                               "its hashes")
    q.add_argument("dir")
    q.set_defaults(func=_cmd_data_info)

    p = sub.add_parser("check", help="validate a method directory and list every problem")
    p.add_argument("dir")
    p.add_argument("--tracks", action="append", default=[], metavar="FILE.toml", help=tracks_help)
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("run", help="train a method under measured epoch accounting, evaluate it, write its record")
    p.add_argument("dir", nargs="?", help="method directory")
    p.add_argument("--track", default="synthetic")
    p.add_argument("--tracks", action="append", default=[], metavar="FILE.toml", help=tracks_help)
    p.add_argument("--epochs", type=float, default=4.0, help="the epoch budget (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a hyperparameter")
    p.add_argument("--out", help="run folder (default runs/METHOD-TRACK-eE-sS-TIME)")
    p.add_argument("--data", help="prepared data folder (default prepared/TRACK, prepared if missing)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--compute-class", help="the class whose rules the run keeps: tiny (15 min), limited (1 h), "
                   "two-hour (2 h), unlimited, cpu (default: cpu on a CPU, unlimited otherwise)")
    p.add_argument("--time-limit", type=float, metavar="SECONDS",
                   help="cap training time at SECONDS instead of the class's cap (the run is listed unranked)")
    p.add_argument("--eval-batch-size", type=int, default=16)
    p.add_argument("--eval-dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                   help="evaluation precision: bf16 autocast or float32 (default auto: bf16 on CUDA, float32 on CPU)")
    p.add_argument("--eval-workers", type=int, metavar="N",
                   help="snapshots evaluated side by side (default: the job's GPUs on CUDA, 1 on a CPU)")
    _evaluation_options(p)
    p.add_argument("--resume", metavar="RUN_DIR|auto",
                   help="continue a run that was interrupted; `auto` (with DIR and --out RUN_DIR): start the run, or "
                   "continue it where it stopped, or leave it if it is finished (one command for every start of a job)")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="wall-clock limit of the method's processes; they are all stopped there (default: none)")
    p.add_argument("--allow-read", action="append", default=[], metavar="DIR",
                   help="another folder of code the sandboxed method may read (never data)")
    p.add_argument("--max-snapshots", type=int, default=4096, metavar="N",
                   help="snapshots the method may hand over; each is evaluated (default 4096)")
    p.add_argument("--pass-env", action="append", default=[], metavar="NAME",
                   help="pass this environment variable to the method (beyond the allow-list of "
                   "harness/sandbox/environment.py; secrets are never passed otherwise)")
    dist = p.add_argument_group("distributed (through torchrun; the run folder must be on a file system all "
                                "nodes share)")
    dist.add_argument("--nproc-per-node", type=int, default=1, help="processes on this node (default 1)")
    dist.add_argument("--nnodes", type=int, default=1)
    dist.add_argument("--node-rank", type=int, default=0, help="this node; nodes > 0 need --out of node 0's run")
    dist.add_argument("--master-addr", default="127.0.0.1")
    dist.add_argument("--master-port", type=int, default=29512,
                      help="multi-node jobs: the rendezvous port on node 0 (its data server listens on it + 1); one "
                      "node runs standalone on a free port")
    slurm = p.add_argument_group("Slurm (the run folder is prepared here, on a file system the nodes share, and "
                                 "trained by a job that resumes it by itself after a requeue)")
    slurm.add_argument("--slurm", action="store_true", help="submit the run (or --resume RUN_DIR) as a Slurm job")
    slurm.add_argument("--partition")
    slurm.add_argument("--nodes", type=int, default=1,
                       help="nodes, each running --nproc-per-node processes (node 0 holds the data server)")
    slurm.add_argument("--gpus-per-node", type=int, default=0)
    slurm.add_argument("--time", help="the job's time limit, in Slurm's format (e.g. 3:00:00)")
    slurm.add_argument("--account")
    slurm.add_argument("--grace", type=int, default=120, metavar="SECONDS",
                       help="warning before the time limit or a pre-emption (USR1): the job stops and requeues itself")
    track = p.add_argument_group("tracking (optional: pip install 'slowrun[tracking]'; kept for every resume)")
    track.add_argument("--wandb", metavar="PROJECT", help="send metrics and the record's summary to this W&B project")
    track.add_argument("--wandb-mode", choices=("online", "offline"), default="online",
                       help="offline: W&B's files in RUN_DIR/tracking, for `wandb sync` later (default online)")
    track.add_argument("--wandb-entity", metavar="ENTITY", help="the W&B team or user (default: W&B's own)")
    track.add_argument("--tensorboard", metavar="DIR", help="write TensorBoard event files under DIR/RUN_ID")
    _downstream_options(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("status", help="a Slurm run's job state, starts and record status")
    p.add_argument("run_dir")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("cancel", help="cancel a Slurm run's job")
    p.add_argument("run_dir")
    p.set_defaults(func=_cmd_cancel)

    p = sub.add_parser("eval", help="recompute a run's evaluation and record from its snapshots")
    p.add_argument("run_dir")
    _downstream_options(p)
    p.add_argument("--eval-dtype", choices=("auto", "float32", "bfloat16"),
                   help="evaluation precision (default: what the run was started with)")
    p.add_argument("--eval-workers", type=int, metavar="N", help="snapshots evaluated side by side")
    _evaluation_options(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_eval)

    from harness.run.calibrate import DEFAULT_METHOD

    p = sub.add_parser("calibrate", help="measure a small track's reference curve on growing fresh data")
    p.add_argument("--track", required=True)
    p.add_argument("--tracks", action="append", default=[], metavar="FILE.toml", help=tracks_help)
    p.add_argument("--factors", default="1,2,4,8", help="multiples of the training tokens (default 1,2,4,8)")
    p.add_argument("--epochs", type=float, default=1.0, help="passes over each fresh-data set (default 1)")
    p.add_argument("--method", default=str(DEFAULT_METHOD), help="the baseline method directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--data", help="the track's prepared folder (default prepared/TRACK)")
    p.add_argument("--work-dir", default="calibration", help="where the larger preparations and runs go")
    p.add_argument("--out", help="curve file (default: the track's curve in harness/eval/reference_curves/)")
    p.add_argument("--downstream", action="store_true",
                   help="also score ARC-Easy, PIQA and SciQ and write the downstream curves (text tracks)")
    p.add_argument("--downstream-data", metavar="DIR", help="local task data (arc_easy/, piqa/, sciq/); else the Hub")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser("demo", help="the whole loop on the offline default track, in minutes")
    p.add_argument("--out", default="slowrun-demo", help="folder for data, runs, records and the site")
    p.add_argument("--epochs", type=float, default=4.0, help="budget of each method (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("plan", help="q0's allocation plan for an epoch budget")
    p.add_argument("--epochs", type=float, required=True)
    p.add_argument("--preset", help="lay out this q0_reference preset on the machine (default with the options "
                                    "below: fineweb)")
    p.add_argument("--world-size", type=int, metavar="N", help="processes (GPUs) of the run")
    p.add_argument("--gpu-memory", type=float, metavar="GIB", help="memory of one GPU; refuse a microbatch that "
                                                                   "cannot fit")
    p.add_argument("--micro-batch-size", type=int, metavar="M", help="sequences per GPU per forward")
    p.set_defaults(func=_cmd_plan)

    from leaderboard.cli import add_subcommands as add_leaderboard_commands
    from leaderboard.cli import add_submit_command

    add_leaderboard_commands(sub)
    add_submit_command(sub)

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


def entry() -> None:
    """The `slowrun` console script: `main`, then a fast exit (see harness.common.fast_exit)."""
    from harness.common.fast_exit import exit_now

    exit_now(main())


if __name__ == "__main__":
    entry()
