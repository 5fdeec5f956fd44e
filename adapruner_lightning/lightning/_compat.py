"""Every reliance on Lightning (and DeepSpeed) internals, in one place.

Each function names the behaviour it relies on; ``tests/lightning/test_compat.py`` checks each behaviour on
the installed versions, so an upgrade that changes one fails loudly in one test instead of silently in a fit.

Facts relied on (Lightning 2.x ``Trainer._run``): ``setup`` hooks run before ``configure_model``, before the
checkpoint's weights are restored and before ``strategy.setup`` creates optimizers and the DDP/DeepSpeed
wrapper; so a structural pruner removes parameters in ``setup(stage="fit")`` and, on resume, replays its plan
there so that the pruned-shape weights of the checkpoint load.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from adapruner_lightning.distributed import Collective
from adapruner_lightning.errors import AdaPrunerError, ConfigError
from adapruner_lightning.search.stop import clear_stop, request_stop, stop_reason

log = logging.getLogger(__name__)

#: Strategies that hand ``setup`` whole, unwrapped modules on every rank.
SUPPORTED_STRATEGIES = ("SingleDeviceStrategy", "DDPStrategy", "DeepSpeedStrategy")


def fit_ckpt_path(trainer: Trainer) -> str | None:
    """The checkpoint ``fit`` is resuming from, already during ``setup``.

    Relies on: Lightning records ``trainer.ckpt_path`` only when it restores, after ``setup``; the path given
    to ``fit(ckpt_path=...)`` is then the local ``ckpt_path`` of ``Trainer._run``, read here from the stack.
    """
    if trainer.ckpt_path:
        return str(trainer.ckpt_path)
    frame = inspect.currentframe()
    while frame is not None:
        if frame.f_code.co_name == "_run" and frame.f_locals.get("self") is trainer:
            path = frame.f_locals.get("ckpt_path")
            return str(path) if path else None
        frame = frame.f_back
    return None


def check_before_wrap(trainer: Trainer, pl_module: LightningModule) -> None:
    """Raise unless pruning can still change parameters: no optimizer exists and no strategy wrapper either.

    Relies on: ``setup`` runs before ``strategy.setup`` (see the module docstring).
    """
    wrapped = trainer.strategy.model is not None and trainer.strategy.model is not pl_module
    if trainer.optimizers or wrapped:
        raise AdaPrunerError("adapruner: the model was already wrapped or had optimizers when setup() ran; this "
                             "Lightning version calls hooks in another order than the callback relies on "
                             "(see adapruner_lightning/lightning/_compat.py)")


def check_strategy(trainer: Trainer) -> None:
    """Refuse strategies that shard or wrap the model before ``setup`` (pruning needs whole modules)."""
    names = {cls.__name__ for cls in type(trainer.strategy).__mro__}
    if not names & set(SUPPORTED_STRATEGIES):
        raise ConfigError("trainer strategy", type(trainer.strategy).__name__, f"one of {list(SUPPORTED_STRATEGIES)}",
                          hint="prune with DDP/DeepSpeed (or a single device), then fine-tune the export with any strategy")


def configure_model_early(pl_module: LightningModule) -> bool:
    """Call the module's own ``configure_model()`` now, in ``setup``, so that its model exists to be pruned;
    returns whether the module defines one.

    Relies on: Lightning calls ``configure_model`` after ``setup`` (under ZeRO-3 inside ``deepspeed.zero.Init``)
    and documents it as idempotent (it must not create the model twice). Called here, the model is created whole
    on every rank (pruning needs whole weights); DeepSpeed partitions the smaller pruned model when it wraps it.
    """
    from lightning.pytorch.utilities.model_helpers import is_overridden

    if not is_overridden("configure_model", pl_module, LightningModule):
        return False
    pl_module.configure_model()
    return True


def uncompiled(module: nn.Module) -> nn.Module:
    """The module inside a ``torch.compile`` wrapper (``module`` itself when it is not compiled).

    Relies on: ``torch.compile(module)`` returns an ``OptimizedModule`` holding the original as ``_orig_mod``.
    """
    return getattr(module, "_orig_mod", module)


def compiled_like(wrapper: nn.Module, module: nn.Module) -> nn.Module:
    """``module`` compiled with the settings of the ``torch.compile`` wrapper ``wrapper`` (the backend, mode
    and options the user chose); ``module`` itself when ``wrapper`` is not compiled.

    Relies on: ``OptimizedModule(mod, dynamo_ctx)`` (torch._dynamo.eval_frame) keeps its settings in ``dynamo_ctx``.
    """
    from torch._dynamo.eval_frame import OptimizedModule

    if not isinstance(wrapper, OptimizedModule):
        return module
    return OptimizedModule(module, wrapper.dynamo_ctx)


def checkpoint_file(path: str | Path) -> Path | None:
    """The file holding the callback states of the checkpoint at ``path``.

    Relies on: Lightning's ``DeepSpeedStrategy`` saves a directory whose ``checkpoint/`` holds the client state
    (callbacks included) in rank 0's model-states file: ``mp_rank_00_model_states.pt`` under ZeRO stages 0-2,
    ``zero_pp_rank_0_mp_rank_00_model_states.pt`` under ZeRO-3; any other strategy saves one file.
    """
    path = Path(path)
    if path.is_dir():
        for pattern in ("*/mp_rank_00_model_states.pt", "*/zero_pp_rank_0_mp_rank_00_model_states.pt"):
            found = sorted(path.glob(pattern))
            if found:
                return found[0]
        return None
    return path if path.is_file() else None


def load_checkpoint_lazily(file: Path) -> dict[str, Any]:
    """``torch.load`` memory-mapped (tensors are not read until used: a 100 GB checkpoint with optimizer states
    costs nothing to inspect), falling back to a plain load for the legacy non-zip format."""
    import torch

    try:
        try:
            return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) serialisation cannot be memory-mapped
            return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, EOFError, UnpicklingError ... for a bad file
        raise ConfigError("checkpoint", str(file), "a complete checkpoint written by Lightning",
                          hint=f"it cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}); "
                               f"the file is truncated or damaged: resume from an earlier checkpoint") from exc


def _partitioned(model: nn.Module) -> list[nn.Parameter]:
    """``model``'s ZeRO-3 partitioned parameters. Relies on: DeepSpeed marks them with a ``ds_id`` attribute."""
    return [p for p in model.parameters() if hasattr(p, "ds_id")]


def is_partitioned(model: nn.Module) -> bool:
    """Whether ``model``'s parameters are ZeRO-3 partitioned (a forward then needs every rank)."""
    return bool(_partitioned(model))


def gathered(model: nn.Module, modifier_rank: int | None = None) -> Any:
    """Gather ZeRO-3 partitioned parameters (full weights on every rank) for the block; a no-op otherwise.

    With ``modifier_rank=r``, rank ``r``'s changes are kept when the block ends. Run no forward inside the block:
    DeepSpeed's module hooks release the parameters after each module's forward.
    """
    partitioned = _partitioned(model)
    if not partitioned:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=modifier_rank)


def collective(trainer: Trainer) -> Collective:
    """The trainer's ranks as a :class:`Collective` (tensor collectives through this rank's root device).

    Relies on: Lightning's DDP and DeepSpeed strategies start ``torch.distributed``'s default process group,
    whose ranks are the trainer's global ranks.
    """
    return Collective(trainer.global_rank, trainer.world_size, trainer.strategy.root_device)


def output_root(trainer: Trainer) -> str:
    """Where a run writes by default: the logger's ``log_dir``, else ``default_root_dir``.

    Relies on: ``Trainer.log_dir`` (it broadcasts from rank 0 under a distributed strategy).
    """
    return str(trainer.log_dir or trainer.default_root_dir)


def train_dataloader(trainer: Trainer) -> Any:
    """The loader ``fit`` will train on, already in ``setup``: the one passed as ``train_dataloaders``, else the
    datamodule's or the module's ``train_dataloader()``.

    Relies on: ``Trainer.fit`` attaches its data source (``fit_loop._data_source``, whose ``dataloader()`` calls
    the right hook) before ``setup``.
    """
    source = trainer.fit_loop._data_source
    if source.instance is None or not source.is_defined():
        raise ConfigError("train data", None, "a train dataloader (trainer.fit(module, train_dataloaders=...), a "
                          "datamodule or LightningModule.train_dataloader)",
                          hint="the callback takes its calibration samples from the training data")
    return source.dataloader()


def statistics_context(plugin: Any) -> Any:
    """The context factory the search runs in: the trainer's precision context, except fp16 autocast.

    The statistics' backward passes have no loss scaling, so fp16 autocast would underflow their gradients;
    under ``precision="16-mixed"`` they run in the weights' own dtype (accumulators are float32 regardless).
    Relies on: Lightning's precision plugins name their setting in ``.precision`` and offer ``forward_context()``.
    """
    if getattr(plugin, "precision", None) in ("16-mixed", "16"):
        return contextlib.nullcontext
    return plugin.forward_context


def requeue_signal(trainer: Trainer) -> signal.Signals | None:
    """The signal on which Lightning checkpoints and requeues this job (SLURM's ``SIGUSR1`` by default), or None.

    Relies on: the trainer's cluster environment (``trainer._accelerator_connector.cluster_environment``) is a
    ``SLURMEnvironment`` whose ``auto_requeue`` and ``requeue_signal`` decide whether ``_SignalConnector`` installs
    its requeue handler, which it does in ``Trainer._run`` only after ``setup`` and the checkpoint restore
    (``register_signal_handlers``): during the search the signal still has its default action, which kills the job
    without requeueing it.
    """
    from lightning.fabric.plugins.environments import SLURMEnvironment

    environment = getattr(getattr(trainer, "_accelerator_connector", None), "cluster_environment", None)
    if not isinstance(environment, SLURMEnvironment) or not environment.auto_requeue:
        return None
    return environment.requeue_signal


def requeue_slurm_job() -> int:
    """``scontrol requeue`` this SLURM job, as Lightning's requeue handler does (``SLURM_ARRAY_JOB_ID`` _
    ``SLURM_ARRAY_TASK_ID`` for an array task, else ``SLURM_JOB_ID``); returns scontrol's exit status.

    Relies on: Lightning's ``_SignalConnector._slurm_sigusr_handler_fn`` requeues with exactly this command.
    """
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else os.environ.get("SLURM_JOB_ID", "")
    try:
        status = subprocess.call(["scontrol", "requeue", job])
    except FileNotFoundError:
        status = 127
    (log.info if status == 0 else log.warning)("adapruner: scontrol requeue %s exited with %d", job, status)
    return status


class RequeueHandler:
    """SLURM's requeue signal (:func:`requeue_signal`) for the whole fit, handled where every rank is at the same
    point, in place of Lightning's handler, which it keeps out.

    Lightning's handler (``_SignalConnector._slurm_sigusr_handler_fn``) is installed only after ``setup``, so during
    the search the signal's default action killed the job without a requeue; and it saves its HPC checkpoint (a
    collective) inside the signal handler, wherever each rank happens to be: under ZeRO-3, whose forward and backward
    are sequences of parameter all-gathers, the ranks then wait in different collectives until the process group
    times out. Here the handler only records the signal (``search.stop``). During the search rank 0 requeues the job at
    once and every rank stops after the round (the trace holds every finished trial; a checkpoint of the unpruned
    model would be useless). During the fine-tune every rank learns of it at the end of the step (one all-reduce of a
    flag per step), then all save the HPC checkpoint Lightning would have saved (``hpc_ckpt_<n>.ckpt`` in
    ``default_root_dir``, which Lightning's SLURM auto-resume restores) and rank 0 requeues, as Lightning does.

    Relies on: Lightning installs its requeue handler only if the signal has none yet (``_has_already_handler``),
    and names HPC checkpoints with ``_checkpoint_connector.hpc_save_path``.
    """

    def __init__(self, trainer: Trainer, signum: signal.Signals) -> None:
        self.trainer, self.signum, self.requeued, self.saved = trainer, signum, False, False
        self.previous = signal.signal(signum, self._record)

    @classmethod
    def install(cls, trainer: Trainer) -> "RequeueHandler | None":
        """The handler, installed when the trainer requeues on a signal (None otherwise, or off the main thread)."""
        signum = requeue_signal(trainer)
        if signum is None or threading.current_thread() is not threading.main_thread():
            return None
        return cls(trainer, signum)

    def _record(self, received: int, frame: Any) -> None:
        if stop_reason() is not None:
            return
        request_stop(signal.Signals(received).name)
        if self.trainer.global_step == 0 and self.trainer.is_global_zero:  # the search: nothing to checkpoint yet
            self.requeued = requeue_slurm_job() == 0 or self.requeued

    def at_step_end(self) -> None:
        """Every rank, at the end of each training step: checkpoint and requeue once any rank got the signal."""
        import torch

        flag = torch.tensor([1.0 if stop_reason() is not None else 0.0])
        if self.saved or not collective(self.trainer).sum_(flag).item():
            return
        self.saved = True
        rank_zero_info(f"adapruner: {stop_reason()} received: saving an HPC checkpoint and requeueing the job")
        connector = self.trainer._checkpoint_connector
        self.trainer.save_checkpoint(connector.hpc_save_path(self.trainer.default_root_dir))
        if self.trainer.is_global_zero and not self.requeued:
            self.requeued = requeue_slurm_job() == 0

    def remove(self) -> None:
        """Put the signal's previous handler back and forget the request."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(self.signum, self.previous)
        clear_stop()

