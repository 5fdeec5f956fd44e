"""Saving and reloading pruned models: safetensors weights + HF config + ``pruning_plan.json``.

* Uniform plans (every layer the same shape) reload with plain ``AutoModelForCausalLM.from_pretrained(dir)``.
* Every export carries a model card (``README.md``, :mod:`~adapruner_lightning.outputs.model_card`); a GGUF file for
  llama.cpp is written from the reloaded model by :mod:`~adapruner_lightning.outputs.gguf`.
* Any plan reloads with :func:`load_pruned`, which builds the original architecture from the saved config with
  its parameters on the meta device (no memory), replays the plan's shapes there (torch-pruning's history-replay
  idea) and assigns the saved tensors strictly: peak memory is about one pruned model, in the saved dtype.

Saving is atomic: everything is written to a temporary sibling directory that replaces the target by
rename, so an interrupted save never leaves a half model and the previous export survives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from adapruner_lightning.core.plan import PLAN_FILE, PruningPlan
from adapruner_lightning.data.files import check_model_files, read_json
from adapruner_lightning.data.text import atomic_path
from adapruner_lightning.errors import ConfigError

ORIGINAL_CONFIG_KEY = "adapruner_original"


def _original_config(plan: PruningPlan) -> dict[str, int]:
    return {"num_attention_heads": plan.original_num_heads, "num_key_value_heads": plan.original_num_kv_heads,
            "intermediate_size": plan.original_intermediate_size, "head_dim": plan.head_dim}


def save_pruned(model: nn.Module, tokenizer: Any, directory: str | Path, plan: PruningPlan,
                extra_files: dict[str, str] | None = None, report: dict[str, Any] | None = None, *,
                overwrite: bool = True) -> Path:
    """Write ``model`` (already pruned by ``plan``) with its tokenizer, plan and model card (``README.md``, with the
    quality of ``report`` when given) to ``directory`` atomically.

    ``directory`` must be new, empty or an earlier export of ours (replaced only with ``overwrite``, the default);
    the model's own directory, a directory above it, a file or a non-empty directory that is not an export are
    refused before anything is written (:func:`~adapruner_lightning.outputs.guard.check_output_path`).

    Raises:
        ConfigError: ``directory`` is not a path this function may replace.
    """
    from adapruner_lightning.outputs.guard import check_output_path, local_model_paths
    from adapruner_lightning.outputs.model_card import model_card

    directory = check_output_path(directory, inputs=local_model_paths(model), overwrite=overwrite, flag="directory")
    base = str(getattr(model.config, "_name_or_path", "") or "") or None
    with atomic_path(directory) as tmp:
        model.config.head_dim = plan.head_dim
        setattr(model.config, ORIGINAL_CONFIG_KEY, _original_config(plan))
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        plan.save(tmp / PLAN_FILE)
        (tmp / "README.md").write_text(model_card(plan, base_model=base, report=report, name=directory.name))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return directory


def _load_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ConfigError("pruned model directory", str(directory), "a directory with *.safetensors weights",
                          hint="export with save_pruned(...) (pickled .bin weights are not loaded)")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    return state


def saved_dtype(config: Any) -> torch.dtype:
    """The dtype an export was written in (``config.dtype``, older ``torch_dtype``), float32 when unrecorded."""
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    return getattr(torch, value) if isinstance(value, str) else value


def load_pruned(directory: str | Path, *, dtype: torch.dtype | None = None,
                device: str = "cpu") -> tuple[nn.Module, Any, PruningPlan]:
    """Rebuild a pruned model from ``directory`` (any plan, non-uniform included).

    The dense architecture is built with its parameters on the meta device (buffers such as rotary frequencies
    stay real), the plan is replayed on those shapes, and the saved tensors are assigned in place of the meta
    parameters, so no dense weight is ever allocated.

    Args:
        directory: written by :func:`save_pruned`.
        dtype: parameter dtype; default the dtype the export was saved in.
        device: where the returned model lives.

    Returns:
        ``(model, tokenizer_or_None, plan)``.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from adapruner_lightning.core.physical import apply_plan

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise ConfigError("pruned model directory", str(directory), "a directory written by save_pruned (config.json)")
    check_model_files(directory, hint=_REEXPORT)
    plan = PruningPlan.load(directory / PLAN_FILE)
    config = AutoConfig.from_pretrained(directory)
    for key, value in (getattr(config, ORIGINAL_CONFIG_KEY, None) or _original_config(plan)).items():
        setattr(config, key, value)
    dtype = dtype or saved_dtype(config)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    apply_plan(model, plan, trace=False, weights_follow=True)  # the family's coupling is known; weights load next
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in _load_state_dict(directory).items()}
    _check_shapes(directory, model, state)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = {k for k in missing if "lm_head" in k and getattr(config, "tie_word_embeddings", False)}
    if set(missing) - tied or unexpected:
        raise ConfigError("pruned weights", f"missing={sorted(set(missing) - tied)[:5]} unexpected={sorted(unexpected)[:5]}",
                          "weights matching the plan", hint="the directory mixes files of different exports")
    if tied:
        model.tie_weights()
    return model.to(device).eval(), _load_tokenizer(directory), plan


_REEXPORT = "export the model again (save_pruned / adapruner prune --out DIR --overwrite)"


def _check_shapes(directory: Path, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Refuse weights whose shapes are not those the plan gives (files of another export mixed in)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    wrong = [f"{k} {tuple(v.shape)} (plan: {expected[k]})" for k, v in state.items()
             if k in expected and tuple(v.shape) != expected[k]]
    if wrong:
        raise ConfigError("pruned weights", str(directory), f"tensors of the shapes {PLAN_FILE} gives",
                          hint=f"{len(wrong)} differ, e.g. {wrong[0]}: the weights and the plan come from different "
                               f"exports; {_REEXPORT}")


def _load_tokenizer(directory: Path) -> Any:
    """The export's tokenizer (None when it has none); one that cannot load is a ConfigError naming the directory."""
    from transformers import AutoTokenizer

    if not (directory / "tokenizer_config.json").exists():
        return None
    try:
        return AutoTokenizer.from_pretrained(directory)
    except Exception as exc:  # noqa: BLE001 - tokenizers raises many types for a damaged file
        raise ConfigError("tokenizer files", str(directory), "a tokenizer saved by save_pretrained",
                          hint=f"transformers said: {type(exc).__name__}: {str(exc)[:200]}; {_REEXPORT}") from exc


def read_report(directory: str | Path) -> dict[str, Any]:
    """The ``report.json`` written beside an export (empty dict when absent)."""
    path = Path(directory) / "report.json"
    return read_json(path, "report file", hint="delete it (it is rewritten by the next run)") if path.exists() else {}
