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
            "--subset-size", "4", "--objective-windows", "2", "--out", str(out), "--no-progress", *options]


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


def test_the_subset_size_is_searched_unless_fixed(tmp_path, tiny_lm_dir, text_dir):
    common = ["prune", "--model", str(tiny_lm_dir), "--text", str(text_dir), "--trials", "2", "--sample-len", "32",
              "--pool-size", "8", "--subset-size", "4", "--objective-windows", "2", "--objective-seq-len", "32",
              "--no-progress"]
    assert cli.main([*common, "--out", str(tmp_path / "searched")]) == 0
    first = _trace_subsets(tmp_path / "searched.search_trace.jsonl")[0]
    assert first == list(range(8))  # FLAP's warm point: its 2,048 samples, clipped to the pool of 8
    assert cli.main([*common, "--fixed-subset-size", "--out", str(tmp_path / "fixed")]) == 0
    assert {len(s) for s in _trace_subsets(tmp_path / "fixed.search_trace.jsonl")} == {4}


def test_reconstruction_lstsq_prunes_and_exports_the_refitted_weights(tmp_path, tiny_lm_dir, text_dir):
    """``--reconstruction lstsq`` re-fits the kept columns before the physical prune; the export reloads them."""
    from adapruner_lightning.outputs.export import load_pruned

    out = tmp_path / "lstsq"
    assert cli.main(_tiny(tiny_lm_dir, text_dir, out, "--trials", "0", "--metric", "wanda_sp",
                          "--reconstruction", "lstsq")) == 0
    model, _, plan = load_pruned(out)
    assert plan.reconstruction == "lstsq" and plan.provenance["reconstruction_fit"]["pool"]
    assert model.model.layers[0].mlp.down_proj.bias is not None  # the intercept
    with pytest.raises(SystemExit) as exit_:  # argparse's one-line usage error
        cli.main(["prune", "--reconstruction", "ols", "--out", str(tmp_path / "x")])
    assert exit_.value.code == 2


def test_the_allocation_stage_runs_after_the_search_when_asked(tmp_path, tiny_lm_dir, text_dir):
    out = tmp_path / "allocated"
    assert cli.main(_tiny(tiny_lm_dir, text_dir, out, "--trials", "2", "--objective-seq-len", "32",
                          "--generations", "1", "--offspring", "2")) == 0
    allocation = json.loads((out / "pruning_plan.json").read_text())["provenance"]["allocation"]
    assert allocation["generations"] == 1 and allocation["offspring"] == 2 and allocation["counts"]
