"""Tables and plots from a hand-built results store, checked against answers worked out by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from rfd.cli.main import main
from rfd.eval.results import load_results, robust_curve
from rfd.eval.store import ResultStore
from rfd.eval.tables import build_table, render, resolve_kind
from rfd.stats import Estimate, wilson
from tests.helpers.stores import add_run


def pct(e: object) -> float:
    assert isinstance(e, Estimate)
    return 100 * e.value


@pytest.fixture
def store(tmp_path: Path) -> Path:
    db = tmp_path / "hand.sqlite"
    with ResultStore(db) as s:
        s.put_study("hand", {"checkpoints": [50, 100]})
        add_run(s)  # Base square: robust@50 = 2/4, @100 = 1/4, Acc 3/4
        add_run(s, family="feature", drop=0.02, samples=[(1, 0, 100), (1, 1, 30), (1, 0, 100), (1, 0, 100)])
        add_run(s, attack="rays", samples=[(1, 1, 5), (1, 1, 5), (0, 0, 0), (0, 0, 0)])
        add_run(s, family="feature", drop=0.02, attack="rays", samples=[(1, 1, 80), (1, 0, 100), (1, 0, 100),
                                                                         (0, 0, 0)])
    return db


def test_robust_table_known_answers(store: Path) -> None:
    t = build_table(load_results(store), "2")
    f = t.frame
    base, feat = ("vgg", "Base", ""), ("vgg", "Feature", "≈2%")
    assert list(f.index) == [base, feat]
    assert f.loc[base, ("Acc", "", "")] == pytest.approx(100 * (3 / 4 + 2 / 4) / 2)
    assert f.loc[base, ("E[Acc]", "", "")] == pytest.approx(100 * (3 / 4 + 2 / 4) / 2)
    assert pct(f.loc[base, ("square", 50, "paper")]) == pytest.approx(50.0)
    assert pct(f.loc[base, ("square", 100, "paper")]) == pytest.approx(25.0)
    # strict: sample 1's break (p_wrong 0.3) was a lucky pass of the check and does not count
    assert pct(f.loc[base, ("square", 50, "strict")]) == pytest.approx(50.0)
    assert pct(f.loc[base, ("square", 100, "strict")]) == pytest.approx(50.0)
    assert pct(f.loc[feat, ("square", 50, "paper")]) == pytest.approx(75.0)
    assert pct(f.loc[feat, ("square", 100, "paper")]) == pytest.approx(75.0)
    assert pct(f.loc[base, ("rays", 50, "paper")]) == pytest.approx(0.0)
    assert pct(f.loc[feat, ("rays", 50, "paper")]) == pytest.approx(75.0)
    assert pct(f.loc[feat, ("rays", 100, "strict")]) == pytest.approx(50.0)
    # every value carries its Wilson interval over the 4 images
    e = f.loc[base, ("square", 100, "paper")]
    assert (e.low, e.high, e.n) == (wilson(1, 4).low, wilson(1, 4).high, 4)
    assert [c[2] for c in f.columns if c[0] == "square"] == ["paper", "strict", "paper", "strict"]
    md = render(t, "md")
    w = wilson(2, 4).percent()
    assert f"| vgg | Base |  | 62.5 | 62.5 | {w} | {w} | {wilson(1, 4).percent()} | {w} |" in md
    csv = render(t, "csv").splitlines()
    assert csv[0].startswith("Model,Method,Drop,Acc,E[Acc],square 50 paper,square 50 paper low,square 50 paper high,")
    assert csv[1].startswith(f"vgg,Base,,62.5,62.5,50.0,{100 * wilson(2, 4).low},{100 * wilson(2, 4).high},")
    tex = render(t, "latex")
    assert r"\multicolumn{4}{c}{square}" in tex and r"$\approx$2\%" in tex and r"\bottomrule" in tex


def test_expected_reading_is_the_chance_the_model_is_right_on_the_final_image(store: Path) -> None:
    t = build_table(load_results(store), "robust", readings=["expected"], budgets=[100])
    e = t.frame.loc[("vgg", "Base", ""), ("square", 100, "expected")]
    # images: broken (1 - 0.9), broken by luck (1 - 0.3), robust (1), misclassified clean (0)
    assert e.value == pytest.approx((0.1 + 0.7 + 1 + 0) / 4) and e.method == "bootstrap"
    assert e.low <= e.value <= e.high
    with pytest.raises(ValueError, match="unknown reading"):
        build_table(load_results(store), "robust", readings=["lucky"])


def test_budgets_option_and_run_budget_limit(store: Path) -> None:
    t = build_table(load_results(store), "robust", budgets=[10, 200])
    # 200 exceeds every run's budget: no column rather than a made-up number
    assert [c for c in t.frame.columns if c[0] == "square"] == [("square", 10, "paper"), ("square", 10, "strict")]
    assert pct(t.frame.loc[("vgg", "Base", ""), ("square", 10, "paper")]) == pytest.approx(50.0)


def test_decision_table(store: Path) -> None:
    f = build_table(load_results(store), "5").frame
    assert pct(f.loc[("vgg", "Feature", "≈2%"), ("rays", "paper")]) == pytest.approx(50.0)
    assert pct(f.loc[("vgg", "Base", ""), ("square", "paper")]) == pytest.approx(25.0)
    assert pct(f.loc[("vgg", "Base", ""), ("square", "strict")]) == pytest.approx(50.0)
    f = build_table(load_results(store), "decision", budget=50).frame
    assert pct(f.loc[("vgg", "Feature", "≈2%"), ("rays", "paper")]) == pytest.approx(75.0)


def test_strength_layer_eot_lucky_tables(tmp_path: Path) -> None:
    db = tmp_path / "more.sqlite"
    with ResultStore(db) as s:
        s.put_study("more", {"checkpoints": [100, 500]})
        for p, last in ((0.05, (1, 0, 100)), (0.3, (1, 1, 20))):
            add_run(s, family="feature", drop=0.02, params={"p_init": p}, samples=[(1, 0, 100), last])
        for layer, q in (("net.features.2", 10), ("penultimate", 90)):
            add_run(s, family="feature", drop=0.04, layers=(layer,), attack="nes", samples=[(1, 1, q), (1, 0, 100)])
        add_run(s, family="input", drop=0.02, attack="signhunt", eot=1, budget=100, samples=[(1, 1, 50), (1, 0, 100)])
        add_run(s, family="input", drop=0.02, attack="signhunt", eot=5, budget=500,
                samples=[(1, 1, 400), (1, 0, 500)])
        add_run(s, attack="square", verify=1, budget=500, samples=[(1, 1, 300), (1, 0, 500)])
    res = load_results(db)
    sq = res.subset(res.runs.attack == "square")
    f = build_table(sq.subset(sq.runs.verify > 1), "3").frame
    assert pct(f.loc[("square", "p_init=0.05"), ("vgg", "≈2%", "Feature", "paper")]) == pytest.approx(100.0)
    assert pct(f.loc[("square", "p_init=0.3"), ("vgg", "≈2%", "Feature", "paper")]) == pytest.approx(50.0)
    f = build_table(res.subset(res.runs.attack == "nes"), "14").frame
    assert pct(f.loc[("vgg", "net.features.2"), ("nes", "paper")]) == pytest.approx(50.0)
    assert pct(f.loc[("vgg", "penultimate"), ("nes", "strict")]) == pytest.approx(50.0)
    f = build_table(res.subset(res.runs.attack == "nes"), "layer", budget=50).frame
    assert pct(f.loc[("vgg", "penultimate"), ("nes", "paper")]) == pytest.approx(100.0)
    f = build_table(res.subset(res.runs.attack == "signhunt"), "7").frame
    row = ("signhunt", "Input", "≈2%")
    assert pct(f.loc[row, ("vgg", "M=1 QC=100", "paper")]) == pytest.approx(50.0)
    assert pct(f.loc[row, ("vgg", "M=5 QC=100", "paper")]) == pytest.approx(100.0)
    assert pct(f.loc[row, ("vgg", "M=5 QC=500", "strict")]) == pytest.approx(50.0)
    assert ("vgg", "M=1 QC=500", "paper") not in f.columns
    f = build_table(res, "15").frame
    assert pct(f.loc[("vgg", "Base", ""), ("square", "N=100", "paper")]) == pytest.approx(100.0)
    assert pct(f.loc[("vgg", "Base", ""), ("square", "N=500", "paper")]) == pytest.approx(50.0)


def test_incomplete_runs_are_flagged_and_kinds_resolve(tmp_path: Path) -> None:
    db = tmp_path / "inc.sqlite"
    with ResultStore(db) as s:
        add_run(s, n_expected=10)
    t = build_table(load_results(db), "runs")
    assert any("incomplete" in n and "4 of 10" in n for n in t.notes)
    assert resolve_kind("Table 14") == "layer" and resolve_kind("lucky") == "lucky"
    with pytest.raises(ValueError, match="unknown table"):
        resolve_kind("8")


def test_robust_curve_known_values(store: Path) -> None:
    res = load_results(store)
    s = res.samples[res.samples.run_id == 1]
    import numpy as np

    assert robust_curve(s, np.array([0, 9, 10, 59, 60, 100])).tolist() == [0.75, 0.75, 0.5, 0.5, 0.25, 0.25]


def test_cli_report_formats_plot_and_raw(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "curves.png"
    assert main(["report", str(store), "--table", "2", "--format", "md", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "| vgg | Base |  | 62.5 | 62.5 |" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert main(["report", str(store), "--raw"]) == 0
    raw = capsys.readouterr().out.splitlines()
    assert raw[0].startswith("run_id,model,method") and len(raw) == 1 + 16
    assert main(["report", str(store), "--table", "robust", "--attack", "rays", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("Model,Method,Drop,Acc,E[Acc],rays 50 paper,")
    assert main(["report", str(store), "--table", "lucky"]) == 2
    assert "verify" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "none.sqlite")]) == 2


def test_gated_defenses_are_labelled_by_their_gate_and_compared_with_their_like(tmp_path: Path) -> None:
    from rfd.eval.reporting import paired_comparisons

    db = tmp_path / "gate.sqlite"
    with ResultStore(db) as s:
        for fam in ("input", "feature"):
            add_run(s, family=fam, drop=0.02)
            add_run(s, family=fam, drop=0.02, defense_params={"gate": 0.99})
    res = load_results(db)
    assert sorted(res.runs.method) == ["Feature", "Feature p<0.99", "Input", "Input p<0.99"]
    t = build_table(res, "robust").frame
    assert {r[1] for r in t.index} == {"Input", "Input p<0.99", "Feature", "Feature p<0.99"}  # no JSON in labels
    pairs = paired_comparisons(res, readings=("paper",))
    method = dict(zip(res.runs.run_id, res.runs.method))
    assert sorted((method[c.a], method[c.b]) for c in pairs) == [("Feature", "Input"),
                                                                  ("Feature p<0.99", "Input p<0.99")]
