"""Arms: what each run *is* in an experiment, stored with the run as data.

An experiment is a list of arms. Each run records its ``Arm``: a ``role`` and the labels of
the optimizer choices it uses as magnitude M and direction D (labels, such as ``"adam"``, name
an experiment's choices, which may share a registry name with other hyperparameters), and a
``variant`` that tells apart arms of one role and pair (the layer kinds a partial graft grafts,
the window static ratios came from). Tables, figures and verdicts select runs by these fields,
never by parsing a display name.

Roles (``ROLES``):

- ``plain``          one optimizer alone (M alone, D alone) at a given learning rate;
- ``graft``          M#D: D's direction with M's per-layer step size (D#M is the graft with
                     the labels swapped);
- ``partial_graft``  M#D on some layers, M's own step on the others;
- ``replay``         M's recorded per-layer step sizes replayed onto D;
- ``static_ratios``  plain D with per-layer learning rates lr·c measured on an M#D run;
- ``sweep_point``    a plain optimizer at one learning rate of a sweep;
- ``tuned``          the sweep point chosen as that optimizer's tuned learning rate;
- ``superseded``     a graft at a learning rate that is no longer M's or D's tuned one (a
                     comparison continued with more seeds chose another): kept, not judged;
- ``graft_lr``       a comparison's graft (full or partial) trained again at another lr of
                     M (``grafting_core.lab.experiments.graft_lrs``): how the verdict moves with it;
- ``control``        a comparison's positive control M: a tuned optimizer at a tenth of its lr
                     (it differs from the tuned one only in step size);
- ``control_graft``  that M grafted onto the tuned optimizer's direction: it must train like M;
- ``negative_control`` the comparison's graft X#Y (labels: magnitude X, direction Y) as M,
                     grafted onto tuned X's direction: the two share X's step sizes and
                     differ only in direction, so it must train like X;
- ``control_superseded`` a control at a setting that is no longer tuned: kept, not judged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from grafting_core.lab.runs.config import RunConfig

ROLES = (
    "plain",
    "graft",
    "partial_graft",
    "replay",
    "static_ratios",
    "sweep_point",
    "tuned",
    "superseded",
    "graft_lr",
    "control",
    "control_graft",
    "negative_control",
    "control_superseded",
)


@dataclass(frozen=True)
class Arm:
    """A run's place in an experiment: its role and its M and D labels."""

    role: str
    magnitude: str  # label of the optimizer choice that sets the step sizes (or trains alone)
    direction: str = ""  # label of the one that sets the directions; "" for a plain run
    variant: str = ""  # what tells this arm from others of its role and pair ("" if nothing)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"Invalid role: {self.role!r} (valid: {', '.join(ROLES)})")
        grafted = self.role in (
            "graft",
            "partial_graft",
            "replay",
            "graft_lr",
            "control_graft",
            "negative_control",
        )
        if grafted != bool(self.direction) and self.role != "control_superseded":
            raise ValueError(
                f"An arm of role {self.role!r} {'needs' if grafted else 'takes no'} direction label"
            )

    @property
    def label(self) -> str:
        """Display text: ``adam``, ``adam#sgd``, ``adam#sgd[hidden]``, ``replay(adam)#sgd``,
        ``sgd+ratios[early]``, ``(sgd#adam)#sgd``."""
        if self.role == "replay":
            text = f"replay({self.magnitude})#{self.direction}"
        elif self.role == "negative_control":
            text = f"({self.magnitude}#{self.direction})#{self.magnitude}"
        elif self.role == "static_ratios":
            text = f"{self.magnitude}+ratios"
        else:
            text = f"{self.magnitude}#{self.direction}" if self.direction else self.magnitude
        return f"{text}[{self.variant}]" if self.variant else text


class PlannedRun(NamedTuple):
    """A run an experiment will create: its config and its arm."""

    config: RunConfig
    arm: Arm
