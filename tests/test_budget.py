"""The cell budget: time shares per scale cell, deferrals recorded, the mix reported."""

import json

import numpy as np
import pandas as pd
import pytest

import ce_conformance.adapters as adapters
from ce_conformance import Case
from ce_conformance.budget import NIGHTLY_SHARES, CellBudget, parse_shares, scale_cell
from ce_conformance.cli import main
from ce_conformance.errors import ConfigurationError
from ce_conformance.findings import cell_mix, load_run
from ce_conformance.runner import FuzzConfig, FuzzRun


def test_a_cell_over_its_share_is_deferred_until_the_others_catch_up():
    budget = CellBudget({"vocab": 0.25}, warmup_seconds=10.0)
    budget.charge("vocab", 2.0)
    assert budget.admits("vocab")  # within the warm-up: 2 <= 0.25 * 10
    budget.charge("vocab", 1.0)
    assert not budget.admits("vocab") and budget.admits("tiny")
    assert budget.defer("vocab") == "cell budget: vocab over 25% of judging time"
    budget.charge("tiny", 9.0)  # total 12: vocab has 3 <= 0.25 * 12
    assert budget.admits("vocab")
    assert dict(budget.deferred) == {"vocab": 1}


def test_without_shares_every_cell_is_admitted():
    budget = CellBudget(None, warmup_seconds=0.0)
    budget.charge("vocab", 100.0)
    assert budget.admits("vocab")


def test_scale_cell_reads_the_class_axis_of_every_layout():
    assert scale_cell(Case.cross_entropy(np.zeros(300), np.array(1))) == "medium"  # unbatched (C)
    assert scale_cell(Case.cross_entropy(np.zeros((2, 40000)), np.array([0, 1]))) == "vocab"
    assert scale_cell(Case.cross_entropy(np.zeros((2, 5, 300)), np.zeros((2, 300), dtype=np.int64))) == "tiny"


@pytest.mark.parametrize("item, message", [("huge=0.1", "unknown cell"), ("vocab=1.5", r"in \(0, 1\]"),
                                           ("vocab", "expected CELL=FRACTION")])
def test_bad_shares_are_refused_with_the_reason(item, message):
    with pytest.raises(ConfigurationError, match=message):
        parse_shares([item])


def test_cli_refuses_a_bad_share(capsys, tmp_path):
    assert main(["fuzz", "--cell-share", "vocab=0", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "--cell-share" in capsys.readouterr().err


def _run(tmp_path, shares, **kw):
    run = FuzzRun(FuzzConfig(adapters=adapters.load_adapters(["numpy"]), out_dir=tmp_path / "out", max_examples=80,
                             progress=False, curated_dirs=[], covering=0, shrink=False, cell_shares=shares, **kw))
    return run


def test_exploration_defers_draws_of_a_capped_cell_and_reports_the_mix(tmp_path):
    run = _run(tmp_path, {"tiny": 0.05})
    run.cell_budget.warmup_seconds = 0.0  # cap from the first case on
    summary = run.run()
    results, _ = load_run(summary.out_dir)
    deferred = results[results["skip_reason"].fillna("").str.startswith("cell budget: tiny")]
    assert len(deferred) > 0 and set(deferred["phase"]) == {"explore"}
    mix = cell_mix(results)
    assert mix.loc["tiny", "deferred"] == deferred["case_id"].nunique()
    assert mix.loc["tiny", "cases"] >= 1  # the cell is still reached
    assert len(results) == summary.examples  # one adapter, explore only: every draw has its row, run or deferred
    assert "Examples per scale cell" in summary.summary_markdown
    assert json.loads((summary.out_dir / "config.json").read_text())["cell_shares"] == {"tiny": 0.05}


def test_nightly_profile_caps_vocabulary_and_medium_cells_by_default(tmp_path):
    assert _run(tmp_path, None, profile="nightly").cell_budget.shares == NIGHTLY_SHARES
    assert _run(tmp_path, {}, profile="nightly").cell_budget.shares == {}  # --cell-share none
    assert _run(tmp_path, None).cell_budget.shares == {}  # ci: Hypothesis's own mix


def test_cell_mix_of_an_empty_table_is_empty():
    assert cell_mix(pd.DataFrame()).empty
