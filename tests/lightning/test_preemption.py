"""Preemption and dying ranks on 2 gloo processes, each started by the test as a cluster launcher starts them
(``torchrun``-style or ``srun``-style environment; ``tests/lightning/scripts/preempt_fit.py``):

* SIGKILL of one rank mid-search, restart: the trace resumes, no trial repeats, both ranks prune alike; SIGKILL of
  one rank mid-fine-tune, restart from the last checkpoint: the plan is replayed, no search, the same shapes.
* SLURM's requeue signal (SIGUSR1, Lightning's ``SLURMEnvironment(auto_requeue=True)``) during the search: Lightning
  has not installed its handler yet (``_SignalConnector.register_signal_handlers`` runs after ``setup``), so the
  default action used to kill the job without requeueing it; the callback's handler requeues it (``scontrol``, here
  a stand-in on ``PATH`` that records the call) and stops the search after the round, the trace keeping every
  finished trial. During the fine-tune Lightning's own handler writes an HPC checkpoint and requeues; the requeued
  job resumes from it (Lightning's SLURM auto-resume) with the plan replayed and no search.

Each scenario is one sequence of runs in a module fixture (about a minute a run on a loaded 2-core machine); the
tests read its records. Every process is killed when its timeout expires.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from helpers_dist import REPO, clean_env

SCRIPT = Path(__file__).parent / "scripts" / "preempt_fit.py"
RUN_TIMEOUT_S = 420
MAX_STEPS = 6
JOB_ID = "4242"


class Job:
    """The two ranks of one run, their logs, and waiting for things to happen."""

    def __init__(self, out: Path, run: str, env: dict[str, str], ckpt: Path | None = None) -> None:
        self.out, self.run, self.deadline = out, run, time.monotonic() + RUN_TIMEOUT_S
        self.procs = []
        for rank in range(2):
            log = (out / f"{run}_rank{rank}.log").open("w")
            rank_env = {**env, **_rank_env(env["LAUNCHER"], rank)}
            self.procs.append(subprocess.Popen(
                [sys.executable, str(SCRIPT), str(env["MODEL"]), str(env["TEXT"]), str(out), run, env["STRATEGY"],
                 str(ckpt) if ckpt else "none"], stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO),
                env=rank_env, start_new_session=True))

    def logs(self) -> str:
        return "\n".join(f"--- rank {r}\n{(self.out / f'{self.run}_rank{r}.log').read_text()[-4000:]}" for r in range(2))

    def wait_for(self, what: str, condition: Callable[[], bool]) -> None:
        while not condition():
            if time.monotonic() > self.deadline or any(p.poll() is not None for p in self.procs):
                self.kill()
                pytest.fail(f"{self.run}: no {what} (a rank exited or the time ran out)\n{self.logs()}")
            time.sleep(0.2)

    def signal(self, signum: int, ranks=(0, 1)) -> None:
        for rank in ranks:
            os.kill(self.procs[rank].pid, signum)

    def finish(self, timeout: float = RUN_TIMEOUT_S) -> list[int]:
        """Wait for both ranks (killing what is left after ``timeout``); their exit codes."""
        end = min(self.deadline, time.monotonic() + timeout)
        for proc in self.procs:
            try:
                proc.wait(timeout=max(1.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        codes = [p.poll() for p in self.procs]
        self.kill()
        return codes

    def kill(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def _rank_env(launcher: str, rank: int) -> dict[str, str]:
    if launcher == "torchrun":
        return dict(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", GROUP_RANK="0")
    return dict(SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="2", SLURM_NNODES="1", SLURM_PROCID=str(rank),
                SLURM_LOCALID=str(rank), SLURM_NODEID="0", SLURM_JOB_ID=JOB_ID, SLURM_JOB_NAME="adapruner-test")


def _env(out: Path, launcher: str, strategy: str, model: Path, text: Path, **extra: object) -> dict[str, str]:
    env = clean_env(LAUNCHER=launcher, STRATEGY=strategy, MODEL=str(model), TEXT=str(text),
                    MAX_STEPS=str(MAX_STEPS), ADAPRUNER_PROGRESS="0", DS_ACCELERATOR="cpu",
                    **{k: str(v) for k, v in extra.items()})
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
    bin_dir = out / "bin"  # a stand-in for SLURM's scontrol: records the requeue
    bin_dir.mkdir(exist_ok=True)
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {out / 'scontrol.log'}\n")
    scontrol.chmod(0o755)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return env


def _trials(out: Path) -> list[dict]:
    trace = out / "out" / "adapruner" / "search_trace.jsonl"
    if not trace.exists():
        return []
    return [json.loads(line) for line in trace.read_text().splitlines() if '"type": "trial"' in line]


def _checkpoint_steps(out: Path) -> list[int]:
    return sorted(int(p.stem.split("step=")[1]) for p in (out / "ckpt").glob("*step=*.ckpt")) \
        if (out / "ckpt").exists() else []


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _check_shapes_follow_plan(shapes: dict[str, list[int]], plan: dict) -> None:
    head_dim = plan["head_dim"]
    for lp in plan["layers"]:
        base = f"model.layers.{lp['index']}"
        assert shapes[f"{base}.self_attn.q_proj.weight"][0] == lp["num_heads"] * head_dim
        assert shapes[f"{base}.self_attn.k_proj.weight"][0] == lp["num_kv_heads"] * head_dim
        assert shapes[f"{base}.mlp.gate_proj.weight"][0] == lp["intermediate_size"]


def _kill_sequence(out: Path, model: Path, text: Path, strategy: str) -> dict:
    """Run 1 loses rank 1 to SIGKILL in the search's second round; run 2 (restarted) resumes the search and loses
    rank 1 again mid-fine-tune; run 3 resumes from the last checkpoint."""
    seen: dict = {}
    job = Job(out, "search_kill", _env(out, "torchrun", strategy, model, text, TRIAL_SLEEP=2))
    job.wait_for("second round of trials", lambda: len(_trials(out)) >= 2)
    seen["trials_at_kill"] = _trials(out)
    job.signal(signal.SIGKILL, ranks=(1,))
    seen["codes_search_kill"] = job.finish(timeout=90)
    seen["trials_after_kill"] = _trials(out)
    job = Job(out, "finetune_kill", _env(out, "torchrun", strategy, model, text, STEP_SLEEP=1.5))
    job.wait_for("third checkpoint", lambda: len(_checkpoint_steps(out)) >= 3)
    job.signal(signal.SIGKILL, ranks=(1,))
    seen["codes_finetune_kill"] = job.finish(timeout=90)
    seen["trials_after_search"] = _trials(out)
    seen["plans"] = [_json(out / f"finetune_kill_plan{r}.json") for r in range(2)]
    seen["checkpoints"] = _checkpoint_steps(out)
    last = max(seen["checkpoints"])
    job = Job(out, "resume", _env(out, "torchrun", strategy, model, text), ckpt=next((out / "ckpt").glob(f"*step={last}.ckpt")))
    codes = job.finish()
    assert codes == [0, 0], job.logs()
    seen["resumed"] = [_json(out / f"resume_rank{r}.json") for r in range(2)]
    seen["resumed_from_step"] = last
    seen["trials_at_end"] = _trials(out)
    return seen


def _signal_sequence(out: Path, model: Path, text: Path, strategy: str) -> dict:
    """Run 1 gets SIGUSR1 on both ranks in the search's second round; run 2 (the requeued job) resumes the search
    and gets SIGUSR1 mid-fine-tune, then is killed as SLURM ends a requeued job; run 3 starts with no ckpt_path."""
    seen: dict = {}
    job = Job(out, "search_signal", _env(out, "slurm", strategy, model, text, TRIAL_SLEEP=2))
    job.wait_for("second round of trials", lambda: len(_trials(out)) >= 2)
    job.signal(signal.SIGUSR1)
    seen["codes_search_signal"] = job.finish(timeout=120)
    seen["search_signal_logs"] = [(out / f"search_signal_rank{r}.log").read_text() for r in range(2)]
    seen["trials_after_signal"] = _trials(out)
    seen["trace_text"] = (out / "out" / "adapruner" / "search_trace.jsonl").read_text()
    seen["scontrol_after_search"] = _lines(out / "scontrol.log")
    job = Job(out, "finetune_signal", _env(out, "slurm", strategy, model, text, STEP_SLEEP=1.5))
    job.wait_for("second checkpoint", lambda: len(_checkpoint_steps(out)) >= 2)
    job.signal(signal.SIGUSR1)
    before = len(seen["scontrol_after_search"])
    job.wait_for("requeue after the HPC checkpoint", lambda: len(_lines(out / "scontrol.log")) > before)
    seen["hpc"] = sorted(p.name for p in (out / "root").glob("hpc_ckpt_*"))
    seen["steps_at_signal"] = _checkpoint_steps(out)
    job.kill()  # SLURM terminates a requeued job
    seen["plans"] = [_json(out / f"finetune_signal_plan{r}.json") for r in range(2)]
    seen["trials_after_search"] = _trials(out)
    seen["scontrol"] = _lines(out / "scontrol.log")
    job = Job(out, "requeued", _env(out, "slurm", strategy, model, text))
    codes = job.finish()
    assert codes == [0, 0], job.logs()
    seen["resumed"] = [_json(out / f"requeued_rank{r}.json") for r in range(2)]
    seen["trials_at_end"] = _trials(out)
    return seen


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


#: Lightning's DDP, and its DeepSpeedStrategy under ZeRO-3 on DeepSpeed's CPU accelerator
STRATEGIES = ["ddp", "deepspeed3"]


@pytest.fixture(scope="module", params=STRATEGIES)
def killed(request, tmp_path_factory, tiny_lm_dir, text_dir):
    _skip_without_deepspeed(request.param)
    return _kill_sequence(tmp_path_factory.mktemp(f"killed_{request.param}"), tiny_lm_dir, text_dir, request.param)


@pytest.fixture(scope="module", params=STRATEGIES)
def requeued(request, tmp_path_factory, tiny_lm_dir, text_dir):
    _skip_without_deepspeed(request.param)
    return _signal_sequence(tmp_path_factory.mktemp(f"requeued_{request.param}"), tiny_lm_dir, text_dir,
                            request.param)


def _skip_without_deepspeed(strategy: str) -> None:
    if strategy.startswith("deepspeed"):
        pytest.importorskip("deepspeed")


def _no_repeated_trial(trials: list[dict], before: list[dict]) -> None:
    assert [t["trial"] for t in trials] == list(range(len(trials)))  # each trial once, in order
    assert trials[: len(before)] == before  # the trials finished before the fault are kept as they were


def _distinct_plans(trials: list[dict]) -> int:
    """Trials that scored a new plan (``search.trials`` counts these; a repeated plan is registered at no cost)."""
    return sum(t["repeat_of"] is None for t in trials)


def test_sigkill_of_a_rank_mid_search_then_restart_resumes_the_trace(killed):
    assert killed["codes_search_kill"][1] == -signal.SIGKILL and killed["codes_search_kill"][0] != 0
    assert len(killed["trials_after_kill"]) >= 2 and _distinct_plans(killed["trials_after_kill"]) < 6
    _no_repeated_trial(killed["trials_after_search"], killed["trials_after_kill"])
    assert _distinct_plans(killed["trials_after_search"]) == 6
    r0, r1 = killed["plans"]
    assert r0["plan"] == r1["plan"] and r0["trace"] == r1["trace"]  # both ranks, one plan
    assert [t["trial"] for t in r0["trace"]] == list(range(len(killed["trials_after_search"])))


def test_sigkill_of_a_rank_mid_finetune_then_resume_replays_the_plan(killed):
    assert killed["codes_finetune_kill"][1] == -signal.SIGKILL and killed["codes_finetune_kill"][0] != 0
    plan = killed["plans"][0]["plan"]
    for record in killed["resumed"]:
        assert record["searches"] == 0 and record["plan"] == plan  # the checkpoint's plan, no new search
        _check_shapes_follow_plan(record["shapes"], plan)
        assert record["global_step"] == MAX_STEPS and record["steps"][0] == killed["resumed_from_step"] + 1
    assert killed["resumed"][0]["shapes"] == killed["resumed"][1]["shapes"]
    assert killed["trials_at_end"] == killed["trials_after_search"]  # the trace was not touched


def test_sigusr1_during_the_search_requeues_the_job_and_keeps_every_finished_trial(requeued):
    assert requeued["scontrol_after_search"] == [f"requeue {JOB_ID}"]  # rank 0, once
    assert all(code not in (0, None, -signal.SIGUSR1) for code in requeued["codes_search_signal"]), \
        requeued["codes_search_signal"]
    for log in requeued["search_signal_logs"]:
        assert "the search stopped on SIGUSR1" in log
    trials = requeued["trials_after_signal"]
    assert len(trials) >= 2 and len(trials) % 2 == 0  # whole rounds: every rank's trial of the last one is kept
    assert requeued["trace_text"].endswith("\n")
    _no_repeated_trial(requeued["trials_after_search"], trials)
    r0, r1 = requeued["plans"]
    assert r0["plan"] == r1["plan"] and _distinct_plans(r0["trace"]) == 6


def test_sigusr1_during_the_finetune_leaves_a_checkpoint_the_requeued_job_resumes(requeued):
    assert requeued["hpc"] == ["hpc_ckpt_1.ckpt"] and requeued["scontrol"][-1] == f"requeue {JOB_ID}"
    plan = requeued["plans"][0]["plan"]
    for record in requeued["resumed"]:
        assert record["resumed_from"].endswith("hpc_ckpt_1.ckpt")  # Lightning's SLURM auto-resume, no ckpt_path
        assert record["searches"] == 0 and record["plan"] == plan
        _check_shapes_follow_plan(record["shapes"], plan)
        assert record["global_step"] == MAX_STEPS and record["steps"][0] >= 2
    assert requeued["trials_at_end"] == requeued["trials_after_search"]
