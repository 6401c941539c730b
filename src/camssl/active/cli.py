"""Command-line glue of ``camssl active``, ``camssl active-export`` and ``camssl active-table``."""

from __future__ import annotations

import argparse
from pathlib import Path

from camssl.commands.common import add_config_args, overrides_from_args, shortcut_values
from camssl.errors import UserError

# flag -> (ActiveConfig field, type, help)
ACTIVE_FLAGS: dict[str, tuple[str, type, str]] = {
    "--strategy": ("strategy", str, "query strategy: revival | random | entropy | coreset [revival]"),
    "--initial": ("initial", int, "size of the class-balanced initial labeled set [500]"),
    "--budget": ("budget", int, "images queried per cycle [250]"),
    "--cycles": ("cycles", int, "query rounds (the loop trains cycles + 1 times) [4]"),
    "--oracle": ("oracle", str, "simulated: the data's labels; files: you fill in a CSV, then --resume; labelstudio: "
                 "you label in Label Studio, then --resume --labels EXPORT (docs/labelstudio.md) [simulated]"),
}
NOT_FOR_ACTIVE = ("--labeled", "--ratio")
DEFAULT_METHOD = "pseudo_label"  # the task model's method with a plain training preset (demo, cpu, paper)


def add_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    """``camssl active``, ``camssl active-export`` and ``camssl active-table``."""
    p = sub.add_parser("active", parents=parents,
                       help="active learning: train, query the pool, label, retrain (REVIVAL)")
    add_active_arguments(p)
    p.set_defaults(func=cmd_active, resume_hint="camssl active --out {out} --resume")
    p = sub.add_parser("active-export", parents=parents,
                       help="an active-learning run's pending query as Label Studio tasks (docs/labelstudio.md)")
    p.add_argument("out", help="the active-learning folder (camssl active --out)")
    p.add_argument("--format", choices=["labelstudio"], default="labelstudio", help="what to write [labelstudio]")
    p.add_argument("--root", default=None, help="the folder Label Studio serves files from "
                   "(LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT); it must hold OUT [OUT]")
    p.set_defaults(func=cmd_active_export)
    p = sub.add_parser("active-table", parents=parents, help="accuracy-vs-labels curves of active-learning runs")
    add_active_table_arguments(p)
    p.set_defaults(func=cmd_active_table)


def add_active_arguments(p: argparse.ArgumentParser) -> None:
    add_config_args(p, config_help=(
        "preset (active-cpu, active-paper, or a training preset: demo, cpu, fast, paper, whose task model "
        f"is then {DEFAULT_METHOD} unless --method says otherwise) or a YAML file [demo]"))
    p.set_defaults(config=None)  # None: not given (demo when starting; the saved config when resuming)
    for flag, (_, typ, text) in ACTIVE_FLAGS.items():
        p.add_argument(flag, type=typ, default=None, help=text)
    p.add_argument("--warm-start", action="store_true", default=None,
                   help="start each cycle from the previous cycle's final weights [re-initialise]")
    p.add_argument("--out", required=True, help="output folder (active.json, cycle_0/, cycle_1/, ...)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (after a kill, or once the "
                   "files oracle's CSV is filled in)")
    p.add_argument("--first-cycle-from", default=None, metavar="RUN",
                   help="a new run: copy cycle 0 from another camssl active run with the same config, --seed and "
                   "--initial (any strategy) instead of training it again; cycle 0 does not depend on the strategy")
    p.add_argument("--labels", default=None, metavar="EXPORT", help="with --resume: Label Studio's export (JSON, "
                   "JSON-MIN or CSV) of the pending query's tasks, checked as a whole before it is used")
    p.add_argument("--archive", default=None, metavar="DEST",
                   help="once the run is finished, keep its small files (active.json; each cycle's config, split, "
                   "metrics, result; no checkpoints) in DEST, e.g. docs/runs/NAME/STRATEGY-sSEED: camssl "
                   "active-table then works from DEST where --out is gone")


def _given(args: argparse.Namespace) -> list[str]:
    flags = [*ACTIVE_FLAGS, "--config", "--warm-start", "--skip-bad"]
    given = [f for f in flags if getattr(args, f.lstrip("-").replace("-", "_")) not in (None, False)]
    return [*shortcut_values(args), *given, *args.overrides]


def configs_from_args(args: argparse.Namespace):  # -> tuple[TrainConfig, ActiveConfig]
    from camssl.active.config import load_active_config

    for flag in NOT_FOR_ACTIVE:
        if getattr(args, flag.lstrip("-")) is not None:
            raise UserError(f"{flag} does not apply to camssl active: the loop makes the labeled and unlabeled sets "
                            "(use --initial and --budget)")
    active = {field: getattr(args, flag.lstrip("-")) for flag, (field, _, _) in ACTIVE_FLAGS.items()
              if getattr(args, flag.lstrip("-")) is not None}
    if args.warm_start:
        active["warm_start"] = True
    return load_active_config(args.config or "demo", overrides_from_args(args), active, default_method=DEFAULT_METHOD)


def cmd_active(args: argparse.Namespace) -> int:
    from camssl.active.loop import run_active, summary
    from camssl.text import fmt_pct

    cfg, acfg = configs_from_args(args) if (not args.resume or _given(args)) else (None, None)
    if args.archive is not None:
        _check_archive(args, cfg, acfg)
    state = run_active(cfg, acfg, args.out, resume=args.resume, labels=args.labels,
                       first_cycle_from=args.first_cycle_from)
    if state.pending is None:
        print("cycle  labels  test acc  virtual acc before -> after  train s  selection s")
        for r in summary(state):
            sel = "" if r["select_s"] is None else f"{r['select_s']:.1f}"
            print(f"{r['cycle']:>5}  {r['n_labeled']:>6}  {fmt_pct(r['test_acc']):>8}  "
                  f"{fmt_pct(r['virtual_acc_before']):>8} -> {fmt_pct(r['virtual_acc_after']):<8}      "
                  f"{r['train_s']:>7.1f}  {sel:>11}")
    if args.archive is not None and state.finished:
        from camssl.active.archive import archive_active

        folders = archive_active(Path(args.out), Path(args.archive))
        print(f"archived active.json and {len(folders)} cycles' small files in {args.archive}")
    elif args.archive is not None:
        print(f"not archived yet: the run waits for labels; camssl active --out {args.out} --resume --archive "
              f"{args.archive} archives it once it is finished")
    return 0


def _check_archive(args: argparse.Namespace, cfg, acfg) -> None:  # before anything runs (cfg, acfg may be None)
    from camssl.active.archive import check_archive
    from camssl.active.state import ActiveState

    if cfg is None:  # a resume with the saved settings
        saved = ActiveState.load(Path(args.out))
        strategy, seed = saved.active["strategy"], int(saved.train_config["seed"])
    else:
        strategy, seed = acfg.strategy, cfg.seed
    check_archive(Path(args.archive), Path(args.out), strategy, seed)


def cmd_active_export(args: argparse.Namespace) -> int:
    from camssl.active import labelstudio
    from camssl.active.oracle import query_name, query_paths
    from camssl.active.state import ActiveState

    out = Path(args.out)
    state = ActiveState.load(out)
    if state.pending is None:
        raise UserError(f"nothing to export: '{out}' has no query waiting for labels ("
                        f"{'the run is finished' if state.finished else 'the loop has not queried yet'})")
    if state.active["oracle"] == "simulated":
        raise UserError(f"nothing to export: '{out}' uses the simulated oracle (the data's labels); "
                        f"run camssl active --out {out} --resume")
    root = labelstudio.check_root(out, Path(args.root) if args.root else out)
    folder = query_paths(out, state.pending["cycle"])[1]
    missing = any(not (folder / query_name(i)).exists() for i in state.pending["index"])
    images = _train_images(state, out) if missing else None
    labelstudio.write_query(out, state, state.active["strategy"], images, root)
    print(labelstudio.instructions(out, state.pending["cycle"], root))
    return 0


def _train_images(state, out: Path):  # -> Tensor: every training image, checked against the run's data
    from camssl.config import TrainConfig, from_dict
    from camssl.data import load_data

    cfg = from_dict(TrainConfig, state.train_config)
    data = load_data(cfg.data, seed=cfg.split.seed)
    if data.fingerprint != state.fingerprint:
        raise UserError(f"the data of '{out}' differs from the data found now (fingerprint {state.fingerprint} vs "
                        f"{data.fingerprint}); the query's images cannot be written")
    return data.train.images


def add_active_table_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dirs", nargs="+", help="camssl active --out folders, or folders holding several")
    p.add_argument("--out", default=None, help="where to write curves.md/.csv/.png and diagnostics.md/.csv [the first folder]")
    p.add_argument("--metric", choices=["test_acc", "test_acc_at_best_val"], default="test_acc",
                   help="test accuracy of each cycle's final model, or at its best validation epoch [test_acc]")
    p.add_argument("--baseline", default="random", help="strategy the paired differences are taken against [random]")
    p.add_argument("--title", default="Active learning: accuracy vs labels", help="title of the table and figure")


def cmd_active_table(args: argparse.Namespace) -> int:
    from camssl.active.curves import diagnostics_from_runs, points_from_runs, write_curves, write_diagnostics

    points = points_from_runs(args.dirs, args.metric)
    out = Path(args.out or args.dirs[0])
    metric = "test accuracy" + (" at the best validation epoch" if args.metric == "test_acc_at_best_val" else "")
    for path in write_curves(points, out, args.title, args.baseline, metric):
        print(f"wrote {path}")
    for path in write_diagnostics(diagnostics_from_runs(args.dirs), out, args.title, args.baseline):
        print(f"wrote {path}")
    print((out / "curves.md").read_text(), end="")
    return 0
