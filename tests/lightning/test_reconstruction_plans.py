"""AdaPrunerCallback with the least-squares reconstruction: the searched plan's re-fitted weights reach the pruned
model, a plan file is re-fitted from the run's own calibration pool (the same weights), and a plan file whose pool
the run does not have is refused with a clear error (real Lightning fits, tiny model, CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer

from adapruner_lightning import AdaPrunerCallback, CausalLMModule, TextDataModule
from adapruner_lightning.core.config import PruningConfig
from adapruner_lightning.core.plan import PruningPlan
from adapruner_lightning.errors import ConfigError
from adapruner_lightning.lightning.recovery import RecoveryConfig
from adapruner_lightning.outputs.export import load_pruned
from adapruner_lightning.search.config import SearchConfig


class _Pruned(Callback):
    """Keeps the weights the model has right after pruning (before any training step)."""

    def on_fit_start(self, trainer, pl_module) -> None:
        self.state = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}


def _fit(tmp_path: Path, name: str, tiny_lm_dir: Path, text_dir: Path, **callback) -> tuple[AdaPrunerCallback, _Pruned]:
    module = CausalLMModule(model=str(tiny_lm_dir), lr=1e-3)
    cb = AdaPrunerCallback(output_dir=str(tmp_path / name), progress=False, search=SearchConfig.of(trials=0),
                           recovery=RecoveryConfig(mode="full"), **callback)
    seen = _Pruned()
    trainer = Trainer(max_steps=1, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(tmp_path),
                      limit_val_batches=0, num_sanity_val_steps=0, callbacks=[cb, seen])
    data = TextDataModule(model=str(tiny_lm_dir), texts=[str(text_dir)], seq_len=32, batch_size=2, val_windows=2)
    trainer.fit(module, datamodule=data)
    return cb, seen


def test_a_least_squares_plan_file_is_refitted_from_the_runs_own_pool(tmp_path, tiny_lm_dir, text_dir):
    pruning = PruningConfig(metric="wanda_sp", reconstruction="lstsq", sample_len=32, num_samples=4)
    first, pruned = _fit(tmp_path, "a", tiny_lm_dir, text_dir, target_ratio=0.25, pruning=pruning)
    fit = first.plan.provenance["reconstruction_fit"]
    assert first.plan.refits_weights and fit["pool"]
    windows = fit["reconstruction_windows"]["shape"][0]  # the first fine-tune windows, up to the default 96
    assert 0 < windows <= SearchConfig().data.reconstruction_windows
    pool_tokens = SearchConfig().data.pool_size * 32  # the pool: pool_size x sample_len
    assert fit["tokens"] == pool_tokens + windows * fit["reconstruction_windows"]["shape"][1]
    export = tmp_path / "a" / "adapruner" / "pruned_model"
    reloaded, _, plan = load_pruned(export)  # the export carries the re-fitted (and trained) weights
    assert plan.refits_weights
    plan_file = export / "pruning_plan.json"
    replay, replayed = _fit(tmp_path, "b", tiny_lm_dir, text_dir, target_ratio=None, plan=str(plan_file),
                            pruning=pruning)
    assert replay.plan.to_dict() == first.plan.to_dict()
    assert replayed.state.keys() == pruned.state.keys()
    assert all(torch.allclose(replayed.state[k], pruned.state[k], atol=1e-6) for k in pruned.state)
    dense = CausalLMModule(model=str(tiny_lm_dir)).model.state_dict()
    down = "model.layers.1.mlp.down_proj.weight"
    kept = [j for j in range(dense[down].shape[1]) if j not in plan.layers[1].channels_removed]
    assert not torch.allclose(pruned.state[down], dense[down][:, kept])  # the kept columns were re-fitted


def test_a_least_squares_plan_file_from_another_pool_is_refused(tmp_path, tiny_lm_dir, text_dir):
    pruning = PruningConfig(metric="wanda_sp", reconstruction="lstsq", sample_len=32, num_samples=4)
    first, _ = _fit(tmp_path, "a", tiny_lm_dir, text_dir, target_ratio=0.25, pruning=pruning)
    plan_file = first.plan.save(tmp_path / "plan.json")
    other = PruningConfig(metric="wanda_sp", reconstruction="lstsq", sample_len=32, num_samples=4, seed=7)
    with pytest.raises(ConfigError, match="another calibration pool.*load_pruned"):
        _fit(tmp_path, "b", tiny_lm_dir, text_dir, target_ratio=None, plan=str(plan_file), pruning=other)
    data = first.plan.to_dict()
    data["provenance"]["reconstruction_fit"]["reconstruction_windows"]["tokens"] = "0" * 16  # other windows
    other_windows = PruningPlan.from_dict(data).save(tmp_path / "other_windows.json")
    with pytest.raises(ConfigError, match="other reconstruction windows.*reconstruction_windows"):
        _fit(tmp_path, "c", tiny_lm_dir, text_dir, target_ratio=None, plan=str(other_windows), pruning=pruning)
    del data["provenance"]["reconstruction_fit"]["reconstruction_windows"]  # a hand-edited plan: the pool alone
    no_windows = PruningPlan.from_dict(data).save(tmp_path / "no_windows.json")
    with pytest.raises(ConfigError, match="other reconstruction windows"):
        _fit(tmp_path, "d", tiny_lm_dir, text_dir, target_ratio=None, plan=str(no_windows), pruning=pruning)
    bias = PruningPlan.from_dict({**first.plan.to_dict(), "provenance": {"reconstruction": "bias"}})
    assert not bias.refits_weights  # a bias plan replays from the file alone


def test_a_checkpoint_of_a_least_squares_plan_resumes_with_its_own_weights(tmp_path, tiny_lm_dir, text_dir):
    """Resuming needs no calibration data: the plan's shapes are replayed and the checkpoint's weights load."""
    pruning = PruningConfig(metric="wanda_sp", reconstruction="lstsq", sample_len=32, num_samples=4)
    data = dict(model=str(tiny_lm_dir), texts=[str(text_dir)], seq_len=32, batch_size=2, val_windows=2)
    module = CausalLMModule(model=str(tiny_lm_dir))
    cb = AdaPrunerCallback(target_ratio=0.25, pruning=pruning, search=SearchConfig.of(trials=0), progress=False,
                           recovery=RecoveryConfig(mode="full"), output_dir=str(tmp_path / "a"), export=False)
    trainer = Trainer(max_steps=2, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=str(tmp_path), limit_val_batches=0,
                      num_sanity_val_steps=0, callbacks=[cb])
    trainer.fit(module, datamodule=TextDataModule(**data))
    ckpt = trainer.checkpoint_callback.last_model_path or trainer.checkpoint_callback.best_model_path
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    fresh = CausalLMModule(model=str(tiny_lm_dir))
    cb2 = AdaPrunerCallback(target_ratio=0.25, pruning=pruning, search=SearchConfig.of(trials=0), progress=False,
                            recovery=RecoveryConfig(mode="full"), output_dir=str(tmp_path / "b"), export=False)
    seen = _Pruned()
    trainer2 = Trainer(max_steps=3, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                       enable_model_summary=False, default_root_dir=str(tmp_path), limit_val_batches=0,
                       num_sanity_val_steps=0, callbacks=[cb2, seen], enable_checkpointing=False)
    trainer2.fit(fresh, datamodule=TextDataModule(**data), ckpt_path=ckpt)
    assert trainer2.global_step == 3 and cb2.plan.refits_weights
    assert all(torch.equal(seen.state[k], saved[f"model.{k}"]) for k in seen.state)  # the checkpoint's weights
