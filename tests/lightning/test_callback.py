"""AdaPrunerCallback in real Lightning fits on tiny models (CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from helpers_core import SMALL_SEARCH
from adapruner_lightning import AdaPrunerCallback, CausalLMModule, TextDataModule
from adapruner_lightning.core.config import PruningConfig
from adapruner_lightning.search.config import SearchConfig
from adapruner_lightning.errors import ConfigError
from adapruner_lightning.outputs.export import load_pruned
from adapruner_lightning.core.groups import total_params
from adapruner_lightning.lightning.recovery import RecoveryConfig

def _trainer(tmp_path: Path, callback: AdaPrunerCallback, **kw) -> Trainer:
    args = dict(max_steps=2, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                enable_model_summary=False, default_root_dir=str(tmp_path), limit_val_batches=1,
                num_sanity_val_steps=0, callbacks=[callback])
    args.update(kw)
    return Trainer(**args)


def _data(tiny_lm_dir, text_dir, **kw) -> TextDataModule:
    return TextDataModule(model=str(tiny_lm_dir), texts=[str(text_dir)], seq_len=32, batch_size=2, val_windows=2, **kw)


def test_fit_searches_prunes_and_recovers(tmp_path, tiny_lm_dir, text_dir):
    module = CausalLMModule(model=str(tiny_lm_dir), lr=1e-3)
    before = total_params(module.model)
    cb = AdaPrunerCallback(target_ratio=0.2, search=SearchConfig.of(**SMALL_SEARCH), output_dir=str(tmp_path / "out"),
                           pruning=PruningConfig(sample_len=32), progress=False)
    trainer = _trainer(tmp_path, cb, enable_checkpointing=False)
    trainer.fit(module, datamodule=_data(tiny_lm_dir, text_dir))
    after = total_params(module.model)
    assert abs((1 - after / before) - 0.2) < 0.005
    assert cb.plan is not None and sum(t["repeat_of"] is None for t in cb.trace) == 3  # + repeats, registered free
    assert cb.plan.provenance["sample_ids"] and "metric" in cb.plan.provenance
    out = tmp_path / "out" / "adapruner"
    report = json.loads((out / "report.json").read_text())
    assert report["params"]["after"] == after
    assert (out / "search_trace.png").stat().st_size > 1000
    assert len((out / "search_trace.jsonl").read_text().splitlines()) == 1 + len(cb.trace)  # header + trials
    reloaded, _, plan = load_pruned(out / "pruned_model")
    x = torch.randint(0, 100, (1, 16))
    with torch.no_grad():
        assert torch.allclose(reloaded(x).logits, module.model.eval()(x).logits, atol=1e-5)
    assert plan.to_dict() == cb.plan.to_dict()


def test_lora_trains_only_adapters_and_merges(tmp_path, tiny_lm_dir, text_dir):
    module = CausalLMModule(model=str(tiny_lm_dir), lr=1e-2)
    cb = AdaPrunerCallback(target_ratio=0.2, search=SearchConfig.of(trials=0), pruning=PruningConfig(metric="magnitude_l2"),
                           output_dir=str(tmp_path / "o"), progress=False)
    trainer = _trainer(tmp_path, cb, enable_checkpointing=False)
    trainer.fit(module, datamodule=_data(tiny_lm_dir, text_dir))
    assert not hasattr(module.model, "peft_config")  # merged at the end
    opt_params = [p for g in trainer.optimizers[0].param_groups for p in g["params"]]
    assert 0 < sum(p.numel() for p in opt_params) < total_params(module.model) / 5


def test_resume_replays_plan_without_search(tmp_path, tiny_lm_dir, text_dir):
    search = SearchConfig.of(**SMALL_SEARCH)
    module = CausalLMModule(model=str(tiny_lm_dir))
    cb = AdaPrunerCallback(target_ratio=0.25, search=search, pruning=PruningConfig(sample_len=32),
                           recovery=RecoveryConfig(mode="full"), output_dir=str(tmp_path / "a"), progress=False)
    trainer = _trainer(tmp_path, cb, max_steps=2)
    trainer.fit(module, datamodule=_data(tiny_lm_dir, text_dir))
    ckpt = trainer.checkpoint_callback.best_model_path or trainer.checkpoint_callback.last_model_path
    assert Path(ckpt).is_file()
    assert (Path(ckpt).parent / "pruning_plan.json").is_file()
    shapes = {k: v.shape for k, v in module.model.state_dict().items()}

    fresh = CausalLMModule(model=str(tiny_lm_dir))
    cb2 = AdaPrunerCallback(target_ratio=0.25, search=SearchConfig.of(**{**SMALL_SEARCH, "trials": 50}),
                            pruning=PruningConfig(sample_len=32), recovery=RecoveryConfig(mode="full"),
                            output_dir=str(tmp_path / "b"), progress=False)
    trainer2 = _trainer(tmp_path, cb2, max_steps=4)
    trainer2.fit(fresh, datamodule=_data(tiny_lm_dir, text_dir), ckpt_path=ckpt)
    assert trainer2.global_step == 4  # training continued
    assert {k: v.shape for k, v in fresh.model.state_dict().items()} == shapes
    assert not (tmp_path / "b" / "adapruner" / "search_trace.jsonl").exists()  # no new search
    assert cb2.plan.to_dict() == cb.plan.to_dict()


def test_module_without_hf_model_is_a_clear_error(tmp_path):
    class Plain(CausalLMModule.__mro__[1]):  # LightningModule
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(2, 2)

    cb = AdaPrunerCallback(target_ratio=0.2, progress=False)
    trainer = _trainer(tmp_path, cb)
    with pytest.raises(ConfigError, match="PreTrainedModel"):
        cb.setup(trainer, Plain(), "fit")


@pytest.mark.parametrize("kwargs, match", [
    (dict(target_ratio=1.5), "target_ratio"),
    (dict(target_ratio=0.0), "target_ratio"),
    (dict(target_ratio=0.2, plan="missing_plan.json"), "target_ratio"),
    (dict(plan="missing_plan.json"), "plan"),
    (dict(pruning=PruningConfig(), plan=None, recovery=None, target_ratio=-1), "target_ratio"),
])
def test_misconfiguration(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        AdaPrunerCallback(**kwargs)


def test_the_pruning_configs_target_ratio_is_the_one_pruned(tmp_path, tiny_lm_dir, text_dir):
    """``AdaPrunerCallback(pruning=PruningConfig(target_ratio=0.3))`` removes 30%: the callback's own target_ratio
    defaults to None (the pruning config's), it does not override it with a default of its own."""
    module = CausalLMModule(model=str(tiny_lm_dir), lr=1e-3)
    before = total_params(module.model)
    cb = AdaPrunerCallback(pruning=PruningConfig(target_ratio=0.3, metric="magnitude_l2"), search=SearchConfig(trials=0),
                           recovery=RecoveryConfig(mode="full"), output_dir=str(tmp_path / "o"), export=False,
                           progress=False)
    _trainer(tmp_path, cb, enable_checkpointing=False, max_steps=1).fit(module, datamodule=_data(tiny_lm_dir, text_dir))
    assert abs((1 - total_params(module.model) / before) - 0.3) < 0.01
    assert cb.plan.target_ratio == 0.3


def test_target_ratio_and_the_pruning_config_precedence():
    """The shortcut wins over the pruning config's default ratio; two different ratios set explicitly are refused."""
    assert AdaPrunerCallback().pruning.target_ratio == PruningConfig().target_ratio
    shortcut = AdaPrunerCallback(target_ratio=0.35, pruning=PruningConfig(metric="flap", sample_len=32))
    assert (shortcut.pruning.target_ratio, shortcut.pruning.metric, shortcut.pruning.sample_len) == (0.35, "flap", 32)
    assert AdaPrunerCallback(target_ratio=0.3, pruning=PruningConfig(target_ratio=0.3)).pruning.target_ratio == 0.3
    with pytest.raises(ConfigError, match=r"target_ratio=0.3 is invalid: expected None or pruning.target_ratio=0.4"):
        AdaPrunerCallback(target_ratio=0.3, pruning=PruningConfig(target_ratio=0.4))


def test_lora_targets_that_do_not_exist(tmp_path, tiny_lm_dir):
    module = CausalLMModule(model=str(tiny_lm_dir))
    cb = AdaPrunerCallback(target_ratio=0.2, recovery=RecoveryConfig(target_modules=["query_key_value"]), progress=False)
    with pytest.raises(ConfigError, match="query_key_value"):
        cb.setup(_trainer(tmp_path, cb), module, "fit")


def test_startup_line_counts_the_pruned_model_without_adapters(tmp_path, tiny_lm_dir, text_dir, caplog):
    module = CausalLMModule(model=str(tiny_lm_dir), lr=1e-2)
    cb = AdaPrunerCallback(target_ratio=0.2, search=SearchConfig.of(trials=0), pruning=PruningConfig(metric="magnitude_l2"),
                           output_dir=str(tmp_path / "o"), export=False, progress=False)
    trainer = _trainer(tmp_path, cb, enable_checkpointing=False, max_steps=1)
    with caplog.at_level("INFO"):
        trainer.fit(module, datamodule=_data(tiny_lm_dir, text_dir))
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("adapruner: ") and "->" in r.getMessage())
    assert f"-> {cb.plan.params_after:,} parameters" in line and cb.report["params"]["after"] == cb.plan.params_after


def test_evaluation_and_load_from_checkpoint_rebuild_the_pruned_lora_shape(tmp_path, tiny_lm_dir, text_dir):
    """validate/test(ckpt_path=...) and CausalLMModule.load_from_checkpoint replay the stored plan and the LoRA
    wrapping before the weights load; no search runs."""
    module = CausalLMModule(model=str(tiny_lm_dir), lr=1e-2)
    cb = AdaPrunerCallback(target_ratio=0.25, search=SearchConfig.of(**SMALL_SEARCH), pruning=PruningConfig(sample_len=32),
                           recovery=RecoveryConfig(mode="lora"), output_dir=str(tmp_path / "a"), export=False,
                           progress=False)
    trainer = _trainer(tmp_path, cb, max_steps=2)
    trainer.fit(module, datamodule=_data(tiny_lm_dir, text_dir))
    ckpt = trainer.checkpoint_callback.last_model_path or trainer.checkpoint_callback.best_model_path
    x = torch.randint(0, 100, (1, 16))
    with torch.no_grad():
        expected = module.model.eval()(x).logits  # adapters merged at the end of fit

    restored = CausalLMModule.load_from_checkpoint(ckpt)
    assert hasattr(restored.model, "peft_config")
    with torch.no_grad():
        assert torch.allclose(restored.model.eval()(input_ids=x).logits, expected, atol=1e-4)

    cb2 = AdaPrunerCallback(target_ratio=0.25, search=SearchConfig.of(**{**SMALL_SEARCH, "trials": 50}),
                            pruning=PruningConfig(sample_len=32), output_dir=str(tmp_path / "b"), progress=False)
    fresh = CausalLMModule(model=str(tiny_lm_dir))
    scores = _trainer(tmp_path, cb2).validate(fresh, datamodule=_data(tiny_lm_dir, text_dir), ckpt_path=ckpt)
    assert cb2.plan.to_dict() == cb.plan.to_dict() and not (tmp_path / "b" / "adapruner" / "search_trace.jsonl").exists()
    reference = _trainer(tmp_path, AdaPrunerCallback(target_ratio=0.2, progress=False)).validate(
        restored, datamodule=_data(tiny_lm_dir, text_dir))
    assert scores[0]["val_ppl"] == pytest.approx(reference[0]["val_ppl"], rel=1e-5)

    windows = _data(tiny_lm_dir, text_dir).val_dataloader()  # cb2 is done: the module's own hook restores the shape
    tested = _trainer(tmp_path, cb2).test(CausalLMModule(model=str(tiny_lm_dir)), dataloaders=windows, ckpt_path=ckpt)
    assert tested[0]["test_ppl"] > 1


def test_fit_ends_with_a_gguf_file_and_a_model_card(tmp_path, tiny_lm_dir, text_dir):
    from gguf import GGUFReader

    module = CausalLMModule(model=str(tiny_lm_dir), lr=1e-3)
    cb = AdaPrunerCallback(target_ratio=0.2, search=SearchConfig.of(**SMALL_SEARCH), output_dir=str(tmp_path / "out"),
                           pruning=PruningConfig(sample_len=32), gguf="f16", progress=False)
    _trainer(tmp_path, cb, enable_checkpointing=False).fit(module, datamodule=_data(tiny_lm_dir, text_dir))
    out = tmp_path / "out" / "adapruner"
    report = json.loads((out / "report.json").read_text())
    assert report["files"]["gguf"] == str(out / "pruned_model.gguf")
    fields = {k: f.contents() for k, f in GGUFReader(str(out / "pruned_model.gguf")).fields.items()}
    arch = fields["general.architecture"]
    heads = fields[f"{arch}.attention.head_count"]
    assert (heads if isinstance(heads, list) else [heads] * len(cb.plan.layers)) == [lp.num_heads for lp in cb.plan.layers]
    card = (out / "pruned_model" / "README.md").read_text()
    assert f"{cb.plan.params_after:,} after" in card and "## Per-layer widths" in card


def test_a_gguf_that_cannot_be_written_is_refused_before_the_search(tmp_path, tiny_lm_dir):
    with pytest.raises(ConfigError, match="GGUF outtype"):
        AdaPrunerCallback(target_ratio=0.2, gguf="q4")
    module = CausalLMModule(model=str(tiny_lm_dir))
    module.tokenizer = None
    cb = AdaPrunerCallback(target_ratio=0.2, gguf="f16", progress=False)
    with pytest.raises(ConfigError, match="tokenizer"):
        cb.setup(_trainer(tmp_path, cb), module, "fit")
    assert cb.plan is None and not cb.trace
