"""A text / instruction LightningDataModule built on ``datasets``, with pruning-aware data splits.

Training windows come from plain text (files, directories, ``austen:`` selectors) or alpaca-style
instruction JSON/JSONL. The module also serves the pruning callback: :meth:`TextDataModule.pruning_data`
returns a calibration pool and an objective set as seeded, disjoint slices of the same windows; training
and validation then use only the remaining windows, so the objective never reaches fine-tuning.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from adapruner_lightning.data.calibration import DataSplits, make_splits, spread_order
from adapruner_lightning.data.text import uses_bos
from adapruner_lightning.errors import ConfigError

ALPACA_TEMPLATE = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                   "the request.\n\n### Instruction:\n{instruction}\n\n{input_block}### Response:\n{output}")


def _collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.stack([torch.as_tensor(r["input_ids"]) for r in rows])}


def check_training_data(texts: Sequence[str], instructions: Sequence[str]) -> None:
    """Raise unless at least one text source or instruction file is named (recipes leave them for the user)."""
    if not list(texts) and not list(instructions):
        raise ConfigError("data.texts", list(texts), "at least one text source (files, directories, austen:...) or "
                          "data.instructions file", hint="name your training corpus, e.g. --data.texts '[/data/corpus/]'")


class TextDataModule(LightningDataModule):
    """Fixed-length token windows of text for causal-LM fine-tuning, and the pruning callback's data.

    Args:
        model: model spec whose tokenizer to use (None: the embedded SmolLM2).
        texts: text sources (``austen:calibration`` by default: the four calibration novels).
        instructions: optional alpaca-format JSON/JSONL files (instruction, input, output) added to training.
        seq_len: tokens per training window.
        batch_size: training batch size.
        val_windows: the last windows of the order, held out of training for validation reporting (never used by the
            search or the least-squares repair).
        max_train_windows: cap on training windows (a short recovery fine-tune: the first windows of a seeded
            order spread over the texts in proportion, so every text contributes).
        seed: seed of the splits.
    """

    def __init__(self, model: str | None = None, texts: Sequence[str] = ("austen:calibration",),
                 instructions: Sequence[str] = (), seq_len: int = 256, batch_size: int = 4, val_windows: int = 16,
                 max_train_windows: int | None = None, seed: int = 0) -> None:
        super().__init__()
        if seq_len < 8:
            raise ConfigError("seq_len", seq_len, "at least 8 tokens")
        if batch_size < 1:
            raise ConfigError("batch_size", batch_size, "a positive integer")
        if val_windows < 0:
            raise ConfigError("val_windows", val_windows, "0 or more windows (0: no validation)")
        check_training_data(texts, instructions)
        self.model_spec, self.text_specs, self.instruction_files = model, list(texts), list(instructions)
        self.seq_len, self.batch_size, self.val_windows = seq_len, batch_size, val_windows
        self.max_train_windows, self.seed = max_train_windows, seed
        self._tokenizer = None
        self._splits: DataSplits | None = None
        self.train_set = self.val_set = None

    @property
    def tokenizer(self):
        """The tokenizer of ``model`` (loaded once)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            from adapruner_lightning.data.models import resolve_model_path

            self._tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(self.model_spec))
        return self._tokenizer

    def _texts(self) -> dict[str, str]:
        from adapruner_lightning.data.text import texts_for

        return texts_for(self.text_specs)

    def pruning_data(self, *, pool_size: int, pool_seq_len: int, objective_windows: int, objective_seq_len: int,
                     seed: int = 0) -> DataSplits:
        """Calibration pool and objective windows as seeded, disjoint slices of the texts; from then on
        training and validation use only the remaining windows, so the objective never reaches fine-tuning."""
        splits = make_splits(self.tokenizer, self._texts(), n_pool=pool_size, pool_seq_len=pool_seq_len,
                             n_objective=objective_windows, objective_seq_len=objective_seq_len, seed=seed)
        if splits.window_len < self.seq_len:
            raise ConfigError("seq_len", self.seq_len, f"at most the pruning window length {splits.window_len}",
                              hint="raise objective_seq_len or lower seq_len")
        if self.val_windows >= splits.finetune.shape[0]:
            raise ConfigError("val_windows", self.val_windows, f"fewer than the {splits.finetune.shape[0]} windows "
                              "left after the pruning data, so that some train", hint="lower val_windows or add text")
        splits.validation = self.val_windows
        self._splits = splits
        self.train_set = None  # rebuilt from the remaining windows
        return splits

    def _windows(self) -> torch.Tensor:
        """Every training and validation window, in a seeded order spread over the texts in proportion to their
        sizes (:func:`~adapruner_lightning.data.calibration.spread_order`), so that the validation windows and a
        capped fine-tune (``max_train_windows``) draw from every text, never from the first one alone."""
        if self._splits is not None:  # the fine-tune windows of the pruning splits, already in that order
            return self._splits.finetune[:, : self.seq_len]
        from adapruner_lightning.data.text import tokenize_windows

        per_text = {name: tokenize_windows(self.tokenizer, text, self.seq_len) for name, text in self._texts().items()}
        order = spread_order({name: int(w.shape[0]) for name, w in per_text.items()},
                             torch.Generator().manual_seed(self.seed))
        if not order:
            return torch.empty(0, self.seq_len, dtype=torch.long)
        return torch.stack([per_text[name][index] for name, index in order])

    def setup(self, stage: str | None = None) -> None:
        """Tokenise the texts into windows: the last ``val_windows`` of the spread order validate (the first ones
        may be the least-squares repair's reconstruction windows), the rest train."""
        if self.train_set is not None:
            return
        from datasets import Dataset

        windows = self._windows()
        cut = windows.shape[0] - min(self.val_windows, windows.shape[0])
        train, val = windows[:cut], windows[cut:]
        if self.max_train_windows is not None:
            train = train[: self.max_train_windows]
        if not len(train):
            raise ConfigError("texts", self.text_specs, "enough text for at least one training window",
                              hint="add text or lower seq_len / val_windows")
        rows = [{"input_ids": w.tolist()} for w in train] + self._instruction_rows()
        self.train_set = Dataset.from_list(rows).with_format("torch")
        self.val_set = Dataset.from_list([{"input_ids": w.tolist()} for w in val]).with_format("torch")

    def _instruction_rows(self) -> list[dict[str, Any]]:
        if not self.instruction_files:
            return []
        from datasets import load_dataset

        data = load_dataset("json", data_files=list(self.instruction_files), split="train")
        missing = {"instruction", "output"} - set(data.column_names)
        if missing:
            raise ConfigError("instructions", self.instruction_files, "alpaca-format records (instruction, input, output)",
                              hint=f"missing fields {sorted(missing)}")
        rows = []
        for rec in data:
            block = f"### Input:\n{rec['input']}\n\n" if rec.get("input") else ""
            text = ALPACA_TEMPLATE.format(instruction=rec["instruction"], input_block=block, output=rec["output"])
            bos = [self.tokenizer.bos_token_id] if uses_bos(self.tokenizer) else []
            ids = (bos + self.tokenizer(text, add_special_tokens=False)["input_ids"])[: self.seq_len]
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
            rows.append({"input_ids": ids + [pad] * (self.seq_len - len(ids))})
        return rows

    def train_dataloader(self) -> DataLoader:
        """Shuffled training windows."""
        self.setup("fit")
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, collate_fn=_collate,
                          generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self) -> DataLoader:
        """Validation windows (reporting only)."""
        self.setup("fit")
        return DataLoader(self.val_set, batch_size=self.batch_size, collate_fn=_collate)
