"""The report command's Markdown: every number is the stored comparison's."""

import re

from grafting_core.lab.experiments.compare import compare, read_comparison
from grafting_core.lab.experiments.comparison_plan import SweepPlan
from grafting_core.lab.experiments.report import comparison_report, markdown_table
from grafting_core.lab.runs.config import RunConfig
from grafting_core.lab.store.run_store import RunStore
from tests.helpers import PAIR
from tests.helpers import SEARCH_TINY as TINY


def test_markdown_table_formats_and_escapes():
    import pandas as pd

    text = markdown_table(pd.DataFrame({"a": [1.234567, float("nan")], "b": ["x|y", "z"]}))
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1.235 | x\\|y |", "|  | z |"]


def test_the_report_prints_the_protocol_the_control_and_each_verdict(tmp_path):
    store = RunStore(tmp_path)
    plan = SweepPlan(
        points=2, factor=10, extensions=0, warmups=(0.1, 0.3), tune_seeds=(100, 101), rung=0.4,
        control=True,
    )  # fmt: skip
    group = compare(store, RunConfig(**TINY), PAIR, seeds=(0, 1), plan=plan).group
    report = comparison_report(store, group)
    result = read_comparison(store, group)
    assert f"## Comparison `{group}`" in report
    assert "warm-ups 10%, 30% of the steps" in report and "halved at 40%" in report
    assert "every setting to the rung on tuning seed 100, the leaders to the end" in report
    assert "tuning seeds: 100, 101 (the best mean over them is chosen); reporting seeds: 0, 1" in (
        report
    )
    assert report.index("Positive control") < report.index("### Verdicts")
    assert report.index("Negative control") < report.index("### Verdicts")
    runs = store.runs(group=group)
    trained = runs["last_step"].sum() / TINY["steps"]
    assert f"- cost: {len(runs)} runs, {trained:.1f} run-equivalents trained" in report
    for row in result.verdicts.itertuples():
        line = next(x for x in report.splitlines() if x.startswith(f"| {row.magnitude}#"))
        ci = f"[{row.ci_low:.2f}, {row.ci_high:.2f}] at {100 * row.ci_level:.3g}%"
        assert f"{row.graft_mean:.4g}" in line and ci in line
    tuned = result.arms[result.arms["role"] == "tuned"]
    for row in tuned.itertuples():
        assert re.search(rf"\| {row.arm} \| {row.lr:.4g} \| \d+ \| {row.mean:.4g} \|", report)
    store.close()


def test_the_report_command_prints_it(tmp_path, capsys):
    from grafting_core.lab.cli import main

    store = RunStore(tmp_path)
    group = compare(
        store, RunConfig(**TINY), PAIR, seeds=(0,), plan=SweepPlan(points=2, extensions=0)
    ).group
    expected = comparison_report(store, group)
    store.close()
    capsys.readouterr()
    assert main(["--runs-dir", str(tmp_path), "report", group]) == 0
    assert capsys.readouterr().out.strip() == expected.strip()
