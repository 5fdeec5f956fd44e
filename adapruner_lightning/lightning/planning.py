"""Obtaining the pruning plan inside a fit: replayed from a checkpoint or a plan file, or searched and broadcast.

* :func:`stored_checkpoint` / :func:`find_state` / :func:`restore_shape`: the plan stored in the checkpoint being
  resumed or evaluated, replayed (LoRA adapters included) before its weights load; :func:`plan_from_file`.
* :func:`pruning_data`: the calibration pool, objective and reconstruction windows, from the datamodule's
  ``pruning_data()`` when it has one (the objective then stays out of fine-tuning), else seeded disjoint slices of
  the train loader.
* :func:`search_plan`: the search (or the configured candidate), every rank taking part: a ``SearchResult``.
* :func:`refit_for_plan`: a replayed least-squares plan's statistics, from the pool and windows it was made on.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer
from torch import nn

from adapruner_lightning.core.config import PruningConfig
from adapruner_lightning.core.physical import apply_plan, is_applied
from adapruner_lightning.core.plan import PLAN_FILE, PruningPlan
from adapruner_lightning.core.groups import layer_structures
from adapruner_lightning.core.reconstruction import LeastSquares, collect_grams
from adapruner_lightning.core.session import PruningSession, tensor_digest
from adapruner_lightning.data.calibration import DataSplits
from adapruner_lightning.data.locks import acquire, release
from adapruner_lightning.distributed import LOCAL, Collective
from adapruner_lightning.errors import ConfigError
from adapruner_lightning.lightning import _compat
from adapruner_lightning.lightning._compat import checkpoint_file, fit_ckpt_path
from adapruner_lightning.lightning.recovery import RecoveryConfig, wrap_for_recovery
from adapruner_lightning.outputs.guard import check_fit_outputs, local_model_paths
from adapruner_lightning.search.config import SearchConfig
from adapruner_lightning.search.pipeline import find_plan
from adapruner_lightning.search.runner import SearchResult

log = logging.getLogger(__name__)


def claim_fit_outputs(out_dir: Path, *, model: nn.Module, export: bool, gguf: bool, lock: bool) -> Path:
    """The callback's output directory, before any work: not the directory of the model being pruned (nor above
    it), no file, and its end-of-fit export and GGUF file replace only exports of ours (``outputs.guard``); rank 0
    (``lock``) then holds its writer lock until :func:`release_fit_outputs`, so a second job on the same directory is
    refused naming this one. Returns the directory (created)."""
    inputs = [path for child in (model, *model.children()) for path in local_model_paths(child)]
    check_fit_outputs(out_dir, inputs=inputs, export=export, gguf=gguf)
    if lock:
        acquire(out_dir, what="output_dir")
    return out_dir


def release_fit_outputs(out_dir: Path | None) -> None:
    """Give back the writer lock of :func:`claim_fit_outputs` (nothing when this process holds none)."""
    if out_dir is not None:
        release(out_dir)


def plan_from_file(path: str | None) -> PruningPlan | None:
    """The plan stored at ``path`` (None when no path is given)."""
    return PruningPlan.load(path) if path else None


def stored_checkpoint(trainer: Trainer) -> dict[str, Any] | None:
    """The checkpoint the running ``fit``/``validate``/``test``/``predict`` restores, memory-mapped (None: none)."""
    path = fit_ckpt_path(trainer)
    return read_checkpoint(path) if path else None


def read_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """The checkpoint at ``path`` (a file, or a DeepSpeed checkpoint directory), memory-mapped; None for a remote
    path (``s3://``), which Lightning reads itself.

    Raises:
        ConfigError: no checkpoint there, or a truncated or damaged one (refused before any search, not after a
            search that Lightning's restore then fails).
    """
    file = checkpoint_file(path)
    if file is None and "://" not in str(path):
        raise ConfigError("ckpt_path", str(path), "an existing checkpoint file, or a DeepSpeed checkpoint directory "
                          "holding its model states", hint="check the path (nothing was searched or pruned)")
    return _compat.load_checkpoint_lazily(file) if file is not None else None


def find_state(checkpoint: dict[str, Any], owner: str = "") -> dict[str, Any] | None:
    """The pruning callback's state (``plan``, ``trace``, ``recovery``) in ``checkpoint``, if it holds one."""
    for key, state in checkpoint.get("callbacks", {}).items():
        if key.startswith(owner) and isinstance(state, dict) and state.get("plan"):
            return state
    return None


def has_adapters(checkpoint: dict[str, Any]) -> bool:
    """Whether the checkpoint's weights are those of a LoRA-wrapped model (peft's ``lora_A`` keys)."""
    weights = checkpoint.get("state_dict") or checkpoint.get("module") or {}
    return any(".lora_A." in key for key in weights)


def restore_shape(model: nn.Module, state: dict[str, Any], *, adapters: bool,
                  fallback: RecoveryConfig | None = None) -> nn.Module:
    """``model`` in the shape a checkpoint's weights need: the stored plan applied (unless it already is) and,
    when the weights carry LoRA adapters, wrapped with the stored recovery config (``fallback`` for checkpoints
    that predate storing it). Returns the model to put back into the LightningModule."""
    if hasattr(model, "peft_config"):  # already restored (a resumed fit replayed the plan in setup)
        return model
    plan = PruningPlan.from_dict(state["plan"])
    if not is_applied(model, plan):
        apply_plan(model, plan, weights_follow=True)  # the checkpoint's weights load next
    if not adapters:
        return model
    recovery = RecoveryConfig(**state["recovery"]) if state.get("recovery") else (fallback or RecoveryConfig())
    return wrap_for_recovery(model, recovery)


def pruning_data(trainer: Trainer, search: SearchConfig, pruning: PruningConfig) -> tuple[DataSplits, bool]:
    """The calibration pool and objective windows, and whether the datamodule provided them."""
    data = search.data
    dm = trainer.datamodule
    if dm is not None and hasattr(dm, "pruning_data"):
        return dm.pruning_data(pool_size=data.pool_size, pool_seq_len=pruning.sample_len,
                               objective_windows=data.objective_windows, objective_seq_len=data.objective_seq_len,
                               seed=pruning.seed), True
    needed = data.pool_size + data.objective_windows
    rows = train_rows(trainer, needed, extra=data.reconstruction_windows)
    order = torch.randperm(needed, generator=torch.Generator().manual_seed(pruning.seed))  # train_rows gave >= needed
    held, pool = order[:data.objective_windows], order[data.objective_windows:]  # as without reconstruction rows
    rest = torch.arange(needed, rows.shape[0])  # the loader's next rows
    log.warning("adapruner: the objective windows come from the train dataloader and may reach fine-tuning; "
                "give your datamodule a pruning_data() method to keep them out")
    splits = DataSplits(pool=rows[pool][:, : pruning.sample_len], pool_ids=[f"train:{int(i)}" for i in pool],
                        objective=rows[held], objective_ids=[f"train:{int(i)}" for i in held],
                        finetune_ids=[f"train:{int(i)}" for i in rest], finetune=rows[rest])
    return splits, False


def train_rows(trainer: Trainer, needed: int, *, extra: int = 0) -> torch.Tensor:
    """The first ``needed`` ``input_ids`` rows of the loader ``fit`` trains on (passed to ``fit``, the
    datamodule's or the module's ``train_dataloader``), and up to ``extra`` more where the loader has them."""
    rows: list[torch.Tensor] = []
    for batch in _compat.train_dataloader(trainer):
        ids = batch["input_ids"] if isinstance(batch, dict) else batch[0]
        rows += list(ids)
        if len(rows) >= needed + extra:
            break
    if len(rows) < max(needed, 2):
        raise ConfigError("train dataloader", f"{len(rows)} samples", f"at least {needed} (pool + objective)",
                          hint="lower search.data.pool_size / objective_windows or provide more data")
    return torch.stack(rows[:needed + extra])


def search_plan(model: nn.Module, splits: DataSplits, pruning: PruningConfig, search: SearchConfig, *,
                device: torch.device, trace_path: Path, forward_context: Callable[[], Any],
                progress: bool = True, collective: Collective = LOCAL) -> SearchResult:
    """:func:`~adapruner_lightning.search.pipeline.find_plan` on the pruning data of a fit, inside the precision
    plugin's ``forward_context``: every rank of ``collective`` calls this with the same model and splits and
    returns the same plan and trace."""
    windows = splits.reconstruction(search.data.reconstruction_windows).to(device)
    if windows.shape[0] < search.data.reconstruction_windows:
        log.info("adapruner: the least-squares repair fits on the pool and %d of the %d reconstruction windows asked "
                 "for (search.data.reconstruction_windows): the calibration data has no more", windows.shape[0],
                 search.data.reconstruction_windows)
    session = PruningSession(model, pruning, splits.pool.to(device), objective_windows=splits.objective.to(device),
                             pool_ids=splits.pool_ids, progress=progress, collective=collective,
                             reconstruction_windows=windows)
    with forward_context():
        return find_plan(session, search, trace_path=trace_path, collective=collective, progress=progress,
                         bos=splits.bos)


def refit_for_plan(model: nn.Module, plan: PruningPlan, splits: DataSplits, *, device: torch.device,
                   collective: Collective = LOCAL) -> LeastSquares:
    """The least-squares statistics a replayed ``reconstruction='lstsq'`` plan needs, from ``splits``' pool and
    reconstruction windows, which must be the ones the plan was fitted on (same tokens); other data is refused with
    a clear error, since its weights would differ from the ones the plan was scored with."""
    fit = plan.provenance.get("reconstruction_fit") or {}
    made = fit.get("reconstruction_windows")
    windows = splits.reconstruction(made["shape"][0] if made else 0)
    tokens = splits.pool.numel() + windows.numel()  # what the plan's Gram summed over, if this is its data
    other_pool = fit.get("pool") != tensor_digest(splits.pool)
    if other_pool or (made and made["tokens"] != tensor_digest(windows)) or fit.get("tokens", tokens) != tokens:
        differs = "calibration pool" if other_pool else "reconstruction windows"
        counts = (f"the plan's repair fitted on {made['shape'][0] if made else 0} reconstruction windows, this run's "
                  f"data gives {windows.shape[0]}")
        raise ConfigError("plan", f"re-fitted (reconstruction='lstsq') on {'another' if other_pool else 'other'} "
                          f"{differs}", f"the {differs} the plan was made on (same tokens; {counts})",
                          hint="use the same data, seed, search.data (pool_size, objective_windows, objective_seq_len, "
                               "reconstruction_windows), pruning.sample_len and the datamodule's val_windows as the "
                               "run that made the plan, load its export with load_pruned, or make the plan with "
                               "reconstruction='bias'")
    grams = collect_grams(model, layer_structures(model), splits.pool.to(device), extra=windows.to(device),
                          collective=collective)
    return LeastSquares.described(grams, fit)


def save_plan_beside_checkpoints(plan: PruningPlan, directory: str | Path, owned: dict[Path, bool]) -> None:
    """Write ``plan`` as ``pruning_plan.json`` in the checkpoint ``directory``, replacing only a file this run wrote
    (``owned[path]`` True) or one that already holds this plan (a resumed run's). A file there that holds another
    plan is someone else's: it is kept byte for byte, with one warning (``owned[path]`` False)."""
    path = Path(directory) / PLAN_FILE
    if path not in owned and path.exists():
        owned[path] = _holds(path, plan)
        if not owned[path]:
            warnings.warn(f"adapruner: {path} was not written by this run and holds another plan: kept, and this "
                          "run's plan not written beside the checkpoints (it is in each checkpoint's state)",
                          UserWarning, stacklevel=2)
    if owned.get(path, True):
        path.parent.mkdir(parents=True, exist_ok=True)
        plan.save(path)
        owned[path] = True


def _holds(path: Path, plan: PruningPlan) -> bool:
    """Whether the plan file at ``path`` is ``plan`` (an unreadable file is not)."""
    try:
        return json.loads(path.read_text()) == json.loads(json.dumps(plan.to_dict()))
    except (OSError, ValueError):
        return False
