"""The Lightning behaviours ``lightning/_compat.py`` relies on, checked on the installed Lightning.

If one of these fails after a Lightning upgrade, the callback's pruning-in-setup or resume logic must be
revisited in ``_compat.py`` (and only there).
"""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader, TensorDataset

from adapruner_lightning.errors import AdaPrunerError
from adapruner_lightning.lightning import _compat


class _Tiny(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.events: list[str] = []

    def configure_model(self) -> None:
        self.events.append("configure_model")

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).square().mean()

    def configure_optimizers(self):
        self.events.append("configure_optimizers")
        return torch.optim.SGD(self.parameters(), lr=0.5)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.ones(4, 4)), batch_size=2)


class _Probe(Callback):
    """Records what the callback would see in ``setup`` and at ``on_fit_start``."""

    def __init__(self) -> None:
        self.seen: dict[str, object] = {}

    def setup(self, trainer, pl_module, stage):
        pl_module.events.append("setup")
        self.seen.update(ckpt_attr=trainer.ckpt_path, ckpt_found=_compat.fit_ckpt_path(trainer),
                         optimizers=list(trainer.optimizers), model=trainer.strategy.model,
                         weight=pl_module.layer.weight.detach().clone())
        _compat.check_before_wrap(trainer, pl_module)

    def on_fit_start(self, trainer, pl_module):
        self.seen["weight_at_start"] = pl_module.layer.weight.detach().clone()


def _trainer(tmp_path, *callbacks, steps=1):
    return Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, default_root_dir=str(tmp_path), callbacks=list(callbacks))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("compat")
    trainer = _trainer(root, steps=2)
    trainer.fit(_Tiny())
    path = root / "resume.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_setup_runs_before_configure_model_optimizers_and_wrapping(tmp_path):
    module, probe = _Tiny(), _Probe()
    _trainer(tmp_path, probe).fit(module)
    assert module.events[:3] == ["setup", "configure_model", "configure_optimizers"]
    assert probe.seen["optimizers"] == [] and probe.seen["model"] is module


def test_ckpt_path_is_only_known_from_the_run_frame_during_setup(tmp_path, checkpoint):
    probe = _Probe()
    _trainer(tmp_path, probe, steps=3).fit(_Tiny(), ckpt_path=str(checkpoint))
    assert probe.seen["ckpt_attr"] is None  # Lightning sets trainer.ckpt_path only when it restores
    assert probe.seen["ckpt_found"] == str(checkpoint)


def test_checkpoint_weights_load_after_setup(tmp_path, checkpoint):
    stored = torch.load(checkpoint, weights_only=True)["state_dict"]["layer.weight"]
    module, probe = _Tiny(), _Probe()
    _trainer(tmp_path, probe, steps=3).fit(module, ckpt_path=str(checkpoint))
    assert not torch.equal(probe.seen["weight"], stored)  # setup still sees the fresh weights (replay the plan here)
    assert torch.equal(probe.seen["weight_at_start"], stored)  # restored before on_fit_start


def test_check_before_wrap_refuses_a_model_that_already_has_optimizers(tmp_path):
    module = _Tiny()
    trainer = _trainer(tmp_path)
    trainer.fit(module)  # after fit the strategy holds the optimizer
    with pytest.raises(AdaPrunerError, match="another order"):
        _compat.check_before_wrap(trainer, module)


def test_output_root_is_the_log_dir_or_the_default_root(tmp_path):
    trainer = _trainer(tmp_path)
    assert _compat.output_root(trainer) == str(tmp_path)


class _LoaderProbe(Callback):
    def setup(self, trainer, pl_module, stage):
        self.loader = _compat.train_dataloader(trainer)


class _NoLoader(_Tiny):
    train_dataloader = LightningModule.train_dataloader  # the user defines none


def test_train_dataloader_is_the_one_given_to_fit_or_the_modules(tmp_path):
    given = DataLoader(TensorDataset(torch.zeros(6, 4)), batch_size=3)
    probe = _LoaderProbe()
    _trainer(tmp_path, probe).fit(_NoLoader(), train_dataloaders=given)
    assert probe.loader is given
    probe = _LoaderProbe()
    _trainer(tmp_path, probe).fit(_Tiny())
    assert isinstance(probe.loader, DataLoader) and len(probe.loader.dataset) == 4


@pytest.mark.parametrize("name", ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"])
def test_deepspeed_checkpoint_layouts_of_every_zero_stage_are_found(tmp_path, name):
    """Lightning's DeepSpeedStrategy writes <ckpt>/checkpoint/<rank 0 model states>; ZeRO-3 names it per rank."""
    ckpt = tmp_path / "last.ckpt" / "checkpoint"
    ckpt.mkdir(parents=True)
    torch.save({"callbacks": {"AdaPrunerCallback": {"plan": {"x": 1}}}}, ckpt / name)
    if name.startswith("zero"):
        torch.save({}, ckpt / "zero_pp_rank_1_mp_rank_00_model_states.pt")
    found = _compat.checkpoint_file(tmp_path / "last.ckpt")
    assert found == ckpt / name
    assert _compat.load_checkpoint_lazily(found)["callbacks"]["AdaPrunerCallback"]["plan"] == {"x": 1}


def test_on_train_end_runs_before_the_strategy_teardown_that_precedes_on_fit_end(tmp_path):
    """The callback merges, evaluates and exports in on_train_end: after it, _teardown moves the module to the
    CPU (strategy.teardown) and DeepSpeed's engine ends, and only then on_fit_end runs."""
    events: list[str] = []

    class Order(Callback):
        def on_train_end(self, trainer, pl_module):
            events.append("on_train_end")

        def on_fit_end(self, trainer, pl_module):
            events.append("on_fit_end")

    trainer = _trainer(tmp_path, Order())
    real = trainer.strategy.teardown

    def teardown():
        events.append("strategy.teardown")
        real()

    trainer.strategy.teardown = teardown
    trainer.fit(_Tiny())
    assert events == ["on_train_end", "strategy.teardown", "on_fit_end"]


def test_statistics_never_run_under_fp16_autocast():
    """16-mixed has no loss scaling in the statistics' backward passes: they run without autocast; bf16 keeps it."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    with _compat.statistics_context(MixedPrecision("16-mixed", "cuda"))():
        assert not torch.is_autocast_enabled("cuda") and not torch.is_autocast_enabled("cpu")
    with _compat.statistics_context(MixedPrecision("bf16-mixed", "cpu"))():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_a_compile_wrapper_is_rebuilt_with_the_users_settings():
    """``uncompiled`` finds the module behind ``torch.compile``; ``compiled_like`` wraps another module with
    the same dynamo settings (``OptimizedModule(mod, dynamo_ctx)``, torch._dynamo.eval_frame)."""
    from torch._dynamo.eval_frame import OptimizedModule

    inner, other = torch.nn.Linear(3, 2), torch.nn.Linear(3, 1)
    compiled = torch.compile(inner, backend="eager")
    assert isinstance(compiled, OptimizedModule) and _compat.uncompiled(compiled) is inner
    assert _compat.uncompiled(inner) is inner
    again = _compat.compiled_like(compiled, other)
    assert isinstance(again, OptimizedModule) and again._orig_mod is other
    assert again.dynamo_ctx is compiled.dynamo_ctx
    assert again(torch.ones(1, 3)).shape == (1, 1)
    assert _compat.compiled_like(inner, other) is other


def test_configure_model_is_called_early_only_when_the_module_defines_it():
    module = _Tiny()
    assert _compat.configure_model_early(module) and module.events == ["configure_model"]

    class Plain(LightningModule):
        pass

    assert not _compat.configure_model_early(Plain())


class _SignalProbe(Callback):
    """Records what handles SIGUSR1 in ``setup`` and at ``on_train_start``; with ``install``, installs the
    callback's requeue handler in ``setup`` (as AdaPrunerCallback does)."""

    def __init__(self, install: bool) -> None:
        self.install, self.seen, self.handler = install, {}, None

    def setup(self, trainer, pl_module, stage):
        import signal

        self.seen.update(setup=signal.getsignal(signal.SIGUSR1), requeue=_compat.requeue_signal(trainer))
        if self.install:
            self.handler = _compat.RequeueHandler.install(trainer)

    def on_train_start(self, trainer, pl_module):
        import signal

        self.seen["train"] = signal.getsignal(signal.SIGUSR1)

    def teardown(self, trainer, pl_module, stage):
        if self.handler is not None:
            self.handler.remove()


def _slurm_fit(tmp_path, monkeypatch, install: bool, auto_requeue: bool = True) -> dict:
    from lightning.fabric.plugins.environments import SLURMEnvironment

    for key, value in dict(SLURM_NTASKS="1", SLURM_NTASKS_PER_NODE="1", SLURM_JOB_NAME="t", SLURM_PROCID="0",
                           SLURM_LOCALID="0", SLURM_NODEID="0", SLURM_JOB_ID="7").items():
        monkeypatch.setenv(key, value)
    probe = _SignalProbe(install)
    Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, default_root_dir=tmp_path, callbacks=[probe],
            plugins=[SLURMEnvironment(auto_requeue=auto_requeue)]).fit(_Tiny())
    return {**probe.seen, "handler": probe.handler}


def test_lightning_installs_its_slurm_requeue_handler_only_after_setup_and_only_if_there_is_none(tmp_path,
                                                                                              monkeypatch):
    """In ``setup`` (where the search runs) the requeue signal has its default action: it would kill the job
    unrequeued. Lightning installs its handler before the first step, unless one is installed already: the
    callback's (``RequeueHandler``) then stays for the whole fit, and is removed at teardown."""
    import signal

    lightning_only = _slurm_fit(tmp_path, monkeypatch, install=False)
    assert lightning_only["requeue"] == signal.SIGUSR1 and lightning_only["setup"] in (signal.SIG_DFL, None)
    assert type(lightning_only["train"]).__name__ == "_HandlersCompose"  # Lightning's own
    ours = _slurm_fit(tmp_path, monkeypatch, install=True)
    assert ours["train"] == ours["handler"]._record  # Lightning kept out
    assert signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None)  # removed again
    off = _slurm_fit(tmp_path, monkeypatch, install=True, auto_requeue=False)
    assert off["requeue"] is None and off["handler"] is None


def test_the_requeue_command_is_lightnings(tmp_path, monkeypatch):
    log = tmp_path / "calls"
    scontrol = tmp_path / "scontrol"
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\n")
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{__import__('os').environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    assert _compat.requeue_slurm_job() == 0
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "9")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")
    assert _compat.requeue_slurm_job() == 0
    assert log.read_text().splitlines() == ["requeue 123", "requeue 9_4"]
    import inspect

    from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector

    source = inspect.getsource(_SignalConnector._slurm_sigusr_handler_fn)
    assert '["scontrol", "requeue", job_id]' in source and 'f"{array_job_id}_{array_task_id}"' in source


class _SplitProbe(Callback):
    """Calls ``planning.pruning_data`` in ``setup`` as the callback does, for a train loader without a datamodule."""

    def __init__(self, **data) -> None:
        self.data, self.splits = data, None

    def setup(self, trainer, pl_module, stage):
        from adapruner_lightning.core.config import PruningConfig
        from adapruner_lightning.lightning import planning
        from adapruner_lightning.search.config import SearchConfig

        self.splits, _ = planning.pruning_data(trainer, SearchConfig.of(**self.data), PruningConfig(sample_len=8))


class _Wide(_NoLoader):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(8, 1)


@pytest.mark.parametrize("windows, expected", [(3, 3), (20, 6), (0, 0)])
def test_the_train_loader_gives_reconstruction_windows_apart_from_the_pool_and_objective(tmp_path, windows, expected):
    """Without a datamodule's ``pruning_data`` the pool and objective windows are train rows; the reconstruction
    windows are up to ``reconstruction_windows`` more rows (as many as the loader has), disjoint from both."""
    rows = torch.arange(96.0).view(12, 8)  # 12 distinct rows of 8 "tokens"
    probe = _SplitProbe(pool_size=4, objective_windows=2, reconstruction_windows=windows)
    _trainer(tmp_path, probe).fit(_Wide(), train_dataloaders=DataLoader(TensorDataset(rows), batch_size=3))
    splits = probe.splits
    assert splits.pool.shape == (4, 8) and splits.objective.shape == (2, 8)
    extra = splits.reconstruction(windows)
    assert extra.shape[0] == expected
    seen = [tuple(r.tolist()) for part in (splits.pool, splits.objective, extra) for r in part]
    assert len(set(seen)) == len(seen) == 6 + expected


def test_the_reconstruction_windows_leave_the_pool_and_objective_of_the_train_loader_as_they_were(tmp_path):
    """Asking for reconstruction windows must not reshuffle the pool and objective rows: a search with
    ``reconstruction='bias'`` (which reads no windows) and a replayed plan's pool do not depend on their number."""
    rows = torch.arange(96.0).view(12, 8)
    seen = []
    for windows in (0, 20):
        probe = _SplitProbe(pool_size=4, objective_windows=2, reconstruction_windows=windows)
        _trainer(tmp_path, probe).fit(_Wide(), train_dataloaders=DataLoader(TensorDataset(rows), batch_size=3))
        seen.append((probe.splits.pool.tolist(), probe.splits.pool_ids, probe.splits.objective.tolist()))
    assert seen[0] == seen[1]
