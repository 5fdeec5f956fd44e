"""Every recipe (and each documented combination) parses against the CLI's signatures, so none rots."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapruner_lightning.cli import main as cli
from adapruner_lightning.lightning.datamodule import TextDataModule
from adapruner_lightning.cli.fit import AdaPrunerCLI
from adapruner_lightning.lightning.module import CausalLMModule

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
COMBINATIONS = [
    ["smollm2_default.yaml"],
    ["smollm2_default.yaml", "overlays/full_finetune.yaml"],
    ["smollm2_default.yaml", "overlays/llm_pruner_baseline.yaml"],
    *[["gpu_deepspeed_8x.yaml", f"models/{m.name}"] for m in sorted((RECIPES / "models").glob("*.yaml"))],
    ["gpu_deepspeed_8x.yaml", "models/llama31_8b.yaml", "overlays/zero3.yaml"],
]


class _ParseOnly(AdaPrunerCLI):
    def instantiate_classes(self) -> None:  # parse and type-check, build nothing (no model download)
        pass


def _parse(files: list[str]):
    args = [a for f in files for a in ("--config", str(RECIPES / f))]
    return _ParseOnly(CausalLMModule, TextDataModule, args=args, run=False).config


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
    base = _parse(["smollm2_default.yaml"])
    full = _parse(["smollm2_default.yaml", "overlays/full_finetune.yaml"])
    assert full.adapruner.recovery.mode == "full" and base.adapruner.recovery.mode == "lora"
    assert full.adapruner.eval_texts == base.adapruner.eval_texts  # the rest of the section survives
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
