"""The callback's output directory is checked in ``setup``, before the search: the end-of-fit export never replaces
a user's directory or the model being fine-tuned; a rerun into its own output directory replaces its own export."""

from __future__ import annotations

import shutil

import pytest
from lightning.pytorch import Trainer

import adapruner_lightning.lightning.planning as planning
from adapruner_lightning import AdaPrunerCallback, CausalLMModule, TextDataModule
from adapruner_lightning.errors import ConfigError
from adapruner_lightning.search.config import SearchConfig
from helpers_safety import tree_digest


def _fit(model_dir, text_dir, output_dir, root, **callback):
    trainer = Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root),
                      limit_val_batches=0, num_sanity_val_steps=0,
                      callbacks=[AdaPrunerCallback(target_ratio=0.2, output_dir=str(output_dir), progress=False,
                                                   search=SearchConfig(trials=0), **callback)])
    data = TextDataModule(model=str(model_dir), texts=[str(text_dir)], seq_len=16, batch_size=2, val_windows=2)
    trainer.fit(CausalLMModule(model=str(model_dir)), datamodule=data)
    return trainer


def test_a_users_directory_where_the_export_goes_is_refused_before_any_search(tmp_path, tiny_lm_dir, text_dir,
                                                                             monkeypatch):
    users = tmp_path / "runs" / "adapruner" / "pruned_model"
    users.mkdir(parents=True)
    (users / "weights_i_trained.bin").write_bytes(b"\x01" * 64)
    before = tree_digest(tmp_path / "runs")
    monkeypatch.setattr(planning, "search_plan", lambda *a, **k: pytest.fail("searched before the refusal"))
    with pytest.raises(ConfigError, match=r"output_dir=.*pruned_model.*not an export"):
        _fit(tiny_lm_dir, text_dir, tmp_path / "runs", tmp_path)
    assert tree_digest(tmp_path / "runs") == before


def test_fine_tuning_an_export_into_the_run_that_wrote_it_is_refused(tmp_path, tiny_lm_dir, text_dir, monkeypatch):
    """The second run would replace the model it fine-tunes (``runs/adapruner/pruned_model``) with its own export."""
    first = _fit(tiny_lm_dir, text_dir, tmp_path / "runs", tmp_path)
    export = tmp_path / "runs" / "adapruner" / "pruned_model"
    assert (export / "pruning_plan.json").is_file() and first.global_step == 1
    copy = tmp_path / "dense_copy"  # a model directory of HF format, for the datamodule's tokenizer
    shutil.copytree(tiny_lm_dir, copy)
    before = tree_digest(export)
    monkeypatch.setattr(planning, "search_plan", lambda *a, **k: pytest.fail("searched before the refusal"))

    class FromExport(CausalLMModule):
        def __init__(self):
            super().__init__(model=str(copy))
            from adapruner_lightning.outputs.export import load_pruned

            self.model = load_pruned(export)[0].train()

    trainer = Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.callbacks.append(AdaPrunerCallback(target_ratio=0.1, output_dir=str(tmp_path / "runs"), progress=False))
    data = TextDataModule(model=str(copy), texts=[str(text_dir)], seq_len=16, batch_size=2, val_windows=2)
    with pytest.raises(ConfigError, match="input model"):
        trainer.fit(FromExport(), datamodule=data)
    assert tree_digest(export) == before


def test_a_second_fit_into_the_same_output_dir_replaces_its_own_export(tmp_path, tiny_lm_dir, text_dir):
    export = tmp_path / "runs" / "adapruner" / "pruned_model"
    _fit(tiny_lm_dir, text_dir, tmp_path / "runs", tmp_path)
    first = export.stat().st_ino, (export / "pruning_plan.json").read_text()
    _fit(tiny_lm_dir, text_dir, tmp_path / "runs", tmp_path)
    assert export.stat().st_ino != first[0]  # a new directory took the old one's place (atomic swap)
    assert (export / "pruning_plan.json").read_text() == first[1]  # the same plan (same seed), written again
    assert not list((tmp_path / "runs").glob(".*")) and not list((tmp_path / "runs" / "adapruner").glob(".*"))


def test_a_users_pruning_plan_json_beside_the_checkpoints_is_never_replaced(tmp_path, tiny_lm_dir, text_dir):
    """The plan written beside the checkpoints (``on_save_checkpoint``) replaces only a file this run wrote: a
    checkpoint directory that already holds someone's ``pruning_plan.json`` keeps it byte for byte (with a warning)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "pruning_plan.json").write_text('{"a plan": "of another run"}\n')
    before = (ckpt / "pruning_plan.json").read_bytes()
    pruner = AdaPrunerCallback(target_ratio=0.2, output_dir=str(tmp_path / "runs"), progress=False,
                               search=SearchConfig(trials=0), export=False)
    trainer = Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=str(tmp_path), limit_val_batches=0,
                      num_sanity_val_steps=0,
                      callbacks=[pruner, ModelCheckpoint(dirpath=ckpt, every_n_train_steps=1, save_top_k=-1)])
    data = TextDataModule(model=str(tiny_lm_dir), texts=[str(text_dir)], seq_len=16, batch_size=2, val_windows=2)
    with pytest.warns(UserWarning, match="not written by this run and holds another plan"):
        trainer.fit(CausalLMModule(model=str(tiny_lm_dir)), datamodule=data)
    assert (ckpt / "pruning_plan.json").read_bytes() == before
    assert len(list(ckpt.glob("*.ckpt"))) == 2  # the checkpoints were written (and carry the plan in their state)
    fresh = tmp_path / "ckpt_fresh"  # a directory without one gets this run's plan, rewritten at each checkpoint
    trainer = Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=str(tmp_path), limit_val_batches=0,
                      num_sanity_val_steps=0,
                      callbacks=[AdaPrunerCallback(target_ratio=0.2, output_dir=str(tmp_path / "runs2"), progress=False,
                                                   search=SearchConfig(trials=0), export=False),
                                 ModelCheckpoint(dirpath=fresh, every_n_train_steps=1, save_top_k=-1)])
    trainer.fit(CausalLMModule(model=str(tiny_lm_dir)), datamodule=data)
    assert '"layers"' in (fresh / "pruning_plan.json").read_text()
