"""The ``continuonbrain`` command: parses arguments and dispatches, nothing more.

Exit codes: 0 success; 1 the command ran but found a problem (bad episodes, a rejected
promotion); 2 the command could not run (bad arguments, a path that does not exist).
Bad data is reported as one line per problem, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from continuonbrain.rlds.errors import RLDSError

Handler = Callable[[argparse.Namespace], int]


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=None, default=str) + "\n")


# --- rlds ----------------------------------------------------------------------------------


def cmd_rlds_validate(args: argparse.Namespace) -> int:
    from continuonbrain.rlds.validate import validate_path

    report = validate_path(args.path, quarantine_dir=args.quarantine, upload=args.upload)
    if args.json:
        _print_json(report.to_json(upload=args.upload))
    else:
        for err in report.errors:
            print(f"BAD  {err['error']}")
        for item in report.not_upload_ready:
            print(f"NOT UPLOAD-READY  episode {item['episode']}: {'; '.join(item['problems'])}")
        for dest in report.quarantined:
            print(f"quarantined -> {dest}")
        print(f"{report.episodes_ok} episodes ok ({report.steps_ok} steps), {report.episodes_bad} bad")
    bad = report.episodes_bad or (args.upload and report.not_upload_ready)
    return 1 if bad else 0


def cmd_rlds_info(args: argparse.Namespace) -> int:
    from continuonbrain.rlds.reader import read_episodes
    from continuonbrain.rlds.validate import summarize

    errors: list[str] = []
    info = summarize(read_episodes(args.path, args.split, on_error=lambda e: errors.append(str(e))))
    info["episodes_bad"] = len(errors)
    info["errors"] = errors
    if args.json:
        _print_json(info)
        return 0
    print(f"{args.path}")
    print(f"  episodes: {info['episodes']} ok, {len(errors)} bad; steps: {info['steps']}")
    print(f"  duration: {info['duration_s']:.1f} s at {info['control_hz']} Hz")
    print(f"  observation: {json.dumps(info['observation'])}")
    print(f"  action: {json.dumps(info['action'])}")
    print(f"  origins: {info['origins']}; imagined episodes: {info['imagined_episodes']}")
    for e in errors:
        print(f"  BAD {e}")
    return 0


def cmd_rlds_convert(args: argparse.Namespace) -> int:
    from continuonbrain.rlds.writer import convert

    report = convert(args.src, args.dst, args.format, for_upload=args.for_upload)
    for e in report["errors"]:
        print(f"skipped bad episode: {e}", file=sys.stderr)
    for item in report["not_upload_ready"]:
        print(f"skipped, not upload-ready: {item['episode']}: {'; '.join(item['problems'])}", file=sys.stderr)
    print(f"wrote {report['written']} episodes ({report['steps']} steps) to {args.dst} as {args.format}")
    return 1 if report["errors"] else 0


def cmd_rlds_schema(args: argparse.Namespace) -> int:
    from continuonbrain.rlds.schema import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


# --- sim -----------------------------------------------------------------------------------


def cmd_sim_collect(args: argparse.Namespace) -> int:
    from continuonbrain.sim.collect import collect_to_dir

    summary = collect_to_dir(
        args.env, args.episodes, args.out, format=args.format, seed=args.seed, dart_sigma=args.dart_sigma
    )
    if args.json:
        _print_json(summary)
    else:
        print(json.dumps(summary, indent=2, default=str))
    return 0


# --- train -------------------------------------------------------------------------------


DEFAULT_HOPE_CONFIG = Path(__file__).resolve().parent / "configs" / "pi5-hope-v1.json"


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``continuonbrain train`` (also ``python run_trainer.py``)."""
    p.add_argument("--config", default=str(DEFAULT_HOPE_CONFIG), help="training config JSON (default: pi5-hope-v1)")
    p.add_argument("--rlds-dir", help="episodes to train on (overrides the config)")
    p.add_argument("--model-root", help="model store; finished components go to its candidate slot")
    p.add_argument("--run-dir", help="logs, checkpoints and components of this run")
    p.add_argument("--max-steps", type=int, help="cap every component at N steps")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its checkpoints")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def cmd_train(args: argparse.Namespace) -> int:
    from continuonbrain.trainer.sequential import SequentialTrainer, TrainingError
    from continuonbrain.trainer.train_config import SequentialConfig

    try:
        cfg = SequentialConfig.from_json(
            args.config, rlds_dir=args.rlds_dir, model_root=args.model_root, run_dir=args.run_dir
        )
        if args.max_steps is not None:
            cfg.cap_steps(args.max_steps)
        summary = SequentialTrainer(cfg).run(resume=args.resume)
    except (TrainingError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import os

    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun every rank has the summary: print it once
        return 0
    if args.json:
        _print_json(summary)
        return 0
    print(f"run: {summary['run_dir']}  (metrics.jsonl, summary.json)")
    for name, c in summary["components"].items():
        print(
            f"  {name:<10} steps {c['steps']:>5}  loss {c.get('initial_loss', float('nan')):.4f} -> "
            f"{c.get('final_loss', float('nan')):.4f}  {c['wall_time_s']:.1f} s  peak RSS {c['peak_rss_mb']:.0f} MB  "
            f"stop: {c['stop_reason']}"
        )
    print(f"candidate: {Path(summary['model_root']) / 'candidate'}")
    return 0


# --- adapt ---------------------------------------------------------------------------------


def cmd_adapt(args: argparse.Namespace) -> int:
    from continuonbrain.trainer.local_lora_trainer import run_command

    return run_command(args)


# --- models --------------------------------------------------------------------------------


def _slot_line(name: str, m: dict | None) -> str:
    if not m:
        return f"  {name:<10} (empty)"
    comps = ",".join(m.get("components", []))
    return f"  {name:<10} {m['version']}  {m.get('kind', '?')}  [{comps}]  created {m.get('created', '?')}"


def cmd_models(args: argparse.Namespace) -> int:
    from continuonbrain.trainer.store import PromotionStore, StoreError

    store = PromotionStore(args.model_root)
    try:
        if args.models_command == "list":
            info = store.describe()
            if args.json:
                _print_json(info)
                return 0
            print(store.root)
            print(_slot_line("current", info["current"]))
            print(_slot_line("candidate", info["candidate"]))
            for m in info["history"]:
                print(_slot_line("history", m))
            for a in info["audit"][-10:]:
                when, what = a.get("time", ""), a.get("decision")
                print(f"  audit      {when}  {what}  {a.get('version')}  {a.get('reason', '')}")
            return 0
        if args.models_command == "promote":
            from continuonbrain.trainer.promotion import promote_candidate

            result, info = promote_candidate(args.model_root, rlds_dir=args.rlds_dir)
            if args.json:
                _print_json({"promoted": result.passed, "reason": result.reason, "gate": result.to_dict(), **info})
            else:
                verdict = "PROMOTED" if result.passed else "REJECTED"
                print(f"{verdict}: {result.reason}")
                print(_slot_line("current", info["current"]))
            return 0 if result.passed else 1
        manifest = store.rollback(args.version)
        if args.json:
            _print_json({"rolled_back_to": manifest.get("version"), **store.describe()})
        else:
            print(f"rolled back: current is {manifest.get('version')}")
        return 0
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


# --- parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="continuonbrain", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    rlds = sub.add_parser("rlds", help="read, validate and convert RLDS episodes").add_subparsers(
        dest="rlds_command", required=True
    )
    p = rlds.add_parser("validate", help="check every episode under PATH")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quarantine", metavar="DIR", help="move bad episodes here with a reason.txt")
    p.add_argument("--upload", action="store_true", help="also report episodes not ready for sharing")
    p.set_defaults(func=cmd_rlds_validate)

    p = rlds.add_parser("info", help="summarize the episodes under PATH")
    p.add_argument("path")
    p.add_argument("--split", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_rlds_info)

    p = rlds.add_parser("convert", help="convert episodes to another layout")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--format", choices=["continuon", "tfds"], required=True)
    p.add_argument("--for-upload", action="store_true", help="only upload-ready episodes, owner block stripped")
    p.set_defaults(func=cmd_rlds_convert)

    p = rlds.add_parser("schema", help="print the episode JSON Schema")
    p.add_argument("--out", help="write it to this file instead")
    p.set_defaults(func=cmd_rlds_schema)

    sim = sub.add_parser("sim", help="built-in simulators").add_subparsers(dest="sim_command", required=True)
    p = sim.add_parser("collect", help="record expert episodes as RLDS")
    p.add_argument("--env", required=True, help="reach2d, track2d, or a gymnasium id")
    p.add_argument("--episodes", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--format", choices=["continuon", "tfds"], default="continuon")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dart-sigma", type=float, default=0.0, help="noise on executed actions (DART)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sim_collect)

    p = sub.add_parser("train", help="train the HOPE v1 seed, one component at a time")
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    from continuonbrain.trainer.local_lora_trainer import add_arguments as add_adapt_arguments

    p = sub.add_parser("adapt", help="LoRA-adapt the current model on the newest episodes, gate it, promote it")
    add_adapt_arguments(p)
    p.set_defaults(func=cmd_adapt)

    models = sub.add_parser("models", help="the model store: list, promote, rollback").add_subparsers(
        dest="models_command", required=True
    )
    for verb, text in (
        ("list", "slots, history and the audit log"),
        ("promote", "gate the candidate in shadow and promote it if it passes (exit 1 on rejection)"),
        ("rollback", "make an earlier version current again"),
    ):
        p = models.add_parser(verb, help=text)
        p.add_argument("--model-root", required=True)
        p.add_argument("--version", help="rollback: the history version (default: the newest)")
        p.add_argument("--rlds-dir", help="promote: held-out episodes (default: the candidate's training data)")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=cmd_models)

    p = sub.add_parser("demo", help="run the whole loop on the built-in defaults")
    p.add_argument("--workdir", default=".demo", help="where data, models and runs go")
    p.add_argument("--no-serve", action="store_true", help="stop after the summary")
    p.set_defaults(func=cmd_demo)
    return parser


def cmd_demo(args: argparse.Namespace) -> int:
    from continuonbrain.demo import run_demo

    return run_demo(Path(args.workdir), serve=not args.no_serve)


def main(argv: Sequence[str] | None = None) -> int:
    import logging

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except RLDSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
