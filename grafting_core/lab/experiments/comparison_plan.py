"""What a tuned comparison will train, decided before anything is written: its settings
(validated once), how many runs they make, and whether a continuation is the same experiment.

The Grid page, the CLI (``compare`` prints the plan before training) and the notebooks call
``plan_comparison`` and ``plan_continuation``, so a count can never differ between them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from grafting_core.lab.experiments.common import OptimizerChoice, round_lr
from grafting_core.lab.experiments.grid import grid_configs
from grafting_core.lab.runs.capacity import check_fits, meta_model
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.runs.groups import HOUSEKEEPING
from grafting_core.lab.store.run_store import RunStore
from grafting_core.layer_kinds import layer_kinds

#: the longest warm-up a search extends to (a fraction of the steps): where an arm's best
#: sits at the longest warm-up searched, twice it is searched next, up to this
LONGEST_WARMUP = 0.6


@dataclass(frozen=True)
class SweepPlan:
    """A log grid of learning rates around each arm's starting lr."""

    points: int = 5  # lrs in the first grid, centred on the arm's own lr
    factor: float = math.sqrt(10)  # ratio of neighbouring lrs: half a decade
    extensions: int = 2  # points added beyond an edge while the best sits on it
    #: warm-up fractions searched with each lr (warm-up + cosine); empty: the base's warm-up
    warmups: tuple[float, ...] = ()
    #: seeds the search runs on; empty: the reporting seeds (else the best is rerun on these)
    tune_seeds: tuple[int, ...] = ()
    #: successive halving: every searched setting trains to this fraction of the steps, and
    #: only the ``keep`` best lrs of each arm and warm-up there go on to the end (0: every one)
    rung: float = 0.0
    keep: int = 1
    #: how many tuning seeds (the first ones) train every setting to the rung; the leaders
    #: then train to the end on every tuning seed and the best mean over them is chosen (0:
    #: every tuning seed trains every setting to the rung)
    rung_seeds: int = 1
    #: controls, on the first ``CONTROL_SEEDS`` reporting seeds: a positive one (the first
    #: optimizer X at a tenth of its tuned lr as M, tuned X as D: they differ only in step
    #: size, so M#D is M step for step and must judge "like M") and a negative one (M = X#Y,
    #: the graft of the two tuned arms farthest apart, X the worse; D = tuned X: they share
    #: X's step sizes and differ only in direction, so M#D is D step for step and must judge
    #: "like D")
    control: bool = False
    #: back off from divergence: an lr whose next lr up on the grid diverged (at the same
    #: warm-up, on a search seed) sits at the edge of stability, where other seeds spike or
    #: diverge (the character transformer's SGD at lr 1.0: 1 of 5 reporting seeds), so it is
    #: neither a rung's leader nor the tuned setting while a setting below the edge is there
    back_off: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "warmups", tuple(float(w) for w in self.warmups))
        object.__setattr__(self, "tune_seeds", tuple(int(s) for s in self.tune_seeds))
        if any(not (0 <= w < 1) for w in self.warmups) or len(set(self.warmups)) != len(
            self.warmups
        ):
            raise ValueError(f"Invalid warmups: {list(self.warmups)} (fractions in [0, 1), once)")
        if any(s < 0 for s in self.tune_seeds) or len(set(self.tune_seeds)) != len(self.tune_seeds):
            raise ValueError(f"Invalid tune_seeds: {list(self.tune_seeds)} (each >= 0, once)")
        if not (0 <= self.rung < 1):
            raise ValueError(f"Invalid rung: {self.rung} (a fraction of the steps in [0, 1))")
        if self.rung_seeds < 0:
            raise ValueError(f"Invalid rung_seeds: {self.rung_seeds} (must be >= 0)")
        if self.keep < 1:
            raise ValueError(f"Invalid keep: {self.keep} (at least 1 setting per arm)")
        if self.points < 2:
            raise ValueError(f"Invalid points: {self.points} (a sweep needs at least 2)")
        if not (math.isfinite(self.factor) and self.factor > 1):
            raise ValueError(f"Invalid factor: {self.factor} (must be a finite number > 1)")
        if self.extensions < 0:
            raise ValueError(f"Invalid extensions: {self.extensions} (must be >= 0)")

    def warmup_steps(self, base: RunConfig) -> list[int]:
        """The warm-up lengths searched on ``base`` (its own when no fraction is given)."""
        if not self.warmups:
            return [base.warmup_steps]
        return [round(fraction * base.steps) for fraction in self.warmups]

    def longer_warmups(self) -> int:
        """How many warm-ups a search may add past its longest (each twice the last, up to
        ``LONGEST_WARMUP``, one per extension round)."""
        added, longest = 0, max(self.warmups, default=LONGEST_WARMUP)
        while added < self.extensions and min(2 * longest, LONGEST_WARMUP) > longest:
            longest, added = min(2 * longest, LONGEST_WARMUP), added + 1
        return added

    def rung_step(self, base: RunConfig) -> int:
        """The step every searched setting pauses at (0: no halving)."""
        return max(1, round(self.rung * base.steps)) if self.rung else 0

    def ranking_seeds(self, tune_seeds: Sequence[int]) -> tuple[int, ...]:
        """The tuning seeds that train every setting to the rung (all of them with no rung)."""
        if not self.rung or not self.rung_seeds:
            return tuple(tune_seeds)
        return tuple(tune_seeds[: self.rung_seeds])

    def grid(self, center: float) -> list[float]:
        """``points`` lrs spaced by ``factor`` around ``center`` (3 significant digits)."""
        if not (math.isfinite(center) and center > 0):
            raise ValueError(f"Invalid lr to sweep around: {center} (must be > 0)")
        first = -(self.points - 1) / 2
        return [round_lr(center * self.factor ** (first + i)) for i in range(self.points)]


def check_partial(base: RunConfig, partial: Sequence[Sequence[str]]) -> None:
    """Refuse a partial graft asked for twice (the same kinds in any order), or whose layer
    kinds select no layer of ``base``'s model (it would be M alone) or every layer (the whole
    graft again). A custom task's model is the user's code: not built here."""
    seen: set[frozenset[str]] = set()
    for kinds in partial:
        if frozenset(kinds) in seen:
            raise ValueError(f"Partial graft [{'+'.join(kinds)}] is asked for twice")
        seen.add(frozenset(kinds))
    if not partial or base.custom:
        return
    present = set(layer_kinds(meta_model(base)[0]).values())
    for kinds in partial:
        name = f"[{'+'.join(kinds)}]"
        if not set(kinds) & present:
            raise ValueError(
                f"Partial graft {name}: the model has no such layers (its kinds: "
                f"{', '.join(sorted(present))}); it would be M alone"
            )
        if present <= set(kinds):
            raise ValueError(
                f"Partial graft {name} takes every layer of the model (its kinds: "
                f"{', '.join(sorted(present))}): it is the whole graft again"
            )


#: The protocol users get: lr × warm-up (5% and 30% of the steps) searched on a tuning seed of
#: its own to half the steps; each warm-up's best lr there goes on to the end, and
#: trains on a second tuning seed too (one seed chose an lr that was unstable on others);
#: the best mean over both is rerun on the reporting seeds; with a positive and a negative
#: control. A 5-seed 2×2 costs 36 run-equivalents and its controls 9 more. (Halved at a third
#: of the steps, the choice ended 0.35–0.39 nats worse than a full search's for SGD and Adam
#: on MNIST-1D, whose curves cross late; at half, 0.02–0.04: ``halving_check``.)
PROTOCOL = SweepPlan(
    warmups=(0.05, 0.3),
    tune_seeds=(10_000, 10_001),
    rung=0.5,
    rung_seeds=1,
    control=True,
    back_off=True,
)
#: the controls train on this many of the first reporting seeds: each is its M (positive) or
#: its D (negative) step for step, so a verdict needs no more
CONTROL_SEEDS = 3


def control_runs(arms: int, seeds: int) -> int:
    """Runs of a comparison's controls: the positive control's M and graft, and the negative
    control's graft (its M and D are the comparison's first graft and first tuned arm)."""
    return 3 * min(seeds, CONTROL_SEEDS) if arms >= 2 else 0


def run_count(
    arms: int, seeds: int, plan: SweepPlan, variants: int = 1, *, tune_grafts: bool = False
) -> tuple[int, int]:
    """The fewest and the most runs of a comparison (with no extension, with every one);
    ``variants``: grafts per pair (the full one and each partial one); ``tune_grafts``: each
    graft's lr swept too (its grid less M's tuned lr, which an odd grid centres on)."""
    fewest, most = run_equivalents(arms, seeds, plan, variants, tune_grafts=tune_grafts, runs=True)
    return int(fewest), int(most)


def run_equivalents(
    arms: int,
    seeds: int,
    plan: SweepPlan,
    variants: int = 1,
    *,
    tune_grafts: bool = False,
    runs: bool = False,
) -> tuple[float, float]:
    """The fewest and the most steps a comparison trains, in full runs (a run paused at the
    rung counts its fraction); ``runs``: count runs instead, whatever their length."""
    warmups = max(1, len(plan.warmups))
    settings = plan.points * warmups  # searched per arm
    tuning = len(plan.tune_seeds) or seeds
    ranking = len(plan.ranking_seeds(range(tuning)))  # seeds that train every setting
    leaders = min(plan.keep, plan.points) * warmups
    # at most per extension: the new lr leads at every warm-up (on to the end, every seed)
    per_extension = (warmups + plan.longer_warmups()) * tuning
    if plan.rung and not runs:  # all to the rung, each warm-up's leaders to the end
        search = settings * ranking * plan.rung + leaders * (
            ranking * (1 - plan.rung) + tuning - ranking
        )
    else:
        search = settings * ranking + (leaders * (tuning - ranking) if plan.rung else 0)
    reruns = seeds if plan.tune_seeds else 0  # the best of each arm on the reporting seeds
    grafts = arms * (arms - 1) * variants
    controls = control_runs(arms, seeds) if plan.control else 0
    fewest = arms * (search + reruns) + grafts * seeds + controls
    lr_count = plan.points + plan.extensions  # at most, at a warm-up added past the longest
    if plan.rung and not runs:
        per_warmup = lr_count * ranking * plan.rung + leaders / warmups * (
            ranking * (1 - plan.rung) + tuning - ranking
        )
    else:
        per_warmup = lr_count * ranking + (
            leaders / warmups * (tuning - ranking) if plan.rung else 0
        )
    most = fewest + arms * (plan.extensions * per_extension + plan.longer_warmups() * per_warmup)
    if tune_grafts:
        lrs = plan.points - plan.points % 2
        fewest, most = (
            fewest + grafts * lrs * seeds,
            most + grafts * (lrs + plan.extensions) * seeds,
        )
    return fewest, most


def comparison_budget(request: Mapping[str, Any]) -> tuple[float, float]:
    """The fewest and the most run-equivalents of the comparison ``request`` (its stored
    settings, ``comparison_request``): the plan's budget, for every seed it has."""
    return run_equivalents(
        len(request["optimizers"]),
        len(request["seeds"]),
        request["plan"],
        1 + len(request["partial"]),
        tune_grafts=request["tune_grafts"],
    )


@dataclass(frozen=True)
class ComparisonPlan:
    """What Start (or ``compare``) will train: ``request`` holds ``compare``'s keyword
    arguments; ``fewest``/``most`` bound the new runs (no extension / every extension)."""

    request: dict[str, Any]
    fewest: int
    most: int
    trained_seeds: tuple[int, ...] = ()  # a continuation's seeds already trained
    #: the fewest and the most steps trained, in full runs (a new comparison's)
    budget: tuple[float, float] = (0.0, 0.0)

    @property
    def new_seeds(self) -> list[int]:
        """The seeds this plan adds (every seed for a new comparison)."""
        return [s for s in self.request["seeds"] if s not in self.trained_seeds]

    def text(self, workers: int | None = None) -> str:
        """``2 optimizers × 5 lrs × 3 seeds = 30 sweep runs, ...``: what will train."""
        if self.trained_seeds:
            return (
                f"Seeds {', '.join(map(str, self.trained_seeds))} are trained. Adding "
                f"{', '.join(map(str, self.new_seeds))} trains at least {self.fewest} new "
                "runs, with the same settings; if the new seeds move a tuned lr, the grafts at "
                "the new lr train on every seed (those at the old one are kept, marked "
                "superseded)."
            )
        arms, seeds = len(self.request["optimizers"]), len(self.request["seeds"])
        points, variants = self.request["plan"].points, 1 + len(self.request["partial"])
        s = "s" if seeds > 1 else ""
        more = (
            f", up to {self.most - self.fewest} more where a best lr sits at its grid's edge"
            if self.most > self.fewest
            else ""
        )
        total = f"{self.fewest}–{self.most}" if self.most > self.fewest else f"{self.fewest}"
        tuned = ", then each graft's lrs" if self.request["tune_grafts"] else ""
        pace = f", {workers} at a time" if workers else ""
        search = self.request["plan"]
        if not (search.warmups or search.tune_seeds or search.rung or search.control):
            return (
                f"{arms} optimizers × {points} lrs × {seeds} seed{s} = "
                f"{arms * points * seeds} sweep runs{more}, then {arms * (arms - 1) * variants} "
                f"grafts{' (whole and partial)' if variants > 1 else ''} × "
                f"{seeds} seed{s}{tuned}: {total} runs{pace}."
            )
        warmups = len(search.warmups) or 1
        tuning = len(search.tune_seeds) or seeds
        ranking = len(search.ranking_seeds(range(tuning)))
        low, high = self.budget

        def seeds_text(n: int) -> str:
            return f"{n} tuning seed{'s' if n > 1 else ''}"

        cost = f"{low:.1f}" if high == low else f"{low:.1f}–{high:.1f}"
        best = f"the best {search.keep} lrs" if search.keep > 1 else "the best lr"
        return (
            f"{arms} optimizers × {points} lrs"
            + (f" × {warmups} warm-ups" if search.warmups else "")
            + (
                f" on {seeds_text(ranking)}, each to {search.rung:.0%} of the steps, {best} of "
                + "each warm-up on to the end"
                + (f" on {seeds_text(tuning)}" if tuning > ranking else "")
                if search.rung
                else f" on {seeds_text(tuning)}"
            )
            + (f"; each best again on {seeds} seed{s}" if search.tune_seeds else "")
            + (
                f"; a positive and a negative control ({control_runs(arms, seeds)} runs)"
                if search.control
                else ""
            )
            + f"; then {arms * (arms - 1) * variants} grafts"
            + f"{' (whole and partial)' if variants > 1 else ''} × {seeds} seed{s}{tuned}: "
            f"{total} runs, {cost} run-equivalents{pace}."
        )


def plan_comparison(
    base: RunConfig,
    optimizers: Mapping[str, OptimizerChoice],
    *,
    seeds: Sequence[int] = (0, 1, 2),
    plan: SweepPlan | None = None,
    partial: Sequence[Sequence[str]] = (),
    metric: str = "val_loss",
    tune_grafts: bool = False,
) -> ComparisonPlan:
    """Validate a comparison's settings (every check ``compare`` needs, before any write) and
    count its runs. Raises ValueError naming the first bad setting. ``plan``: the search
    (default: the lab's ``PROTOCOL``)."""
    if plan is None:  # the protocol; a schedule without warm-up searches the lr alone
        plan = PROTOCOL if base.schedule == "warmup_cosine" else replace(PROTOCOL, warmups=())
    if len(optimizers) < 2:
        raise ValueError(f"A comparison needs at least two optimizers (got {len(optimizers)})")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"Invalid seeds {list(seeds)}: at least one, each once")
    check_fits(base)
    grid_configs(base, optimizers, seeds)  # every optimizer's settings, alone and grafted
    check_partial(base, partial)
    for label, (_, hparams) in optimizers.items():
        try:
            plan.grid(hparams["lr"])
        except (KeyError, ValueError, TypeError) as error:
            raise ValueError(f"{label}: {error}") from None
    request = {
        "base": base,
        "optimizers": dict(optimizers),
        "seeds": tuple(int(seed) for seed in seeds),
        "plan": plan,
        "partial": [tuple(kinds) for kinds in partial],
        "metric": metric,
        "tune_grafts": bool(tune_grafts),
    }
    if plan.tune_seeds and set(plan.tune_seeds) & set(request["seeds"]):
        raise ValueError(
            f"Tuning seeds {list(plan.tune_seeds)} and reporting seeds {list(seeds)} overlap: "
            "a setting is chosen on the first and reported on the others"
        )
    if plan.warmups and base.schedule != "warmup_cosine":
        raise ValueError(
            f"A warm-up search needs the warmup_cosine schedule (the base has {base.schedule})"
        )
    counts = (len(optimizers), len(seeds), plan, 1 + len(partial))
    fewest, most = run_count(*counts, tune_grafts=tune_grafts)
    budget = run_equivalents(*counts, tune_grafts=tune_grafts)
    return ComparisonPlan(request, fewest, most, budget=budget)


def request_json(request: Mapping[str, Any]) -> dict[str, Any]:
    """``compare``'s settings as JSON, stored with its group (:func:`comparison_request`)."""
    return {
        "base": request["base"].to_dict(),
        "optimizers": {
            label: [name, dict(hp)] for label, (name, hp) in request["optimizers"].items()
        },
        "seeds": [int(seed) for seed in request["seeds"]],
        "plan": asdict(request["plan"]),
        "partial": [list(kinds) for kinds in request["partial"]],
        "metric": request["metric"],
        "tune_grafts": request["tune_grafts"],
    }


def comparison_request(store: RunStore, group: str) -> dict[str, Any] | None:
    """The settings the comparison ``group`` was made with, as :func:`compare`'s keyword
    arguments (``base``, ``optimizers``, ``seeds``, ``plan``, ``partial``, ``metric``,
    ``tune_grafts``); None for a group made before the lab kept them.

    ``compare(store, **{**comparison_request(store, group), "seeds": more}, group=group)``
    continues it: its runs are kept and only the new ones train.
    """
    stored = store.group_request(group)
    if stored is None:
        return None
    return {
        "base": RunConfig.from_dict(stored["base"]),
        "optimizers": {label: (name, hp) for label, (name, hp) in stored["optimizers"].items()},
        "seeds": tuple(stored["seeds"]),
        # a plan stored before rung_seeds: every tuning seed trained every setting
        "plan": SweepPlan(**{"rung_seeds": 0, **stored["plan"]}),
        "partial": [tuple(kinds) for kinds in stored["partial"]],
        "metric": stored["metric"],
        "tune_grafts": stored.get("tune_grafts", False),  # not kept before they could be
    }


#: RunConfig fields a comparison sets per arm (not part of what it holds fixed).
ARM_FIELDS = ("name", "magnitude", "magnitude_hparams", "direction", "direction_hparams")
ARM_FIELDS += ("grafted", "seed")


def base_settings(
    config: RunConfig | Mapping[str, Any], ignore: Sequence[str] = ()
) -> dict[str, Any]:
    """A run config's settings that every run of one comparison shares (its base): all but
    the arm's own (optimizers, name, seed, grafted layers), housekeeping and ``ignore`` (the
    settings a search varies)."""
    values = config.to_dict() if isinstance(config, RunConfig) else dict(config)
    skip = ARM_FIELDS + HOUSEKEEPING + tuple(ignore)
    return {k: v for k, v in values.items() if k not in skip}


def request_changes(stored: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What ``new`` would change of the comparison ``stored`` (both ``compare``'s keyword
    arguments), seeds aside: ``"steps 50 (it was made with 400)"`` per setting."""

    def said(value: Any) -> str:
        return str(value) if not isinstance(value, SweepPlan) else str(asdict(value))

    changes = []
    old_base, new_base = base_settings(stored["base"]), base_settings(new["base"])
    for name in old_base:
        if old_base[name] != new_base.get(name):
            changes.append(f"{name} {new_base.get(name)!r} (it was made with {old_base[name]!r})")
    for name in ("optimizers", "plan", "partial", "metric", "tune_grafts"):
        old, value = stored[name], new[name]
        if name == "optimizers":
            old = {k: (n, dict(h)) for k, (n, h) in old.items()}
            value = {k: (n, dict(h)) for k, (n, h) in value.items()}
        if name == "partial":
            old, value = [list(k) for k in old], [list(k) for k in value]
        if old != value:
            changes.append(f"{name} {said(value)} (it was made with {said(old)})")
    return changes


def check_continuation(store: RunStore, group: str, request: Mapping[str, Any]) -> None:
    """Refuse to train ``request`` into ``group`` unless it is the same comparison (more
    seeds, or a resume): a group of another kind, or any changed setting, is a ValueError
    naming it. A new group (no runs, no settings) passes."""
    kinds = set(store.runs(group=group, flatten_config=False)["kind"])
    if kinds - {"compare"}:
        raise ValueError(
            f"Group {group!r} holds {'/'.join(sorted(kinds))} runs, not a comparison: a "
            "comparison is never trained into it (leave the group out to start one)"
        )
    stored = comparison_request(store, group)
    if stored is None:
        return
    changes = request_changes(stored, request)
    if changes:
        raise ValueError(
            f"Group {group!r} is a comparison with other settings: {'; '.join(changes)}. "
            "A continuation trains the same experiment (more seeds, or a resume); start a "
            "new comparison (no group) to change a setting"
        )


def plan_continuation(
    store: RunStore, group: str, seeds: Iterable[int] | None = None
) -> ComparisonPlan:
    """The comparison ``group`` continued with ``seeds`` (all seeds wanted; default: the
    ones it has, i.e. a resume), with the settings it was made with; ``fewest``/``most``
    bound its new runs. Raises ValueError for a group without stored settings."""
    stored = comparison_request(store, group)
    if stored is None:
        raise ValueError(
            f"{group} was made before the lab kept a comparison's settings: continue it "
            f"with `python -m grafting_core compare --group {group}` and the options it "
            "was made with"
        )
    trained = tuple(stored["seeds"])
    wanted = list(trained if seeds is None else seeds)
    request = {key: stored[key] for key in stored if key != "seeds"}
    planned = plan_comparison(**request, seeds=wanted)
    new = [seed for seed in wanted if seed not in trained]
    arms, variants = len(stored["optimizers"]), 1 + len(stored["partial"])
    tune = stored["tune_grafts"]
    fewest, _ = run_count(arms, len(new), stored["plan"], variants, tune_grafts=tune)
    # At most every run of the seeds but the sweeps of those trained, which are kept (their
    # grafts train again where a tuned lr moves)
    most = planned.most - arms * stored["plan"].points * len(trained)
    return ComparisonPlan(planned.request, fewest if new else 0, most, trained)
