"""The run report: ``report.md`` is short and read by people (quality with ratios to dense, the search's summary,
grouped per-layer widths, times); everything else stays in ``report.json`` and ``pruning_plan.json``."""

from __future__ import annotations

import json

from helpers_core import SMALL, small_session
from adapruner_lightning.outputs.report import to_markdown, write_report
from adapruner_lightning.search.config import SearchConfig
from adapruner_lightning.search.pipeline import find_plan

QUALITY = {"dense": {"ppl/Persuasion": 20.0, "acc/austen_cloze": 0.5},
           "pruned": {"ppl/Persuasion": 30.0, "acc/austen_cloze": 0.4},
           "recovered": {"ppl/Persuasion": 25.0, "acc/austen_cloze": 0.45}}


def _searched():
    result = find_plan(small_session(), SearchConfig.of(**SMALL), progress=False, bos=False)
    plan = result.plan
    report = {"params": {"before": plan.params_before, "after": plan.params_after, "removed_ratio": plan.achieved_ratio},
              "quality": QUALITY, "seconds": {"search": result.seconds, "fine_tune": 12.0}, "search": result.summary()}
    return result, report


def test_report_md_is_concise_quality_with_ratios_search_summary_and_grouped_widths(tmp_path):
    result, report = _searched()
    plan = result.plan
    json_path, md_path = write_report(tmp_path, report, plan)
    text = md_path.read_text()
    assert "| measure | dense | pruned | recovered | pruned / dense | recovered / dense |" in text
    assert "| ppl/Persuasion | 20 | 30 | 25 | 1.500x | 1.250x |" in text
    assert "| acc/austen_cloze | 0.5 | 0.4 | 0.45 | 0.800x | 0.900x |" in text
    best = result.best
    assert (f"- trials: {len(result.trials)} (0 failed; {result.plans_scored} distinct plans scored, "
            f"{result.trials_saved} repeated plans registered at no cost)") in text
    assert f"- best trial: {best.trial} " in text
    assert f"metric={plan.provenance['metric']}" in text and f"samples={len(plan.provenance['subset'])}" in text
    assert f"{plan.params_before:,} -> {plan.params_after:,}" in text and "pruning_plan.json" in text
    width_rows = [line for line in text.splitlines() if line.startswith("| ") and " / " in line and "measure" not in line
                  and not line.startswith("| ppl") and not line.startswith("| acc")]
    assert 1 <= len(width_rows) <= len(plan.layers)
    covered = []
    for row in width_rows:  # the rows' layer ranges cover every layer once, in order
        first, _, last = row.split("|")[1].strip().partition("-")
        covered += list(range(int(first), int(last or first) + 1))
    assert covered == [lp.index for lp in plan.layers]
    assert "```" not in text and "sample_ids" not in text and "{" not in text  # no JSON dump of the plan
    assert len(text.splitlines()) < 60
    assert json.loads(json_path.read_text())["search"]["best_trial"] == best.trial


def test_equal_neighbouring_layers_share_a_row_and_a_run_without_search_says_so():
    result = find_plan(small_session(metric="magnitude_l2", keep_first=1), SearchConfig(trials=0), progress=False)
    plan = result.plan
    text = to_markdown({"search": result.summary(), "params": {"before": 10, "after": 8, "removed_ratio": 0.2}}, plan)
    kept = plan.layers[0]
    assert f"| 0 | {kept.num_heads} / {plan.original_num_heads} |" in text  # the layer kept whole: its own row
    assert "| 1-3 |" in text  # the pruned layers, equal under the layerwise scope: one row
    assert "- no search (`trials=0`): the configured candidate" in text and "metric=magnitude_l2" in text
    assert "## Quality" not in text  # nothing measured: no empty table


def test_the_report_says_what_the_allocation_stage_did_in_words_not_a_dict():
    config = SearchConfig.of(**{**SMALL, "trials": 3, "generations": 2, "offspring": 3})
    result = find_plan(small_session(), config, progress=False, bos=False)
    stage = result.plan.provenance["allocation"]
    text = to_markdown({"search": result.summary(), "params": {"before": 10, "after": 8, "removed_ratio": 0.2}},
                       result.plan)
    assert "{" not in text  # the stage's options are not printed as a Python dict
    line = next(line for line in text.splitlines() if line.startswith("- allocation stage:"))
    assert f"{stage['generations_run']} of 2 generations" in line
    assert f"KL from the dense model {stage['kl_seeds'][stage['start']]:.4g} ({stage['start']}) -> {stage['kl']:.4g}" in line
    assert f"{stage['improvements']} improvements" in line
