"""Every recipe (and each documented combination) parses against the CLI's signatures, so none rots."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapruner_lightning.cli import main as cli
from adapruner_lightning.cli.fit import parse_only

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
COMBINATIONS = [
    ["smollm2_default.yaml"],
    ["smollm2_default.yaml", "overlays/full_finetune.yaml"],
    ["smollm2_default.yaml", "overlays/llm_pruner_baseline.yaml"],
    *[["gpu_deepspeed_8x.yaml", f"models/{m.name}"] for m in sorted((RECIPES / "models").glob("*.yaml"))],
    ["gpu_deepspeed_8x.yaml", "models/llama31_8b.yaml", "overlays/zero3.yaml"],
]


def _parse(files: list[str]):
    return parse_only([a for f in files for a in ("--config", str(RECIPES / f))])  # builds nothing


def test_every_recipe_is_covered():
    used = {f for combo in COMBINATIONS for f in combo}
    present = {str(p.relative_to(RECIPES)) for p in RECIPES.rglob("*.yaml")}
    assert present == used, f"recipes not parsed by any combination: {present - used}"


@pytest.mark.parametrize("files", COMBINATIONS, ids=["+".join(c) for c in COMBINATIONS])
def test_recipe_parses(files):
    config = _parse(files)
    assert 0 < config.adapruner.target_ratio < 1
    assert config.data.model == config.model.model  # linked


def test_overlays_merge_into_the_callback_section():
    base = _parse(["gpu_deepspeed_8x.yaml", "models/llama31_8b.yaml"])
    full = _parse(["gpu_deepspeed_8x.yaml", "models/llama31_8b.yaml", "overlays/full_finetune.yaml"])
    assert full.adapruner.recovery.mode == "full" and base.adapruner.recovery.mode == "lora"
    assert full.adapruner.eval.texts == base.adapruner.eval.texts  # the rest of the section survives
    demo = _parse(["smollm2_default.yaml"])  # the development data's choice at the demo's budget: full, LM loss
    assert demo.adapruner.recovery.mode == "full" and demo.adapruner.distillation is None
    # the allocation stage runs in the demo, at the budget that keeps its search under 5 minutes on 2 cores (README)
    assert (demo.adapruner.search.trials, demo.adapruner.search.allocation.generations) == (8, 8)
    # the budget was measured with the repair on the pool alone: the reconstruction windows stay off in the demo
    assert demo.adapruner.search.data.reconstruction_windows == 0 < base.adapruner.search.data.reconstruction_windows
    llm = _parse(["smollm2_default.yaml", "overlays/llm_pruner_baseline.yaml"])
    assert (llm.adapruner.pruning.keep_first, llm.adapruner.pruning.keep_last, llm.adapruner.search.trials) == (4, 2, 0)


@pytest.mark.parametrize("stage_overlay, stage", [([], 2), (["overlays/zero3.yaml"], 3)])
def test_deepspeed_recipes_build_their_strategy(stage_overlay, stage):
    from lightning.pytorch.strategies import DeepSpeedStrategy

    config = _parse(["gpu_deepspeed_8x.yaml", "models/llama31_8b.yaml", *stage_overlay])
    strategy = config.trainer.strategy
    assert strategy.class_path.endswith("DeepSpeedStrategy")
    built = DeepSpeedStrategy(**dict(strategy.init_args))
    assert built.config["zero_optimization"]["stage"] == stage


def test_cli_dispatch_table_matches_modules():
    import importlib

    for name, (module, _) in cli.COMMANDS.items():
        assert callable(importlib.import_module(module).main), name
    assert cli.main(["--help"]) == 0
    assert cli.main(["no-such-command"]) == 2


def test_a_gpu_recipe_without_training_data_is_refused_before_any_model_loads(capsys):
    args = ["fit", "--config", str(RECIPES / "gpu_deepspeed_8x.yaml"), "--config", str(RECIPES / "models/llama31_8b.yaml")]
    assert cli.main(args) == 2  # the model is a hub id this machine cannot reach: nothing was loaded
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("adapruner fit: error: data.texts=[] is invalid") and "training corpus" in err[-1]
    config = _parse(["gpu_deepspeed_8x.yaml", "models/llama31_8b.yaml"])
    assert config.data.texts == [] and config.data.instructions == []
    assert config.model.dtype == "bfloat16" and config.model.gradient_checkpointing  # 8B in bf16 on GPUs


def test_a_bad_callback_option_is_refused_before_the_model_loads(monkeypatch, capsys):
    from adapruner_lightning.data import models

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad option was refused")

    monkeypatch.setattr(models, "load_model", no_loading)
    assert cli.main(["fit", "--config", str(RECIPES / "smollm2_default.yaml"), "--adapruner.target_ratio", "1.5"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("adapruner fit: error: target_ratio=1.5")


@pytest.mark.parametrize("where", ["yaml", "flag"])
def test_the_flat_evaluation_names_are_refused_with_their_new_spelling(tmp_path, capsys, monkeypatch, where):
    """0.2's ``adapruner: eval_texts:`` (YAML or flag) is one line naming ``eval.texts``, before any model loads."""
    from adapruner_lightning.data import models

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the renamed option was refused")

    monkeypatch.setattr(models, "load_model", no_loading)
    config = tmp_path / "old.yaml"
    config.write_text("adapruner:\n  target_ratio: 0.2\n" + ("  eval_texts: ['austen:evaluation']\n" if where == "yaml" else ""))
    flags = ["--adapruner.eval_items", "5"] if where == "flag" else []
    assert cli.main(["fit", "--config", str(config), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    old, new = ("eval_texts", "texts") if where == "yaml" else ("eval_items", "items")
    assert len(err) == 1 and err[0].startswith(f"adapruner fit: error: AdaPrunerCallback option='{old}'"), err
    assert f"eval.{new}" in err[0] and f"adapruner: eval: {{{new}: ...}}" in err[0]
