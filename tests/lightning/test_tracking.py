"""Zero-shot accuracy tracked during fit: ``val/acc/<task>`` rows in the trainer's logger at each validation."""

from __future__ import annotations

import csv

import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger

from adapruner_lightning import AdaPrunerCallback, CausalLMModule, TextDataModule
from adapruner_lightning.core.config import PruningConfig
from adapruner_lightning.data.text import texts_for
from adapruner_lightning.errors import ConfigError
from adapruner_lightning.evaluation.config import EvalConfig
from adapruner_lightning.lightning.recovery import RecoveryConfig
from adapruner_lightning.lightning.tracking import ValidationTasks
from adapruner_lightning.search.config import SearchConfig


def _fit(tmp_path, tiny_lm_dir, text_dir, **eval_kw):
    evaluation = EvalConfig(texts=[str(text_dir / "alpha.txt")], max_tokens=256, items=4, **eval_kw)
    pruner = AdaPrunerCallback(target_ratio=0.2, search=SearchConfig.of(trials=0), recovery=RecoveryConfig(mode="full"),
                               pruning=PruningConfig(sample_len=32, metric="magnitude_l2"), export=False,
                               output_dir=str(tmp_path / "out"), eval=evaluation, progress=False)
    logger = CSVLogger(str(tmp_path), name="logs")
    trainer = Trainer(max_steps=2, val_check_interval=1, limit_val_batches=1, num_sanity_val_steps=0,
                      accelerator="cpu", devices=1, logger=logger, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, callbacks=[pruner])
    module = CausalLMModule(model=str(tiny_lm_dir), lr=1e-3)
    data = TextDataModule(model=str(tiny_lm_dir), texts=[str(text_dir)], seq_len=32, batch_size=2, val_windows=2)
    trainer.fit(module, datamodule=data)
    with open(logger.log_dir + "/metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    return module, rows


def test_a_fit_logs_zero_shot_accuracy_at_each_validation(tmp_path, tiny_lm_dir, text_dir):
    module, rows = _fit(tmp_path, tiny_lm_dir, text_dir, tasks=["austen_cloze"], val_items=6)
    acc = [(int(r["step"]), float(r["val/acc/austen_cloze"])) for r in rows if r.get("val/acc/austen_cloze")]
    norm = [float(r["val/acc_norm/austen_cloze"]) for r in rows if r.get("val/acc_norm/austen_cloze")]
    assert len(acc) == 2 and len(norm) == 2  # one row per validation (val_check_interval=1, two steps)
    assert all(0.0 <= a <= 1.0 and abs(a * 6 - round(a * 6)) < 1e-6 for _, a in acc)  # a share of the 6 items
    # the last validation scored the final weights: the same items scored directly give the same accuracy
    direct = ValidationTasks(["austen_cloze"], texts_for([str(text_dir / "alpha.txt")]), n_items=6)
    expected = direct.score(module.model, module.tokenizer)
    assert acc[-1][1] == pytest.approx(expected["val/acc/austen_cloze"])
    assert norm[-1] == pytest.approx(expected["val/acc_norm/austen_cloze"])


def test_tracking_is_off_when_asked(tmp_path, tiny_lm_dir, text_dir):
    _, rows = _fit(tmp_path, tiny_lm_dir, text_dir, tasks=["austen_cloze"], val_tasks=[])
    assert rows and not any(k.startswith("val/acc") for r in rows for k, v in r.items() if v)


def test_an_unknown_validation_task_is_refused_at_construction():
    with pytest.raises(ConfigError, match="no_such_task"):
        AdaPrunerCallback(eval=EvalConfig(texts=["austen:evaluation"], val_tasks=["no_such_task"]))


def test_validation_tasks_are_multiple_choice_standard_ones_need_no_texts():
    """By default the multiple-choice tasks of eval.tasks are tracked (LAMBADA is left to the report); naming a
    log-likelihood task for tracking is refused; standard tasks need no eval.texts."""
    evaluation = EvalConfig(texts=["austen:evaluation"], tasks=["austen_cloze", "lambada_openai", "piqa"])
    assert AdaPrunerCallback(eval=evaluation).eval.tracked_tasks == ["austen_cloze", "piqa"]
    with pytest.raises(ConfigError, match="lambada_openai"):
        EvalConfig(texts=["austen:evaluation"], val_tasks=["lambada_openai"])
    assert EvalConfig(val_tasks=["piqa", "arc_easy"]).tracked_tasks == ["piqa", "arc_easy"]
    with pytest.raises(ConfigError, match="eval.texts"):
        EvalConfig(val_tasks=["austen_cloze"])
    for field in ("max_tokens", "items", "val_items"):
        with pytest.raises(ConfigError, match=f"eval.{field}=0"):
            EvalConfig(**{field: 0})


@pytest.mark.parametrize("old, new", [("eval_texts", "texts"), ("eval_tasks", "tasks"), ("eval_max_tokens", "max_tokens"),
                                      ("eval_items", "items"), ("val_tasks", "val_tasks"), ("val_items", "val_items")])
def test_the_flat_evaluation_names_are_refused_with_their_new_spelling(old, new):
    """0.2's flat ``eval_*`` / ``val_*`` options are one ``eval`` section now; the old names fail loudly, naming it."""
    with pytest.raises(ConfigError, match=rf"{old}.*eval\.{new}.*eval=EvalConfig\({new}="):
        AdaPrunerCallback(**{old: None})
