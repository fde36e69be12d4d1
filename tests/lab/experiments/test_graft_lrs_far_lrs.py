"""``graft-lrs G --lrs 1e30`` (issue 28, item 7): an lr more than 1000× away from M's tuned lr
is warned about on stderr, in one line naming it and the tuned lr, before anything trains;
an lr that is not finite is refused with nothing recorded. Through the command line."""

from __future__ import annotations

import pytest

from grafting_core.lab.cli import main
from grafting_core.lab.experiments.graft_lrs import far_from_tuned
from grafting_core.lab.store.run_store import RunStore
from tests.helpers import COMPARISON_TINY, tiny_comparison

TINY = {**COMPARISON_TINY, "steps": 10, "eval_every": 10}


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    """A tuned sgd/adam comparison, one seed, lrs not swept (one point each)."""
    store = RunStore(tmp_path_factory.mktemp("far_lrs"))
    group = tiny_comparison(store, TINY)
    runs = store.runs(group=group)
    graft = runs[runs["role"].eq("graft") & runs["magnitude_arm"].eq("sgd")]
    tuned = float(graft["config.magnitude_hparams.lr"].iloc[0])
    yield store, group, tuned
    store.close()


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    try:
        code = main([*args])
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_an_lr_1e30_is_warned_about_in_one_line_before_training(comparison, capsys):
    store, group, tuned = comparison
    args = ("--runs-dir", str(store.root), "graft-lrs", group, "--workers", "1", "--lrs", "1e30")
    code, out, err = _cli(capsys, *args)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, err
    assert err.lstrip().startswith("warning:")  # before any progress line
    assert "1e+30" in warnings[0] and f"tuned lr {tuned:g}" in warnings[0], warnings[0]
    assert f"comparison {group}" in warnings[0]
    assert "1e+30" in out  # trained anyway: the user asked for it


def test_only_lrs_beyond_1000x_either_side_are_warned_about(comparison):
    store, group, tuned = comparison

    def warned(*lrs):
        return far_from_tuned(store, group, magnitude="sgd", direction="adam", lrs=lrs)

    assert warned(tuned * 1000, tuned / 1000, tuned * 10, tuned / 10) == []
    lines = warned(tuned * 1001, tuned / 1001)
    assert len(lines) == 2 and all(f"tuned lr {tuned:g}" in line for line in lines)
    assert (
        far_from_tuned(store, "no-such-group", magnitude="sgd", direction="adam", lrs=[1e30]) == []
    )


@pytest.mark.parametrize("lr", ["inf", "nan", "-inf", "1e400"])
def test_an_lr_that_is_not_finite_is_refused_and_nothing_recorded(comparison, capsys, lr):
    store, group, _ = comparison
    before = len(store.runs(group=group))
    code, _, err = _cli(capsys, "--runs-dir", str(store.root), "graft-lrs", group, f"--lrs={lr}")
    assert code == 2 and "is not an lr > 0" in err, err
    assert len(store.runs(group=group)) == before
