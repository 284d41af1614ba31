"""The ``continuonbrain`` command: parses arguments and dispatches, nothing more.

Exit codes: 0 success; 1 the command ran but found a problem (bad episodes, a rejected
promotion); 2 the command could not run (bad arguments, a path that does not exist).
Bad data is reported as one line per problem, never as a traceback.

Why one module of 480 lines: it is the one argument tree (:func:`build_parser` alone is ~140
lines of ``add_argument`` calls) plus thin ``cmd_*`` dispatchers; the real work lives in the
modules each command calls, and one file shows the whole command surface at once.
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
    from continuonbrain.rlds.validate import info_path

    info = info_path(args.path, args.split)
    if args.json:
        _print_json(info)
    else:
        print(f"{args.path}")
        print(f"  episodes: {info['episodes']} ok, {info['episodes_bad']} bad; steps: {info['steps']}")
        print(f"  duration: {info['duration_s']:.1f} s at {info['control_hz']} Hz")
        print(f"  observation: {json.dumps(info['observation'])}")
        print(f"  action: {json.dumps(info['action'])}")
        print(f"  origins: {info['origins']}; imagined episodes: {info['imagined_episodes']}")
        for e in info["errors"]:
            print(f"  BAD {e}")
    return 1 if info["errors"] else 0


def cmd_rlds_convert(args: argparse.Namespace) -> int:
    from continuonbrain.rlds.writer import convert

    report = convert(args.src, args.dst, args.format, for_upload=args.for_upload, overwrite=args.overwrite)
    for e in report["errors"]:
        print(f"skipped bad episode: {e}", file=sys.stderr)
    for item in report["not_upload_ready"]:
        print(f"skipped, not upload-ready: {item['episode']}: {'; '.join(item['problems'])}", file=sys.stderr)
    for item in report["kept_both"]:
        print(f"kept both: {item['existing']} already existed, wrote {item['written']}", file=sys.stderr)
    for item in report["replaced"]:
        print(f"replaced (--overwrite): {item}", file=sys.stderr)
    print(f"wrote {report['summary']} ({report['steps']} steps) to {args.dst} as {args.format}")
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
    import gymnasium

    from continuonbrain.sim.collect import collect_to_dir

    try:
        summary = collect_to_dir(
            args.env, args.episodes, args.out, format=args.format, seed=args.seed, dart_sigma=args.dart_sigma
        )
    except (gymnasium.error.Error, ValueError, ImportError) as exc:  # an unknown id or module, unsupported spaces
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        _print_json(summary)
    else:
        print(json.dumps(summary, indent=2, default=str))
    return 0


# --- train -------------------------------------------------------------------------------


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``continuonbrain train`` (also ``python run_trainer.py``)."""
    from continuonbrain.trainer.train_config import add_train_arguments as add

    add(p)


def cmd_train(args: argparse.Namespace) -> int:
    from continuonbrain.trainer.sequential import run_command

    return run_command(args)


# --- eval ----------------------------------------------------------------------------------


def cmd_eval(args: argparse.Namespace) -> int:
    import gymnasium

    from continuonbrain.runtime.brain_service import NoModelError
    from continuonbrain.runtime.served_policy import ModelEnvMismatch, evaluate_served
    from continuonbrain.sim.evaluate import percent

    try:
        result = evaluate_served(args.model_root, args.env, slot=args.slot, episodes=args.episodes, seed=args.seed)
    except (NoModelError, ModelEnvMismatch, gymnasium.error.Error, ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        _print_json(result)
        return 0
    dist = "tracking error" if result["distance_metric"] == "tracking_error" else "final distance"
    print(f"{result['env']}: {result['episodes']} episodes from seed {result['seed']}, "
          f"model {result['model_version']} ({result['slot']} slot, through BrainService.act)")  # fmt: skip
    print(f"  {'policy':<8} {'success':>8} {'mean return':>12} {dist:>15}")
    rows = [("model", result), *(result["baselines"] or {}).items()]
    for name, r in rows:
        if r is None:
            print(f"  {name:<8} (no scripted expert for this env)")
            continue
        d = "n/a" if r["mean_final_distance"] is None else f"{r['mean_final_distance']:.4f}"
        print(f"  {name:<8} {percent(r['success_rate']):>8} {r['mean_return']:>12.3f} {d:>15}")
    return 0


# --- imagine -------------------------------------------------------------------------------


def cmd_imagine(args: argparse.Namespace) -> int:
    from continuonbrain.sim.imagine import ImagineError, SearchConfig, imagine_to_dir

    options = {"method": args.method, "horizon": args.horizon, "history": args.history, "seed": args.seed}
    for name in ("population", "elites", "iterations", "oversample", "max_final_cost"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    try:
        search = SearchConfig(**options)  # checked as a whole (elites <= population)
        summary = imagine_to_dir(
            args.model_root,
            args.out,
            args.episodes,
            rlds_dir=args.rlds_dir,
            env=args.env,
            slot=args.slot,
            search=search,
        )
    except (ImagineError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    short = summary["episodes"] < summary["requested"]
    if args.json:
        _print_json({k: v for k, v in summary.items() if k != "paths"})
    else:
        print(
            f"wrote {summary['episodes']} of {summary['requested']} imagined {summary['env']} episodes "
            f"({summary['steps']} steps) to {summary['out']}"
        )
        print(
            f"  {summary['method']} in model {summary['model_version']} ({summary['slot']} slot), from "
            f"{summary['start_states']} start states of {summary['rlds_dir']}"
        )
        if summary["episodes"]:
            print(
                f"  predicted cost {summary['mean_predicted_cost']:.4f}, predicted final cost "
                f"{summary['mean_predicted_final_cost']:.4f} (world-model predictions, not measurements)"
            )
    if short:
        print(
            f"only {summary['episodes']} of {summary['requested']} episodes: {summary['dropped']} searches ended "
            f"with a predicted final cost above {summary['max_final_cost']} (raise --max-final-cost or --oversample)",
            file=sys.stderr,
        )
    return 1 if short else 0


# --- adapt ---------------------------------------------------------------------------------


def cmd_adapt(args: argparse.Namespace) -> int:
    from continuonbrain.runtime.sim_twin import closed_loop_runner
    from continuonbrain.trainer.local_lora_trainer import run_command

    # the same sim twin as models promote: the adapter's own promotion runs the one gate
    return run_command(args, sim_twin=closed_loop_runner)


# --- models --------------------------------------------------------------------------------


def _slot_line(name: str, m: dict | None) -> str:
    if not m:
        return f"  {name:<10} (empty)"
    if m.get("broken"):
        return f"  {name:<10} {m.get('version')}  BROKEN: {m.get('reason')}"
    comps = ",".join(m.get("components", []))
    return f"  {name:<10} {m['version']}  {m.get('kind', '?')}  [{comps}]  created {m.get('created', '?')}"


#: What ``models promote`` prints of each gate check (the JSON and the audit line hold them all).
_CHECK_FIGURES = ("metric", "candidate", "current", "paired_mean_diff", "paired_se", "margin", "episodes", "ceiling")


def _check_line(name: str, check: dict) -> str:
    state = {True: "pass", False: "FAIL", None: "skip"}[check.get("passed")]
    figures = ", ".join(f"{k} {check[k]}" for k in _CHECK_FIGURES if check.get(k) is not None)
    note = check.get("note") or check.get("why") or check.get("skipped") or ""
    return f"  check      {name:<10} {state}  {figures}" + (f"  ({note})" if note else "")


def cmd_models(args: argparse.Namespace) -> int:
    from continuonbrain.models.store import PromotionStore, StoreError

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
            from continuonbrain.models.promotion import load_gate_config, promote_candidate
            from continuonbrain.runtime.sim_twin import check_sim_env, closed_loop_runner

            overrides = {"sim_env": args.sim_env, "sim_episodes": args.sim_episodes, "sim_seed": args.sim_seed}
            try:
                cfg, source = load_gate_config(args.model_root, overrides=overrides)
                check_sim_env(cfg)
            except ValueError as exc:  # a gate_config.json, an option or a sim env that is not usable
                print(f"error: {exc}", file=sys.stderr)
                return 2
            result, info = promote_candidate(
                args.model_root,
                rlds_dir=args.rlds_dir,
                cfg=cfg,
                closed_loop=closed_loop_runner(cfg),
                config_source=source,
            )
            if args.json:
                _print_json({"promoted": result.passed, "reason": result.reason, "gate": result.to_dict(), **info})
            else:
                verdict = "PROMOTED" if result.passed else "REJECTED"
                print(f"{verdict}: {result.reason}")
                for name, check in result.checks.items():
                    print(_check_line(name, check))
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
    p.add_argument(
        "--quarantine",
        metavar="DIR",
        help="move bad episodes here with a reason.txt (a Donkeycar tub's are marked deleted in its manifest)",
    )
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
    p.add_argument("--format", choices=["continuon", "tfds", "tub"], required=True)
    p.add_argument("--for-upload", action="store_true", help="only upload-ready episodes, owner block stripped")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace episode directories / TFDS splits / tubs already in DST (default: keep both / refuse)",
    )
    p.set_defaults(func=cmd_rlds_convert)

    p = rlds.add_parser("schema", help="print the episode JSON Schema")
    p.add_argument("--out", help="write it to this file instead")
    p.set_defaults(func=cmd_rlds_schema)

    sim = sub.add_parser("sim", help="built-in simulators").add_subparsers(dest="sim_command", required=True)
    p = sim.add_parser("collect", help="record expert episodes as RLDS")
    p.add_argument(
        "--env", required=True, help="reach2d, track2d, drive2d, or a gymnasium id (module:EnvId imports module)"
    )
    p.add_argument("--episodes", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--format", choices=["continuon", "tfds", "tub"], default="continuon")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dart-sigma", type=float, default=0.0, help="noise on executed actions (DART)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sim_collect)

    p = sub.add_parser("train", help="train the HOPE v1 seed, one component at a time")
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="score a model slot in a simulator through BrainService, with baselines")
    p.add_argument(
        "--env",
        required=True,
        help="reach2d, track2d, drive2d, or a gymnasium id (module:EnvId imports module) with a Box action space "
        "and a Box or Dict-of-Boxes observation space",
    )
    p.add_argument("--model-root", required=True, help="model store holding the slot to evaluate")
    p.add_argument("--slot", choices=["current", "candidate"], default="current")
    p.add_argument("--episodes", type=int, default=100, help="seeded episodes (the baselines run the same ones)")
    p.add_argument("--seed", type=int, default=0, help="base seed of the episodes")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("imagine", help="search imagined episodes in a model's world model, written as RLDS")
    p.add_argument("--model-root", required=True, help="model store whose world model (VQ-VAE + Mid loop) plans")
    p.add_argument("--episodes", type=int, required=True, help="imagined episodes to write")
    p.add_argument("--out", required=True, help="directory for the episodes (Continuon layout)")
    p.add_argument("--rlds-dir", help="real episodes to start from (default: the rlds_dir in the model's manifest)")
    p.add_argument("--slot", choices=["current", "candidate"], help="default: current, else candidate")
    p.add_argument("--env", help="env whose goal to plan for (default: the episodes' environment_id)")
    p.add_argument("--method", choices=["cem"], default="cem", help="search method (cross-entropy method)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--horizon", type=int, default=8, help="Mid steps planned per episode (each mid_every steps)")
    p.add_argument("--history", type=int, default=2, help="real Mid ticks stepped through before the start")
    p.add_argument("--population", type=int, help="CEM candidates per start and iteration (default 64)")
    p.add_argument("--elites", type=int, help="CEM elite set (default 8)")
    p.add_argument("--iterations", type=int, help="CEM iterations (default 5)")
    p.add_argument("--oversample", type=float, help="start states searched per episode written (default 2)")
    p.add_argument("--max-final-cost", type=float, help="drop plans predicted to end farther (default: the goal's)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=cmd_imagine)

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
        p.add_argument(
            "--rlds-dir",
            help="promote: where the held-out episodes are (default: the set the candidate's manifest records)",
        )
        if verb == "promote":
            p.add_argument(
                "--sim-env",
                metavar="ENV",
                help="also run candidate and current closed-loop on this sim twin (a built-in env id or a "
                "gymnasium id; default: the store's gate_config.json sim_env)",
            )
            p.add_argument("--sim-episodes", type=int, metavar="N", help="sim twin episodes per model (default 100)")
            p.add_argument("--sim-seed", type=int, metavar="S", help="sim twin base seed (default 1000)")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=cmd_models)

    p = sub.add_parser("serve", help="BrainService + HTTP API + Robot Editor on http://HOST:PORT/")
    p.add_argument("--model-root", required=True, help="model store whose current/ is served")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback; 0.0.0.0 exposes the robot)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--token-file", help="API token file (default <model-root>/api_token, made with mode 0600)")
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a Host name the API answers besides the bound address and localhost (repeatable; "
        "with --host 0.0.0.0 and none given, any Host is answered)",
    )
    p.add_argument("--rlds-dir", help="episodes the trainer sees (default: the served model's rlds_dir)")
    p.add_argument("--run-root", help="training job dirs (default <model-root>/../runs)")
    p.add_argument("--train-config", help="sequential training config (default pi5-hope-v1)")
    p.add_argument("--adapt-config", help="LoRA adaptation config (default sim-arm-lora)")
    p.add_argument("--robot-state-file", help="the robot stack's mode file read by the gates")
    p.add_argument("--sysfs-root", default="/sys", help="where temperature and battery are read")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="run the whole loop on the built-in defaults")
    p.add_argument("--workdir", default=".demo", help="where data, models and runs go")
    p.add_argument("--no-serve", action="store_true", help="stop after the summary")
    p.add_argument("--port", type=int, default=8080, help="where the Robot Editor is served (a free one if taken)")
    p.set_defaults(func=cmd_demo)
    return parser


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from continuonbrain.runtime.api import serve

    logging.getLogger("continuonbrain").setLevel(logging.INFO)
    kwargs = {k: getattr(args, k) for k in ("rlds_dir", "run_root", "train_config", "adapt_config") if getattr(args, k)}
    if args.robot_state_file:
        kwargs["robot_state_file"] = args.robot_state_file

    def ready(host: str, port: int, token_path: Path) -> None:
        shown = f"[{host}]" if ":" in host else host
        print(f"Robot Editor: http://{shown}:{port}/   (token in {token_path}; Ctrl-C stops)", flush=True)

    import contextlib

    from continuonbrain.runtime.auth import TokenError

    try:
        with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises Ctrl-C after its clean shutdown
            serve(
                args.model_root,
                host=args.host,
                port=args.port,
                token_file=args.token_file,
                sysfs_root=args.sysfs_root,
                on_ready=ready,
                allowed_hosts=args.allow_host,
                **kwargs,
            )
    except TokenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from continuonbrain.demo import run_demo

    return run_demo(Path(args.workdir), serve=not args.no_serve, port=args.port)


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
    except OSError as exc:  # a full disk, a read-only mount, a missing permission: one line, no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{(exc.strerror or str(exc)).lower()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
