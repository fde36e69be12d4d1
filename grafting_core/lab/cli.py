"""The command line: ``python -m grafting_core`` (or ``grafting``) for headless runs.

    python -m grafting_core train --magnitude adam --direction sgd --steps 1000
    python -m grafting_core grid --optimizers sgd adam adagrad --seeds 0 1 2 --dataset chars
    python -m grafting_core compare --optimizers sgd adam --seeds 0 1 2 --dataset chars
    python -m grafting_core schedule-transfer --magnitude adam --direction sgd
    python -m grafting_core ratio-study GROUP --magnitude adam --direction sgd
    python -m grafting_core static-ratios --magnitude adam --window 50 200
    python -m grafting_core runs list | show ID | export ID | delete ID | schedule ID | ratios ID

Every run setting is a flag (``--help`` lists them) or a key of a TOML/JSON ``--config`` file;
flags override the file. Bad flags exit with status 2 and a message naming the flag.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import os
import shlex
import shutil
import signal
import sqlite3
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pandas as pd
from tqdm import tqdm

from grafting_core.lab.experiments.analysis import static_ratios_from_run
from grafting_core.lab.experiments.common import LAB_OPTIMIZERS, run_all
from grafting_core.lab.experiments.compare import Comparison, compare
from grafting_core.lab.experiments.comparison_plan import (
    PROTOCOL,
    SweepPlan,
    check_continuation,
    comparison_request,
    plan_comparison,
    plan_continuation,
)
from grafting_core.lab.experiments.comparison_reading import control_text
from grafting_core.lab.experiments.graft_lrs import far_from_tuned, graft_lr_sweep
from grafting_core.lab.experiments.grid import grid, grid_matrix, grid_table
from grafting_core.lab.experiments.ratio_study import (
    SCOPES,
    STUDY_VERDICT_COLUMNS,
    WINDOWS,
    plan_study,
    start_study,
    static_ratio_table,
    study_reading,
    study_verdicts_text,
)
from grafting_core.lab.experiments.report import comparison_report
from grafting_core.lab.experiments.static_ratios import static_ratio_experiment
from grafting_core.lab.experiments.transfer import schedule_transfer
from grafting_core.lab.runs import lifeline
from grafting_core.lab.runs.capacity import check_fits
from grafting_core.lab.runs.config import RunConfig, field_help, field_names, parse_value
from grafting_core.lab.runs.executor import Executor, LocalExecutor
from grafting_core.lab.runs.groups import RESUMED, group_plan
from grafting_core.lab.runs.runner import (
    StoreSink,
    create_run,
    load_artifact,
    prepare_run,
    train,
)
from grafting_core.lab.runs.trainer import check_inputs
from grafting_core.lab.store.norms import schedule_from_run
from grafting_core.lab.store.run_store import DB_FILENAME, STATUSES, RunStore, default_runs_dir
from grafting_core.registry import OptimizerSpec
from grafting_core.static_ratios import STATISTICS

READ_ONLY_ACTIONS = ("list", "show", "export", "schedule", "ratios")  # of ``runs``
EXPERIMENT_FIELDS = ("magnitude", "magnitude_hparams", "direction", "direction_hparams")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a user error in one line naming the input, with exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _number(kind: type, what: str, ok: Callable[[Any], bool]) -> Callable[[str], Any]:
    """An argparse type: a finite ``kind`` for which ``ok`` holds (``what`` names it)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not math.isfinite(value) or not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    return parse


def _add_config_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    group = parser.add_argument_group("run settings (defaults in brackets)")
    group.add_argument("--config", type=Path, help="TOML or JSON file of run settings")
    defaults = RunConfig()
    for name in field_names():
        if name not in skip:
            group.add_argument(
                f"--{name.replace('_', '-')}",
                dest=name,
                metavar="VALUE",
                help=f"{field_help(name)} [{getattr(defaults, name)!r}]",
            )


def _config(
    parser: argparse.ArgumentParser, args: argparse.Namespace, store: RunStore | None = None
) -> RunConfig:
    """The run config from --config and flags; any problem exits 2 naming the setting, before
    any run is recorded (files it reads, checked against the model: ``check_inputs``)."""
    try:
        base = RunConfig.from_file(args.config) if args.config else RunConfig()
        changes = {
            name: parse_value(name, getattr(args, name))
            for name in field_names()
            if getattr(args, name, None) is not None
        }
        config = base.replace(**changes)
        check_fits(config)  # sizes that cannot fit memory: refused before any run is created
        store = store or getattr(args, "store", None)  # main keeps it there
        loader = functools.partial(load_artifact, store) if store is not None else None
        check_inputs(config, loader)
        return config
    except (ValueError, TypeError, OSError) as error:
        parser.error(str(error))


def _optimizer_choice(parser, text: str) -> tuple[str, tuple[str, dict]]:
    """``adam`` (a lab preset or registry name) or ``adam={"lr": 3e-3}`` (with overrides)."""
    label, _, overrides = text.partition("=")
    name, hparams = LAB_OPTIMIZERS.get(label, (label, {}))
    try:
        changed = json.loads(overrides) if overrides else {}
        if not isinstance(changed, dict):
            raise ValueError(f"overrides must be a JSON object, got {overrides}")
        hparams = {**hparams, **changed}
        OptimizerSpec(name, hparams)
    except (ValueError, TypeError) as error:
        parser.error(f"optimizer {text!r}: {error}")
    shown = ", ".join(
        f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
        for key, value in changed.items()
    )
    return (f"{label}({shown})" if changed else label), (name, hparams)


def _progress(total_label: str):
    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None or bar.disable:  # none yet, or closed: a later phase has more runs
            bar = tqdm(total=total, desc=total_label, unit="run", initial=done)
        bar.total = total  # a comparison learns its total phase by phase
        bar.n = done
        bar.refresh()
        if done == total:
            bar.close()

    return update


def _print_table(table: pd.DataFrame) -> None:
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(table.to_string(index=False))


# ------------------------------------------------------------------ commands
def cmd_train(parser, args, store: RunStore) -> int:
    given = [
        f"--{name.replace('_', '-')}"
        for name in ("config", *field_names())
        if getattr(args, name, None) is not None
    ]
    if args.resume and given:
        parser.error(
            f"--resume continues run {args.resume} with its stored settings; drop {' '.join(given)}"
        )
    if args.resume:
        try:
            config = RunConfig.from_dict(store.run(args.resume)["config"])
        except KeyError:
            parser.error(f"--resume {args.resume}: no run with this id in {store.root}")
        run_id = args.resume
    else:
        config = _config(parser, args, store)
        run_id = create_run(store, config)
    try:
        ticket = prepare_run(store, run_id, resume=bool(args.resume))
    except ValueError as error:  # a resume refused (live elsewhere, damaged checkpoint)
        if args.resume:
            parser.error(f"--resume {run_id}: {error}")
        _say(f"run {run_id} failed: {error}")
        return 1
    bar = tqdm(total=config.steps, desc=config.label, unit="step")

    def on_metrics(trainer, rows):
        bar.n = trainer.step
        loss = [v for _, name, v in rows if name == "train_loss"]
        if loss:
            bar.set_postfix(loss=f"{loss[-1]:.4f}")
        bar.refresh()

    try:
        status = train(ticket, StoreSink(store, run_id), callbacks={"on_metrics": on_metrics})
    except KeyboardInterrupt:
        _say(f"\nstopped; resume with: {_command(args)} train --resume {run_id}", sys.stdout)
        return 130
    except Exception as error:  # recorded in the store as failed
        _say(f"run {run_id} failed: {error}")
        return 1
    finally:
        with contextlib.suppress(OSError):  # a closed terminal (SIGHUP)
            bar.close()
    final = store.metrics_wide(run_id).ffill().iloc[-1]
    print(
        f"run {run_id}: {status} at step {store.run(run_id)['last_step']}; "
        + ", ".join(f"{k}={final[k]:.4g}" for k in ("val_loss", "val_accuracy") if k in final)
    )
    return 0 if status in ("finished", "stopped") else 1


@contextlib.contextmanager
def _executor(args, store: RunStore) -> Iterator[Executor | None]:
    """Where an experiment's runs train, shut down afterwards: local worker processes (none
    with --workers 1), or Dask workers (``--executor dask``: ``--scheduler`` or a
    LocalCluster of --workers processes). An unreachable scheduler exits 2 before any run."""
    if getattr(args, "executor", "local") == "dask":
        from grafting_core.lab.runs.dask_executor import (
            DaskExecutor,  # dask is imported only when asked for
        )

        parser = args.command_parser
        if args.scheduler and args.workers:
            parser.error(
                f"--workers {args.workers}: a cluster's workers are started there "
                "(dask worker); --workers sizes the LocalCluster used without "
                "--scheduler"
            )
        try:
            executor = DaskExecutor(store.root, args.scheduler, n_workers=args.workers or None)
        except (ConnectionError, ImportError) as error:
            parser.error(f"--executor dask: {error}")
    elif getattr(args, "scheduler", None):
        args.command_parser.error(f"--scheduler {args.scheduler}: needs --executor dask")
    else:
        executor = LocalExecutor(store.root, args.workers) if args.workers != 1 else None
    before = set(store.runs(flatten_config=False)["run_id"])
    try:
        with _stop_signals(executor):
            try:
                yield executor
            except KeyboardInterrupt as interrupt:
                raise Stopped(_stop_experiment(args, store, executor, before, interrupt)) from None
    finally:
        if executor:
            executor.shutdown()


class Stopped(Exception):
    """An experiment stopped by Ctrl-C, SIGTERM or SIGHUP; the message says how to go on."""


@contextlib.contextmanager
def _stop_signals(executor: Executor | None) -> Iterator[None]:
    """While an experiment runs, Ctrl-C, SIGTERM and SIGHUP raise KeyboardInterrupt here,
    after telling the executor to hand no queued run to a worker any more: a worker that
    stops its run at the same Ctrl-C (it reaches the whole process group) must not take the
    next one. (A run training inline takes the signals itself: lifeline.stoppable.)"""

    def handler(signum: int, frame: object) -> None:
        if executor is not None:
            executor.stopping = True
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in lifeline.SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _stop_experiment(
    args, store: RunStore, executor: Executor | None, before: set[str], interrupt: BaseException
) -> str:
    """Stop an experiment's runs: training ones end their step and checkpoint, queued ones
    never start (both ``stopped``, resumable); a second signal ends the workers at once.
    Returns what to tell the user: what stopped and how to continue."""
    cause = str(interrupt).split(" by ")[-1] if str(interrupt) else "SIGINT"
    _say(
        f"\n{cause}: stopping; training runs finish their step and checkpoint, queued runs "
        "do not start (again: stop at once)"
    )
    if executor is not None:
        try:
            executor.stop()
        except KeyboardInterrupt:
            executor.kill()  # their runs: interrupted, from their last periodic checkpoint
    _settle_own_runs(store)
    return _how_to_continue(args, store, before, cause)


def _settle_own_runs(store: RunStore) -> None:
    """Runs still ``running`` under this process after a stop: those never started are
    ``stopped`` at step 0, any other ``interrupted`` (from its last checkpoint)."""
    store.mark_interrupted()
    runs = store.runs(status="running", flatten_config=False)
    own = runs[(runs["pid"] == os.getpid()) & (runs["host"] == store.host)]
    for run_id, step in zip(own["run_id"], own["last_step"]):
        if pd.isna(step):
            store.set_status(run_id, "stopped", step=0)
        else:
            store.set_status(run_id, "interrupted", error="its experiment was stopped at once")


def _command(args) -> str:
    """``python -m grafting_core`` with this command's ``--runs-dir``."""
    runs_dir = getattr(args, "runs_dir", None)
    return "python -m grafting_core" + (
        f" --runs-dir {shlex.quote(str(runs_dir))}" if runs_dir else ""
    )


def _how_to_continue(args, store: RunStore, before: set[str], cause: str) -> str:
    """What an experiment stopped with, and the command that continues it."""
    runs = store.runs(flatten_config=False)
    groups = set(runs.loc[~runs["run_id"].isin(before), "group"].dropna())
    groups |= {args.group} if getattr(args, "group", None) else set()
    mine = runs[runs["group"].isin(groups)]
    counts = mine["status"].value_counts()
    said = ", ".join(f"{n} {status}" for status, n in counts.items())
    if args.command in ("grid", "compare"):
        commands = [f"{_command(args)} {args.command} --group {g}" for g in sorted(groups)]
    elif args.command in ("ratio-study", "graft-lrs"):  # they continue their group when rerun
        commands = ["python -m grafting_core " + shlex.join(args.argv)]
    else:
        todo = mine.loc[mine["status"].isin(RESUMED), "run_id"]
        commands = [f"{_command(args)} train --resume {run_id}" for run_id in todo]
    where = f" in {', '.join(sorted(groups))}" if groups else ""
    text = f"stopped by {cause}{where}: {said or 'no runs'}"
    if commands and counts.reindex(list(RESUMED)).fillna(0).sum():
        text += "; continue with:\n  " + "\n  ".join(commands)
    return text


def _say(text: str, file=None) -> None:
    """Print a line to stderr (or ``file``); a terminal already closed (SIGHUP) is no error."""
    with contextlib.suppress(OSError, ValueError):
        print(text, file=file or sys.stderr, flush=True)


def cmd_grid(parser, args, store: RunStore) -> int:
    if args.group:
        return _continue_grid(parser, args, store)
    args.optimizers = args.optimizers or ["sgd", "adam"]
    args.seeds = args.seeds or [0]
    config = _config(parser, args)
    if len(set(args.optimizers)) < 2:
        parser.error(
            f"--optimizers {' '.join(args.optimizers)}: a grid pairs at least two "
            "different optimizers"
        )
    optimizers = dict(_optimizer_choice(parser, label) for label in args.optimizers)
    with _executor(args, store) as executor:
        group, table = grid(
            store, config, optimizers, args.seeds, executor=executor, progress=_progress("grid")
        )
    return _print_grid(args, table, group)


def _continue_grid(parser, args, store: RunStore) -> int:
    """``grid --group G``: G's stopped and interrupted runs resumed, the rest kept; any
    setting given is refused (a continuation is the same grid)."""
    given = [
        f"--{name.replace('_', '-')}"
        for name in ("config", "optimizers", "seeds", *field_names())
        if getattr(args, name, None) is not None
    ]
    if given:
        parser.error(
            f"--group {args.group} continues that grid with the settings it was made with; "
            f"drop {' '.join(given)} (or leave --group out to start a new grid)"
        )
    kinds = set(store.runs(group=args.group, flatten_config=False)["kind"])
    if not kinds:
        parser.error(f"--group {args.group}: no runs in this group")
    if kinds != {"grid"}:
        parser.error(
            f"--group {args.group}: a {'/'.join(sorted(kinds))} group, not a grid"
            + (f"; continue it with: compare --group {args.group}" if "compare" in kinds else "")
        )
    try:
        with _executor(args, store) as executor:
            run_all(
                store,
                group_plan(store, args.group),
                group=args.group,
                kind="grid",
                executor=executor,
                progress=_progress("grid"),
                reuse=True,
            )
    except ValueError as error:  # runs of the group training elsewhere
        parser.error(f"--group {args.group}: {error}")
    return _print_grid(args, grid_table(store, args.group), args.group)


def _print_grid(args, table: pd.DataFrame, group: str) -> int:
    """A grid's runs and matrix; exit status 1 while some run is stopped or interrupted."""
    _print_table(table[["name", "seed", "status", "val_loss", "val_accuracy"]])
    print(f"\nmean val_loss over seeds (rows: magnitude M, columns: direction D), group {group}")
    print(grid_matrix(table).round(4).to_string())
    open_runs = int(table["status"].isin(RESUMED).sum())
    if open_runs:
        _say(
            f"{open_runs} of {len(table)} runs did not finish (stopped or interrupted); "
            f"continue with: {_command(args)} grid --group {group}"
        )
        return 1
    return 0


#: compare's own options, None when not given (to tell a continuation that retypes none).
COMPARE_DEFAULTS = {
    "optimizers": ["sgd", "adam"],
    "seeds": [0, 1, 2],
    "points": PROTOCOL.points,
    "factor": PROTOCOL.factor,
    "extensions": PROTOCOL.extensions,
    "warmups": list(PROTOCOL.warmups),
    "tune_seeds": list(PROTOCOL.tune_seeds),
    "rung": PROTOCOL.rung,
    "rung_seeds": PROTOCOL.rung_seeds,
    "keep": PROTOCOL.keep,
    "control": PROTOCOL.control,
    "back_off": PROTOCOL.back_off,
    "partial": [],
    "tune_grafts": False,
}


def _given_settings(args) -> list[str]:
    """The comparison options and run settings given on the command line (--seeds aside)."""
    given = [name for name in COMPARE_DEFAULTS if getattr(args, name) is not None]
    given += [name for name in field_names() if getattr(args, name, None) is not None]
    return [name for name in given if name != "seeds"] + (["config"] if args.config else [])


def _compare_request(parser, args) -> dict[str, Any]:
    """compare()'s arguments from the command line (the protocol's defaults where not given)."""
    for name, default in COMPARE_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    config = _config(parser, args)
    if args.schedule is None:  # the protocol's default: warm-up (10% of the steps) + cosine
        warmup = config.warmup_steps if args.warmup_steps is not None else config.steps // 10
        config = config.replace(schedule="warmup_cosine", warmup_steps=max(1, warmup))
    if config.schedule != "warmup_cosine" and args.warmups == list(PROTOCOL.warmups):
        args.warmups = []  # another schedule has no warm-up to search
    try:
        plan = SweepPlan(
            points=args.points,
            factor=args.factor,
            extensions=args.extensions,
            warmups=tuple(args.warmups),
            tune_seeds=tuple(args.tune_seeds),
            rung=args.rung,
            rung_seeds=args.rung_seeds,
            keep=args.keep,
            control=args.control,
            back_off=args.back_off,
        )
    except ValueError as error:
        parser.error(str(error))
    return {
        "base": config,
        "optimizers": dict(_optimizer_choice(parser, label) for label in args.optimizers),
        "seeds": args.seeds,
        "plan": plan,
        "partial": [kinds.split(",") for kinds in args.partial],
        "tune_grafts": args.tune_grafts,
    }


def _continued_request(parser, args, stored: dict[str, Any]) -> dict[str, Any]:
    """``--group G``: the stored comparison with the settings given on the command line put
    in (``check_continuation`` then refuses any that differ), seeds as given or as stored."""
    given = _given_settings(args)
    request = {**stored, "seeds": args.seeds or stored["seeds"]}
    if not given:
        return request
    fresh = _compare_request(parser, args)
    fields = [name for name in given if name in field_names()]
    base = fresh["base"] if "config" in given else stored["base"]
    request["base"] = base.replace(**{name: getattr(fresh["base"], name) for name in fields})
    if set(given) & {f.name for f in dataclasses.fields(SweepPlan)}:
        request["plan"] = fresh["plan"]
    for name in ("optimizers", "partial", "tune_grafts"):
        if name in given:
            request[name] = fresh[name]
    return request


def cmd_compare(parser, args, store: RunStore) -> int:
    if args.group and store.runs(group=args.group).empty:
        parser.error(
            f"--group {args.group}: no runs in this group (leave --group out to "
            "start a new comparison)"
        )
    stored = comparison_request(store, args.group) if args.group else None
    try:
        if stored is not None:
            request = _continued_request(parser, args, stored)
            check_continuation(store, args.group, request)
            planned = plan_continuation(store, args.group, request["seeds"])
            print(f"continuing {args.group} with the settings it was made with", file=sys.stderr)
        else:
            if args.group:
                print(
                    f"{args.group} was made before comparisons kept their settings: it "
                    "continues with the options given here (defaults where none is given)",
                    file=sys.stderr,
                )
            planned = plan_comparison(**_compare_request(parser, args))
            if args.group:
                check_continuation(store, args.group, planned.request)
    except ValueError as error:
        parser.error(str(error))
    try:
        with _executor(args, store) as executor:
            workers = executor.max_workers if executor is not None else 1
            print(f"plan: {planned.text(workers)}", file=sys.stderr)
            result = compare(
                store,
                **planned.request,
                executor=executor,
                progress=_progress("compare"),
                group=args.group,
            )
    except ValueError as error:
        parser.error(str(error))
    print_comparison(result)
    return 0


def print_comparison(result: Comparison) -> None:
    """The controls, the sweep, the tuned and grafted arms and the verdicts, as plain
    tables."""
    if not result.controls.empty:
        print(f"\n{control_text(result.controls)}")
    if result.excluded:
        print(
            f"\n{result.excluded} runs of group {result.group} were made with other settings "
            "than the comparison's: left out of every table below"
        )
    print(
        f"\nlearning-rate sweeps (val_loss over seeds; * best, ! best at the grid's edge), "
        f"group {result.group}"
    )
    sweep = result.sweep.assign(
        mark=np.where(result.sweep["best"], np.where(result.sweep["at_edge"], "*!", "*"), "")
    )
    _print_table(sweep[["arm", "lr", "warmup", "mean", "std", "seeds", "failed", "pruned", "mark"]])
    print("\narms (tuned plain optimizers; grafts M#D take M's tuned lr, D's lr cancels)")
    _print_table(result.arms[["arm", "role", "lr", "direction_lr", "mean", "std", "seeds"]])
    if not result.verdicts.empty:
        print(
            "\nverdicts: where M#D lands between M (0) and D (1), its 95% CI paired by seed; "
            "like M/D within ±0.25, Holm over the table"
        )
        _print_table(
            result.verdicts[
                [
                    "magnitude",
                    "direction",
                    "grafted",
                    "graft_mean",
                    "graft_median",
                    "graft_std",
                    "graft_diverged",
                    "magnitude_mean",
                    "direction_mean",
                    "position",
                    "ci_low",
                    "ci_high",
                    "label",
                    "judgment",
                ]
            ]
        )
    if not result.tuned_grafts.empty:
        print(
            "\ntuned grafts: each graft at its own best lr of M "
            "(! best at the edge of the lrs tried)"
        )
        tuned = result.tuned_grafts.assign(
            variant=result.tuned_grafts["variant"].replace("", "full"),
            lr=[
                f"{lr:g}{'!' if edge else ''}"
                for lr, edge in zip(result.tuned_grafts["lr"], result.tuned_grafts["at_edge"])
            ],
        )
        columns = ["magnitude", "direction", "variant", "lr", "mean", "std", "seeds", "position"]
        _print_table(tuned[[*columns, "verdict", "reason"]])


def _on_pair(parser, args, store: RunStore, experiment, label: str, **options) -> pd.DataFrame:
    """``experiment`` on the comparison ``args.group``'s pair ``args.magnitude``#
    ``args.direction``, with a progress bar; a bad group or choice exits 2 naming it."""
    try:
        with _executor(args, store) as executor:
            return experiment(
                store,
                args.group,
                magnitude=args.magnitude,
                direction=args.direction,
                executor=executor,
                progress=_progress(label),
                **options,
            )
    except (ValueError, KeyError) as error:
        parser.error(str(error).strip("'\""))


def cmd_ratio_study(parser, args, store: RunStore) -> int:
    try:
        plan = plan_study(
            store,
            args.group,
            magnitude=args.magnitude,
            direction=args.direction,
            windows=args.windows,
            scopes=args.scopes,
            statistic=args.statistic,
        )
        print(f"plan: {plan.describe()}")
        with _executor(args, store) as executor:
            start_study(store, plan, executor, wait=True, progress=_progress("ratio study"))
        table = static_ratio_table(
            store, args.group, magnitude=args.magnitude, direction=args.direction
        )
    except (ValueError, KeyError) as error:
        parser.error(str(error).strip("'\""))
    print(
        f"\n{args.direction} with static ratios from {args.magnitude}#{args.direction} vs "
        f"tuned {args.magnitude} and {args.direction} (val_loss over finished seeds; failed: "
        f"seeds that diverged or failed; gap_closed 1 = as good as {args.magnitude}), "
        f"group {args.group}"
    )
    _print_table(
        table[["arm", "mean", "std", "median", "seeds", "failed", "gap_closed", "state_bytes"]]
    )
    print(f"reading: {study_reading(table, args.magnitude, args.direction)}")
    static = table[table["role"] == "static_ratios"] if not table.empty else table
    if not static.empty:
        print(
            f"\nverdicts: each arm between tuned {args.direction} (position 0) and tuned "
            f"{args.magnitude} (1), paired by seed, CI at Holm's level (ci_level), margin "
            f"±{static['margin'].iloc[0]:g}; alone: judged by itself at 95%"
        )
        _print_table(static[list(STUDY_VERDICT_COLUMNS)])
    print(f"verdicts: {study_verdicts_text(table, args.magnitude, args.direction)}")
    return 0


def cmd_graft_lrs(parser, args, store: RunStore) -> int:
    for line in far_from_tuned(
        store, args.group, magnitude=args.magnitude, direction=args.direction, lrs=args.lrs
    ):
        print(line, file=sys.stderr)
    table = _on_pair(
        parser,
        args,
        store,
        graft_lr_sweep,
        "graft lrs",
        lrs=args.lrs,
        variants=args.variants and ["" if v == "full" else v for v in args.variants],
    )
    print(
        f"\n{args.magnitude}#{args.direction} at each lr of M vs tuned {args.magnitude} "
        f"({table['magnitude_mean'].iloc[0]:.4g}) and tuned {args.direction} "
        f"({table['direction_mean'].iloc[0]:.4g}) (val_loss over seeds; position 0 = M, 1 = D; "
        f"tuned_lr: the comparison's own graft), group {args.group}"
    )
    shown = table.drop(columns=["pending", "magnitude_mean", "direction_mean"])
    shown = shown.replace({"variant": {"": "full"}})
    _print_table(shown.assign(lr=shown["lr"].map("{:g}".format)))
    return 0


def cmd_transfer(parser, args, store: RunStore) -> int:
    config = _config(parser, args)
    with _executor(args, store) as executor:
        group, table = schedule_transfer(
            store,
            config,
            _optimizer_choice(parser, args.magnitude),
            _optimizer_choice(parser, args.direction),
            args.seeds,
            executor=executor,
            progress=_progress("schedule transfer"),
        )
    _print_table(table[["name", "status", "val_loss", "val_accuracy"]])
    print(f"group {group}")
    return 0


def cmd_ratios(parser, args, store: RunStore) -> int:
    config = _config(parser, args)
    try:
        with _executor(args, store) as executor:
            group, table = static_ratio_experiment(
                store,
                config,
                _optimizer_choice(parser, args.magnitude),
                window=tuple(args.window),
                statistic=args.statistic,
                sgd_lrs=args.sgd_lrs,
                executor=executor,
                progress=_progress("static ratios"),
            )
    except ValueError as error:
        parser.error(str(error))
    _print_table(
        table[["name", "status", "val_loss", "val_accuracy", "optimizer_state_bytes", "best_sgd"]]
    )
    print(f"group {group}")
    return 0


def cmd_report(parser, args, store: RunStore) -> int:
    if comparison_request(store, args.group) is None and store.runs(group=args.group).empty:
        parser.error(f"{args.group}: no such comparison in {store.root}")
    try:
        print(comparison_report(store, args.group))
    except (KeyError, ValueError) as error:
        parser.error(f"{args.group}: {error}")
    return 0


def cmd_runs(parser, args, store: RunStore) -> int:
    output = getattr(args, "output", None)
    if output is not None and not output.parent.is_dir():
        parser.error(f"-o {output}: the folder {output.parent} does not exist")
    try:
        return _runs_action(args, store)
    except (KeyError, ValueError, OSError) as error:
        parser.error(str(error).strip("'\""))


def _runs_action(args, store: RunStore) -> int:
    if args.action == "list":
        runs = store.runs(group=args.group, status=args.status)
        if runs.empty:
            print(f"no runs in {store.path}; start one with: python -m grafting_core train")
            return 0
        columns = ["run_id", "name", "kind", "group", "status", "last_step", "created"]
        _print_table(runs[columns].astype(object).fillna(""))
    elif args.action == "show":
        run = store.run(args.run_id)
        print(json.dumps({k: str(v) if k != "config" else v for k, v in run.items()}, indent=2))
        print("artifacts:", ", ".join(store.artifact_names(args.run_id)) or "none")
    elif args.action == "export" and args.tensorboard is not None:
        if args.output is not None:
            raise ValueError("--tensorboard DIR writes event files into DIR; -o is for CSV/JSON")
        try:
            from grafting_core.lab.store.tensorboard import export_run, partial_runs

            folder = export_run(store, args.run_id, args.tensorboard)
        except ImportError as error:
            raise ValueError(str(error)) from error
        for notice in partial_runs(store, [args.run_id]).values():
            print(notice, file=sys.stderr)
        print(f"wrote {folder} (view: tensorboard --logdir {args.tensorboard})")
    elif args.action == "export":
        frame = store.metrics_wide(args.run_id)
        text = (
            frame.to_csv()
            if args.format == "csv"
            else frame.reset_index().to_json(orient="records", indent=1)
        )
        _write(args.output, text)
    elif args.action == "delete":
        if not args.yes and input(f"delete run {args.run_id}? [y/N] ").lower() != "y":
            print("not deleted")
            return 1
        store.delete_run(args.run_id)
        print(f"deleted {args.run_id}")
    elif args.action == "schedule":
        _write(args.output, json.dumps(schedule_from_run(store, args.run_id).to_dict()))
    elif args.action == "ratios":
        ratios = static_ratios_from_run(
            store,
            args.run_id,
            window=tuple(args.window) if args.window else None,
            statistic=args.statistic,
        )
        _write(args.output, json.dumps(ratios.to_dict(), indent=2))
    return 0


def _write(output: Path | None, text: str) -> None:
    if output is None:
        print(text)
    else:
        output.write_text(text)
        print(f"wrote {output}")


# -------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used to render --help in the docs)."""
    parser = _Parser(
        prog="grafting", description="Grafting Lab: train and compare grafted optimizers M#D."
    )
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=None,
        help=f"run store directory [$GRAFTING_RUNS_DIR or ./runs: {default_runs_dir()}]",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train one run (plain M, or M#D with --direction)")
    train.add_argument("--resume", metavar="RUN_ID", help="continue a stopped run")
    _add_config_flags(train)
    train.set_defaults(handler=cmd_train, command_parser=train)

    names = ", ".join(LAB_OPTIMIZERS) + "; or any registry name; NAME={json} overrides"
    workers = {
        "type": _number(int, "a number of workers >= 0", lambda n: n >= 0),
        "default": 0,
        "help": "worker processes (0 = one per core, 1 = run inline) [0]",
    }
    executors = {
        "executor": {
            "choices": ("local", "dask"),
            "default": "local",
            "help": "where runs train: local worker processes, or Dask "
            "workers (the run store is written here only) [local]",
        },
        "scheduler": {
            "metavar": "ADDRESS",
            "help": "Dask scheduler to send runs to "
            "(tcp://HOST:8786); without it, "
            "a LocalCluster of --workers "
            "processes",
        },
    }
    seeds = {
        "type": _number(int, "a seed >= 0", lambda n: n >= 0),
        "nargs": "+",
        "default": [0],
        "help": "seeds [0]",
    }
    grid_p = sub.add_parser("grid", help="every M#D pair of a set of optimizers, several seeds")
    grid_p.add_argument(
        "--optimizers",
        nargs="+",
        help=f"lab optimizers to pair ({names}) [sgd adam]",
    )
    grid_p.add_argument("--seeds", **{**seeds, "default": None})
    grid_p.add_argument(
        "--group",
        help="continue the grid stored in this group (after a stop or an interruption): its "
        "stopped and interrupted runs resume, the rest are kept; takes no other setting",
    )
    grid_p.add_argument("--workers", **workers)
    for flag, options in executors.items():
        grid_p.add_argument(f"--{flag}", **options)
    _add_config_flags(grid_p, skip=EXPERIMENT_FIELDS)
    grid_p.set_defaults(handler=cmd_grid, command_parser=grid_p)

    compare_p = sub.add_parser(
        "compare",
        help="the fair comparison: each optimizer's lr tuned by a sweep, every "
        "M#D at M's tuned lr, several seeds, a verdict per pair",
    )
    compare_p.add_argument(
        "--optimizers",
        nargs="+",
        help=f"optimizers to tune and pair ({names}); each sweep is centred on its lr [sgd adam]",
    )
    compare_p.add_argument(
        "--seeds",
        type=seeds["type"],
        nargs="+",
        help="seeds of every arm [0 1 2]",
    )
    compare_p.add_argument(
        "--group",
        help="continue the comparison stored in this group (more seeds, or after an "
        "interruption): its finished runs are kept, its stopped ones resumed, only the "
        "missing ones trained. With no other option than --seeds it keeps the settings "
        "the comparison was made with",
    )
    compare_p.add_argument("--points", type=int, help="lrs per first sweep [5]")
    compare_p.add_argument(
        "--factor",
        type=float,
        help="ratio of neighbouring lrs [10**0.5: half a decade]",
    )
    compare_p.add_argument(
        "--extensions",
        type=int,
        help="lrs added beyond an edge while the best sits on it [2]",
    )
    compare_p.add_argument(
        "--warmups",
        type=float,
        nargs="*",
        metavar="FRACTION",
        help="warm-up lengths searched with each lr, as fractions of the steps; none given: "
        "no warm-up search (the --warmup-steps of the base) [0.05 0.3]",
    )
    compare_p.add_argument(
        "--tune-seeds",
        type=seeds["type"],
        nargs="*",
        metavar="SEED",
        help="seeds the search runs on, apart from the reporting --seeds (each arm's best "
        "is trained again on those); none given: search on the reporting seeds "
        "[10000 10001]",
    )
    compare_p.add_argument(
        "--rung",
        type=float,
        help="successive halving: every searched setting trains to this fraction of the "
        "steps, only the best --keep lrs of each warm-up go on; 0: all to the end [0.5]",
    )
    compare_p.add_argument(
        "--rung-seeds",
        type=int,
        help="how many tuning seeds (the first) train every setting to the rung; the "
        "leaders then train to the end on every tuning seed; 0: all of them [1]",
    )
    compare_p.add_argument(
        "--keep", type=int, help="lrs per arm and warm-up that go on past the rung [1]"
    )
    compare_p.add_argument(
        "--control",
        action=argparse.BooleanOptionalAction,
        help="controls on the first 3 seeds: a positive one (the first optimizer at a tenth "
        "of its tuned lr as M, tuned as D: M#D is M step for step, it must come out 'like "
        "M') and a negative one (M = the graft X#Y of the two tuned arms farthest apart, X "
        "the worse; D = tuned X: M#D is D step for step, it must come out 'like D') [on]",
    )
    compare_p.add_argument(
        "--back-off",
        action=argparse.BooleanOptionalAction,
        help="an lr whose next lr up diverged at the same warm-up sits at the edge of "
        "stability: it is neither a rung's leader nor the tuned lr while an lr below the "
        "edge is there [on]",
    )
    compare_p.add_argument(
        "--partial",
        action="append",
        metavar="KINDS",
        help="also a partial graft per pair that grafts only these layer "
        "kinds, comma-separated (embedding, head, norm, bias, hidden); "
        "repeat for several",
    )
    compare_p.add_argument(
        "--tune-grafts",
        action="store_const",
        const=True,
        help="then sweep each graft's own lr too (M's lr in the graft, same grid and "
        "extensions); the verdicts stay those at M's tuned lr, a table gives the tuned "
        "grafts' [off]",
    )
    compare_p.add_argument("--workers", **workers)
    for flag, options in executors.items():
        compare_p.add_argument(f"--{flag}", **options)
    _add_config_flags(compare_p, skip=EXPERIMENT_FIELDS)
    compare_p.set_defaults(handler=cmd_compare, command_parser=compare_p)

    report = sub.add_parser(
        "report",
        help="a stored comparison as Markdown: its protocol, control, tuned arms, verdicts "
        "with position and 95%% CI, and search (what RESULTS.md quotes)",
    )
    report.add_argument("group", help="a 'compare' group")
    report.set_defaults(handler=cmd_report, command_parser=report)

    study = sub.add_parser(
        "ratio-study",
        help="static ratios from a comparison's M#D runs, per window and per "
        "layer vs one scalar, next to tuned M and D",
    )
    study.add_argument("group", help="a 'compare' group whose M#D runs are the sources")
    study.add_argument("--magnitude", default="adam", help="M's label in the group [adam]")
    study.add_argument("--direction", default="sgd", help="D's label in the group [sgd]")
    study.add_argument(
        "--windows",
        nargs="+",
        choices=list(WINDOWS),
        default=list(WINDOWS),
        help="windows of the source runs [all]",
    )
    study.add_argument(
        "--scopes",
        nargs="+",
        choices=SCOPES,
        default=list(SCOPES),
        help="per-layer ratios, one global scalar, or both [both]",
    )
    study.add_argument("--statistic", choices=STATISTICS, default="median", help="[median]")
    study.add_argument("--workers", **workers)
    study.set_defaults(handler=cmd_ratio_study, command_parser=study)

    graft_lrs = sub.add_parser(
        "graft-lrs",
        help="a comparison's M#D grafts again at other lrs of M: does the verdict move?",
    )
    graft_lrs.add_argument("group", help="a 'compare' group with M#D grafts")
    graft_lrs.add_argument("--magnitude", default="sgd", help="M's label in the group [sgd]")
    graft_lrs.add_argument("--direction", default="adam", help="D's label in the group [adam]")
    graft_lrs.add_argument(
        "--lrs",
        nargs="+",
        required=True,
        type=_number(float, "an lr > 0", lambda x: x > 0),
        help="lrs of M to graft at (M's tuned lr is the comparison's own graft)",
    )
    graft_lrs.add_argument(
        "--variants",
        nargs="+",
        metavar="VARIANT",
        help="'full' for the whole graft, else a partial graft's layer kinds as the group "
        "has them (e.g. hidden+norm+bias) [all the group has]",
    )
    graft_lrs.add_argument("--workers", **workers)
    graft_lrs.set_defaults(handler=cmd_graft_lrs, command_parser=graft_lrs)

    transfer = sub.add_parser(
        "schedule-transfer", help="M, D, M#D and M's recorded schedule replayed onto D"
    )
    transfer.add_argument("--magnitude", default="adam", help=f"M ({names}) [adam]")
    transfer.add_argument("--direction", default="sgd", help=f"D ({names}) [sgd]")
    transfer.add_argument("--seeds", **seeds)
    transfer.add_argument("--workers", **workers)
    _add_config_flags(transfer, skip=EXPERIMENT_FIELDS)
    transfer.set_defaults(handler=cmd_transfer, command_parser=transfer)

    ratios = sub.add_parser(
        "static-ratios", help="per-layer SGD multipliers from a short M#SGD window, compared"
    )
    ratios.add_argument("--magnitude", default="adam", help=f"M ({names}) [adam]")
    ratios.add_argument(
        "--window",
        type=int,
        nargs=2,
        default=[50, 200],
        metavar=("START", "STOP"),
        help="steps of the M#SGD run used for the ratios [50 200]",
    )
    ratios.add_argument(
        "--statistic",
        choices=STATISTICS,
        default="median",
        help="per-layer statistic of the ratios [median]",
    )
    ratios.add_argument(
        "--sgd-lrs",
        type=_number(float, "a learning rate > 0", lambda x: x > 0),
        nargs="+",
        default=[0.01, 0.03, 0.1, 0.3, 1.0],
        help="plain-SGD learning rates to sweep [0.01 0.03 0.1 0.3 1.0]",
    )
    ratios.add_argument("--workers", **workers)
    _add_config_flags(ratios, skip=EXPERIMENT_FIELDS)
    ratios.set_defaults(handler=cmd_ratios, command_parser=ratios)

    runs = sub.add_parser("runs", help="list, show, export or delete saved runs")
    actions = runs.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="saved runs, newest first")
    listing.add_argument("--group", help="only this experiment group")
    listing.add_argument("--status", choices=STATUSES, help="only this status")
    for action, text in (
        ("show", "a run's config, status and artifacts"),
        ("export", "a run's metrics as CSV or JSON, or for TensorBoard"),
        ("delete", "delete a run and all it recorded"),
        ("schedule", "a run's implicit schedule as a replayable JSON file"),
        ("ratios", "static per-layer ratios of an M#D run as JSON"),
    ):
        p = actions.add_parser(action, help=text)
        p.add_argument("run_id")
        if action in ("export", "schedule", "ratios"):
            p.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
        if action == "export":
            p.add_argument("--format", choices=("csv", "json"), default="csv", help="[csv]")
            p.add_argument(
                "--tensorboard",
                type=Path,
                metavar="DIR",
                help="write TensorBoard event files instead, into DIR/<name>-<run id>: "
                "metrics, per-layer ‖Δ_M‖, ‖Δ_D‖ and ratio, the config as text",
            )
        if action == "delete":
            p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        if action == "ratios":
            p.add_argument(
                "--window", type=int, nargs=2, metavar=("START", "STOP"), help="steps to use [all]"
            )
            p.add_argument("--statistic", choices=STATISTICS, default="median", help="[median]")
    runs.set_defaults(handler=cmd_runs, command_parser=runs)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m grafting_core`` and the ``grafting`` script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    root = args.runs_dir or default_runs_dir()
    new = not root.exists()
    with _interrupting_signals():
        try:
            store = args.store = _open_store(parser, args)
            return args.handler(args.command_parser, args, store)
        except SystemExit as refused:  # a setting refused after the store was opened
            if new and refused.code == 2 and root.exists():
                _forget_new_store(getattr(args, "store", None), root)
            raise
        except Stopped as stop:
            _say(str(stop))
            return 130
        except KeyboardInterrupt as interrupt:
            _say(f"\nstopped by {interrupt or 'SIGINT'}")
            return 130
        except sqlite3.DatabaseError as error:  # pages damaged after the store was opened
            if "locked" in str(error) or "busy" in str(error):
                raise
            root = args.runs_dir or default_runs_dir()
            _say(
                f"{parser.prog}: error: the run store {root / DB_FILENAME} is damaged ({error}): "
                "restore it from a copy (sqlite3's .recover may save its rows)"
            )
            return 1


def _forget_new_store(store: RunStore | None, root: Path) -> None:
    """Remove the folder a refused command made for its new store, if it holds nothing
    but the store's empty database: a refused command leaves nothing behind."""
    if store is None or not store.runs().empty:
        return
    store.close()
    database = {p.name for p in root.iterdir()} <= {
        DB_FILENAME + suffix for suffix in ("", "-wal", "-shm", "-journal")
    }
    if database:
        shutil.rmtree(root, ignore_errors=True)
        _say(f"(the new folder {root} was removed: the command was refused)")


@contextlib.contextmanager
def _interrupting_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP (a closed terminal) stop a command as Ctrl-C does (a
    KeyboardInterrupt, so every stop path is one), instead of killing it mid-write."""
    others = [sig for sig in lifeline.SIGNALS if sig != signal.SIGINT]

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in others}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _open_store(parser: argparse.ArgumentParser, args: argparse.Namespace) -> RunStore:
    """The run store of ``--runs-dir``; commands that only read it open a read-only store
    read-only. A store that cannot be opened is a user error naming the folder."""
    root = args.runs_dir or default_runs_dir()
    reads_only = args.command == "runs" and args.action in READ_ONLY_ACTIONS
    if root.exists() and not root.is_dir():
        parser.error(f"--runs-dir {root}: is a file, not a folder")
    if not root.exists() and not root.parent.is_dir():  # a typo deep in a path: say so
        parser.error(
            f"--runs-dir {root}: its parent folder {root.parent} does not exist; "
            "create it first (a new store is made only inside an existing folder)"
        )
    database = root / DB_FILENAME
    if reads_only and not database.exists():  # a typo in the path: say so, create nothing
        if args.action == "list":
            parser.exit(
                0, f"no run store at {root}; start one with: python -m grafting_core train\n"
            )
        parser.error(f"--runs-dir {root}: no run store there (nothing was created)")
    if not root.exists():  # a new folder: a typo in a path would go unseen
        _say(f"new run store at {root} (a new folder)")
    if (
        not reads_only
        and database.exists()
        and not (os.access(database, os.W_OK) and os.access(root, os.W_OK))
    ):
        parser.error(f"--runs-dir {root}: the run store is read-only; this command writes to it")
    try:
        return RunStore(root)
    except (OSError, sqlite3.Error, RuntimeError) as error:
        if reads_only:
            with contextlib.suppress(OSError, sqlite3.Error, RuntimeError):
                return RunStore(root, readonly=True)
        parser.error(
            f"--runs-dir {root}: cannot open the run store "
            f"({getattr(error, 'strerror', None) or error})"
        )
