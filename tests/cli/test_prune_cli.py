"""``adapruner prune --device --dtype``: the search and pruning as their own step, in the model's own precision."""

from __future__ import annotations

import json

import pytest

import torch
from safetensors.torch import load_file

from adapruner_lightning.cli import main as cli


def _tiny(model, texts, out, *options: str) -> list[str]:
    """``adapruner prune`` on the tiny model with a pool of 8 x 32 tokens, 4 samples a candidate, 2 objective windows."""
    return ["prune", "--model", str(model), "--text", str(texts), "--sample-len", "32", "--pool-size", "8",
            "--num-samples", "4", "--objective-windows", "2", "--out", str(out), "--no-progress", *options]


def test_prune_in_bf16_exports_bf16(tmp_path, tiny_lm_dir, text_dir):
    out = tmp_path / "pruned"
    args = _tiny(tiny_lm_dir, text_dir, out, "--trials", "0", "--metric", "taylor", "--dtype", "bfloat16",
                 "--device", "cpu")
    assert cli.main(args) == 0
    weights = load_file(str(next(out.glob("*.safetensors"))))
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    assert json.loads((out / "pruning_plan.json").read_text())["params_after"] < json.loads(
        (out / "pruning_plan.json").read_text())["params_before"]


def test_bad_dtype_is_one_line(capsys, tmp_path):
    assert cli.main(["prune", "--dtype", "float8", "--out", str(tmp_path / "x")]) == 2
    assert "dtype='float8' is invalid" in capsys.readouterr().err


def _trace_subsets(path) -> list[list[int]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [row["candidate"]["subset"] for row in rows if "candidate" in row]


def test_num_samples_is_searched_unless_fixed(tmp_path, tiny_lm_dir, text_dir):
    common = ["prune", "--model", str(tiny_lm_dir), "--text", str(text_dir), "--trials", "2", "--sample-len", "32",
              "--pool-size", "8", "--num-samples", "4", "--objective-windows", "2", "--objective-seq-len", "32",
              "--no-progress"]
    assert cli.main([*common, "--out", str(tmp_path / "searched")]) == 0
    first = _trace_subsets(tmp_path / "searched.search_trace.jsonl")[0]
    assert first == list(range(8))  # FLAP's warm point: its 2,048 samples, clipped to the pool of 8
    assert cli.main([*common, "--fixed-num-samples", "--out", str(tmp_path / "fixed")]) == 0
    assert {len(s) for s in _trace_subsets(tmp_path / "fixed.search_trace.jsonl")} == {4}


def test_the_flags_are_the_config_dataclasses():
    """Every PruningConfig / SearchConfig field is a flag whose default is the field's: nothing re-declared."""
    import dataclasses
    import typing

    from adapruner_lightning.cli.prune import _parser, parse
    from adapruner_lightning.core.config import PruningConfig
    from adapruner_lightning.search.config import SearchConfig

    args = parse(["--out", "x"])
    assert args.pruning == PruningConfig() and args.search == SearchConfig()
    text = _parser().format_help()
    hints = typing.get_type_hints(SearchConfig)
    sections = {f.name: hints[f.name] for f in dataclasses.fields(SearchConfig) if dataclasses.is_dataclass(hints[f.name])}
    flags = [f"--pruning.{f.name}" for f in dataclasses.fields(PruningConfig)]
    flags += [f"--search.{f.name}" for f in dataclasses.fields(SearchConfig) if f.name not in sections]
    flags += [f"--search.{name}.{f.name}" for name, kind in sections.items() for f in dataclasses.fields(kind)]
    missing = [flag for flag in flags if flag not in text]
    assert not missing and len(flags) > 40, missing
    assert "{layerwise,global,standardized}" in text  # choices from the Literals
    assert "Search engines: gp, tpe, random" in " ".join(text.split())  # from the engine registry


def test_the_short_spellings_set_the_config_fields(tmp_path):
    from adapruner_lightning.cli.prune import parse

    args = parse(["--out", "x", "--target-ratio", "0.3", "--trials", "2", "--metrics", "taylor", "flap", "--engine",
                  "random", "--fixed-num-samples", "--num-samples=4", "--uniform", "--no-progress", "--text", "a", "b",
                  "--search.data.objective", "kl"])
    assert (args.pruning.target_ratio, args.pruning.per_layer, args.pruning.num_samples) == (0.3, "uniform", 4)
    assert (args.search.trials, args.search.engine.name, args.search.data.subset_size) == (2, "random", None)
    assert args.search.space.metrics == ["taylor", "flap"] and not args.search.space.vary_num_samples
    assert args.search.data.objective == "kl" and args.progress is False and args.text == ["a", "b"]
    config = tmp_path / "prune.yaml"
    config.write_text("pruning:\n  metric: flap\n  keep_first: 2\nsearch:\n  trials: 0\n  data:\n    pool_size: 32\n")
    args = parse(["--config", str(config), "--out", "y"])
    assert (args.pruning.metric, args.pruning.keep_first, args.search.trials, args.search.data.pool_size) == \
        ("flap", 2, 0, 32)


def test_block_removal_is_an_allocation_flag_with_a_short_spelling():
    from adapruner_lightning.cli.prune import parse

    assert not parse(["--out", "x"]).search.allocation.block_removal
    args = parse(["--out", "x", "--generations", "2", "--block-removal"])
    assert args.search.allocation.block_removal and args.search.allocation.generations == 2
    assert parse(["--out", "x", "--search.allocation.block_removal", "true"]).search.allocation.block_removal


@pytest.mark.parametrize("argv, message", [
    (["--scope", "nope"], "pruning.scope"),
    (["--search.engine.name", "annealing"], "search.engine.name"),
    (["--trials", "many"], "search.trials"),
    (["--no-such-flag", "1"], "unrecognized arguments"),
])
def test_a_value_the_parser_refuses_is_one_line(capsys, argv, message):
    assert cli.main(["prune", "--out", "x", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("adapruner prune: error: ") and message in err[0], err


def test_prune_prints_and_reports_the_distinct_plans_scored(tmp_path, tiny_lm_dir, text_dir, capsys):
    args = ["prune", "--model", str(tiny_lm_dir), "--text", str(text_dir), "--trials", "2", "--sample-len", "32",
            "--pool-size", "8", "--num-samples", "4", "--objective-windows", "2", "--objective-seq-len", "32",
            "--no-progress", "--out", str(tmp_path / "out")]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    search = json.loads((tmp_path / "out" / "report.json").read_text())["search"]
    rows = [json.loads(line) for line in (tmp_path / "out.search_trace.jsonl").read_text().splitlines()][1:]
    assert search["plans_scored"] == sum(r["repeat_of"] is None and bool(r["digest"]) for r in rows) >= 1
    assert search["trials_saved"] == sum(r["repeat_of"] is not None for r in rows)
    line = f"{search['plans_scored']} distinct plans scored, {search['trials_saved']} repeated plans"
    assert line in printed and line in (tmp_path / "out" / "report.md").read_text()
    # the search's cost against FLAP's own prune time on the same machine (statistics pass + FLAP's selection)
    assert 0 < search["flap_seconds"] < search["seconds"]
    cost = f"{search['seconds'] / search['flap_seconds']:.1f}x FLAP's prune time on this machine"
    assert cost in printed and cost in (tmp_path / "out" / "report.md").read_text()


def test_reconstruction_lstsq_prunes_and_exports_the_refitted_weights(tmp_path, tiny_lm_dir, text_dir):
    """``--reconstruction lstsq`` re-fits the kept columns before the physical prune; the export reloads them."""
    from adapruner_lightning.outputs.export import load_pruned

    out = tmp_path / "lstsq"
    assert cli.main(_tiny(tiny_lm_dir, text_dir, out, "--trials", "0", "--metric", "wanda_sp",
                          "--reconstruction", "lstsq")) == 0
    model, _, plan = load_pruned(out)
    assert plan.reconstruction == "lstsq" and plan.provenance["reconstruction_fit"]["pool"]
    assert model.model.layers[0].mlp.down_proj.bias is not None  # the intercept
    assert cli.main(["prune", "--reconstruction", "ols", "--out", str(tmp_path / "x")]) == 2  # one line


def test_the_allocation_stage_runs_after_the_search_when_asked(tmp_path, tiny_lm_dir, text_dir):
    out = tmp_path / "allocated"
    assert cli.main(_tiny(tiny_lm_dir, text_dir, out, "--trials", "2", "--objective-seq-len", "32",
                          "--generations", "1", "--offspring", "2")) == 0
    allocation = json.loads((out / "pruning_plan.json").read_text())["provenance"]["allocation"]
    assert allocation["generations"] == 1 and allocation["offspring"] == 2 and allocation["counts"]


def test_the_training_aware_stage_runs_after_the_search_when_asked(tmp_path, tiny_lm_dir, text_dir):
    from adapruner_lightning.cli.prune import parse

    assert parse(["--out", "x"]).search.training_aware.candidates == 0  # off by default
    assert parse(["--out", "x", "--train-candidates", "3", "--train-steps", "2"]).search.training_aware.steps == 2
    out = tmp_path / "trained"
    assert cli.main(_tiny(tiny_lm_dir, text_dir, out, "--trials", "3", "--objective-seq-len", "32",
                          "--train-candidates", "2", "--train-steps", "1")) == 0
    stage = json.loads((out / "pruning_plan.json").read_text())["provenance"]["training_aware"]
    assert stage["candidates"] == 2 and stage["steps"] == 1 and stage["chose"] in stage["trials"]
    assert cli.main(["prune", "--train-candidates", "1", "--out", str(tmp_path / "x")]) == 2  # one line, no traceback
