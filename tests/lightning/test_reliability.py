"""Reliability: a fine-tune killed with SIGKILL resumes, out-of-memory trials, identical weights on two runs."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from adapruner_lightning.search.config import SearchConfig
from adapruner_lightning.errors import SearchFailed
from adapruner_lightning.api import prune
from adapruner_lightning.search.runner import run_search
from conftest import make_tiny_model
from helpers_core import SMALL
from helpers_core import small_session as _session

_FIT = """
import sys, time
sys.path.insert(0, {tests!r})
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from adapruner_lightning import AdaPrunerCallback, CausalLMModule, TextDataModule
from adapruner_lightning.core.config import PruningConfig
from adapruner_lightning.search.config import SearchConfig
from adapruner_lightning.lightning.recovery import RecoveryConfig
from helpers_core import SMALL_SEARCH

class Slow(Callback):  # leaves time to kill the process between steps
    def on_train_batch_end(self, *args):
        time.sleep(float(sys.argv[1]))

model_dir, text_dir, root, max_steps = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
cb = AdaPrunerCallback(target_ratio=0.25, search=SearchConfig.of(**SMALL_SEARCH), pruning=PruningConfig(sample_len=32),
                       recovery=RecoveryConfig(mode="lora"), output_dir=root + "/out", progress=False)
ckpt = ModelCheckpoint(dirpath=root + "/ckpt", every_n_train_steps=1, save_last=True, save_top_k=-1)
trainer = Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                  enable_model_summary=False, default_root_dir=root, limit_val_batches=0, num_sanity_val_steps=0,
                  callbacks=[cb, ckpt, Slow()])
data = TextDataModule(model=model_dir, texts=[text_dir], seq_len=32, batch_size=2, val_windows=2)
resume = sys.argv[6] if len(sys.argv) > 6 else None
trainer.fit(CausalLMModule(model=model_dir), datamodule=data, ckpt_path=resume)
print("RESULT", trainer.global_step, sum(v.numel() for v in trainer.lightning_module.model.parameters()))
"""


def _steps_saved(ckpt_dir: Path) -> list[int]:
    return sorted(int(p.stem.split("step=")[1]) for p in ckpt_dir.glob("*step=*.ckpt")) if ckpt_dir.exists() else []


def test_sigkill_during_finetune_then_resume(tmp_path, tiny_lm_dir, text_dir):
    """SIGKILL a fit after its search and a few recovery steps; resume from the last checkpoint: the plan is
    replayed (same pruned shapes, LoRA re-applied), no new search, and training continues to max_steps."""
    script = tmp_path / "fit.py"
    script.write_text(_FIT.format(tests=str(Path(__file__).resolve().parents[1])))
    root = tmp_path / "run"
    args = [str(tiny_lm_dir), str(text_dir), str(root)]
    proc = subprocess.Popen([sys.executable, str(script), "1.0", *args, "50"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while len(_steps_saved(root / "ckpt")) < 3 and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    saved = _steps_saved(root / "ckpt")
    assert len(saved) >= 3 and max(saved) < 50, saved  # killed mid-fine-tune
    trace = root / "out" / "adapruner" / "search_trace.jsonl"
    trials_before = trace.read_text().count('"type": "trial"')
    last = max(saved)
    ckpt = next((root / "ckpt").glob(f"*step={last}.ckpt"))
    plan_beside = json.loads((ckpt.parent / "pruning_plan.json").read_text())

    out = subprocess.run([sys.executable, str(script), "0", *args, str(last + 3), str(ckpt)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    step, params = map(int, out.stdout.split("RESULT")[1].split())
    assert step == last + 3  # training went on from the checkpoint's step
    assert trace.read_text().count('"type": "trial"') == trials_before  # no search on resume
    from adapruner_lightning.outputs.export import load_pruned

    model, _, plan = load_pruned(root / "out" / "adapruner" / "pruned_model")
    assert plan.to_dict()["layers"] == plan_beside["layers"]  # the killed run's plan, replayed
    assert sum(p.numel() for p in model.parameters()) == params


def test_out_of_memory_trial_is_recorded_and_the_search_goes_on(monkeypatch):
    """An allocator failure inside a trial (injected in the objective) fails that trial only."""
    session = _session()
    real, calls = session.score, {"n": 0}

    def sometimes_oom(selection, biases=None):
        calls["n"] += 1
        if calls["n"] in (2, 4):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(selection, biases)

    monkeypatch.setattr(session, "score", sometimes_oom)
    result = run_search(session, SearchConfig.of(**SMALL), progress=False)
    failed = [t for t in result.trials if t.status == "failed"]
    assert [t.trial for t in failed] == [1, 3] and all("out of memory" in t.error for t in failed)
    assert len(result.trials) == SMALL["trials"] and math.isfinite(result.best.score)


def test_repeated_out_of_memory_stops_with_a_summary(monkeypatch):
    session = _session()

    def oom(selection, biases=None):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(session, "score", oom)
    with pytest.raises(SearchFailed, match="3 consecutive trials failed.*out of memory"):
        run_search(session, SearchConfig.of(**{**SMALL, "max_failures": 3}), progress=False)


def test_other_runtime_errors_are_not_swallowed(monkeypatch):
    """Only OOM, NaN/inf and infeasible schedules fail a trial; a bug surfaces at once."""
    session = _session()

    def broken(selection, biases=None):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(session, "score", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_search(session, SearchConfig.of(**SMALL), progress=False)


def test_two_runs_give_identical_pruned_weights():
    """Search + physical pruning twice from the same seed and inputs: bit-identical weights, seed in the plan."""
    def run():
        model = make_tiny_model("qwen2", vocab_size=128, layers=4)
        gen = torch.Generator().manual_seed(7)
        plan = prune(model, target_ratio=0.2, calibration=torch.randint(0, 128, (12, 16), generator=gen),
                     objective_data=torch.randint(0, 128, (3, 32), generator=gen), sample_len=16, seed=3,
                     search=SearchConfig.of(**SMALL), progress=False)
        return model.state_dict(), plan

    (a, plan_a), (b, plan_b) = run(), run()
    assert plan_a.to_dict() == plan_b.to_dict() and plan_a.provenance["seed"] == 3
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(a[k].shape != make_tiny_model("qwen2", vocab_size=128, layers=4).state_dict()[k].shape for k in a)
